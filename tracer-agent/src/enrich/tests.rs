//! The enricher with a scripted host: pending resources, held spans, upgrades, scope.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::k8s::model::{ContainerMeta, ObjectKey, Owner, PodMeta, ServiceMeta, SliceMeta};
use super::*;
use crate::spans::{SpanKind, SpanStatus};

const POD_UID: &str = "70565f42-b704-42f2-83fe-1ffb77a67800";

#[derive(Clone, Default)]
struct FakeHost {
    cgroups: Arc<Mutex<HashMap<u64, CgroupInfo>>>,
    dead: Arc<Mutex<Vec<u32>>>,
}

impl HostView for FakeHost {
    fn process(&mut self, pid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            comm: comm.into(),
            exe_path: Some(format!("/usr/bin/{comm}")),
            ..Default::default()
        }
    }
    fn cgroup(&mut self, _pid: u32, cgroup_id: u64) -> CgroupInfo {
        self.cgroups
            .lock()
            .unwrap()
            .get(&cgroup_id)
            .cloned()
            .unwrap_or_default()
    }
    fn alive(&self, pid: u32) -> bool {
        !self.dead.lock().unwrap().contains(&pid)
    }
    fn host_name(&self) -> String {
        "box".into()
    }
}

fn container(c: char) -> String {
    c.to_string().repeat(64)
}

fn host() -> FakeHost {
    let h = FakeHost::default();
    let mut m = h.cgroups.lock().unwrap();
    m.insert(
        10,
        CgroupInfo {
            container_id: Some(container('a')),
            runtime: Some(cgroup::Runtime::Containerd),
            pod_uid: Some(POD_UID.into()),
        },
    );
    m.insert(
        11,
        CgroupInfo {
            container_id: Some(container('c')),
            runtime: None,
            pod_uid: Some("11111111-2222-3333-4444-555555555555".into()),
        },
    );
    m.insert(
        12,
        CgroupInfo {
            container_id: Some(container('d')),
            runtime: None,
            pod_uid: None,
        },
    );
    drop(m);
    h
}

fn pod(namespace: &str) -> PodMeta {
    PodMeta {
        uid: POD_UID.into(),
        name: "backend-7d4b9c8f6d-x2x9z".into(),
        namespace: namespace.into(),
        labels: [("pod-template-hash".to_owned(), "7d4b9c8f6d".to_owned())].into(),
        owner: Some(Owner {
            kind: "ReplicaSet".into(),
            name: "backend-7d4b9c8f6d".into(),
        }),
        containers: vec![ContainerMeta {
            name: "app".into(),
            id: Some(container('a')),
            ..Default::default()
        }],
        ips: vec!["10.244.1.7".parse().unwrap()],
        ..Default::default()
    }
}

fn scope() -> KubeScope {
    KubeScope {
        node_name: "node-1".into(),
        include_namespaces: vec![],
        exclude_namespaces: vec!["kube-system".into()],
        host_processes: false,
        own_pod_uid: Some("11111111-2222-3333-4444-555555555555".into()),
        cluster_domain: "cluster.local".into(),
        watch_peers: true,
    }
}

fn kube_enricher(wait: Duration) -> (Enricher, SharedStore, Arc<Metrics>) {
    let store = SharedStore::default();
    let metrics = Arc::new(Metrics::default());
    let cfg = EnrichConfig {
        kubernetes: Some(scope()),
        metadata_wait: wait,
        ..Default::default()
    };
    let e = Enricher::with_host(Box::new(host()), cfg, Some(store.clone()), metrics.clone());
    (e, store, metrics)
}

fn span(resource: Arc<Resource>, kind: SpanKind, peer: Option<(&str, i64)>) -> SpanRecord {
    let mut attributes: crate::spans::Attributes = Vec::new();
    if let Some((ip, port)) = peer {
        attributes.push(("server.address", ip.into()));
        attributes.push(("network.peer.address", ip.into()));
        attributes.push(("network.peer.port", AttrValue::Int(port)));
    }
    SpanRecord {
        trace_id: [1; 16],
        span_id: [2; 8],
        parent_span_id: None,
        trace_state: String::new(),
        parent_sampled: None,
        name: "GET".into(),
        kind,
        start_unix_nanos: 1,
        end_unix_nanos: 2,
        attributes,
        status: SpanStatus::Unset,
        resource,
    }
}

fn attr(r: &Resource, k: &str) -> Option<String> {
    r.get(k).map(|v| v.to_string())
}

#[test]
fn off_kubernetes_every_process_is_traced_with_its_container() {
    let metrics = Arc::new(Metrics::default());
    let mut e = Enricher::with_host(Box::new(host()), EnrichConfig::default(), None, metrics);
    let r = e.resource(42, 12, "curl").unwrap();
    assert_eq!(r.service_name(), "curl");
    assert_eq!(attr(&r, "container.id"), Some(container('d')));
    let host_proc = e.resource(43, 999, "python3").unwrap();
    assert_eq!(attr(&host_proc, "container.id"), None);
    // Cached per process: the same Arc.
    assert!(Arc::ptr_eq(&r, &e.resource(42, 12, "curl").unwrap()));
    let out = e.settle(vec![span(
        r.clone(),
        SpanKind::Client,
        Some(("10.0.0.1", 80)),
    )]);
    assert_eq!(out.len(), 1);
    assert!(out[0].attr("peer.service").is_none());
}

#[test]
fn spans_wait_for_pod_metadata_then_leave_enriched() {
    let (mut e, store, metrics) = kube_enricher(Duration::from_secs(60));
    let early = e.resource(42, 10, "python3").expect("pods are traced");
    assert_eq!(attr(&early, "k8s.pod.uid").as_deref(), Some(POD_UID));
    assert_eq!(attr(&early, "k8s.pod.name"), None);
    assert_eq!(attr(&early, "container.id"), Some(container('a')));

    // Finished before the API answered: held, not exported bare.
    assert!(
        e.settle(vec![span(early.clone(), SpanKind::Server, None)])
            .is_empty()
    );
    assert_eq!(e.held_spans(), 1);
    assert!(e.settle(vec![]).is_empty());

    store.write(|s| s.apply_pod(pod("shop")));
    let out = e.settle(vec![]);
    assert_eq!(out.len(), 1);
    let r = &out[0].resource;
    assert_eq!(
        attr(r, "k8s.pod.name").as_deref(),
        Some("backend-7d4b9c8f6d-x2x9z")
    );
    assert_eq!(attr(r, "k8s.namespace.name").as_deref(), Some("shop"));
    assert_eq!(attr(r, "k8s.container.name").as_deref(), Some("app"));
    assert_eq!(attr(r, "k8s.deployment.name").as_deref(), Some("backend"));
    assert_eq!(attr(r, "k8s.node.name").as_deref(), Some("node-1"));
    assert_eq!(r.service_name(), "backend");
    assert_eq!(e.held_spans(), 0);

    // New connections of the process get the full resource straight away.
    let now = e.resource(42, 10, "python3").unwrap();
    assert_eq!(
        attr(&now, "k8s.pod.name").as_deref(),
        Some("backend-7d4b9c8f6d-x2x9z")
    );
    let out = e.settle(vec![span(now, SpanKind::Server, None)]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        metrics
            .spans_held_for_metadata
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn the_wait_is_bounded_and_nothing_is_dropped() {
    let (mut e, _store, metrics) = kube_enricher(Duration::ZERO);
    let r = e.resource(42, 10, "python3").unwrap();
    let out = e.settle(vec![span(r, SpanKind::Server, None)]);
    assert_eq!(out.len(), 1, "released with what is known");
    assert_eq!(attr(&out[0].resource, "container.id"), Some(container('a')));
    assert_eq!(
        attr(&out[0].resource, "k8s.pod.uid").as_deref(),
        Some(POD_UID)
    );
    assert_eq!(
        metrics
            .spans_released_without_metadata
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Shutdown flushes whatever is still held.
    let (mut e, _store, _) = kube_enricher(Duration::from_secs(60));
    let r = e.resource(42, 10, "python3").unwrap();
    assert!(
        e.settle(vec![span(r.clone(), SpanKind::Server, None)])
            .is_empty()
    );
    assert_eq!(e.flush(vec![span(r, SpanKind::Server, None)]).len(), 2);
}

#[test]
fn scope_excludes_host_processes_own_pod_and_namespaces() {
    let (mut e, store, metrics) = kube_enricher(Duration::from_secs(60));
    assert!(e.resource(1, 999, "kubelet").is_none(), "not in a pod");
    assert!(
        e.resource(2, 12, "dockerd-child").is_none(),
        "a container, not a pod"
    );
    assert!(
        e.resource(3, 11, "tracer-agent").is_none(),
        "the agent's own pod"
    );

    // Held spans of a pod that turns out to be in an excluded namespace are not exported.
    let r = e.resource(42, 10, "python3").unwrap();
    assert!(e.settle(vec![span(r, SpanKind::Server, None)]).is_empty());
    store.write(|s| s.apply_pod(pod("kube-system")));
    assert!(e.settle(vec![]).is_empty());
    assert_eq!(e.held_spans(), 0);
    assert_eq!(
        metrics
            .spans_out_of_scope
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(e.resource(42, 10, "python3").is_none());

    // With host processes enabled, they are traced with the node's name.
    let store = SharedStore::default();
    let cfg = EnrichConfig {
        kubernetes: Some(KubeScope {
            host_processes: true,
            include_namespaces: vec!["shop".into()],
            ..scope()
        }),
        ..Default::default()
    };
    let mut e = Enricher::with_host(
        Box::new(host()),
        cfg,
        Some(store.clone()),
        Arc::new(Metrics::default()),
    );
    let r = e.resource(1, 999, "kubelet").unwrap();
    assert_eq!(attr(&r, "k8s.node.name").as_deref(), Some("node-1"));
    assert_eq!(attr(&r, "host.name").as_deref(), Some("node-1"));
    store.write(|s| s.apply_pod(pod("other")));
    assert!(
        e.resource(42, 10, "python3").is_none(),
        "not in the include list"
    );
}

#[test]
fn client_spans_get_peer_names() {
    let (mut e, store, _) = kube_enricher(Duration::from_secs(60));
    store.write(|s| {
        s.apply_pod(pod("shop"));
        s.apply_service(ServiceMeta {
            namespace: "shop".into(),
            name: "database".into(),
            cluster_ips: vec!["10.96.0.30".parse().unwrap()],
        });
        s.apply_slice(
            ObjectKey::new("shop", "backend-abc"),
            SliceMeta {
                service: Some(ObjectKey::new("shop", "backend")),
                addresses: vec!["10.244.2.9".parse().unwrap()],
                ports: vec![8080],
            },
        );
    });
    let r = e.resource(42, 10, "python3").unwrap();
    let out = e.settle(vec![
        span(r.clone(), SpanKind::Client, Some(("10.96.0.30", 8080))),
        span(r.clone(), SpanKind::Client, Some(("10.244.2.9", 8080))),
        span(r.clone(), SpanKind::Client, Some(("10.244.1.7", 8080))),
        span(r.clone(), SpanKind::Client, Some(("192.0.2.1", 443))),
        span(r, SpanKind::Server, Some(("10.96.0.30", 8080))),
    ]);
    let get = |i: usize, k: &str| out[i].attr(k).map(|v| v.to_string());
    assert_eq!(
        get(0, "server.address").as_deref(),
        Some("database.shop.svc.cluster.local")
    );
    assert_eq!(get(0, "peer.service").as_deref(), Some("database"));
    assert_eq!(
        get(1, "server.address").as_deref(),
        Some("backend.shop.svc.cluster.local")
    );
    assert_eq!(
        get(2, "server.address").as_deref(),
        Some("backend"),
        "a pod on this node"
    );
    assert_eq!(get(3, "peer.service"), None, "outside the cluster");
    assert_eq!(get(3, "server.address").as_deref(), Some("192.0.2.1"));
    assert_eq!(
        get(4, "peer.service"),
        None,
        "server spans have no peer service"
    );

    // A name the client used (Host header) stays; peer.service is still added.
    let r = e.resource(42, 10, "python3").unwrap();
    let mut s = span(r, SpanKind::Client, Some(("10.96.0.30", 8080)));
    s.attributes[0] = ("server.address", "database".into());
    let out = e.settle(vec![s]);
    assert_eq!(
        out[0].attr("server.address").unwrap().to_string(),
        "database"
    );
    assert_eq!(out[0].attr("peer.service").unwrap().to_string(), "database");
}

#[test]
fn a_container_missing_from_the_pod_status_waits_too() {
    let (mut e, store, _) = kube_enricher(Duration::from_secs(60));
    let mut p = pod("shop");
    p.containers = vec![
        ContainerMeta {
            name: "app".into(),
            ..Default::default()
        },
        ContainerMeta {
            name: "sidecar".into(),
            ..Default::default()
        },
    ];
    store.write(|s| s.apply_pod(p));
    let r = e.resource(42, 10, "python3").unwrap();
    assert_eq!(
        attr(&r, "k8s.pod.name").as_deref(),
        Some("backend-7d4b9c8f6d-x2x9z")
    );
    assert!(e.settle(vec![span(r, SpanKind::Server, None)]).is_empty());
    store.write(|s| s.apply_pod(pod("shop")));
    let out = e.settle(vec![]);
    assert_eq!(
        attr(&out[0].resource, "k8s.container.name").as_deref(),
        Some("app")
    );
}

#[test]
fn prune_forgets_exited_processes_but_not_waited_for_ones() {
    let h = host();
    let dead = h.dead.clone();
    let store = SharedStore::default();
    let cfg = EnrichConfig {
        kubernetes: Some(scope()),
        ..Default::default()
    };
    let mut e = Enricher::with_host(
        Box::new(h),
        cfg,
        Some(store.clone()),
        Arc::new(Metrics::default()),
    );
    let r = e.resource(42, 10, "python3").unwrap();
    assert!(e.settle(vec![span(r, SpanKind::Server, None)]).is_empty());
    dead.lock().unwrap().push(42);
    e.prune();
    store.write(|s| s.apply_pod(pod("shop")));
    let out = e.settle(vec![]);
    assert_eq!(
        attr(&out[0].resource, "k8s.pod.name").as_deref(),
        Some("backend-7d4b9c8f6d-x2x9z")
    );
    e.prune();
    assert!(e.procs.is_empty());
    assert!(e.pending.is_empty());
}
