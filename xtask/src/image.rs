//! `cargo xtask image`: the agent's container image, built from a local static (musl)
//! binary and `deploy/image/Containerfile` (`FROM scratch`) with podman. No registry is
//! involved: the base is empty and the binary is the only file.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, run_cmd, toolchain, workspace_root};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Image name and tag.
    #[arg(long, default_value = concat!("localhost/tracer-agent:", env!("CARGO_PKG_VERSION")))]
    pub tag: String,
    /// Also write the image as an OCI archive (for `kind load image-archive`,
    /// `k3s ctr images import`, or copying to a node).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
}

/// (command, Debian package): podman builds and runs the image (with runc), musl-gcc compiles
/// the C parts of dependencies (ring) for the musl target.
const IMAGE_TOOLS: &[(&str, &str)] = &[
    ("podman", "podman"),
    // crun fails on hybrid-cgroup hosts; every container here runs with `--runtime runc`.
    ("runc", "runc"),
    ("musl-gcc", "musl-tools"),
];

/// Installs podman and the musl toolchain when missing, and the Rust musl target.
pub fn ensure_image_tools() -> Result<()> {
    crate::deps::ensure_packages(IMAGE_TOOLS)?;
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the musl target")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == MUSL_TARGET)
    {
        eprintln!("==> adding the {MUSL_TARGET} target (a static agent binary)");
        run_cmd(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the static binary; returns its path. The test suite uses an unoptimised build
/// without debug info (its dependencies compile in a fraction of the release time).
pub fn build_static_agent(release: bool) -> Result<PathBuf> {
    ensure_image_tools()?;
    let tools = toolchain::ensure()?;
    let profile = if release { "release" } else { "debug" };
    eprintln!("==> building a static tracer-agent ({MUSL_TARGET}, {profile})");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "tracer-agent",
        "--target",
        MUSL_TARGET,
    ])
    .env("TRACER_TOOLCHAIN_DIR", &tools);
    if release {
        cmd.arg("--release");
    } else {
        cmd.env("CARGO_PROFILE_DEV_DEBUG", "0");
    }
    run_cmd(&mut cmd)?;
    let bin = target_dir()
        .join(MUSL_TARGET)
        .join(profile)
        .join("tracer-agent");
    if !bin.is_file() {
        bail!("the build did not produce {}", bin.display());
    }
    Ok(bin)
}

/// Builds the image from `bin`; returns the tag.
pub fn build_image(bin: &Path, tag: &str) -> Result<()> {
    let context = target_dir().join("image-context");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    std::fs::copy(bin, context.join("tracer-agent"))
        .with_context(|| format!("cannot copy {}", bin.display()))?;
    let containerfile = workspace_root().join("deploy/image/Containerfile");
    std::fs::copy(&containerfile, context.join("Containerfile"))
        .with_context(|| format!("cannot copy {}", containerfile.display()))?;
    eprintln!("==> building image {tag}");
    run_cmd(
        Command::new("podman")
            .args(["build", "--tag", tag, "--file"])
            .arg(context.join("Containerfile"))
            .arg(&context),
    )
}

pub fn run(args: ImageArgs) -> Result<()> {
    let bin = build_static_agent(true)?;
    build_image(&bin, &args.tag)?;
    if let Some(out) = &args.save {
        run_cmd(
            Command::new("podman")
                .args(["save", "--format", "oci-archive", "--output"])
                .arg(out)
                .arg(&args.tag),
        )?;
        eprintln!("==> saved {} to {}", args.tag, out.display());
    }
    eprintln!(
        "==> image {} ready; see deploy/README.md to run it with podman or deploy it",
        args.tag
    );
    Ok(())
}
