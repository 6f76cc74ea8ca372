//! The default exporter when no collector is configured: prints each finished trace as a
//! tree.
//!
//! Spans of one trace arrive in any order and over several batches (a child often ends,
//! and so arrives, before its parent). They are held per trace until the trace has been
//! quiet for a while, then printed. Printing runs on its own thread so a slow terminal or
//! pipe can never stall the async runtime; `export` waits (until its deadline) for room
//! among the few batches the thread may hold, so a stuck terminal backs up into the batch
//! span processor's bounded queue, which drops and counts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::config::BatchConfig;
use super::exporter::{Delivered, ExportDeadline, ExportResult, GaveUp, SpanExporter};
use crate::spans::{AttrValue, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId, hex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// A trace is printed once no span arrived for it for this long.
    pub quiet_period: Duration,
    /// Traces held at once; beyond it the least recently active one is printed early.
    pub max_traces: usize,
    /// Spans held across all traces (bounds memory when one trace is huge).
    pub max_spans: usize,
    /// Batches handed to the printing thread and not yet taken in.
    pub max_batches: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            quiet_period: Duration::from_millis(500),
            max_traces: 10_000,
            max_spans: 100_000,
            max_batches: 2,
        }
    }
}

impl ConsoleConfig {
    /// The batch span processor in front of the console: batches a tenth of a second
    /// apart (a trace is printed only after its quiet period anyway), one export at a time.
    pub fn batch(&self) -> BatchConfig {
        BatchConfig {
            schedule_delay: Duration::from_millis(100),
            max_queue_size: 4096,
            max_export_batch_size: 512,
            export_timeout: Duration::from_secs(5),
            max_concurrent_exports: 1,
        }
    }
}

/// Groups spans into traces and decides when each is complete enough to print.
/// Pure state machine: time is passed in, so tests drive it with explicit instants.
#[derive(Debug)]
pub struct TraceAssembler {
    quiet_period: Duration,
    max_traces: usize,
    max_spans: usize,
    traces: HashMap<TraceId, Pending>,
    /// Traces by last activity (the sequence number breaks ties), oldest first: both the
    /// quiet-period flush and eviction take from the front.
    by_activity: BTreeMap<(Instant, u64), TraceId>,
    seq: u64,
    total_spans: usize,
}

#[derive(Debug)]
struct Pending {
    spans: Vec<SpanRecord>,
    key: (Instant, u64),
}

impl TraceAssembler {
    pub fn new(cfg: &ConsoleConfig) -> Self {
        TraceAssembler {
            quiet_period: cfg.quiet_period,
            max_traces: cfg.max_traces.max(1),
            max_spans: cfg.max_spans.max(1),
            traces: HashMap::new(),
            by_activity: BTreeMap::new(),
            seq: 0,
            total_spans: 0,
        }
    }

    /// Adds a span; returns the traces the bounds forced out (to print now, incomplete).
    pub fn add(&mut self, span: SpanRecord, now: Instant) -> Vec<Vec<SpanRecord>> {
        self.seq += 1;
        let key = (now, self.seq);
        let trace_id = span.trace_id;
        match self.traces.get_mut(&trace_id) {
            Some(p) => {
                self.by_activity.remove(&p.key);
                p.key = key;
                p.spans.push(span);
            }
            None => {
                self.traces.insert(
                    trace_id,
                    Pending {
                        spans: vec![span],
                        key,
                    },
                );
            }
        }
        self.by_activity.insert(key, trace_id);
        self.total_spans += 1;

        let mut evicted = Vec::new();
        while self.traces.len() > self.max_traces || self.total_spans > self.max_spans {
            match self.pop_oldest() {
                Some(t) => evicted.push(t),
                None => break,
            }
        }
        evicted
    }

    /// Removes and returns every trace that has been quiet for the quiet period, oldest
    /// first.
    pub fn take_quiet(&mut self, now: Instant) -> Vec<Vec<SpanRecord>> {
        let mut out = Vec::new();
        while let Some((&(last, _), _)) = self.by_activity.first_key_value() {
            if now.saturating_duration_since(last) < self.quiet_period {
                break;
            }
            out.extend(self.pop_oldest());
        }
        out
    }

    /// Removes and returns everything, oldest first (shutdown).
    pub fn take_all(&mut self) -> Vec<Vec<SpanRecord>> {
        std::iter::from_fn(|| self.pop_oldest()).collect()
    }

    /// When the oldest held trace becomes quiet.
    pub fn next_due(&self) -> Option<Instant> {
        self.by_activity
            .first_key_value()
            .map(|(&(last, _), _)| last + self.quiet_period)
    }

    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    fn pop_oldest(&mut self) -> Option<Vec<SpanRecord>> {
        let (_, trace_id) = self.by_activity.pop_first()?;
        let pending = self.traces.remove(&trace_id)?;
        self.total_spans -= pending.spans.len();
        Some(pending.spans)
    }
}

/// Renders one trace as a tree. Roots are spans without a parent or whose parent is not in
/// `spans` (an orphan, e.g. an app that dropped the trace headers); children are sorted by
/// start time.
pub fn render_trace(spans: &[SpanRecord]) -> String {
    let mut out = String::new();
    let Some(first) = spans.first() else {
        return out;
    };
    let start = spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nanos).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "trace {} ({} span{}, {})",
        hex(&first.trace_id),
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        millis(end.saturating_sub(start)),
    );

    let mut index: HashMap<SpanId, usize> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        index.entry(s.span_id).or_insert(i);
    }
    let by_start = |a: &usize, b: &usize| {
        let (a, b) = (&spans[*a], &spans[*b]);
        (a.start_unix_nanos, a.span_id).cmp(&(b.start_unix_nanos, b.span_id))
    };
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id.and_then(|p| index.get(&p)) {
            Some(&p) if p != i => children.entry(p).or_default().push(i),
            _ => roots.push(i),
        }
    }
    for list in children.values_mut() {
        list.sort_by(by_start);
    }
    roots.sort_by(by_start);

    let tree = Tree {
        spans,
        index: &index,
        children: &children,
    };
    let mut visited = HashSet::new();
    for (n, &root) in roots.iter().enumerate() {
        tree.write(&mut out, root, "", n + 1 == roots.len(), &mut visited);
    }
    // Spans in a parent cycle are reachable from no root; show them rather than lose them.
    let mut rest: Vec<usize> = (0..spans.len()).filter(|i| !visited.contains(i)).collect();
    rest.sort_by(by_start);
    for (n, &i) in rest.iter().enumerate() {
        if !visited.contains(&i) {
            tree.write(&mut out, i, "", n + 1 == rest.len(), &mut visited);
        }
    }
    out
}

struct Tree<'a> {
    spans: &'a [SpanRecord],
    index: &'a HashMap<SpanId, usize>,
    children: &'a HashMap<usize, Vec<usize>>,
}

impl Tree<'_> {
    fn write(
        &self,
        out: &mut String,
        i: usize,
        prefix: &str,
        last: bool,
        visited: &mut HashSet<usize>,
    ) {
        if !visited.insert(i) {
            return;
        }
        let span = &self.spans[i];
        let _ = writeln!(
            out,
            "{prefix}{}{}",
            if last { "└─ " } else { "├─ " },
            describe(span, self.index)
        );
        let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
        if let Some(kids) = self.children.get(&i) {
            for (n, &c) in kids.iter().enumerate() {
                self.write(out, c, &child_prefix, n + 1 == kids.len(), visited);
            }
        }
    }
}

/// One line: `service KIND name status duration key=value…`.
fn describe(span: &SpanRecord, index: &HashMap<SpanId, usize>) -> String {
    let kind = match span.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    };
    let status = match span.attr("http.response.status_code") {
        Some(v) => v.to_string(),
        None => "-".to_owned(),
    };
    let mut line = format!(
        "{} {kind} {} {status} {}",
        span.resource.service_name(),
        span.name,
        millis(span.end_unix_nanos.saturating_sub(span.start_unix_nanos)),
    );
    if let SpanStatus::Error { description } = &span.status {
        line.push_str(" ERROR");
        if !description.is_empty() {
            let _ = write!(line, " ({description})");
        }
    }
    let addr = |host: &str, port: &str| {
        let host = span.attr(host)?;
        Some(match span.attr(port) {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        })
    };
    match span.kind {
        SpanKind::Server => {
            if let Some(peer) = addr("client.address", "client.port")
                .or_else(|| addr("network.peer.address", "network.peer.port"))
            {
                let _ = write!(line, " peer={peer}");
            }
        }
        SpanKind::Client => {
            if let Some(server) = addr("server.address", "server.port") {
                let _ = write!(line, " server={server}");
            }
        }
    }
    if let Some(AttrValue::Int(pid)) = span.resource.get("process.pid") {
        let _ = write!(line, " pid={pid}");
    }
    if let Some(parent) = span.parent_span_id
        && !index.contains_key(&parent)
    {
        let _ = write!(line, " (parent {} not seen)", hex(&parent));
    }
    line
}

fn millis(nanos: u64) -> String {
    format!("{:.1}ms", nanos as f64 / 1e6)
}

type Handed = (Vec<SpanRecord>, OwnedSemaphorePermit);

/// Handle to the printing thread.
#[derive(Debug)]
pub struct ConsoleExporter {
    /// Taken (closed) at shutdown: the thread's signal to print everything and exit.
    tx: Mutex<Option<mpsc::Sender<Handed>>>,
    /// One permit per batch the thread may hold; it drops the permit once it took the
    /// batch in, so the channel above never holds more than `max_batches`.
    room: Arc<Semaphore>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

impl ConsoleExporter {
    /// Prints to stdout.
    pub fn new(cfg: ConsoleConfig) -> std::io::Result<Self> {
        Self::with_writer(cfg, Box::new(std::io::stdout()))
    }

    pub fn with_writer(cfg: ConsoleConfig, writer: Box<dyn Write + Send>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = oneshot::channel();
        let room = Arc::new(Semaphore::new(cfg.max_batches.max(1)));
        std::thread::Builder::new()
            .name("trace-console".into())
            .spawn(move || {
                print_loop(cfg, rx, writer);
                let _ = done_tx.send(());
            })?;
        Ok(ConsoleExporter {
            tx: Mutex::new(Some(tx)),
            room,
            done: Mutex::new(Some(done)),
        })
    }
}

impl SpanExporter for ConsoleExporter {
    /// Delivered once the printing thread has the batch; it prints each trace when the
    /// trace turns quiet, or at shutdown.
    async fn export(&self, batch: Vec<SpanRecord>, deadline: ExportDeadline) -> ExportResult {
        let Ok(Ok(permit)) =
            tokio::time::timeout_at(deadline.at(), self.room.clone().acquire_owned()).await
        else {
            tracing::warn!(
                spans = batch.len(),
                "console output blocked past the export deadline; dropped batch"
            );
            return Err(GaveUp);
        };
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match tx.map(|tx| tx.send((batch, permit))) {
            Some(Ok(())) => Ok(Delivered::default()),
            _ => Err(GaveUp),
        }
    }

    /// Prints every held trace, complete or not, and waits (until `deadline`) for it.
    async fn shutdown(&self, deadline: tokio::time::Instant) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(done) = done
            && tokio::time::timeout_at(deadline, done).await.is_err()
        {
            tracing::warn!("console printer did not finish by the shutdown deadline");
        }
    }
}

fn print_loop(cfg: ConsoleConfig, rx: mpsc::Receiver<Handed>, mut writer: Box<dyn Write + Send>) {
    let mut assembler = TraceAssembler::new(&cfg);
    let mut print = |traces: Vec<Vec<SpanRecord>>| {
        for t in traces {
            // A closed stdout (e.g. `| head`) must not kill the agent; the trace is lost.
            let _ = writer
                .write_all(render_trace(&t).as_bytes())
                .and_then(|()| writer.flush());
        }
    };
    loop {
        let now = Instant::now();
        // Sleep until the oldest trace turns quiet; with nothing held, just wait for spans.
        let wait = assembler
            .next_due()
            .map_or(Duration::from_secs(3600), |due| {
                due.saturating_duration_since(now)
            });
        match rx.recv_timeout(wait) {
            Ok((batch, permit)) => {
                let now = Instant::now();
                for span in batch {
                    print(assembler.add(span, now));
                }
                drop(permit);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                print(assembler.take_all());
                return;
            }
        }
        print(assembler.take_quiet(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::BatchSpanProcessor;
    use crate::metrics::Metrics;
    use crate::spans::Resource;
    use std::sync::atomic::Ordering;

    fn res(service: &str) -> Arc<Resource> {
        Arc::new(Resource {
            attributes: vec![("service.name".into(), service.into())],
        })
    }

    fn span(
        trace: u8,
        id: u8,
        parent: Option<u8>,
        service: &str,
        kind: SpanKind,
        start_ms: u64,
        dur_ms: u64,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            trace_state: String::new(),
            parent_sampled: None,
            name: format!("GET /s{id}"),
            kind,
            start_unix_nanos: start_ms * 1_000_000,
            end_unix_nanos: (start_ms + dur_ms) * 1_000_000,
            attributes: vec![("http.response.status_code", AttrValue::Int(200))],
            status: SpanStatus::Unset,
            resource: res(service),
        }
    }

    #[test]
    fn renders_a_three_service_tree_from_unordered_spans() {
        let mut client = span(1, 2, Some(1), "frontend", SpanKind::Client, 10, 30);
        client.attributes.push(("server.address", "backend".into()));
        client
            .attributes
            .push(("server.port", AttrValue::Int(8080)));
        let mut root = span(1, 1, None, "frontend", SpanKind::Server, 0, 45);
        root.attributes.push(("client.address", "10.0.0.9".into()));
        // Arrival order: deepest first, as spans end.
        let spans = vec![
            span(1, 4, Some(3), "database", SpanKind::Server, 20, 5),
            span(1, 3, Some(2), "backend", SpanKind::Server, 12, 25),
            client,
            root,
        ];
        let out = render_trace(&spans);
        let expected = "\
trace 01010101010101010101010101010101 (4 spans, 45.0ms)
└─ frontend SERVER GET /s1 200 45.0ms peer=10.0.0.9
   └─ frontend CLIENT GET /s2 200 30.0ms server=backend:8080
      └─ backend SERVER GET /s3 200 25.0ms
         └─ database SERVER GET /s4 200 5.0ms
";
        assert_eq!(out, expected);
    }

    #[test]
    fn siblings_are_sorted_by_start_and_drawn_with_branches() {
        let spans = vec![
            span(1, 1, None, "a", SpanKind::Server, 0, 100),
            span(1, 3, Some(1), "a", SpanKind::Client, 50, 10),
            span(1, 2, Some(1), "a", SpanKind::Client, 5, 10),
            span(1, 4, Some(2), "b", SpanKind::Server, 6, 8),
        ];
        let lines: Vec<String> = render_trace(&spans).lines().map(str::to_owned).collect();
        assert_eq!(lines[1], "└─ a SERVER GET /s1 200 100.0ms");
        assert_eq!(lines[2], "   ├─ a CLIENT GET /s2 200 10.0ms");
        assert_eq!(lines[3], "   │  └─ b SERVER GET /s4 200 8.0ms");
        assert_eq!(lines[4], "   └─ a CLIENT GET /s3 200 10.0ms");
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn orphans_become_roots_and_errors_are_shown() {
        let mut orphan = span(1, 5, Some(9), "backend", SpanKind::Server, 30, 2);
        orphan.status = SpanStatus::Error {
            description: "HTTP 503".into(),
        };
        orphan.attributes = vec![("http.response.status_code", AttrValue::Int(503))];
        let spans = vec![
            orphan,
            span(1, 1, None, "frontend", SpanKind::Server, 0, 10),
        ];
        let out = render_trace(&spans);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "├─ frontend SERVER GET /s1 200 10.0ms");
        assert_eq!(
            lines[2],
            "└─ backend SERVER GET /s5 503 2.0ms ERROR (HTTP 503) (parent 0909090909090909 not seen)"
        );
    }

    #[test]
    fn parent_cycles_are_still_printed_once() {
        let spans = vec![
            span(1, 1, Some(2), "a", SpanKind::Server, 0, 1),
            span(1, 2, Some(1), "a", SpanKind::Server, 1, 1),
        ];
        let out = render_trace(&spans);
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(out.contains("GET /s1") && out.contains("GET /s2"));
    }

    #[test]
    fn empty_trace_renders_nothing() {
        assert_eq!(render_trace(&[]), "");
    }

    fn cfg(quiet_ms: u64, max_traces: usize, max_spans: usize) -> ConsoleConfig {
        ConsoleConfig {
            quiet_period: Duration::from_millis(quiet_ms),
            max_traces,
            max_spans,
            max_batches: 2,
        }
    }

    fn ids(traces: &[Vec<SpanRecord>]) -> Vec<(u8, usize)> {
        traces.iter().map(|t| (t[0].trace_id[0], t.len())).collect()
    }

    #[test]
    fn trace_is_released_only_after_quiet_period_since_last_span() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = TraceAssembler::new(&cfg(500, 100, 1000));
        assert!(
            a.add(span(1, 2, Some(1), "a", SpanKind::Client, 0, 1), ms(0))
                .is_empty()
        );
        assert_eq!(a.next_due(), Some(ms(500)));
        assert!(
            a.add(span(1, 1, None, "a", SpanKind::Server, 0, 1), ms(400))
                .is_empty()
        );
        // The second span restarted the quiet period.
        assert!(a.take_quiet(ms(600)).is_empty());
        assert_eq!(a.next_due(), Some(ms(900)));
        assert_eq!(ids(&a.take_quiet(ms(900))), vec![(1, 2)]);
        assert!(a.is_empty());
        assert_eq!(a.next_due(), None);
    }

    #[test]
    fn quiet_traces_are_released_oldest_first_and_busy_ones_kept() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = TraceAssembler::new(&cfg(100, 100, 1000));
        a.add(span(2, 1, None, "a", SpanKind::Server, 0, 1), ms(0));
        a.add(span(1, 1, None, "a", SpanKind::Server, 0, 1), ms(10));
        a.add(span(3, 1, None, "a", SpanKind::Server, 0, 1), ms(150));
        assert_eq!(ids(&a.take_quiet(ms(200))), vec![(2, 1), (1, 1)]);
        assert_eq!(a.len(), 1);
        assert_eq!(ids(&a.take_all()), vec![(3, 1)]);
    }

    #[test]
    fn bounds_evict_the_least_recently_active_trace() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = TraceAssembler::new(&cfg(1000, 2, 1000));
        a.add(span(1, 1, None, "a", SpanKind::Server, 0, 1), ms(0));
        a.add(span(2, 1, None, "a", SpanKind::Server, 0, 1), ms(1));
        // Trace 1 becomes the most recently active.
        a.add(span(1, 2, Some(1), "a", SpanKind::Client, 0, 1), ms(2));
        let evicted = a.add(span(3, 1, None, "a", SpanKind::Server, 0, 1), ms(3));
        assert_eq!(ids(&evicted), vec![(2, 1)]);
        assert_eq!(a.len(), 2);

        // The span bound applies across traces.
        let mut a = TraceAssembler::new(&cfg(1000, 100, 3));
        for i in 0..3 {
            assert!(
                a.add(span(1, i, None, "a", SpanKind::Server, 0, 1), ms(0))
                    .is_empty()
            );
        }
        let evicted = a.add(span(2, 1, None, "a", SpanKind::Server, 0, 1), ms(1));
        assert_eq!(ids(&evicted), vec![(1, 3)]);
        assert_eq!(ids(&a.take_all()), vec![(2, 1)]);
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A writer that reports when printing starts and then blocks until released.
    struct Stuck {
        entered: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    }
    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.release.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The batch span processor the agent puts in front of the console, with small
    /// batches so a test can fill every stage.
    fn processor(
        cfg: ConsoleConfig,
        writer: Box<dyn Write + Send>,
        metrics: &Arc<Metrics>,
    ) -> BatchSpanProcessor<ConsoleExporter> {
        let batch = BatchConfig {
            schedule_delay: Duration::from_millis(1),
            max_queue_size: 16,
            max_export_batch_size: 4,
            ..cfg.batch()
        };
        let exporter = ConsoleExporter::with_writer(cfg, writer).unwrap();
        BatchSpanProcessor::start(exporter, batch, metrics.clone())
    }

    fn counted(metrics: &Metrics) -> [u64; 3] {
        [
            metrics.spans_exported.load(Ordering::Relaxed),
            metrics.spans_dropped_queue_full.load(Ordering::Relaxed),
            metrics.spans_dropped_export_failed.load(Ordering::Relaxed),
        ]
    }

    #[tokio::test]
    async fn a_stuck_printer_backs_up_into_counted_drops_without_blocking() {
        let metrics = Arc::new(Metrics::default());
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let stuck = Stuck {
            entered: entered_tx,
            release: release_rx,
        };
        // Quiet period 0: the first span is printed at once and the printer blocks in write.
        let p = processor(cfg(0, 100, 1000), Box::new(stuck), &metrics);
        p.submit(span(1, 1, None, "a", SpanKind::Server, 0, 1));
        tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        for i in 0..100 {
            p.submit(span(2, i, None, "a", SpanKind::Server, 0, 1));
            tokio::task::yield_now().await;
        }
        // Held: the queue (16), two batches of 4 in the printer's channel (its room is
        // 2), one waiting for room there, one waiting for the export slot. Everything
        // else was dropped at once, never more than what the queue could not take.
        let dropped = metrics.spans_dropped_queue_full.load(Ordering::Relaxed);
        assert!(
            (100 - 16 - 4 * 4..=100 - 16).contains(&dropped),
            "{dropped}"
        );
        drop(release);
        p.shutdown(tokio::time::Instant::now() + Duration::from_secs(10))
            .await;
        assert_eq!(counted(&metrics), [101 - dropped, dropped, 0]);
        assert_eq!(metrics.export_queue_depth.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn held_traces_are_printed_at_shutdown() {
        let metrics = Arc::new(Metrics::default());
        let capture = Capture::default();
        // A quiet period far beyond the test: only shutdown can print the trace.
        let p = processor(
            cfg(3_600_000, 100, 1000),
            Box::new(capture.clone()),
            &metrics,
        );
        p.submit_all(vec![
            span(1, 2, Some(1), "a", SpanKind::Client, 1, 1),
            span(1, 1, None, "a", SpanKind::Server, 0, 5),
        ]);
        p.shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
            .await;
        let out = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            out,
            render_trace(&[
                span(1, 2, Some(1), "a", SpanKind::Client, 1, 1),
                span(1, 1, None, "a", SpanKind::Server, 0, 5),
            ])
        );
        assert_eq!(counted(&metrics), [2, 0, 0]);
        assert_eq!(metrics.export_queue_depth.load(Ordering::Relaxed), 0);
    }
}
