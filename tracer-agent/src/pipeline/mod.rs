//! The connection table: routes decoded kernel events to each connection's HTTP state,
//! announces request heads to the linker, turns completed exchanges into spans and
//! releases them once their trace is decided. Pure apart from the /proc reads of the
//! resource cache; driven by tests with synthetic events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracer_common::{Direction, Role};

use crate::capture::events::{CaptureEvent, ConnOpened, DataChunk, Meta};
use crate::enrich::Enricher;
use crate::export::Exclusions;
use crate::http::{
    self, Chunk, ConnStats, Exchange, HttpConfig, HttpConnection, RequestHead, Stream,
};
use crate::http2::{self, H2Connection, Http2Config};
use crate::link::{Answer, LinkConfig, Linker, PeerKey, StartedRequest, context};
use crate::metrics::Metrics;
use crate::spans::builder::{ConnMeta, build_span, grpc_method, split_target};
use crate::spans::clock::{Adjustment, Clock};
use crate::spans::route::RouteNamer;
use crate::spans::runtime::Runtime;
use crate::spans::{Resource, SpanKind, SpanRecord};

#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    pub http: HttpConfig,
    pub http2: Http2Config,
    pub link: LinkConfig,
    /// Connections tracked at once; the least recently active is evicted beyond it.
    pub max_connections: usize,
    /// Requests not traced (kubelet probes, excluded paths).
    pub exclude: Exclusions,
    /// Span names by route.
    pub routes: RouteNamer,
}

struct Connection {
    meta: ConnMeta,
    tgid: u32,
    resource: Arc<Resource>,
    runtime: Runtime,
    /// Created with the first data, by what it looks like: an idle connection costs only
    /// its table entry (about 150 bytes; the HTTP state is about 1 KiB).
    http: Option<Protocol>,
    /// Data since the eviction clock last passed it: spared once (see `Pipeline::evict_oldest`).
    referenced: bool,
    /// Parse errors and stream gaps of this connection already added to the metrics.
    parse_errors: u64,
    desynchronised: u64,
    gaps: u64,
}

/// A connection's HTTP layer: HTTP/1.x, or HTTP/2 (prior knowledge: h2c, gRPC).
enum Protocol {
    Http1(Box<HttpConnection>),
    Http2(Box<H2Connection>),
}

impl Protocol {
    /// HTTP/2 when the first bytes seen are the client preface or a server's SETTINGS.
    fn for_first_bytes(stream: Stream, bytes: &[u8], cfg: &PipelineConfig) -> Protocol {
        if http2::starts_like_http2(stream, bytes) {
            Protocol::Http2(Box::new(H2Connection::new(&cfg.http2)))
        } else {
            Protocol::Http1(Box::new(HttpConnection::new(&cfg.http)))
        }
    }

    /// Many requests in flight at once on the connection, answered in any order (HTTP/2's
    /// streams).
    fn multiplexed(&self) -> bool {
        matches!(self, Protocol::Http2(_))
    }

    fn on_bytes(&mut self, stream: Stream, chunk: Chunk<'_>) {
        match (self, stream) {
            (Protocol::Http1(h), Stream::Request) => h.on_request_bytes(chunk),
            (Protocol::Http1(h), Stream::Response) => h.on_response_bytes(chunk),
            (Protocol::Http2(h), Stream::Request) => h.on_request_bytes(chunk),
            (Protocol::Http2(h), Stream::Response) => h.on_response_bytes(chunk),
        }
    }

    fn on_gap(&mut self, stream: Stream) {
        match self {
            Protocol::Http1(h) => h.on_gap(stream),
            Protocol::Http2(h) => h.on_gap(stream),
        }
    }

    fn on_close(&mut self, ts_ns: u64) {
        match self {
            Protocol::Http1(h) => h.on_close(ts_ns),
            Protocol::Http2(h) => h.on_close(ts_ns),
        }
    }

    fn drain_started_into(&mut self, out: &mut Vec<http::StartedRequest>) {
        match self {
            Protocol::Http1(h) => h.drain_started_into(out),
            Protocol::Http2(h) => h.drain_started_into(out),
        }
    }

    fn drain_exchanges_into(&mut self, out: &mut Vec<Exchange>) {
        match self {
            Protocol::Http1(h) => h.drain_exchanges_into(out),
            Protocol::Http2(h) => h.drain_exchanges_into(out),
        }
    }

    fn request_head(&self, seq: u64) -> Option<&RequestHead> {
        match self {
            Protocol::Http1(h) => h.request_head(seq),
            Protocol::Http2(h) => h.request_head(seq),
        }
    }

    fn stats(&self) -> ConnStats {
        match self {
            Protocol::Http1(h) => h.stats(),
            Protocol::Http2(h) => h.stats(),
        }
    }

    /// Nothing more can come of this connection's bytes.
    fn is_dead(&self) -> bool {
        match self {
            Protocol::Http1(h) => h.is_not_http(),
            Protocol::Http2(h) => h.undecodable().is_some(),
        }
    }

    /// The request's position for peer matching: an HTTP/2 stream id (the same at both
    /// ends), else the TCP sequence number of its first byte or its index.
    fn peer_position(&self, started: &http::StartedRequest) -> u64 {
        match self {
            Protocol::Http1(_) => crate::link::peer_position(started.timing.first_seq, started.seq),
            Protocol::Http2(_) => crate::link::stream_position(started.seq),
        }
    }
}

impl Connection {
    fn kind(&self) -> SpanKind {
        match self.meta.role() {
            Role::Client => SpanKind::Client,
            _ => SpanKind::Server,
        }
    }
}

pub struct Pipeline {
    cfg: PipelineConfig,
    /// By kernel connection id (a counter): foldhash, not SipHash, on the per-event lookup.
    conns: foldhash::HashMap<u64, Connection>,
    /// Connection ids in the order the eviction clock visits them (ids of closed ones are
    /// skipped when met, and compacted away now and then).
    eviction: std::collections::VecDeque<u64>,
    enricher: Enricher,
    clock: Clock,
    linker: Linker,
    routes: RouteNamer,
    metrics: Arc<Metrics>,
    /// Monotonic time of the newest event seen: the linker's clock, so replayed or
    /// delayed events link the same way as live ones.
    now_ns: u64,
    /// Scratch lists reused for every event instead of a fresh allocation per request.
    started: Vec<http::StartedRequest>,
    exchanges: Vec<Exchange>,
    /// Go processes seen, and those not yet handed to the capture layer to follow.
    followable_seen: std::collections::HashSet<u32>,
    new_followable: Vec<(u32, Runtime)>,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, metrics: Arc<Metrics>) -> Self {
        Pipeline {
            linker: Linker::new(cfg.link.clone()),
            routes: cfg.routes.clone(),
            cfg,
            conns: foldhash::HashMap::default(),
            eviction: std::collections::VecDeque::new(),
            enricher: Enricher::host(metrics.clone()),
            clock: Clock::sample(),
            metrics,
            now_ns: 0,
            started: Vec::new(),
            exchanges: Vec::new(),
            followable_seen: Default::default(),
            new_followable: Vec::new(),
        }
    }

    /// Replaces the default (process and container metadata only), e.g. with one that
    /// knows Kubernetes.
    pub fn set_enricher(&mut self, enricher: Enricher) {
        self.enricher = enricher;
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn handle(&mut self, event: CaptureEvent<'_>) {
        match event {
            CaptureEvent::Opened(open) => {
                self.advance(open.meta.ts_exit_ns);
                self.on_open(open)
            }
            CaptureEvent::Data(chunk) => {
                self.advance(chunk.meta.ts_exit_ns);
                self.on_data(chunk)
            }
            CaptureEvent::Closed(meta) => {
                self.advance(meta.ts_exit_ns);
                self.on_close(meta)
            }
            CaptureEvent::Go(go) => self.linker.go_hand_off(go.tgid, go.hand_off),
        }
        self.metrics
            .connections_active
            .store(self.conns.len() as u64, Ordering::Relaxed);
    }

    fn advance(&mut self, ts_ns: u64) {
        self.now_ns = self.now_ns.max(ts_ns);
    }

    /// Spans whose trace is decided. `now_ns` (monotonic) lets spans waiting for a peer
    /// time out even when no events arrive.
    pub fn take_spans(&mut self, now_ns: u64) -> Vec<SpanRecord> {
        self.advance(now_ns);
        let spans = self.linker.poll(self.now_ns, false);
        self.publish_link_stats();
        // Spans of pods whose metadata has not arrived wait there (bounded).
        self.enricher.settle(spans)
    }

    /// Everything still held, decided now (shutdown).
    pub fn flush(&mut self) -> Vec<SpanRecord> {
        let spans = self.linker.poll(self.now_ns, true);
        self.publish_link_stats();
        self.enricher.flush(spans)
    }

    fn publish_link_stats(&self) {
        let s = self.linker.stats();
        let m = &self.metrics;
        m.links_by_peer.store(s.by_peer, Ordering::Relaxed);
        m.links_by_remote_peer
            .store(s.by_remote_peer, Ordering::Relaxed);
        m.links_by_header.store(s.by_header, Ordering::Relaxed);
        m.links_by_thread.store(s.by_thread, Ordering::Relaxed);
        m.links_by_goroutine
            .store(s.by_goroutine, Ordering::Relaxed);
        m.links_by_task.store(s.by_task, Ordering::Relaxed);
        for (to, n) in m.link_abstained.iter().zip(s.abstained) {
            to.store(n, Ordering::Relaxed);
        }
        m.trace_roots.store(s.roots, Ordering::Relaxed);
        m.link_orphans.store(s.orphans, Ordering::Relaxed);
        m.link_evicted.store(s.evicted, Ordering::Relaxed);
        m.spans_waiting.store(s.waiting, Ordering::Relaxed);
        m.spans_excluded.store(s.excluded, Ordering::Relaxed);
    }

    /// Go and CPython processes whose first connection was just seen: the capture layer
    /// follows their goroutines or asyncio tasks from now on.
    pub fn take_new_followable(&mut self) -> Vec<(u32, Runtime)> {
        std::mem::take(&mut self.new_followable)
    }

    /// Another agent asks about CLIENT requests written on this node.
    pub fn answer(&mut self, keys: &[PeerKey]) -> Vec<Answer> {
        keys.iter()
            .map(|&k| self.linker.answer(k, self.now_ns))
            .collect()
    }

    /// Callers to look up on other nodes now.
    pub fn due_lookups(&mut self, now_ns: u64) -> Vec<PeerKey> {
        self.advance(now_ns);
        self.linker.due_lookups(self.now_ns)
    }

    /// Another node's agent traced the caller of a waiting SERVER request.
    pub fn remote_found(&mut self, key: PeerKey, ctx: context::SpanContext) {
        self.linker.remote_found(key, ctx);
    }

    pub fn active_connections(&self) -> usize {
        self.conns.len()
    }

    /// Periodic housekeeping: forget processes that exited, follow the wall clock.
    pub fn tick(&mut self) {
        self.enricher.prune();
        match self.clock.resync() {
            Adjustment::Stepped { by_ns } => tracing::warn!(
                "the wall clock moved by {} ms: span times jump with it",
                by_ns / 1_000_000
            ),
            Adjustment::Slewed { error_ns, .. } if error_ns.abs() > 1_000_000 => tracing::info!(
                "the wall clock moved by {} ms: slewing span times towards it",
                error_ns / 1_000_000
            ),
            Adjustment::Slewed { .. } => {}
        }
        self.close_connections_of_exited();
        self.metrics
            .connections_active
            .store(self.conns.len() as u64, Ordering::Relaxed);
        // A table never shrinks by itself: give back what a burst of connections took.
        if self.conns.capacity() > 4 * self.conns.len().max(1024) {
            self.conns.shrink_to_fit();
        }
    }

    fn on_open(&mut self, open: ConnOpened) {
        Metrics::inc(&self.metrics.connections_opened);
        if let Some(stale) = self.conns.remove(&open.meta.conn_id) {
            // A reused id means the kernel lost the close; the old state is stale.
            drop(stale);
            self.linker
                .connection_closed(open.meta.conn_id, self.now_ns);
        }
        if self.conns.len() >= self.cfg.max_connections.max(1) {
            self.evict_oldest();
        }
        // Out of scope (Kubernetes mode: not a pod, an excluded namespace, the agent's pod).
        let Some(resource) =
            self.enricher
                .resource(open.meta.tgid, open.meta.cgroup_id, &open.comm)
        else {
            return;
        };
        let runtime = self.enricher.runtime(open.meta.tgid);
        if matches!(runtime, Runtime::Go | Runtime::Python)
            && self.followable_seen.insert(open.meta.tgid)
        {
            // A process not seen before (or a reused pid): its task ids start afresh.
            self.linker.forget_process(open.meta.tgid);
            self.new_followable.push((open.meta.tgid, runtime));
        }
        let conn = Connection {
            meta: ConnMeta::new(open.role, open.local, open.peer),
            tgid: open.meta.tgid,
            runtime,
            resource,
            http: None,
            referenced: false,
            parse_errors: 0,
            desynchronised: 0,
            gaps: 0,
        };
        self.conns.insert(open.meta.conn_id, conn);
        self.eviction.push_back(open.meta.conn_id);
        if self.eviction.len() > 2 * self.conns.len() + 1024 {
            let conns = &self.conns;
            self.eviction.retain(|id| conns.contains_key(id));
        }
    }

    /// Makes room for a connection when the table is full: the clock (second-chance)
    /// approximation of least recently used, amortised O(1) where a scan for the oldest
    /// activity cost a pass over the whole table per new connection under a flood.
    fn evict_oldest(&mut self) {
        while let Some(id) = self.eviction.pop_front() {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue; // closed meanwhile
            };
            if std::mem::take(&mut conn.referenced) {
                self.eviction.push_back(id);
                continue;
            }
            self.conns.remove(&id);
            self.linker.connection_closed(id, self.now_ns);
            Metrics::inc(&self.metrics.connections_evicted);
            return;
        }
    }

    fn on_data(&mut self, chunk: DataChunk<'_>) {
        Metrics::add(&self.metrics.event_bytes, chunk.payload.len() as u64);
        let id = chunk.meta.conn_id;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.referenced = true;
        let stream = match (conn.meta.role(), chunk.direction) {
            (Role::Server, Direction::Ingress) | (Role::Client, Direction::Egress) => {
                Stream::Request
            }
            (Role::Server, Direction::Egress) | (Role::Client, Direction::Ingress) => {
                Stream::Response
            }
            (Role::Unknown, _) => return,
        };
        let (kind, local, peer, runtime) = (
            conn.kind(),
            conn.meta.local(),
            conn.meta.peer(),
            conn.runtime,
        );
        let http = conn
            .http
            .get_or_insert_with(|| Protocol::for_first_bytes(stream, chunk.payload, &self.cfg));
        // An asyncio task answering: the requests it wrote are this request's children.
        // Not on a multiplexed connection: HTTP/2 answers its streams in any order, and one
        // task may write frames of several.
        if stream == Stream::Response
            && !http.multiplexed()
            && conn.meta.role() == Role::Server
            && conn.runtime == Runtime::Python
            && let Some(task) = chunk.goid
        {
            self.linker.task_responded(chunk.meta.tgid, task, id);
        }
        if chunk.gap_before {
            // Counted with the HTTP layer's own gaps (truncated heads too) in `collect`.
            http.on_gap(stream);
        }
        let http_chunk = Chunk {
            bytes: chunk.payload,
            syscall_len: chunk.syscall_len as usize,
            ts_enter_ns: chunk.meta.ts_enter_ns,
            ts_exit_ns: chunk.meta.ts_exit_ns,
            tcp_seq: chunk.tcp_seq,
            opposite_seq: chunk.opposite_seq,
        };
        http.on_bytes(stream, http_chunk);
        http.drain_started_into(&mut self.started);
        for started in self.started.drain(..) {
            // This agent's own exports (to a traced collector, or another agent's peer
            // port) are never announced: a thread receiving them is not serving a request
            // its outgoing calls could belong to.
            let head = http.request_head(started.seq);
            if head.is_some_and(is_own_export) {
                continue;
            }
            let excluded = head.and_then(|head| self.cfg.exclude.check(head));
            if let Some(rule) = excluded {
                Metrics::inc(&self.metrics.requests_excluded[rule as usize]);
            }
            let request = StartedRequest {
                conn_id: id,
                seq: started.seq,
                peer_seq: http.peer_position(&started),
                kind,
                tgid: chunk.meta.tgid,
                tid: chunk.meta.tid,
                local,
                peer,
                context: context::extract(&started.context_headers),
                runtime,
                goid: chunk.goid,
                excluded: excluded.is_some(),
                multiplexed: http.multiplexed(),
            };
            self.linker.request_started(request, self.now_ns);
        }
        self.collect(id);
        if let Some(http) = self.conns.get(&id).and_then(|c| c.http.as_ref())
            && http.is_dead()
        {
            if let Protocol::Http2(h) = http
                && let Some(why) = h.undecodable()
            {
                Metrics::inc(&self.metrics.http2_undecodable[why as usize]);
            }
            self.conns.remove(&id);
            self.linker.connection_closed(id, self.now_ns);
        }
    }

    fn on_close(&mut self, meta: Meta) {
        self.close(meta.conn_id, meta.ts_exit_ns);
    }

    fn close(&mut self, conn_id: u64, ts_ns: u64) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if let Some(http) = conn.http.as_mut() {
            http.on_close(ts_ns);
            self.collect(conn_id);
        }
        self.conns.remove(&conn_id);
        self.linker.connection_closed(conn_id, self.now_ns);
    }

    /// A process that exits closes its descriptors without a close syscall: end its
    /// connections as closed now, or they would stay until the table overflows.
    fn close_connections_of_exited(&mut self) {
        let mut alive: HashMap<u32, bool> = HashMap::new();
        let enricher = &self.enricher;
        let gone: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !*alive
                    .entry(c.tgid)
                    .or_insert_with(|| enricher.process_alive(c.tgid))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            Metrics::inc(&self.metrics.connections_of_exited);
            self.close(id, self.now_ns);
        }
        let exited: Vec<u32> = self
            .followable_seen
            .iter()
            .copied()
            .filter(|&tgid| !self.enricher.process_alive(tgid))
            .collect();
        for tgid in exited {
            self.followable_seen.remove(&tgid);
            self.linker.forget_process(tgid);
        }
    }

    /// Hands the connection's completed exchanges to the linker as spans.
    fn collect(&mut self, conn_id: u64) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let Some(http) = conn.http.as_mut() else {
            return;
        };
        // The HTTP layer counts per connection; publish what is new since the last look.
        let stats = http.stats();
        Metrics::add(
            &self.metrics.parse_errors,
            stats.parse_errors.saturating_sub(conn.parse_errors),
        );
        Metrics::add(
            &self.metrics.stream_gaps,
            stats.gaps.saturating_sub(conn.gaps),
        );
        Metrics::add(
            &self.metrics.desynchronised,
            stats.desynchronised.saturating_sub(conn.desynchronised),
        );
        (conn.parse_errors, conn.gaps, conn.desynchronised) =
            (stats.parse_errors, stats.gaps, stats.desynchronised);
        http.drain_exchanges_into(&mut self.exchanges);
        // Counted once per batch: an atomic add per span is a measurable share of the path.
        let (mut exchanges, mut created, mut capped) = (0, 0, 0);
        for exchange in self.exchanges.drain(..) {
            exchanges += 1;
            let span_id = self.linker.span_id_of(conn_id, exchange.seq);
            if is_own_export(&exchange.request) {
                Metrics::inc(&self.metrics.own_exports_skipped);
                if span_id.is_some() {
                    self.linker.forget(conn_id, exchange.seq);
                }
                continue;
            }
            let mut span = build_span(
                &exchange,
                &conn.meta,
                conn.resource.clone(),
                &self.clock,
                span_id.unwrap_or_default(),
            );
            // A gRPC span is named by its method already: routes are HTTP's.
            if grpc_method(&exchange.request).is_none()
                && !self
                    .routes
                    .apply(&mut span, split_target(&exchange.request.target).0)
            {
                capped += 1;
            }
            created += 1;
            self.linker
                .span_finished(conn_id, exchange.seq, span, self.now_ns);
        }
        Metrics::add(&self.metrics.exchanges, exchanges);
        Metrics::add(&self.metrics.spans_created, created);
        Metrics::add(&self.metrics.route_names_capped, capped);
    }
}

/// A request this agent sent: an OTLP export or an exchange with another agent (OTLP/gRPC
/// carries tonic's name after the agent's).
fn is_own_export(head: &RequestHead) -> bool {
    head.header("user-agent")
        .is_some_and(|ua| ua.starts_with(crate::EXPORTER_USER_AGENT))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn meta(tgid: u32, conn_id: u64, ts: u64) -> Meta {
        Meta {
            tgid,
            tid: tgid,
            fd: 3,
            conn_id,
            ts_enter_ns: ts,
            ts_exit_ns: ts + 1,
            cgroup_id: 0,
        }
    }

    fn open(tgid: u32, conn_id: u64, role: Role) -> CaptureEvent<'static> {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        CaptureEvent::Opened(ConnOpened {
            meta: meta(tgid, conn_id, 1),
            role,
            local: Some(if role == Role::Server { a } else { b }),
            peer: Some(if role == Role::Server { b } else { a }),
            comm: "test".into(),
        })
    }

    fn data(tgid: u32, conn_id: u64, direction: Direction, payload: &[u8]) -> CaptureEvent<'_> {
        CaptureEvent::Data(DataChunk {
            meta: meta(tgid, conn_id, 10),
            direction,
            syscall_len: payload.len() as u32,
            truncated: false,
            gap_before: false,
            goid: None,
            tcp_seq: None,
            opposite_seq: None,
            payload,
        })
    }

    /// A full table evicts a connection without data since the clock last passed it: the
    /// busy one is spared, the idle ones go first, oldest first.
    #[test]
    fn a_full_table_evicts_idle_connections_before_busy_ones() {
        let metrics = Arc::new(Metrics::default());
        let mut p = Pipeline::new(
            PipelineConfig {
                max_connections: 3,
                ..Default::default()
            },
            metrics.clone(),
        );
        let me = std::process::id();
        for id in 1..=3 {
            p.handle(open(me, id, Role::Server));
        }
        p.handle(data(me, 1, Direction::Ingress, b"GET / HTTP/1.1\r\n"));
        p.handle(open(me, 4, Role::Server));
        assert!(p.conns.contains_key(&1), "the busy one is spared");
        assert!(!p.conns.contains_key(&2), "the oldest idle one goes");
        p.handle(open(me, 5, Role::Server));
        assert!(!p.conns.contains_key(&3));
        p.handle(open(me, 6, Role::Server));
        assert!(!p.conns.contains_key(&1), "spared once, then idle");
        assert_eq!(p.conns.len(), 3);
        assert_eq!(metrics.connections_evicted.load(Ordering::Relaxed), 3);
        // Closed connections leave the clock's queue too (now and then).
        for id in 7..3000 {
            p.handle(open(me, id, Role::Server));
        }
        assert!(p.eviction.len() <= 2 * p.conns.len() + 1024);
    }

    /// Idle connections hold no HTTP state; an oversized head is counted as a parse error;
    /// a process that exited without closing has its connections ended by `tick`.
    #[test]
    fn idle_connections_parse_errors_and_exited_processes() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let metrics = Arc::new(Metrics::default());
        let mut p = Pipeline::new(
            PipelineConfig {
                max_connections: 16,
                ..Default::default()
            },
            metrics.clone(),
        );
        p.handle(open(me, 1, Role::Server));
        p.handle(open(dead, 2, Role::Client));
        p.handle(open(me, 3, Role::Server));
        assert!(p.conns.values().all(|c| c.http.is_none()));

        p.handle(data(
            dead,
            2,
            Direction::Egress,
            b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
        ));
        let mut big = b"GET /big HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(HttpConfig::default().max_header_bytes + 100, b'a');
        p.handle(data(me, 3, Direction::Ingress, &big));
        assert_eq!(metrics.parse_errors.load(Ordering::Relaxed), 1);
        assert!(p.conns[&1].http.is_none(), "still idle");

        p.tick();
        assert_eq!(metrics.connections_of_exited.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.connections_active.load(Ordering::Relaxed), 2);
        assert!(!p.conns.contains_key(&2));
        // Its unanswered request became a span (an error: closed before the response).
        assert_eq!(metrics.spans_created.load(Ordering::Relaxed), 1);
    }
}
