//! PID 1 duties in the guest: the pseudo filesystems, the loopback interface, and powering
//! off when the suite is done (QEMU runs with `-no-reboot`, so power-off ends the VM).

use std::ffi::CString;

use anyhow::{Context as _, Result, bail};

fn mount(source: &str, target: &str, fstype: &str) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating {target}"))?;
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (source_c, target_c, fstype_c) = (c(source), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mount -t {fstype} {source} {target}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// What a minimal node has. tracefs is left unmounted on purpose: the agent mounts it itself
/// (its preflight does), and the suite checks that path on every kernel.
pub fn setup() -> Result<()> {
    mount("proc", "/proc", "proc")?;
    mount("sysfs", "/sys", "sysfs")?;
    mount("devtmpfs", "/dev", "devtmpfs")?;
    mount("tmpfs", "/tmp", "tmpfs")?;
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2")?;
    let name = b"tracer-vm";
    // SAFETY: valid buffer and length.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        bail!("sethostname: {}", std::io::Error::last_os_error());
    }
    loopback_up()
}

/// `ip link set lo up`, with the ioctls `ip` would use.
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: fd is a socket, req a valid ifreq naming an interface.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result.context("bringing up the loopback interface")
}

/// Flushes the console and powers the VM off. Never returns.
pub fn power_off() -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: sync and reboot have no memory preconditions; as PID 1 we may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot(2) only returns on error; exiting PID 1 panics the kernel, which with
    // `panic=-1` and QEMU's `-no-reboot` also ends the VM.
    eprintln!("power off failed: {}", std::io::Error::last_os_error());
    std::process::exit(1)
}

/// The running kernel's release, e.g. `6.1.0-37-cloud-amd64`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
