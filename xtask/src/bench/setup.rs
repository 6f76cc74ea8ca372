//! What the benchmark installs and starts: the load generators, the release agent, the
//! OTLP receiver, the Python packages, nginx instances; and reading criterion's results.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::Tools;
use super::procs::Service;
use crate::run_cmd;
use tracer_testkit::nginx_conf::NginxConf;

/// The fixed-rate load generator, from crates.io (Debian has no wrk2 or oha).
const OHA_VERSION: &str = "1.16.0";

/// Flask and requests as in the demo's backend; the OpenTelemetry Python SDK with the
/// matching instrumentation release (SDK 1.N pairs with contrib 0.(N+21)b0).
const PYTHON_PACKAGES: &[&str] = &[
    "flask==3.0.3",
    "requests==2.32.3",
    "opentelemetry-sdk==1.45.0",
    "opentelemetry-exporter-otlp-proto-http==1.45.0",
    "opentelemetry-instrumentation-flask==0.66b0",
    "opentelemetry-instrumentation-requests==0.66b0",
];

pub fn tools(with_python: bool) -> Result<Tools> {
    crate::deps::ensure_packages(&[("nginx", "nginx"), ("wrk", "wrk"), ("python3", "python3")])?;
    let oha = ensure_oha()?;
    let python_path = crate::target_dir().join("bench/python");
    if with_python {
        crate::deps::ensure_pip()?;
        ensure_python_packages(&python_path)?;
    }
    let agent = crate::build_agent(true)?;
    eprintln!("==> building the OTLP receiver (tracer-otlp-sink)");
    run_cmd(
        crate::cargo()
            .args([
                "build",
                "--release",
                "--workspace",
                "--bin",
                "tracer-otlp-sink",
            ])
            .env("TRACER_TOOLCHAIN_DIR", crate::toolchain::dir()),
    )?;
    Ok(Tools {
        wrk: which::which("wrk").context("wrk is not on PATH after installing it")?,
        oha,
        agent,
        sink: crate::target_dir().join("release/tracer-otlp-sink"),
        python_path,
        nginx: which::which("nginx")
            .or_else(|_| which::which("/usr/sbin/nginx"))
            .context("nginx is not on PATH after installing it")?,
    })
}

fn ensure_oha() -> Result<PathBuf> {
    let root = crate::toolchain::dir();
    let bin = root.join("bin/oha");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if installed.is_some_and(|v| v.contains(OHA_VERSION)) {
        return Ok(bin);
    }
    eprintln!(
        "==> installing oha {OHA_VERSION} (fixed-rate load generator) into {} (a few minutes, once)",
        root.display()
    );
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "--locked", "--force", "--root"])
            .arg(&root)
            .arg(format!("oha@{OHA_VERSION}")),
    )
    .context("installing oha with cargo failed")?;
    Ok(bin)
}

fn ensure_python_packages(dir: &Path) -> Result<()> {
    let stamp = dir.join(".requirements");
    let want = PYTHON_PACKAGES.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    eprintln!(
        "==> installing Flask, requests and the OpenTelemetry Python SDK into {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(dir);
    run_cmd(crate::deps::pip_install_into(dir).args(PYTHON_PACKAGES)).context(
        "pip install of the benchmark's Python packages failed (is python3-pip installed?)",
    )?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

/// One nginx (master + 1 worker) in its own prefix: an origin serving `html/`, or with
/// `upstream` a reverse proxy to it over keep-alive connections.
pub struct Nginx {
    service: Service,
    pub addr: SocketAddr,
    prefix: PathBuf,
}

impl Nginx {
    pub fn start(nginx: &Path, prefix: &Path, upstream: Option<SocketAddr>) -> Result<Nginx> {
        let _ = std::fs::remove_dir_all(prefix);
        std::fs::create_dir_all(prefix.join("html"))?;
        let addr = super::runner::free_addr()?;
        let (location, upstream_block) = match upstream {
            None => ("location / { }".to_owned(), String::new()),
            Some(up) => (
                "location / { proxy_pass http://origin; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; }"
                    .to_owned(),
                format!("upstream origin {{ server {up}; keepalive 64; }}"),
            ),
        };
        let conf = NginxConf {
            prefix,
            listen: addr.to_string(),
            workers: 1,
            worker_connections: 4096,
            access_log: false,
            keepalive_requests: 10_000_000,
            http_extra: upstream_block,
            locations: location,
        }
        .render();
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = prefix.join("stderr.log");
        let service = Service::spawn(
            "nginx",
            Command::new(nginx)
                .arg("-p")
                .arg(prefix)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(prefix.join("error.log")),
            &log,
        )?;
        let mut n = Nginx {
            service,
            addr,
            prefix: prefix.to_owned(),
        };
        // Listening is the readiness signal; callers then GET a real path.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            n.service.ensure_running(&prefix.join("error.log"))?;
            if std::time::Instant::now() > deadline {
                bail!("nginx did not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    pub fn html_dir(&self) -> PathBuf {
        self.prefix.join("html")
    }
}

/// One criterion benchmark's result.
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionResult {
    pub id: String,
    /// Elements per iteration (the benchmark's declared throughput).
    pub elements: f64,
    pub median_ns: f64,
}

/// Every `<bench>/new/` result under criterion's output directory, sorted by id.
pub fn criterion_results(dir: &Path) -> Result<Vec<CriterionResult>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "new") {
                    if let Some(r) = read_criterion(&path)? {
                        out.push(r);
                    }
                } else if path.file_name().is_none_or(|n| n != "report") {
                    stack.push(path);
                }
            }
        }
    }
    if out.is_empty() {
        bail!("no criterion results under {}", dir.display());
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn read_criterion(new_dir: &Path) -> Result<Option<CriterionResult>> {
    let read = |name: &str| -> Result<Option<serde_json::Value>> {
        match std::fs::read_to_string(new_dir.join(name)) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("malformed {}", new_dir.join(name).display())
            })?)),
            Err(_) => Ok(None),
        }
    };
    let (Some(bench), Some(estimates)) = (read("benchmark.json")?, read("estimates.json")?) else {
        return Ok(None);
    };
    parse_criterion(&bench, &estimates)
        .map(Some)
        .with_context(|| format!("unexpected criterion files in {}", new_dir.display()))
}

pub fn parse_criterion(
    bench: &serde_json::Value,
    estimates: &serde_json::Value,
) -> Option<CriterionResult> {
    let elements = bench["throughput"]["Elements"]
        .as_u64()
        .or_else(|| bench["throughput"]["ElementsAndBytes"]["elements"].as_u64())?;
    Some(CriterionResult {
        id: bench["full_id"].as_str()?.to_owned(),
        elements: elements as f64,
        median_ns: estimates["median"]["point_estimate"].as_f64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_files() {
        let bench: serde_json::Value = serde_json::from_str(
            r#"{"group_id":"hot_path","function_id":"events_to_spans","value_str":null,
                "throughput":{"Elements":128},"full_id":"hot_path/events_to_spans",
                "directory_name":"hot_path/events_to_spans","title":"hot_path/events_to_spans"}"#,
        )
        .unwrap();
        let estimates: serde_json::Value = serde_json::from_str(
            r#"{"mean":{"point_estimate":260000.0},"median":{"point_estimate":256000.0}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_criterion(&bench, &estimates),
            Some(CriterionResult {
                id: "hot_path/events_to_spans".into(),
                elements: 128.0,
                median_ns: 256000.0
            })
        );
        let no_throughput: serde_json::Value =
            serde_json::from_str(r#"{"full_id":"x","throughput":null}"#).unwrap();
        assert_eq!(parse_criterion(&no_throughput, &estimates), None);
    }
}
