//! System tools the integration tests drive (real servers and clients), installed from the
//! distribution's packages when missing.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

/// (command that must exist, Debian package providing it)
const TEST_TOOLS: &[(&str, &str)] = &[("curl", "curl"), ("python3", "python3")];

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn ensure_test_tools() -> Result<()> {
    let missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!(
            "the integration tests need {}: install them with your package manager",
            missing.join(", ")
        );
    }
    eprintln!("==> installing test tools: {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing test tools failed")
}
