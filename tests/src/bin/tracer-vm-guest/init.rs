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
    set_hostname("tracer-vm")?;
    loopback_up()
}

/// The name spans carry as `host.name`.
pub fn set_hostname(name: &str) -> Result<()> {
    // SAFETY: valid buffer and length.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        bail!("sethostname: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `ip link set lo up`, with the ioctls `ip` would use.
fn loopback_up() -> Result<()> {
    interface_up("lo", None).context("bringing up the loopback interface")
}

/// `ip addr add IP/24 dev NAME; ip link set NAME up`, with the ioctls `ip` would use.
fn interface_up(name: &str, ip: Option<std::net::Ipv4Addr>) -> std::io::Result<()> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let sockaddr = |addr: std::net::Ipv4Addr| {
        // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes(addr.octets());
        // SAFETY: sockaddr_in fits in sockaddr (both 16 bytes), as the ioctls expect.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    };
    // SAFETY: fd is a socket, req a valid ifreq naming an interface; each ioctl reads or
    // writes only the ifreq.
    let result = unsafe {
        let mut ok = true;
        if let Some(ip) = ip {
            req.ifr_ifru.ifru_addr = sockaddr(ip);
            ok &= libc::ioctl(fd, libc::SIOCSIFADDR, &req) == 0;
            req.ifr_ifru.ifru_netmask = sockaddr(std::net::Ipv4Addr::new(255, 255, 255, 0));
            ok = ok && libc::ioctl(fd, libc::SIOCSIFNETMASK, &req) == 0;
        }
        ok = ok && libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0;
        if ok {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            ok = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) == 0;
        }
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    result
}

/// The two-node case's network: loads the NIC driver the host put in the image (in name
/// order, which is dependency order) and gives `eth0` its address.
pub fn network(node: &str, ip: std::net::Ipv4Addr) -> Result<()> {
    set_hostname(&format!("tracer-vm-{node}"))?;
    let mut modules: Vec<_> = std::fs::read_dir("/tracer-modules")
        .context("the image has no /tracer-modules (built for one node only?)")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    modules.sort();
    for module in modules {
        let file = std::fs::File::open(&module)?;
        let params = c"";
        // SAFETY: finit_module(2) with an open module file and a NUL-terminated parameter
        // string; no memory of ours is kept.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                params.as_ptr(),
                0,
            )
        };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
            bail!("loading {}: {err}", module.display());
        }
    }
    // The driver probes the device as it loads; give the interface a moment to appear.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match interface_up("eth0", Some(ip)) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                bail!("configuring eth0 as {ip}: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
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
