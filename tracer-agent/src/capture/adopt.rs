//! Connections that predate the agent: found in `/proc` when the agent starts, so a pooled
//! keep-alive connection is traced from its next request instead of staying dark until it
//! reconnects.
//!
//! Each process's socket descriptors (`/proc/<pid>/fd`, `socket:[inode]`) are matched with
//! the TCP table of its network namespace (`/proc/<pid>/net/tcp` and `tcp6`, read once per
//! namespace). An established connection whose local port is a listening port of that
//! namespace (on its address or a wildcard) is a server's, any other a client's. The parser
//! starts each stream at its next message; peer matching keys requests by TCP sequence
//! number, on which both ends agree whenever either began to watch.
//!
//! Parsing is pure; [`scan`] reads `/proc`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use tracer_common::Role;

/// `TCP_ESTABLISHED` and `TCP_LISTEN` in `/proc/net/tcp`'s `st` column.
const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0A;

/// One row of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

/// `0100007F:1F90` (IPv4: one little-endian word) or 32 hex digits (IPv6: four
/// little-endian words) and a big-endian hex port.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, word) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                word.copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The rows of a `/proc/net/tcp` or `tcp6` text; malformed rows are skipped.
pub fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            Some(TcpEntry {
                local: parse_addr(f.get(1)?)?,
                remote: parse_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// An established connection and its role, by socket inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub role: Role,
}

fn unspecified(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_unspecified(),
        // `::` listens on IPv4 too (v4-mapped local addresses).
        IpAddr::V6(v6) => v6.is_unspecified(),
    }
}

/// The established connections of one network namespace's table, each a server's when
/// its local port is listened on (on its address or a wildcard), else a client's.
pub fn established(table: &[TcpEntry]) -> HashMap<u64, Established> {
    let listening: HashSet<(IpAddr, u16)> = table
        .iter()
        .filter(|e| e.state == LISTEN)
        .map(|e| (e.local.ip(), e.local.port()))
        .collect();
    let listened = |local: SocketAddr| {
        listening.iter().any(|&(ip, port)| {
            port == local.port() && (ip == local.ip() || unspecified(ip) || mapped(ip, local.ip()))
        })
    };
    table
        .iter()
        .filter(|e| e.state == ESTABLISHED && e.inode != 0)
        .map(|e| {
            let role = if listened(e.local) {
                Role::Server
            } else {
                Role::Client
            };
            (
                e.inode,
                Established {
                    local: canonical(e.local),
                    peer: canonical(e.remote),
                    role,
                },
            )
        })
        .collect()
}

/// An IPv4 listener and a v4-mapped local address (or the reverse) are the same address.
fn mapped(a: IpAddr, b: IpAddr) -> bool {
    canonical(SocketAddr::new(a, 0)).ip() == canonical(SocketAddr::new(b, 0)).ip()
}

/// v4-mapped IPv6 addresses as IPv4, as the programs report them.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// `socket:[12345]` → 12345.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A connection found in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub tgid: u32,
    pub fd: u32,
    pub conn: Established,
    pub comm: String,
    /// The process's cgroup v2 id (0 when unknown).
    pub cgroup_id: u64,
}

/// Processes whose connections are looked at: `only` when given, else every process but
/// `skip`.
pub fn scan(proc_root: &Path, only: &[u32], skip: u32) -> Vec<Found> {
    let pids: Vec<u32> = if only.is_empty() {
        std::fs::read_dir(proc_root)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    } else {
        only.to_vec()
    };
    // Tables by network namespace: processes of one pod share one.
    let mut tables: HashMap<String, HashMap<u64, Established>> = HashMap::new();
    let cgroup_root =
        crate::enrich::cgroupfs::find_root(crate::enrich::cgroupfs::DEFAULT_CANDIDATES);
    let mut found = Vec::new();
    for pid in pids.into_iter().filter(|&p| p != skip) {
        let dir = proc_root.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue; // gone, or a kernel thread
        };
        let sockets: Vec<(u32, u64)> = fds
            .filter_map(|e| {
                let e = e.ok()?;
                let fd: u32 = e.file_name().to_str()?.parse().ok()?;
                let link = std::fs::read_link(e.path()).ok()?;
                Some((fd, socket_inode(link.to_str()?)?))
            })
            .collect();
        if sockets.is_empty() {
            continue;
        }
        let Ok(ns) = std::fs::read_link(dir.join("ns/net")) else {
            continue;
        };
        let table = tables
            .entry(ns.to_string_lossy().into_owned())
            .or_insert_with(|| {
                let mut rows = Vec::new();
                for name in ["net/tcp", "net/tcp6"] {
                    if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
                        rows.extend(parse_tcp_table(&text));
                    }
                }
                established(&rows)
            });
        let comm = std::fs::read_to_string(dir.join("comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        let cgroup_id = cgroup_root
            .as_deref()
            .map_or(0, |root| cgroup_id(root, &dir));
        for (fd, inode) in sockets {
            if let Some(conn) = table.get(&inode) {
                found.push(Found {
                    tgid: pid,
                    fd,
                    conn: *conn,
                    comm: comm.clone(),
                    cgroup_id,
                });
            }
        }
    }
    found
}

/// The cgroup v2 id of the process at `proc_dir` (the inode of its cgroup's directory under
/// `root`, as the programs report it), 0 when unknown: the enricher then reads
/// `/proc/<pid>/cgroup` itself.
fn cgroup_id(root: &Path, proc_dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(text) = std::fs::read_to_string(proc_dir.join("cgroup")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|path| std::fs::metadata(root.join(path.trim_start_matches('/'))).ok())
        .map_or(0, |m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:A0C2 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:A0C2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:A0C4 0100007F:1F91 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000
   4: 0200007F:0050 0100007F:B000 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 20 4 30 10 -1
garbage line
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:0050 0000000000000000FFFF00000200007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   2: 00000000000000000000000001000000:C350 00000000000000000000000001000000:0050 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 20 4 30 10 -1
";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tables_parse_and_roles_follow_the_listeners() {
        let mut rows = parse_tcp_table(TCP);
        assert_eq!(rows.len(), 5, "the garbage line is skipped");
        assert_eq!(rows[1].local, a("127.0.0.1:8080"));
        assert_eq!(rows[1].remote, a("127.0.0.1:41154"));
        rows.extend(parse_tcp_table(TCP6));
        assert_eq!(rows[6].local, a("[::ffff:127.0.0.1]:80"));
        assert_eq!(rows[7].local, a("[::1]:50000"));
        let conns = established(&rows);
        // 0.0.0.0:8080 listens: its accepted side is a server, the other end a client.
        assert_eq!(conns[&1002].role, Role::Server);
        assert_eq!(conns[&1002].peer, a("127.0.0.1:41154"));
        assert_eq!(conns[&1003].role, Role::Client);
        // Port 80 is listened on by `::` only: 127.0.0.2:80 (IPv4) is a server too.
        assert_eq!(conns[&1005].role, Role::Server);
        // A v4-mapped accepted connection is reported in IPv4 form.
        assert_eq!(conns[&2002].local, a("127.0.0.1:80"));
        assert_eq!(conns[&2002].role, Role::Server);
        // [::1]:50000 → [::1]:80: the local port is not listened on.
        assert_eq!(conns[&2003].role, Role::Client);
        // Not established (TIME_WAIT, inode 0) and listeners are not connections.
        assert_eq!(conns.len(), 5);
        assert!(!conns.contains_key(&1001));
    }

    #[test]
    fn socket_links_and_bad_addresses() {
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
        assert_eq!(parse_addr("0100007F"), None);
        assert_eq!(parse_addr("0100007F:ZZZZ"), None);
        assert_eq!(parse_addr("01007F:0050"), None);
    }

    /// This test process's own connection to itself is found, both ends, with their roles.
    #[test]
    fn scan_finds_this_process_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let me = std::process::id();
        let found = scan(Path::new("/proc"), &[me], 0);
        let local = client.local_addr().unwrap();
        let c = found
            .iter()
            .find(|f| f.conn.local == local)
            .expect("the client end");
        assert_eq!(c.conn.role, Role::Client);
        let s = found
            .iter()
            .find(|f| f.conn.peer == local)
            .expect("the server end");
        assert_eq!(s.conn.role, Role::Server);
        assert_eq!(s.conn.local, server.local_addr().unwrap());
        assert_ne!(c.fd, s.fd);
        assert!(scan(Path::new("/proc"), &[me], me).is_empty(), "skipped");
    }
}
