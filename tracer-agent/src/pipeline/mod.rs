//! The connection table: routes decoded kernel events to each connection's HTTP state,
//! turns completed exchanges into spans. Pure apart from the /proc reads of the resource
//! cache; driven by tests with synthetic events.

use std::collections::HashMap;
use std::sync::Arc;

use tracer_common::{Direction, Role};

use crate::capture::events::{CaptureEvent, ConnOpened, DataChunk, Meta};
use crate::http::{Chunk, HttpConfig, HttpConnection, Stream};
use crate::metrics::Metrics;
use crate::spans::builder::{ConnMeta, IdGenerator, build_span};
use crate::spans::clock::Clock;
use crate::spans::resource::ResourceCache;
use crate::spans::{Resource, SpanRecord};

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub http: HttpConfig,
    /// Connections tracked at once; the least recently active is evicted beyond it.
    pub max_connections: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            http: HttpConfig::default(),
            max_connections: 65536,
        }
    }
}

struct Connection {
    meta: ConnMeta,
    resource: Arc<Resource>,
    http: HttpConnection,
    last_activity_ns: u64,
}

pub struct Pipeline {
    cfg: PipelineConfig,
    conns: HashMap<u64, Connection>,
    resources: ResourceCache,
    clock: Clock,
    ids: IdGenerator,
    metrics: Arc<Metrics>,
    finished: Vec<SpanRecord>,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, metrics: Arc<Metrics>) -> Self {
        Pipeline {
            cfg,
            conns: HashMap::new(),
            resources: ResourceCache::new(16384),
            clock: Clock::sample(),
            ids: IdGenerator::default(),
            metrics,
            finished: Vec::new(),
        }
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn handle(&mut self, event: CaptureEvent<'_>) {
        match event {
            CaptureEvent::Opened(open) => self.on_open(open),
            CaptureEvent::Data(chunk) => self.on_data(chunk),
            CaptureEvent::Closed(meta) => self.on_close(meta),
        }
        self.metrics.connections_active.store(
            self.conns.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Spans completed since the last call.
    pub fn take_spans(&mut self) -> Vec<SpanRecord> {
        std::mem::take(&mut self.finished)
    }

    pub fn active_connections(&self) -> usize {
        self.conns.len()
    }

    /// Periodic housekeeping: forget processes that exited.
    pub fn tick(&mut self) {
        self.resources.prune();
        self.clock = Clock::sample();
    }

    fn on_open(&mut self, open: ConnOpened) {
        Metrics::inc(&self.metrics.connections_opened);
        if self.conns.len() >= self.cfg.max_connections {
            self.evict_oldest();
        }
        let resource = self.resources.get(open.meta.tgid, &open.comm);
        let conn = Connection {
            meta: ConnMeta {
                role: open.role,
                local: open.local,
                peer: open.peer,
            },
            resource,
            http: HttpConnection::new(&self.cfg.http),
            last_activity_ns: open.meta.ts_exit_ns,
        };
        // A reused id means the kernel lost the close; the old state is stale.
        self.conns.insert(open.meta.conn_id, conn);
    }

    fn evict_oldest(&mut self) {
        if let Some((&id, _)) = self.conns.iter().min_by_key(|(_, c)| c.last_activity_ns) {
            self.conns.remove(&id);
            Metrics::inc(&self.metrics.connections_evicted);
        }
    }

    fn on_data(&mut self, chunk: DataChunk<'_>) {
        Metrics::add(&self.metrics.event_bytes, chunk.payload.len() as u64);
        let Some(conn) = self.conns.get_mut(&chunk.meta.conn_id) else {
            return;
        };
        conn.last_activity_ns = chunk.meta.ts_exit_ns;
        let stream = match (conn.meta.role, chunk.direction) {
            (Role::Server, Direction::Ingress) | (Role::Client, Direction::Egress) => {
                Stream::Request
            }
            (Role::Server, Direction::Egress) | (Role::Client, Direction::Ingress) => {
                Stream::Response
            }
            (Role::Unknown, _) => return,
        };
        if chunk.gap_before {
            Metrics::inc(&self.metrics.stream_gaps);
            conn.http.on_gap(stream);
        }
        let http_chunk = Chunk {
            bytes: chunk.payload,
            syscall_len: chunk.syscall_len as usize,
            ts_enter_ns: chunk.meta.ts_enter_ns,
            ts_exit_ns: chunk.meta.ts_exit_ns,
        };
        match stream {
            Stream::Request => conn.http.on_request_bytes(http_chunk),
            Stream::Response => conn.http.on_response_bytes(http_chunk),
        }
        let id = chunk.meta.conn_id;
        self.collect(id);
        if self.conns.get(&id).is_some_and(|c| c.http.is_not_http()) {
            self.conns.remove(&id);
        }
    }

    fn on_close(&mut self, meta: Meta) {
        let Some(conn) = self.conns.get_mut(&meta.conn_id) else {
            return;
        };
        conn.http.on_close(meta.ts_exit_ns);
        self.collect(meta.conn_id);
        self.conns.remove(&meta.conn_id);
    }

    /// Moves the connection's completed exchanges into spans.
    fn collect(&mut self, conn_id: u64) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        for exchange in conn.http.take_exchanges() {
            Metrics::inc(&self.metrics.exchanges);
            if exchange
                .request
                .header("user-agent")
                .is_some_and(|ua| ua.starts_with(crate::EXPORTER_USER_AGENT))
            {
                Metrics::inc(&self.metrics.own_exports_skipped);
                continue;
            }
            let span = build_span(
                &exchange,
                &conn.meta,
                conn.resource.clone(),
                &self.clock,
                &mut self.ids,
            );
            Metrics::inc(&self.metrics.spans_created);
            self.finished.push(span);
        }
    }
}
