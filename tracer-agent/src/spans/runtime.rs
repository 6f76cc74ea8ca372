//! Which runtime a traced executable was built with, from its ELF section headers.
//!
//! The linker needs to know whether a process's threads mean anything: Go schedules its
//! goroutines M:N over threads, so the thread that wrote a request says nothing about the
//! goroutine (and so the request) it was written for. Every Go executable since Go 1.13
//! carries a `.go.buildinfo` section (kept by `-ldflags=-s -w`, which strips only the
//! symbol table and DWARF), and `go build` adds a `.note.go.buildid` note.
//!
//! Only the ELF header, the section header table and the section-name string table are
//! read, never the whole (often tens of MiB) executable.

use std::io::{Read, Seek, SeekFrom};

use thiserror::Error;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Runtime {
    /// Nothing known that moves work between threads: a thread is a unit of causality when
    /// it serves one request at a time.
    #[default]
    Native,
    /// The Go runtime (M:N goroutine scheduling).
    Go,
    /// CPython (its asyncio tasks share a thread's event loop).
    Python,
}

impl Runtime {
    /// `process.runtime.name` by the OpenTelemetry semantic conventions, where known.
    pub fn otel_name(self) -> Option<&'static str> {
        match self {
            Runtime::Native => None,
            Runtime::Go => Some("go"),
            Runtime::Python => Some("cpython"),
        }
    }
}

#[derive(Debug, Error)]
pub enum ElfError {
    #[error("cannot read the executable: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("implausible section header table ({0})")]
    BadSections(&'static str),
}

/// Section headers read at most: real executables have a few dozen.
const MAX_SECTIONS: usize = 4096;
/// Largest section-name string table read.
const MAX_SHSTRTAB: u64 = 1 << 20;

const GO_SECTIONS: [&[u8]; 2] = [b".go.buildinfo", b".note.go.buildid"];

/// The runtime of the ELF executable `file` (64-bit little-endian: the targets the
/// programs are built for).
pub fn detect(file: &mut (impl Read + Seek)) -> Result<Runtime, ElfError> {
    let (names, _) = sections(file)?;
    let go = names
        .split(|&b| b == 0)
        .any(|name| GO_SECTIONS.contains(&name));
    if go {
        return Ok(Runtime::Go);
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(if is_cpython(file) {
        Runtime::Python
    } else {
        Runtime::Native
    })
}

/// An executable that is the CPython interpreter: it defines the runtime state itself
/// (`_PyRuntime`, a static build such as Debian's) or starts it from `libpython`
/// (`Py_BytesMain`, a shared build such as the official container images').
fn is_cpython(file: &mut (impl Read + Seek)) -> bool {
    use object::{Object as _, ObjectSymbol as _};
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return false;
    };
    elf.dynamic_symbols()
        .any(|s| matches!(s.name_bytes(), Ok(b"_PyRuntime" | b"Py_BytesMain")))
}

/// The runtime of process `pid`, from its executable as `/proc` shows it (found in any mount
/// namespace); `Native` when it cannot be read.
pub fn of_process(proc_root: &std::path::Path, pid: u32) -> Runtime {
    std::fs::File::open(proc_root.join(pid.to_string()).join("exe"))
        .ok()
        .and_then(|mut f| detect(&mut f).ok())
        .unwrap_or_default()
}

/// A Go release, `(1, 19)` for `go1.19.8`.
pub type GoVersion = (u32, u32);

/// The Go release a Go executable was built with, from its `.go.buildinfo` section
/// (the inline format of Go 1.18 and later; older builds give `None`).
pub fn go_version(file: &mut (impl Read + Seek)) -> Result<Option<GoVersion>, ElfError> {
    let (names, headers) = sections(file)?;
    let name_at = |off: u32| -> &[u8] {
        let rest = names.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let Some(info) = headers.iter().find(|h| name_at(h.name) == b".go.buildinfo") else {
        return Ok(None);
    };
    let mut head = vec![0u8; info.size.min(32 + 10 + 64) as usize];
    file.seek(SeekFrom::Start(info.offset))?;
    file.read_exact(&mut head)
        .map_err(|_| ElfError::BadSections("truncated .go.buildinfo"))?;
    Ok(parse_buildinfo_version(&head))
}

/// `\xff Go buildinf:`, pointer size, flags (bit 1: version and module info inline), then
/// at offset 32 the version as a uvarint-prefixed string.
fn parse_buildinfo_version(head: &[u8]) -> Option<GoVersion> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !head.starts_with(MAGIC) || head.get(15)? & 2 == 0 {
        return None;
    }
    let len = *head.get(32)? as usize;
    if len >= 0x80 {
        return None; // a multi-byte length: no version string is that long
    }
    let version = std::str::from_utf8(head.get(33..33 + len)?).ok()?;
    let mut parts = version.strip_prefix("go")?.split(['.', '-', ' ']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor.bytes().take_while(u8::is_ascii_digit).count();
    let minor = minor[..digits].parse().ok()?;
    Some((major, minor))
}

/// Offset of `goid` in `runtime.g` on amd64, for the releases whose layout is known:
/// stack, stackguard0/1, _panic, _defer, m, sched (7 words), syscallsp, syscallpc,
/// [syscallbp since 1.23,] stktopsp, param, atomicstatus, stackLock, then goid. Go before
/// 1.17 passed arguments on the stack (no goroutine in R14): not followed.
pub fn goid_offset(version: GoVersion) -> Option<u32> {
    match version {
        (1, 17..=22) => Some(152),
        (1, 23..=24) => Some(160),
        _ => None,
    }
}

/// Largest `.gopclntab` read (real ones are a few MiB).
const MAX_PCLNTAB: u64 = 256 << 20;

/// A Go function's code in the executable file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoFunction {
    /// File offset of its entry (what a uprobe is attached at).
    pub offset: u64,
    /// Bytes up to the next function's entry.
    pub len: u64,
}

/// The Go functions `names` in the executable, from its `.gopclntab` (which even stripped
/// binaries keep: the runtime needs it for stack traces). Go 1.18+ layout; `None` for a
/// name not found.
pub fn go_functions(
    file: &mut (impl Read + Seek),
    names: &[&str],
) -> Result<Vec<Option<GoFunction>>, ElfError> {
    let (strtab, headers) = sections(file)?;
    let name_at = |off: u32| -> &[u8] {
        let rest = strtab.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    };
    let find = |n: &[u8]| headers.iter().find(|h| name_at(h.name) == n);
    let pcln = find(b".gopclntab").ok_or(ElfError::BadSections("no .gopclntab"))?;
    let text = find(b".text").ok_or(ElfError::BadSections("no .text"))?;
    if pcln.size > MAX_PCLNTAB {
        return Err(ElfError::BadSections(".gopclntab size"));
    }
    let mut table = vec![0u8; pcln.size as usize];
    file.seek(SeekFrom::Start(pcln.offset))?;
    file.read_exact(&mut table)
        .map_err(|_| ElfError::BadSections("truncated .gopclntab"))?;
    let entries =
        pclntab_entries(&table, names).ok_or(ElfError::BadSections("unknown .gopclntab layout"))?;
    Ok(entries
        .into_iter()
        .map(|range| {
            let (start, end) = range?;
            let inside = start >= text.addr && end <= text.addr + text.size && end > start;
            inside.then(|| GoFunction {
                offset: start - text.addr + text.offset,
                len: end - start,
            })
        })
        .collect())
}

/// Longest function whose instructions are decoded.
const MAX_FUNCTION_BYTES: u64 = 1 << 20;

/// Offsets, from the function's entry, of the `RET` instructions of `function`: where a
/// return is observed without a uretprobe (which rewrites the return address on the stack,
/// and Go moves goroutine stacks).
pub fn go_function_returns(
    file: &mut (impl Read + Seek),
    function: GoFunction,
) -> Result<Vec<u64>, ElfError> {
    if function.len > MAX_FUNCTION_BYTES {
        return Err(ElfError::BadSections("function too long"));
    }
    let mut code = vec![0u8; function.len as usize];
    file.seek(SeekFrom::Start(function.offset))?;
    file.read_exact(&mut code)
        .map_err(|_| ElfError::BadSections("truncated function"))?;
    Ok(return_offsets(&code))
}

/// Decodes x86-64 `code` from its first byte and lists where its `RET`s are. Decoding
/// stops at the first invalid instruction (the padding between Go functions is `INT3`,
/// which decodes, and is never a return).
fn return_offsets(code: &[u8]) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            break;
        }
        if insn.mnemonic() == Mnemonic::Ret {
            out.push(insn.ip());
        }
    }
    out
}

/// Entry and end addresses of `names` in a Go 1.18+ `pclntab`: the `pcHeader` (magic, pad, pad,
/// minLC, ptrSize, then nfunc, nfiles, textStart, funcnameOffset, cuOffset,
/// filetabOffset, pctabOffset, pclnOffset as words), then at `pclnOffset` the function
/// table of `(entryOff, funcOff)` u32 pairs, each `funcOff` pointing at a `_func` whose
/// second u32 is the name's offset in the name table.
fn pclntab_entries(t: &[u8], names: &[&str]) -> Option<Vec<Option<(u64, u64)>>> {
    let u32_at = |o: usize| Some(u32::from_le_bytes(t.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(t.get(o..o + 8)?.try_into().ok()?));
    let magic = u32_at(0)?;
    if !matches!(magic, 0xffff_fff0 | 0xffff_fff1) || *t.get(7)? != 8 {
        return None;
    }
    let nfunc = usize::try_from(u64_at(8)?).ok()?;
    let text_start = u64_at(24)?;
    let funcnames = usize::try_from(u64_at(32)?).ok()?;
    let functab = usize::try_from(u64_at(64)?).ok()?;
    if nfunc > t.len() / 8 {
        return None;
    }
    let mut found = vec![None; names.len()];
    for i in 0..nfunc {
        let at = functab.checked_add(i * 8)?;
        let entry_off = u32_at(at)?;
        let func_off = u32_at(at + 4)? as usize;
        let name_off = u32_at(functab.checked_add(func_off)?.checked_add(4)?)? as usize;
        let name = t.get(funcnames.checked_add(name_off)?..)?;
        let name = &name[..name.iter().position(|&b| b == 0)?];
        if let Some(k) = names.iter().position(|n| n.as_bytes() == name) {
            // The table ends with one more entry: the end of the last function.
            let next = u32_at(at + 8)?;
            found[k] = Some((
                text_start + u64::from(entry_off),
                text_start + u64::from(next),
            ));
        }
    }
    Some(found)
}

struct SectionHeader {
    name: u32,
    addr: u64,
    offset: u64,
    size: u64,
}

/// The section-name string table (`.shstrtab`) and every section's header.
fn sections(file: &mut (impl Read + Seek)) -> Result<(Vec<u8>, Vec<SectionHeader>), ElfError> {
    let mut ehdr = [0u8; 64];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut ehdr).map_err(|_| ElfError::NotElf64)?;
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    let u16_at = |o: usize| u16::from_le_bytes([ehdr[o], ehdr[o + 1]]);
    let shoff = u64::from_le_bytes(ehdr[0x28..0x30].try_into().expect("8 bytes"));
    let shentsize = u16_at(0x3a) as usize;
    let mut shnum = u16_at(0x3c) as usize;
    let mut shstrndx = u16_at(0x3e) as usize;
    if shoff == 0 {
        return Err(ElfError::BadSections("no section headers"));
    }
    if shentsize < 64 {
        return Err(ElfError::BadSections("entry size"));
    }
    let read_shdr = |file: &mut dyn ReadSeek, index: usize| -> Result<[u8; 64], ElfError> {
        let mut shdr = [0u8; 64];
        let at = shoff
            .checked_add((index * shentsize) as u64)
            .ok_or(ElfError::BadSections("offset"))?;
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut shdr)
            .map_err(|_| ElfError::BadSections("truncated"))?;
        Ok(shdr)
    };
    // More than 0xff00 sections, or the string table index beyond 0xff00: the real values
    // are in section 0 (`sh_size`, `sh_link`).
    if shnum == 0 || shstrndx == 0xffff {
        let zero = read_shdr(file, 0)?;
        if shnum == 0 {
            shnum = u64::from_le_bytes(zero[0x20..0x28].try_into().expect("8 bytes")) as usize;
        }
        if shstrndx == 0xffff {
            shstrndx = u32::from_le_bytes(zero[0x28..0x2c].try_into().expect("4 bytes")) as usize;
        }
    }
    if shnum > MAX_SECTIONS {
        return Err(ElfError::BadSections("too many sections"));
    }
    if shstrndx >= shnum {
        return Err(ElfError::BadSections("string table index"));
    }
    let strtab = read_shdr(file, shstrndx)?;
    let offset = u64::from_le_bytes(strtab[0x18..0x20].try_into().expect("8 bytes"));
    let size = u64::from_le_bytes(strtab[0x20..0x28].try_into().expect("8 bytes"));
    if size > MAX_SHSTRTAB {
        return Err(ElfError::BadSections("string table size"));
    }
    let mut headers = Vec::with_capacity(shnum);
    for index in 0..shnum {
        let h = read_shdr(file, index)?;
        headers.push(SectionHeader {
            name: u32::from_le_bytes(h[..4].try_into().expect("4 bytes")),
            addr: u64::from_le_bytes(h[0x10..0x18].try_into().expect("8 bytes")),
            offset: u64::from_le_bytes(h[0x18..0x20].try_into().expect("8 bytes")),
            size: u64::from_le_bytes(h[0x20..0x28].try_into().expect("8 bytes")),
        });
    }
    let mut names = vec![0u8; size as usize];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut names)
        .map_err(|_| ElfError::BadSections("truncated string table"))?;
    Ok((names, headers))
}

trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A minimal ELF64 file: a null section, the string table, and sections named `names`.
    fn elf(names: &[&str]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut name_offsets = Vec::new();
        for n in std::iter::once(".shstrtab").chain(names.iter().copied()) {
            name_offsets.push(strtab.len() as u32);
            strtab.extend_from_slice(n.as_bytes());
            strtab.push(0);
        }
        let strtab_off = 64u64;
        let shoff = strtab_off + strtab.len() as u64;
        let shnum = 2 + names.len() as u16;
        let mut out = vec![0u8; 64];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&strtab);
        out.extend_from_slice(&[0u8; 64]); // null section
        for (i, name) in name_offsets.iter().enumerate() {
            let mut shdr = [0u8; 64];
            shdr[..4].copy_from_slice(&name.to_le_bytes());
            if i == 0 {
                shdr[4..8].copy_from_slice(&3u32.to_le_bytes()); // SHT_STRTAB
                shdr[0x18..0x20].copy_from_slice(&strtab_off.to_le_bytes());
                shdr[0x20..0x28].copy_from_slice(&(strtab.len() as u64).to_le_bytes());
            }
            out.extend_from_slice(&shdr);
        }
        out
    }

    fn runtime_of(bytes: Vec<u8>) -> Result<Runtime, ElfError> {
        detect(&mut Cursor::new(bytes))
    }

    #[test]
    fn go_sections_mark_go_executables() {
        let go = elf(&[".text", ".go.buildinfo", ".data"]);
        assert_eq!(runtime_of(go).unwrap(), Runtime::Go);
        let stripped_note_only = elf(&[".note.go.buildid", ".text"]);
        assert_eq!(runtime_of(stripped_note_only).unwrap(), Runtime::Go);
        let native = elf(&[".text", ".data", ".go.buildinfo.not"]);
        assert_eq!(runtime_of(native).unwrap(), Runtime::Native);
    }

    /// The test binary itself is a Rust executable.
    #[test]
    fn this_executable_is_native() {
        let mut f = std::fs::File::open("/proc/self/exe").unwrap();
        assert_eq!(detect(&mut f).unwrap(), Runtime::Native);
    }

    #[test]
    fn go_versions_from_build_info() {
        let info = |flags: u8, version: &str| {
            let mut h = b"\xff Go buildinf:".to_vec();
            h.extend([8, flags]);
            h.resize(32, 0);
            h.push(version.len() as u8);
            h.extend_from_slice(version.as_bytes());
            h.extend_from_slice(b"\x00path\tcommand-line-arguments");
            h
        };
        assert_eq!(parse_buildinfo_version(&info(2, "go1.19.8")), Some((1, 19)));
        assert_eq!(parse_buildinfo_version(&info(3, "go1.24.4")), Some((1, 24)));
        assert_eq!(
            parse_buildinfo_version(&info(2, "go1.21rc2")),
            Some((1, 21))
        );
        assert_eq!(parse_buildinfo_version(&info(2, "devel +abc")), None);
        // Go 1.17 and older point at the version instead of holding it.
        assert_eq!(parse_buildinfo_version(&info(0, "go1.17.2")), None);
        assert_eq!(parse_buildinfo_version(b"\xff Go buildinf:"), None);
        let whole = info(2, "go1.19.8");
        for cut in 0..whole.len() {
            let got = parse_buildinfo_version(&whole[..cut]);
            assert!(
                got.is_none() || got == Some((1, 19)),
                "cut at {cut}: {got:?}"
            );
        }
        assert_eq!(goid_offset((1, 19)), Some(152));
        assert_eq!(goid_offset((1, 23)), Some(160));
        assert_eq!(goid_offset((1, 16)), None);
        assert_eq!(goid_offset((2, 0)), None);
    }

    /// A synthetic pclntab with three functions, in the Go 1.20 layout.
    fn pclntab(funcs: &[(&str, u32)]) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let header = 72usize;
        let funcnames = header;
        let functab = funcnames + names.len();
        // functab: nfunc + 1 pairs, then the _func records (entryOff, nameOff, ...).
        let funcs_at = (funcs.len() + 1) * 8;
        let mut t = vec![0u8; header];
        t[..4].copy_from_slice(&0xffff_fff1u32.to_le_bytes());
        t[6] = 1;
        t[7] = 8;
        t[8..16].copy_from_slice(&(funcs.len() as u64).to_le_bytes());
        t[24..32].copy_from_slice(&0x40_1000u64.to_le_bytes());
        t[32..40].copy_from_slice(&(funcnames as u64).to_le_bytes());
        t[64..72].copy_from_slice(&(functab as u64).to_le_bytes());
        t.extend_from_slice(&names);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&((funcs_at + i * 16) as u32).to_le_bytes());
        }
        // The closing entry: where the last function ends.
        t.extend_from_slice(&0xa000u32.to_le_bytes());
        t.extend_from_slice(&[0xff; 4]);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name_offs[i].to_le_bytes());
            t.extend_from_slice(&[0; 8]);
        }
        t
    }

    #[test]
    fn function_entries_from_pclntab() {
        let t = pclntab(&[
            ("runtime.newproc1", 0x100),
            ("net/http.(*persistConn).roundTrip", 0x2340),
            ("main.main", 0x9000),
        ]);
        let got = pclntab_entries(
            &t,
            &[
                "net/http.(*persistConn).roundTrip",
                "runtime.newproc1",
                "absent",
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Some((0x40_3340, 0x40_a000)),
                Some((0x40_1100, 0x40_3340)),
                None
            ]
        );
        // Any truncation or corruption is `None` or a short answer, never a panic.
        for cut in 0..t.len() {
            let _ = pclntab_entries(&t[..cut], &["main.main"]);
        }
        let mut bad = t.clone();
        bad[0] = 0;
        assert!(pclntab_entries(&bad, &["main.main"]).is_none());
        let mut huge = t;
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(pclntab_entries(&huge, &["main.main"]).is_none());
    }

    /// A Go-shaped function: an early return, a call, the epilogue's return, then INT3
    /// padding; a `0xc3` byte inside an instruction (an immediate) is not a return.
    #[test]
    fn returns_are_found_by_decoding_not_by_byte() {
        let code = [
            0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
            0x76, 0x1a, // jbe (stack growth)
            0x48, 0x83, 0xec, 0x18, // sub rsp, 0x18
            0x48, 0x85, 0xc0, // test rax, rax
            0x75, 0x05, // jne
            0x48, 0x83, 0xc4, 0x18, // add rsp, 0x18
            0xc3, // ret (offset 19)
            0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3
            0x48, 0x83, 0xc4, 0x18, // add rsp, 0x18
            0xc3, // ret (offset 29)
            0xcc, 0xcc, // padding
        ];
        assert_eq!(return_offsets(&code), vec![19, 29]);
        assert_eq!(return_offsets(&[]), Vec::<u64>::new());
        assert_eq!(return_offsets(&[0x48]), Vec::<u64>::new());
    }

    #[test]
    fn garbage_and_truncation_are_errors_never_panics() {
        assert!(matches!(
            runtime_of(b"#!/bin/sh\n".to_vec()),
            Err(ElfError::NotElf64)
        ));
        assert!(runtime_of(Vec::new()).is_err());
        let whole = elf(&[".go.buildinfo"]);
        for cut in 0..whole.len() {
            // Every prefix is an error or, once the names are complete, the right answer.
            if let Ok(r) = runtime_of(whole[..cut].to_vec()) {
                assert_eq!(r, Runtime::Go, "cut at {cut}");
            }
        }
        let mut bad_index = elf(&[".text"]);
        bad_index[0x3e..0x40].copy_from_slice(&9u16.to_le_bytes());
        assert!(runtime_of(bad_index).is_err());
        let mut huge = elf(&[".text"]);
        huge[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes()); // count in section 0: zero
        assert!(runtime_of(huge).is_err());
    }
}
