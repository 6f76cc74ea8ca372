//! Debian packages fetched without touching the system: apt with a private configuration
//! (the mirror the machine's apt already uses, apt's signature and hash checks against the
//! Debian archive keyring) and `dpkg-deb` to unpack. The VM matrix gets its kernels this
//! way, the tests a second Go release.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::run_cmd;

pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// apt with a private configuration rooted in `dir`: only the given suite, no system state.
pub struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    pub fn new(root: PathBuf, mirror: &str, suite: &str) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial", "parts", "prefs"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::write(root.join("status"), "")?;
        std::fs::write(
            root.join("sources.list"),
            format!("deb [signed-by={KEYRING} target=Packages] {mirror} {suite} main\n"),
        )?;
        Ok(PrivateApt { root })
    }

    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let r = |p: &str| self.root.join(p).display().to_string();
        for (key, value) in [
            ("Dir::Etc::SourceList", r("sources.list")),
            ("Dir::Etc::SourceParts", r("parts")),
            ("Dir::Etc::Preferences", r("prefs/none")),
            ("Dir::Etc::PreferencesParts", r("prefs")),
            ("Dir::State::Lists", r("lists")),
            ("Dir::State::status", r("status")),
            ("Dir::Cache", r("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    pub fn output(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(program);
        cmd.args(args);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Downloads `packages` (their candidate versions) from `suite` and unpacks each into
/// `dest`, as dpkg would lay them out under `/`.
pub fn fetch_unpacked(suite: &str, packages: &[&str], dest: &Path) -> Result<()> {
    for tool in ["apt-get", "dpkg-deb"] {
        if which::which(tool).is_err() {
            bail!("{tool} not found: fetching Debian packages needs apt and dpkg");
        }
    }
    if !Path::new(KEYRING).is_file() {
        bail!("{KEYRING} is missing: run `apt-get install debian-archive-keyring`");
    }
    let mut work = dest.as_os_str().to_owned();
    work.push(".apt");
    let work = PathBuf::from(work);
    let mirror = crate::vm::debian_mirror()?;
    let apt = PrivateApt::new(work.join("apt"), &mirror, suite)?;
    run_cmd(apt.command("apt-get").args(["-q", "update"]))
        .with_context(|| format!("apt-get update for {suite} failed"))?;
    let download = work.join("download");
    std::fs::create_dir_all(&download)?;
    // apt drops privileges to `_apt` for downloads; let it write here.
    if crate::is_root() {
        let _ = Command::new("chown").arg("_apt").arg(&download).output();
    }
    run_cmd(
        apt.command("apt-get")
            .args(["-q", "download"])
            .args(packages)
            .current_dir(&download),
    )?;
    std::fs::create_dir_all(dest)?;
    for package in packages {
        let deb = std::fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .with_context(|| format!("apt-get download left no {package} package"))?;
        run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))?;
    }
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
