//! Booting a guest: QEMU found (or installed from the distribution), KVM used when it really
//! boots a guest and software emulation (TCG) otherwise, the serial console streamed line by
//! line, and a hard deadline after which QEMU is killed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

pub const QEMU: &str = "qemu-system-x86_64";
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// The QEMU binary, installing the distribution's package when it is missing and we may.
pub fn ensure_qemu() -> Result<PathBuf> {
    if let Ok(path) = which::which(QEMU) {
        return Ok(path);
    }
    if !crate::is_root() || which::which("apt-get").is_err() {
        bail!("{QEMU} not found: install it (`apt-get install {QEMU_PACKAGE}` on Debian/Ubuntu)");
    }
    eprintln!("==> installing {QEMU_PACKAGE} (the VM tests boot their kernels with it)");
    run_cmd(Command::new("apt-get").args(["-q", "update"]))?;
    run_cmd(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                QEMU_PACKAGE,
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {QEMU_PACKAGE} failed"))?;
    which::which(QEMU)
        .with_context(|| format!("{QEMU_PACKAGE} installed but {QEMU} is not on PATH"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM if a probe guest boots with it, else TCG.
    Auto,
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// Software emulation: slow but works everywhere.
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Resolves `Auto`: /dev/kvm must be usable *and* a kernel must actually start under it (on
/// some hosts KVM initialises but guests hang before their first console line). The probe
/// boots `kernel` without an initramfs and waits for its first line.
pub fn choose_accel(requested: Accel, qemu: &Path, kernel: &Path) -> Result<Accel> {
    match requested {
        Accel::Kvm | Accel::Tcg => return Ok(requested),
        Accel::Auto => {}
    }
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = kvm {
        eprintln!("==> KVM unavailable (/dev/kvm: {e}): using TCG software emulation");
        return Ok(Accel::Tcg);
    }
    let limit = Duration::from_secs(10);
    eprintln!("==> probing KVM: booting a kernel under it (up to {limit:?})");
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "kvm", "-m", "256", "-smp", "1"])
        .args(common_args())
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 earlyprintk=serial"]);
    let booted = Console::spawn(cmd)?.wait_for(limit, |line| line.contains("Linux version"));
    if booted {
        eprintln!("==> KVM works: using it");
        Ok(Accel::Kvm)
    } else {
        eprintln!("==> KVM does not boot guests on this host: using TCG software emulation");
        Ok(Accel::Tcg)
    }
}

/// No display, no default devices, the first serial port on stdout, exit instead of reboot.
fn common_args() -> Vec<&'static str> {
    vec![
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
}

/// A running QEMU whose console arrives line by line; killed when dropped.
pub struct Console {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Console {
    pub fn spawn(mut cmd: Command) -> Result<Console> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {QEMU}"))?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tx2 = tx.clone();
        std::thread::spawn(move || forward(stdout, "", tx));
        std::thread::spawn(move || forward(stderr, "qemu: ", tx2));
        Ok(Console { child, lines })
    }

    /// Waits until a line satisfies `f` (true), or the deadline passes or QEMU exits (false).
    fn wait_for(mut self, limit: Duration, f: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if f(&line) => return true,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    return false;
                }
            }
        }
    }

    /// The next console line; `Timeout` at the deadline, `Disconnected` once QEMU exited and
    /// its output is drained.
    pub fn next_line(&self, deadline: Instant) -> Result<String, RecvTimeoutError> {
        self.lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    /// Kills QEMU (a hung guest) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(self.child.wait()?)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Forwards lines (lossy UTF-8, carriage returns dropped) until EOF.
fn forward(stream: impl std::io::Read, prefix: &str, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                if tx.send(format!("{prefix}{line}")).is_err() {
                    return;
                }
            }
        }
    }
}

/// What a guest run needs.
pub struct BootSpec<'a> {
    pub qemu: &'a Path,
    pub accel: Accel,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Extra kernel command line words (`KEY=value` reach init as environment variables).
    pub cmdline_extra: Vec<String>,
    /// Extra QEMU arguments (a network device).
    pub qemu_extra: Vec<String>,
}

pub fn boot(spec: &BootSpec) -> Result<Console> {
    let mut cmdline = vec![
        "console=ttyS0".to_owned(),
        // Reboot at once on panic (and on oops); with -no-reboot QEMU then exits.
        "panic=-1".to_owned(),
        "oops=panic".to_owned(),
        // Kernel messages at warning and above only: the console is the test log.
        "quiet".to_owned(),
        "rdinit=/init".to_owned(),
    ];
    cmdline.extend(spec.cmdline_extra.iter().cloned());
    let mut cmd = Command::new(spec.qemu);
    cmd.args(["-accel", spec.accel.name()])
        .args(["-m", &spec.memory_mib.to_string()])
        .args(["-smp", &spec.cpus.to_string()])
        .args(common_args())
        .arg("-kernel")
        .arg(spec.kernel)
        .arg("-initrd")
        .arg(spec.initramfs)
        .arg("-append")
        .arg(cmdline.join(" "));
    if spec.accel == Accel::Kvm {
        cmd.args(["-cpu", "host"]);
    }
    cmd.args(&spec.qemu_extra);
    Console::spawn(cmd)
}
