//! Compiles `tracer-ebpf` for the BPF target and leaves the object in OUT_DIR, where
//! `include_bytes!` embeds it into the agent binary.

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("agent crate has no parent dir")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("tracer");

    println!("cargo:rerun-if-env-changed=TRACER_TOOLCHAIN_DIR");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=XDG_CACHE_HOME");
    // `cargo xtask` installs bpf-linker into this directory; make it visible to the nested
    // nightly build even when the user runs plain `cargo build`.
    let tool_bin = env::var_os("TRACER_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(default_toolchain_dir)
        .join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tool_bin.clone()];
    paths.extend(env::split_paths(&path));
    let joined = env::join_paths(paths)?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", &joined) };

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if !skip && which_on_path("bpf-linker", &joined).is_none() {
        bail!(
            "bpf-linker not found (looked in {} and PATH): run `cargo xtask setup` to install the eBPF toolchain",
            tool_bin.display()
        );
    }

    let ebpf_dir = workspace.join("tracer-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir.to_str().context("non-UTF-8 path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs failed (see the warnings above); `cargo xtask setup` installs what they need")?;

    if skip && !object.exists() {
        // Metadata-only builds (clippy, unit tests of pure modules) get an empty object; the
        // agent refuses to start with it and says how to rebuild.
        std::fs::write(&object, [])?;
    }
    Ok(())
}

/// Must match `xtask`'s choice: `$XDG_CACHE_HOME/tracer/toolchain` or `~/.cache/tracer/toolchain`.
fn default_toolchain_dir() -> PathBuf {
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("tracer")
        .join("toolchain")
}

fn which_on_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
