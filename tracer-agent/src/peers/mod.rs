//! Agent-to-agent exchange: one trace across nodes.
//!
//! An agent sees only its node's half of a hop between nodes: the SERVER span here, the
//! CLIENT span on the caller's node. The agent holding a SERVER span whose caller no local
//! span matched asks the other agents for the CLIENT span of that exchange, keyed as local
//! peer matching is keyed: the caller's address:port (the server's peer address; DNAT
//! rewrites the destination, not the source) and the request's position on the connection.
//! The answer (trace id, span id, sampled flag) links the SERVER span exactly as a local
//! match does. No application byte changes, and the key is the connection, not a header.
//!
//! ```text
//! linker ──due_lookups──▶ Client task ──POST /v1/callers──▶ other agent's Server
//!        ◀─remote_found── (batches, deadline,               (answers from its linker
//!                          backoff per peer)                  through the main loop)
//! ```
//!
//! Threat model: the exchange port is reachable from the cluster network. Every request
//! must carry the shared token (`Authorization: Bearer`); anything else gets 401 and no
//! body. A request is bounded (size, lookups) and malformed ones get 400. An answer holds
//! ids and a sampled flag only, so a token holder learns which exchanges on this node it
//! can name, and their trace ids; it can never read an attribute. A hostile peer holding the
//! token can at worst attach a server span to a trace of its choosing (as a forged
//! `traceparent` header could), never stall or crash the agent: lookups have a deadline,
//! answers are validated whole, and a peer that fails is backed off.

pub mod directory;
pub mod kube;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use tokio::sync::{mpsc, oneshot};

use crate::link::{Answer, PeerKey, SpanContext};
use crate::metrics::Metrics;
use crate::spans::TraceId;

/// How long one lookup request to a peer may take: a live agent busy draining a burst of
/// events can take a few hundred milliseconds to answer, and a lookup given up is one of
/// the span's few chances within the link window.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// Lookup batches waiting to be sent; beyond it they are dropped and counted.
const QUEUED_BATCHES: usize = 256;
/// A caller on no known node is asked of every other agent, up to this many.
const MAX_BROADCAST: usize = 16;
/// First and longest pause before a failed peer is asked again: short enough that an
/// agent restarted by a rolling update is asked again within seconds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Outcomes of lookups, per peer, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LookupResult {
    Found,
    Pending,
    Unknown,
    /// The peer did not answer in time, or the connection failed.
    Failed,
    /// The peer refused the request (wrong token, malformed) or answered garbage.
    Rejected,
    /// Not sent: the peer was backed off after a failure, or the queue was full.
    Skipped,
}

impl LookupResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Found => "found",
            LookupResult::Pending => "pending",
            LookupResult::Unknown => "unknown",
            LookupResult::Failed => "failed",
            LookupResult::Rejected => "rejected",
            LookupResult::Skipped => "skipped",
        }
    }
}

/// Requests this agent answered, by outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServedResult {
    Answered,
    Unauthorized,
    Malformed,
}

impl ServedResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedResult::Answered => "answered",
            ServedResult::Unauthorized => "unauthorized",
            ServedResult::Malformed => "malformed",
        }
    }
}

/// Counters of the exchange, rendered by `Metrics`.
#[derive(Debug, Default)]
pub struct PeerMetrics {
    lookups: Mutex<BTreeMap<(String, LookupResult), u64>>,
    served: Mutex<BTreeMap<ServedResult, u64>>,
    /// Tail-sampling keeps: sent to a peer (per peer and result), and received.
    keeps: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl PeerMetrics {
    pub fn lookups(&self, peer: &str, result: LookupResult, n: u64) {
        let mut m = self.lookups.lock().expect("metrics lock");
        *m.entry((peer.to_owned(), result)).or_default() += n;
    }

    pub fn served(&self, result: ServedResult) {
        *self
            .served
            .lock()
            .expect("metrics lock")
            .entry(result)
            .or_default() += 1;
    }

    pub fn keeps(&self, peer: &str, result: &'static str, n: u64) {
        *self
            .keeps
            .lock()
            .expect("metrics lock")
            .entry((peer.to_owned(), result))
            .or_default() += n;
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP tracer_peer_keeps_total Trace ids kept by tail sampling, sent to other nodes' agents (result sent/failed) or received from them (peer \"in\")."
        );
        let _ = writeln!(out, "# TYPE tracer_peer_keeps_total counter");
        for ((peer, result), n) in self.keeps.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "tracer_peer_keeps_total{{peer=\"{peer}\",result=\"{result}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP tracer_peer_lookups_total Callers looked up on other nodes' agents, by peer and result."
        );
        let _ = writeln!(out, "# TYPE tracer_peer_lookups_total counter");
        for ((peer, result), n) in self.lookups.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "tracer_peer_lookups_total{{peer=\"{peer}\",result=\"{}\"}} {n}",
                result.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP tracer_exchange_requests_total Lookup requests from other agents, by outcome."
        );
        let _ = writeln!(out, "# TYPE tracer_exchange_requests_total counter");
        for (result, n) in self.served.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "tracer_exchange_requests_total{{result=\"{}\"}} {n}",
                result.as_str()
            );
        }
    }
}

/// A batch of lookups from another agent, answered by the main loop (which owns the linker).
pub struct Question {
    pub keys: Vec<PeerKey>,
    pub reply: oneshot::Sender<Vec<Answer>>,
}

#[derive(Clone)]
struct ServerState {
    token: Arc<[u8]>,
    questions: mpsc::Sender<Question>,
    keeps: mpsc::Sender<Vec<TraceId>>,
    metrics: Arc<Metrics>,
}

/// Constant-time comparison: the token must not leak through timing.
fn token_matches(headers: &HeaderMap, token: &[u8]) -> bool {
    let Some(got) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    got.len() == token.len() && got.iter().zip(token).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn callers(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    if !token_matches(&headers, &s.token) {
        s.metrics.peers.served(ServedResult::Unauthorized);
        return (StatusCode::UNAUTHORIZED, Vec::new());
    }
    let keys = match wire::decode_lookups(&body) {
        Ok(k) => k,
        Err(e) => {
            s.metrics.peers.served(ServedResult::Malformed);
            return (StatusCode::BAD_REQUEST, format!("{e}\n").into_bytes());
        }
    };
    let (reply, answer) = oneshot::channel();
    if s.questions.send(Question { keys, reply }).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, Vec::new());
    }
    match answer.await {
        Ok(answers) => {
            s.metrics.peers.served(ServedResult::Answered);
            (StatusCode::OK, wire::encode_answers(&answers))
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Vec::new()),
    }
}

async fn keep(State(s): State<ServerState>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    if !token_matches(&headers, &s.token) {
        s.metrics.peers.served(ServedResult::Unauthorized);
        return (StatusCode::UNAUTHORIZED, Vec::new());
    }
    match wire::decode_keeps(&body) {
        Ok(traces) => {
            s.metrics.peers.served(ServedResult::Answered);
            s.metrics.peers.keeps("in", "received", traces.len() as u64);
            // A main loop that far behind decides without them, as with no peer.
            let _ = s.keeps.try_send(traces);
            (StatusCode::NO_CONTENT, Vec::new())
        }
        Err(e) => {
            s.metrics.peers.served(ServedResult::Malformed);
            (StatusCode::BAD_REQUEST, format!("{e}\n").into_bytes())
        }
    }
}

/// What other agents send: lookups to answer, and traces their tail sampling kept.
pub struct Inbox {
    pub questions: mpsc::Receiver<Question>,
    pub keeps: mpsc::Receiver<Vec<TraceId>>,
}

/// Serves other agents' lookups and keeps on `addr`; they arrive in the returned inbox.
pub async fn serve(
    addr: SocketAddr,
    token: Arc<[u8]>,
    metrics: Arc<Metrics>,
) -> Result<(SocketAddr, Inbox)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on --exchange-addr {addr}: choose another address")
    })?;
    let bound = listener.local_addr()?;
    let (questions, rx) = mpsc::channel(64);
    let (keeps, keeps_rx) = mpsc::channel(256);
    let app = Router::new()
        .route("/v1/callers", post(callers))
        .route("/v1/keep", post(keep))
        .layer(DefaultBodyLimit::max(wire::MAX_BODY_BYTES))
        .with_state(ServerState {
            token,
            questions,
            keeps,
            metrics,
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("exchange server stopped: {e}");
        }
    });
    Ok((
        bound,
        Inbox {
            questions: rx,
            keeps: keeps_rx,
        },
    ))
}

/// Which agents to ask.
#[derive(Debug, Clone)]
pub enum PeerSource {
    /// Every one of these (`--peer`), about every caller.
    Static(Vec<String>),
    /// The agent of the caller's node, from the Kubernetes directory; every agent (up to
    /// `MAX_BROADCAST`) when the caller is on no known node.
    Directory(Arc<RwLock<directory::Directory>>),
}

impl PeerSource {
    fn knows(&self, addr: &str) -> bool {
        match self {
            PeerSource::Static(peers) => peers.iter().any(|p| p == addr),
            PeerSource::Directory(dir) => addr.parse::<SocketAddr>().is_ok_and(|addr| {
                dir.read()
                    .expect("directory lock")
                    .peers()
                    .any(|a| a == addr)
            }),
        }
    }

    /// The peers holding parts of each kept trace (grouped by peer): every static peer, or
    /// the agents of the nodes its spans' peer addresses are on.
    fn plan_keeps(
        &self,
        traces: &[(TraceId, Vec<std::net::IpAddr>)],
    ) -> Vec<(String, Vec<TraceId>)> {
        match self {
            PeerSource::Static(peers) => {
                let all: Vec<TraceId> = traces.iter().map(|(t, _)| *t).collect();
                peers.iter().map(|p| (p.clone(), all.clone())).collect()
            }
            PeerSource::Directory(dir) => {
                let dir = dir.read().expect("directory lock");
                let mut groups: BTreeMap<String, Vec<TraceId>> = BTreeMap::new();
                for (trace, ips) in traces {
                    for ip in ips {
                        if let directory::Route::Peer(a) = dir.route(*ip) {
                            let list = groups.entry(a.to_string()).or_default();
                            if list.last() != Some(trace) {
                                list.push(*trace);
                            }
                        }
                    }
                }
                groups.into_iter().collect()
            }
        }
    }

    /// The peers to ask about each key of `keys` (grouped by peer).
    fn plan(&self, keys: &[PeerKey], metrics: &PeerMetrics) -> Vec<(String, Vec<PeerKey>)> {
        match self {
            PeerSource::Static(peers) => peers.iter().map(|p| (p.clone(), keys.to_vec())).collect(),
            PeerSource::Directory(dir) => {
                let dir = dir.read().expect("directory lock");
                let mut groups: BTreeMap<String, Vec<PeerKey>> = BTreeMap::new();
                let (mut local, mut unroutable) = (0, 0);
                let everyone: Vec<String> = dir.peers().map(|a| a.to_string()).collect();
                for key in keys {
                    match dir.route(key.0.ip()) {
                        directory::Route::Peer(a) => {
                            groups.entry(a.to_string()).or_default().push(*key)
                        }
                        directory::Route::Local => local += 1,
                        directory::Route::Unknown if everyone.len() <= MAX_BROADCAST => {
                            for a in &everyone {
                                groups.entry(a.clone()).or_default().push(*key);
                            }
                        }
                        directory::Route::Unknown => unroutable += 1,
                    }
                }
                if local > 0 {
                    metrics.lookups("local", LookupResult::Unknown, local);
                }
                if unroutable > 0 {
                    metrics.lookups("*", LookupResult::Skipped, unroutable);
                }
                groups.into_iter().collect()
            }
        }
    }
}

/// The asking side: batches of keys in, found contexts out.
pub struct Client {
    keys: mpsc::Sender<Vec<PeerKey>>,
    keeps: mpsc::Sender<Vec<(TraceId, Vec<std::net::IpAddr>)>>,
    metrics: Arc<Metrics>,
}

impl Client {
    /// Starts the task that asks the agents of `source`. Found contexts arrive on the
    /// returned channel.
    pub fn start(
        source: PeerSource,
        token: Arc<[u8]>,
        metrics: Arc<Metrics>,
    ) -> Result<(Client, mpsc::Receiver<(PeerKey, SpanContext)>)> {
        let http = reqwest::Client::builder()
            .timeout(LOOKUP_TIMEOUT)
            .user_agent(crate::EXPORTER_USER_AGENT)
            .build()
            .context("cannot build the exchange client")?;
        let (keys_tx, mut keys_rx) = mpsc::channel::<Vec<PeerKey>>(QUEUED_BATCHES);
        let (found_tx, found_rx) = mpsc::channel(4096);
        let bearer = format!("Bearer {}", String::from_utf8_lossy(&token));
        let (keeps_tx, keeps_rx) = mpsc::channel(QUEUED_BATCHES);
        tokio::spawn(send_keeps(
            keeps_rx,
            source.clone(),
            http.clone(),
            bearer.clone(),
            metrics.clone(),
        ));
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            // Backoff state per peer address, kept while the peer is asked.
            let mut peers: HashMap<String, Peer> = HashMap::new();
            while let Some(mut keys) = keys_rx.recv().await {
                // Whatever queued meanwhile goes in the same requests.
                while keys.len() < wire::MAX_LOOKUPS {
                    match keys_rx.try_recv() {
                        Ok(more) => keys.extend(more),
                        Err(_) => break,
                    }
                }
                let plan = source.plan(&keys, &task_metrics.peers);
                // Backoff state lives as long as the peer is in the source.
                peers.retain(|addr, _| source.knows(addr));
                for (addr, _) in &plan {
                    peers
                        .entry(addr.clone())
                        .or_insert_with(|| Peer::new(addr.clone()));
                }
                let asks = peers.iter_mut().filter_map(|(addr, peer)| {
                    let keys = plan.iter().find(|(a, _)| a == addr).map(|(_, k)| k)?;
                    let (http, bearer, found, metrics) =
                        (&http, bearer.as_str(), &found_tx, &task_metrics.peers);
                    Some(async move { peer.ask(http, bearer, keys, found, metrics).await })
                });
                futures::future::join_all(asks).await;
            }
        });
        Ok((
            Client {
                keys: keys_tx,
                keeps: keeps_tx,
                metrics,
            },
            found_rx,
        ))
    }

    /// Tells the agents holding parts of these traces that tail sampling kept them here;
    /// never blocks (a full queue drops and counts).
    pub fn keep(&self, traces: Vec<(TraceId, Vec<std::net::IpAddr>)>) {
        let n = traces.len() as u64;
        if self.keeps.try_send(traces).is_err() {
            self.metrics.peers.keeps("*", "skipped", n);
        }
    }

    /// Queues keys to look up; never blocks the caller (a full queue drops and counts).
    pub fn lookup(&self, keys: Vec<PeerKey>) {
        let n = keys.len() as u64;
        if self.keys.try_send(keys).is_err() {
            self.metrics.peers.lookups("*", LookupResult::Skipped, n);
        }
    }
}

/// Sends kept trace ids to the peers holding parts of them, batched; best effort (one
/// attempt within the lookup timeout: a keep that arrives after the peer decided is moot).
async fn send_keeps(
    mut rx: mpsc::Receiver<Vec<(TraceId, Vec<std::net::IpAddr>)>>,
    source: PeerSource,
    http: reqwest::Client,
    bearer: String,
    metrics: Arc<Metrics>,
) {
    while let Some(mut traces) = rx.recv().await {
        while traces.len() < wire::MAX_LOOKUPS {
            match rx.try_recv() {
                Ok(more) => traces.extend(more),
                Err(_) => break,
            }
        }
        let plan = source.plan_keeps(&traces);
        let sends = plan.iter().map(|(addr, ids)| {
            let (http, bearer, metrics) = (&http, bearer.as_str(), &metrics);
            async move {
                for chunk in ids.chunks(wire::MAX_LOOKUPS) {
                    let sent = http
                        .post(format!("http://{addr}/v1/keep"))
                        .header(reqwest::header::AUTHORIZATION, bearer)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(wire::encode_keeps(chunk))
                        .send()
                        .await;
                    let result = match sent {
                        Ok(r) if r.status().is_success() => "sent",
                        _ => "failed",
                    };
                    metrics.peers.keeps(addr, result, chunk.len() as u64);
                }
            }
        });
        futures::future::join_all(sends).await;
    }
}

struct Peer {
    addr: String,
    url: String,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

impl Peer {
    fn new(addr: String) -> Peer {
        let url = format!("http://{addr}/v1/callers");
        Peer {
            addr,
            url,
            failures: 0,
            retry_at: None,
        }
    }

    async fn ask(
        &mut self,
        http: &reqwest::Client,
        bearer: &str,
        keys: &[PeerKey],
        found: &mpsc::Sender<(PeerKey, SpanContext)>,
        metrics: &PeerMetrics,
    ) {
        let n = keys.len() as u64;
        if self
            .retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at)
        {
            metrics.lookups(&self.addr, LookupResult::Skipped, n);
            return;
        }
        for (i, chunk) in keys.chunks(wire::MAX_LOOKUPS).enumerate() {
            // A failure gives up on this chunk and the ones after it.
            let unanswered = (keys.len() - i * wire::MAX_LOOKUPS) as u64;
            let body = wire::encode_lookups(chunk);
            let send = || {
                http.post(&self.url)
                    .header(reqwest::header::AUTHORIZATION, bearer)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
            };
            // One immediate retry on a connection that failed before any answer (a pooled
            // connection the peer had just closed): a single lost request must not back
            // the peer off and cost every caller looked up meanwhile.
            let sent = match send().await {
                Err(e) if e.is_connect() || e.is_request() => {
                    tracing::debug!("exchange peer {}: {e}; retrying once", self.addr);
                    send().await
                }
                other => other,
            };
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("exchange peer {}: {e:#}", self.addr);
                    metrics.lookups(&self.addr, LookupResult::Failed, unanswered);
                    self.back_off();
                    return;
                }
            };
            let status = response.status();
            let body = match response.bytes().await {
                Ok(b) => b,
                Err(_) => {
                    metrics.lookups(&self.addr, LookupResult::Failed, unanswered);
                    self.back_off();
                    return;
                }
            };
            let answers = match (
                status.is_success(),
                wire::decode_answers(&body, chunk.len()),
            ) {
                (true, Ok(a)) => a,
                (_, decoded) => {
                    if status == reqwest::StatusCode::UNAUTHORIZED {
                        tracing::warn!(
                            "exchange peer {} refused our token: give every agent the same exchange token",
                            self.addr
                        );
                    } else if let Err(e) = decoded {
                        tracing::debug!("exchange peer {} answered {status}: {e}", self.addr);
                    }
                    metrics.lookups(&self.addr, LookupResult::Rejected, unanswered);
                    self.back_off();
                    return;
                }
            };
            self.failures = 0;
            self.retry_at = None;
            for (key, answer) in chunk.iter().zip(answers) {
                let result = match answer {
                    Answer::Found(ctx) => {
                        // The main loop reads these every tick; if it is that far behind,
                        // the span is decided without its caller, as with no peer at all.
                        let _ = found.try_send((*key, ctx));
                        LookupResult::Found
                    }
                    Answer::Pending => LookupResult::Pending,
                    Answer::Unknown => LookupResult::Unknown,
                };
                metrics.lookups(&self.addr, result, 1);
            }
        }
    }

    /// A peer is skipped only from its second failure in a row: one slow answer from a
    /// busy but live agent must not cost the lookups of every caller during a pause.
    fn back_off(&mut self) {
        self.failures = self.failures.saturating_add(1);
        if self.failures < 2 {
            return;
        }
        let pause = BACKOFF_MIN
            .saturating_mul(1 << self.failures.min(9).saturating_sub(2))
            .min(BACKOFF_MAX);
        self.retry_at = Some(tokio::time::Instant::now() + pause);
    }
}

/// The shared token from the environment or a file (a mounted Secret); surrounding
/// whitespace is ignored. Errors name what to do.
pub fn load_token(file: Option<&std::path::Path>, env: Option<String>) -> Result<Arc<[u8]>> {
    let raw = match (file, env) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --exchange-token-file {}", path.display()))?,
        (None, Some(v)) => v,
        (None, None) => anyhow::bail!(
            "the agent-to-agent exchange needs a shared token: set TRACER_EXCHANGE_TOKEN or --exchange-token-file (the same on every agent)"
        ),
    };
    let token = raw.trim();
    anyhow::ensure!(
        token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
        "the exchange token must be at least 16 printable characters without spaces"
    );
    Ok(Arc::from(token.as_bytes()))
}
