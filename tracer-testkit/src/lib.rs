//! The test kit: what the root suites (`tests/`), the VM guest and xtask share.
//!
//! * [`agent`]: the agent as a child process;
//! * [`harness`]: the agent under test started from async tests, and the servers and
//!   clients beside it;
//! * [`otlp`]: an OTLP receiver (gRPC and HTTP) that keeps what it is sent;
//! * [`pods`]: network namespaces and cgroups laid out as a kubelet does, and the lesson's
//!   three services in them;
//! * [`ports`]: free local ports;
//! * [`process`]: child processes: waiting for readiness, stopping within a deadline;
//! * [`span_count`]: the spans of an OTLP export request counted without decoding it (the
//!   benchmark's receiver);
//! * [`spans`]: the agent exporting to the receiver, the spans collected, and queries and
//!   assertions over them;
//! * [`workloads`]: the programs the suites trace, per language.

pub mod agent;
#[cfg(feature = "suites")]
pub mod harness;
pub mod nginx_conf;
#[cfg(feature = "suites")]
pub mod otlp;
pub mod pods;
pub mod ports;
pub mod process;
pub mod span_count;
#[cfg(feature = "suites")]
pub mod spans;
#[cfg(feature = "suites")]
pub mod workloads;

#[cfg(feature = "suites")]
pub use otlp::{OtlpReceiver, ReceivedRequest, ReceivedSpan, ReceiverProtocol, Value};
