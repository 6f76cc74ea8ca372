//! podman for the container suite: the agent's image run as a DaemonSet would run it (host
//! PID namespace, a few capabilities, read-only host mounts, never `--privileged`), and
//! application containers built from local static binaries (no registry here).
//!
//! This host's cgroups are hybrid, where crun fails: every container runs with
//! `--runtime runc` and explicit ulimits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Capabilities the agent's container gets; deploy/README.md says why each.
pub const AGENT_CAPS: &[&str] = &[
    "BPF",
    "PERFMON",
    "SYS_RESOURCE",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];

/// Flags every `podman run` here needs.
pub const RUN_FLAGS: &[&str] = &[
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=16384:16384",
    "--ulimit",
    "nproc=16384:16384",
];

pub fn podman(args: &[&str]) -> Result<String> {
    let out = podman_output(args)?;
    if !out.status.success() {
        bail!(
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn podman_output(args: &[&str]) -> Result<Output> {
    Command::new("podman")
        .args(args)
        .output()
        .context("cannot run podman (install it, or run `cargo xtask test`, which does)")
}

/// The agent's image: `TRACER_IMAGE` (set by `cargo xtask test`), built beforehand.
pub fn agent_image() -> String {
    let image = std::env::var("TRACER_IMAGE")
        .unwrap_or_else(|_| format!("localhost/tracer-agent:{}", env!("CARGO_PKG_VERSION")));
    let exists = podman_output(&["image", "exists", &image]).is_ok_and(|o| o.status.success());
    assert!(
        exists,
        "image {image} not found: build it with `cargo xtask image` (or run `cargo xtask test`)"
    );
    image
}

/// Builds `tag` from a context holding `files` (path in the image → local file) and a
/// `FROM scratch` Containerfile whose entrypoint is `entrypoint`.
pub fn build_scratch_image(tag: &str, files: &[(&str, &Path)], entrypoint: &[&str]) -> Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "tracer-image-{}-{}",
        std::process::id(),
        tag.replace(['/', ':'], "_")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut containerfile = String::from("FROM scratch\n");
    for (i, (dest, src)) in files.iter().enumerate() {
        let name = format!("f{i}");
        std::fs::copy(src, dir.join(&name))
            .with_context(|| format!("cannot copy {}", src.display()))?;
        containerfile.push_str(&format!("COPY {name} {dest}\n"));
    }
    let entry: Vec<String> = entrypoint.iter().map(|a| format!("{a:?}")).collect();
    containerfile.push_str(&format!("ENTRYPOINT [{}]\n", entry.join(", ")));
    std::fs::write(dir.join("Containerfile"), containerfile)?;
    podman(&[
        "build",
        "--quiet",
        "--tag",
        tag,
        dir.to_str().context("utf-8 path")?,
    ])?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A static busybox (Debian's busybox-static): wget for the client side.
pub fn busybox_image() -> Result<String> {
    let tag = "localhost/tracer-test-busybox:1";
    let bin = Path::new("/bin/busybox");
    if !bin.exists() {
        bail!("/bin/busybox missing: install busybox-static (`cargo xtask test` does)");
    }
    build_scratch_image(tag, &[("/bin/busybox", bin)], &["/bin/busybox"])?;
    Ok(tag.to_owned())
}

/// The demo's database service (Go, net/http), compiled statically from deploy/demo.
pub fn database_image() -> Result<String> {
    let tag = "localhost/tracer-demo-database:test";
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/demo/database");
    let out_dir = std::env::temp_dir().join(format!("tracer-db-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)?;
    let bin = out_dir.join("database");
    let status = Command::new("go")
        .args(["build", "-trimpath", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", out_dir.join("cache"))
        .env("HOME", &out_dir)
        .status()
        .context("cannot run go (install golang-go, or run `cargo xtask test`, which does)")?;
    if !status.success() {
        bail!("go build of deploy/demo/database failed");
    }
    build_scratch_image(tag, &[("/database", &bin)], &["/database"])?;
    std::fs::remove_dir_all(&out_dir).ok();
    Ok(tag.to_owned())
}

/// A container removed (with `-f`) when dropped.
pub struct Container {
    pub name: String,
    pub id: String,
}

impl Container {
    /// `podman run -d` with the common flags, then `args` (options, image, command).
    pub fn run(name: &str, args: &[&str]) -> Result<Container> {
        let _ = podman_output(&["rm", "-f", "-t", "0", name]);
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(RUN_FLAGS);
        all.extend_from_slice(args);
        let id = podman(&all)?;
        Ok(Container {
            name: name.to_owned(),
            id: id.lines().last().unwrap_or_default().to_owned(),
        })
    }

    pub fn logs(&self) -> String {
        podman_output(&["logs", &self.name])
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    pub fn running(&self) -> bool {
        podman(&["inspect", "--format", "{{.State.Running}}", &self.name])
            .is_ok_and(|s| s == "true")
    }

    /// Waits for the container's process to exit; returns its exit code.
    pub fn wait(&self, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() > deadline {
                bail!(
                    "{} still running after {timeout:?}: {}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &self.name])?;
        Ok(code.parse().unwrap_or(-1))
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> Result<i64> {
        let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name])?;
        pid.parse()
            .with_context(|| format!("pid of {}: {pid:?}", self.name))
    }

    /// `/proc/<pid>/cgroup` of the container's first process, as the host sees it.
    pub fn host_cgroup(&self) -> Result<String> {
        Ok(std::fs::read_to_string(format!(
            "/proc/{}/cgroup",
            self.pid()?
        ))?)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman_output(&["rm", "-f", "-t", "2", &self.name]);
    }
}

/// Mounts tracefs on the host when nobody has (the agent's container gets it read-only).
pub fn ensure_host_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()?;
    if !status.success() {
        bail!("cannot mount tracefs at /sys/kernel/tracing");
    }
    Ok(())
}

/// podman's default seccomp profile with bpf/perf_event_open allowed under CAP_BPF /
/// CAP_PERFMON, made by the script deploy/README.md tells operators to use.
pub fn seccomp_profile() -> Result<PathBuf> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/podman/seccomp-profile.py");
    let out = Command::new("python3")
        .arg(&script)
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = std::env::temp_dir().join(format!("tracer-seccomp-{}.json", std::process::id()));
    std::fs::write(&path, out.stdout)?;
    Ok(path)
}

/// The agent's container, as deploy/README.md documents it for podman.
pub fn run_agent(
    name: &str,
    env: &[(&str, String)],
    extra_mounts: &[String],
    args: &[&str],
) -> Result<Container> {
    ensure_host_tracefs()?;
    let image = agent_image();
    let caps = AGENT_CAPS.join(",");
    let seccomp = seccomp_profile()?;
    let mut all: Vec<String> = [
        "--pid=host",
        "--network=host",
        "--uts=host",
        "--cap-drop=ALL",
        &format!("--cap-add={caps}"),
        "--security-opt=no-new-privileges",
        &format!("--security-opt=seccomp={}", seccomp.display()),
        "--read-only",
        "--volume=/sys/kernel/btf:/sys/kernel/btf:ro",
        "--volume=/sys/kernel/tracing:/sys/kernel/tracing:ro",
        "--volume=/sys/fs/cgroup:/host/sys/fs/cgroup:ro",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend(extra_mounts.iter().cloned());
    for (k, v) in env {
        all.push(format!("--env={k}={v}"));
    }
    all.push(image);
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Container::run(name, &refs)
}

/// Waits until the agent in `agent` answers `/readyz` on `addr`.
pub async fn wait_ready(
    agent: &Container,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<()> {
    let url = format!("http://{addr}/readyz");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(resp) = reqwest::get(&url).await
            && resp.status().is_success()
        {
            return Ok(());
        }
        if !agent.running() {
            bail!("the agent's container exited: {}", agent.logs());
        }
        if Instant::now() > deadline {
            bail!("agent not ready after {timeout:?}: {}", agent.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
