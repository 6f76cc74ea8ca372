//! Links spans into traces without any help from the applications.
//!
//! Every request gets its span id when its head is seen (before its response), so the
//! parent of a span is known early and trace ids propagate top-down. Rules, strongest
//! first:
//!
//! 1. **SERVER span, peer match**: the CLIENT span of the same exchange is its parent. The
//!    client's local address:port equals the server's peer address:port (DNAT rewrites the
//!    destination, not the source), and the request's first byte has the same TCP sequence
//!    number on both sides ([`peer_position`]; where the kernel does not give it, the n-th
//!    request written on the client's connection is the n-th read on the server's). If the request also carries trace context
//!    whose trace differs from the client span's trace, the application's own tracer made
//!    that context (an SDK-instrumented client): the header wins, so the SDK's trace and
//!    ours agree.
//! 2. **SERVER span, header**: no traced client: a valid `traceparent` or B3 context in the
//!    request makes the span a child of that context.
//! 3. **CLIENT span, thread**: a request written by thread T while T is serving exactly one
//!    SERVER request (its request read by T, its response not yet written) is that
//!    request's child. Only then is the cause certain for a thread-per-request runtime,
//!    and for an event loop with a single request in flight. Everywhere else the rule
//!    abstains and says why ([`Abstained`]): several requests in flight on T (an event loop:
//!    handlers that do variable work before calling downstream leave the loop in any order),
//!    none on T while the process serves some (work handed to another thread: pools, Go's
//!    `writeLoop`), or a process whose runtime schedules its work M:N over threads (Go: a
//!    thread says nothing about the goroutine it ran). A stream of an HTTP/2 connection
//!    counts for its thread only while it is the only request its process serves: the
//!    thread reading a multiplexed connection reads every handler's stream (gRPC's C core
//!    reads on I/O threads that also write the calls of handlers running elsewhere), and
//!    a goroutine reading one works for no stream. A guess that is right most of the
//!    time is wrong for someone's request; an abstained CLIENT span starts its own trace.
//!    In a followed CPython process a request written by an asyncio task is linked by the
//!    task instead (see [`Linker::task_responded`]): its parent is the SERVER request that
//!    the same task answers next, the only request a per-request task (aiohttp's, and any
//!    `asyncio` server that runs a handler in its own task) can be working for.
//! 4. **CLIENT span, header**: otherwise, context the application put in the outgoing
//!    request.
//! 5. Otherwise a new trace.
//!
//! A SERVER span whose client is not (yet) seen waits up to the link window for it, then
//! falls back to rule 2 or 5. A span whose parent never resolves is exported as a root
//! after twice the window and counted as an orphan. Context is read per request, so a
//! `traceparent` on a keep-alive connection never carries over to the next request.
//!
//! A span continuing a caller's context inherits the caller's sampling decision
//! ([`SpanRecord::parent_sampled`]), and so do all spans linked below it, so a
//! parent-based sampler keeps or drops the whole trace.

pub mod context;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;

// Keys are span ids (random), kernel connection ids and socket addresses; foldhash is
// seeded per map and several times cheaper than SipHash on such small keys.
use foldhash::{HashMap, HashMapExt};

use crate::capture::events::GoHandOff;
use crate::spans::runtime::Runtime;
use crate::spans::{IdGenerator, SpanId, SpanKind, SpanRecord, TraceId};
pub use context::SpanContext;

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// How long a SERVER span waits for its client to be seen.
    pub window_ns: u64,
    /// Requests tracked at once; the oldest are given up beyond it.
    pub max_spans: usize,
    /// Trace ids of exported spans remembered for late children: the newest half of this
    /// many at least, all of them at most.
    pub remembered_traces: usize,
    /// Agents on other nodes can be asked for callers: SERVER spans without a local client
    /// are looked up there ([`Linker::due_lookups`]), and this agent's CLIENT requests are
    /// kept answerable ([`Linker::answer`]).
    pub remote: bool,
    /// CLIENT requests kept answerable for other agents (like `remembered_traces`: the
    /// newest half at least).
    pub answerable: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            // A client descheduled between its write and the syscall's exit reports its
            // request late: on a loaded 2-core node 200 ms was once not enough.
            window_ns: 1_000_000_000,
            max_spans: 200_000,
            remembered_traces: 100_000,
            remote: false,
            answerable: 65_536,
        }
    }
}

/// A request head seen on a traced connection.
#[derive(Debug, Clone)]
pub struct StartedRequest {
    pub conn_id: u64,
    /// Position of the request on its connection (0-based).
    pub seq: u64,
    /// Its position for peer matching ([`peer_position`]).
    pub peer_seq: u64,
    pub kind: SpanKind,
    pub tgid: u32,
    /// The thread that read (server) or wrote (client) the request head.
    pub tid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// Valid trace context the request carried.
    pub context: Option<SpanContext>,
    /// How the process schedules its work: decides whether its threads mean anything.
    pub runtime: Runtime,
    /// The task that read (server) or wrote (client) the request head: the goroutine in a
    /// followed Go process, the asyncio task's coroutine frame in a followed CPython process.
    pub goid: Option<u64>,
    /// Excluded from tracing (a kubelet probe, an excluded path): neither its span nor any
    /// span linked below it is released.
    pub excluded: bool,
    /// A stream of a multiplexed connection (HTTP/2): the thread or goroutine that read it
    /// reads every stream of the connection, so it says nothing about which handler runs.
    pub multiplexed: bool,
}

/// Why the thread rule gave a CLIENT span no parent although its process was serving
/// requests: the cases where any choice could be someone else's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abstained {
    /// Several requests in flight on the writing thread (an event loop).
    SeveralOnThread,
    /// None on the writing thread, some elsewhere in the process (a hand-off).
    OtherThread,
    /// A runtime that moves its tasks between threads, not followed (Go without probes:
    /// an unsupported release, no symbols, or a request before the probes were attached).
    Runtime,
    /// A followed Go process whose writing goroutine works for no request the agent knows
    /// (a goroutine started before it was followed, or by one serving nothing).
    Goroutine,
    /// A followed asyncio task wrote the request but answered no SERVER request of its
    /// process that had arrived before it, within the link window (a background task, or a
    /// handler that answers later than the window after its call).
    Task,
    /// The one request in flight on the writing thread is a stream of a multiplexed
    /// connection, and its process serves others: a runtime whose I/O threads read the
    /// streams of many handlers (gRPC's C core, any event loop of several) writes calls
    /// for any of them.
    Multiplexed,
}

impl Abstained {
    pub const ALL: [Abstained; 6] = [
        Abstained::SeveralOnThread,
        Abstained::OtherThread,
        Abstained::Runtime,
        Abstained::Goroutine,
        Abstained::Task,
        Abstained::Multiplexed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Abstained::SeveralOnThread => "several_on_thread",
            Abstained::OtherThread => "other_thread",
            Abstained::Runtime => "runtime",
            Abstained::Goroutine => "goroutine_unknown",
            Abstained::Task => "task_unanswered",
            Abstained::Multiplexed => "multiplexed",
        }
    }
}

/// How spans were linked, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub by_peer: u64,
    /// SERVER spans linked to a caller traced by another node's agent.
    pub by_remote_peer: u64,
    pub by_header: u64,
    pub by_thread: u64,
    /// CLIENT spans the thread rule left without a parent, by [`Abstained`] (indexed by
    /// its position in [`Abstained::ALL`]).
    pub abstained: [u64; Abstained::ALL.len()],
    /// CLIENT spans linked to the request their goroutine works for (followed Go).
    pub by_goroutine: u64,
    /// CLIENT spans linked to the request their asyncio task answered (followed CPython).
    pub by_task: u64,
    pub roots: u64,
    pub orphans: u64,
    pub evicted: u64,
    pub waiting: u64,
    /// Spans not released because they belong to an excluded request's trace.
    pub excluded: u64,
}

/// Serving lists kept while empty, per map, before emptied ones are removed again.
const IDLE_SERVING_LISTS: usize = 4096;

/// Client source address and request position: identifies one exchange on both sides.
pub type PeerKey = (SocketAddr, u64);

/// Marks a [`PeerKey`] position that is a TCP sequence number, so it never equals a
/// request count (one side without sequence numbers leaves the pair unmatched, never
/// matched wrong).
const SEQ_POSITION: u64 = 1 << 63;

/// A request's position for peer matching: the TCP sequence number of its first byte when
/// known (both ends agree on it whenever each began to watch the connection, and whatever
/// either lost), else its index on the connection.
pub fn peer_position(first_seq: Option<u32>, index: u64) -> u64 {
    match first_seq {
        Some(s) => SEQ_POSITION | u64::from(s),
        None => index,
    }
}

/// Marks a [`PeerKey`] position that is an HTTP/2 stream id.
const STREAM_POSITION: u64 = 1 << 62;

/// An HTTP/2 request's position for peer matching: its stream id, which both ends of the
/// connection share.
pub fn stream_position(stream_id: u64) -> u64 {
    STREAM_POSITION | stream_id
}

/// What this agent knows of a CLIENT request another agent asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Its span's context (trace id, span id, the caller's sampling decision if any).
    Found(SpanContext),
    /// Seen, but its own parent is not decided yet: ask again.
    Pending,
    /// Not seen (yet).
    Unknown,
}

/// Delays after a SERVER request started at which its caller is looked up on other nodes:
/// the first leaves a local client time to match, the later ones cover a caller whose agent
/// reads its events late or whose own parent is still pending.
const LOOKUP_AT_NS: [u64; 5] = [2_000_000, 20_000_000, 100_000_000, 300_000_000, 700_000_000];
/// After that schedule, the interval of further lookups until the deadline: a caller that
/// is itself waiting on another node (a chain crossing several nodes) resolves only when
/// its own lookups do, which a slow node or a long link window can put late in the window.
const LOOKUP_REPEAT_NS: u64 = 400_000_000;

#[derive(Debug, Clone)]
enum Parent {
    Root,
    Remote(SpanContext),
    /// The CLIENT span of the same exchange, traced by another node's agent.
    RemotePeer(SpanContext),
    Local(SpanId),
    Peer {
        client: SpanId,
        header: Option<SpanContext>,
    },
    AwaitPeer {
        header: Option<SpanContext>,
        deadline_ns: u64,
        started_ns: u64,
        lookups: u8,
    },
    /// A CLIENT request written by an asyncio task: its parent is the SERVER request the
    /// task answers next ([`Linker::task_responded`]); past the deadline, none.
    AwaitTask {
        header: Option<SpanContext>,
        deadline_ns: u64,
        task: (u32, u64),
    },
}

#[derive(Debug, Clone)]
struct Resolved {
    trace_id: TraceId,
    parent: Option<SpanId>,
    trace_state: String,
    /// The sampling decision of the remote context this trace continues, if any.
    sampled: Option<bool>,
    /// The trace below an excluded request: not released.
    excluded: bool,
}

struct Node {
    parent: Parent,
    excluded: bool,
    own_trace: TraceId,
    resolved: Option<Resolved>,
    span: Option<SpanRecord>,
    finished_ns: u64,
    /// Finished, waiting for its client, and out of `finished` until this time: see
    /// `Linker::parked`.
    parked_until: Option<u64>,
    kind: SpanKind,
    tgid: u32,
    tid: u32,
    /// The goroutine serving this SERVER request (followed Go), else 0.
    goid: u64,
    /// A stream of a multiplexed connection ([`StartedRequest::multiplexed`]).
    multiplexed: bool,
    started_ns: u64,
    request: (u64, u64),
    client_key: Option<PeerKey>,
    server_key: Option<PeerKey>,
}

pub struct Linker {
    cfg: LinkConfig,
    ids: IdGenerator,
    nodes: HashMap<SpanId, Node>,
    order: VecDeque<SpanId>,
    /// Started requests by connection, then position: closing a connection touches only
    /// its own (usually one) requests. An emptied list stays until the connection closes,
    /// so keep-alive traffic does not allocate a list per request.
    by_request: HashMap<u64, Vec<(u64, SpanId)>>,
    clients_by_source: HashMap<PeerKey, SpanId>,
    servers_awaiting: HashMap<PeerKey, SpanId>,
    /// SERVER requests in flight by the thread that read them, and their count per process.
    serving_by_thread: HashMap<(u32, u32), Vec<SpanId>>,
    serving_by_process: HashMap<u32, u32>,
    /// Traces (sampling decisions, exclusion) of released spans, for late children.
    exported: RecentMap<SpanId, (TraceId, Option<bool>, bool)>,
    /// Finished spans not yet released, in finishing order.
    finished: VecDeque<SpanId>,
    /// Finished SERVER spans waiting for their client (`Parent::AwaitPeer`), by the time
    /// they can be decided without it. Only that time or the client's arrival can decide
    /// them, so `poll` leaves them alone until then instead of trying every waiting span on
    /// every tick. Entries whose node left or was woken early are stale and skipped.
    parked: BinaryHeap<Reverse<(u64, SpanId)>>,
    /// Spans decided since the last poll.
    released: Vec<SpanRecord>,
    /// SERVER spans awaiting a caller, by the time of their next lookup on other nodes.
    lookups: BinaryHeap<Reverse<(u64, SpanId)>>,
    /// CLIENT requests other agents may ask about (bounded, oldest forgotten first).
    answerable: RecentMap<PeerKey, SpanId>,
    goroutines: Goroutines,
    /// CLIENT requests of followed CPython processes by the asyncio task that wrote them
    /// ((tgid, task id)), until the task answers a SERVER request. Bounded like the
    /// goroutine maps.
    tasks_waiting: HashMap<(u32, u64), Vec<SpanId>>,
    stats: LinkStats,
}

/// What the agent knows of the goroutines of followed Go processes (`capture` reports
/// their hand-offs from uprobes): which request each goroutine works for, which goroutine
/// writes each `net/http` client connection's requests, and for which request a connection
/// writes now. Every map is bounded; when one overflows it is emptied, which only makes
/// later calls abstain.
#[derive(Default)]
struct Goroutines {
    /// (tgid, goid) → the SERVER request it read, or that its creator worked for when it
    /// was started.
    works_for: HashMap<(u32, u64), SpanId>,
    /// (tgid, writeLoop goid) → its connection (`*persistConn`).
    writer_conn: HashMap<(u32, u64), u64>,
    /// (tgid, connection) → the request its next write is for (`None`: made by a goroutine
    /// working for no known request).
    conn_for: HashMap<(u32, u64), Option<SpanId>>,
}

const GOROUTINES_TRACKED: usize = 65_536;

/// A map that keeps at least its newest `cap / 2` keys and at most `cap`: two generations,
/// the older dropped whole when the younger fills. Never removing single keys keeps the
/// hash tables free of tombstones, so each stays at the size its generation needs (a FIFO
/// map of 100,000 keys evicting one key per insert settled at 262,144 buckets, 7 MiB, plus
/// its order queue); an insert is one hash insert, and the emptied table is reused.
struct RecentMap<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
    generation: usize,
}

impl<K: std::hash::Hash + Eq, V> RecentMap<K, V> {
    fn new(cap: usize) -> Self {
        RecentMap {
            young: HashMap::new(),
            old: HashMap::new(),
            generation: (cap / 2).max(1),
        }
    }

    fn insert(&mut self, k: K, v: V) {
        if self.young.len() >= self.generation && !self.young.contains_key(&k) {
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
        }
        self.young.insert(k, v);
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.young.get(k).or_else(|| self.old.get(k))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
    if map.len() >= GOROUTINES_TRACKED && !map.contains_key(&k) {
        map.clear();
    }
    map.insert(k, v);
}

impl Linker {
    pub fn new(cfg: LinkConfig) -> Self {
        let (remembered, answerable) = (cfg.remembered_traces, cfg.answerable);
        Linker {
            cfg,
            ids: IdGenerator::default(),
            nodes: HashMap::new(),
            order: VecDeque::new(),
            by_request: HashMap::new(),
            clients_by_source: HashMap::new(),
            servers_awaiting: HashMap::new(),
            serving_by_thread: HashMap::new(),
            serving_by_process: HashMap::new(),
            exported: RecentMap::new(remembered),
            finished: VecDeque::new(),
            parked: BinaryHeap::new(),
            released: Vec::new(),
            lookups: BinaryHeap::new(),
            answerable: RecentMap::new(answerable),
            goroutines: Goroutines::default(),
            tasks_waiting: HashMap::new(),
            stats: LinkStats::default(),
        }
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats {
            waiting: self.nodes.len() as u64,
            ..self.stats
        }
    }

    /// Registers a request whose head was just seen; returns its span id.
    pub fn request_started(&mut self, r: StartedRequest, now_ns: u64) -> SpanId {
        while self.nodes.len() >= self.cfg.max_spans {
            self.evict_oldest();
        }
        let span_id = self.ids.span_id();
        let mut client_key = None;
        let mut server_key = None;
        let parent = match r.kind {
            SpanKind::Server => match r.peer {
                Some(source) => {
                    let key = (source, r.peer_seq);
                    match self.clients_by_source.remove(&key) {
                        Some(client) => Parent::Peer {
                            client,
                            header: r.context.clone(),
                        },
                        None => {
                            self.servers_awaiting.insert(key, span_id);
                            server_key = Some(key);
                            if self.cfg.remote {
                                self.lookups
                                    .push(Reverse((now_ns + LOOKUP_AT_NS[0], span_id)));
                            }
                            Parent::AwaitPeer {
                                header: r.context.clone(),
                                deadline_ns: now_ns + self.cfg.window_ns,
                                started_ns: now_ns,
                                lookups: 0,
                            }
                        }
                    }
                }
                None => match &r.context {
                    Some(ctx) => Parent::Remote(ctx.clone()),
                    None => Parent::Root,
                },
            },
            SpanKind::Client => {
                let parent = match (r.runtime, r.goid) {
                    (Runtime::Python, Some(task)) => {
                        let waiting = self.tasks_waiting.len();
                        if waiting >= GOROUTINES_TRACKED
                            && !self.tasks_waiting.contains_key(&(r.tgid, task))
                        {
                            self.tasks_waiting.clear();
                        }
                        self.tasks_waiting
                            .entry((r.tgid, task))
                            .or_default()
                            .push(span_id);
                        Parent::AwaitTask {
                            header: r.context.clone(),
                            deadline_ns: now_ns + self.cfg.window_ns,
                            task: (r.tgid, task),
                        }
                    }
                    _ => match self.serving_parent(r.tgid, r.tid, r.runtime, r.goid) {
                        Some(p) => Parent::Local(p),
                        None => match &r.context {
                            Some(ctx) => Parent::Remote(ctx.clone()),
                            None => Parent::Root,
                        },
                    },
                };
                if let Some(source) = r.local {
                    let key = (source, r.peer_seq);
                    if self.cfg.remote {
                        self.answerable.insert(key, span_id);
                    }
                    match self.servers_awaiting.remove(&key) {
                        // The server's read was delivered before our write: link it now.
                        Some(server) => {
                            if let Some(node) = self.nodes.get_mut(&server)
                                && let Parent::AwaitPeer { header, .. } = &node.parent
                            {
                                node.parent = Parent::Peer {
                                    client: span_id,
                                    header: header.clone(),
                                };
                                node.server_key = None;
                                if node.parked_until.take().is_some() {
                                    self.finished.push_back(server);
                                }
                            }
                        }
                        None => {
                            self.clients_by_source.insert(key, span_id);
                            client_key = Some(key);
                        }
                    }
                }
                parent
            }
        };
        if r.kind == SpanKind::Server {
            self.serving_by_thread
                .entry((r.tgid, r.tid))
                .or_default()
                .push(span_id);
            *self.serving_by_process.entry(r.tgid).or_default() += 1;
            // A goroutine reading a multiplexed connection reads every stream's request
            // (Go's HTTP/2 server reads the first ones on the goroutine that then starts
            // every handler): it works for none of them.
            if r.runtime == Runtime::Go
                && !r.multiplexed
                && let Some(g) = r.goid
            {
                bounded_insert(&mut self.goroutines.works_for, (r.tgid, g), span_id);
            }
        }
        let own_trace = self.ids.trace_id();
        self.nodes.insert(
            span_id,
            Node {
                parent,
                excluded: r.excluded,
                own_trace,
                resolved: None,
                span: None,
                finished_ns: 0,
                parked_until: None,
                kind: r.kind,
                tgid: r.tgid,
                tid: r.tid,
                goid: match (r.kind, r.runtime, r.multiplexed) {
                    (SpanKind::Server, Runtime::Go, false) => r.goid.unwrap_or(0),
                    _ => 0,
                },
                multiplexed: r.multiplexed,
                started_ns: now_ns,
                request: (r.conn_id, r.seq),
                client_key,
                server_key,
            },
        );
        self.order.push_back(span_id);
        // Ids of nodes that left normally are skipped lazily by `evict_oldest`; compact
        // now and then so the queue stays proportional to the nodes instead of growing
        // by one id per request forever.
        if self.order.len() > 2 * self.nodes.len().max(1024) {
            let nodes = &self.nodes;
            self.order.retain(|id| nodes.contains_key(id));
        }
        self.by_request
            .entry(r.conn_id)
            .or_default()
            .push((r.seq, span_id));
        span_id
    }

    /// A started request will produce no span (the agent's own export): drop it.
    pub fn forget(&mut self, conn_id: u64, seq: u64) {
        let Some(span_id) = self.take_request(conn_id, seq) else {
            return;
        };
        self.detach(span_id);
    }

    /// Removes a node and every index that names it: the requests its thread or process
    /// serves, and its waiting peer keys. The one place a node leaves the linker, released
    /// or given up.
    fn detach(&mut self, span_id: SpanId) -> Option<Node> {
        let node = self.nodes.remove(&span_id)?;
        if node.kind == SpanKind::Server {
            self.stop_serving(span_id, node.tgid, node.tid, node.goid);
        }
        if let Some(key) = node.client_key
            && self.clients_by_source.get(&key) == Some(&span_id)
        {
            self.clients_by_source.remove(&key);
        }
        if let Some(key) = node.server_key
            && self.servers_awaiting.get(&key) == Some(&span_id)
        {
            self.servers_awaiting.remove(&key);
        }
        Some(node)
    }

    /// The span id given to a started request, if it is still tracked.
    pub fn span_id_of(&self, conn_id: u64, seq: u64) -> Option<SpanId> {
        self.by_request
            .get(&conn_id)?
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, id)| *id)
    }

    fn take_request(&mut self, conn_id: u64, seq: u64) -> Option<SpanId> {
        let list = self.by_request.get_mut(&conn_id)?;
        let at = list.iter().position(|(s, _)| *s == seq)?;
        let (_, span_id) = list.swap_remove(at);
        Some(span_id)
    }

    /// Rule 3: the SERVER request a CLIENT request written by `tid` was certainly made for,
    /// or none (counted when the process was serving something, so a choice was refused).
    fn serving_parent(
        &mut self,
        tgid: u32,
        tid: u32,
        runtime: Runtime,
        goid: Option<u64>,
    ) -> Option<SpanId> {
        if runtime == Runtime::Go
            && let Some(g) = goid
        {
            return self.goroutine_parent(tgid, g);
        }
        let in_process = self.serving_by_process.get(&tgid).copied().unwrap_or(0);
        if in_process == 0 {
            return None;
        }
        let on_thread = self
            .serving_by_thread
            .get(&(tgid, tid))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let why = match (runtime, on_thread) {
            (Runtime::Go, _) => Abstained::Runtime,
            (_, [only])
                if in_process > 1 && self.nodes.get(only).is_some_and(|n| n.multiplexed) =>
            {
                Abstained::Multiplexed
            }
            (_, [only]) => {
                self.stats.by_thread += 1;
                return Some(*only);
            }
            (_, []) => Abstained::OtherThread,
            _ => Abstained::SeveralOnThread,
        };
        self.stats.abstained[why as usize] += 1;
        None
    }

    /// The request a followed Go process's goroutine `w` writes a request for: through the
    /// connection it writes for (a `net/http` writeLoop) or its own work. Never the thread.
    fn goroutine_parent(&mut self, tgid: u32, w: u64) -> Option<SpanId> {
        let g = &self.goroutines;
        let cause = match g.writer_conn.get(&(tgid, w)) {
            Some(conn) => g.conn_for.get(&(tgid, *conn)).copied().flatten(),
            None => g.works_for.get(&(tgid, w)).copied(),
        };
        match cause {
            Some(_) => self.stats.by_goroutine += 1,
            None => self.stats.abstained[Abstained::Goroutine as usize] += 1,
        }
        cause
    }

    /// A hand-off in a followed Go process, seen by a uprobe before the writes it explains.
    pub fn go_hand_off(&mut self, tgid: u32, hand_off: GoHandOff) {
        let g = &mut self.goroutines;
        match hand_off {
            GoHandOff::RoundTrip { goid, conn } => {
                let span = g.works_for.get(&(tgid, goid)).copied();
                bounded_insert(&mut g.conn_for, (tgid, conn), span);
            }
            GoHandOff::ConnWriter { goid, conn } => {
                bounded_insert(&mut g.writer_conn, (tgid, goid), conn);
            }
            GoHandOff::Spawn { parent, child } => {
                if let Some(span) = g.works_for.get(&(tgid, parent)).copied() {
                    bounded_insert(&mut g.works_for, (tgid, child), span);
                }
            }
        }
    }

    /// A process exited or was replaced: its goroutine ids and tasks mean nothing any more.
    pub fn forget_process(&mut self, tgid: u32) {
        let g = &mut self.goroutines;
        g.works_for.retain(|(t, _), _| *t != tgid);
        g.writer_conn.retain(|(t, _), _| *t != tgid);
        g.conn_for.retain(|(t, _), _| *t != tgid);
        self.tasks_waiting.retain(|(t, _), _| *t != tgid);
    }

    /// Asyncio task `task` of followed CPython process `tgid` writes (part of) the response
    /// on SERVER connection `conn_id`: the CLIENT requests it wrote since it began are that
    /// request's children. Called before the bytes reach the HTTP layer, so the request
    /// answered is still the oldest one started on the connection (HTTP/1 answers in order).
    ///
    /// A task is named by its coroutine's frame address and code, and an address is reused
    /// once its coroutine is gone. A request left waiting by an earlier coroutine of the
    /// same code that never answered (a handler cancelled after its call) is therefore
    /// attributed only if it was written after the answered request arrived; the residual
    /// case is such a coroutine dying, and its frame being reused, between that arrival and
    /// the start of the next handler.
    pub fn task_responded(&mut self, tgid: u32, task: u64, conn_id: u64) {
        let Some(waiting) = self.tasks_waiting.remove(&(tgid, task)) else {
            return;
        };
        let answered = self
            .by_request
            .get(&conn_id)
            .and_then(|list| list.iter().min_by_key(|(seq, _)| *seq))
            .map(|(_, id)| *id);
        let server = answered.and_then(|id| {
            let node = self.nodes.get(&id)?;
            (node.kind == SpanKind::Server).then_some((id, node.started_ns))
        });
        for client in waiting {
            let Some(node) = self.nodes.get_mut(&client) else {
                continue;
            };
            let Parent::AwaitTask { header, .. } = &node.parent else {
                continue;
            };
            node.parent = match server {
                Some((server, arrived)) if node.started_ns >= arrived => {
                    self.stats.by_task += 1;
                    Parent::Local(server)
                }
                _ => {
                    self.stats.abstained[Abstained::Task as usize] += 1;
                    match header {
                        Some(h) => Parent::Remote(h.clone()),
                        None => Parent::Root,
                    }
                }
            };
            if node.parked_until.take().is_some() {
                self.finished.push_back(client);
            }
        }
    }

    fn stop_serving(&mut self, span: SpanId, tgid: u32, tid: u32, goid: u64) {
        // The goroutine that read it is done with it; goroutines it started keep it.
        if goid != 0 && self.goroutines.works_for.get(&(tgid, goid)) == Some(&span) {
            self.goroutines.works_for.remove(&(tgid, goid));
        }
        // Emptied lists stay (up to a bound, against thread churn) so the next request of a
        // busy thread or process reuses them instead of allocating; empty means absent.
        let Some(list) = self.serving_by_thread.get_mut(&(tgid, tid)) else {
            return;
        };
        let Some(at) = list.iter().position(|s| *s == span) else {
            return;
        };
        list.swap_remove(at);
        if list.is_empty() && self.serving_by_thread.len() > IDLE_SERVING_LISTS {
            self.serving_by_thread.remove(&(tgid, tid));
        }
        if let Some(n) = self.serving_by_process.get_mut(&tgid) {
            *n = n.saturating_sub(1);
            if *n == 0 && self.serving_by_process.len() > IDLE_SERVING_LISTS {
                self.serving_by_process.remove(&tgid);
            }
        }
    }

    /// The exchange of a started request is complete. `span` carries everything but its
    /// trace id and parent, which [`Linker::poll`] fills in.
    pub fn span_finished(&mut self, conn_id: u64, seq: u64, mut span: SpanRecord, now_ns: u64) {
        let span_id = match self.take_request(conn_id, seq) {
            Some(id) => id,
            None => {
                // Its start was given up (evicted): still export it, as a root.
                span.span_id = self.ids.span_id();
                span.trace_id = self.ids.trace_id();
                self.stats.orphans += 1;
                self.stats.roots += 1;
                self.remember(span.span_id, span.trace_id, None, false);
                self.released.push(span);
                return;
            }
        };
        let Some(node) = self.nodes.get_mut(&span_id) else {
            return;
        };
        span.span_id = span_id;
        node.span = Some(span);
        node.finished_ns = now_ns;
        self.finished.push_back(span_id);
        let (kind, tgid, tid, goid, client_key) =
            (node.kind, node.tgid, node.tid, node.goid, node.client_key);
        if kind == SpanKind::Server {
            self.stop_serving(span_id, tgid, tid, goid);
        }
        // Its server, if traced, has read the request by now (it answered it).
        if let Some(key) = client_key
            && self.clients_by_source.get(&key) == Some(&span_id)
        {
            self.clients_by_source.remove(&key);
        }
    }

    /// A connection closed: requests on it that never finished are given up.
    pub fn connection_closed(&mut self, conn_id: u64, now_ns: u64) {
        let leftover = self.by_request.remove(&conn_id).unwrap_or_default();
        for (_, span) in leftover {
            self.give_up(span, now_ns);
        }
    }

    /// Removes a node that will never have a span, keeping its trace for its children.
    fn give_up(&mut self, span_id: SpanId, now_ns: u64) {
        let trace = self
            .resolve(span_id, now_ns, true, 0)
            .map(|r| (r.trace_id, r.sampled, r.excluded));
        if let Some(node) = self.detach(span_id) {
            self.take_request(node.request.0, node.request.1);
            if let Some(span) = node.span {
                // Finished but unresolvable: export as a root.
                self.release(span_id, span, None, now_ns);
                return;
            }
        }
        if let Some((trace, sampled, excluded)) = trace {
            self.remember(span_id, trace, sampled, excluded);
        }
    }

    fn evict_oldest(&mut self) {
        while let Some(id) = self.order.pop_front() {
            if self.nodes.contains_key(&id) {
                self.stats.evicted += 1;
                self.give_up(id, u64::MAX);
                return;
            }
        }
    }

    fn remember(&mut self, span: SpanId, trace: TraceId, sampled: Option<bool>, excluded: bool) {
        self.exported.insert(span, (trace, sampled, excluded));
    }

    /// The trace (and parent) of a span, if decidable now. `force` applies the fallbacks
    /// instead of waiting.
    fn resolve(
        &mut self,
        span_id: SpanId,
        now_ns: u64,
        force: bool,
        depth: u32,
    ) -> Option<Resolved> {
        if let Some(&(trace_id, sampled, excluded)) = self.exported.get(&span_id) {
            return Some(Resolved {
                trace_id,
                parent: None,
                trace_state: String::new(),
                sampled,
                excluded,
            });
        }
        let node = self.nodes.get(&span_id)?;
        if let Some(r) = &node.resolved {
            return Some(r.clone());
        }
        let (own_trace, excluded) = (node.own_trace, node.excluded);
        let root = Resolved {
            trace_id: own_trace,
            parent: None,
            trace_state: String::new(),
            sampled: None,
            excluded: false,
        };
        let remote = |ctx: &SpanContext| Resolved {
            trace_id: ctx.trace_id,
            parent: Some(ctx.span_id),
            trace_state: ctx.trace_state.clone(),
            sampled: ctx.sampled,
            excluded: false,
        };
        // Deep chains are legitimate but bounded; beyond the bound (or a cycle forged
        // through headers) the span becomes a root.
        if depth > 64 {
            return force.then_some(root);
        }
        let (resolved, how) = match node.parent.clone() {
            Parent::Root => (Some(root), Some(Link::Root)),
            Parent::Remote(ctx) => (Some(remote(&ctx)), Some(Link::Header)),
            Parent::RemotePeer(ctx) => (Some(remote(&ctx)), Some(Link::RemotePeer)),
            Parent::Local(p) => match self.resolve(p, now_ns, force, depth + 1) {
                Some(r) => (
                    Some(Resolved {
                        parent: Some(p),
                        ..r
                    }),
                    None,
                ),
                None if force => (Some(root), Some(Link::Orphan)),
                None => (None, None),
            },
            Parent::Peer { client, header } => match self.resolve(client, now_ns, force, depth + 1)
            {
                Some(r) => match header {
                    Some(h) if h.trace_id != r.trace_id => (Some(remote(&h)), Some(Link::Header)),
                    _ => (
                        Some(Resolved {
                            parent: Some(client),
                            ..r
                        }),
                        Some(Link::Peer),
                    ),
                },
                None if force => match header {
                    Some(h) => (Some(remote(&h)), Some(Link::Header)),
                    None => (Some(root), Some(Link::Orphan)),
                },
                None => (None, None),
            },
            Parent::AwaitTask {
                header,
                deadline_ns,
                task,
            } => {
                if force || now_ns >= deadline_ns {
                    self.stats.abstained[Abstained::Task as usize] += 1;
                    if let Some(list) = self.tasks_waiting.get_mut(&task) {
                        list.retain(|s| *s != span_id);
                        if list.is_empty() {
                            self.tasks_waiting.remove(&task);
                        }
                    }
                    match header {
                        Some(h) => (Some(remote(&h)), Some(Link::Header)),
                        None => (Some(root), Some(Link::Root)),
                    }
                } else {
                    (None, None)
                }
            }
            Parent::AwaitPeer {
                header,
                deadline_ns,
                ..
            } => {
                if force || now_ns >= deadline_ns {
                    match header {
                        Some(h) => (Some(remote(&h)), Some(Link::Header)),
                        None => (Some(root), Some(Link::Root)),
                    }
                } else {
                    (None, None)
                }
            }
        };
        let mut resolved = resolved?;
        // Inherited from the parent (`..r`) or set here: a probe's downstream calls go too.
        resolved.excluded |= excluded;
        match how {
            Some(Link::Root) => self.stats.roots += 1,
            Some(Link::Header) => self.stats.by_header += 1,
            Some(Link::Peer) => self.stats.by_peer += 1,
            Some(Link::RemotePeer) => self.stats.by_remote_peer += 1,
            Some(Link::Orphan) => {
                self.stats.orphans += 1;
                self.stats.roots += 1;
            }
            None => {}
        }
        if let Some(node) = self.nodes.get_mut(&span_id) {
            if let Some(key) = node.server_key.take() {
                self.servers_awaiting.remove(&key);
            }
            node.resolved = Some(resolved.clone());
        }
        Some(resolved)
    }

    fn release(
        &mut self,
        span_id: SpanId,
        mut span: SpanRecord,
        resolved: Option<Resolved>,
        _now_ns: u64,
    ) {
        let excluded = resolved.as_ref().is_some_and(|r| r.excluded);
        match resolved {
            Some(r) => {
                span.trace_id = r.trace_id;
                span.parent_span_id = r.parent;
                span.trace_state = r.trace_state;
                span.parent_sampled = r.sampled;
            }
            None => {
                span.trace_id = self.ids.trace_id();
                span.parent_span_id = None;
                self.stats.orphans += 1;
                self.stats.roots += 1;
            }
        }
        self.remember(span_id, span.trace_id, span.parent_sampled, excluded);
        if excluded {
            self.stats.excluded += 1;
        } else {
            self.released.push(span);
        }
    }

    /// Another agent asks for the CLIENT request written from `key` (this node's client
    /// address:port and the request's position on the connection).
    pub fn answer(&mut self, key: PeerKey, now_ns: u64) -> Answer {
        let Some(&span_id) = self.answerable.get(&key) else {
            return Answer::Unknown;
        };
        match self.resolve(span_id, now_ns, false, 0) {
            Some(r) => Answer::Found(SpanContext {
                trace_id: r.trace_id,
                span_id,
                // An excluded trace is dropped on the other nodes too.
                sampled: if r.excluded { Some(false) } else { r.sampled },
                trace_state: r.trace_state,
            }),
            // Tracked, parent not decided yet.
            None if self.nodes.contains_key(&span_id) => Answer::Pending,
            // Gone without a trace remembered (evicted): nothing certain to say.
            None => Answer::Unknown,
        }
    }

    /// Callers to look up on other nodes now: SERVER requests whose client no local span
    /// matched yet. Each is asked a bounded number of times within its link window.
    pub fn due_lookups(&mut self, now_ns: u64) -> Vec<PeerKey> {
        let mut due = Vec::new();
        while let Some(&Reverse((at, span_id))) = self.lookups.peek() {
            if at > now_ns {
                break;
            }
            self.lookups.pop();
            let Some(node) = self.nodes.get_mut(&span_id) else {
                continue;
            };
            let Parent::AwaitPeer {
                started_ns,
                deadline_ns,
                lookups,
                ..
            } = &mut node.parent
            else {
                continue; // linked meanwhile
            };
            let Some(key) = node.server_key else {
                continue;
            };
            due.push(key);
            *lookups += 1;
            let at = match LOOKUP_AT_NS.get(*lookups as usize) {
                Some(next) => *started_ns + next,
                None => now_ns + LOOKUP_REPEAT_NS,
            };
            if at < *deadline_ns {
                self.lookups.push(Reverse((at, span_id)));
            }
        }
        due
    }

    /// Another node's agent traced the caller of the SERVER request awaiting `key`: link it
    /// as a local peer match would (a header naming a different trace still wins).
    pub fn remote_found(&mut self, key: PeerKey, ctx: SpanContext) -> bool {
        let Some(&server) = self.servers_awaiting.get(&key) else {
            return false;
        };
        let Some(node) = self.nodes.get_mut(&server) else {
            return false;
        };
        let Parent::AwaitPeer { header, .. } = &node.parent else {
            return false;
        };
        node.parent = match header {
            Some(h) if h.trace_id != ctx.trace_id => Parent::Remote(h.clone()),
            _ => Parent::RemotePeer(ctx),
        };
        node.server_key = None;
        self.servers_awaiting.remove(&key);
        if node.parked_until.take().is_some() {
            self.finished.push_back(server);
        }
        true
    }

    /// Spans whose trace is decided, ready to export. `force` decides everything now
    /// (shutdown).
    pub fn poll(&mut self, now_ns: u64, force: bool) -> Vec<SpanRecord> {
        while let Some(&Reverse((at, span_id))) = self.parked.peek() {
            if at > now_ns && !force {
                break;
            }
            self.parked.pop();
            if let Some(node) = self.nodes.get_mut(&span_id)
                && node.parked_until == Some(at)
            {
                node.parked_until = None;
                self.finished.push_back(span_id);
            }
        }
        for _ in 0..self.finished.len() {
            let Some(span_id) = self.finished.pop_front() else {
                break;
            };
            let Some(finished_ns) = self.nodes.get(&span_id).map(|n| n.finished_ns) else {
                continue; // given up meanwhile
            };
            let overdue = force || now_ns >= finished_ns.saturating_add(2 * self.cfg.window_ns);
            match self.resolve(span_id, now_ns, overdue, 0) {
                Some(resolved) => {
                    if let Some(span) = self.detach(span_id).and_then(|n| n.span) {
                        self.release(span_id, span, Some(resolved), now_ns);
                    }
                }
                None => self.wait(span_id, finished_ns),
            }
        }
        if force {
            let started: Vec<SpanId> = self.nodes.keys().copied().collect();
            for id in started {
                self.give_up(id, now_ns);
            }
        }
        std::mem::take(&mut self.released)
    }

    /// A finished span that could not be decided yet: parked if only time or its client
    /// can change that, otherwise tried again on the next poll.
    fn wait(&mut self, span_id: SpanId, finished_ns: u64) {
        let overdue_ns = finished_ns.saturating_add(2 * self.cfg.window_ns);
        match self.nodes.get_mut(&span_id) {
            Some(node) => match node.parent {
                Parent::AwaitPeer { deadline_ns, .. } | Parent::AwaitTask { deadline_ns, .. } => {
                    let at = deadline_ns.min(overdue_ns);
                    node.parked_until = Some(at);
                    self.parked.push(Reverse((at, span_id)));
                }
                _ => self.finished.push_back(span_id),
            },
            None => self.finished.push_back(span_id),
        }
    }
}

enum Link {
    Root,
    Header,
    Peer,
    RemotePeer,
    Orphan,
}

#[cfg(test)]
mod tests;
