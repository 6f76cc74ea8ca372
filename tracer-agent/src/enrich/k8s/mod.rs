//! Kubernetes metadata: pure views of API objects (`model`), the indexed store the enricher
//! reads (`store`), and the `kube` watchers that fill it (`watch`).

pub mod model;
pub mod store;
pub mod watch;

pub use store::{PeerInfo, SharedStore, Store};
pub use watch::WatchConfig;
