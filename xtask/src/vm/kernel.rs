//! Debian cloud kernels for the VM matrix, fetched through the machine's own apt
//! configuration: the Debian mirror apt already uses (from `apt-get indextargets`), a private
//! sources list / state / cache per suite (the system's apt state is never touched), apt's own
//! signature checks (InRelease against the Debian archive keyring, then the package's hash
//! against the signed index), and `dpkg-deb` to unpack. Cached under `target/vm/kernels/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::debian::PrivateApt;
use crate::run_cmd;

/// A kernel of the matrix: the version users name and the Debian suite that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    pub version: &'static str,
    pub suite: &'static str,
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        version: "5.10",
        suite: "bullseye",
    },
    KernelSpec {
        version: "6.1",
        suite: "bookworm",
    },
    KernelSpec {
        version: "6.12",
        suite: "trixie",
    },
];

pub fn spec(version: &str) -> Result<KernelSpec> {
    KERNELS
        .iter()
        .find(|k| k.version == version || k.suite == version)
        .copied()
        .with_context(|| {
            format!(
                "unsupported kernel {version:?}: choose from {}",
                KERNELS
                    .iter()
                    .map(|k| format!("{} ({})", k.version, k.suite))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

const METAPACKAGE: &str = "linux-image-cloud-amd64";
use crate::debian::KEYRING;
/// Overrides the mirror taken from apt's configuration (for hosts without a Debian source).
pub const MIRROR_ENV: &str = "TRACER_VM_DEBIAN_MIRROR";
const STAMP: &str = "kernel.txt";

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `5.10.0-32-cloud-amd64`.
    pub release: String,
    /// The Debian package it came from, `name=version`.
    pub package: String,
    pub vmlinuz: PathBuf,
    /// Whether this run downloaded it.
    pub downloaded: bool,
}

/// The cached kernel of `spec`, downloading it first when absent.
pub fn ensure(spec: KernelSpec, cache_root: &Path) -> Result<Kernel> {
    let dir = cache_root.join("kernels").join(spec.suite);
    if let Some(kernel) = cached(&dir) {
        return Ok(kernel);
    }
    eprintln!(
        "==> fetching the Debian {} cloud kernel ({}) into {}",
        spec.version,
        spec.suite,
        dir.display()
    );
    download(spec, &dir).with_context(|| {
        format!(
            "cannot fetch the {} kernel from Debian {}",
            spec.version, spec.suite
        )
    })
}

fn cached(dir: &Path) -> Option<Kernel> {
    let stamp = std::fs::read_to_string(dir.join(STAMP)).ok()?;
    let mut fields = stamp.split_whitespace();
    let (release, package) = (fields.next()?.to_owned(), fields.next()?.to_owned());
    let vmlinuz = dir.join(format!("vmlinuz-{release}"));
    vmlinuz.is_file().then_some(Kernel {
        release,
        package,
        vmlinuz,
        downloaded: false,
    })
}

fn download(spec: KernelSpec, dir: &Path) -> Result<Kernel> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if which::which(tool).is_err() {
            bail!(
                "{tool} not found: the VM tests fetch Debian kernels with apt and dpkg (a Debian or Ubuntu host), or put them in {} yourself",
                dir.display()
            );
        }
    }
    if !Path::new(KEYRING).is_file() {
        bail!("{KEYRING} is missing: run `apt-get install debian-archive-keyring`");
    }
    let mirror = debian_mirror()?;
    eprintln!("    mirror {mirror} (from apt's configuration)");
    let apt = PrivateApt::new(dir.join("apt"), &mirror, spec.suite)?;

    run_cmd(apt.command("apt-get").args(["-q", "update"]))
        .with_context(|| format!("apt-get update for {} failed", spec.suite))?;
    let depends = apt.output("apt-cache", &["depends", "--important", METAPACKAGE])?;
    let image = image_package(&depends).with_context(|| {
        format!(
            "{METAPACKAGE} in {} names no kernel image: {depends}",
            spec.suite
        )
    })?;
    let version = apt
        .output("apt-cache", &["show", "--no-all-versions", &image])?
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(str::to_owned)
        .with_context(|| format!("apt-cache show {image} gave no version"))?;

    // apt drops privileges to `_apt` for downloads; let it write here.
    let download_dir = dir.join("download");
    std::fs::create_dir_all(&download_dir)?;
    if crate::is_root() {
        let _ = Command::new("chown")
            .arg("_apt")
            .arg(&download_dir)
            .output();
    }
    run_cmd(
        apt.command("apt-get")
            .args(["-q", "download", &format!("{image}={version}")])
            .current_dir(&download_dir),
    )?;
    let deb = std::fs::read_dir(&download_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{image}_")))
        })
        .with_context(|| format!("apt-get download left no {image} package"))?;

    let unpacked = dir.join("unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let boot = unpacked.join("boot");
    let found = std::fs::read_dir(&boot)
        .with_context(|| format!("{} has no /boot", deb.display()))?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-")
                .map(|r| (r.to_owned(), e.path()))
        });
    let (release, src) = found.with_context(|| format!("no vmlinuz in {}", deb.display()))?;
    let vmlinuz = dir.join(format!("vmlinuz-{release}"));
    std::fs::copy(&src, &vmlinuz)?;
    std::fs::remove_dir_all(&unpacked)?;
    let package = format!("{image}={version}");
    std::fs::write(dir.join(STAMP), format!("{release} {package}\n"))?;
    eprintln!("    {package}: kernel {release}");
    Ok(Kernel {
        release,
        package,
        vmlinuz,
        downloaded: true,
    })
}

/// The image package a `linux-image-cloud-amd64` resolves to, from `apt-cache depends`.
fn image_package(depends: &str) -> Option<String> {
    depends.lines().find_map(|l| {
        let name = l.trim().strip_prefix("Depends: ")?.trim();
        let name = name.trim_start_matches('<').trim_end_matches('>');
        name.starts_with("linux-image-").then(|| name.to_owned())
    })
}

/// The Debian archive apt is configured with: `$TRACER_VM_DEBIAN_MIRROR`, else the
/// `Repo-URI` of an index target labelled `Debian` (not Debian-Security) in
/// `apt-get indextargets`. Index targets are only listed once `apt-get update` ran; as root
/// this runs it when needed.
pub fn debian_mirror() -> Result<String> {
    if let Some(m) = std::env::var_os(MIRROR_ENV) {
        return Ok(m.to_string_lossy().into_owned());
    }
    if let Some(m) = mirror_from_indextargets(&indextargets()?) {
        return Ok(m);
    }
    if crate::is_root() {
        eprintln!("==> apt has no package index yet: running apt-get update");
        run_cmd(Command::new("apt-get").args(["-q", "update"]))?;
        if let Some(m) = mirror_from_indextargets(&indextargets()?) {
            return Ok(m);
        }
    }
    bail!(
        "no Debian archive in apt's configuration (apt-get indextargets lists none labelled Debian): run `apt-get update`, add a Debian source, or set {MIRROR_ENV}=<mirror URL>"
    )
}

fn indextargets() -> Result<String> {
    let out = Command::new("apt-get")
        .arg("indextargets")
        .output()
        .context("cannot run apt-get indextargets (is this a Debian host?)")?;
    if !out.status.success() {
        bail!(
            "apt-get indextargets failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pure: picks the mirror from `apt-get indextargets`' deb822 records.
fn mirror_from_indextargets(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|record| {
        let field = |name: &str| {
            record
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .map(str::trim)
        };
        (field("Label") == Some("Debian")
            && field("Target-Of") == Some("deb")
            && field("Identifier") == Some("Packages"))
        .then(|| field("Repo-URI").map(|u| u.trim_end_matches('/').to_owned()))
        .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEXTARGETS: &str = "\
MetaKey: main/binary-amd64/Packages
ShortDesc: Packages
URI: http://deb.debian.org/debian-security/dists/bookworm-security/main/binary-amd64/Packages
Label: Debian-Security
Origin: Debian
Repo-URI: http://deb.debian.org/debian-security/
Target-Of: deb
Identifier: Packages

MetaKey: main/dep11/Components-amd64.yml
Label: Debian
Repo-URI: http://mirror.example/dep11-only/
Target-Of: deb
Identifier: DEP-11

MetaKey: main/binary-amd64/Packages
Label: Debian
Origin: Debian
Repo-URI: http://mirror.example/debian/
Target-Of: deb
Identifier: Packages
";

    #[test]
    fn takes_the_debian_packages_target_not_security() {
        assert_eq!(
            mirror_from_indextargets(INDEXTARGETS).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_indextargets(""), None);
    }

    #[test]
    fn resolves_the_metapackage() {
        let depends =
            "linux-image-cloud-amd64\n  Depends: linux-image-6.12.117+deb13-cloud-amd64\n";
        assert_eq!(
            image_package(depends).as_deref(),
            Some("linux-image-6.12.117+deb13-cloud-amd64")
        );
        assert_eq!(image_package("linux-image-cloud-amd64\n"), None);
    }

    #[test]
    fn names_kernels_by_version_or_suite() {
        assert_eq!(spec("5.10").unwrap().suite, "bullseye");
        assert_eq!(spec("trixie").unwrap().version, "6.12");
        let err = spec("4.19").unwrap_err().to_string();
        assert!(err.contains("5.10 (bullseye)"), "{err}");
    }
}
