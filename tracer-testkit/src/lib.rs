//! The test kit: what the root suites (`tests/`), the VM guest and xtask share.
//!
//! * [`harness`]: the agent under test as a process, and the servers and clients beside it;
//! * [`otlp`]: an OTLP receiver (gRPC and HTTP) that keeps what it is sent;
//! * [`pods`]: network namespaces and cgroups laid out as a kubelet does, and the lesson's
//!   three services in them;
//! * [`ports`]: free local ports.

#[cfg(feature = "suites")]
pub mod harness;
#[cfg(feature = "suites")]
pub mod otlp;
pub mod pods;
pub mod ports;

#[cfg(feature = "suites")]
pub use otlp::{OtlpReceiver, ReceivedRequest, ReceivedSpan, ReceiverProtocol, Value};
