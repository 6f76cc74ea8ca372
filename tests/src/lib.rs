//! The suites' own helpers, per subject; what every suite, the VM guest and xtask share is
//! in `tracer-testkit`.

pub mod grpc;
pub mod kube_api;
pub mod linking;
pub mod nodes;
pub mod podman;
