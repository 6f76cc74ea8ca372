//! Pairs the messages of a connection's two streams into exchanges (FIFO, RFC 9112 §9.3.2)
//! and applies the gap rules described in the module docs of [`super`].

use std::collections::VecDeque;

use super::message::{
    Framing, Head, Headers, RequestHead, ResponseHead, request_framing, response_framing,
};
use super::stream::{CloseOutcome, Cut, Event, Input, LostCause, StreamParser};
use super::{
    Chunk, ConnStats, Exchange, ExchangeError, HttpConfig, MessageTiming, StartedRequest, Stream,
    is_trace_context_header,
};

/// A request on its way to becoming an [`Exchange`].
#[derive(Debug)]
struct Entry {
    id: u64,
    request: RequestHead,
    request_body_bytes: u64,
    request_timing: MessageTiming,
    request_done: bool,
    /// A final response head was assigned (or will never be).
    answered: bool,
    /// The response side is final: response complete, or an error decided.
    settled: bool,
    response: Option<ResponseHead>,
    response_body_bytes: u64,
    response_timing: Option<MessageTiming>,
    error: Option<ExchangeError>,
    request_incomplete: bool,
    response_incomplete: bool,
    closed_at_ns: Option<u64>,
    /// Stands for a request that failed to parse: it absorbs the server's answer (usually
    /// a 400) so later responses stay in order, and is never emitted.
    phantom: bool,
}

impl Entry {
    fn new(id: u64, request: RequestHead, timing: MessageTiming, pairable: bool) -> Self {
        Entry {
            id,
            request,
            request_body_bytes: 0,
            request_timing: timing,
            request_done: false,
            answered: !pairable,
            settled: !pairable,
            response: None,
            response_body_bytes: 0,
            response_timing: None,
            error: (!pairable).then_some(ExchangeError::Gap),
            request_incomplete: false,
            response_incomplete: false,
            closed_at_ns: None,
            phantom: false,
        }
    }

    fn into_exchange(self) -> Exchange {
        Exchange {
            seq: self.id,
            request: self.request,
            request_body_bytes: self.request_body_bytes,
            request_timing: self.request_timing,
            response: self.response,
            response_body_bytes: self.response_body_bytes,
            response_timing: self.response_timing,
            error: self.error,
            request_incomplete: self.request_incomplete,
            response_incomplete: self.response_incomplete,
            closed_at_ns: self.closed_at_ns,
        }
    }

    /// Settles the response side with an error unless it is settled already.
    fn fail(&mut self, error: ExchangeError) {
        if !self.settled {
            self.answered = true;
            self.settled = true;
            self.error = Some(error);
        }
    }
}

/// The response being received.
#[derive(Debug)]
struct CurrentResponse {
    head: ResponseHead,
    /// Entry it answers; `None` when it is discarded.
    target: Option<u64>,
    /// 1xx interim response: skipped, never paired.
    interim: bool,
}

/// HTTP/1 state of one TCP connection. Pure: bytes and timestamps in, exchanges out.
#[derive(Debug)]
pub struct HttpConnection {
    req: StreamParser,
    resp: StreamParser,
    max_pending: usize,
    pending: VecDeque<Entry>,
    ready: Vec<Exchange>,
    /// Request heads parsed since the last `take_started`.
    started: Vec<StartedRequest>,
    next_id: u64,
    /// Entry whose request body is being received.
    cur_req: Option<u64>,
    cur_resp: Option<CurrentResponse>,
    /// Responses still to come for requests dropped on overflow; discarded when they do.
    skip_responses: u64,
    /// Pairing can no longer be trusted: later requests get no response.
    desynced: bool,
    /// A request was sent before the previous response completed.
    pipelining_seen: bool,
    /// Entries with a smaller id were parsed before a request-stream gap.
    gap_barrier: Option<u64>,
    /// Request whose response decides whether the connection switches protocols.
    awaiting_switch: Option<u64>,
    /// TCP sequence number just past the last bytes seen on each stream (request,
    /// response), when the kernel reports them.
    seen_end: [Option<u32>; 2],
    /// The request chunk being parsed was read after response bytes this connection never
    /// saw had been moved (lost in the capture, or not delivered yet). A request arriving
    /// while an earlier one is unanswered is then no proof of pipelining: its response is
    /// most likely among those bytes.
    responses_unseen: bool,
    closed: bool,
    stats: ConnStats,
}

impl HttpConnection {
    pub fn new(cfg: &HttpConfig) -> Self {
        Self {
            req: StreamParser::new(Stream::Request, cfg.max_header_bytes),
            resp: StreamParser::new(Stream::Response, cfg.max_header_bytes),
            max_pending: cfg.max_pending.max(1),
            pending: VecDeque::new(),
            ready: Vec::new(),
            started: Vec::new(),
            next_id: 0,
            cur_req: None,
            cur_resp: None,
            skip_responses: 0,
            desynced: false,
            pipelining_seen: false,
            gap_barrier: None,
            awaiting_switch: None,
            seen_end: [None; 2],
            responses_unseen: false,
            closed: false,
            stats: ConnStats::default(),
        }
    }

    pub fn on_request_bytes(&mut self, chunk: Chunk<'_>) {
        self.on_bytes(Stream::Request, chunk);
    }

    pub fn on_response_bytes(&mut self, chunk: Chunk<'_>) {
        self.on_bytes(Stream::Response, chunk);
    }

    /// Bytes were lost in this stream (ring-buffer drop): resynchronise at the next
    /// message boundary. Also call it before the first chunk of a connection whose start
    /// was not observed, so its first bytes are not taken as proof it is not HTTP.
    pub fn on_gap(&mut self, stream: Stream) {
        if self.closed {
            return;
        }
        let ev = match stream {
            Stream::Request => self.req.gap(),
            Stream::Response => self.resp.gap(),
        };
        if let Some(ev) = ev {
            self.handle(stream, ev);
        }
        self.flush();
    }

    /// The connection closed at `ts_ns`. Completes close-delimited responses; requests
    /// without a final response become [`ExchangeError::ClosedBeforeResponse`].
    pub fn on_close(&mut self, ts_ns: u64) {
        if self.closed {
            return;
        }
        self.closed = true;
        match self.resp.close() {
            CloseOutcome::End { body_bytes, timing } => {
                if let Some(id) = self.end_response(body_bytes, timing)
                    && let Some(e) = self.entry(id)
                {
                    e.closed_at_ns = Some(ts_ns);
                }
            }
            CloseOutcome::MidBody(cut) => {
                if let Some(e) = self.settle_cut_response(cut, ExchangeError::ResponseTruncated) {
                    e.closed_at_ns = Some(ts_ns);
                }
            }
            CloseOutcome::Idle => {}
        }
        if let CloseOutcome::MidBody(cut) = self.req.close() {
            self.end_request(cut.body_bytes, cut.timing, true);
        }
        for e in &mut self.pending {
            if !e.request_done {
                e.request_done = true;
                e.request_incomplete = true;
            }
            if !e.settled {
                e.fail(ExchangeError::ClosedBeforeResponse);
                e.closed_at_ns = Some(ts_ns);
            }
        }
        self.flush();
    }

    /// Request heads parsed since the last call, in order. Each precedes its exchange.
    pub fn take_started(&mut self) -> Vec<StartedRequest> {
        std::mem::take(&mut self.started)
    }

    /// Moves request heads parsed since the last call into `out`, in order.
    pub fn drain_started_into(&mut self, out: &mut Vec<StartedRequest>) {
        out.append(&mut self.started);
    }

    /// The head of the request at position `seq`, while its exchange is still held here
    /// (waiting, or complete and not yet taken): what a started request's policy reads.
    pub fn request_head(&self, seq: u64) -> Option<&RequestHead> {
        self.pending
            .iter()
            .filter(|e| !e.phantom)
            .map(|e| (e.id, &e.request))
            .chain(self.ready.iter().map(|x| (x.seq, &x.request)))
            .find(|&(id, _)| id == seq)
            .map(|(_, head)| head)
    }

    /// Completed exchanges, in request order.
    pub fn take_exchanges(&mut self) -> Vec<Exchange> {
        std::mem::take(&mut self.ready)
    }

    /// Moves completed exchanges into `out`, in request order.
    pub fn drain_exchanges_into(&mut self, out: &mut Vec<Exchange>) {
        out.append(&mut self.ready);
    }

    pub fn stats(&self) -> ConnStats {
        ConnStats {
            truncated_body_bytes: self.req.truncated_body_bytes()
                + self.resp.truncated_body_bytes(),
            pending: self.pending.len(),
            ..self.stats
        }
    }

    /// The connection is clearly not HTTP/1: the first message of one of its streams did
    /// not parse. Every later byte is ignored; the caller may stop feeding it.
    pub fn is_not_http(&self) -> bool {
        self.req.is_dead() || self.resp.is_dead()
    }

    /// Bytes held in head buffers (bodies are never buffered).
    pub fn buffered_bytes(&self) -> usize {
        self.req.buffered_bytes() + self.resp.buffered_bytes()
    }

    fn on_bytes(&mut self, stream: Stream, chunk: Chunk<'_>) {
        if self.closed || self.is_not_http() {
            return;
        }
        self.responses_unseen = stream == Stream::Request && self.response_bytes_unseen(&chunk);
        if let Some(seq) = chunk.tcp_seq {
            self.seen_end[stream as usize] = Some(seq.wrapping_add(chunk.syscall_len as u32));
        }
        let mut inp = Input::new(&chunk);
        self.pump(stream, &mut inp);
        self.responses_unseen = false;
        // A decision on one stream can release bytes held on the other (protocol switch).
        self.pump(stream.other(), &mut Input::empty());
        self.flush();
    }

    /// Whether the socket had moved response bytes this connection has not seen when the
    /// request chunk was read (server) or written (client). The first chunk that reports the
    /// response counter before any response byte was seen starts the count there: what came
    /// before belongs to exchanges this connection never saw.
    fn response_bytes_unseen(&mut self, chunk: &Chunk<'_>) -> bool {
        let Some(moved) = chunk.opposite_seq else {
            return false;
        };
        let seen = &mut self.seen_end[Stream::Response as usize];
        match *seen {
            Some(end) => end != moved,
            None => {
                *seen = Some(moved);
                false
            }
        }
    }

    fn pump(&mut self, stream: Stream, inp: &mut Input<'_>) {
        loop {
            let ev = match stream {
                Stream::Request => self.req.next(inp),
                Stream::Response => self.resp.next(inp),
            };
            match ev {
                Some(ev) => self.handle(stream, ev),
                None => break,
            }
        }
    }

    fn handle(&mut self, stream: Stream, ev: Event) {
        match (stream, ev) {
            (_, Event::Head(Head::Request(h), timing)) => self.on_request_head(h, timing),
            (_, Event::Head(Head::Response(h), timing)) => self.on_response_head(h, timing),
            (Stream::Request, Event::End { body_bytes, timing }) => {
                self.end_request(body_bytes, timing, false)
            }
            (Stream::Response, Event::End { body_bytes, timing }) => {
                self.end_response(body_bytes, timing);
            }
            (Stream::Request, Event::Lost { cause, cut }) => self.request_lost(cause, cut),
            (Stream::Response, Event::Lost { cause, cut }) => self.response_lost(cause, cut),
        }
    }

    fn entry(&mut self, id: u64) -> Option<&mut Entry> {
        self.pending.iter_mut().find(|e| e.id == id)
    }

    fn count_loss(&mut self, cause: LostCause) {
        match cause {
            LostCause::Gap | LostCause::Truncated => self.stats.gaps += 1,
            LostCause::Invalid | LostCause::Oversized => self.stats.parse_errors += 1,
        }
    }

    fn on_request_head(&mut self, head: RequestHead, timing: MessageTiming) {
        let framing = match request_framing(&head) {
            Ok(f) => f,
            Err(_) => {
                // We cannot tell where this request ends: same as losing bytes.
                self.req.reject_head();
                self.request_lost(LostCause::Invalid, None);
                return;
            }
        };
        self.stats.requests += 1;
        // While response bytes moved before this request are unseen, an unanswered earlier
        // request proves nothing: its response is among them, and when they were lost the
        // response stream reports the gap and fails every request still waiting.
        if let Some(barrier) = self.gap_barrier {
            if self.pending.iter().any(|e| e.id < barrier && !e.settled) {
                if !self.responses_unseen {
                    // A request sent before the pre-gap ones were answered: the client
                    // pipelines, so requests lost in the gap may own the next responses.
                    self.desynchronise();
                }
            } else {
                self.gap_barrier = None;
            }
        }
        if self.pending.iter().any(|e| !e.settled) && !self.responses_unseen {
            self.pipelining_seen = true;
        }
        let id = self.next_id;
        self.next_id += 1;
        // A switch is only possible if the server agrees: hold later bytes until it answers.
        let may_switch = head.method == "CONNECT" || head.header("upgrade").is_some();
        let pairable = !self.desynced;
        self.started.push(StartedRequest {
            seq: id,
            timing,
            context_headers: head
                .headers
                .iter()
                .filter(|(name, _)| is_trace_context_header(name))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        });
        self.push(Entry::new(id, head, timing, pairable));
        self.cur_req = Some(id);
        if may_switch && pairable {
            self.awaiting_switch = Some(id);
        }
        self.req.begin_body(framing, may_switch && pairable);
    }

    fn push(&mut self, e: Entry) {
        self.pending.push_back(e);
        while self.pending.len() > self.max_pending {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        let Some(e) = self.pending.pop_front() else {
            return;
        };
        self.stats.dropped_unpaired += 1;
        if self.cur_req == Some(e.id) {
            self.cur_req = None;
        }
        if !e.answered {
            // Its response will still come first: skip it to keep FIFO order.
            self.skip_responses += 1;
        } else if let Some(cur) = &mut self.cur_resp
            && cur.target == Some(e.id)
        {
            cur.target = None;
        }
        if self.awaiting_switch == Some(e.id) {
            self.resume_requests();
        }
    }

    fn end_request(&mut self, body_bytes: u64, timing: MessageTiming, incomplete: bool) {
        let Some(id) = self.cur_req.take() else {
            return;
        };
        if let Some(e) = self.entry(id) {
            e.request_body_bytes = body_bytes;
            e.request_timing = timing;
            e.request_done = true;
            e.request_incomplete |= incomplete;
        }
    }

    /// Request-stream rule: see the module docs.
    fn request_lost(&mut self, cause: LostCause, cut: Option<Cut>) {
        self.count_loss(cause);
        match cut {
            Some(cut) => self.end_request(cut.body_bytes, cut.timing, true),
            None => {
                // A head without framing (rejected) is not in `pending`; nothing to end.
                if let Some(id) = self.cur_req.take()
                    && let Some(e) = self.entry(id)
                {
                    e.request_done = true;
                    e.request_incomplete = true;
                }
            }
        }
        if self.req.is_dead() {
            return;
        }
        if cut.is_none() && matches!(cause, LostCause::Invalid | LostCause::Oversized) {
            // A request was there; the server will most likely answer it.
            let id = self.next_id;
            self.next_id += 1;
            let head = RequestHead {
                method: String::new(),
                target: String::new(),
                version: 1,
                headers: Headers::new(),
            };
            let mut e = Entry::new(id, head, MessageTiming::default(), !self.desynced);
            e.phantom = true;
            e.request_done = true;
            self.push(e);
        }
        if self.pipelining_seen {
            self.desynchronise();
        } else if self.pending.iter().any(|e| !e.settled) {
            self.gap_barrier = Some(self.next_id);
        }
    }

    fn on_response_head(&mut self, head: ResponseHead, timing: MessageTiming) {
        if (100..200).contains(&head.status) && head.status != 101 {
            self.stats.interim_responses += 1;
            self.cur_resp = Some(CurrentResponse {
                head,
                target: None,
                interim: true,
            });
            self.resp.begin_body(Framing::Empty, false);
            return;
        }
        let target = if self.skip_responses > 0 {
            self.skip_responses -= 1;
            None
        } else {
            self.pending.iter().find(|e| !e.answered).map(|e| e.id)
        };
        let method = target
            .and_then(|id| self.pending.iter().find(|e| e.id == id))
            .filter(|e| !e.phantom)
            .map(|e| e.request.method.as_str());
        let framing = match response_framing(&head, method) {
            Ok(f) => f,
            Err(_) => {
                self.resp.reject_head();
                self.response_lost(LostCause::Invalid, None);
                return;
            }
        };
        self.stats.responses += 1;
        if framing == Framing::Tunnel {
            let target = target.filter(|&id| self.pending.iter().any(|e| e.id == id && !e.phantom));
            self.switch_protocols(target, head, timing);
            return;
        }
        let target = match target.and_then(|id| self.entry(id)) {
            Some(e) if e.phantom => {
                // Its answer is discarded like any unpaired response.
                e.answered = true;
                e.settled = true;
                None
            }
            Some(e) => {
                e.answered = true;
                Some(e.id)
            }
            None => None,
        };
        if target.is_some() && target == self.awaiting_switch {
            self.resume_requests();
        }
        self.cur_resp = Some(CurrentResponse {
            head,
            target,
            interim: false,
        });
        self.resp.begin_body(framing, false);
    }

    /// Returns the entry the response completed, if it was paired.
    fn end_response(&mut self, body_bytes: u64, timing: MessageTiming) -> Option<u64> {
        let cur = self.cur_resp.take()?;
        if cur.interim {
            return None;
        }
        let Some(id) = cur.target else {
            self.stats.unpaired_responses += 1;
            return None;
        };
        let e = self.entry(id)?;
        e.response = Some(cur.head);
        e.response_body_bytes = body_bytes;
        e.response_timing = Some(timing);
        e.settled = true;
        Some(id)
    }

    /// Settles the exchange of the response cut at `cut` with `error`, keeping its head.
    fn settle_cut_response(&mut self, cut: Cut, error: ExchangeError) -> Option<&mut Entry> {
        let cur = self.cur_resp.take()?;
        if cur.interim {
            return None;
        }
        let e = self.entry(cur.target?)?;
        e.response = Some(cur.head);
        e.response_body_bytes = cut.body_bytes;
        e.response_timing = Some(cut.timing);
        e.response_incomplete = true;
        e.fail(error);
        Some(e)
    }

    /// Response-stream rule: see the module docs.
    fn response_lost(&mut self, cause: LostCause, cut: Option<Cut>) {
        self.count_loss(cause);
        let parse_error = matches!(cause, LostCause::Invalid | LostCause::Oversized);
        let mut first_error = if parse_error {
            ExchangeError::ParseError
        } else {
            ExchangeError::Gap
        };
        match cut {
            Some(cut) => {
                self.settle_cut_response(cut, first_error);
                first_error = ExchangeError::Gap;
            }
            None => {
                // An interim response cannot be cut; anything else in flight is lost too.
                self.cur_resp = None;
            }
        }
        if self.resp.is_dead() {
            return;
        }
        // Lost bytes may hold the responses of every request still waiting.
        for e in self.pending.iter_mut().filter(|e| !e.answered) {
            e.fail(first_error);
            first_error = ExchangeError::Gap;
        }
        self.skip_responses = 0;
        if self.pipelining_seen {
            self.desynchronise();
        }
        if let Some(id) = self.awaiting_switch
            && self.pending.iter().any(|e| e.id == id && e.settled)
        {
            // We will never know whether it switched; assume it did not.
            self.resume_requests();
        }
    }

    fn desynchronise(&mut self) {
        if !self.desynced {
            self.desynced = true;
            self.stats.desynchronised += 1;
        }
    }

    fn resume_requests(&mut self) {
        self.awaiting_switch = None;
        self.req.resume();
    }

    /// 101 Switching Protocols or a successful CONNECT: the exchange completes and the
    /// rest of the connection is another protocol.
    fn switch_protocols(&mut self, target: Option<u64>, head: ResponseHead, timing: MessageTiming) {
        self.req.enter_tunnel();
        self.resp.enter_tunnel();
        self.awaiting_switch = None;
        self.cur_resp = None;
        self.cur_req = None;
        for e in &mut self.pending {
            if Some(e.id) == target {
                e.response = Some(head.clone());
                e.response_timing = Some(timing);
                e.answered = true;
                e.settled = true;
            } else {
                e.fail(ExchangeError::Upgraded);
            }
            e.request_done = true;
        }
        if target.is_none() {
            self.stats.unpaired_responses += 1;
        }
    }

    /// Emits settled exchanges from the front, keeping request order.
    fn flush(&mut self) {
        while self
            .pending
            .front()
            .is_some_and(|e| e.request_done && e.settled)
        {
            let e = self.pending.pop_front().expect("front exists");
            if !e.phantom {
                self.stats.exchanges += 1;
                self.ready.push(e.into_exchange());
            }
        }
    }
}
