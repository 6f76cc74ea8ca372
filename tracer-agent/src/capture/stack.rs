//! Stack frames of the eBPF object's functions, read from its instructions: a guard against
//! programs that load on one kernel and not on another.
//!
//! The verifier refuses a program whose frame plus the frames of the functions it calls
//! exceed 512 bytes, and kernels count differently: a 6.18 build rounds each callee's frame
//! up to 16 bytes and adds it to the caller's, where older ones accepted the same object.
//! The test below holds every program, plus every function it could call, under the limit.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

/// The most stack a BPF program and the functions it calls may use together.
pub const MAX_STACK: u32 = 512;

/// One function of the object and the stack its own frame uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub name: String,
    pub section: String,
    pub bytes: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot parse the eBPF object")]
    Parse(#[from] object::Error),
    #[error("function {0} lies outside its section")]
    OutOfBounds(String),
}

/// The frame of every function symbol in the object's code sections.
pub fn frames(elf: &[u8]) -> Result<Vec<Frame>, StackError> {
    let file = object::File::parse(elf)?;
    let mut out = Vec::new();
    for symbol in file.symbols() {
        if symbol.kind() != SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        let Some(index) = symbol.section_index() else {
            continue;
        };
        let section = file.section_by_index(index)?;
        let data = section.data()?;
        let name = symbol.name()?.to_owned();
        let start = usize::try_from(symbol.address().saturating_sub(section.address()))
            .map_err(|_| StackError::OutOfBounds(name.clone()))?;
        let end = usize::try_from(symbol.size())
            .ok()
            .and_then(|size| start.checked_add(size))
            .filter(|&end| end <= data.len())
            .ok_or_else(|| StackError::OutOfBounds(name.clone()))?;
        out.push(Frame {
            name,
            section: section.name()?.to_owned(),
            bytes: frame_bytes(&data[start..end]),
        });
    }
    Ok(out)
}

/// The deepest stack offset the instructions reach: loads and stores relative to the frame
/// pointer (r10), and pointers into the frame made by copying r10 and adding a negative
/// offset (how a stack buffer is passed to a helper).
pub fn frame_bytes(code: &[u8]) -> u32 {
    const FP: u8 = 10;
    // Registers that hold r10 plus nothing, as far as a straight-line reading tells.
    let mut holds_fp = [false; 11];
    let mut deepest = 0u32;
    let mut at = 0;
    while at + 8 <= code.len() {
        let insn = &code[at..at + 8];
        let (op, dst, src) = (insn[0], insn[1] & 0x0f, insn[1] >> 4);
        let off = i16::from_le_bytes([insn[2], insn[3]]);
        let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
        let depth = |offset: i64| u32::try_from(-offset).unwrap_or(0);
        match op & 0x07 {
            // LDX: dst = *(src + off)
            0x01 if src == FP => deepest = deepest.max(depth(off.into())),
            // ST / STX: *(dst + off) = ...
            0x02 | 0x03 if dst == FP => deepest = deepest.max(depth(off.into())),
            _ => {}
        }
        match op {
            // mov64 dst, src
            0xbf => {
                if let Some(h) = holds_fp.get_mut(usize::from(dst)) {
                    *h = src == FP;
                }
            }
            // add64 dst, imm
            0x07 if holds_fp.get(usize::from(dst)).copied().unwrap_or(false) => {
                deepest = deepest.max(depth(imm.into()));
                holds_fp[usize::from(dst)] = false;
            }
            _ => {
                // Any other write to a register ends what it held; jumps and stores write
                // none. Conservative either way: a stale mark only over-counts.
                let class = op & 0x07;
                let writes_dst = matches!(class, 0x00 | 0x01 | 0x04 | 0x07);
                if writes_dst && let Some(h) = holds_fp.get_mut(usize::from(dst)) {
                    *h = false;
                }
                // A call clobbers r0-r5.
                if op == 0x85 {
                    holds_fp[..6].fill(false);
                }
            }
        }
        // lddw takes two slots.
        at += if op == 0x18 { 16 } else { 8 };
    }
    deepest
}

/// The frame the verifier charges for a called function: rounded up to 16 bytes (with the
/// JIT, which every supported kernel runs).
pub fn charged(bytes: u32) -> u32 {
    bytes.div_ceil(16) * 16
}

/// Programs whose own frame plus every function of `.text` (all of them, as if each called
/// the next: an upper bound on any call chain) pass `MAX_STACK`, with their totals.
pub fn over_limit(frames: &[Frame]) -> Vec<(String, u32)> {
    let callees: u32 = frames
        .iter()
        .filter(|f| f.section == ".text")
        .map(|f| charged(f.bytes))
        .sum();
    frames
        .iter()
        .filter(|f| f.section != ".text")
        .map(|f| (f.name.clone(), f.bytes + callees))
        .filter(|&(_, total)| total > MAX_STACK)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(op: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = op;
        b[1] = dst | (src << 4);
        b[2..4].copy_from_slice(&off.to_le_bytes());
        b[4..8].copy_from_slice(&imm.to_le_bytes());
        b
    }

    #[test]
    fn frame_from_stores_loads_and_stack_pointers() {
        let code: Vec<u8> = [
            insn(0x7b, 10, 1, -8, 0),   // *(u64 *)(r10 - 8) = r1
            insn(0x79, 2, 10, -24, 0),  // r2 = *(u64 *)(r10 - 24)
            insn(0xbf, 3, 10, 0, 0),    // r3 = r10
            insn(0x07, 3, 0, 0, -352),  // r3 += -352
            insn(0xbf, 4, 10, 0, 0),    // r4 = r10
            insn(0xb7, 4, 0, 0, 7),     // r4 = 7 (no longer the frame pointer)
            insn(0x07, 4, 0, 0, -1000), // r4 += -1000: not a stack address
            insn(0x95, 0, 0, 0, 0),     // exit
        ]
        .concat();
        assert_eq!(frame_bytes(&code), 352);
        assert_eq!(frame_bytes(&code[..16]), 24);
        assert_eq!(frame_bytes(&[]), 0);
        // A truncated instruction is ignored.
        assert_eq!(frame_bytes(&code[..20]), 24);
    }

    #[test]
    fn a_call_chain_past_the_limit_is_reported() {
        let frame = |name: &str, section: &str, bytes| Frame {
            name: name.into(),
            section: section.into(),
            bytes,
        };
        // The frames a 6.18 build refused: 448 + 72 rounded to 80.
        let refused = [
            frame("sock_send_length", "tracepoint", 448),
            frame("gather_record", ".text", 72),
        ];
        assert_eq!(
            over_limit(&refused),
            vec![("sock_send_length".to_owned(), 528)]
        );
        let fits = [
            frame("sock_send_length", "tracepoint", 352),
            frame("gather_record", ".text", 72),
            frame("gather_h2", ".text", 64),
            frame("memcpy", ".text", 0),
        ];
        assert!(over_limit(&fits).is_empty());
    }

    /// The agent's own programs: each, with every function it could call, within the
    /// limit every kernel enforces.
    #[test]
    fn the_agents_programs_fit_the_stack() {
        let frames = frames(crate::capture::loader::EBPF_OBJECT).unwrap();
        assert!(
            frames.iter().any(|f| f.name == "sock_send_length"),
            "no programs found in the object: {frames:?}"
        );
        let over = over_limit(&frames);
        assert!(
            over.is_empty(),
            "programs over {MAX_STACK} bytes of stack with their callees: {over:?}; frames: {frames:?}"
        );
    }
}
