//! Who produced a span: process, container and pod metadata, as the span's resource; and who
//! a CLIENT span talked to, as `server.address` / `peer.service`.
//!
//! ```text
//! kernel event (tgid, cgroup_id, comm)
//!   → cgroup path (cgroup_id in the cgroup2 mount; else /proc/<pid>/cgroup)   cgroupfs, cgroup
//!   → container id + pod UID                                                 cgroup (pure)
//!   → pod, containers, owners, Services, EndpointSlices (kube watchers)      k8s
//!   → process attributes from /proc (exe, command line, OTEL_* env, runtime)  process
//!   → Resource by the OpenTelemetry rules                                    attrs (pure)
//! ```
//!
//! [`Enricher::resource`] never blocks on the API: it answers from what is known now. A
//! process in a pod the store does not know yet (agent just started, API slow) gets a
//! *pending* resource (container id, pod UID, process attributes). Spans carrying a pending
//! resource are held by [`Enricher::settle`] for up to `metadata_wait`; as soon as the pod's
//! metadata arrives they leave with the full resource, and when the wait is over they leave
//! with the best resource known then. Spans are never dropped for lack of metadata; they are
//! dropped only when the metadata shows the pod is out of scope (an excluded namespace).

pub mod attrs;
pub mod cgroup;
pub mod cgroupfs;
pub mod cli;
pub mod k8s;
pub mod process;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::metrics::Metrics;
use crate::spans::{AttrValue, Resource, SpanKind, SpanRecord};
use process::ProcessInfo;

pub use cgroup::CgroupInfo;
pub use k8s::{PeerInfo, SharedStore};

#[derive(Debug, Error)]
pub enum EnrichError {
    #[error(
        "Kubernetes mode needs this node's name: set NODE_NAME from the downward API (spec.nodeName) or pass --node-name"
    )]
    NoNodeName,
    #[error(
        "no Kubernetes API configuration: {0} (in a pod, mount the service account token; elsewhere set KUBECONFIG)"
    )]
    KubeConfig(String),
    #[error("cannot create the Kubernetes client: {0}")]
    KubeClient(String),
}

/// Which processes are traced in Kubernetes mode, and how peers are named.
#[derive(Debug, Clone)]
pub struct KubeScope {
    pub node_name: String,
    /// Trace only pods in these namespaces (empty: all).
    pub include_namespaces: Vec<String>,
    /// Never trace pods in these namespaces.
    pub exclude_namespaces: Vec<String>,
    /// Also trace processes outside pods (the kubelet, the container runtime, host daemons).
    pub host_processes: bool,
    /// UID of the agent's own pod (downward API); its processes are never traced.
    pub own_pod_uid: Option<String>,
    pub cluster_domain: String,
    /// Watch Services and EndpointSlices to name peers.
    pub watch_peers: bool,
}

impl KubeScope {
    pub fn namespace_traced(&self, ns: &str) -> bool {
        (self.include_namespaces.is_empty() || self.include_namespaces.iter().any(|n| n == ns))
            && !self.exclude_namespaces.iter().any(|n| n == ns)
    }
}

#[derive(Debug, Clone)]
pub struct EnrichConfig {
    pub kubernetes: Option<KubeScope>,
    pub proc_root: PathBuf,
    /// The cgroup2 mount; `None`: the first of [`cgroupfs::DEFAULT_CANDIDATES`] that is one.
    pub cgroup_root: Option<PathBuf>,
    /// How long spans of a pod wait for the pod's metadata.
    pub metadata_wait: Duration,
    /// Spans held at once; beyond it the oldest leave with what is known.
    pub max_held_spans: usize,
    pub max_processes: usize,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            kubernetes: None,
            proc_root: PathBuf::from("/proc"),
            cgroup_root: None,
            metadata_wait: Duration::from_secs(5),
            max_held_spans: 50_000,
            max_processes: 16_384,
        }
    }
}

/// How the enricher looks at the host. The real one reads /proc and the cgroup2 mount;
/// tests substitute their own.
pub trait HostView: Send {
    fn process(&mut self, pid: u32, comm: &str) -> ProcessInfo;
    fn cgroup(&mut self, pid: u32, cgroup_id: u64) -> CgroupInfo;
    fn alive(&self, pid: u32) -> bool;
    fn host_name(&self) -> String;
}

pub struct ProcHost {
    proc_root: PathBuf,
    ids: cgroupfs::CgroupIds,
    by_id: HashMap<u64, CgroupInfo>,
}

impl ProcHost {
    pub fn new(proc_root: PathBuf, cgroup_root: Option<PathBuf>) -> Self {
        let root = cgroup_root.or_else(|| cgroupfs::find_root(cgroupfs::DEFAULT_CANDIDATES));
        match &root {
            Some(r) => tracing::debug!("cgroup2 hierarchy at {}", r.display()),
            None => tracing::info!(
                "no cgroup2 mount found: containers are told from /proc/<pid>/cgroup only"
            ),
        }
        ProcHost {
            proc_root,
            ids: cgroupfs::CgroupIds::new(root),
            by_id: HashMap::new(),
        }
    }
}

impl HostView for ProcHost {
    fn process(&mut self, pid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo::read(&self.proc_root, pid, comm)
    }

    /// The event's cgroup id first (it outlives the process); `/proc/<pid>/cgroup` when the
    /// id says nothing (v1 hosts, where it is the root; hybrid hosts whose runtime does not
    /// use the unified hierarchy).
    fn cgroup(&mut self, pid: u32, cgroup_id: u64) -> CgroupInfo {
        if let Some(info) = self.by_id.get(&cgroup_id) {
            return info.clone();
        }
        let from_id = self.ids.path_of(cgroup_id).map(|p| cgroup::parse_path(&p));
        if let Some(info) = &from_id
            && info.container_id.is_some()
        {
            if self.by_id.len() >= 65_536 {
                self.by_id.clear();
            }
            self.by_id.insert(cgroup_id, info.clone());
            return info.clone();
        }
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        match std::fs::read_to_string(path) {
            Ok(text) => cgroup::parse_proc_cgroup(&text).container(),
            Err(_) => from_id.unwrap_or_default(),
        }
    }

    fn alive(&self, pid: u32) -> bool {
        self.proc_root.join(pid.to_string()).exists()
    }

    fn host_name(&self) -> String {
        std::fs::read_to_string(self.proc_root.join("sys/kernel/hostname"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    }
}

#[derive(Debug, Clone)]
enum Verdict {
    Traced(Arc<Resource>),
    /// In a pod whose metadata has not arrived (or whose container is not listed yet).
    Pending(Arc<Resource>),
    /// Out of scope: not a pod, an excluded namespace, or the agent's own pod.
    Excluded,
}

struct ProcEntry {
    cgroup_id: u64,
    info: ProcessInfo,
    cgroup: CgroupInfo,
    verdict: Verdict,
    /// Store generation the verdict was computed at.
    generation: u64,
}

struct Held {
    deadline: Instant,
    span: SpanRecord,
}

pub struct Enricher {
    host: Box<dyn HostView>,
    host_name: String,
    kube: Option<(KubeScope, SharedStore)>,
    /// Looked up for every connection and span: foldhash rather than SipHash.
    procs: foldhash::HashMap<u32, ProcEntry>,
    /// Pending resources handed out, by address (the map's clone keeps the address unique),
    /// with the process they stand for.
    pending: foldhash::HashMap<usize, (Arc<Resource>, u32, u64)>,
    held: VecDeque<Held>,
    metrics: Arc<Metrics>,
    cfg: EnrichConfig,
}

fn ptr(r: &Arc<Resource>) -> usize {
    Arc::as_ptr(r) as usize
}

impl Enricher {
    /// Off Kubernetes: process and container metadata from /proc and cgroups.
    pub fn host(metrics: Arc<Metrics>) -> Self {
        let cfg = EnrichConfig::default();
        let host = ProcHost::new(cfg.proc_root.clone(), cfg.cgroup_root.clone());
        Self::with_host(Box::new(host), cfg, None, metrics)
    }

    pub fn with_host(
        host: Box<dyn HostView>,
        cfg: EnrichConfig,
        store: Option<SharedStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let host_name = host.host_name();
        let kube = cfg
            .kubernetes
            .clone()
            .map(|scope| (scope, store.unwrap_or_default()));
        Enricher {
            host,
            host_name,
            kube,
            procs: foldhash::HashMap::default(),
            pending: foldhash::HashMap::default(),
            held: VecDeque::new(),
            metrics,
            cfg,
        }
    }

    /// Builds the enricher for `cfg`; in Kubernetes mode connects to the API and starts the
    /// watchers (which retry on their own: an unreachable API does not stop the agent).
    pub async fn start(cfg: EnrichConfig, metrics: Arc<Metrics>) -> Result<Self, EnrichError> {
        let host = ProcHost::new(cfg.proc_root.clone(), cfg.cgroup_root.clone());
        let store = match &cfg.kubernetes {
            None => None,
            Some(scope) => {
                let client = k8s::watch::client().await?;
                let store = SharedStore::default();
                k8s::watch::spawn(
                    client,
                    store.clone(),
                    &k8s::WatchConfig {
                        node_name: scope.node_name.clone(),
                        peers: scope.watch_peers,
                    },
                    metrics.clone(),
                );
                Some(store)
            }
        };
        Ok(Self::with_host(Box::new(host), cfg, store, metrics))
    }

    pub fn store(&self) -> Option<&SharedStore> {
        self.kube.as_ref().map(|(_, s)| s)
    }

    fn generation(&self) -> u64 {
        self.kube.as_ref().map(|(_, s)| s.generation()).unwrap_or(0)
    }

    /// The resource of a process's spans, from what is known now; `None` when the process is
    /// out of scope (its connections are then not tracked at all). Never blocks on the API.
    pub fn resource(&mut self, pid: u32, cgroup_id: u64, comm: &str) -> Option<Arc<Resource>> {
        let generation = self.generation();
        let fresh = match self.procs.get(&pid) {
            // A different cgroup id is a reused pid (or a process that moved): look again.
            Some(e) if e.cgroup_id == cgroup_id => {
                matches!(e.verdict, Verdict::Pending(_)) && e.generation != generation
            }
            _ => {
                if self.procs.len() >= self.cfg.max_processes {
                    self.procs
                        .retain(|_, e| matches!(e.verdict, Verdict::Pending(_)));
                }
                let info = self.host.process(pid, comm);
                let cgroup = self.host.cgroup(pid, cgroup_id);
                self.procs.insert(
                    pid,
                    ProcEntry {
                        cgroup_id,
                        info,
                        cgroup,
                        verdict: Verdict::Excluded,
                        generation: u64::MAX,
                    },
                );
                true
            }
        };
        if fresh {
            let entry = &self.procs[&pid];
            let verdict = self.decide(&entry.info, &entry.cgroup);
            if let Verdict::Pending(r) = &verdict {
                self.pending.insert(ptr(r), (r.clone(), pid, cgroup_id));
            }
            let entry = self.procs.get_mut(&pid).expect("just looked up");
            entry.verdict = verdict;
            entry.generation = generation;
        }
        match &self.procs[&pid].verdict {
            Verdict::Traced(r) | Verdict::Pending(r) => Some(r.clone()),
            Verdict::Excluded => None,
        }
    }

    /// The runtime of a process [`Enricher::resource`] has looked at.
    pub fn runtime(&self, pid: u32) -> crate::spans::runtime::Runtime {
        self.procs
            .get(&pid)
            .map(|e| e.info.runtime)
            .unwrap_or_default()
    }

    fn decide(&self, info: &ProcessInfo, cgroup: &CgroupInfo) -> Verdict {
        let subject = attrs::Subject {
            process: info,
            cgroup,
            pod: None,
            workloads: &[],
            node_name: None,
            host_name: &self.host_name,
        };
        let Some((scope, store)) = &self.kube else {
            return Verdict::Traced(Arc::new(attrs::build_resource(&subject)));
        };
        let subject = attrs::Subject {
            node_name: Some(&scope.node_name),
            ..subject
        };
        let Some(uid) = &cgroup.pod_uid else {
            return if scope.host_processes {
                Verdict::Traced(Arc::new(attrs::build_resource(&subject)))
            } else {
                Verdict::Excluded
            };
        };
        if scope.own_pod_uid.as_deref() == Some(uid.as_str()) {
            return Verdict::Excluded;
        }
        store.read(|s| {
            let Some(pod) = s.pod(uid) else {
                return Verdict::Pending(Arc::new(attrs::build_resource(&subject)));
            };
            if !scope.namespace_traced(&pod.namespace)
                || scope.own_pod_uid.as_deref() == Some(pod.uid.as_str())
            {
                return Verdict::Excluded;
            }
            let workloads = s.workloads(&pod);
            let subject = attrs::Subject {
                pod: Some(&pod),
                workloads: &workloads,
                ..subject
            };
            let resource = Arc::new(attrs::build_resource(&subject));
            // A container that started a moment ago may not be in the pod's status yet.
            if subject.container().is_none() {
                Verdict::Pending(resource)
            } else {
                Verdict::Traced(resource)
            }
        })
    }

    /// Spans whose resource is final leave now (CLIENT spans get their peer's name); spans
    /// waiting for their pod's metadata are held, and leave once it arrived or their wait is
    /// over. Call with every batch of finished spans, and periodically with none.
    pub fn settle(&mut self, mut spans: Vec<SpanRecord>) -> Vec<SpanRecord> {
        let now = Instant::now();
        if self.pending.is_empty() && self.held.is_empty() {
            // The common case: nothing waits for metadata; the spans leave in place.
            spans.iter_mut().for_each(|s| self.add_peer(s));
            return spans;
        }
        let mut out = Vec::with_capacity(spans.len());
        for span in spans {
            if self.pending.contains_key(&ptr(&span.resource)) {
                Metrics::inc(&self.metrics.spans_held_for_metadata);
                self.held.push_back(Held {
                    deadline: now + self.cfg.metadata_wait,
                    span,
                });
            } else {
                out.push(self.with_peer(span));
            }
        }
        self.release(now, false, &mut out);
        out
    }

    /// Everything held leaves now, with the best resource known (shutdown).
    pub fn flush(&mut self, spans: Vec<SpanRecord>) -> Vec<SpanRecord> {
        let mut out = self.settle(spans);
        self.release(Instant::now(), true, &mut out);
        out
    }

    pub fn held_spans(&self) -> usize {
        self.held.len()
    }

    fn release(&mut self, now: Instant, all: bool, out: &mut Vec<SpanRecord>) {
        if self.held.is_empty() {
            return;
        }
        let overflow = self.held.len().saturating_sub(self.cfg.max_held_spans);
        let held = std::mem::take(&mut self.held);
        for (i, mut h) in held.into_iter().enumerate() {
            let key = self
                .pending
                .get(&ptr(&h.span.resource))
                .map(|(_, p, c)| (*p, *c));
            let verdict = match key {
                Some((pid, cgroup_id)) => {
                    let comm = self
                        .procs
                        .get(&pid)
                        .map(|e| e.info.comm.clone())
                        .unwrap_or_default();
                    self.resource(pid, cgroup_id, &comm);
                    self.procs
                        .get(&pid)
                        .filter(|e| e.cgroup_id == cgroup_id)
                        .map(|e| e.verdict.clone())
                }
                None => None,
            };
            let expired = all || i < overflow || now >= h.deadline;
            match verdict {
                Some(Verdict::Traced(r)) => {
                    h.span.resource = r;
                    out.push(self.with_peer(h.span));
                }
                Some(Verdict::Excluded) => Metrics::inc(&self.metrics.spans_out_of_scope),
                Some(Verdict::Pending(r)) if expired => {
                    Metrics::inc(&self.metrics.spans_released_without_metadata);
                    h.span.resource = r;
                    out.push(self.with_peer(h.span));
                }
                // The pid was reused meanwhile: the span keeps what it had.
                None if expired => {
                    Metrics::inc(&self.metrics.spans_released_without_metadata);
                    out.push(self.with_peer(h.span));
                }
                _ => self.held.push_back(h),
            }
        }
        // Forget pending resources that nothing refers to any more.
        self.pending.retain(|_, (r, _, _)| Arc::strong_count(r) > 1);
    }

    /// The cluster name of a CLIENT span's destination.
    pub fn peer(&self, ip: IpAddr, port: u16) -> Option<PeerInfo> {
        let (scope, store) = self.kube.as_ref()?;
        store.read(|s| s.peer(ip, port, &scope.cluster_domain))
    }

    /// Sets `peer.service`, and `server.address` when the client named its server by IP
    /// only (a name from the `Host` header is what the application asked for and stays).
    fn with_peer(&self, mut span: SpanRecord) -> SpanRecord {
        self.add_peer(&mut span);
        span
    }

    fn add_peer(&self, span: &mut SpanRecord) {
        if span.kind != SpanKind::Client || self.kube.is_none() {
            return;
        }
        let ip = match span.attr("network.peer.address") {
            Some(AttrValue::Str(s)) => s.parse::<IpAddr>().ok(),
            _ => None,
        };
        let port = match span.attr("network.peer.port") {
            Some(AttrValue::Int(p)) => u16::try_from(*p).ok(),
            _ => None,
        };
        let (Some(ip), Some(port)) = (ip, port) else {
            return;
        };
        let Some(peer) = self.peer(ip, port) else {
            return;
        };
        let named_by_ip = match span.attr("server.address") {
            Some(AttrValue::Str(s)) => s.parse::<IpAddr>().is_ok(),
            _ => true,
        };
        if named_by_ip {
            span.attributes.retain(|(k, _)| *k != "server.address");
            span.attributes
                .push(("server.address", peer.address.into()));
        }
        span.attributes.retain(|(k, _)| *k != "peer.service");
        span.attributes.push(("peer.service", peer.service.into()));
    }

    /// The process still exists (under the configured `/proc`).
    pub fn process_alive(&self, pid: u32) -> bool {
        self.host.alive(pid)
    }

    /// Periodic housekeeping: forget processes that exited (unless spans wait for them).
    pub fn prune(&mut self) {
        let referenced: std::collections::HashSet<u32> =
            self.pending.values().map(|(_, pid, _)| *pid).collect();
        let host = &self.host;
        self.procs
            .retain(|pid, _| referenced.contains(pid) || host.alive(*pid));
    }
}

/// The pod UID of a process from its `/proc/<pid>/cgroup` (the agent's own pod, when the
/// downward API does not say).
pub fn pod_uid_of(proc_root: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    cgroup::parse_proc_cgroup(&text).container().pod_uid
}

#[cfg(test)]
mod tests;
