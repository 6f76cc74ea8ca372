//! Root suite: the agent's image under podman (host PID namespace, the documented
//! capabilities, read-only host mounts, not `--privileged`) traces HTTP between two other
//! podman containers: the demo's Go `database` service and a busybox `wget` client.
//!
//! Off Kubernetes, spans carry the containers' ids and executable names. In Kubernetes mode
//! (turned on, as in a pod, by KUBERNETES_SERVICE_HOST, with a mounted service account and
//! an HTTPS API server that replays the real API's responses) the two containers are placed
//! in kubelet-style pod cgroups: spans carry their pods' metadata and the client span names
//! its peer.

use std::time::Duration;

use serde_json::json;
use tracer_testkit::harness::require_root;
use tracer_testkit::{OtlpReceiver, ReceivedSpan, ReceiverProtocol, ports::unused_local_addr};
use tracer_tests::kube_api::{FakeKubeApi, Kind};
use tracer_tests::podman::{self, Container};

const T: Duration = Duration::from_secs(60);

struct Setup {
    rx: OtlpReceiver,
    metrics: std::net::SocketAddr,
    db_port: u16,
}

async fn setup() -> Setup {
    require_root();
    Setup {
        rx: OtlpReceiver::start(ReceiverProtocol::Grpc).await.unwrap(),
        metrics: unused_local_addr().unwrap(),
        db_port: unused_local_addr().unwrap().port(),
    }
}

fn agent_env(s: &Setup) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", s.rx.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("RUST_LOG", "info".into()),
    ]
}

fn of_container<'a>(spans: &'a [ReceivedSpan], id: &str, kind: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.kind == kind && s.resource_str("container.id") == Some(id))
        .collect()
}

async fn wait_for_pair(
    rx: &OtlpReceiver,
    agent: &Container,
    server: &Container,
    client: &Container,
) -> Vec<ReceivedSpan> {
    let (sid, cid) = (server.id.clone(), client.id.clone());
    let waited = rx
        .wait_for_spans(
            |spans| {
                !of_container(spans, &sid, "SERVER").is_empty()
                    && !of_container(spans, &cid, "CLIENT").is_empty()
            },
            T,
        )
        .await;
    if let Err(e) = waited {
        panic!(
            "no SERVER span of {sid} and CLIENT span of {cid}: {e}\nspans: {:#?}\nagent log:\n{}",
            rx.spans(),
            agent.logs()
        );
    }
    rx.spans()
}

/// A busybox container on the host network that fetches the database's `/query` once.
fn wget_container(name: &str, image: &str, db_port: &str) -> Container {
    let url = format!("http://127.0.0.1:{db_port}/query");
    Container::run(
        name,
        &["--network=host", image, "wget", "-q", "-O", "-", &url],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_kubernetes_spans_carry_container_ids() {
    let s = setup().await;
    let db_image = podman::database_image().unwrap();
    let bb_image = podman::busybox_image().unwrap();
    let agent = podman::run_agent(
        "tracer-e2e-agent",
        &agent_env(&s),
        &[],
        &[
            "--metrics-addr",
            &s.metrics.to_string(),
            "--kubernetes=false",
        ],
    )
    .unwrap();
    podman::wait_ready(&agent, s.metrics, T).await.unwrap();

    let port = s.db_port.to_string();
    let server = Container::run(
        "tracer-e2e-database",
        &[
            "--network=host",
            "--env",
            &format!("PORT={port}"),
            &db_image,
        ],
    )
    .unwrap();
    wait_listening(s.db_port).await;
    let client = wget_container("tracer-e2e-wget", &bb_image, &port);
    assert_eq!(client.wait(T).unwrap(), 0, "wget failed: {}", client.logs());
    assert!(client.logs().contains("Data from database"));

    let spans = wait_for_pair(&s.rx, &agent, &server, &client).await;
    let server_span = of_container(&spans, &server.id, "SERVER")[0];
    let client_span = of_container(&spans, &client.id, "CLIENT")[0];
    assert_eq!(server.id.len(), 64);
    // service.name from the executable, read through the host PID namespace.
    assert_eq!(server_span.service_name(), Some("database"));
    assert_eq!(client_span.service_name(), Some("busybox"));
    assert_eq!(server_span.attr_str("url.path"), Some("/query"));
    assert_eq!(server_span.attr_int("http.response.status_code"), Some(200));
    assert_eq!(client_span.attr_int("http.response.status_code"), Some(200));
    assert_eq!(
        client_span.attr_int("network.local.port"),
        server_span.attr_int("network.peer.port")
    );
    assert!(server_span.resource_str("k8s.pod.name").is_none());
    // The agent never traces itself (its /readyz was polled during the test).
    let agent_pid: i64 = agent.pid().unwrap();
    assert!(
        spans.iter().all(
            |sp| sp.resource.get("process.pid") != Some(&tracer_testkit::Value::Int(agent_pid))
        ),
        "spans of the agent itself"
    );
    drop(agent);
}

const NODE: &str = "podman-node";
const TOKEN: &str = "replayed-service-account-token";
const DB_UID: &str = "5b0c9a8e-3f1d-4c2b-9e7a-6d5c4b3a2f10";
const LOAD_UID: &str = "7e6d5c4b-3a2f-4e1d-8c9b-0a1b2c3d4e5f";
/// The "pod IP" the replayed API gives the database pod: an address of this host's
/// loopback, so the client's connection to it is a connection to that pod.
const DB_POD_IP: &str = "127.0.0.2";

/// A pod as the API server returns it, running one container.
struct TestPod<'a> {
    name: &'a str,
    uid: &'a str,
    labels: serde_json::Value,
    owner: (&'a str, &'a str),
    container: &'a str,
    container_id: &'a str,
    env: serde_json::Value,
    ip: &'a str,
}

impl TestPod<'_> {
    fn json(&self) -> serde_json::Value {
        json!({
            "metadata": {"name": self.name, "namespace": "shop", "uid": self.uid, "labels": self.labels,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": self.owner.0,
                                              "name": self.owner.1, "uid": "o", "controller": true}]},
            "spec": {"nodeName": NODE,
                     "containers": [{"name": self.container, "image": "x", "env": self.env}]},
            "status": {"phase": "Running", "podIP": self.ip, "podIPs": [{"ip": self.ip}],
                       "containerStatuses": [{"name": self.container,
                           "containerID": format!("containerd://{}", self.container_id),
                           "image": "x", "imageID": "", "ready": true, "restartCount": 0}]}
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_spans_carry_pod_metadata_and_peer_names() {
    let s = setup().await;
    let db_image = podman::database_image().unwrap();
    let bb_image = podman::busybox_image().unwrap();
    // HTTPS with its own CA, and a service account token: what a pod gets.
    let (api, ca_pem) = FakeKubeApi::start_tls().await.unwrap();
    let dir = std::env::temp_dir().join(format!("tracer-podman-kube-{}", std::process::id()));
    let sa = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(sa.join("token"), TOKEN).unwrap();
    std::fs::write(sa.join("namespace"), "tracer").unwrap();
    api.put(
        Kind::Services,
        json!({"metadata": {"name": "database", "namespace": "shop", "uid": "s1"},
               "spec": {"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30"]}}),
    );
    api.put(
        Kind::EndpointSlices,
        json!({"metadata": {"name": "database-x", "namespace": "shop", "uid": "e1",
                            "labels": {"kubernetes.io/service-name": "database"}},
               "addressType": "IPv4", "endpoints": [{"addresses": [DB_POD_IP]}],
               "ports": [{"port": s.db_port, "protocol": "TCP"}]}),
    );

    // In-cluster configuration, as in a pod: the API's address from KUBERNETES_SERVICE_*
    // (which also turns Kubernetes mode on), the token and CA from the mounted service
    // account, the node from NODE_NAME.
    let mut env = agent_env(&s);
    env.push(("KUBERNETES_SERVICE_HOST", "127.0.0.1".into()));
    env.push((
        "KUBERNETES_SERVICE_PORT",
        api.addr.unwrap().port().to_string(),
    ));
    env.push(("NODE_NAME", NODE.into()));
    let agent = podman::run_agent(
        "tracer-e2e-agent-k8s",
        &env,
        &[format!(
            "--volume={}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
            sa.display()
        )],
        &[
            "--metrics-addr",
            &s.metrics.to_string(),
            "--metadata-wait-ms",
            "10000",
        ],
    )
    .unwrap();
    podman::wait_ready(&agent, s.metrics, T).await.unwrap();
    api.wait_until("the agent's pod watch", T, |a| {
        a.open_watches(Kind::Pods) == 1
    })
    .await
    .unwrap();
    let watch = api
        .requests_to("/api/v1/pods")
        .into_iter()
        .rfind(|r| r.is_watch())
        .unwrap();
    assert_eq!(
        watch.param("fieldSelector"),
        Some(&*format!("spec.nodeName={NODE}"))
    );
    assert_eq!(
        watch.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );

    // Containers in kubelet-style pod cgroups (cgroupfs layout: kubepods/<qos>/pod<uid>).
    let port = s.db_port.to_string();
    let server = Container::run(
        "tracer-e2e-k8s-database",
        &[
            "--network=host",
            &format!("--cgroup-parent=/kubepods/besteffort/pod{DB_UID}"),
            "--env",
            &format!("PORT={port}"),
            &db_image,
        ],
    )
    .unwrap();
    let cgroup = server.host_cgroup().unwrap();
    assert!(
        cgroup.contains(&format!("pod{DB_UID}/libpod-{}", server.id)),
        "{cgroup}"
    );
    // The API learns about the pod once its container runs, as with a kubelet.
    api.event(
        Kind::Pods,
        "ADDED",
        TestPod {
            name: "database-6b7c8d9f5d-q4w2e",
            uid: DB_UID,
            labels: json!({"app": "database", "pod-template-hash": "6b7c8d9f5d"}),
            owner: ("ReplicaSet", "database-6b7c8d9f5d"),
            container: "database",
            container_id: &server.id,
            env: json!([]),
            ip: DB_POD_IP,
        }
        .json(),
    );
    wait_listening(s.db_port).await;

    let client = Container::run(
        "tracer-e2e-k8s-wget",
        &[
            "--network=host",
            &format!("--cgroup-parent=/kubepods/burstable/pod{LOAD_UID}"),
            // Not root: its /proc/<pid>/environ needs the agent's DAC_READ_SEARCH.
            "--user=1000:1000",
            "--env",
            "OTEL_SERVICE_NAME=load-generator",
            &bb_image,
            "sh",
            "-c",
            // Give the agent's pod watch a moment to learn the container id, then call.
            &format!("sleep 1; wget -q -O - http://{DB_POD_IP}:{port}/query"),
        ],
    )
    .unwrap();
    api.event(
        Kind::Pods,
        "ADDED",
        TestPod {
            name: "loadgen-0",
            uid: LOAD_UID,
            labels: json!({"app.kubernetes.io/name": "loadgen"}),
            owner: ("StatefulSet", "loadgen"),
            container: "wget",
            container_id: &client.id,
            // The process's own environment (read through /proc) wins over the spec.
            env: json!([{"name": "OTEL_SERVICE_NAME", "value": "from-the-pod-spec"}]),
            ip: "10.244.0.9",
        }
        .json(),
    );
    assert_eq!(client.wait(T).unwrap(), 0, "wget failed: {}", client.logs());

    // A container outside any pod is not traced in Kubernetes mode.
    let outsider = wget_container("tracer-e2e-k8s-outsider", &bb_image, &port);
    assert_eq!(outsider.wait(T).unwrap(), 0);

    let spans = wait_for_pair(&s.rx, &agent, &server, &client).await;
    let srv = of_container(&spans, &server.id, "SERVER");
    let cli = of_container(&spans, &client.id, "CLIENT")[0];
    let srv = srv
        .iter()
        .find(|sp| sp.attr_int("network.peer.port") == cli.attr_int("network.local.port"))
        .expect("the server span of the client's request");

    let r = |sp: &ReceivedSpan, k: &str| sp.resource_str(k).map(str::to_owned);
    assert_eq!(
        r(srv, "k8s.pod.name").as_deref(),
        Some("database-6b7c8d9f5d-q4w2e")
    );
    assert_eq!(r(srv, "k8s.pod.uid").as_deref(), Some(DB_UID));
    assert_eq!(r(srv, "k8s.namespace.name").as_deref(), Some("shop"));
    assert_eq!(r(srv, "k8s.node.name").as_deref(), Some(NODE));
    assert_eq!(r(srv, "k8s.container.name").as_deref(), Some("database"));
    assert_eq!(r(srv, "k8s.deployment.name").as_deref(), Some("database"));
    assert_eq!(
        r(srv, "k8s.replicaset.name").as_deref(),
        Some("database-6b7c8d9f5d")
    );
    assert_eq!(r(srv, "container.id").as_deref(), Some(server.id.as_str()));
    assert_eq!(srv.service_name(), Some("database"), "from the app label");

    assert_eq!(r(cli, "k8s.pod.name").as_deref(), Some("loadgen-0"));
    assert_eq!(r(cli, "k8s.statefulset.name").as_deref(), Some("loadgen"));
    assert_eq!(r(cli, "k8s.container.name").as_deref(), Some("wget"));
    // OTEL_SERVICE_NAME is in the container's environment twice: in the process (read from
    // /proc, preferred) and in the pod spec. wget may exit before the agent reads its /proc
    // entry; the spec's value is then the right fallback. Either way the name comes from
    // OTEL_SERVICE_NAME, never from the labels or the executable.
    let service = cli.service_name();
    assert!(
        matches!(service, Some("load-generator" | "from-the-pod-spec")),
        "OTEL_SERVICE_NAME wins: {service:?}"
    );
    assert_eq!(
        cli.attr_str("server.address"),
        Some("database.shop.svc.cluster.local")
    );
    assert_eq!(cli.attr_str("peer.service"), Some("database"));

    assert!(
        spans
            .iter()
            .all(|sp| sp.resource_str("container.id") != Some(outsider.id.as_str())),
        "a container outside pods was traced"
    );
    drop(agent);
    std::fs::remove_dir_all(&dir).ok();
}

async fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + T;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "database never listened on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
