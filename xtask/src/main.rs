//! `cargo xtask <command>`: everything a developer runs, with the toolchain bootstrap built in.

mod bench;
mod debian;
mod demo;
mod deps;
mod image;
mod testlog;
mod toolchain;
mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test the tracer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building needs: nightly + rust-src, and bpf-linker built for nightly's LLVM.
    Setup,
    /// Build the agent (eBPF object embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and start the agent as root; arguments after `--` go to the agent.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Unit tests, then the root integration tests against real servers and clients.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// rustfmt check and clippy on host crates and on the eBPF crate.
    Lint,
    /// The guest suite inside QEMU on each supported kernel (Debian 5.10, 6.1, 6.12):
    /// `vm-test [--kernel <ver>]... [-- <case filter>]`.
    VmTest(vm::VmTestArgs),
    /// The agent's container image (`FROM scratch` + a static musl binary), built with podman.
    Image(image::ImageArgs),
    /// What tracing costs: nginx and Flask, untraced vs the agent vs the alternatives,
    /// measured side by side; writes BENCHMARKS.md (as root).
    Bench(bench::BenchArgs),
    /// The lesson's demo: frontend (Node.js) → backend (Python) → database (Go), each in
    /// its own pod, traced by the agent; prints the trace trees, then cleans up (as root).
    Demo(demo::DemoArgs),
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs a command with inherited output (progress stays visible); fails with its name.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn build_agent(release: bool) -> Result<PathBuf> {
    let tools = toolchain::ensure()?;
    eprintln!("==> building tracer-agent (eBPF programs included)");
    let mut cmd = cargo();
    // `--workspace`: features resolved as for `cargo test --workspace`, so the tests, the
    // VM guest and this build share one build of each dependency (and of the programs).
    cmd.args(["build", "--workspace", "--bin", "tracer-agent"]);
    if release {
        cmd.arg("--release");
    }
    cmd.env("TRACER_TOOLCHAIN_DIR", &tools);
    run_cmd(&mut cmd)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("tracer-agent"))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (cargo builds there), else
/// `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup => {
            toolchain::ensure()?;
            eprintln!("==> toolchain ready");
        }
        Cmd::Build { release } => {
            let bin = build_agent(release)?;
            eprintln!("==> built {}", bin.display());
        }
        Cmd::Run { release, args } => {
            let bin = build_agent(release)?;
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                eprintln!("==> the agent needs root: starting it with sudo");
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            cmd.args(&args);
            eprintln!("==> starting {} {}", bin.display(), args.join(" "));
            let status = cmd.status().context("cannot start the agent")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { filter } => test(filter)?,
        Cmd::Lint => lint()?,
        Cmd::VmTest(args) => vm::run(args)?,
        Cmd::Image(args) => image::run(args)?,
        Cmd::Demo(args) => demo::run(args)?,
        Cmd::Bench(args) => bench::run(args)?,
    }
    Ok(())
}

fn test(filter: Option<String>) -> Result<()> {
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and need root: rerun `cargo xtask test` as root (sudo -E cargo xtask test)"
        );
    }
    let bin = build_agent(false)?;
    deps::ensure_test_tools()?;
    let demo_deps = target_dir().join("demo");
    deps::ensure_demo_apps(&workspace_root().join("deploy/demo"), &demo_deps)?;
    let tools = toolchain::dir();
    eprintln!("==> unit and integration tests");
    let mut cmd = cargo();
    // Every suite runs even when one fails: one run shows every failure.
    cmd.args(["test", "--workspace", "--no-fail-fast"]);
    cmd.env("TRACER_TOOLCHAIN_DIR", &tools);
    cmd.env("TRACER_AGENT_BIN", &bin);
    cmd.env("TRACER_DEMO_DIR", &demo_deps);
    cmd.env("TRACER_GO_NEWER", deps::ensure_newer_go()?);
    // The VM guest's cases also run here, on this machine's kernel (tests/tests/kernel.rs).
    cmd.env("TRACER_GUEST_TOOLS", vm::guest_tools_for_host()?);
    // The podman suite runs the agent's image, built from this tree (its own tag, so a
    // release image from `cargo xtask image` is left alone).
    let agent_image = "localhost/tracer-agent:test";
    image::build_image(&image::build_static_agent(false)?, agent_image)?;
    cmd.env("TRACER_IMAGE", agent_image);
    cmd.arg("--");
    if let Some(f) = &filter {
        cmd.arg(f);
    }
    // Integration tests each start an agent that traces the whole machine; one at a time
    // keeps their traffic and CPU apart.
    cmd.arg("--test-threads=1");
    run_counting_tests(&mut cmd)
}

/// Runs `cargo test`, passing its output through, and ends with each failure's message and
/// one summary line over all test binaries (`N passed, N failed`): cargo's own last line
/// covers only the last binary.
fn run_counting_tests(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let mut log = testlog::TestLog::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        log.line(&line);
    }
    let status = child.wait()?;
    print!("{}", log.digest());
    println!("{} passed, {} failed", log.passed, log.failed);
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn lint() -> Result<()> {
    let tools = toolchain::ensure()?;
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(
        cargo()
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .env("TRACER_TOOLCHAIN_DIR", &tools),
    )?;
    let mut ebpf = Command::new("rustup");
    ebpf.current_dir(workspace_root().join("tracer-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ])
        .env("PATH", toolchain::path_with(&tools));
    run_cmd(&mut ebpf)
}
