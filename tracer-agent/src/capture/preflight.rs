//! Checks before loading: each failure a user can cause gets one line that says what to do.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::btf::VMLINUX_BTF;

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "tracer-agent must run as root (it loads eBPF programs): rerun with sudo, or use `cargo xtask run`"
        );
    }
    Ok(())
}

pub fn require_btf() -> Result<Vec<u8>> {
    std::fs::read(VMLINUX_BTF).with_context(|| {
        format!(
            "cannot read {VMLINUX_BTF}: this kernel lacks BTF (CONFIG_DEBUG_INFO_BTF=y is required); use a kernel that provides it"
        )
    })
}

/// Tracepoints are attached by id, read from tracefs; mount it when nobody has.
pub fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new(DEBUGFS_TRACING).join("events").is_dir()
    {
        return Ok(());
    }
    std::fs::create_dir_all(TRACEFS).ok();
    let source = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it failed ({err}): run `mount -t tracefs nodev {TRACEFS}`"
        );
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
pub fn raise_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
