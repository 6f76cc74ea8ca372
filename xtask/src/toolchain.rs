//! Bootstraps the eBPF toolchain: nightly with rust-src, and a bpf-linker built against the
//! nightly toolchain's own libLLVM (prebuilt downloads are not an option). Idempotent: a stamp
//! file records what was built; a matching stamp skips the work.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Where the toolchain lives; must match tracer-agent's build.rs.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRACER_TOOLCHAIN_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("tracer")
        .join("toolchain")
}

pub fn path_with(tools: &Path) -> std::ffi::OsString {
    let mut paths = vec![tools.join("bin")];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).expect("PATH entries contain no separator")
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_nightly() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context(
        "rustup is required to manage the nightly toolchain: install it from your distribution or rustup.rs",
    )?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("==> installing the nightly toolchain (eBPF programs need it)");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("cannot install nightly: install it with `rustup toolchain install nightly`")?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("==> adding rust-src to nightly (to build core for the BPF target)");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("cannot add rust-src: run `rustup component add rust-src --toolchain nightly`")?;
    }
    Ok(())
}

/// Nightly's libLLVM shared library and its major version.
fn nightly_llvm() -> Result<(PathBuf, u32)> {
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let verbose = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let major: u32 = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("nightly rustc does not report its LLVM version")?;
    let mut found = None;
    for entry in
        std::fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM") && name.contains("-rust-") && name.contains(".so") {
            found = Some(lib.join(name));
            break;
        }
    }
    let path = found.with_context(|| {
        format!(
            "no libLLVM in {}: the nightly toolchain is incomplete; reinstall it with `rustup toolchain install nightly`",
            lib.display()
        )
    })?;
    Ok((path, major))
}

fn ensure_bpf_linker(tools: &Path) -> Result<()> {
    let (llvm_lib, major) = nightly_llvm()?;
    let llvm_name = llvm_lib
        .file_name()
        .context("libLLVM path has no name")?
        .to_string_lossy()
        .into_owned();
    let stamp = tools.join("bpf-linker.stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION} against {llvm_name}\n");
    let binary = tools.join("bin").join("bpf-linker");
    let llvm_prefix = tools.join("llvm");
    let llvm_dir = llvm_prefix.join("lib");
    // The rpath of bpf-linker points into llvm_dir, so the links are refreshed every time.
    std::fs::create_dir_all(&llvm_dir)?;
    for link in ["libLLVM.so".to_owned(), llvm_name.clone()] {
        let at = llvm_dir.join(link);
        if std::fs::read_link(&at).is_ok_and(|target| target == llvm_lib) {
            continue;
        }
        // Made next to it and renamed over it: another xtask running at the same time
        // (two commands started together) never sees the link missing or fails on it.
        let fresh = llvm_dir.join(format!(".{}.{}", link_name(&at), std::process::id()));
        let _ = std::fs::remove_file(&fresh);
        std::os::unix::fs::symlink(&llvm_lib, &fresh)
            .and_then(|()| std::fs::rename(&fresh, &at))
            .with_context(|| format!("cannot link {}", at.display()))?;
    }
    if binary.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    eprintln!(
        "==> building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (one time, about 5 minutes on 2 cores)"
    );
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
        "--root",
    ])
    .arg(tools)
    .arg("--force")
    .env("LLVM_PREFIX", &llvm_prefix);
    run_cmd(&mut cmd).context(
        "building bpf-linker failed (see the cargo output above); it needs crates.io access and a C toolchain (gcc)",
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}

/// Makes sure everything the eBPF build needs is installed; returns the toolchain dir.
pub fn ensure() -> Result<PathBuf> {
    let tools = dir();
    std::fs::create_dir_all(&tools)
        .with_context(|| format!("cannot create {}", tools.display()))?;
    ensure_nightly()?;
    ensure_bpf_linker(&tools)?;
    Ok(tools)
}

fn link_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
