//! Layouts shared by the eBPF programs and the agent.
//!
//! Every struct is `#[repr(C)]` with explicit padding fields so both sides agree byte for
//! byte; tags travel as `u32` and are decoded with `TryFrom`, never transmuted.
#![no_std]

/// Largest number of payload bytes one data event can carry. A power of two so the eBPF side
/// can bound lengths with a mask the verifier understands.
pub const MAX_CAPTURE_BYTES: usize = 16384;
/// Default number of payload bytes copied per syscall (configurable up to the maximum).
pub const DEFAULT_CAPTURE_BYTES: u32 = 4096;

/// Map and program names, used by both sides.
pub const MAP_EVENTS: &str = "EVENTS";
/// The per-CPU slots where HTTP/2 syscalls are gathered (sized to the possible CPUs).
pub const MAP_GATHER: &str = "GATHER";
pub const MAP_DROPS: &str = "DROPS";
pub const MAP_NOT_HTTP: &str = "NOT_HTTP";
pub const MAP_TRACED_PIDS: &str = "TRACED_PIDS";
pub const MAP_CONNS: &str = "CONNS";
pub const MAP_GO_PROCS: &str = "GO_PROCS";
pub const MAP_PY_PROCS: &str = "PY_PROCS";
pub const MAP_ADOPTED_PENDING: &str = "ADOPTED_PENDING";
pub const MAP_ADOPTING: &str = "ADOPTING";
pub const MAP_ADOPTING_ANY: &str = "ADOPTING_ANY";
pub const MAP_PY_THREADS: &str = "PY_THREADS";

/// Uprobe programs on Go executables and the function each enters (Go ≥ 1.17, amd64
/// register ABI: arguments in RAX, RBX, RCX…, the current goroutine in R14).
pub const GO_UPROBES: [(&str, &str); 3] = [
    ("go_round_trip", "net/http.(*persistConn).roundTrip"),
    ("go_conn_write", "net/http.persistConnWriter.Write"),
    ("go_newproc1", "runtime.newproc1"),
];
/// The program attached at every `RET` of `runtime.newproc1` (never a uretprobe: Go
/// moves goroutine stacks), where RAX holds the new goroutine.
pub const GO_NEWPROC1_RET: (&str, &str) = ("go_newproc1_ret", "runtime.newproc1");

/// Names of the globals the loader sets before the programs are verified.
pub const GLOBAL_AGENT_TGID: &str = "AGENT_TGID";
pub const GLOBAL_FILTER_PIDS: &str = "FILTER_PIDS";
pub const GLOBAL_CAPTURE_BYTES: &str = "CAPTURE_BYTES";
pub const GLOBAL_OFFSETS: &str = "KERNEL_OFFSETS";
pub const GLOBAL_FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";

/// Bytes waiting in the ring buffer before the programs wake the agent: one wakeup per
/// batch of events rather than per event; the agent also drains on a short timer.
pub const fn wakeup_bytes(ring_buffer_bytes: u32) -> u32 {
    let b = ring_buffer_bytes / 16;
    if b > 128 * 1024 { 128 * 1024 } else { b }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EventKind {
    /// A connection became known: accept/accept4 returned it, or connect was called on it.
    ConnOpen = 1,
    /// Bytes moved by a data syscall on a tracked connection.
    Data = 2,
    /// The process closed the connection's file descriptor.
    Close = 3,
    /// A uprobe on a Go executable saw a goroutine hand-off ([`GoEvent`]).
    Go = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Role {
    Unknown = 0,
    /// The socket came from accept: this process is the HTTP server.
    Server = 1,
    /// The socket was connected by this process: it is the HTTP client.
    Client = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Direction {
    /// Bytes read by the process (received from the peer).
    Ingress = 1,
    /// Bytes written by the process (sent to the peer).
    Egress = 2,
}

/// Why the kernel side could not deliver an event. Indexes into the `DROPS` per-CPU array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DropReason {
    /// The ring buffer had no room (user space too slow or buffer too small).
    RingBufferFull = 0,
    /// Copying the user buffer failed (page not resident, bad pointer).
    ReadUserFailed = 1,
    /// The per-thread table of in-flight syscalls was full.
    InflightTableFull = 2,
    /// The connection table was full; the connection is not traced.
    ConnTableFull = 3,
    /// Reading the socket's addresses from kernel memory failed.
    SocketReadFailed = 4,
}

pub const DROP_REASON_COUNT: usize = 5;

impl DropReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::RingBufferFull => "ring_buffer_full",
            DropReason::ReadUserFailed => "read_user_failed",
            DropReason::InflightTableFull => "inflight_table_full",
            DropReason::ConnTableFull => "conn_table_full",
            DropReason::SocketReadFailed => "socket_read_failed",
        }
    }
}

/// A `u32` tag that matches no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(thiserror::Error))]
#[cfg_attr(feature = "user", error("unknown {what} tag {value}"))]
pub struct UnknownTag {
    pub what: &'static str,
    pub value: u32,
}

macro_rules! tag_try_from {
    ($ty:ident, $what:literal, [$($variant:ident),*]) => {
        impl TryFrom<u32> for $ty {
            type Error = UnknownTag;
            fn try_from(value: u32) -> Result<Self, UnknownTag> {
                $( if value == $ty::$variant as u32 { return Ok($ty::$variant); } )*
                Err(UnknownTag { what: $what, value })
            }
        }
    };
}
tag_try_from!(EventKind, "event kind", [ConnOpen, Data, Close, Go]);
tag_try_from!(Role, "role", [Unknown, Server, Client]);
tag_try_from!(Direction, "direction", [Ingress, Egress]);
tag_try_from!(
    DropReason,
    "drop reason",
    [
        RingBufferFull,
        ReadUserFailed,
        InflightTableFull,
        ConnTableFull,
        SocketReadFailed
    ]
);

/// Leads every ring-buffer record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// Unique per traced connection for the lifetime of the loaded programs.
    pub conn_id: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at syscall entry.
    pub ts_enter_ns: u64,
    /// `bpf_ktime_get_ns` at syscall exit.
    pub ts_exit_ns: u64,
    /// cgroup v2 id of the thread.
    pub cgroup_id: u64,
}

/// `ConnEvent::flags`: the socket's addresses were read from kernel memory.
pub const CONN_FLAG_ADDRS_KNOWN: u32 = 1;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ConnEvent {
    pub header: EventHeader,
    /// A [`Role`].
    pub role: u32,
    pub flags: u32,
    /// `AF_INET` or `AF_INET6`; 0 when unknown.
    pub family: u16,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub peer_port: u16,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes, or IPv6; network byte order.
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    /// The thread's `comm`, so short-lived processes are named even after they exit.
    pub comm: [u8; 16],
}

/// `DataEvent::flags`: fewer bytes were copied than the syscall moved.
pub const DATA_FLAG_TRUNCATED: u32 = 1;
/// `DataEvent::flags`: events of this connection were lost before this one.
pub const DATA_FLAG_GAP_BEFORE: u32 = 2;
/// `DataEventHeader::tcp_seq` holds the TCP sequence number of the record's first byte.
pub const DATA_FLAG_TCP_SEQ: u32 = 4;
/// `DataEventHeader::opposite_seq` holds the other direction's counter (set with
/// [`DATA_FLAG_TCP_SEQ`]).
pub const DATA_FLAG_OPPOSITE_SEQ: u32 = 8;

/// Fixed part of a data event; `captured_len` payload bytes follow it in the record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DataEventHeader {
    pub header: EventHeader,
    /// A [`Direction`].
    pub direction: u32,
    pub flags: u32,
    /// Bytes the syscall moved (its return value).
    pub syscall_len: u32,
    /// Payload bytes copied into the record.
    pub captured_len: u32,
    /// The task that made the syscall, 0 if unknown: in a followed Go process the goroutine
    /// (`runtime.g.goid`); in a followed CPython process, for writes, the address of the
    /// outermost coroutine frame running (the asyncio task's own coroutine), mixed with its code.
    pub goid: u64,
    /// The TCP sequence number of the record's first byte, when [`DATA_FLAG_TCP_SEQ`] is
    /// set: `write_seq` (egress) or `copied_seq` (ingress) at the syscall's exit, minus the
    /// bytes before it. Both ends of a connection number a byte the same way, whenever each
    /// began to watch it.
    pub tcp_seq: u32,
    /// The other direction's counter at the syscall's exit, when [`DATA_FLAG_OPPOSITE_SEQ`]
    /// is set: `copied_seq` (egress) or `write_seq` (ingress), the end of every byte this
    /// socket had moved the other way. Tells lost bytes of the other stream from a peer that
    /// pipelines: a request read after bytes of a response we never saw were written.
    pub opposite_seq: u32,
}

/// `GoEvent::what`: `net/http` is about to write a request on the connection `arg` (a
/// `*persistConn`) for goroutine `goid` (`persistConn.roundTrip`).
pub const GO_ROUND_TRIP: u32 = 1;
/// `GoEvent::what`: goroutine `goid` writes the requests of connection `arg`
/// (`persistConnWriter.Write`, called from the connection's `writeLoop`).
pub const GO_CONN_WRITE: u32 = 2;
/// `GoEvent::what`: goroutine `goid` started goroutine `arg` (`newproc1`, entry and return).
pub const GO_SPAWN: u32 = 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GoEvent {
    pub header: EventHeader,
    /// A `GO_*` value.
    pub what: u32,
    pub _pad: u32,
    pub goid: u64,
    pub arg: u64,
}

/// Per followed Go process (`GO_PROCS`, by tgid): where the goroutine id lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GoProc {
    /// Offset of `goid` in `runtime.g`.
    pub goid_offset: u32,
    pub _pad: u32,
}

/// Per followed CPython process (`PY_PROCS`, by tgid): where the running frames are found
/// from a thread's `PyThreadState` (`PY_THREADS`, by tid). Offsets in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PyProc {
    /// `PyThreadState.cframe`.
    pub tstate_cframe: u16,
    /// `_PyCFrame.current_frame`.
    pub cframe_current_frame: u16,
    /// `_PyInterpreterFrame.previous`.
    pub frame_previous: u16,
    /// `_PyInterpreterFrame.owner` (one byte; `PY_FRAME_OWNED_BY_GENERATOR` for a coroutine),
    /// within the 24 bytes from `frame_previous`: the programs read both at once.
    pub frame_owner: u16,
    /// `_PyInterpreterFrame.f_code`: mixed into a task's id, so a frame address reused by
    /// another function's coroutine names another task.
    pub frame_code: u16,
    pub _pad: [u16; 3],
}

/// `_PyInterpreterFrame.owner` of a frame that lives in a generator or coroutine object.
pub const PY_FRAME_OWNED_BY_GENERATOR: u8 = 1;
/// Frames walked from the innermost at most, looking for a task's coroutine.
pub const PY_MAX_FRAMES: u32 = 32;

/// The largest record: header plus the maximum payload. The eBPF side fills one of these in
/// per-CPU scratch memory and submits only the used prefix.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct DataEvent {
    pub header: DataEventHeader,
    pub data: [u8; MAX_CAPTURE_BYTES],
}

/// Field offsets inside kernel structures, read from the running kernel's BTF by the agent
/// and handed to the programs as a global (Rust eBPF has no CO-RE relocations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct KernelOffsets {
    /// 1 when the offsets below were resolved; the programs skip address reads otherwise.
    pub valid: u32,
    pub task_struct_files: u32,
    pub files_struct_fdt: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub sock_common_family: u32,
    pub sock_common_daddr: u32,
    pub sock_common_rcv_saddr: u32,
    pub sock_common_dport: u32,
    pub sock_common_num: u32,
    pub sock_common_v6_daddr: u32,
    pub sock_common_v6_rcv_saddr: u32,
    /// Offset of `sock.sk_protocol` (u16) or `u32::MAX` when it is a bitfield (old kernels).
    pub sock_protocol: u32,
    /// Offset of `task_struct.stack`: a syscall's user registers sit at its top.
    pub task_struct_stack: u32,
    /// Offsets of `tcp_sock.write_seq` and `tcp_sock.copied_seq` (u32 each); 0 when unknown.
    pub tcp_sock_write_seq: u32,
    pub tcp_sock_copied_seq: u32,
    /// Offset of `task_struct.nvcsw`, followed by `nivcsw`: the task's context switches,
    /// which tell a send's stamp from one left by an earlier send; 0 when unknown.
    pub task_struct_nvcsw: u32,
}

impl KernelOffsets {
    /// Offsets unknown: the programs trace connections without their addresses.
    pub const UNKNOWN: KernelOffsets = KernelOffsets {
        valid: 0,
        task_struct_files: 0,
        files_struct_fdt: 0,
        fdtable_fd: 0,
        file_private_data: 0,
        socket_sk: 0,
        sock_common_family: 0,
        sock_common_daddr: 0,
        sock_common_rcv_saddr: 0,
        sock_common_dport: 0,
        sock_common_num: 0,
        sock_common_v6_daddr: 0,
        sock_common_v6_rcv_saddr: 0,
        sock_protocol: u32::MAX,
        task_struct_stack: 0,
        tcp_sock_write_seq: 0,
        tcp_sock_copied_seq: 0,
        task_struct_nvcsw: 0,
    };
}

/// Key of the in-kernel connection table: `(tgid << 32) | fd`.
#[inline(always)]
pub const fn conn_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Per-connection state kept in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ConnState {
    pub conn_id: u64,
    /// A [`Role`].
    pub role: u32,
    /// A `PROTO_*` value: what the sniff decided.
    pub protocol: u32,
    /// Non-zero when an event of that direction was lost; the next data event of the
    /// direction carries [`DATA_FLAG_GAP_BEFORE`] so user space resynchronises that stream
    /// instead of mis-pairing. One word per direction: a socket read on one CPU and written
    /// on another updates them concurrently, and bits of one shared word could be lost.
    pub lost_ingress: u32,
    pub lost_egress: u32,
    /// The kernel's `struct sock` (for its TCP sequence numbers); 0 until known. A
    /// connection registered by the agent (adopted at start) has it filled in by its first
    /// data syscall.
    pub sk: u64,
    /// Non-zero while user space has not been told of the connection: its open event was
    /// lost (the ring buffer was full). It is sent again before the connection's next data,
    /// which then starts both streams with a gap; without it the connection would stay
    /// untraced for its whole life.
    pub unannounced: u32,
    /// Data events in which a connection picked up mid-stream (its open event lost, or
    /// adopted by the agent) may still show an HTTP/1 message start before it is judged not
    /// HTTP; those that do not are skipped and flagged lost. 0: the next data decides, as
    /// for a connection seen from its first byte.
    pub sniff_budget: u32,
}

/// [`ConnState::sniff_budget`] of a connection picked up mid-stream: enough for the rest of
/// a message in flight (a body written in parts) to pass.
pub const MID_STREAM_SNIFFS: u32 = 64;

pub const PROTO_UNKNOWN: u32 = 0;
pub const PROTO_HTTP1: u32 = 1;
pub const PROTO_OTHER: u32 = 2;
/// HTTP/2 seen from its start (preface or SETTINGS): captured, decoded in user space.
pub const PROTO_HTTP2: u32 = 3;

/// What a connection speaks, judged by the first four bytes of its first data (either
/// direction). HTTP/1, and HTTP/2 seen from its start, are captured; the others (and
/// HTTP/2 picked up mid-stream, whose header compression state is unknowable) are counted
/// per connection end in the `NOT_HTTP` per-CPU array, indexed by `Sniffed as u32 - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Sniffed {
    Http1 = 0,
    /// A TLS record header: content type 20–23 (handshake first, or application data on
    /// a connection whose start was missed), then major version 3.
    Tls = 1,
    /// The HTTP/2 client preface (`PRI * HTTP/2.0…`), as h2c and gRPC send it, or a
    /// SETTINGS frame header (a server's first bytes, which it may send before it reads
    /// the client's preface): a 24-bit length under 64 KiB, then type 4.
    Http2 = 2,
    Other = 3,
}

pub const NOT_HTTP_KIND_COUNT: usize = 3;

impl Sniffed {
    /// Compares whole words, as the eBPF programs do best (no byte-string compare).
    #[inline(always)]
    pub const fn of(prefix: [u8; 4]) -> Sniffed {
        const fn tag(s: &[u8; 4]) -> u32 {
            u32::from_le_bytes(*s)
        }
        let word = u32::from_le_bytes(prefix);
        if word == tag(b"GET ")
            || word == tag(b"POST")
            || word == tag(b"PUT ")
            || word == tag(b"HEAD")
            || word == tag(b"DELE")
            || word == tag(b"PATC")
            || word == tag(b"OPTI")
            || word == tag(b"CONN")
            || word == tag(b"TRAC")
            || word == tag(b"HTTP")
        {
            Sniffed::Http1
        } else if word == tag(b"PRI ") || (prefix[0] == 0 && prefix[3] == 4) {
            Sniffed::Http2
        } else if prefix[0] >= 20 && prefix[0] <= 23 && prefix[1] == 3 {
            Sniffed::Tls
        } else {
            Sniffed::Other
        }
    }

    /// The `protocol` label of `tracer_connections_not_http_total` for slot `index`.
    pub const fn not_http_label(index: usize) -> &'static str {
        match index {
            0 => "tls",
            1 => "http2",
            _ => "other",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    //! Plain data: every type here is `repr(C)`, holds only integers and integer arrays
    //! with explicit padding fields, and so is valid for any bit pattern. Maps and ring
    //! buffer records are read into them (`aya::Pod`, and the agent's `read_struct`).

    // SAFETY: repr(C), integers only, padding explicit (see the module note).
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PyProc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above (the addresses are byte arrays).
    unsafe impl aya::Pod for super::ConnEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DataEventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GoEvent {}
}

#[cfg(test)]
mod tests {
    use super::Sniffed;

    #[test]
    fn sniffing_first_bytes() {
        let of = |b: &[u8]| Sniffed::of([b[0], b[1], b[2], b[3]]);
        assert_eq!(of(b"GET / HTTP/1.1"), Sniffed::Http1);
        assert_eq!(of(b"HTTP/1.1 200 OK"), Sniffed::Http1);
        assert_eq!(of(b"PRI * HTTP/2.0\r\n"), Sniffed::Http2);
        // A server's SETTINGS frame (18 bytes of settings), written before the preface came.
        assert_eq!(of(&[0x00, 0x00, 0x12, 0x04]), Sniffed::Http2);
        assert_eq!(of(&[0x00, 0x00, 0x12, 0x01]), Sniffed::Other);
        // ClientHello (record version 3.1), application data of TLS 1.2/1.3, an alert.
        assert_eq!(of(&[0x16, 0x03, 0x01, 0x02]), Sniffed::Tls);
        assert_eq!(of(&[0x17, 0x03, 0x03, 0x00]), Sniffed::Tls);
        assert_eq!(of(&[0x15, 0x03, 0x03, 0x00]), Sniffed::Tls);
        assert_eq!(of(&[0x18, 0x03, 0x03, 0x00]), Sniffed::Other);
        assert_eq!(of(&[0x16, 0x02, 0x01, 0x02]), Sniffed::Other);
        assert_eq!(of(b"get / HTTP/1.1"), Sniffed::Other);
        assert_eq!(of(b"SSH-2.0"), Sniffed::Other);
        assert_eq!(Sniffed::not_http_label(Sniffed::Tls as usize - 1), "tls");
        assert_eq!(
            Sniffed::not_http_label(Sniffed::Http2 as usize - 1),
            "http2"
        );
        assert_eq!(
            Sniffed::not_http_label(Sniffed::Other as usize - 1),
            "other"
        );
    }

    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EventHeader>(), 48);
        assert_eq!(size_of::<ConnEvent>(), 48 + 8 + 8 + 32 + 16);
        assert_eq!(size_of::<DataEventHeader>(), 80);
        assert_eq!(size_of::<GoEvent>(), 48 + 24);
        assert_eq!(size_of::<GoProc>(), 8);
        assert_eq!(size_of::<PyProc>(), 16);
        assert_eq!(size_of::<KernelOffsets>(), 18 * 4);
        assert_eq!(size_of::<ConnState>(), 40);
    }

    #[test]
    fn tags_round_trip_and_reject_unknown() {
        for k in [
            EventKind::ConnOpen,
            EventKind::Data,
            EventKind::Close,
            EventKind::Go,
        ] {
            assert_eq!(EventKind::try_from(k as u32), Ok(k));
        }
        assert!(EventKind::try_from(0).is_err());
        assert!(Direction::try_from(3).is_err());
        assert_eq!(DropReason::try_from(4), Ok(DropReason::SocketReadFailed));
        assert!(DropReason::try_from(DROP_REASON_COUNT as u32).is_err());
    }
}
