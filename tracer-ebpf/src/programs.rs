//! The programs, their maps and the globals the loader fills in.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{map, tracepoint, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, TracePointContext},
};
use tracer_common::{
    AF_INET, AF_INET6, CONN_FLAG_ADDRS_KNOWN, ConnEvent, ConnState, DATA_FLAG_GAP_BEFORE,
    DATA_FLAG_OPPOSITE_SEQ, DATA_FLAG_TCP_SEQ, DATA_FLAG_TRUNCATED, DEFAULT_CAPTURE_BYTES,
    DataEvent, DataEventHeader, Direction, DropReason, EventHeader, EventKind, GO_CONN_WRITE,
    GO_ROUND_TRIP, GO_SPAWN, GoEvent, GoProc, KernelOffsets, MAX_CAPTURE_BYTES, MID_STREAM_SNIFFS,
    PROTO_HTTP1, PROTO_HTTP2, PROTO_OTHER, PROTO_UNKNOWN, PY_FRAME_OWNED_BY_GENERATOR,
    PY_MAX_FRAMES, PyProc, Role, Sniffed, conn_key,
};

#[unsafe(no_mangle)]
static AGENT_TGID: Global<u32> = Global::new(0);
/// 1: trace only the tgids in `TRACED_PIDS`.
#[unsafe(no_mangle)]
static FILTER_PIDS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static CAPTURE_BYTES: Global<u32> = Global::new(DEFAULT_CAPTURE_BYTES);
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::UNKNOWN);

/// One field of `KERNEL_OFFSETS`, read on its own: `Global::load` copies the whole struct
/// onto the stack at every use, and the programs have 512 bytes of stack for everything.
macro_rules! kernel_offset {
    ($f:ident) => {
        // SAFETY: `Global` is `repr(transparent)` over a `KernelOffsets` the loader
        // initialised; the address is one of its fields, read with a volatile load as
        // `Global::load` does, so the loader's value is never constant-folded away.
        unsafe {
            let offsets = core::ptr::addr_of!(KERNEL_OFFSETS) as *const KernelOffsets;
            core::ptr::addr_of!((*offsets).$f).read_volatile()
        }
    };
}
/// Offset of `child_pid` in the `sched_process_fork` record, read from tracefs by the
/// loader (the layout changed in 6.x); 0 turns following forked children off.
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: Global<u32> = Global::new(0);

/// See `tracer_common::wakeup_bytes`; set by the loader from the ring buffer's size.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u32> = Global::new(64 * 1024);

/// Size is set by the loader (`--ring-buffer-bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);
#[map]
static DROPS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(tracer_common::DROP_REASON_COUNT as u32, 0);
/// Connection ends that spoke something other than HTTP/1, by `Sniffed` (minus one).
#[map]
static NOT_HTTP: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(tracer_common::NOT_HTTP_KIND_COUNT as u32, 0);
#[map]
static TRACED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);
/// Traced connections by `(tgid << 32) | fd`. LRU so a process that dies without closing
/// cannot fill it.
#[map]
static CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(65536, 0);
/// Roles of traced sockets by `struct sock` address: a process that inherited a traced
/// socket (a forking server's child serving what the parent accepted) traces it with the
/// role the socket got where it was accepted or connected. Entries outlive their sockets
/// (LRU): a freed address reused by an untraced socket matters only to an inheriting child,
/// which then traces that socket too (and the sniff drops it unless it speaks HTTP/1).
#[map]
static SOCK_ROLES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);
/// The `CONNS` key of each traced socket, by `struct sock` address: the socket programs
/// end a connection when its socket closes, wherever that is seen.
#[map]
static SK_KEYS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);
/// Sockets a listener completed the handshake of, by `struct sock` address, until the
/// process that accepted one moves its first byte (socket programs only): the time the
/// connection was established.
#[map]
static PENDING_ACCEPT: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);
/// Processes that have had a traced connection: only their children are followed.
#[map]
static HAS_CONNS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);
/// Processes forked by one with traced connections (or by such a child), by tgid.
#[map]
static INHERITORS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);
/// Data syscalls between entry and exit, by pid_tgid.
#[map]
static INFLIGHT_IO: LruHashMap<u64, InflightIo> = LruHashMap::with_max_entries(16384, 0);
/// connect() calls between entry and exit, by pid_tgid.
#[map]
static INFLIGHT_CONNECT: LruHashMap<u64, InflightConnect> = LruHashMap::with_max_entries(4096, 0);
/// One data event under construction per CPU (too big for the 512-byte stack).
#[map]
static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// Go processes whose goroutines are followed, by tgid (filled in by the agent).
#[map]
static GO_PROCS: HashMap<u32, GoProc> = HashMap::with_max_entries(4096, 0);
/// `runtime.newproc1` entered on this thread, by pid_tgid: the creating goroutine's id,
/// until it returns the new goroutine.
#[map]
static GO_SPAWNING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);
/// Connections registered by the agent (adopted at its start) that no syscall has entered
/// since, by conn_key: a thread blocked in a read since before the agent started completes
/// it without an entry record, and its arguments are then taken from the saved registers.
#[map]
static ADOPTED_PENDING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);
/// Processes with such connections, by tgid: only their exits without an entry record look
/// at the registers (the agent removes them once their connections were all entered).
#[map]
static ADOPTING: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);
/// 1 while `ADOPTING` has entries (set and cleared by the agent): an array read, which the
/// verifier inlines, spares every other syscall exit the hash lookup.
#[map]
static ADOPTING_ANY: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the agent is still recovering blocked syscalls of adopted connections of `tgid`.
#[inline(always)]
fn adopting(tgid: u32) -> bool {
    // SAFETY: presence tests only.
    ADOPTING_ANY.get(0).is_some_and(|any| *any != 0) && unsafe { ADOPTING.get(tgid) }.is_some()
}
/// CPython processes whose asyncio tasks are followed, by tgid (filled in by the agent).
#[map]
static PY_PROCS: HashMap<u32, PyProc> = HashMap::with_max_entries(4096, 0);
/// The `PyThreadState` of each thread of a followed CPython process, by pid_tgid (found by the
/// agent in the interpreter's thread list: a thread in a syscall has released the GIL, so
/// the runtime's "current thread state" does not name it).
#[map]
static PY_THREADS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

#[derive(Clone, Copy)]
#[repr(C)]
struct InflightIo {
    /// The user buffer, or the `iovec` array for vectored calls.
    buf: u64,
    ts_enter: u64,
    fd: u32,
    direction: u32,
    /// A `BUF_*` value: how to find the bytes at exit.
    kind: u32,
    /// Number of iovecs for `BUF_IOVEC`.
    iov_count: u32,
}

const BUF_PLAIN: u32 = 0;
const BUF_IOVEC: u32 = 1;
/// sendfile: the bytes never pass through user memory; only their count is reported.
const BUF_NONE: u32 = 2;
/// iovecs copied per vectored syscall; bytes in later ones are counted, not copied. A
/// chunked response written with one `writev` takes five (head, size line, data, CRLF,
/// last chunk: Node.js, nginx), so fewer would cut every such body's framing.
const MAX_IOVECS: u32 = 8;

#[derive(Clone, Copy)]
#[repr(C)]
struct InflightConnect {
    ts_enter: u64,
    fd: u32,
    _pad: u32,
}

const IPPROTO_TCP: u16 = 6;
const EINPROGRESS: i64 = 115;

// Offsets of the syscall tracepoint fields (stable format: 8-byte common header, the
// syscall number, then one 8-byte slot per argument; exit has `ret` in the first slot).
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

/// A syscall argument or return value, loaded straight from the tracepoint record: the
/// verifier allows aligned context reads, and a load costs a fraction of the
/// `bpf_probe_read_kernel` call behind `read_at`.
#[inline(always)]
fn slot(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: every offset used is an 8-byte-aligned slot inside the syscall record.
    unsafe { *(ctx.as_ptr().add(offset) as *const u64) }
}

/// Ring buffer output flags for a record of `len` bytes: no wakeup until a batch has
/// accumulated, and then one, from the record that takes the waiting bytes past the
/// threshold. Forcing a wakeup from every record past it (until the agent drains) costs a
/// self-interrupt each, which under virtualisation is a trap to the hypervisor: the
/// largest single cost of a record on a busy machine. A crossing missed in a race, or
/// posted while the agent is still draining, only delays the batch to the agent's drain
/// timer.
#[inline(always)]
fn wakeup_flags(len: usize) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA);
    let threshold = WAKEUP_BYTES.load() as u64;
    if waiting < threshold && waiting + len as u64 >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(counter) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn is_traced(tgid: u32) -> bool {
    if tgid == AGENT_TGID.load() {
        return false;
    }
    if FILTER_PIDS.load() != 0 {
        // SAFETY: value is only tested for presence.
        return unsafe { TRACED_PIDS.get(tgid) }.is_some();
    }
    true
}

#[inline(always)]
fn header(kind: EventKind, pid_tgid: u64, fd: u32, conn_id: u64, ts_enter: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        conn_id,
        ts_enter_ns: ts_enter,
        // SAFETY: helper without preconditions.
        ts_exit_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

// ---- connection lifecycle -------------------------------------------------------------

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return;
    }
    let ret = slot(ctx, RET) as i64;
    if ret < 0 {
        return;
    }
    register_connection(pid_tgid, ret as u32, Role::Server, 0);
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return 0;
    }
    let fd = slot(&ctx, ARG0);
    let inflight = InflightConnect {
        // SAFETY: helper without preconditions.
        ts_enter: unsafe { bpf_ktime_get_ns() },
        fd: fd as u32,
        _pad: 0,
    };
    if INFLIGHT_CONNECT.insert(pid_tgid, inflight, 0).is_err() {
        count_drop(DropReason::InflightTableFull);
    }
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the entry is removed.
    let Some(inflight) = (unsafe { INFLIGHT_CONNECT.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = INFLIGHT_CONNECT.remove(pid_tgid);
    let ret = slot(&ctx, RET) as i64;
    // Non-blocking connects return EINPROGRESS; the socket already has both addresses.
    if ret == 0 || ret == -EINPROGRESS {
        register_connection(pid_tgid, inflight.fd, Role::Client, inflight.ts_enter);
    }
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = slot(&ctx, ARG0);
    let fd = fd as u32;
    let key = conn_key((pid_tgid >> 32) as u32, fd);
    // SAFETY: copied out before removal.
    let Some(state) = (unsafe { CONNS.get(key) }).copied() else {
        return 0;
    };
    let _ = CONNS.remove(key);
    emit_close(pid_tgid, fd, state.conn_id);
    0
}

/// Tells user space that connection `conn_id` (descriptor `fd` of the process in
/// `pid_tgid`) closed.
#[inline(always)]
fn emit_close(pid_tgid: u64, fd: u32, conn_id: u64) {
    let event = header(EventKind::Close, pid_tgid, fd, conn_id, 0);
    let event = EventHeader {
        ts_enter_ns: event.ts_exit_ns,
        ..event
    };
    if EVENTS
        .output::<EventHeader>(&event, wakeup_flags(size_of::<EventHeader>()))
        .is_err()
    {
        count_drop(DropReason::RingBufferFull);
    }
}

#[inline(always)]
fn next_conn_id() -> u64 {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    match CONN_SEQ.get_ptr_mut(0) {
        Some(seq) => {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            let n = unsafe {
                *seq += 1;
                *seq
            };
            (n << 12) | (cpu & 0xfff)
        }
        None => 0,
    }
}

/// The open event of a connection, its addresses read from the socket behind `fd`; `None`
/// for a descriptor that is not a TCP/IP socket.
#[inline(always)]
fn conn_event(pid_tgid: u64, fd: u32, role: u32, conn_id: u64, ts_enter: u64) -> Option<ConnEvent> {
    let mut event = ConnEvent {
        header: header(EventKind::ConnOpen, pid_tgid, fd, conn_id, ts_enter),
        role,
        flags: 0,
        family: 0,
        local_port: 0,
        peer_port: 0,
        _pad: 0,
        local_addr: [0; 16],
        peer_addr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if event.header.ts_enter_ns == 0 {
        event.header.ts_enter_ns = event.header.ts_exit_ns;
    }
    match read_socket(fd, &mut event) {
        SocketKind::TcpInet | SocketKind::Unknown => Some(event),
        SocketKind::Other => None,
    }
}

#[inline(always)]
fn register_connection(pid_tgid: u64, fd: u32, role: Role, ts_enter: u64) {
    let conn_id = next_conn_id();
    let Some(event) = conn_event(pid_tgid, fd, role as u32, conn_id, ts_enter) else {
        return;
    };
    let sk = if kernel_offset!(valid) != 0 {
        sock_of(fd).map_or(0, |sk| sk as u64)
    } else {
        0
    };
    let mut state = ConnState {
        conn_id,
        role: role as u32,
        protocol: PROTO_UNKNOWN,
        lost_ingress: 0,
        lost_egress: 0,
        sk,
        unannounced: 0,
        sniff_budget: 0,
    };
    if EVENTS
        .output::<ConnEvent>(&event, wakeup_flags(size_of::<ConnEvent>()))
        .is_err()
    {
        count_drop(DropReason::RingBufferFull);
        // Announced again before its first data gets through (`announce`).
        state.unannounced = 1;
        state.sniff_budget = MID_STREAM_SNIFFS;
        state.lost_ingress = 1;
        state.lost_egress = 1;
    }
    let key = conn_key((pid_tgid >> 32) as u32, fd);
    if CONNS.insert(key, state, 0).is_err() {
        count_drop(DropReason::ConnTableFull);
        return;
    }
    if sk != 0 {
        let _ = SK_KEYS.insert(sk, key, 0);
    }
    if FORK_CHILD_PID_OFFSET.load() != 0 && sk != 0 {
        let _ = SOCK_ROLES.insert(sk, role as u32, 0);
        let _ = HAS_CONNS.insert((pid_tgid >> 32) as u32, 1u8, 0);
    }
}

/// Sends the open event of a connection whose first one was lost. User space places data
/// only on connections it was told of; its streams then start with the gap the lost flags
/// report, so they resynchronise at the next message start. False while the ring buffer is
/// still full (the data is then lost as well, and flagged).
#[inline(always)]
fn announce(pid_tgid: u64, fd: u32, state: &mut ConnState) -> bool {
    let Some(event) = conn_event(pid_tgid, fd, state.role, state.conn_id, 0) else {
        return false;
    };
    if EVENTS
        .output::<ConnEvent>(&event, wakeup_flags(size_of::<ConnEvent>()))
        .is_err()
    {
        count_drop(DropReason::RingBufferFull);
        return false;
    }
    state.unannounced = 0;
    true
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Only the children of a process with traced sockets: every read and write of an
    // inheritor's untraced descriptors pays for a look at the socket behind them, so the
    // mark must not spread to whole process trees (a shell's pipelines, a build's
    // compilers) below a process that once made an HTTP call. A child that serves an
    // inherited socket is registered, and so passes the mark on to its own children.
    // SAFETY: presence test only.
    if unsafe { HAS_CONNS.get(parent) }.is_none() {
        return 0;
    }
    // Constant offsets only (the verifier rejects variable ones into the context): the
    // two layouts kernels have had, char[16] comms (44) and __data_loc comms (20).
    let child = match FORK_CHILD_PID_OFFSET.load() {
        // SAFETY: the offset is inside the record of its layout.
        20 => unsafe { ctx.read_at::<u32>(20) },
        // SAFETY: as above.
        44 => unsafe { ctx.read_at::<u32>(44) },
        _ => return 0,
    };
    // A new thread's id lands here too; it is never looked up as a tgid, and LRU-bounded.
    if let Ok(child) = child {
        let _ = INHERITORS.insert(child, 1u8, 0);
    }
    0
}

/// A descriptor this process neither accepted nor connected: if a process with traced
/// connections forked it and the socket behind the descriptor is one of them, trace it
/// here too. Returns whether it is now traced.
#[inline(always)]
fn adopt_inherited(pid_tgid: u64, fd: u32) -> bool {
    // SAFETY: presence test only.
    if unsafe { INHERITORS.get((pid_tgid >> 32) as u32) }.is_none() {
        return false;
    }
    if kernel_offset!(valid) == 0 {
        return false;
    }
    // Non-socket files give an error or a pointer no socket role is recorded for.
    let Ok(sk) = sock_of(fd) else {
        return false;
    };
    // SAFETY: copied out at once.
    let Some(role) = (unsafe { SOCK_ROLES.get(sk as u64) }).copied() else {
        return false;
    };
    let role = if role == Role::Client as u32 {
        Role::Client
    } else {
        Role::Server
    };
    register_connection(pid_tgid, fd, role, 0);
    true
}

enum SocketKind {
    TcpInet,
    Other,
    /// Offsets unavailable or the read failed: trace it and let the sniff decide.
    Unknown,
}

/// Reads the socket behind `fd` of the current task: task->files->fdt->fd[fd]->private_data
/// (struct socket)->sk, then the addresses in sock_common. Offsets come from BTF.
#[inline(always)]
fn read_socket(fd: u32, event: &mut ConnEvent) -> SocketKind {
    if kernel_offset!(valid) == 0 {
        return SocketKind::Unknown;
    }
    match read_socket_inner(fd, event) {
        Ok(kind) => kind,
        Err(_) => {
            count_drop(DropReason::SocketReadFailed);
            SocketKind::Unknown
        }
    }
}

/// A `T` at `base + offset` in kernel memory. Safe for any address: the helper checks it
/// and returns an error for a bad one.
#[inline(always)]
fn read_kernel<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel validates the address; nothing is dereferenced here.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
        .map_err(|e| e as i64)
}

#[inline(always)]
fn read_ptr(base: *const u8, offset: u32) -> Result<*const u8, i64> {
    read_kernel::<*const u8>(base, offset)
}

/// task->files->fdt->fd[fd]->private_data (struct socket)->sk of the current task.
#[inline(always)]
fn sock_of(fd: u32) -> Result<*const u8, i64> {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = read_ptr(task, kernel_offset!(task_struct_files))?;
    let fdt = read_ptr(files, kernel_offset!(files_struct_fdt))?;
    let fd_array = read_ptr(fdt, kernel_offset!(fdtable_fd))?;
    let file = read_ptr(fd_array, fd.wrapping_mul(8))?;
    let socket = read_ptr(file, kernel_offset!(file_private_data))?;
    read_ptr(socket, kernel_offset!(socket_sk))
}

#[inline(always)]
fn read_socket_inner(fd: u32, event: &mut ConnEvent) -> Result<SocketKind, i64> {
    let sk = sock_of(fd)?;
    if sk.is_null() {
        return Ok(SocketKind::Other);
    }
    let family: u16 = read_kernel(sk, kernel_offset!(sock_common_family))?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(SocketKind::Other);
    }
    if kernel_offset!(sock_protocol) != u32::MAX {
        let protocol: u16 = read_kernel(sk, kernel_offset!(sock_protocol))?;
        if protocol != IPPROTO_TCP {
            return Ok(SocketKind::Other);
        }
    }
    event.family = family;
    let dport: u16 = read_kernel(sk, kernel_offset!(sock_common_dport))?;
    event.peer_port = u16::from_be(dport);
    event.local_port = read_kernel(sk, kernel_offset!(sock_common_num))?;
    if family == AF_INET {
        let peer: [u8; 4] = read_kernel(sk, kernel_offset!(sock_common_daddr))?;
        let local: [u8; 4] = read_kernel(sk, kernel_offset!(sock_common_rcv_saddr))?;
        event.peer_addr[..4].copy_from_slice(&peer);
        event.local_addr[..4].copy_from_slice(&local);
    } else {
        event.peer_addr = read_kernel(sk, kernel_offset!(sock_common_v6_daddr))?;
        event.local_addr = read_kernel(sk, kernel_offset!(sock_common_v6_rcv_saddr))?;
    }
    event.flags |= CONN_FLAG_ADDRS_KNOWN;
    Ok(SocketKind::TcpInet)
}

// ---- data ------------------------------------------------------------------------------

macro_rules! data_tracepoints {
    ($($enter:ident / $exit:ident => $direction:expr, $kind:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            on_data_enter(&ctx, $direction, $kind);
            0
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_data_exit(&ctx, $direction, $kind);
            0
        }
    )*};
}

/// How the enter probe finds the bytes: the buffer argument itself, an iovec array
/// argument, a msghdr argument (whose iovecs are read at entry), or none at all.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Args {
    Buffer,
    Iovec,
    Msghdr,
    CountOnly,
}

data_tracepoints! {
    sys_enter_read / sys_exit_read => Direction::Ingress, Args::Buffer;
    sys_enter_recvfrom / sys_exit_recvfrom => Direction::Ingress, Args::Buffer;
    sys_enter_readv / sys_exit_readv => Direction::Ingress, Args::Iovec;
    sys_enter_recvmsg / sys_exit_recvmsg => Direction::Ingress, Args::Msghdr;
    sys_enter_write / sys_exit_write => Direction::Egress, Args::Buffer;
    sys_enter_sendto / sys_exit_sendto => Direction::Egress, Args::Buffer;
    sys_enter_writev / sys_exit_writev => Direction::Egress, Args::Iovec;
    sys_enter_sendmsg / sys_exit_sendmsg => Direction::Egress, Args::Msghdr;
    sys_enter_sendfile64 / sys_exit_sendfile64 => Direction::Egress, Args::CountOnly;
}

/// Where a data syscall's bytes are, from its arguments (fd, buffer or iovec/msghdr, count).
#[inline(always)]
fn inflight_of(
    fd: u32,
    arg1: u64,
    arg2: u64,
    direction: Direction,
    args: Args,
) -> Option<InflightIo> {
    let (buf, kind, iov_count) = match args {
        Args::Buffer => (arg1, BUF_PLAIN, 0),
        Args::CountOnly => (0, BUF_NONE, 0),
        Args::Iovec => (arg1, BUF_IOVEC, arg2 as u32),
        Args::Msghdr => {
            // struct msghdr: msg_iov at 16, msg_iovlen at 24.
            // SAFETY: the helper validates the user pointer.
            let iov = unsafe { bpf_probe_read_user((arg1 + 16) as *const u64) };
            // SAFETY: as above.
            let count = unsafe { bpf_probe_read_user((arg1 + 24) as *const u64) };
            match (iov, count) {
                (Ok(iov), Ok(count)) => (iov, BUF_IOVEC, count as u32),
                _ => {
                    count_drop(DropReason::ReadUserFailed);
                    return None;
                }
            }
        }
    };
    Some(InflightIo {
        buf,
        // SAFETY: helper without preconditions.
        ts_enter: unsafe { bpf_ktime_get_ns() },
        fd,
        direction: direction as u32,
        kind,
        iov_count,
    })
}

/// Every data syscall has the fd first and the buffer (or iovec/msghdr) second.
#[inline(always)]
fn on_data_enter(ctx: &TracePointContext, direction: Direction, args: Args) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = slot(ctx, ARG0);
    let fd = fd as u32;
    // Connections exist only for traced processes, so this lookup is the whole filter.
    let key = conn_key((pid_tgid >> 32) as u32, fd);
    // SAFETY: read-only access to a plain value.
    let state = match unsafe { CONNS.get(key) } {
        Some(state) => *state,
        // SAFETY: as above, after adopt_inherited registered it.
        None if adopt_inherited(pid_tgid, fd) => match unsafe { CONNS.get(key) } {
            Some(state) => *state,
            None => return,
        },
        None => return,
    };
    if state.protocol == PROTO_OTHER {
        return;
    }
    if adopting((pid_tgid >> 32) as u32) {
        // Entered since the agent adopted it: nothing to recover for this descriptor.
        let _ = ADOPTED_PENDING.remove(key);
    }
    let Some(inflight) = inflight_of(fd, slot(ctx, ARG1), slot(ctx, ARG2), direction, args) else {
        return;
    };
    if INFLIGHT_IO.insert(pid_tgid, inflight, 0).is_err() {
        count_drop(DropReason::InflightTableFull);
    }
}

#[inline(always)]
fn on_data_exit(ctx: &TracePointContext, direction: Direction, args: Args) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let inflight = match (unsafe { INFLIGHT_IO.get(pid_tgid) }).copied() {
        Some(inflight) => {
            let _ = INFLIGHT_IO.remove(pid_tgid);
            inflight
        }
        None => match adopted_blocked_syscall(pid_tgid, direction, args) {
            Some(inflight) => inflight,
            None => return,
        },
    };
    let ret = slot(ctx, RET) as i64;
    // Errors (EAGAIN included) and EOF move no bytes: nothing to account.
    if ret <= 0 {
        return;
    }
    finish_data(pid_tgid, &inflight, ret as u64);
}

/// Reports the `moved` bytes of a finished data syscall on a traced connection.
#[inline(always)]
fn finish_data(pid_tgid: u64, inflight: &InflightIo, moved: u64) {
    let key = conn_key((pid_tgid >> 32) as u32, inflight.fd);
    let Some(state) = CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: the LRU map value stays valid for the duration of the program.
    let state = unsafe { &mut *state };
    if state.unannounced != 0 && !announce(pid_tgid, inflight.fd, state) {
        // These bytes are lost with the announcement: the stream starts mid-message once it
        // gets through, and a body's bytes must not make the connection "not HTTP".
        *lost_flag(state, inflight.direction) = 1;
        state.sniff_budget = MID_STREAM_SNIFFS;
        return;
    }
    // The sequence number of the first byte moved: the counter at exit minus the bytes.
    let seq = if state.protocol == PROTO_OTHER {
        TcpSeqs::UNKNOWN
    } else {
        let s = tcp_seqs_at_exit(state, inflight.fd, inflight.direction);
        TcpSeqs {
            first: s.first.wrapping_sub(moved as u32),
            ..s
        }
    };
    let mut goid = syscall_goid((pid_tgid >> 32) as u32);
    // A Python task matters only for what it writes (requests and responses), and only on
    // connections that may carry HTTP.
    if goid == 0 && inflight.direction == Direction::Egress as u32 && state.protocol != PROTO_OTHER
    {
        goid = python_task(pid_tgid);
    }
    match inflight.kind {
        // One call for both kinds: the gathering loop is the costliest code to verify.
        kind if state.protocol == PROTO_HTTP2 => emit_gathered(
            pid_tgid,
            inflight,
            moved,
            kind != BUF_PLAIN,
            state,
            goid,
            seq,
        ),
        BUF_PLAIN => emit_data(
            pid_tgid,
            inflight,
            inflight.buf,
            moved,
            moved,
            state,
            goid,
            seq,
        ),
        BUF_NONE => emit_data(pid_tgid, inflight, 0, moved, 0, state, goid, seq),
        _ => emit_iovecs(pid_tgid, inflight, moved, state, goid, seq),
    }
}

// ---- data, from the socket tracepoints (6.15+) ---------------------------------------------
//
// `sock:sock_send_length` and `sock:sock_recv_length` fire once per socket send or receive,
// after the bytes have moved, and never for pipes or files: the node's other reads and
// writes run no program at all. The syscall and its arguments (descriptor, buffer or
// iovecs, msghdr) are read from the user registers saved at syscall entry, the bytes from
// the user buffer as at a syscall exit. A send's start is stamped by
// `tcp:tcp_sendmsg_locked`, which fires before its first byte is queued.

/// Offsets in the `sock_send_length` / `sock_recv_length` records (checked by the loader):
/// `sk` at 8, then `family` (u16), `protocol` (u16) and `ret` (i32) in one 8-byte slot, then
/// `flags`.
const SOCK_LEN_SK: usize = 8;
const SOCK_LEN_WORD: usize = 16;
const SOCK_LEN_FLAGS: usize = 24;
const MSG_PEEK: u64 = 2;
const PT_REGS_ORIG_AX: u64 = 120;
const _: () = assert!(PT_REGS_DX + 24 == PT_REGS_ORIG_AX && PT_REGS_DI + 8 == PT_REGS_ORIG_AX);

// x86-64 syscall numbers of the data syscalls.
const NR_READ: u64 = 0;
const NR_WRITE: u64 = 1;
const NR_READV: u64 = 19;
const NR_WRITEV: u64 = 20;
const NR_SENDFILE: u64 = 40;
const NR_SENDTO: u64 = 44;
const NR_RECVFROM: u64 = 45;
const NR_SENDMSG: u64 = 46;
const NR_RECVMSG: u64 = 47;

/// The current syscall, from the user registers saved at its entry: its number and first
/// three arguments. `None` for kernel threads and io_uring workers, which have none.
struct SavedSyscall {
    nr: u64,
    args: [u64; 3],
}

#[inline(always)]
fn saved_syscall() -> Option<SavedSyscall> {
    let regs = user_regs()?;
    // dx, si, di and orig_ax are consecutive: one read.
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
    let [dx, si, di, nr] =
        unsafe { bpf_probe_read_kernel((regs + PT_REGS_DX) as *const [u64; 4]) }.ok()?;
    Some(SavedSyscall {
        nr,
        args: [di, si, dx],
    })
}

/// When the TCP send in progress on this CPU started, and by which thread. Per CPU rather
/// than per thread: no map insert or removal per send. A thread that moved to another CPU
/// mid-send, or was preempted by another sender, finds someone else's stamp and falls back
/// to the end of its send. The thread's context-switch count tells the stamp of its
/// current send from one it left on this CPU before it moved away mid-send: without it,
/// the thread's next send here would inherit that older start.
#[derive(Clone, Copy)]
#[repr(C)]
struct SendStart {
    pid_tgid: u64,
    /// The thread's voluntary + involuntary context switches when it was stamped.
    switches: u64,
    ts: u64,
    /// Bytes left to send when it started: a send cannot report more.
    left: u64,
}

#[map]
static SEND_START: PerCpuArray<SendStart> = PerCpuArray::with_max_entries(1, 0);

/// `msg_left` in the `tcp_sendmsg_locked` record.
const SENDMSG_LOCKED_LEFT: usize = 16;

/// The current task's context switches so far (`nvcsw + nivcsw`); 0 when unreadable.
#[inline(always)]
fn context_switches() -> u64 {
    let nvcsw = kernel_offset!(task_struct_nvcsw);
    if nvcsw == 0 {
        return 0;
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    read_kernel::<[u64; 2]>(task, nvcsw)
        .map(|[v, i]| v.wrapping_add(i))
        .unwrap_or(0)
}

#[tracepoint]
pub fn tcp_sendmsg_locked(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(start) = SEND_START.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let start = unsafe { &mut *start };
    let switches = context_switches();
    // Fires once per segment of a send: the first one stamps it. A send that slept for
    // memory is stamped again when it resumes: later than it began, never earlier.
    if start.pid_tgid != pid_tgid || start.switches != switches {
        start.pid_tgid = pid_tgid;
        start.switches = switches;
        // SAFETY: helper without preconditions.
        start.ts = unsafe { bpf_ktime_get_ns() };
        // skb_len (i32) then msg_left (i32) in one aligned slot.
        start.left = slot(&ctx, SENDMSG_LOCKED_LEFT) >> 32;
    }
    0
}

/// The start of this thread's send of `moved` bytes that just ended, if this CPU stamped
/// it since the thread last left the CPU; the stamp is used up either way.
#[inline(always)]
fn take_send_start(pid_tgid: u64, moved: u64) -> Option<u64> {
    let start = SEND_START.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let start = unsafe { &mut *start };
    if start.pid_tgid != pid_tgid {
        return None;
    }
    start.pid_tgid = 0;
    (start.left >= moved && start.switches == context_switches()).then_some(start.ts)
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    on_socket_io(&ctx, Direction::Ingress);
    0
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    on_socket_io(&ctx, Direction::Egress);
    0
}

#[inline(always)]
fn on_socket_io(ctx: &TracePointContext, direction: Direction) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let word = slot(ctx, SOCK_LEN_WORD);
    let family = word as u16;
    let protocol = (word >> 16) as u16;
    let ret = (word >> 32) as u32 as i32;
    let send_start = if direction == Direction::Egress {
        take_send_start(pid_tgid, ret.max(0) as u64)
    } else {
        None
    };
    if ret <= 0 || protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return;
    }
    // A 4-byte load: the record ends with `flags`, and the kernel refuses to attach a
    // program that reads past a record's end.
    // SAFETY: `flags` is a 4-byte-aligned field inside the record.
    let flags = unsafe { *(ctx.as_ptr().add(SOCK_LEN_FLAGS) as *const u32) };
    if direction == Direction::Ingress && flags as u64 & MSG_PEEK != 0 {
        return;
    }
    let Some(SavedSyscall {
        nr,
        args: [fd, buf, count],
    }) = saved_syscall()
    else {
        return;
    };
    let args = match (direction, nr) {
        (Direction::Ingress, NR_READ | NR_RECVFROM) => Args::Buffer,
        (Direction::Ingress, NR_READV) => Args::Iovec,
        (Direction::Ingress, NR_RECVMSG) => Args::Msghdr,
        (Direction::Egress, NR_WRITE | NR_SENDTO) => Args::Buffer,
        (Direction::Egress, NR_WRITEV) => Args::Iovec,
        (Direction::Egress, NR_SENDMSG) => Args::Msghdr,
        (Direction::Egress, NR_SENDFILE) => Args::CountOnly,
        // splice, io_uring, recvmmsg/sendmmsg: not traced (nor by the syscall programs).
        _ => return,
    };
    let fd = fd as u32;
    let sk = slot(ctx, SOCK_LEN_SK);
    let key = conn_key((pid_tgid >> 32) as u32, fd);
    // SAFETY: copied out at once.
    let mut known = unsafe { CONNS.get(key) }.copied();
    if let Some(state) = known
        && state.sk != 0
        && state.sk != sk
    {
        // Closed unseen (a close that did not end the socket, shared with another
        // process) and the descriptor now names another socket.
        end_connection(key, &state);
        known = None;
    }
    if let Some(state) = known
        && state.sk == 0
        // SAFETY: only tested for presence.
        && unsafe { PENDING_ACCEPT.get(sk) }.is_some()
    {
        // An adopted connection's socket is learnt only from its first byte, so its close
        // goes unseen while it is idle; a socket accepted since the agent started cannot
        // be it: the descriptor was closed and reused. Without this the new connection
        // would carry the old one's id and addresses (and never match its client).
        end_connection(key, &state);
        known = None;
    }
    let state = match known {
        Some(state) => state,
        None if register_on_first_data(pid_tgid, fd, sk) => {
            // SAFETY: copied out at once.
            match unsafe { CONNS.get(key) }.copied() {
                Some(state) => state,
                None => return,
            }
        }
        None => return,
    };
    if state.protocol == PROTO_OTHER {
        return;
    }
    if state.sk == 0 {
        // Registered by the agent (adopted at its start): now its socket is known.
        if let Some(s) = CONNS.get_ptr_mut(key) {
            // SAFETY: the LRU map value stays valid for the duration of the program.
            unsafe { (*s).sk = sk };
            let _ = SK_KEYS.insert(sk, key, 0);
        }
    }
    if adopting((pid_tgid >> 32) as u32) {
        let _ = ADOPTED_PENDING.remove(key);
    }
    let Some(mut inflight) = inflight_of(fd, buf, count, direction, args) else {
        return;
    };
    // A receive's bytes had arrived when it was called; a send starts where it was stamped.
    if let Some(start) = send_start {
        inflight.ts_enter = start;
    }
    finish_data(pid_tgid, &inflight, ret as u64);
}

/// The first byte on a descriptor the socket programs do not know: a connection accepted
/// by this (traced) process, or one it inherited. Returns whether it is now traced.
#[inline(always)]
fn register_on_first_data(pid_tgid: u64, fd: u32, sk: u64) -> bool {
    // SAFETY: copied out at once.
    if let Some(established) = unsafe { PENDING_ACCEPT.get(sk) }.copied() {
        let _ = PENDING_ACCEPT.remove(sk);
        if is_traced((pid_tgid >> 32) as u32) {
            register_connection(pid_tgid, fd, Role::Server, established);
            return true;
        }
        return false;
    }
    adopt_inherited(pid_tgid, fd)
}

/// Forgets connection `key` and tells user space it closed (if it was told of it).
#[inline(always)]
fn end_connection(key: u64, state: &ConnState) {
    let _ = CONNS.remove(key);
    if state.sk != 0 {
        let _ = SK_KEYS.remove(state.sk);
    }
    if state.unannounced != 0 {
        return;
    }
    // The connection's process and descriptor, not the current task's: a socket may be
    // closed in a softirq (a reset) or by another process.
    let tgid = key >> 32;
    emit_close((tgid << 32) | tgid, key as u32, state.conn_id);
}

/// Ends the connection of socket `sk`, if it is traced.
#[inline(always)]
fn end_socket(sk: u64) {
    // SAFETY: copied out at once.
    let Some(key) = unsafe { SK_KEYS.get(sk) }.copied() else {
        return;
    };
    // SAFETY: copied out at once.
    match unsafe { CONNS.get(key) }.copied() {
        Some(state) if state.sk == sk => end_connection(key, &state),
        _ => {
            let _ = SK_KEYS.remove(sk);
        }
    }
}

const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_SYN_RECV: u32 = 3;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LAST_ACK: u32 = 9;
const NR_CONNECT: u64 = 42;
const NR_SHUTDOWN: u64 = 48;

/// Connection lifecycle for the socket programs, from TCP state changes: a connect starts
/// (in the connecting syscall, whose first argument is the descriptor), a listener's
/// handshake completes (in a softirq: the accepting process is known at its first byte),
/// a socket is closed by its process or ends.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let sk = slot(&ctx, 8);
    let states = slot(&ctx, 16);
    let (old, new) = (states as u32, (states >> 32) as u32);
    // sport, dport, family, protocol.
    let word = slot(&ctx, 24);
    let (family, protocol) = ((word >> 32) as u16, (word >> 48) as u16);
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return 0;
    }
    match (old, new) {
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            // SAFETY: helper without preconditions.
            let _ = PENDING_ACCEPT.insert(sk, unsafe { bpf_ktime_get_ns() }, 0);
        }
        (_, TCP_SYN_SENT) => on_connect(sk),
        (_, TCP_CLOSE) => {
            let _ = PENDING_ACCEPT.remove(sk);
            end_socket(sk);
        }
        // Closed by its process (a shutdown keeps the descriptor and its reads).
        (TCP_ESTABLISHED, TCP_FIN_WAIT1) | (TCP_CLOSE_WAIT, TCP_LAST_ACK)
            if saved_syscall().is_none_or(|call| call.nr != NR_SHUTDOWN) =>
        {
            end_socket(sk);
        }
        _ => {}
    }
    0
}

/// A traced process starts a connect (or a fast-open send): the connection is registered
/// now and announced at its first byte, once the kernel has chosen its local port.
#[inline(always)]
fn on_connect(sk: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return;
    }
    let Some(SavedSyscall {
        nr,
        args: [fd, _, _],
    }) = saved_syscall()
    else {
        return;
    };
    if nr != NR_CONNECT && nr != NR_SENDTO && nr != NR_SENDMSG {
        return;
    }
    let fd = fd as u32;
    let key = conn_key((pid_tgid >> 32) as u32, fd);
    // SAFETY: copied out at once.
    if let Some(stale) = unsafe { CONNS.get(key) }.copied() {
        end_connection(key, &stale);
    }
    let state = ConnState {
        conn_id: next_conn_id(),
        role: Role::Client as u32,
        protocol: PROTO_UNKNOWN,
        lost_ingress: 0,
        lost_egress: 0,
        sk,
        unannounced: 1,
        sniff_budget: 0,
    };
    if CONNS.insert(key, state, 0).is_err() {
        count_drop(DropReason::ConnTableFull);
        return;
    }
    let _ = SK_KEYS.insert(sk, key, 0);
    if FORK_CHILD_PID_OFFSET.load() != 0 {
        let _ = SOCK_ROLES.insert(sk, Role::Client as u32, 0);
        let _ = HAS_CONNS.insert((pid_tgid >> 32) as u32, 1u8, 0);
    }
}

/// The first syscall on an adopted connection, entered before the programs were attached
/// (a server thread blocked in `read` on an idle keep-alive connection): its arguments are
/// read from the user registers saved at its entry.
#[inline(always)]
fn adopted_blocked_syscall(pid_tgid: u64, direction: Direction, args: Args) -> Option<InflightIo> {
    let tgid = (pid_tgid >> 32) as u32;
    if !adopting(tgid) {
        return None;
    }
    let regs = user_regs()?;
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
    let reg = |off: u64| unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.ok();
    let fd = reg(PT_REGS_DI)? as u32;
    let key = conn_key(tgid, fd);
    // SAFETY: presence test only.
    unsafe { ADOPTED_PENDING.get(key) }?;
    let _ = ADOPTED_PENDING.remove(key);
    inflight_of(fd, reg(PT_REGS_SI)?, reg(PT_REGS_DX)?, direction, args)
}

/// A record's TCP sequence numbers: see `DataEventHeader::tcp_seq` and `opposite_seq`.
/// Plain fields with flags rather than `Option`s: every byte is always written, since
/// older verifiers (5.10) reject reading an uninitialised payload on the stack.
#[derive(Clone, Copy)]
struct TcpSeqs {
    first: u32,
    opposite: u32,
    first_known: bool,
    opposite_known: bool,
}

impl TcpSeqs {
    const UNKNOWN: TcpSeqs = TcpSeqs {
        first: 0,
        opposite: 0,
        first_known: false,
        opposite_known: false,
    };
}

/// `write_seq` (egress) or `copied_seq` (ingress) of the connection's socket now, and the
/// other one; the socket is looked up once for a connection registered without it.
#[inline(always)]
fn tcp_seqs_at_exit(state: &mut ConnState, fd: u32, direction: u32) -> TcpSeqs {
    let (write, copied) = (
        kernel_offset!(tcp_sock_write_seq),
        kernel_offset!(tcp_sock_copied_seq),
    );
    let (field, other) = if direction == Direction::Egress as u32 {
        (write, copied)
    } else {
        (copied, write)
    };
    if kernel_offset!(valid) == 0 || field == 0 {
        return TcpSeqs::UNKNOWN;
    }
    if state.sk == 0 {
        state.sk = sock_of(fd).map_or(0, |sk| sk as u64);
        if state.sk == 0 {
            return TcpSeqs::UNKNOWN;
        }
    }
    let mut seqs = TcpSeqs::UNKNOWN;
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
    if let Ok(first) = unsafe { bpf_probe_read_kernel((state.sk + field as u64) as *const u32) } {
        seqs.first = first;
        seqs.first_known = true;
    }
    if seqs.first_known && other != 0 {
        // SAFETY: as above.
        if let Ok(o) = unsafe { bpf_probe_read_kernel((state.sk + other as u64) as *const u32) } {
            seqs.opposite = o;
            seqs.opposite_known = true;
        }
    }
    seqs
}

/// One record per iovec, in order, covering exactly the `moved` bytes; the last record
/// accounts for whatever lies beyond `MAX_IOVECS`.
#[inline(always)]
fn emit_iovecs(
    pid_tgid: u64,
    inflight: &InflightIo,
    moved: u64,
    state: &mut ConnState,
    goid: u64,
    seq: TcpSeqs,
) {
    let mut remaining = moved;
    for i in 0..MAX_IOVECS {
        if remaining == 0 || i >= inflight.iov_count {
            break;
        }
        let iov = inflight.buf + (i as u64) * 16;
        // SAFETY: the helper validates the user pointer.
        let (Ok(base), Ok(len)) = (unsafe { bpf_probe_read_user(iov as *const u64) }, unsafe {
            bpf_probe_read_user((iov + 8) as *const u64)
        }) else {
            count_drop(DropReason::ReadUserFailed);
            *lost_flag(state, inflight.direction) = 1;
            return;
        };
        let part = if len < remaining { len } else { remaining };
        let last = i + 1 == MAX_IOVECS || i + 1 == inflight.iov_count;
        let accounted = if last { remaining } else { part };
        let at = TcpSeqs {
            first: seq.first.wrapping_add((moved - remaining) as u32),
            ..seq
        };
        emit_data(pid_tgid, inflight, base, accounted, part, state, goid, at);
        remaining -= accounted;
    }
}

/// The loss flag of `ConnState` for one `Direction`.
#[inline(always)]
fn lost_flag(state: &mut ConnState, direction: u32) -> &mut u32 {
    if direction == Direction::Ingress as u32 {
        &mut state.lost_ingress
    } else {
        &mut state.lost_egress
    }
}

/// Sends one data record: `moved` bytes are accounted, of which up to `available` (and the
/// capture limit) are copied from `buf`.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into its two callers; a struct would only be unpacked again"
)]
fn emit_data(
    pid_tgid: u64,
    inflight: &InflightIo,
    buf: u64,
    moved: u64,
    available: u64,
    state: &mut ConnState,
    goid: u64,
    seq: TcpSeqs,
) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, used only within this program invocation.
    let event = unsafe { &mut *scratch };
    // Of an HTTP/2 connection only the record that sniffs it comes here; the rest are
    // gathered (`emit_gathered`).
    let limit = CAPTURE_BYTES.load() as u64;
    let mut len = if available < limit { available } else { limit };
    if len > MAX_CAPTURE_BYTES as u64 {
        len = MAX_CAPTURE_BYTES as u64;
    }
    let len = len as usize;
    if len > MAX_CAPTURE_BYTES {
        return;
    }
    if len > 0 {
        // SAFETY: the helper validates the user pointer.
        if unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut event.data[..len]) }.is_err() {
            count_drop(DropReason::ReadUserFailed);
            *lost_flag(state, inflight.direction) = 1;
            return;
        }
    }
    if state.protocol == PROTO_UNKNOWN && len >= 4 {
        let sniffed = Sniffed::of([event.data[0], event.data[1], event.data[2], event.data[3]]);
        if sniffed == Sniffed::Http1 {
            state.protocol = PROTO_HTTP1;
        } else if sniffed == Sniffed::Http2 && state.sniff_budget == 0 {
            // From its start only: mid-stream, its header blocks cannot be decoded.
            state.protocol = PROTO_HTTP2;
        } else if state.sniff_budget > 0 {
            // Picked up mid-stream: these may be the middle of a message.
            state.sniff_budget -= 1;
            *lost_flag(state, inflight.direction) = 1;
            return;
        } else {
            state.protocol = PROTO_OTHER;
            if let Some(counter) = NOT_HTTP.get_ptr_mut(sniffed as u32 - 1) {
                // SAFETY: per-CPU slot, no concurrent writer on this CPU.
                unsafe { *counter += 1 };
            }
            return;
        }
    }
    let record = event as *const DataEvent as *const u8;
    send_record(
        &mut event.header,
        record,
        size_of::<DataEvent>(),
        len,
        (pid_tgid, inflight, moved, goid, seq),
        state,
    );
}

/// What a data record says of its syscall: the thread, the syscall, the bytes it moved,
/// its goroutine or task, the TCP counters.
type RecordOf<'a> = (u64, &'a InflightIo, u64, u64, TcpSeqs);

/// Fills in the header of a data record whose first `len` bytes of payload are in place,
/// and sends the record (`record`: `record_size` bytes, the header first).
#[inline(always)]
fn send_record(
    header: &mut DataEventHeader,
    record: *const u8,
    record_size: usize,
    len: usize,
    (pid_tgid, inflight, moved, goid, seq): RecordOf<'_>,
    state: &mut ConnState,
) {
    let mut flags = 0;
    if (len as u64) < moved {
        flags |= DATA_FLAG_TRUNCATED;
    }
    // Losses are tracked per direction: a lost response must not be reported as a gap in
    // the request stream (and leave the response stream silently short).
    if *lost_flag(state, inflight.direction) != 0 {
        flags |= DATA_FLAG_GAP_BEFORE;
    }
    if seq.first_known {
        flags |= DATA_FLAG_TCP_SEQ;
    }
    if seq.opposite_known {
        flags |= DATA_FLAG_OPPOSITE_SEQ;
    }
    // Field by field: a whole-header temporary would cost stack the programs lack.
    header.header = self::header(
        EventKind::Data,
        pid_tgid,
        inflight.fd,
        state.conn_id,
        inflight.ts_enter,
    );
    header.direction = inflight.direction;
    header.flags = flags;
    header.syscall_len = moved as u32;
    header.captured_len = len as u32;
    header.goid = goid;
    header.tcp_seq = seq.first;
    header.opposite_seq = seq.opposite;
    let total = size_of::<DataEventHeader>() + len;
    if total > record_size {
        return;
    }
    // SAFETY: `record` points at a per-CPU record of `record_size` bytes.
    let bytes = unsafe { core::slice::from_raw_parts(record, record_size) };
    if EVENTS
        .output::<[u8]>(&bytes[..total], wakeup_flags(total))
        .is_err()
    {
        count_drop(DropReason::RingBufferFull);
        *lost_flag(state, inflight.direction) = 1;
    } else {
        *lost_flag(state, inflight.direction) = 0;
    }
}

/// Field `$f` of gathering slot `$g`'s cursor, read (`cursor!(g.f)`) or written
/// (`cursor!(g.f = v)`) with a volatile access, so it stays in map memory (see
/// `Gathered::cursor`).
macro_rules! cursor {
    ($g:ident . $f:ident = $v:expr) => {{
        let v = $v;
        // SAFETY: `$g` is this CPU's gathering slot, valid for this program invocation and
        // used by no one else; the address is one of its cursor's fields.
        unsafe { core::ptr::addr_of_mut!((*$g).cursor.$f).write_volatile(v) }
    }};
    ($g:ident . $f:ident) => {
        // SAFETY: as above.
        unsafe { core::ptr::addr_of!((*$g).cursor.$f).read_volatile() }
    };
}

/// An HTTP/2 syscall's bytes gathered into records of up to `GATHER_LIMIT` bytes each.
/// Bytes are copied in pieces of at most `GATHER_PIECE` at an offset below the limit, and
/// a record's length is masked to below twice the limit: the payload area has room for
/// both, so every copy's and every send's bounds are provable even where the verifier
/// forgets a checked bound (Linux 5.10 does when the compiler reloads the checked value
/// from the stack), though at most `GATHER_LIMIT` bytes are ever filled. Too large for a
/// per-CPU map value (32 KiB at most), it lives in an array with a slot per CPU (sized by
/// the loader).
#[repr(C)]
pub struct Gathered {
    /// The record sent: the header, then the gathered bytes.
    header: DataEventHeader,
    data: [u8; 2 * GATHER_LIMIT],
    /// The copy loop's state, kept in map memory rather than registers: the verifier does
    /// not track it, so every path through one step reaches the next step in the same
    /// state and is pruned there, instead of the paths multiplying step after step.
    cursor: GatherCursor,
}

#[repr(C)]
struct GatherCursor {
    /// The syscall: its buffer (or iovec array), iovec count, and bytes moved.
    buf: u64,
    iov_count: u64,
    moved: u64,
    /// Bytes of the syscall accounted by the records sent so far, and how many records.
    accounted: u64,
    records: u64,
    /// The first record's TCP position and flags, for the records after it.
    first_seq: u32,
    flags: u32,
    /// Bytes gathered into the current record.
    off: u64,
    /// Bytes moved and not yet walked.
    remaining: u64,
    /// The next iovec to read.
    index: u64,
    /// The current iovec, and how much of it is copied.
    base: u64,
    len: u64,
    used: u64,
}

/// Bytes one HTTP/2 record carries (a syscall fills as many as it needs, up to
/// `GATHER_RECORDS`).
const GATHER_LIMIT: usize = 32 * 1024;
const GATHER_PIECE: usize = 4096;

/// One slot per possible CPU, indexed by the current CPU (the loader sets the size).
#[map]
static GATHER: Array<Gathered> = Array::with_max_entries(1, 0);

/// iovecs a record of a vectored HTTP/2 syscall has steps for: gRPC's C core writes a
/// slice per frame header and payload, dozens per `sendmsg`.
const MAX_GATHERED_IOVECS: u64 = 64;
/// iovecs read per syscall in all (the kernel's `UIO_MAXIOV`); also the mark of a syscall
/// with one buffer, whose "iovec" is loaded from the start.
const MAX_TOTAL_IOVECS: u64 = 1024;
/// Loop steps per record: a step per iovec read and per copy (one per iovec plus the
/// extra pieces of large ones).
const GATHER_STEPS: u32 = 2 * MAX_GATHERED_IOVECS as u32 + (GATHER_LIMIT / GATHER_PIECE) as u32;
/// Records one HTTP/2 syscall fills at most: a read of a busy connection (a burst of calls
/// queued while the reader was descheduled, a large message) moves more than one record
/// holds, and a frame header lost past the first would make the connection undecodable
/// for good (HPACK is stateful). Bytes past these records are only counted.
const GATHER_RECORDS: u64 = 32;

/// The records of a syscall on an HTTP/2 connection: its bytes in order (from its
/// iovecs, or its one buffer when `iovecs` is false), `GATHER_LIMIT` per record, each
/// record accounting the bytes it holds (the last one, the rest); bytes past
/// `GATHER_RECORDS` records or `MAX_TOTAL_IOVECS` iovecs are only counted. Frame headers
/// sit in their own small iovecs, so a record per iovec (the HTTP/1 way) would drop them
/// past the eighth, and a write of many frames needs all of its headers.
#[inline(always)]
fn emit_gathered(
    pid_tgid: u64,
    inflight: &InflightIo,
    moved: u64,
    iovecs: bool,
    state: &mut ConnState,
    goid: u64,
    seq: TcpSeqs,
) {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let kept = gather_h2(
        cpu as u64,
        inflight.buf,
        inflight.iov_count as u64,
        moved,
        u64::from(iovecs),
    );
    // Opaque to the compiler, which would otherwise drop the bound below as implied by
    // the function's body; the verifier only knows the function returns a scalar.
    let kept = core::hint::black_box(kept);
    if kept < 0 {
        count_drop(DropReason::ReadUserFailed);
        *lost_flag(state, inflight.direction) = 1;
        return;
    }
    let Some(g) = GATHER.get_ptr_mut(cpu) else {
        return;
    };
    let remaining = cursor!(g.remaining);
    let first = if remaining == 0 { moved } else { kept as u64 };
    let (first_seq, flags) = {
        // SAFETY: this CPU's slot, used only within this program invocation.
        let record = unsafe { &mut *g };
        let bytes = record as *const Gathered as *const u8;
        send_record(
            &mut record.header,
            bytes,
            size_of::<DataEventHeader>() + GATHER_LIMIT,
            (kept as u64 & (2 * GATHER_LIMIT as u64 - 1)) as usize,
            (pid_tgid, inflight, first, goid, seq),
            state,
        );
        (record.header.tcp_seq, record.header.flags)
    };
    if remaining == 0 || *lost_flag(state, inflight.direction) != 0 {
        return;
    }
    cursor!(g.accounted = first);
    cursor!(g.records = 0);
    cursor!(g.first_seq = first_seq);
    cursor!(g.flags = flags);
    // Each record through a global function called from here, never from another one:
    // Linux before 6.x adds the stack frames of a whole call chain against its 512 bytes.
    for _ in 1..GATHER_RECORDS {
        match core::hint::black_box(gather_record(cpu as u64)) {
            GATHER_MORE => {}
            GATHER_DONE => return,
            GATHER_READ_FAILED => {
                count_drop(DropReason::ReadUserFailed);
                *lost_flag(state, inflight.direction) = 1;
                return;
            }
            _ => {
                count_drop(DropReason::RingBufferFull);
                *lost_flag(state, inflight.direction) = 1;
                return;
            }
        }
    }
}

/// `gather_record`'s outcomes: another record to send, the syscall's bytes all accounted,
/// user memory unreadable, the ring buffer full.
const GATHER_MORE: i64 = 0;
const GATHER_DONE: i64 = 1;
const GATHER_READ_FAILED: i64 = -1;
const GATHER_RING_FULL: i64 = -2;

/// Sends the next record of the syscall in CPU `cpu`'s gathering slot, after the first
/// (whose header `send_record` filled): it gathers the next `GATHER_LIMIT` bytes and
/// accounts them, or, when it is the last one, the rest. A global function, verified once
/// (see `gather_h2`).
#[unsafe(no_mangle)]
#[inline(never)]
pub fn gather_record(cpu: u64) -> i64 {
    let Some(g) = GATHER.get_ptr_mut(cpu as u32) else {
        return GATHER_DONE;
    };
    // SAFETY: `g` is this CPU's slot, valid for this program invocation, used by no one else.
    let header = unsafe { core::ptr::addr_of_mut!((*g).header) };
    if cursor!(g.remaining) == 0 {
        return GATHER_DONE;
    }
    let kept = gather_cursor(g);
    if kept < 0 {
        return GATHER_READ_FAILED;
    }
    let kept = kept as u64 & (2 * GATHER_LIMIT as u64 - 1);
    let (moved, accounted, records) = (
        cursor!(g.moved),
        cursor!(g.accounted),
        cursor!(g.records) + 1,
    );
    // Nothing more can be gathered (the iovec limit), or the record limit: this record
    // accounts the rest.
    let last = cursor!(g.remaining) == 0 || records + 1 >= GATHER_RECORDS || kept == 0;
    let this = if last {
        moved.saturating_sub(accounted)
    } else {
        kept
    };
    // The first record's TCP position and flags stay in the cursor; the continuation of a
    // record sent whole has no gap before it, and is truncated or not anew.
    let first_seq = cursor!(g.first_seq);
    let flags = cursor!(g.flags) & !(DATA_FLAG_GAP_BEFORE | DATA_FLAG_TRUNCATED);
    // SAFETY: the slot's header, written field by field.
    unsafe {
        (*header).syscall_len = this as u32;
        (*header).captured_len = kept as u32;
        (*header).tcp_seq = first_seq.wrapping_add(accounted as u32);
        (*header).flags = if kept < this {
            flags | DATA_FLAG_TRUNCATED
        } else {
            flags
        };
    }
    let total = size_of::<DataEventHeader>() + kept as usize;
    if total > size_of::<DataEventHeader>() + GATHER_LIMIT {
        return GATHER_DONE;
    }
    // SAFETY: the slot is `size_of::<Gathered>()` bytes, the header first.
    let bytes = unsafe { core::slice::from_raw_parts(g as *const u8, size_of::<Gathered>()) };
    if EVENTS
        .output::<[u8]>(&bytes[..total], wakeup_flags(total))
        .is_err()
    {
        return GATHER_RING_FULL;
    }
    if last {
        return GATHER_DONE;
    }
    cursor!(g.accounted = accounted + this);
    cursor!(g.records = records);
    GATHER_MORE
}

/// Copies a syscall's bytes into CPU `cpu`'s gathering slot; returns how many were copied,
/// or -1 when user memory could not be read. A global function with scalar arguments
/// only: the kernel verifies it once, on its own, instead of once for every way each
/// program reaches it (its loop made that cost more than the verifier allows).
#[unsafe(no_mangle)]
#[inline(never)]
pub fn gather_h2(cpu: u64, buf: u64, iov_count: u64, moved: u64, iovecs: u64) -> i64 {
    let Some(g) = GATHER.get_ptr_mut(cpu as u32) else {
        return 0;
    };
    cursor!(g.buf = buf);
    cursor!(g.iov_count = iov_count);
    cursor!(g.moved = moved);
    cursor!(g.remaining = moved);
    cursor!(g.used = 0);
    if iovecs != 0 {
        cursor!(g.index = 0);
        cursor!(g.base = 0);
        cursor!(g.len = 0);
    } else {
        // One buffer: the only "iovec", already loaded.
        cursor!(g.index = MAX_TOTAL_IOVECS);
        cursor!(g.base = buf);
        cursor!(g.len = moved);
    }
    gather_cursor(g)
}

/// Gathers the next record's bytes from where the cursor of slot `g` stands (at most
/// `GATHER_LIMIT`, in at most `GATHER_STEPS` steps); returns how many, or -1 when user
/// memory could not be read. Inlined into `gather_h2` and `gather_record`.
#[inline(always)]
fn gather_cursor(g: *mut Gathered) -> i64 {
    const LIMIT: u64 = GATHER_LIMIT as u64;
    const PIECE: u64 = GATHER_PIECE as u64;
    cursor!(g.off = 0);
    let (buf, iov_count) = (cursor!(g.buf), cursor!(g.iov_count));
    for _ in 0..GATHER_STEPS {
        let (off, remaining, used, len) = (
            cursor!(g.off),
            cursor!(g.remaining),
            cursor!(g.used),
            cursor!(g.len),
        );
        if remaining == 0 || off >= LIMIT {
            break;
        }
        if used >= len {
            let index = cursor!(g.index);
            if index >= iov_count || index >= MAX_TOTAL_IOVECS {
                break;
            }
            let iov = buf + index * 16;
            // SAFETY: the helper validates the user pointer.
            let Ok([b, l]) = (unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }) else {
                return -1;
            };
            cursor!(g.base = b);
            cursor!(g.len = l);
            cursor!(g.used = 0);
            cursor!(g.index = index + 1);
            continue;
        }
        let mut n = len - used;
        if n > remaining {
            n = remaining;
        }
        if n > PIECE {
            n = PIECE;
        }
        if n > LIMIT - off {
            n = LIMIT - off;
        }
        // Masks the verifier can follow: offset < LIMIT, length <= PIECE.
        let at = (off & (LIMIT - 1)) as usize;
        let n = n & (2 * PIECE - 1);
        if n == 0 || n > PIECE {
            break;
        }
        let src = cursor!(g.base) + used;
        // SAFETY: `at + n` <= LIMIT + PIECE, inside `data`; the helper validates the user
        // address.
        let r = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_user(
                (core::ptr::addr_of_mut!((*g).data) as *mut u8).add(at) as *mut core::ffi::c_void,
                n as u32,
                src as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            return -1;
        }
        cursor!(g.off = off + n);
        cursor!(g.used = used + n);
        cursor!(g.remaining = remaining - n);
    }
    let off = cursor!(g.off);
    (if off < LIMIT { off } else { LIMIT }) as i64
}

// ---- Go goroutines -----------------------------------------------------------------------

/// x86-64 kernel stacks are 16 KiB (without KASAN); a syscall's user registers are saved
/// at the top, below 16 bytes of padding on kernels built with FRED.
const THREAD_SIZE: u64 = 16384;
const PT_REGS_SIZE: u64 = 168;
const PT_REGS_R14: u64 = 8;
const PT_REGS_DX: u64 = 96;
const PT_REGS_SI: u64 = 104;
const PT_REGS_DI: u64 = 112;
const PT_REGS_CS: u64 = 136;
const USER_CS: u64 = 0x33;

/// The id of the goroutine whose syscall this is, in a followed Go process (Go keeps the
/// current `g` in R14, saved with the user registers at syscall entry); 0 if unknown.
#[inline(always)]
fn syscall_goid(tgid: u32) -> u64 {
    // SAFETY: copied out at once.
    let Some(go) = (unsafe { GO_PROCS.get(tgid) }).copied() else {
        return 0;
    };
    let Some(regs) = user_regs() else {
        return 0;
    };
    // SAFETY: bpf_probe_read_kernel tolerates bad addresses.
    match unsafe { bpf_probe_read_kernel((regs + PT_REGS_R14) as *const u64) } {
        Ok(g) => goid_of(g, &go),
        Err(_) => 0,
    }
}

/// The user registers of the current syscall, saved at the top of the task's kernel stack
/// (below 16 bytes of padding on kernels built with FRED): the layout whose saved code
/// segment is the user one.
#[inline(always)]
fn user_regs() -> Option<u64> {
    let stack_at = kernel_offset!(task_struct_stack);
    if stack_at == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_* tolerate bad addresses (they return an error).
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let stack = read_ptr(task, stack_at).ok()?;
        let top = stack as u64 + THREAD_SIZE;
        for pad in [0u64, 16] {
            let regs = top - pad - PT_REGS_SIZE;
            let cs = bpf_probe_read_kernel((regs + PT_REGS_CS) as *const u64).ok()?;
            if cs & 0xffff == USER_CS {
                return Some(regs);
            }
        }
    }
    None
}

/// In a followed CPython process, the asyncio task running on this thread: the address of
/// its coroutine's frame, which is the outermost of the generator-owned frames innermost on
/// the stack (the task's step, in C or in Python, is not a generator frame, and nor is the
/// event loop below it). Stable while the coroutine lives. 0 if the thread runs no
/// coroutine (a loop callback, a plain thread) or the walk ends before the task's frame.
#[inline(always)]
fn python_task(pid_tgid: u64) -> u64 {
    // SAFETY: copied out at once.
    let Some(py) = (unsafe { PY_PROCS.get((pid_tgid >> 32) as u32) }).copied() else {
        return 0;
    };
    // SAFETY: copied out at once.
    let Some(tstate) = (unsafe { PY_THREADS.get(pid_tgid) }).copied() else {
        return 0;
    };
    // SAFETY: the helper validates the user pointers.
    let read = |at: u64| unsafe { bpf_probe_read_user(at as *const u64) }.ok();
    let Some(cframe) = read(tstate + py.tstate_cframe as u64) else {
        return 0;
    };
    let Some(mut frame) = read(cframe + py.cframe_current_frame as u64) else {
        return 0;
    };
    // `previous` and `owner` come from one read: the owner byte lies within the 24 bytes
    // that start at `previous` (checked by the agent for each layout).
    let rel = py.frame_owner.wrapping_sub(py.frame_previous) as usize;
    if rel >= 24 {
        return 0;
    }
    let mut root = 0;
    for _ in 0..PY_MAX_FRAMES {
        if frame == 0 {
            return python_task_id(root, &py);
        }
        // SAFETY: the helper validates the user pointer.
        let Ok(window) =
            (unsafe { bpf_probe_read_user((frame + py.frame_previous as u64) as *const [u64; 3]) })
        else {
            return 0;
        };
        // A match, not an index: the verifier rejects variable offsets into the stack.
        let word = match rel / 8 {
            0 => window[0],
            1 => window[1],
            _ => window[2],
        };
        let owner = (word >> ((rel % 8) * 8)) as u8;
        if owner == PY_FRAME_OWNED_BY_GENERATOR {
            root = frame;
        } else if root != 0 {
            return python_task_id(root, &py);
        }
        frame = window[0];
    }
    // Still inside coroutine frames (or not yet at them): the task's own frame is unknown.
    0
}

/// A task's id: its coroutine frame's address, mixed with the frame's code object.
#[inline(always)]
fn python_task_id(frame: u64, py: &PyProc) -> u64 {
    if frame == 0 {
        return 0;
    }
    // SAFETY: the helper validates the user pointer.
    let code =
        unsafe { bpf_probe_read_user((frame + py.frame_code as u64) as *const u64) }.unwrap_or(0);
    frame ^ code.rotate_left(32)
}

/// `g.goid` of the goroutine at user address `g`; 0 if unreadable.
#[inline(always)]
fn goid_of(g: u64, go: &GoProc) -> u64 {
    if g == 0 {
        return 0;
    }
    // SAFETY: the helper validates the user pointer.
    unsafe { bpf_probe_read_user((g + go.goid_offset as u64) as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn go_proc(pid_tgid: u64) -> Option<GoProc> {
    // SAFETY: copied out at once.
    unsafe { GO_PROCS.get((pid_tgid >> 32) as u32) }.copied()
}

#[inline(always)]
fn emit_go(pid_tgid: u64, what: u32, goid: u64, arg: u64) {
    let now = {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_ns() }
    };
    let event = GoEvent {
        header: header(EventKind::Go, pid_tgid, 0, 0, now),
        what,
        _pad: 0,
        goid,
        arg,
    };
    if EVENTS
        .output::<GoEvent>(&event, wakeup_flags(size_of::<GoEvent>()))
        .is_err()
    {
        count_drop(DropReason::RingBufferFull);
    }
}

/// A request about to be written on `pc` (RAX, the receiver) for the current goroutine.
#[uprobe]
pub fn go_round_trip(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(go) = go_proc(pid_tgid) else {
        return 0;
    };
    // SAFETY: `regs` is the probe's own register context.
    let (g, pc) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    emit_go(pid_tgid, GO_ROUND_TRIP, goid_of(g, &go), pc);
    0
}

/// The connection's writeLoop goroutine writes for `pc` (RAX: `persistConnWriter` is one
/// pointer, passed by value).
#[uprobe]
pub fn go_conn_write(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(go) = go_proc(pid_tgid) else {
        return 0;
    };
    // SAFETY: as above.
    let (g, pc) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    emit_go(pid_tgid, GO_CONN_WRITE, goid_of(g, &go), pc);
    0
}

/// `newproc1(fn, callergp, callerpc)`: remember who is starting a goroutine on this thread.
#[uprobe]
pub fn go_newproc1(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(go) = go_proc(pid_tgid) else {
        return 0;
    };
    // SAFETY: as above.
    let callergp = unsafe { (*ctx.regs).rbx };
    let creator = goid_of(callergp, &go);
    if creator != 0 {
        let _ = GO_SPAWNING.insert(pid_tgid, creator, 0);
    }
    0
}

/// At a `RET` of `newproc1` (on the system stack: the same thread as its entry): RAX is the
/// new goroutine, already given its id. Report creator → child.
#[uprobe]
pub fn go_newproc1_ret(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before removal.
    let Some(creator) = (unsafe { GO_SPAWNING.get(pid_tgid) }).copied() else {
        return 0;
    };
    let _ = GO_SPAWNING.remove(pid_tgid);
    let Some(go) = go_proc(pid_tgid) else {
        return 0;
    };
    // SAFETY: as above.
    let newg = unsafe { (*ctx.regs).rax };
    let child = goid_of(newg, &go);
    if child != 0 {
        emit_go(pid_tgid, GO_SPAWN, creator, child);
    }
    0
}
