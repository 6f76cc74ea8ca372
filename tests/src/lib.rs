//! Shared helpers for the integration suites.

pub mod grpc;
pub mod harness;
pub mod kube_api;
pub mod linking;
pub mod nodes;
pub mod otlp;
pub mod podman;
pub mod pods;
pub mod programs;

pub use otlp::{
    OtlpReceiver, ReceivedRequest, ReceivedSpan, ReceiverProtocol, Value, unused_local_addr,
};
