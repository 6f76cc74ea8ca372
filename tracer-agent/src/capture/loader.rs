//! Thin shell around aya: load the embedded object, fill in globals, attach the tracepoints,
//! and hand out the ring buffer and the drop counters.

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array as BpfArray, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint, UProbe, uprobe::UProbeScope},
};
use tracer_common::{
    ConnState, DROP_REASON_COUNT, GLOBAL_AGENT_TGID, GLOBAL_CAPTURE_BYTES, GLOBAL_FILTER_PIDS,
    GLOBAL_FORK_CHILD_PID_OFFSET, GLOBAL_OFFSETS, GLOBAL_WAKEUP_BYTES, GO_NEWPROC1_RET, GO_UPROBES,
    GoProc, KernelOffsets, MAP_ADOPTED_PENDING, MAP_ADOPTING, MAP_ADOPTING_ANY, MAP_CONNS,
    MAP_DROPS, MAP_EVENTS, MAP_GATHER, MAP_GO_PROCS, MAP_NOT_HTTP, MAP_PY_PROCS, MAP_PY_THREADS,
    MAP_TRACED_PIDS, MAX_CAPTURE_BYTES, MID_STREAM_SNIFFS, NOT_HTTP_KIND_COUNT, PROTO_UNKNOWN,
    PyProc, conn_key,
};

use crate::capture::events::{ConnOpened, Meta};
use crate::capture::{adopt, python};
use crate::spans::runtime::{self, GoVersion};

/// The compiled eBPF object, built by build.rs.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Connection lifecycle programs of the syscall hooks and the `syscalls` tracepoint each
/// attaches to (program name = tracepoint name).
const LIFECYCLE_TRACEPOINTS: &[&str] = &[
    "sys_exit_accept4",
    "sys_exit_accept",
    "sys_enter_connect",
    "sys_exit_connect",
    "sys_enter_close",
];

/// Data programs on the read/write family's `syscalls` tracepoints: they run for every
/// read and write on the node, of a socket or not.
const DATA_SYSCALL_TRACEPOINTS: &[&str] = &[
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_writev",
    "sys_exit_writev",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_sendfile64",
    "sys_exit_sendfile64",
];

/// The socket programs (category, tracepoint = program name): data and lifecycle from
/// socket and TCP tracepoints only, so no syscall tracepoint is enabled and the node's
/// other syscalls run no program (nor the kernel's syscall tracing path).
const SOCKET_TRACEPOINTS: &[(&str, &str)] = &[
    ("sock", "sock_send_length"),
    ("sock", "sock_recv_length"),
    ("tcp", "tcp_sendmsg_locked"),
    ("sock", "inet_sock_set_state"),
];

/// Which hooks see the data (`--data-hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataHooks {
    /// Socket tracepoints where the kernel has them, else syscall tracepoints.
    Auto,
    /// Socket and TCP tracepoints (`sock_send_length`, `sock_recv_length`,
    /// `tcp_sendmsg_locked`, `inet_sock_set_state`): Linux 6.15+.
    Socket,
    /// The read/write family's syscall tracepoints: every kernel.
    Syscalls,
}

impl std::fmt::Display for DataHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DataHooks::Auto => "auto",
            DataHooks::Socket => "socket",
            DataHooks::Syscalls => "syscalls",
        })
    }
}

pub struct CaptureConfig {
    pub pids: Vec<u32>,
    pub capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    pub offsets: KernelOffsets,
    pub data_hooks: DataHooks,
}

pub struct Capture {
    /// Keeps programs attached and maps alive; dropping it detaches everything.
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    not_http: PerCpuArray<MapData, u64>,
    pub attached: usize,
    /// The data hooks in use: `Socket` or `Syscalls`.
    pub data_hooks: DataHooks,
    /// Uprobe programs loaded for Go executables (attached per executable as they are found).
    pub go_programs: usize,
    /// Go executables (device, inode) whose uprobes are attached, and the functions found.
    go_binaries: std::collections::HashMap<(u64, u64), usize>,
    /// Go processes in `GO_PROCS`.
    go_followed: std::collections::HashSet<u32>,
    /// What `ADOPTING_ANY` says: written on a change only, and while false pruning has
    /// nothing to look at.
    adopting_any: bool,
    /// Why Go goroutines cannot be followed at all on this kernel, if so.
    go_unavailable: Option<String>,
    /// Followed CPython processes: where their interpreter keeps its threads.
    py_followed: std::collections::HashMap<u32, (python::Interpreter, python::Layout)>,
}

/// Connection ids given to adopted connections (`Capture::adopt`).
const ADOPTED_CONN_IDS: u64 = 1 << 63;
static ADOPTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether the asyncio tasks of a CPython process are followed, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PyFollow {
    Followed {
        version: python::PyVersion,
        threads: usize,
    },
    /// Followed since an earlier call.
    AlreadyFollowed,
    Unsupported(String),
}

/// Whether the goroutines of a Go process are followed, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoFollow {
    Followed {
        version: GoVersion,
        functions: usize,
    },
    /// Followed since an earlier call.
    AlreadyFollowed,
    Unsupported(String),
}

impl Capture {
    pub fn load(cfg: &CaptureConfig) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this tracer-agent binary was built without its eBPF programs (AYA_BUILD_SKIP): rebuild with `cargo xtask build`"
            );
        }
        if cfg.capture_bytes == 0 || cfg.capture_bytes as usize > MAX_CAPTURE_BYTES {
            bail!("--capture-bytes must be between 1 and {MAX_CAPTURE_BYTES}");
        }
        if !cfg.ring_buffer_bytes.is_power_of_two() || cfg.ring_buffer_bytes < 4096 {
            bail!("--ring-buffer-bytes must be a power of two of at least 4096");
        }
        let agent_tgid = std::process::id();
        let filter = u32::from(!cfg.pids.is_empty());
        // Following forked children is optional: without the record layout it is off.
        let fork_offset = fork_child_pid_offset().unwrap_or_else(|e| {
            tracing::warn!("sockets inherited by forked children will not be traced: {e:#}");
            0
        });
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_AGENT_TGID, &agent_tgid, true)
            .override_global(GLOBAL_FILTER_PIDS, &filter, true)
            .override_global(GLOBAL_CAPTURE_BYTES, &cfg.capture_bytes, true)
            .override_global(GLOBAL_OFFSETS, &cfg.offsets, true)
            .override_global(GLOBAL_FORK_CHILD_PID_OFFSET, &fork_offset, true)
            .override_global(
                GLOBAL_WAKEUP_BYTES,
                &tracer_common::wakeup_bytes(cfg.ring_buffer_bytes),
                true,
            )
            .map_max_entries(MAP_EVENTS, cfg.ring_buffer_bytes)
            // A slot per possible CPU: the programs index it by the CPU they run on.
            .map_max_entries(MAP_GATHER, possible_cpus()?)
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!("loading the eBPF object failed: {e}"))?;

        if !cfg.pids.is_empty() {
            let mut pids: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
                ebpf.map_mut(MAP_TRACED_PIDS)
                    .context("TRACED_PIDS map missing")?,
            )?;
            for pid in &cfg.pids {
                pids.insert(pid, 1, 0)?;
            }
        }

        let data_hooks = match (cfg.data_hooks, socket_hooks_unavailable(&cfg.offsets)) {
            (DataHooks::Syscalls, _) => DataHooks::Syscalls,
            (DataHooks::Auto, Some(why)) => {
                tracing::info!(
                    "data hooks: the syscall tracepoints (every read and write on the node runs a program): the socket tracepoints cannot be used: {why}"
                );
                DataHooks::Syscalls
            }
            (DataHooks::Socket | DataHooks::Auto, None) => DataHooks::Socket,
            (DataHooks::Socket, Some(why)) => bail!(
                "--data-hooks socket: {why}; use --data-hooks syscalls (or auto) on this kernel"
            ),
        };
        let mut attached = 0;
        let programs: Vec<(&str, &str)> = match data_hooks {
            DataHooks::Socket => SOCKET_TRACEPOINTS.to_vec(),
            _ => LIFECYCLE_TRACEPOINTS
                .iter()
                .chain(DATA_SYSCALL_TRACEPOINTS)
                .map(|p| ("syscalls", *p))
                .collect(),
        };
        for (category, program) in programs {
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the eBPF object"))?
                .try_into()?;
            tp.load().map_err(|e| verifier_error(program, e))?;
            tp.attach(category, program).map_err(|e| {
                anyhow!("attaching {program} to tracepoint {category}/{program} failed: {e}")
            })?;
            attached += 1;
        }

        if fork_offset != 0 {
            let (category, program) = ("sched", "sched_process_fork");
            let tp: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the eBPF object"))?
                .try_into()?;
            // Optional, like the offset: a kernel that refuses it still gets everything else.
            match tp
                .load()
                .map_err(|e| verifier_error(program, e))
                .and_then(|()| {
                    tp.attach(category, program)
                        .map(drop)
                        .map_err(|e| anyhow!("attaching {program} failed: {e}"))
                }) {
                Ok(()) => attached += 1,
                Err(e) => {
                    tracing::warn!("sockets inherited by forked children will not be traced: {e:#}")
                }
            }
        }

        // Loaded now (verified once), attached per Go executable as they are found.
        let mut go_unavailable = None;
        let mut go_programs = 0;
        for (program, _) in GO_UPROBES.iter().chain([&GO_NEWPROC1_RET]) {
            let loaded = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the eBPF object"))
                .and_then(|p| {
                    let up: &mut UProbe = p.try_into()?;
                    up.load().map_err(|e| verifier_error(program, e))
                });
            if let Err(e) = loaded {
                tracing::warn!("Go goroutines will not be followed: {e:#}");
                go_unavailable = Some(format!("{e:#}"));
                break;
            }
            go_programs += 1;
        }
        if offsets_missing_stack(&cfg.offsets) && go_unavailable.is_none() {
            go_unavailable = Some("task_struct.stack not found in the kernel's BTF".into());
        }

        let ring = RingBuf::try_from(ebpf.take_map(MAP_EVENTS).context("EVENTS map missing")?)?;
        let drops = PerCpuArray::try_from(ebpf.take_map(MAP_DROPS).context("DROPS map missing")?)?;
        let not_http = PerCpuArray::try_from(
            ebpf.take_map(MAP_NOT_HTTP)
                .context("NOT_HTTP map missing")?,
        )?;
        Ok(Capture {
            ebpf,
            ring: Some(ring),
            drops,
            not_http,
            attached,
            data_hooks,
            go_programs,
            go_binaries: Default::default(),
            go_followed: Default::default(),
            adopting_any: false,
            go_unavailable,
            py_followed: Default::default(),
        })
    }

    /// Follows the goroutines of Go process `tgid`: uprobes on its executable (once per
    /// file: they fire for every process running it) and its entry in `GO_PROCS`, which
    /// makes the syscall programs report the goroutine of each read and write.
    pub fn follow_go(&mut self, tgid: u32) -> GoFollow {
        match self.try_follow_go(tgid) {
            Ok(f) => f,
            Err(e) => GoFollow::Unsupported(format!("{e:#}")),
        }
    }

    fn try_follow_go(&mut self, tgid: u32) -> Result<GoFollow> {
        if let Some(why) = &self.go_unavailable {
            bail!("{why}");
        }
        if self.go_followed.contains(&tgid) {
            return Ok(GoFollow::AlreadyFollowed);
        }
        use std::os::unix::fs::MetadataExt as _;
        let exe = format!("/proc/{tgid}/exe");
        let mut file = std::fs::File::open(&exe).with_context(|| format!("cannot open {exe}"))?;
        let version = runtime::go_version(&mut file)?
            .context("no Go release in its build info (before Go 1.18, or a development build)")?;
        let goid_offset = runtime::goid_offset(version).with_context(|| {
            format!(
                "go{}.{}: the goroutine layout of this release is not known",
                version.0, version.1
            )
        })?;
        let meta = file.metadata()?;
        let inode = (meta.dev(), meta.ino());
        let functions = match self.go_binaries.get(&inode) {
            Some(n) => *n,
            None => {
                let mut found = 0;
                let mut missing = Vec::new();
                // The symbol table when there is one; else the runtime's own function table
                // (.gopclntab), which stripped executables keep.
                // One read of .gopclntab for the entries and for newproc1's returns.
                let mut symbols: Vec<&str> = GO_UPROBES.iter().map(|(_, s)| *s).collect();
                let ret_at = match symbols.iter().position(|s| *s == GO_NEWPROC1_RET.1) {
                    Some(at) => at,
                    None => {
                        symbols.push(GO_NEWPROC1_RET.1);
                        symbols.len() - 1
                    }
                };
                let from_pclntab = runtime::go_functions(&mut file, &symbols);
                for (i, (program, symbol)) in GO_UPROBES.iter().enumerate() {
                    let up: &mut UProbe = self
                        .ebpf
                        .program_mut(program)
                        .with_context(|| format!("program {program} missing"))?
                        .try_into()?;
                    let attached = up
                        .attach(*symbol, &exe, UProbeScope::AllProcesses)
                        .map(drop)
                        .or_else(|by_symbol| match &from_pclntab {
                            Ok(functions) => match functions[i] {
                                Some(f) => up
                                    .attach(f.offset, &exe, UProbeScope::AllProcesses)
                                    .map(drop)
                                    .map_err(|e| format!("at {:#x}: {e}", f.offset)),
                                None => Err(format!("{by_symbol}; not in .gopclntab either")),
                            },
                            Err(e) => Err(format!("{by_symbol}; .gopclntab: {e}")),
                        });
                    match attached {
                        Ok(()) => found += 1,
                        Err(e) => missing.push(format!("{symbol}: {e}")),
                    }
                }
                // The returns of newproc1 (where RAX is the new goroutine), found by
                // decoding its instructions.
                let (program, symbol) = GO_NEWPROC1_RET;
                let rets = from_pclntab
                    .map_err(anyhow::Error::from)
                    .and_then(|f| f[ret_at].context("not in .gopclntab"))
                    .and_then(|f| {
                        let rets = runtime::go_function_returns(&mut file, f)?;
                        anyhow::ensure!(!rets.is_empty(), "no RET found");
                        Ok(rets.into_iter().map(|r| f.offset + r).collect::<Vec<_>>())
                    });
                let up: &mut UProbe = self
                    .ebpf
                    .program_mut(program)
                    .with_context(|| format!("program {program} missing"))?
                    .try_into()?;
                let attached = rets.and_then(|offsets| {
                    for offset in offsets {
                        up.attach(offset, &exe, UProbeScope::AllProcesses)
                            .with_context(|| format!("at {offset:#x}"))?;
                    }
                    Ok(())
                });
                match attached {
                    Ok(()) => found += 1,
                    Err(e) => missing.push(format!("{symbol} returns: {e:#}")),
                }
                if found == 0 {
                    bail!("no function to probe: {}", missing.join("; "));
                }
                if !missing.is_empty() {
                    tracing::debug!("{exe}: not probed: {}", missing.join("; "));
                }
                self.go_binaries.insert(inode, found);
                found
            }
        };
        let mut procs: BpfHashMap<_, u32, GoProc> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(MAP_GO_PROCS)
                .context("GO_PROCS map missing")?,
        )?;
        procs.insert(
            tgid,
            GoProc {
                goid_offset,
                _pad: 0,
            },
            0,
        )?;
        self.go_followed.insert(tgid);
        Ok(GoFollow::Followed { version, functions })
    }

    /// Follows the asyncio tasks of CPython process `tgid`: its entry in `PY_PROCS` and its
    /// threads in `PY_THREADS`, which make the syscall programs report the task of each
    /// write. No probe is attached: the programs read the interpreter's frames.
    pub fn follow_python(&mut self, tgid: u32) -> PyFollow {
        if self.py_followed.contains_key(&tgid) {
            return PyFollow::AlreadyFollowed;
        }
        match self.try_follow_python(tgid) {
            Ok(f) => f,
            Err(e) => PyFollow::Unsupported(format!("{e:#}")),
        }
    }

    fn try_follow_python(&mut self, tgid: u32) -> Result<PyFollow> {
        let root = std::path::Path::new("/proc");
        let interp = python::locate(root, tgid)?;
        let mem = python::Memory::open(root, tgid)?;
        let version = python::version_of(mem.u32(interp.version)?);
        let layout = python::layout(version).ok_or(python::PyError::UnknownLayout(version))?;
        let threads = self.register_python_threads(tgid, &mem, &interp, &layout)?;
        if threads == 0 {
            bail!(python::PyError::NoThreads);
        }
        let mut procs: BpfHashMap<_, u32, PyProc> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(MAP_PY_PROCS)
                .context("PY_PROCS map missing")?,
        )?;
        procs.insert(tgid, layout.frames, 0)?;
        self.py_followed.insert(tgid, (interp, layout));
        Ok(PyFollow::Followed { version, threads })
    }

    /// Pairs the live threads of a CPython process with their thread states in
    /// `PY_THREADS` (keyed by pid_tgid, so a tid reused by another process never matches).
    fn register_python_threads(
        &mut self,
        tgid: u32,
        mem: &python::Memory,
        interp: &python::Interpreter,
        layout: &python::Layout,
    ) -> Result<usize> {
        let root = std::path::Path::new("/proc");
        let states = python::live_threads(root, tgid, python::thread_states(mem, interp, layout)?);
        let mut threads: BpfHashMap<_, u64, u64> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(MAP_PY_THREADS)
                .context("PY_THREADS map missing")?,
        )?;
        for &(tid, tstate) in &states {
            threads.insert(((tgid as u64) << 32) | tid as u64, tstate, 0)?;
        }
        Ok(states.len())
    }

    /// Forgets followed CPython processes that exited and their threads; registers threads
    /// that the followed ones started since.
    pub fn refresh_python(&mut self) {
        let followed: Vec<_> = self
            .py_followed
            .iter()
            .map(|(&t, &(i, l))| (t, i, l))
            .collect();
        let mut gone = Vec::new();
        for (tgid, interp, layout) in followed {
            if !std::path::Path::new(&format!("/proc/{tgid}")).exists() {
                gone.push(tgid);
                continue;
            }
            let registered = python::Memory::open(std::path::Path::new("/proc"), tgid)
                .map_err(anyhow::Error::from)
                .and_then(|mem| self.register_python_threads(tgid, &mem, &interp, &layout));
            if let Err(e) = registered {
                tracing::debug!("CPython process {tgid}: threads not refreshed: {e:#}");
            }
        }
        let Some(map) = self.ebpf.map_mut(MAP_PY_THREADS) else {
            return;
        };
        let Ok(mut threads) = BpfHashMap::<_, u64, u64>::try_from(map) else {
            return;
        };
        // Threads that ended, in followed processes or in gone ones.
        let stale: Vec<u64> = threads
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let (tgid, tid) = ((k >> 32) as u32, *k as u32);
                !std::path::Path::new(&format!("/proc/{tgid}/task/{tid}")).exists()
            })
            .collect();
        for k in stale {
            let _ = threads.remove(&k);
        }
        if let Some(map) = self.ebpf.map_mut(MAP_PY_PROCS)
            && let Ok(mut procs) = BpfHashMap::<_, u32, PyProc>::try_from(map)
        {
            for tgid in gone {
                let _ = procs.remove(&tgid);
                self.py_followed.remove(&tgid);
            }
        }
    }

    /// Registers connections that predate the agent (found by `adopt::scan`) in the
    /// programs' connection table, so their next reads and writes are captured, and returns
    /// the open events the pipeline needs for them. A descriptor the programs registered
    /// meanwhile (a new connection at a reused number) is left alone.
    pub fn adopt(&mut self, found: Vec<adopt::Found>, now_ns: u64) -> Result<Vec<ConnOpened>> {
        let mut conns: BpfHashMap<_, u64, ConnState> =
            BpfHashMap::try_from(self.ebpf.map_mut(MAP_CONNS).context("CONNS map missing")?)?;
        let mut opened = Vec::with_capacity(found.len());
        let mut pending = Vec::new();
        for f in found {
            let key = conn_key(f.tgid, f.fd);
            if conns.get(&key, 0).is_ok() {
                continue;
            }
            // Ids the programs never make: theirs count up from 1 in the bits above 12.
            let conn_id =
                ADOPTED_CONN_IDS | ADOPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let state = ConnState {
                conn_id,
                role: f.conn.role as u32,
                protocol: PROTO_UNKNOWN,
                lost_ingress: 0,
                lost_egress: 0,
                sk: 0,
                unannounced: 0,
                sniff_budget: MID_STREAM_SNIFFS,
            };
            if conns.insert(key, state, 0).is_err() {
                break; // the table is full: the rest stay untraced
            }
            pending.push((f.tgid, key));
            opened.push(ConnOpened {
                meta: Meta {
                    tgid: f.tgid,
                    tid: f.tgid,
                    fd: f.fd,
                    conn_id,
                    ts_enter_ns: now_ns,
                    ts_exit_ns: now_ns,
                    cgroup_id: f.cgroup_id,
                },
                role: f.conn.role,
                local: Some(f.conn.local),
                peer: Some(f.conn.peer),
                comm: f.comm,
            });
        }
        // A thread blocked in a read since before the programs were attached completes it
        // without an entry record: these let the exit take its arguments from the registers.
        let mut adopted: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(MAP_ADOPTED_PENDING)
                .context("ADOPTED_PENDING map missing")?,
        )?;
        for &(_, key) in &pending {
            adopted.insert(key, 1, 0)?;
        }
        let mut adopting: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(MAP_ADOPTING)
                .context("ADOPTING map missing")?,
        )?;
        for &(tgid, _) in &pending {
            let _ = adopting.insert(tgid, 1, 0);
        }
        if !pending.is_empty() {
            self.set_adopting_any(true)?;
        }
        Ok(opened)
    }

    /// Tells the programs whether `ADOPTING` has entries at all.
    fn set_adopting_any(&mut self, any: bool) -> Result<()> {
        let mut flag: BpfArray<_, u32> = BpfArray::try_from(
            self.ebpf
                .map_mut(MAP_ADOPTING_ANY)
                .context("ADOPTING_ANY map missing")?,
        )?;
        flag.set(0, u32::from(any), 0)?;
        self.adopting_any = any;
        Ok(())
    }

    /// Stops looking at the registers of processes whose adopted connections have all been
    /// entered since (or that exited).
    pub fn prune_adopting(&mut self) {
        if !self.adopting_any {
            return;
        }
        let waiting: std::collections::HashSet<u32> = match self
            .ebpf
            .map(MAP_ADOPTED_PENDING)
            .map(BpfHashMap::<_, u64, u8>::try_from)
        {
            Some(Ok(m)) => m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| {
                    std::path::Path::new(&format!("/proc/{}/fd/{}", k >> 32, *k as u32)).exists()
                })
                .map(|k| (k >> 32) as u32)
                .collect(),
            _ => return,
        };
        let Some(Ok(mut adopting)) = self
            .ebpf
            .map_mut(MAP_ADOPTING)
            .map(BpfHashMap::<_, u32, u8>::try_from)
        else {
            return;
        };
        let done: Vec<u32> = adopting
            .keys()
            .filter_map(Result::ok)
            .filter(|t| !waiting.contains(t))
            .collect();
        for tgid in &done {
            let _ = adopting.remove(tgid);
        }
        let empty = adopting.keys().next().is_none();
        if empty {
            let _ = self.set_adopting_any(false);
        }
    }

    /// Forgets followed Go processes that exited.
    pub fn prune_go(&mut self) {
        let Some(map) = self.ebpf.map_mut(MAP_GO_PROCS) else {
            return;
        };
        let Ok(mut procs) = BpfHashMap::<_, u32, GoProc>::try_from(map) else {
            return;
        };
        let gone: Vec<u32> = procs
            .keys()
            .filter_map(Result::ok)
            .filter(|tgid| !std::path::Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        for tgid in gone {
            let _ = procs.remove(&tgid);
            self.go_followed.remove(&tgid);
        }
    }

    /// The ring buffer, handed out once to the reader.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// Kernel-side drop counters summed over CPUs, indexed by `DropReason`.
    pub fn drops(&self) -> [u64; DROP_REASON_COUNT] {
        per_cpu_totals(&self.drops)
    }

    /// Connection ends that spoke something other than HTTP/1, summed over CPUs, indexed
    /// by `Sniffed as usize - 1`.
    pub fn not_http(&self) -> [u64; NOT_HTTP_KIND_COUNT] {
        per_cpu_totals(&self.not_http)
    }
}

fn per_cpu_totals<const N: usize>(array: &PerCpuArray<MapData, u64>) -> [u64; N] {
    let mut totals = [0u64; N];
    for (slot, total) in totals.iter_mut().enumerate() {
        if let Ok(values) = array.get(&(slot as u32), 0) {
            *total = values.iter().sum();
        }
    }
    totals
}

/// How many CPUs the kernel may ever bring online (`/sys/devices/system/cpu/possible`).
fn possible_cpus() -> Result<u32> {
    let n = aya::util::nr_cpus()
        .map_err(|(path, e)| anyhow!("cannot read the possible CPUs from {path}: {e}"))?;
    u32::try_from(n).context("more CPUs than a map can index")
}

fn offsets_missing_stack(offsets: &KernelOffsets) -> bool {
    offsets.valid == 0 || offsets.task_struct_stack == 0
}

/// Offset of `child_pid` in the `sched_process_fork` record, from its tracefs format. The
/// eBPF side knows the two layouts kernels have had (20 and 44); anything else is refused.
/// The record format of tracepoint `category/name`, from tracefs.
fn tracepoint_format(category: &str, name: &str) -> Result<String> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            std::fs::read_to_string(format!("{root}/events/{category}/{name}/format")).ok()
        })
        .with_context(|| {
            format!("the {category}/{name} tracepoint is missing (or tracefs is not mounted)")
        })
}

/// Why the socket data hooks cannot run here, if so: the tracepoints (6.15+ for
/// `tcp_sendmsg_locked`) with the record layouts the programs read, and the task's kernel
/// stack, where the syscall's registers are.
fn socket_hooks_unavailable(offsets: &KernelOffsets) -> Option<String> {
    if offsets_missing_stack(offsets) {
        return Some("task_struct.stack is not in the kernel's BTF".into());
    }
    if offsets.task_struct_nvcsw == 0 {
        return Some("task_struct.nvcsw/nivcsw are not in the kernel's BTF".into());
    }
    let expected: &[(&str, &str, Layout)] = &[
        ("sock", "sock_send_length", SOCK_LENGTH_LAYOUT),
        ("sock", "sock_recv_length", SOCK_LENGTH_LAYOUT),
        ("tcp", "tcp_sendmsg_locked", &[("msg_left", 20)]),
        (
            "sock",
            "inet_sock_set_state",
            &[
                ("skaddr", 8),
                ("oldstate", 16),
                ("newstate", 20),
                ("family", 28),
                ("protocol", 30),
            ],
        ),
    ];
    for (category, name, fields) in expected {
        let format = match tracepoint_format(category, name) {
            Ok(f) => f,
            Err(e) => return Some(format!("{e:#}")),
        };
        if let Some(why) = layout_mismatch(&format, fields) {
            return Some(format!("the {category}/{name} record {why}"));
        }
    }
    None
}

/// Which of `fields` (name, offset) a tracepoint format does not have where expected.
fn layout_mismatch(format: &str, fields: &[(&str, u32)]) -> Option<String> {
    fields.iter().find_map(|(field, offset)| {
        (parse_field_offset(format, field) != Some(*offset))
            .then(|| format!("has no {field} at offset {offset}"))
    })
}

/// Fields of a tracepoint record a program reads: (name, offset).
type Layout = &'static [(&'static str, u32)];

/// Where the socket programs read the `sock_*_length` records.
const SOCK_LENGTH_LAYOUT: Layout = &[("family", 16), ("protocol", 18), ("ret", 20), ("flags", 24)];

fn fork_child_pid_offset() -> Result<u32> {
    let format = tracepoint_format("sched", "sched_process_fork")?;
    let offset = parse_field_offset(&format, "child_pid")
        .context("no child_pid field in the sched_process_fork format")?;
    if offset != 20 && offset != 44 {
        bail!("unknown sched_process_fork layout (child_pid at offset {offset})");
    }
    Ok(offset)
}

/// `field:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;` → 20.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let (decl, rest) = line.trim().strip_prefix("field:")?.split_once(';')?;
        if decl.split_whitespace().last()? != field {
            return None;
        }
        rest.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))?
            .parse()
            .ok()
    })
}

/// The verifier log is long: keep the error to one line and put the log under debug.
fn verifier_error(program: &str, err: ProgramError) -> anyhow::Error {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &err
    {
        tracing::debug!("verifier log for {program}:\n{verifier_log}");
        return anyhow!(
            "the kernel verifier rejected {program} ({io_error}); rerun with RUST_LOG=debug to see the verifier log"
        );
    }
    anyhow!("loading {program} failed: {err}")
}

#[cfg(test)]
mod tests {
    use super::{SOCK_LENGTH_LAYOUT, layout_mismatch, parse_field_offset};

    #[test]
    fn finds_child_pid_in_both_fork_layouts() {
        let new = "\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        let old = "\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(new, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(old, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(old, "parent_pid"), None);
    }

    /// `sock_recv_length` as Linux 6.3+ prints it, and a layout the programs cannot read.
    #[test]
    fn socket_tracepoint_layouts_are_checked() {
        let format = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;\n\
            \tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;\n\
            \tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;\n\
            \tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;\n";
        assert_eq!(layout_mismatch(format, SOCK_LENGTH_LAYOUT), None);
        let moved = format.replace("ret;\toffset:20", "ret;\toffset:24");
        assert_eq!(
            layout_mismatch(&moved, SOCK_LENGTH_LAYOUT).as_deref(),
            Some("has no ret at offset 20")
        );
        assert!(layout_mismatch("", SOCK_LENGTH_LAYOUT).is_some());
    }
}
