//! The agent's Kubernetes metadata client against a server that replays the API's list and
//! watch responses: the same `kube` client and watcher code that runs in a cluster (config
//! from KUBECONFIG, field selector, pagination, bookmarks, `410 Gone`, reconnects).
//! No root needed: nothing is traced here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tracer_agent::enrich::k8s::{self, SharedStore};
use tracer_agent::enrich::{EnrichConfig, Enricher, KubeScope};
use tracer_agent::metrics::Metrics;
use tracer_tests::kube_api::{FakeKubeApi, Kind};

const T: Duration = Duration::from_secs(20);

fn pod(
    name: &str,
    uid: &str,
    node: &str,
    owner: Option<(&str, &str)>,
    hash: Option<&str>,
) -> Value {
    let mut labels = json!({"app": name.split('-').next().unwrap()});
    if let Some(h) = hash {
        labels["pod-template-hash"] = json!(h);
    }
    let mut p = json!({
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": labels,
                     "creationTimestamp": "2026-11-26T10:00:00Z"},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": "10.244.1.9", "podIPs": [{"ip": "10.244.1.9"}]}
    });
    if let Some((kind, owner)) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind,
            "name": owner, "uid": "owner-uid", "controller": true, "blockOwnerDeletion": true}]);
    }
    p
}

fn with_container_id(mut p: Value, id: &str) -> Value {
    p["status"]["containerStatuses"] = json!([{"name": "app", "containerID": format!("containerd://{id}"),
        "image": "app:1", "imageID": "", "ready": true, "restartCount": 0,
        "state": {"running": {"startedAt": "2026-11-26T10:00:01Z"}}}]);
    p
}

const UID_BACKEND: &str = "70565f42-b704-42f2-83fe-1ffb77a67800";
const UID_OTHER_NODE: &str = "0b7a7d0e-1b7c-4b55-9c1a-2f3e4d5c6b7a";
const UID_DATABASE: &str = "dd1bf9d1-241d-47f5-8e25-12de83135812";
const UID_NEW: &str = "3cae2e45-052c-4b11-80d3-4d7b2d2d3464";

fn has_pod(store: &SharedStore, uid: &str) -> bool {
    store.read(|s| s.pod(uid).is_some())
}

fn scope() -> KubeScope {
    KubeScope {
        node_name: "node-1".into(),
        include_namespaces: vec![],
        exclude_namespaces: vec![],
        host_processes: false,
        own_pod_uid: None,
        cluster_domain: "cluster.local".into(),
        watch_peers: true,
    }
}

/// Pods of this node: paginated list with an expired `continue` token, owners looked up,
/// then watch events, a bookmark, a dropped connection, a `410 Expired` watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_list_watch_bookmarks_gone_and_reconnects() {
    let api = FakeKubeApi::start().await.unwrap();
    api.set_page_size(1);
    api.put(
        Kind::Pods,
        pod(
            "backend-7d4b9c8f6d-x2x9z",
            UID_BACKEND,
            "node-1",
            Some(("ReplicaSet", "backend-7d4b9c8f6d")),
            Some("7d4b9c8f6d"),
        ),
    );
    api.put(
        Kind::Pods,
        pod("elsewhere-0", UID_OTHER_NODE, "node-2", None, None),
    );
    // Owned by a ReplicaSet whose name does not prove a Deployment: the agent reads it.
    api.put(
        Kind::Pods,
        pod(
            "database-abc12",
            UID_DATABASE,
            "node-1",
            Some(("ReplicaSet", "database-legacy")),
            None,
        ),
    );
    api.put_single(
        "/apis/apps/v1/namespaces/shop/replicasets/database-legacy",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": "database-legacy", "namespace": "shop", "uid": "rs-uid",
                            "resourceVersion": "5",
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                              "name": "database", "uid": "d-uid", "controller": true}]},
               "spec": {"selector": {"matchLabels": {"app": "database"}}}}),
    );
    api.expire_next_continue();

    // The agent's own path: KUBECONFIG → kube::Config::infer → watchers.
    let dir = std::env::temp_dir().join(format!("kube-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("config");
    api.write_kubeconfig(&kubeconfig).unwrap();
    // SAFETY: set before any thread of this test binary reads the environment for it;
    // no other test in this binary touches KUBECONFIG.
    unsafe { std::env::set_var("KUBECONFIG", &kubeconfig) };
    let metrics = Arc::new(Metrics::default());
    let cfg = EnrichConfig {
        kubernetes: Some(KubeScope {
            watch_peers: false,
            ..scope()
        }),
        ..Default::default()
    };
    let enricher = Enricher::start(cfg, metrics.clone()).await.unwrap();
    let store = enricher.store().unwrap().clone();

    api.wait_until("the first complete list", T, |_| {
        store.read(|s| s.pods_synced) && has_pod(&store, UID_DATABASE)
    })
    .await
    .unwrap();
    assert!(has_pod(&store, UID_BACKEND));
    assert!(
        !has_pod(&store, UID_OTHER_NODE),
        "pods of other nodes are not listed"
    );
    let lists: Vec<_> = api
        .requests_to("/api/v1/pods")
        .into_iter()
        .filter(|r| !r.is_watch())
        .collect();
    assert!(
        lists
            .iter()
            .all(|r| r.param("fieldSelector") == Some("spec.nodeName=node-1")),
        "{lists:#?}"
    );
    // The expired continue token forced a fresh list: two first pages were requested.
    let first_pages = lists
        .iter()
        .filter(|r| r.param("continue").is_none())
        .count();
    assert!(first_pages >= 2, "{lists:#?}");
    assert!(metrics.kube_watch_errors.load(Ordering::Relaxed) >= 1);

    // The ReplicaSet was read and its Deployment is the pod's workload.
    api.wait_until("the ReplicaSet lookup", T, |_| {
        store.read(|s| {
            s.pod(UID_DATABASE).is_some_and(|p| {
                s.workloads(&p)
                    .iter()
                    .any(|(k, n)| *k == "k8s.deployment.name" && n == "database")
            })
        })
    })
    .await
    .unwrap();
    let backend = store.read(|s| s.workloads(&s.pod(UID_BACKEND).unwrap()));
    assert_eq!(backend[1], ("k8s.deployment.name", "backend".to_owned()));
    assert!(
        api.requests_to("/apis/apps/v1/namespaces/shop/replicasets/backend-7d4b9c8f6d")
            .is_empty(),
        "names prove this one: no lookup"
    );

    // Watch from the list's resourceVersion, with bookmarks.
    api.wait_until("a pod watch", T, |a| a.open_watches(Kind::Pods) == 1)
        .await
        .unwrap();
    let watch = api
        .requests_to("/api/v1/pods")
        .into_iter()
        .rfind(|r| r.is_watch())
        .unwrap();
    assert_eq!(watch.param("allowWatchBookmarks"), Some("true"));
    assert_eq!(watch.param("fieldSelector"), Some("spec.nodeName=node-1"));
    assert!(
        watch
            .param("resourceVersion")
            .is_some_and(|rv| !rv.is_empty())
    );

    let new = pod(
        "frontend-5f6c7d8e9f-abcde",
        UID_NEW,
        "node-1",
        Some(("ReplicaSet", "frontend-5f6c7d8e9f")),
        Some("5f6c7d8e9f"),
    );
    api.event(Kind::Pods, "ADDED", new.clone());
    api.wait_until("ADDED", T, |_| has_pod(&store, UID_NEW))
        .await
        .unwrap();
    let id = "a".repeat(64);
    api.event(Kind::Pods, "MODIFIED", with_container_id(new, &id));
    api.wait_until("MODIFIED", T, |_| {
        store.read(|s| {
            s.pod(UID_NEW)
                .is_some_and(|p| p.container_by_id(&id).is_some())
        })
    })
    .await
    .unwrap();

    // A bookmark, then the connection drops: the watch resumes from the bookmark.
    let bookmark = api.bookmark(Kind::Pods);
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.drop_watches(Kind::Pods);
    api.wait_until("a watch resumed at the bookmark", T, |a| {
        a.requests_to("/api/v1/pods")
            .iter()
            .any(|r| r.is_watch() && r.param("resourceVersion") == Some(bookmark.as_str()))
            && a.open_watches(Kind::Pods) == 1
    })
    .await
    .unwrap();
    api.event(
        Kind::Pods,
        "DELETED",
        pod(
            "backend-7d4b9c8f6d-x2x9z",
            UID_BACKEND,
            "node-1",
            None,
            None,
        ),
    );
    api.wait_until("DELETED", T, |_| !has_pod(&store, UID_BACKEND))
        .await
        .unwrap();

    // The watch's resourceVersion expires (410): the agent lists again, and what changed
    // while it could not watch (a pod gone) is reflected.
    let lists_before = api
        .requests_to("/api/v1/pods")
        .iter()
        .filter(|r| !r.is_watch())
        .count();
    api.remove(Kind::Pods, "shop", "frontend-5f6c7d8e9f-abcde");
    api.expire_watches(Kind::Pods);
    api.wait_until("a re-list after 410", T, |a| {
        a.requests_to("/api/v1/pods")
            .iter()
            .filter(|r| !r.is_watch())
            .count()
            > lists_before
            && !has_pod(&store, UID_NEW)
    })
    .await
    .unwrap();
    assert!(
        has_pod(&store, UID_DATABASE),
        "the re-list keeps what still exists"
    );
    api.wait_until("watching again", T, |a| a.open_watches(Kind::Pods) == 1)
        .await
        .unwrap();
    assert_eq!(metrics.kube_pods.load(Ordering::Relaxed), 1);
    std::fs::remove_dir_all(&dir).ok();
}

/// Services and EndpointSlices name CLIENT spans' peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_endpoint_slices_name_peers() {
    let api = FakeKubeApi::start().await.unwrap();
    api.put(
        Kind::Services,
        json!({"metadata": {"name": "database", "namespace": "shop", "uid": "s1"},
               "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"], "type": "ClusterIP",
                        "ports": [{"port": 8080, "targetPort": 8080, "protocol": "TCP"}]}}),
    );
    api.put(
        Kind::EndpointSlices,
        json!({"metadata": {"name": "backend-x1", "namespace": "shop", "uid": "e1",
                            "labels": {"kubernetes.io/service-name": "backend"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.244.2.9"], "conditions": {"ready": true},
                              "targetRef": {"kind": "Pod", "name": "backend-1", "namespace": "shop"}}],
               "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]}),
    );
    let dir = std::env::temp_dir().join(format!("kube-replay-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config");
    api.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let store = SharedStore::default();
    let metrics = Arc::new(Metrics::default());
    k8s::watch::spawn(
        client,
        store.clone(),
        &k8s::WatchConfig {
            node_name: "node-1".into(),
            peers: true,
        },
        metrics,
    );
    let peer =
        |ip: &str, port: u16| store.read(|s| s.peer(ip.parse().unwrap(), port, "cluster.local"));
    api.wait_until("services and slices listed", T, |_| {
        store.read(|s| s.services_synced && s.slices_synced)
    })
    .await
    .unwrap();
    assert_eq!(
        peer("10.96.0.30", 8080).unwrap().address,
        "database.shop.svc.cluster.local"
    );
    assert_eq!(peer("10.244.2.9", 8080).unwrap().service, "backend");

    api.wait_until("watches", T, |a| {
        a.open_watches(Kind::Services) == 1 && a.open_watches(Kind::EndpointSlices) == 1
    })
    .await
    .unwrap();
    api.event(
        Kind::Services,
        "ADDED",
        json!({"metadata": {"name": "frontend", "namespace": "web", "uid": "s2"},
               "spec": {"clusterIP": "10.96.0.40", "clusterIPs": ["10.96.0.40"]}}),
    );
    api.wait_until("new service", T, |_| peer("10.96.0.40", 3000).is_some())
        .await
        .unwrap();
    assert_eq!(
        peer("10.96.0.40", 3000).unwrap().address,
        "frontend.web.svc.cluster.local"
    );
    api.event(
        Kind::Services,
        "DELETED",
        json!({"metadata": {"name": "database", "namespace": "shop", "uid": "s1"}, "spec": {}}),
    );
    api.wait_until("service deleted", T, |_| peer("10.96.0.30", 8080).is_none())
        .await
        .unwrap();
    // A dropped slice watch resumes; a change meanwhile arrives on the new watch.
    api.drop_watches(Kind::EndpointSlices);
    api.wait_until("slice watch back", T, |a| {
        a.open_watches(Kind::EndpointSlices) == 1
    })
    .await
    .unwrap();
    api.event(
        Kind::EndpointSlices,
        "DELETED",
        json!({"metadata": {"name": "backend-x1", "namespace": "shop", "uid": "e1"},
               "addressType": "IPv4", "endpoints": []}),
    );
    api.wait_until("slice deleted", T, |_| peer("10.244.2.9", 8080).is_none())
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
