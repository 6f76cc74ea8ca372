//! The network driver of the two-node case: Debian's cloud kernels build `virtio_net` (and,
//! before 6.12, the virtio PCI transport) as modules. They are taken from the same kernel
//! package the kernel came from, with what they depend on (each module's `depends=` entry),
//! in load order, decompressed (`.ko.xz` since Debian 13), into a small cpio archive that
//! is appended to the guest's initramfs. The guest loads `/tracer-modules/*` in name order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::initramfs::Archive;

/// Where the guest finds the modules; file names sort in load order.
pub const GUEST_DIR: &str = "tracer-modules";
/// What the guest needs: the NIC driver, and the PCI transport where it is a module.
const ROOTS: &[(&str, bool)] = &[("virtio_pci", false), ("virtio_net", true)];
const CACHED: &str = "net-modules.cpio";

/// The archive for the kernel cached in `kernel_dir` (built once, then reused).
pub fn archive(kernel_dir: &Path, release: &str) -> Result<Vec<u8>> {
    let cached = kernel_dir.join(CACHED);
    if let Ok(bytes) = std::fs::read(&cached) {
        return Ok(bytes);
    }
    let deb = std::fs::read_dir(kernel_dir.join("download"))
        .with_context(|| format!("no downloaded kernel package in {}", kernel_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("no .deb in {}/download", kernel_dir.display()))?;
    let unpacked = kernel_dir.join("modules-unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    crate::run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let result = build(&unpacked, release);
    let _ = std::fs::remove_dir_all(&unpacked);
    let bytes = result?;
    std::fs::write(&cached, &bytes)?;
    Ok(bytes)
}

fn build(unpacked: &Path, release: &str) -> Result<Vec<u8>> {
    let dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(release))
        .find(|d| d.is_dir())
        .with_context(|| format!("the kernel package has no modules for {release}"))?;
    let mut files = BTreeMap::new();
    index(&dir, &mut files)?;
    let mut contents = BTreeMap::new();
    let mut depends = BTreeMap::new();
    let mut pending: Vec<String> = Vec::new();
    for &(root, required) in ROOTS {
        if files.contains_key(root) {
            pending.push(root.to_owned());
        } else if required {
            bail!("the kernel package has no {root} module");
        }
    }
    while let Some(name) = pending.pop() {
        if contents.contains_key(&name) {
            continue;
        }
        // A dependency without a module file is built into the kernel.
        let Some(path) = files.get(&name) else {
            continue;
        };
        let bytes = module_bytes(path)?;
        let deps = depends_of(&bytes);
        pending.extend(deps.iter().cloned());
        depends.insert(name.clone(), deps);
        contents.insert(name, bytes);
    }
    let order = load_order(&depends);
    let mut archive = Archive::new(Vec::new());
    for (i, name) in order.iter().enumerate() {
        archive.file(
            &format!("{GUEST_DIR}/{i:02}-{name}.ko"),
            0o644,
            &contents[name],
        )?;
    }
    Ok(archive.finish()?)
}

/// Module files under `dir` by module name (`-` and `_` are the same to the kernel).
fn index(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            index(&path, files)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && let Some(stem) = name
                .strip_suffix(".ko")
                .or_else(|| name.strip_suffix(".ko.xz"))
        {
            files.insert(stem.replace('-', "_"), path.clone());
        }
    }
    Ok(())
}

fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(path)
            .output()
            .context("cannot run xz (apt-get install xz-utils)")?;
        if !out.status.success() {
            bail!("xz -dc {} failed", path.display());
        }
        return Ok(out.stdout);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Pure: the modules a module needs, from its `.modinfo` strings (`depends=a,b`).
pub fn depends_of(module: &[u8]) -> Vec<String> {
    module
        .split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Pure: every module after the ones it depends on (dependencies missing from the map are
/// built in); ties in name order, so the result is stable.
pub fn load_order(depends: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    fn visit(
        name: &str,
        depends: &BTreeMap<String, Vec<String>>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        let Some(deps) = depends.get(name) else {
            return;
        };
        if !done.insert(name.to_owned()) {
            return;
        }
        for d in deps {
            visit(d, depends, done, out);
        }
        out.push(name.to_owned());
    }
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for name in depends.keys() {
        visit(name, depends, &mut done, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo_strings() {
        let module =
            b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net-failover\0retpoline=Y\0";
        assert_eq!(
            depends_of(module),
            ["virtio_ring", "virtio", "net_failover"]
        );
        assert!(depends_of(b"\0depends=\0name=failover\0").is_empty());
        assert!(depends_of(b"no modinfo here").is_empty());
    }

    #[test]
    fn orders_dependencies_first() {
        let deps: BTreeMap<String, Vec<String>> = [
            ("virtio_net", vec!["virtio_ring", "virtio", "net_failover"]),
            ("net_failover", vec!["failover"]),
            ("failover", vec![]),
            ("virtio_pci", vec!["virtio_ring", "virtio"]),
            ("virtio_ring", vec![]),
            // Built in on this kernel: no entry, skipped.
            ("virtio", vec![]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
        let order = load_order(&deps);
        let at = |m: &str| order.iter().position(|x| x == m).unwrap();
        assert_eq!(order.len(), 6);
        assert!(at("failover") < at("net_failover"));
        assert!(at("net_failover") < at("virtio_net"));
        assert!(at("virtio_ring") < at("virtio_pci") && at("virtio") < at("virtio_pci"));
        let mut built_in = deps.clone();
        built_in.remove("virtio");
        assert!(!load_order(&built_in).contains(&"virtio".to_owned()));
    }
}
