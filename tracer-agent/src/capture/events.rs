//! Decoding ring-buffer records into typed events. Pure: bytes in, values out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;
use tracer_common::{
    AF_INET, AF_INET6, CONN_FLAG_ADDRS_KNOWN, ConnEvent, DATA_FLAG_GAP_BEFORE,
    DATA_FLAG_OPPOSITE_SEQ, DATA_FLAG_TCP_SEQ, DATA_FLAG_TRUNCATED, DataEventHeader, Direction,
    EventHeader, EventKind, GO_CONN_WRITE, GO_ROUND_TRIP, GO_SPAWN, GoEvent, Role, UnknownTag,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {need} its kind needs")]
    Short { need: usize, got: usize },
    #[error(transparent)]
    Tag(#[from] UnknownTag),
    #[error("data record claims {claimed} payload bytes but carries {carried}")]
    PayloadLength { claimed: usize, carried: usize },
}

/// Fields every event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub ts_enter_ns: u64,
    pub ts_exit_ns: u64,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnOpened {
    pub meta: Meta,
    pub role: Role,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataChunk<'a> {
    pub meta: Meta,
    pub direction: Direction,
    /// Bytes the syscall moved; `payload.len()` is smaller when the copy was truncated.
    pub syscall_len: u32,
    pub truncated: bool,
    /// Earlier events of this connection were lost.
    pub gap_before: bool,
    /// The goroutine that made the syscall (followed Go processes only).
    pub goid: Option<u64>,
    /// TCP sequence number of the first byte moved, when the kernel's offsets are known.
    pub tcp_seq: Option<u32>,
    /// The other direction's counter at the syscall's exit (see
    /// [`DataEventHeader::opposite_seq`]).
    pub opposite_seq: Option<u32>,
    pub payload: &'a [u8],
}

/// What a uprobe on a followed Go executable saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoHandOff {
    /// Goroutine `goid` is about to write a request on connection `conn` (a `*persistConn`).
    RoundTrip { goid: u64, conn: u64 },
    /// Goroutine `goid` writes the requests of connection `conn` (its `writeLoop`).
    ConnWriter { goid: u64, conn: u64 },
    /// Goroutine `parent` started goroutine `child`.
    Spawn { parent: u64, child: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoObserved {
    pub tgid: u32,
    pub hand_off: GoHandOff,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureEvent<'a> {
    Opened(ConnOpened),
    Data(DataChunk<'a>),
    Closed(Meta),
    Go(GoObserved),
}

/// A record's fixed part. `aya::Pod` (implemented in tracer-common for the record types
/// only) promises a plain-data type, valid for any bit pattern.
fn read_struct<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: length checked; T: Pod is valid for any bit pattern; read_unaligned has no
    // alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn meta(h: &EventHeader) -> Meta {
    Meta {
        tgid: h.tgid,
        tid: h.tid,
        fd: h.fd,
        conn_id: h.conn_id,
        ts_enter_ns: h.ts_enter_ns,
        ts_exit_ns: h.ts_exit_ns,
        cgroup_id: h.cgroup_id,
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) are reported as plain IPv4.
fn socket_addr(family: u16, addr: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

pub fn decode(record: &[u8]) -> Result<CaptureEvent<'_>, DecodeError> {
    let header: EventHeader = read_struct(record)?;
    match EventKind::try_from(header.kind)? {
        EventKind::ConnOpen => {
            let ev: ConnEvent = read_struct(record)?;
            let known = ev.flags & CONN_FLAG_ADDRS_KNOWN != 0;
            let comm_len = ev
                .comm
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(ev.comm.len());
            Ok(CaptureEvent::Opened(ConnOpened {
                meta: meta(&ev.header),
                role: Role::try_from(ev.role)?,
                local: known
                    .then(|| socket_addr(ev.family, &ev.local_addr, ev.local_port))
                    .flatten(),
                peer: known
                    .then(|| socket_addr(ev.family, &ev.peer_addr, ev.peer_port))
                    .flatten(),
                comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
            }))
        }
        EventKind::Data => {
            let ev: DataEventHeader = read_struct(record)?;
            let start = size_of::<DataEventHeader>();
            let claimed = ev.captured_len as usize;
            let payload = record
                .get(start..start + claimed)
                .ok_or(DecodeError::PayloadLength {
                    claimed,
                    carried: record.len() - start,
                })?;
            Ok(CaptureEvent::Data(DataChunk {
                meta: meta(&ev.header),
                direction: Direction::try_from(ev.direction)?,
                syscall_len: ev.syscall_len,
                truncated: ev.flags & DATA_FLAG_TRUNCATED != 0,
                gap_before: ev.flags & DATA_FLAG_GAP_BEFORE != 0,
                goid: (ev.goid != 0).then_some(ev.goid),
                tcp_seq: (ev.flags & DATA_FLAG_TCP_SEQ != 0).then_some(ev.tcp_seq),
                opposite_seq: (ev.flags & DATA_FLAG_OPPOSITE_SEQ != 0).then_some(ev.opposite_seq),
                payload,
            }))
        }
        EventKind::Close => Ok(CaptureEvent::Closed(meta(&header))),
        EventKind::Go => {
            let ev: GoEvent = read_struct(record)?;
            let hand_off = match ev.what {
                GO_ROUND_TRIP => GoHandOff::RoundTrip {
                    goid: ev.goid,
                    conn: ev.arg,
                },
                GO_CONN_WRITE => GoHandOff::ConnWriter {
                    goid: ev.goid,
                    conn: ev.arg,
                },
                GO_SPAWN => GoHandOff::Spawn {
                    parent: ev.goid,
                    child: ev.arg,
                },
                value => {
                    return Err(DecodeError::Tag(UnknownTag {
                        what: "go event",
                        value,
                    }));
                }
            };
            Ok(CaptureEvent::Go(GoObserved {
                tgid: ev.header.tgid,
                hand_off,
            }))
        }
    }
}

/// The record bytes of a plain-old-data event struct, as the kernel side writes them.
fn struct_bytes<T: Copy>(v: &T, out: &mut Vec<u8>) {
    // SAFETY: only called with the repr(C) structs of tracer-common below, which have
    // explicit padding fields, so every byte is initialised.
    out.extend_from_slice(unsafe {
        std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>())
    });
}

/// The inverse of [`decode`] for a connection event: what the eBPF programs submit.
/// For tests, fuzzers and benchmarks that replay synthetic traffic.
pub fn encode_conn(ev: &ConnEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<ConnEvent>());
    struct_bytes(ev, &mut out);
    out
}

/// The inverse of [`decode`] for a data event; `header.captured_len` should equal
/// `payload.len()` for a well-formed record.
pub fn encode_data(header: &DataEventHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<DataEventHeader>() + payload.len());
    struct_bytes(header, &mut out);
    out.extend_from_slice(payload);
    out
}

/// The inverse of [`decode`] for a uprobe event on a Go executable.
pub fn encode_go(ev: &GoEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<GoEvent>());
    struct_bytes(ev, &mut out);
    out
}

/// The inverse of [`decode`] for a close event (a bare header).
pub fn encode_close(header: &EventHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(size_of::<EventHeader>());
    struct_bytes(header, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            tgid: 10,
            tid: 11,
            fd: 5,
            conn_id: 99,
            ts_enter_ns: 1000,
            ts_exit_ns: 2000,
            cgroup_id: 7,
        }
    }

    #[test]
    fn decodes_data_with_payload_and_flags() {
        let h = DataEventHeader {
            header: header(EventKind::Data),
            direction: Direction::Egress as u32,
            flags: DATA_FLAG_TRUNCATED | DATA_FLAG_GAP_BEFORE | DATA_FLAG_TCP_SEQ,
            syscall_len: 100,
            captured_len: 3,
            goid: 42,
            tcp_seq: 0xffff_fff0,
            opposite_seq: 77,
        };
        let mut rec = encode_data(&h, b"GET");
        let CaptureEvent::Data(d) = decode(&rec).unwrap() else {
            panic!("not data")
        };
        assert_eq!(d.payload, b"GET");
        assert_eq!(d.syscall_len, 100);
        assert!(d.truncated && d.gap_before);
        assert_eq!(d.direction, Direction::Egress);
        assert_eq!(d.meta.conn_id, 99);
        assert_eq!(d.goid, Some(42));
        assert_eq!(d.tcp_seq, Some(0xffff_fff0));
        // The other direction's counter only with its own flag.
        assert_eq!(d.opposite_seq, None);
        // A record shorter than its claimed payload is rejected, not read past its end.
        rec.truncate(rec.len() - 1);
        assert!(matches!(
            decode(&rec),
            Err(DecodeError::PayloadLength { .. })
        ));
    }

    #[test]
    fn decodes_go_hand_offs_and_rejects_unknown_ones() {
        let ev = |what, goid, arg| GoEvent {
            header: header(EventKind::Go),
            what,
            _pad: 0,
            goid,
            arg,
        };
        let cases = [
            (
                GO_ROUND_TRIP,
                GoHandOff::RoundTrip {
                    goid: 7,
                    conn: 0xc000,
                },
            ),
            (
                GO_CONN_WRITE,
                GoHandOff::ConnWriter {
                    goid: 7,
                    conn: 0xc000,
                },
            ),
            (
                GO_SPAWN,
                GoHandOff::Spawn {
                    parent: 7,
                    child: 0xc000,
                },
            ),
        ];
        for (what, want) in cases {
            let CaptureEvent::Go(g) = decode(&encode_go(&ev(what, 7, 0xc000))).unwrap() else {
                panic!("not a go event")
            };
            assert_eq!((g.tgid, g.hand_off), (10, want));
        }
        assert!(decode(&encode_go(&ev(9, 1, 2))).is_err());
        let short = encode_go(&ev(GO_SPAWN, 1, 2));
        assert!(decode(&short[..short.len() - 1]).is_err());
    }

    #[test]
    fn decodes_connection_addresses_including_v4_mapped() {
        let mut ev = ConnEvent {
            header: header(EventKind::ConnOpen),
            role: Role::Server as u32,
            flags: CONN_FLAG_ADDRS_KNOWN,
            family: AF_INET6,
            local_port: 8080,
            peer_port: 50000,
            ..Default::default()
        };
        ev.local_addr = Ipv6Addr::LOCALHOST.octets();
        ev.peer_addr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        ev.comm[..4].copy_from_slice(b"curl");
        let CaptureEvent::Opened(o) = decode(&encode_conn(&ev)).unwrap() else {
            panic!("not open")
        };
        assert_eq!(o.local, Some("[::1]:8080".parse().unwrap()));
        assert_eq!(o.peer, Some("10.1.2.3:50000".parse().unwrap()));
        assert_eq!(o.comm, "curl");
        assert_eq!(o.role, Role::Server);

        ev.flags = 0;
        let CaptureEvent::Opened(o) = decode(&encode_conn(&ev)).unwrap() else {
            panic!("not open")
        };
        assert_eq!((o.local, o.peer), (None, None));
    }

    #[test]
    fn rejects_short_records_and_unknown_tags() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let mut h = header(EventKind::Close);
        h.kind = 42;
        assert!(matches!(
            decode(&encode_close(&h)),
            Err(DecodeError::Tag(_))
        ));
        let open = encode_close(&header(EventKind::ConnOpen));
        assert!(matches!(decode(&open), Err(DecodeError::Short { .. })));
    }
}
