//! "Pods" on one machine: a process in its own network namespace (a veth to a bridge, its
//! own IP, `/etc/hosts` entries for the other pods) and its own cgroup v2, laid out as a
//! kubelet lays it out, so capture, attribution and linking are exercised as on a node:
//!
//! * systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope`
//! * cgroupfs driver: `kubepods/<qos>/pod<uid>/<id>`
//!
//! (Guaranteed pods sit directly below `kubepods.slice` / `kubepods`, as with a kubelet.)
//!
//! Every resource is owned by a guard ([`Bridge`], [`Pod`]) that removes it on drop, which
//! runs on test failures too (panics unwind). Names carry the owning process's pid, and a
//! sweep at the first [`Bridge::create`] removes what a killed run left behind (its pid is
//! gone). Needs root and iproute2.
//!
//! Self-contained (std, anyhow, libc): `xtask demo` compiles this same file.

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};

use crate::process::Wait;

/// Netns names: `tpod-<pid>-<seq>-<pod name>`.
const NETNS_PREFIX: &str = "tpod-";
/// Link names (at most 15 bytes): bridges `tpbr<pid>-<seq>`, host veth ends `tp<pid>-<seq>`.
const LINK_PREFIX: &str = "tp";
/// First group of every pod UID made here: marks our cgroups for the sweep (hex: "test case").
const UID_MAGIC: &str = "7e57ca5e";

/// Distinguishes bridges and pods of one process (tests may run on several threads).
static SEQ: AtomicU32 = AtomicU32::new(0);
/// Picking a free subnet and taking it must not interleave between threads.
static SUBNET_LOCK: Mutex<()> = Mutex::new(());
static SWEEP: std::sync::Once = std::sync::Once::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// The kubelet's systemd cgroup driver (and containerd's `SystemdCgroup = true`).
    Systemd,
    /// The kubelet's cgroupfs driver.
    Cgroupfs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    fn name(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }
}

fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as i32, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Runs `ip` with `args`; fails with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cgroup2 mount, from `/proc/self/mountinfo`: `/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    parse_cgroup2_mount(&info).context("no cgroup2 file system is mounted")
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `<id> <parent> <maj:min> <root> <mount point> <opts> [optional…] - <fstype> …`
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A Linux bridge with the first address of a /24 that no interface here uses; pods get
/// the others. Deleted on drop.
pub struct Bridge {
    pub name: String,
    /// `10.x.y.0`.
    net: [u8; 3],
}

impl Bridge {
    /// Sweeps leftovers of dead runs (once per process), then creates the bridge.
    pub fn create() -> Result<Bridge> {
        SWEEP.call_once(sweep_stale);
        let name = format!("{LINK_PREFIX}br{}-{}", std::process::id(), next_seq());
        let _lock = SUBNET_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let used = ip(&["-o", "-4", "addr", "show"])?;
        // 10.240.0.0/12 holds 4096 /24s; start at one derived from the pid so concurrent
        // runs rarely probe the same ones.
        let start = std::process::id() as usize * 7 + next_seq() as usize;
        let net = (0..4096)
            .map(|i| {
                let n = (start + i) % 4096;
                [10, 240 + (n / 256) as u8, (n % 256) as u8]
            })
            .find(|[a, b, c]| !used.contains(&format!("inet {a}.{b}.{c}.")))
            .context("no free /24 in 10.240.0.0/12")?;
        ip(&["link", "add", &name, "type", "bridge"])?;
        let bridge = Bridge { name, net };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", bridge.gateway()),
            "dev",
            &bridge.name,
        ])?;
        ip(&["link", "set", &bridge.name, "up"])?;
        Ok(bridge)
    }

    /// The bridge's own address: the pods' default gateway and the root namespace's
    /// source address towards them.
    pub fn gateway(&self) -> Ipv4Addr {
        self.ip(1)
    }

    /// Address `host` (2..=254) of the bridge's subnet.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.net;
        Ipv4Addr::new(a, b, c, host)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

pub struct PodSpec<'a> {
    /// The pod's name: its hostname in `/etc/hosts` and part of its netns name.
    pub name: &'a str,
    pub ip: Ipv4Addr,
    /// `/etc/hosts` entries inside the pod (the other pods, by name).
    pub hosts: &'a [(&'a str, Ipv4Addr)],
    pub qos: Qos,
    pub cgroup_layout: CgroupLayout,
    /// Program and arguments.
    pub cmd: &'a [OsString],
    pub env: &'a [(&'a str, OsString)],
    /// Working directory of the process (default: the test's).
    pub cwd: Option<&'a Path>,
}

/// A process running as a pod. Dropping it kills every process of its cgroup and removes
/// its cgroups, network namespace, veth and hosts file.
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Pod UID in its canonical (`-`) form.
    pub uid: String,
    /// The 64-hex container id the cgroup is named after.
    pub container_id: String,
    netns: String,
    veth: String,
    /// The container's cgroup (absolute path under the cgroup2 mount).
    cgroup: PathBuf,
    /// Cgroup directories this pod created, deepest first: removed in that order.
    created_dirs: Vec<PathBuf>,
    child: Option<Child>,
    log: PathBuf,
}

impl Pod {
    /// Creates the pod's namespace, veth and cgroup, and starts `spec.cmd` inside both:
    /// the process is in its cgroup and namespace from its first instruction.
    pub fn start(bridge: &Bridge, spec: PodSpec<'_>) -> Result<Pod> {
        let seq = next_seq();
        let pid = std::process::id();
        let (uid, container_id) = ids(pid, seq);
        let mut pod = Pod {
            name: spec.name.to_owned(),
            ip: spec.ip,
            netns: format!("{NETNS_PREFIX}{pid}-{seq}-{}", spec.name),
            veth: format!("{LINK_PREFIX}{pid}-{seq}"),
            cgroup: PathBuf::new(),
            created_dirs: Vec::new(),
            child: None,
            log: std::env::temp_dir().join(format!("tpod-{pid}-{seq}-{}.log", spec.name)),
            uid,
            container_id,
        };
        // From here on, Drop undoes whatever was set up if a later step fails.
        pod.network(bridge, &spec)?;
        pod.cgroups(spec.qos, spec.cgroup_layout)?;
        pod.spawn(&spec)?;
        Ok(pod)
    }

    fn network(&mut self, bridge: &Bridge, spec: &PodSpec<'_>) -> Result<()> {
        let ns = self.netns.clone();
        ip(&["netns", "add", &ns])?;
        // `ip netns exec` bind-mounts the files of /etc/netns/<ns>/ over /etc/: the pod's
        // own /etc/hosts, as a pod gets from its kubelet.
        let etc = Path::new("/etc/netns").join(&ns);
        fs::create_dir_all(&etc)?;
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
            spec.ip, spec.name
        );
        for (name, addr) in spec.hosts {
            hosts.push_str(&format!("{addr}\t{name}\n"));
        }
        fs::write(etc.join("hosts"), hosts)?;
        let peer = format!("{}p", self.veth);
        ip(&[
            "link", "add", &self.veth, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns])?;
        ip(&["-n", &ns, "link", "set", &peer, "name", "eth0"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", spec.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &bridge.gateway().to_string(),
        ])?;
        ip(&["link", "set", &self.veth, "master", &bridge.name])?;
        ip(&["link", "set", &self.veth, "up"])?;
        Ok(())
    }

    fn cgroups(&mut self, qos: Qos, layout: CgroupLayout) -> Result<()> {
        let root = cgroup2_root()?;
        let rel = cgroup_path(layout, qos, &self.uid, &self.container_id);
        let mut dir = root.clone();
        for component in rel.split('/') {
            dir.push(component);
            match fs::create_dir(&dir) {
                Ok(()) => self.created_dirs.push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("mkdir {}", dir.display())),
            }
        }
        self.created_dirs.reverse();
        self.cgroup = dir;
        Ok(())
    }

    fn spawn(&mut self, spec: &PodSpec<'_>) -> Result<()> {
        let (program, args) = spec.cmd.split_first().context("empty pod command")?;
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))
            .with_context(|| format!("opening {}/cgroup.procs", self.cgroup.display()))?;
        let log = fs::File::create(&self.log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in spec.env {
            cmd.env(k, v);
        }
        if let Some(dir) = spec.cwd {
            cmd.current_dir(dir);
        }
        let fd = procs.as_raw_fd();
        // SAFETY: between fork and exec only write(2) on an fd opened above (close-on-exec,
        // so the program does not inherit it); no allocation, no locks. Writing "0" moves
        // the writing process: the child joins its cgroup before `ip` execs.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start pod {}: {:?}", self.name, spec.cmd))?;
        drop(procs);
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The container's cgroup path relative to the cgroup2 mount, as `/proc/<pid>/cgroup`
    /// shows it (`/kubepods.slice/…`).
    pub fn cgroup_path(&self) -> String {
        let root = cgroup2_root().unwrap_or_default();
        format!(
            "/{}",
            self.cgroup
                .strip_prefix(&root)
                .unwrap_or(&self.cgroup)
                .display()
        )
    }

    /// What the pod's process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the pod accepts TCP connections on `port` (from the root namespace,
    /// through the bridge): the readiness signal of any server.
    pub fn wait_listening(&mut self, port: u16, timeout: Duration) -> Result<()> {
        let addr = SocketAddr::from((self.ip, port));
        let child = self
            .child
            .as_mut()
            .context("the pod's process was stopped")?;
        let wait = crate::process::wait_ready(
            child,
            timeout,
            || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
            crate::process::sleeping(Duration::from_millis(20)),
        )?;
        match wait {
            Wait::Ready => Ok(()),
            Wait::Exited(status) => bail!(
                "pod {} exited ({status}) before listening on {addr}:\n{}",
                self.name,
                self.log()
            ),
            Wait::TimedOut => bail!(
                "pod {} not listening on {addr} after {timeout:?}:\n{}",
                self.name,
                self.log()
            ),
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of pod {} ---\n{}", self.name, self.log());
        }
        if !self.cgroup.as_os_str().is_empty() {
            kill_cgroup(&self.cgroup);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The container's cgroup with whatever the app created below it; then the pod and
        // QoS levels this pod created, each only if empty (another pod may share them).
        for (i, dir) in self.created_dirs.iter().enumerate() {
            if i == 0 {
                remove_cgroup(dir);
            } else {
                let _ = fs::remove_dir(dir);
            }
        }
        let _ = ip(&["netns", "del", &self.netns]);
        // Normally gone with the namespace (the veth's other end lived in it).
        let _ = ip(&["link", "del", &self.veth]);
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&self.netns));
        let _ = fs::remove_file(&self.log);
    }
}

/// A pod UID and container id that encode the owner's pid (for the sweep) and are unique.
fn ids(pid: u32, seq: u32) -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let uid = format!(
        "{UID_MAGIC}-{:04x}-{:04x}-8{:03x}-{:012x}",
        pid >> 16,
        pid & 0xffff,
        seq & 0xfff,
        nanos & 0xffff_ffff_ffff
    );
    let container_id = format!("{UID_MAGIC}{pid:08x}{seq:08x}{nanos:016x}{:024x}", 0);
    (uid, container_id)
}

/// The container's cgroup, relative to the cgroup2 mount, as the kubelet (and containerd)
/// name it.
pub fn cgroup_path(layout: CgroupLayout, qos: Qos, uid: &str, container_id: &str) -> String {
    match (layout, qos.name()) {
        (CgroupLayout::Systemd, q) => {
            // systemd escapes `-` (its slice separator) as `_` in the pod's slice name.
            let escaped = uid.replace('-', "_");
            let pod_prefix = match q {
                Some(q) => format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}"),
                None => "kubepods.slice/kubepods".to_owned(),
            };
            format!("{pod_prefix}-pod{escaped}.slice/cri-containerd-{container_id}.scope")
        }
        (CgroupLayout::Cgroupfs, Some(q)) => format!("kubepods/{q}/pod{uid}/{container_id}"),
        (CgroupLayout::Cgroupfs, None) => format!("kubepods/pod{uid}/{container_id}"),
    }
}

/// Kills every process in `dir` (and below) and waits, bounded, until it is empty.
fn kill_cgroup(dir: &Path) {
    // cgroup.kill (Linux 5.14+) kills the whole subtree atomically, forks included.
    let killed = fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"))
        .is_ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cgroup_pids(dir);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        if !killed {
            for pid in pids {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for sub in subdirs(dir) {
        pids.extend(cgroup_pids(&sub));
    }
    pids
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a cgroup and its sub-cgroups. rmdir fails while a killed process is still
/// exiting: retried for a bounded time.
fn remove_cgroup(dir: &Path) {
    for sub in subdirs(dir) {
        remove_cgroup(&sub);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while fs::remove_dir(dir).is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY)) {
        if Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid a name made here encodes, if it is one of ours: `<prefix><pid>-<more>`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix(prefix)?.split_once('-')?;
    if rest.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Removes what runs whose process is gone left behind: their pods' processes and cgroups,
/// network namespaces, links and hosts files. Best effort: it never fails a run.
fn sweep_stale() {
    let dead = |pid: Option<u32>| pid.is_some_and(|p| !pid_alive(p));
    if let Ok(root) = cgroup2_root() {
        for top in ["kubepods.slice", "kubepods"] {
            sweep_cgroups(&root.join(top), 3, &dead);
        }
    }
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(owner_pid(name, NETNS_PREFIX)) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/etc/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if dead(owner_pid(&name, NETNS_PREFIX)) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for line in links.lines() {
            // `7: tp1234-3@if6: <…>`
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
                continue;
            };
            let pid = owner_pid(name, &format!("{LINK_PREFIX}br"))
                .or_else(|| owner_pid(name, LINK_PREFIX));
            if dead(pid) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// Finds pod cgroups with our UID below `dir` (QoS levels included) whose owner is dead,
/// and removes them. Returns whether it removed any.
fn sweep_cgroups(dir: &Path, depth: u32, dead: &dyn Fn(Option<u32>) -> bool) -> bool {
    let mut removed = false;
    for sub in subdirs(dir) {
        let name = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let uid = name
            .strip_suffix(".slice")
            .unwrap_or(&name)
            .rsplit_once("pod")
            .map(|(_, uid)| uid.replace('_', "-"));
        if let Some(uid) = uid.filter(|u| u.starts_with(UID_MAGIC)) {
            let mut groups = uid.split('-').skip(1);
            let pid = match (groups.next(), groups.next()) {
                (Some(hi), Some(lo)) => u32::from_str_radix(hi, 16)
                    .ok()
                    .zip(u32::from_str_radix(lo, 16).ok())
                    .map(|(hi, lo)| hi << 16 | lo),
                _ => None,
            };
            if dead(pid) {
                kill_cgroup(&sub);
                remove_cgroup(&sub);
                removed = true;
            }
        } else if depth > 1 {
            removed |= sweep_cgroups(&sub, depth - 1, dead);
        }
    }
    // A QoS or kubepods level the sweep emptied goes too; one that was empty before is not
    // ours to remove (a kubelet may own it).
    if removed {
        let _ = fs::remove_dir(dir);
    }
    removed
}

/// The lesson's demo as three pods on one bridge: `frontend` (Node.js, express + axios,
/// port 3000) → `backend` (Python, Flask + requests, port 8080) → `database` (Go net/http,
/// port 8080), calling each other by name through their `/etc/hosts`.
pub mod lesson {
    use super::*;

    pub const FRONTEND_PORT: u16 = 3000;
    pub const BACKEND_PORT: u16 = 8080;
    pub const DATABASE_PORT: u16 = 8080;

    /// Which `frontend` runs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Frontend {
        /// The lesson's `app.js`: forwards no headers.
        Lesson,
        /// The lesson's "Problem 2" fix: forwards the incoming trace headers.
        ForwardsTraceparent,
        /// Forwards malformed trace headers.
        ForwardsGarbage,
    }

    impl Frontend {
        fn script(self, paths: &Paths) -> PathBuf {
            match self {
                Frontend::Lesson => paths.apps.join("frontend/app.js"),
                Frontend::ForwardsTraceparent => paths.test_files.join("frontend/app-forward.js"),
                Frontend::ForwardsGarbage => paths.test_files.join("frontend/app-garbage.js"),
            }
        }
    }

    #[derive(Debug, Clone)]
    pub struct Options {
        pub frontend: Frontend,
        pub layout: CgroupLayout,
        /// Load tests/demo/oracle: each app copies the `x-request-id` of the request it
        /// serves onto its outgoing calls (ground truth for measuring linking).
        pub oracle: bool,
        /// Set `OTEL_SERVICE_NAME` in each pod's environment, as a Deployment would;
        /// otherwise the agent names services after their executables.
        pub service_names: bool,
    }

    /// Where the apps' sources and their installed dependencies live.
    #[derive(Debug, Clone)]
    pub struct Paths {
        /// The lesson's apps, as deployed: deploy/demo.
        pub apps: PathBuf,
        /// Frontend variants and the linking oracle: tests/demo.
        pub test_files: PathBuf,
        /// `frontend/node_modules`, `backend/site` (pip --target), `database/database`.
        pub deps: PathBuf,
    }

    impl Paths {
        /// The sources in the workspace at `root`, dependencies installed under `deps`.
        pub fn in_workspace(root: &Path, deps: PathBuf) -> Paths {
            Paths {
                apps: root.join("deploy/demo"),
                test_files: root.join("tests/demo"),
                deps,
            }
        }

        pub fn node_modules(&self) -> PathBuf {
            self.deps.join("frontend/node_modules")
        }

        pub fn python_site(&self) -> PathBuf {
            self.deps.join("backend/site")
        }

        pub fn database_bin(&self) -> PathBuf {
            self.deps.join("database/database")
        }

        /// Fails with the fix when the dependencies are not installed.
        pub fn check(&self) -> Result<()> {
            for needed in [
                self.node_modules().join("express/package.json"),
                self.node_modules().join("axios/package.json"),
                self.python_site().join("flask/__init__.py"),
                self.python_site().join("requests/__init__.py"),
                self.database_bin(),
            ] {
                if !needed.exists() {
                    bail!(
                        "{} is missing: `cargo xtask test` and `cargo xtask demo` install the demo's npm, PyPI and Go dependencies into {} (TRACER_DEMO_DIR overrides it)",
                        needed.display(),
                        self.deps.display()
                    );
                }
            }
            Ok(())
        }
    }

    /// The three pods; dropping it removes them, then the bridge.
    pub struct Demo {
        pub frontend: Pod,
        pub backend: Pod,
        pub database: Pod,
        pub bridge: Bridge,
    }

    impl Demo {
        /// Starts the pods (database, backend, frontend) and waits until each listens.
        pub fn start(paths: &Paths, opts: &Options) -> Result<Demo> {
            paths.check()?;
            let bridge = Bridge::create()?;
            let (f_ip, b_ip, d_ip) = (bridge.ip(2), bridge.ip(3), bridge.ip(4));
            let hosts = [("frontend", f_ip), ("backend", b_ip), ("database", d_ip)];
            let name = |s: &str| -> Vec<(&'static str, OsString)> {
                if opts.service_names {
                    vec![("OTEL_SERVICE_NAME", s.into())]
                } else {
                    Vec::new()
                }
            };
            let timeout = Duration::from_secs(30);

            let mut database = Pod::start(
                &bridge,
                PodSpec {
                    name: "database",
                    ip: d_ip,
                    hosts: &hosts,
                    qos: Qos::Guaranteed,
                    cgroup_layout: opts.layout,
                    cmd: &[paths.database_bin().into()],
                    env: &name("database"),
                    cwd: None,
                },
            )?;
            database.wait_listening(DATABASE_PORT, timeout)?;

            let mut python_path = OsString::from(paths.python_site());
            if opts.oracle {
                python_path.push(":");
                python_path.push(paths.test_files.join("oracle"));
            }
            let mut env = name("backend");
            env.push(("PYTHONPATH", python_path));
            env.push(("PYTHONUNBUFFERED", "1".into()));
            env.push(("PYTHONDONTWRITEBYTECODE", "1".into()));
            let mut backend = Pod::start(
                &bridge,
                PodSpec {
                    name: "backend",
                    ip: b_ip,
                    hosts: &hosts,
                    qos: Qos::BestEffort,
                    cgroup_layout: opts.layout,
                    cmd: &["python3".into(), paths.apps.join("backend/app.py").into()],
                    env: &env,
                    cwd: Some(&paths.apps.join("backend")),
                },
            )?;
            backend.wait_listening(BACKEND_PORT, timeout)?;

            let mut env = name("frontend");
            env.push(("NODE_PATH", paths.node_modules().into()));
            if opts.oracle {
                let mut require = OsString::from("--require ");
                require.push(paths.test_files.join("oracle/request-id.js"));
                env.push(("NODE_OPTIONS", require));
            }
            let mut frontend = Pod::start(
                &bridge,
                PodSpec {
                    name: "frontend",
                    ip: f_ip,
                    hosts: &hosts,
                    qos: Qos::Burstable,
                    cgroup_layout: opts.layout,
                    cmd: &["node".into(), opts.frontend.script(paths).into()],
                    env: &env,
                    cwd: Some(&paths.apps.join("frontend")),
                },
            )?;
            frontend.wait_listening(FRONTEND_PORT, timeout)?;
            Ok(Demo {
                frontend,
                backend,
                database,
                bridge,
            })
        }

        /// `http://<frontend pod IP>:3000/`
        pub fn frontend_url(&self) -> String {
            format!("http://{}:{FRONTEND_PORT}/", self.frontend.ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_pure_hosts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn lays_out_cgroups_like_a_kubelet() {
        let (uid, id) = ids(0x12_3456, 7);
        assert_eq!(uid.len(), 36);
        assert!(uid.starts_with("7e57ca5e-0012-3456-8007-"));
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let escaped = uid.replace('-', "_");
        assert_eq!(
            cgroup_path(CgroupLayout::Systemd, Qos::Burstable, &uid, &id),
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{escaped}.slice/cri-containerd-{id}.scope"
            )
        );
        assert_eq!(
            cgroup_path(CgroupLayout::Systemd, Qos::Guaranteed, &uid, &id),
            format!("kubepods.slice/kubepods-pod{escaped}.slice/cri-containerd-{id}.scope")
        );
        assert_eq!(
            cgroup_path(CgroupLayout::Cgroupfs, Qos::BestEffort, &uid, &id),
            format!("kubepods/besteffort/pod{uid}/{id}")
        );
        assert_eq!(
            cgroup_path(CgroupLayout::Cgroupfs, Qos::Guaranteed, &uid, &id),
            format!("kubepods/pod{uid}/{id}")
        );
    }

    #[test]
    fn names_encode_their_owner() {
        assert_eq!(owner_pid("tpod-4242-3-frontend", NETNS_PREFIX), Some(4242));
        assert_eq!(owner_pid("tpbr4242-0", "tpbr"), Some(4242));
        assert_eq!(owner_pid("tp4242-1", LINK_PREFIX), Some(4242));
        assert_eq!(owner_pid("tunl0", LINK_PREFIX), None);
        assert_eq!(owner_pid("tp0", LINK_PREFIX), None);
        assert!(format!("{LINK_PREFIX}br{}-{}", 4_194_304, 999).len() <= 15);
    }
}
