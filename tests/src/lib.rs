//! Shared helpers for the integration suites.

pub mod harness;
pub mod otlp;

pub use otlp::{
    OtlpReceiver, ReceivedRequest, ReceivedSpan, ReceiverProtocol, Value, unused_local_addr,
};
