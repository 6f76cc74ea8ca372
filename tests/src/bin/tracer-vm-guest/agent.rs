//! The agent in the guest suite: the test kit's agent handle, started with the guest's
//! settings.

use std::time::Duration;

use anyhow::Result;
use tracer_testkit::agent::Agent;
use tracer_testkit::harness::agent_binary;

use crate::http;

/// Starts the agent exporting to `otlp_endpoint` over gRPC (console mode when `None`), with
/// more flags, and waits until `/readyz` answers 200: every program loaded and attached.
pub fn start(otlp_endpoint: Option<&str>, args: &[&str], timeout: Duration) -> Result<Agent> {
    let mut env = vec![
        ("NO_COLOR", "1".to_owned()),
        // Spans leave within 100 ms instead of the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    if let Some(endpoint) = otlp_endpoint {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()));
    }
    Agent::spawn(&agent_binary()?, args, &env, timeout)
}

/// One GET to the agent's health/metrics server: (status, body).
pub fn get(agent: &Agent, path: &str) -> Result<(u16, String)> {
    let exchange = http::request_once(agent.metrics_addr.port(), "GET", path, b"")?;
    Ok((
        exchange.status,
        String::from_utf8_lossy(&exchange.body).into_owned(),
    ))
}
