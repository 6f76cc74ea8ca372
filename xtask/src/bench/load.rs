//! The load generators: `wrk` drives a server to saturation (closed loop, its own CPU
//! cost is the lowest, so the server gets the most of the machine); `oha` sends a fixed
//! rate with coordinated-omission correction and reports latency percentiles. gRPC has
//! its own generator on @grpc/grpc-js (`grpc_load.js`), doing both on one channel.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// One saturation run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturation {
    pub requests_per_sec: f64,
    pub requests: u64,
    /// Non-2xx/3xx responses plus socket errors: a run with any is reported, not trusted.
    pub errors: u64,
}

pub fn wrk(wrk: &Path, url: &str, connections: u32, seconds: u64) -> Result<Saturation> {
    let out = Command::new(wrk)
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .arg(url)
        .output()
        .with_context(|| format!("cannot start {}", wrk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {} {}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_wrk(&text).with_context(|| format!("unexpected wrk output: {text}"))
}

pub fn parse_wrk(text: &str) -> Option<Saturation> {
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    // `  543447 requests in 10.00s, 670.16MB read`
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))?
        .0
        .trim()
        .parse()
        .ok()?;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += n.trim().parse::<u64>().ok()?;
        }
        // `Socket errors: connect 0, read 0, write 0, timeout 0`
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                errors += part.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        }
    }
    Some(Saturation {
        requests_per_sec: rps,
        requests,
        errors,
    })
}

/// One fixed-rate run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedRate {
    pub requests_per_sec: f64,
    /// Responses with any status (the CPU-per-request denominator).
    pub responses: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub fn oha(oha: &Path, url: &str, rate: u64, connections: u32, seconds: u64) -> Result<FixedRate> {
    let out = Command::new(oha)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--latency-correction",
        ])
        .args(["-z", &format!("{seconds}s"), "-q", &rate.to_string()])
        .args(["-c", &connections.to_string()])
        .arg(url)
        .output()
        .with_context(|| format!("cannot start {}", oha.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_oha(&text).with_context(|| format!("unexpected oha output: {text}"))
}

pub fn parse_oha(json: &str) -> Option<FixedRate> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let seconds = |p: &str| -> Option<f64> { v["latencyPercentiles"][p].as_f64() };
    let (mut responses, mut non_2xx) = (0, 0);
    for (code, n) in v["statusCodeDistribution"].as_object()? {
        let n = n.as_u64()?;
        responses += n;
        if !code.starts_with('2') {
            non_2xx += n;
        }
    }
    // Requests still in flight when the duration ends are "aborted due to deadline": the
    // end of every timed run, not a failure.
    let errors = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    Some(FixedRate {
        requests_per_sec: v["summary"]["requestsPerSec"].as_f64()?,
        responses,
        non_2xx,
        errors,
        p50_us: seconds("p50")? * 1e6,
        p99_us: seconds("p99")? * 1e6,
    })
}

/// The gRPC load generator's source (`node -e`).
const GRPC_LOAD: &str = include_str!("grpc_load.js");

/// Where the gRPC generator runs: `node` with @grpc/grpc-js on `NODE_PATH`.
pub struct GrpcLoad {
    pub node_path: std::path::PathBuf,
    pub port: u16,
}

impl GrpcLoad {
    fn run(&self, mode: &str, amount: u64, seconds: u64) -> Result<GrpcReport> {
        let out = Command::new("node")
            .args(["-e", GRPC_LOAD, mode])
            .args([
                self.port.to_string(),
                amount.to_string(),
                seconds.to_string(),
            ])
            .env("NODE_PATH", &self.node_path)
            .output()
            .context("cannot start node (install nodejs)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "the gRPC load generator failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        parse_grpc(&text).with_context(|| format!("unexpected gRPC load report: {text}"))
    }

    /// Closed loop, `concurrency` calls in flight.
    pub fn saturate(&self, concurrency: u32, seconds: u64) -> Result<Saturation> {
        let r = self.run("saturate", concurrency.into(), seconds)?;
        Ok(Saturation {
            requests_per_sec: r.calls_per_sec,
            requests: r.calls,
            errors: r.errors,
        })
    }

    /// Open loop at `rate` calls per second, latency from when each call was due.
    pub fn fixed_rate(&self, rate: u64, seconds: u64) -> Result<FixedRate> {
        let r = self.run("rate", rate, seconds)?;
        Ok(FixedRate {
            requests_per_sec: r.calls_per_sec,
            responses: r.calls,
            non_2xx: r.errors,
            errors: 0,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct GrpcReport {
    calls: u64,
    /// Calls that ended with a status other than OK.
    errors: u64,
    calls_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

fn parse_grpc(json: &str) -> Option<GrpcReport> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    Some(GrpcReport {
        calls: v["calls"].as_u64()?,
        errors: v["errors"].as_u64()?,
        calls_per_sec: v["callsPerSec"].as_f64()?,
        p50_us: v["p50Us"].as_f64()?,
        p99_us: v["p99Us"].as_f64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:8080/1k.bin
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   583.02us  120.33us   3.21ms   89.12%
    Req/Sec    54.61k     1.90k   57.93k    72.00%
  543447 requests in 10.00s, 670.16MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  54339.66
Transfer/sec:     67.01MB
";

    #[test]
    fn wrk_rate_and_errors() {
        assert_eq!(
            parse_wrk(WRK),
            Some(Saturation {
                requests_per_sec: 54339.66,
                requests: 543447,
                errors: 7
            })
        );
        let clean: String = WRK
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_wrk(&clean).unwrap().errors, 0);
        assert_eq!(parse_wrk("wrk: connection refused"), None);
    }

    #[test]
    fn oha_json() {
        let json = r#"{"summary":{"successRate":1.0,"total":10.0,"slowest":0.01,"fastest":0.0001,
            "average":0.0004,"requestsPerSec":19999.5,"totalData":1,"sizePerRequest":1,"sizePerSec":1},
            "latencyPercentiles":{"p10":0.0002,"p25":0.0003,"p50":0.00035,"p75":0.0004,"p90":0.0005,
            "p95":0.0006,"p99":0.0012,"p99.9":0.003,"p99.99":0.005},
            "statusCodeDistribution":{"200":199990,"503":5},"errorDistribution":{"aborted due to deadline":32,"connection closed":3}}"#;
        let r = parse_oha(json).unwrap();
        assert_eq!(r.responses, 199995);
        assert_eq!(r.non_2xx, 5);
        assert_eq!(r.errors, 3, "deadline aborts are not errors");
        assert!((r.p50_us - 350.0).abs() < 1e-6);
        assert!((r.p99_us - 1200.0).abs() < 1e-6);
        assert_eq!(parse_oha("{}"), None);
        assert_eq!(parse_oha("not json"), None);
    }

    #[test]
    fn grpc_report() {
        let json = r#"{"calls":28720,"ok":28718,"errors":2,"seconds":3.0003,"callsPerSec":9572.26,"p50Us":1057.05,"p99Us":7757.4}"#;
        assert_eq!(
            parse_grpc(json),
            Some(GrpcReport {
                calls: 28720,
                errors: 2,
                calls_per_sec: 9572.26,
                p50_us: 1057.05,
                p99_us: 7757.4
            })
        );
        assert_eq!(parse_grpc(r#"{"calls":1}"#), None);
    }
}
