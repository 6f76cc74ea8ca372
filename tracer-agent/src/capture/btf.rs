//! A minimal reader of kernel BTF: just enough to find the byte offset of a struct member
//! (descending into anonymous structs and unions). Rust eBPF has no CO-RE relocations, so the
//! agent resolves the few offsets its programs need here and passes them in as a global.

use std::collections::HashMap;

use thiserror::Error;
use tracer_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or truncated header)")]
    BadHeader,
    #[error("BTF type section is truncated or has an unknown kind {0}")]
    BadType(u32),
    #[error("struct {0} not found in kernel BTF")]
    NoStruct(String),
    #[error("member {1} of struct {0} not found in kernel BTF")]
    NoMember(String, String),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// For modifiers and typedefs: the referenced type.
    referenced: u32,
    members: Vec<Member>,
}

/// Parsed BTF: types by id (1-based) and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

/// A resolved member: byte offset from the start of the struct, and whether it is a bitfield.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberOffset {
    pub bytes: u32,
    pub bitfield: bool,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(data, 4).ok_or(BtfError::BadHeader)? as usize;
        let type_off = u32_at(data, 8).ok_or(BtfError::BadHeader)? as usize;
        let type_len = u32_at(data, 12).ok_or(BtfError::BadHeader)? as usize;
        let str_off = u32_at(data, 16).ok_or(BtfError::BadHeader)? as usize;
        let str_len = u32_at(data, 20).ok_or(BtfError::BadHeader)? as usize;
        let types_start = hdr_len + type_off;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::BadHeader)?
            .to_vec();
        let section = data
            .get(types_start..types_start + type_len)
            .ok_or(BtfError::BadHeader)?;

        // Type id 0 is `void`.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            referenced: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < section.len() {
            let name = u32_at(section, at).ok_or(BtfError::BadType(0))?;
            let info = u32_at(section, at + 4).ok_or(BtfError::BadType(0))?;
            let size_or_type = u32_at(section, at + 8).ok_or(BtfError::BadType(0))?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw_offset = u32_at(section, m + 8).ok_or(BtfError::BadType(kind))?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (raw_offset & 0xff_ffff, raw_offset >> 24)
                        } else {
                            (raw_offset, 0)
                        };
                        members.push(Member {
                            name: u32_at(section, m).ok_or(BtfError::BadType(kind))?,
                            type_id: u32_at(section, m + 4).ok_or(BtfError::BadType(kind))?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => return Err(BtfError::BadType(other)),
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                referenced: size_or_type,
                members,
            });
        }

        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let ty = &btf.types[id];
            if ty.kind == KIND_STRUCT && ty.name != 0 {
                let name = btf.string(ty.name).to_owned();
                // The first complete definition wins; later ones are duplicates.
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let start = offset as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.referenced
                }
                _ => return Some(ty),
            }
        }
        None
    }

    fn find_in(&self, ty: &Type, member: &str, depth: u32) -> Option<MemberOffset> {
        if depth > 8 {
            return None;
        }
        for m in &ty.members {
            if m.name != 0 {
                if self.string(m.name) == member {
                    return Some(MemberOffset {
                        bytes: m.bit_offset / 8,
                        bitfield: m.bitfield_size != 0 || m.bit_offset % 8 != 0,
                    });
                }
                continue;
            }
            // Anonymous struct or union: its members live at this member's offset.
            let inner = self.resolve(m.type_id)?;
            if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                && let Some(found) = self.find_in(inner, member, depth + 1)
            {
                return Some(MemberOffset {
                    bytes: found.bytes + m.bit_offset / 8,
                    bitfield: found.bitfield,
                });
            }
        }
        None
    }

    pub fn member_offset(&self, structure: &str, member: &str) -> Result<MemberOffset, BtfError> {
        let id = *self
            .structs_by_name
            .get(structure)
            .ok_or_else(|| BtfError::NoStruct(structure.to_owned()))?;
        let ty = &self.types[id as usize];
        self.find_in(ty, member, 0)
            .ok_or_else(|| BtfError::NoMember(structure.to_owned(), member.to_owned()))
    }

    fn byte_offset(&self, structure: &str, member: &str) -> Result<u32, BtfError> {
        self.member_offset(structure, member).map(|m| m.bytes)
    }

    /// Everything the programs need to read a socket's addresses from an fd.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        // `__sk_common` is the first member of `struct sock`, so sock_common offsets apply
        // to a `struct sock *` directly; checked rather than assumed.
        let sk_common = self.byte_offset("sock", "__sk_common")?;
        let common = |m: &str| self.byte_offset("sock_common", m).map(|o| o + sk_common);
        let protocol = match self.member_offset("sock", "sk_protocol") {
            Ok(MemberOffset {
                bytes,
                bitfield: false,
            }) => bytes,
            // Kernels before 5.6 pack sk_protocol in a bitfield: skip the TCP check there.
            _ => u32::MAX,
        };
        Ok(KernelOffsets {
            valid: 1,
            task_struct_files: self.byte_offset("task_struct", "files")?,
            files_struct_fdt: self.byte_offset("files_struct", "fdt")?,
            fdtable_fd: self.byte_offset("fdtable", "fd")?,
            file_private_data: self.byte_offset("file", "private_data")?,
            socket_sk: self.byte_offset("socket", "sk")?,
            sock_common_family: common("skc_family")?,
            sock_common_daddr: common("skc_daddr")?,
            sock_common_rcv_saddr: common("skc_rcv_saddr")?,
            sock_common_dport: common("skc_dport")?,
            sock_common_num: common("skc_num")?,
            sock_common_v6_daddr: common("skc_v6_daddr")?,
            sock_common_v6_rcv_saddr: common("skc_v6_rcv_saddr")?,
            sock_protocol: protocol,
            task_struct_stack: self.byte_offset("task_struct", "stack")?,
            // Optional: without them peers are keyed by request position only.
            tcp_sock_write_seq: self.byte_offset("tcp_sock", "write_seq").unwrap_or(0),
            tcp_sock_copied_seq: self.byte_offset("tcp_sock", "copied_seq").unwrap_or(0),
            // The programs read both counters in one go: only when they are adjacent.
            task_struct_nvcsw: match (
                self.byte_offset("task_struct", "nvcsw"),
                self.byte_offset("task_struct", "nivcsw"),
            ) {
                (Ok(v), Ok(i)) if i == v + 8 => v,
                _ => 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes: `struct inner { int a; int b; }` and
    /// `struct outer { int x; union { int y; struct { int p; int q; }; }; int bits:3; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0outer\0x\0y\0p\0q\0bits\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .map(|p| p as u32 + 1)
                .unwrap()
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner
        push(&[s("inner"), (KIND_STRUCT << 24) | 2, 8]);
        push(&[s("a"), 1, 0, s("b"), 1, 32]);
        // 3: anonymous struct { p; q }
        push(&[0, (KIND_STRUCT << 24) | 2, 8]);
        push(&[s("p"), 1, 0, s("q"), 1, 32]);
        // 4: anonymous union { y; struct 3 }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[s("y"), 1, 0, 0, 3, 0]);
        // 5: struct outer (kind_flag: offsets carry bitfield sizes)
        push(&[s("outer"), (1 << 31) | (KIND_STRUCT << 24) | 3, 16]);
        push(&[s("x"), 1, 0, 0, 4, 64, s("bits"), 1, (3 << 24) | 128]);

        let mut out = Vec::new();
        out.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        out.extend_from_slice(&24u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(types.len() as u32).to_le_bytes());
        out.extend_from_slice(&(types.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.byte_offset("inner", "b").unwrap(), 4);
        assert_eq!(btf.byte_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.byte_offset("outer", "y").unwrap(), 8);
        assert_eq!(btf.byte_offset("outer", "q").unwrap(), 12);
        let bits = btf.member_offset("outer", "bits").unwrap();
        assert!(bits.bitfield);
        assert_eq!(bits.bytes, 16);
    }

    #[test]
    fn reports_missing_names_and_garbage() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.byte_offset("nope", "x"),
            Err(BtfError::NoStruct("nope".into()))
        );
        assert_eq!(
            btf.byte_offset("outer", "zz"),
            Err(BtfError::NoMember("outer".into(), "zz".into()))
        );
        assert!(Btf::parse(b"garbage").is_err());
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    /// The running kernel's BTF must yield every offset the programs use.
    #[test]
    fn resolves_offsets_from_running_kernel() {
        let Ok(data) = std::fs::read(VMLINUX_BTF) else {
            panic!("{VMLINUX_BTF} is missing: this kernel has no BTF, which the agent requires");
        };
        let offsets = Btf::parse(&data).unwrap().kernel_offsets().unwrap();
        assert_eq!(offsets.valid, 1);
        assert_eq!(offsets.sock_common_rcv_saddr, offsets.sock_common_daddr + 4);
        assert_eq!(offsets.sock_common_num, offsets.sock_common_dport + 2);
        assert_ne!(offsets.sock_protocol, u32::MAX);
        assert_ne!(offsets.tcp_sock_write_seq, 0);
        assert_ne!(offsets.tcp_sock_copied_seq, 0);
        assert_ne!(offsets.task_struct_nvcsw, 0);
    }
}
