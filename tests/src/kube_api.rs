//! A stand-in for the Kubernetes API server that answers list and watch requests in the
//! exact shape the real one does, so the agent's `kube` client runs its real code path:
//!
//! * lists: `{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion","continue"},
//!   "items":[…]}`, paginated with `continue` tokens, honouring the `spec.nodeName` field
//!   selector; an expired `continue` token answers HTTP `410 Gone` with a `Status` body;
//! * watches: newline-delimited `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}`
//!   on a chunked response held open, driven by the test (events, bookmarks, `410 Expired`
//!   errors, dropped connections);
//! * single-object GETs (ReplicaSets, Jobs) and `404 NotFound` `Status` bodies.
//!
//! Every request is recorded (path and query) for the test to assert on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The collections the agent lists and watches, by URL path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Pods,
    Services,
    EndpointSlices,
    Nodes,
}

impl Kind {
    /// The kind a path lists, and the namespace it is limited to (`/api/v1/namespaces/…`).
    fn from_path(path: &str) -> Option<(Kind, Option<String>)> {
        match path {
            "/api/v1/pods" => Some((Kind::Pods, None)),
            "/api/v1/services" => Some((Kind::Services, None)),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some((Kind::EndpointSlices, None)),
            "/api/v1/nodes" => Some((Kind::Nodes, None)),
            _ => {
                let rest = path.strip_prefix("/api/v1/namespaces/")?;
                let (ns, what) = rest.split_once('/')?;
                match what {
                    "pods" => Some((Kind::Pods, Some(ns.to_owned()))),
                    "services" => Some((Kind::Services, Some(ns.to_owned()))),
                    _ => None,
                }
            }
        }
    }
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pods => ("PodList", "v1"),
            Kind::Services => ("ServiceList", "v1"),
            Kind::EndpointSlices => ("EndpointSliceList", "discovery.k8s.io/v1"),
            Kind::Nodes => ("NodeList", "v1"),
        }
    }
    fn item_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pods => ("Pod", "v1"),
            Kind::Services => ("Service", "v1"),
            Kind::EndpointSlices => ("EndpointSlice", "discovery.k8s.io/v1"),
            Kind::Nodes => ("Node", "v1"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub query: HashMap<String, String>,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
}

impl Request {
    pub fn is_watch(&self) -> bool {
        self.query
            .get("watch")
            .is_some_and(|v| v == "true" || v == "1")
    }
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }
}

#[derive(Default)]
struct Inner {
    resource_version: u64,
    objects: HashMap<Kind, Vec<Value>>,
    /// Objects served by single GETs, by path.
    singles: HashMap<String, Value>,
    requests: Vec<Request>,
    watchers: HashMap<Kind, Vec<mpsc::UnboundedSender<Bytes>>>,
    /// Items per list page (0: no pagination).
    page_size: usize,
    /// The next request that presents a `continue` token gets `410 Gone`.
    expire_next_continue: bool,
}

#[derive(Clone, Default)]
pub struct FakeKubeApi {
    inner: Arc<Mutex<Inner>>,
    pub addr: Option<SocketAddr>,
    tls: bool,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn parse_query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `spec.nodeName=node-1` (the only field selector the agent sends).
fn matches_selector(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some(("spec.nodeName", want)) => obj["spec"]["nodeName"].as_str() == Some(want),
        _ => true,
    })
}

/// `app=tracer-agent,tier=x` against `metadata.labels` (equality terms only, as the agent
/// sends).
fn matches_labels(obj: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, want)) => obj["metadata"]["labels"][k].as_str() == Some(want),
        None => false,
    })
}

impl FakeKubeApi {
    /// Listens on `127.0.0.1:<ephemeral>` over plain HTTP.
    pub async fn start() -> Result<FakeKubeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = FakeKubeApi {
            addr: Some(listener.local_addr()?),
            ..Default::default()
        };
        let app = axum::Router::new().fallback(handle).with_state(api.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(api)
    }

    /// Listens on `127.0.0.1:<ephemeral>` over HTTPS, as an API server does, with a
    /// certificate for `127.0.0.1` issued by a fresh CA. Returns the CA's PEM (what a pod
    /// finds in `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`).
    pub async fn start_tls() -> Result<(FakeKubeApi, String)> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "replayed-kubernetes-ca");
        let ca = ca_params.self_signed(&ca_key)?;
        let server_key = KeyPair::generate()?;
        let server_params = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let certs = vec![server_cert.der().clone(), ca.der().clone()];
        let key = rustls_pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("server key: {e}"))?;
        let tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = FakeKubeApi {
            addr: Some(listener.local_addr()?),
            tls: true,
            ..Default::default()
        };
        let app = axum::Router::new().fallback(handle).with_state(api.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Ok((api, ca.pem()))
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr.expect("started"))
    }

    /// A kubeconfig file pointing at this server.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n    namespace: default\nusers:\n- name: agent\n  user:\n    token: replayed-service-account-token\n",
            self.url()
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    fn next_rv(inner: &mut Inner) -> String {
        inner.resource_version += 1;
        inner.resource_version.to_string()
    }

    pub fn set_page_size(&self, n: usize) {
        self.inner.lock().unwrap().page_size = n;
    }

    pub fn expire_next_continue(&self) {
        self.inner.lock().unwrap().expire_next_continue = true;
    }

    /// Adds or replaces (by namespace/name) an object in the listed state, without telling
    /// current watchers (as if it changed while nobody watched).
    pub fn put(&self, kind: Kind, mut obj: Value) -> String {
        let mut inner = self.inner.lock().unwrap();
        let rv = Self::next_rv(&mut inner);
        obj["metadata"]["resourceVersion"] = json!(rv);
        let list = inner.objects.entry(kind).or_default();
        let key = |o: &Value| {
            (
                o["metadata"]["namespace"].as_str().map(str::to_owned),
                o["metadata"]["name"].as_str().map(str::to_owned),
            )
        };
        list.retain(|o| key(o) != key(&obj));
        list.push(obj);
        rv
    }

    pub fn remove(&self, kind: Kind, namespace: &str, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        Self::next_rv(&mut inner);
        if let Some(list) = inner.objects.get_mut(&kind) {
            list.retain(|o| {
                !(o["metadata"]["namespace"] == namespace && o["metadata"]["name"] == name)
            });
        }
    }

    pub fn put_single(&self, path: &str, obj: Value) {
        self.inner
            .lock()
            .unwrap()
            .singles
            .insert(path.to_owned(), obj);
    }

    fn broadcast(&self, kind: Kind, line: Value) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let mut bytes = serde_json::to_vec(&line).expect("json");
        bytes.push(b'\n');
        let bytes = Bytes::from(bytes);
        let senders = inner.watchers.entry(kind).or_default();
        senders.retain(|s| s.send(bytes.clone()).is_ok());
        senders.len()
    }

    /// `ADDED` / `MODIFIED` / `DELETED` to every open watch of `kind`; the listed state
    /// follows, as the API server's would.
    pub fn event(&self, kind: Kind, kind_of_event: &str, obj: Value) -> usize {
        let mut obj = obj;
        let (k, v) = kind.item_kind();
        obj["kind"] = json!(k);
        obj["apiVersion"] = json!(v);
        if kind_of_event == "DELETED" {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
            self.remove(kind, &ns, &name);
            let rv = self.inner.lock().unwrap().resource_version.to_string();
            obj["metadata"]["resourceVersion"] = json!(rv);
        } else {
            let rv = self.put(kind, obj.clone());
            obj["metadata"]["resourceVersion"] = json!(rv);
        }
        self.broadcast(kind, json!({"type": kind_of_event, "object": obj}))
    }

    /// A `BOOKMARK`: only `metadata.resourceVersion` is meaningful, as on the real server.
    pub fn bookmark(&self, kind: Kind) -> String {
        let rv = {
            let mut inner = self.inner.lock().unwrap();
            Self::next_rv(&mut inner)
        };
        let (k, v) = kind.item_kind();
        self.broadcast(
            kind,
            json!({"type": "BOOKMARK", "object": {"kind": k, "apiVersion": v,
                   "metadata": {"resourceVersion": rv, "creationTimestamp": null}}}),
        );
        rv
    }

    /// The watch's resourceVersion is too old: `ERROR` with a `410 Expired` Status, then the
    /// server ends the stream (the client must list again).
    pub fn expire_watches(&self, kind: Kind) {
        self.broadcast(
            kind,
            json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 1 (2)")}),
        );
        self.drop_watches(kind);
    }

    /// Ends every open watch of `kind` (as a timeout or an API server restart would).
    pub fn drop_watches(&self, kind: Kind) {
        self.inner.lock().unwrap().watchers.remove(&kind);
    }

    pub fn open_watches(&self, kind: Kind) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let senders = inner.watchers.entry(kind).or_default();
        senders.retain(|s| !s.is_closed());
        senders.len()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Polls `cond` until it holds, failing with `what` after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&FakeKubeApi) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if Instant::now() > deadline {
                bail!(
                    "timed out waiting for {what}; requests so far: {:#?}",
                    self.requests()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

fn json_response(code: StatusCode, body: Value) -> Response {
    (
        code,
        [("content-type", "application/json")],
        serde_json::to_vec(&body).expect("json"),
    )
        .into_response()
}

async fn handle(State(api): State<FakeKubeApi>, headers: HeaderMap, uri: Uri) -> Response {
    let path = uri.path().to_owned();
    let request = Request {
        path: path.clone(),
        query: parse_query(&uri),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    api.inner.lock().unwrap().requests.push(request.clone());

    let Some((kind, namespace)) = Kind::from_path(&path) else {
        let single = api.inner.lock().unwrap().singles.get(&path).cloned();
        return match single {
            Some(obj) => json_response(StatusCode::OK, obj),
            None => json_response(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", &format!("{path} not found")),
            ),
        };
    };

    if request.is_watch() {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        api.inner
            .lock()
            .unwrap()
            .watchers
            .entry(kind)
            .or_default()
            .push(tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
        });
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .expect("response");
    }

    let mut inner = api.inner.lock().unwrap();
    let selector = request.param("fieldSelector").map(str::to_owned);
    let labels = request.param("labelSelector").map(str::to_owned);
    let items: Vec<Value> = inner
        .objects
        .get(&kind)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| matches_selector(o, selector.as_deref()))
        .filter(|o| matches_labels(o, labels.as_deref()))
        .filter(|o| {
            namespace
                .as_deref()
                .is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
        })
        .collect();
    let start: usize = match request.param("continue") {
        Some(token) if !token.is_empty() => {
            if inner.expire_next_continue {
                inner.expire_next_continue = false;
                return json_response(
                    StatusCode::GONE,
                    status(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ),
                );
            }
            token.trim_start_matches("page-").parse().unwrap_or(0)
        }
        _ => 0,
    };
    let end = if inner.page_size == 0 {
        items.len()
    } else {
        (start + inner.page_size).min(items.len())
    };
    let mut metadata = json!({"resourceVersion": inner.resource_version.to_string()});
    if end < items.len() {
        metadata["continue"] = json!(format!("page-{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    let (k, v) = kind.list_kind();
    // Items in a list carry no kind/apiVersion, as on the real server.
    let page: Vec<Value> = items[start.min(end)..end]
        .iter()
        .cloned()
        .map(|mut o| {
            if let Some(m) = o.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"kind": k, "apiVersion": v, "metadata": metadata, "items": page}),
    )
}
