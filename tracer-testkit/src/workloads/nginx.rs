//! nginx: a server in a temporary prefix, with its workers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, children, wait_for_listener};
use crate::nginx_conf::NginxConf;
use anyhow::{Context as _, Result, bail, ensure};

/// nginx as a pre-fork server: a master (as root) and two workers accepting on one shared
/// listener, configured from a generated file in a temporary prefix.
pub struct Nginx {
    master: Child,
    pub port: u16,
    pub workers: Vec<u32>,
    pub dir: TempDir,
}

impl Nginx {
    /// `locations`: the `location` blocks of the one server.
    pub fn start(locations: &str) -> Result<Nginx> {
        let dir = TempDir::new("nginx")?;
        std::fs::create_dir_all(dir.join("html"))?;
        let port = crate::ports::free_port()?;
        let conf = NginxConf {
            prefix: dir.path(),
            listen: format!("127.0.0.1:{port}"),
            workers: 2,
            worker_connections: 1024,
            access_log: true,
            keepalive_requests: 100_000,
            http_extra: String::new(),
            locations: locations.to_owned(),
        }
        .render();
        let conf_path = dir.write("nginx.conf", conf)?;
        let master = Command::new(nginx_binary()?)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start nginx (install it, or run `cargo xtask test` which does)")?;
        let mut nginx = Nginx {
            master,
            port,
            workers: Vec::new(),
            dir,
        };
        wait_for_listener(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).with_context(
            || {
                format!(
                    "nginx: {}",
                    std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
                )
            },
        )?;
        // The readiness probe above is one connection without a request: nginx logs
        // nothing for it and the agent builds no span from it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            nginx.workers = children(nginx.master.id());
            if nginx.workers.len() == 2 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "nginx has workers {:?}",
                nginx.workers
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    pub fn html(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        self.dir.write(&format!("html/{name}"), contents)
    }

    /// Requests nginx has logged (one access-log line each, written when it finishes).
    pub fn logged_requests(&self) -> usize {
        std::fs::read_to_string(self.dir.join("access.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.clone()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (fast shutdown) before exiting.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.master.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.master.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in &self.workers {
            // SAFETY: kill(2); the workers are this test's grandchildren.
            unsafe { libc::kill(*w as i32, libc::SIGKILL) };
        }
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

fn nginx_binary() -> Result<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("nginx not found: install it, or run `cargo xtask test` which does")
}
