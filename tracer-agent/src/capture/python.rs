//! Following the asyncio tasks of CPython processes: where a process's interpreter keeps
//! its threads, so the syscall programs can walk a thread's running frames.
//!
//! The agent finds the interpreter's runtime state (`_PyRuntime`, a dynamic symbol of the
//! executable or of `libpython`), reads its release from `Py_Version`, and walks the thread
//! list in the process's memory to pair each OS thread with its `PyThreadState`. The
//! programs get the offsets (`PyProc`) and the pairs (`PY_THREADS`); from a thread state they
//! find the innermost frame and, on each write, the coroutine of the task that writes.
//!
//! Layouts are per release and are not guessed: a release without a known layout is not
//! followed (its calls fall back to the thread rule, which abstains on a busy event loop).

use std::collections::HashSet;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tracer_common::PyProc;

/// A CPython release, `(3, 11)`.
pub type PyVersion = (u8, u8);

#[derive(Debug, Error)]
pub enum PyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no CPython runtime state (_PyRuntime) in its executable or a mapped libpython")]
    NoRuntime,
    #[error("no Py_Version symbol (CPython before 3.11)")]
    NoVersion,
    #[error("python{}.{}: the frame layout of this release is not known", .0.0, .0.1)]
    UnknownLayout(PyVersion),
    #[error("its interpreter's thread list names none of its threads (layout mismatch?)")]
    NoThreads,
}

/// Offsets (bytes) of one CPython release's structures that the agent and the programs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `_PyRuntimeState.interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// `PyInterpreterState.threads.head`.
    pub interp_threads_head: u64,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.native_thread_id`.
    pub tstate_native_thread_id: u64,
    /// What the programs read.
    pub frames: PyProc,
}

/// The layout of a release, where known. 3.11 (Debian 12's `python3.11`), from its headers:
/// `Include/internal/pycore_runtime.h`, `pycore_interp.h`, `Include/cpython/pystate.h` and
/// `pycore_frame.h`. 3.12 moved the frame's fields and 3.13 dropped `_PyCFrame`.
pub fn layout(version: PyVersion) -> Option<Layout> {
    match version {
        (3, 11) => Some(Layout {
            runtime_interpreters_head: 40,
            interp_threads_head: 16,
            tstate_next: 8,
            tstate_native_thread_id: 160,
            frames: PyProc {
                tstate_cframe: 56,
                cframe_current_frame: 8,
                frame_previous: 48,
                frame_owner: 69,
                frame_code: 32,
                _pad: [0; 3],
            },
        }),
        _ => None,
    }
}

/// `Py_Version` (`PY_VERSION_HEX`) as a release.
pub fn version_of(hex: u32) -> PyVersion {
    ((hex >> 24) as u8, (hex >> 16) as u8)
}

/// Where a process's interpreter state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interpreter {
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// Address of `Py_Version`.
    pub version: u64,
}

/// One mapping of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub offset: u64,
    pub path: String,
}

/// The file-backed mappings of a `/proc/<pid>/maps` text.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let _perms = fields.next()?;
            let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let _dev = fields.next()?;
            let _inode = fields.next()?;
            let path = fields.collect::<Vec<_>>().join(" ");
            if !path.starts_with('/') {
                return None;
            }
            let start = u64::from_str_radix(range.split('-').next()?, 16).ok()?;
            Some(Mapping {
                start,
                offset,
                path,
            })
        })
        .collect()
}

/// Files that may hold the interpreter: the executable and any `libpython`, each with the
/// address its first page is mapped at.
fn candidates(maps: &[Mapping], exe: &str) -> Vec<(String, u64)> {
    let mut seen = HashSet::new();
    maps.iter()
        .filter(|m| m.offset == 0)
        .filter(|m| {
            let name = m.path.rsplit('/').next().unwrap_or_default();
            m.path == exe || name.starts_with("libpython3")
        })
        .filter(|m| seen.insert(m.path.clone()))
        .map(|m| (m.path.clone(), m.start))
        .collect()
}

/// Finds `_PyRuntime` and `Py_Version` of process `pid` (read through `proc_root`).
pub fn locate(proc_root: &Path, pid: u32) -> Result<Interpreter, PyError> {
    let dir = proc_root.join(pid.to_string());
    let maps_path = dir.join("maps");
    let maps = std::fs::read_to_string(&maps_path).map_err(|source| PyError::Io {
        path: maps_path,
        source,
    })?;
    let exe = std::fs::read_link(dir.join("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (path, mapped_at) in candidates(&parse_maps(&maps), &exe) {
        // The process's own view of the file, whatever its mount namespace.
        let in_root = dir.join("root").join(path.trim_start_matches('/'));
        let Ok(file) = std::fs::File::open(&in_root) else {
            continue;
        };
        if let Some(found) = symbols_in(&file, mapped_at)? {
            return Ok(found);
        }
    }
    Err(PyError::NoRuntime)
}

/// `_PyRuntime` and `Py_Version` of one ELF file mapped (its first page) at `mapped_at`.
fn symbols_in(file: &std::fs::File, mapped_at: u64) -> Result<Option<Interpreter>, PyError> {
    use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
    let cache = object::ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else {
        return Ok(None);
    };
    let (mut runtime, mut version) = (None, None);
    for s in elf.dynamic_symbols() {
        if s.is_undefined() {
            continue;
        }
        match s.name_bytes() {
            Ok(b"_PyRuntime") => runtime = Some(s.address()),
            Ok(b"Py_Version") => version = Some(s.address()),
            _ => {}
        }
    }
    let Some(runtime) = runtime else {
        return Ok(None);
    };
    let version = version.ok_or(PyError::NoVersion)?;
    // A position-independent file is shifted by where it was mapped; an executable built
    // for a fixed address is not.
    let bias = if elf.kind() == object::ObjectKind::Dynamic {
        let first = elf
            .segments()
            .map(|seg| seg.address() & !0xfff)
            .min()
            .unwrap_or(0);
        mapped_at.wrapping_sub(first)
    } else {
        0
    };
    Ok(Some(Interpreter {
        runtime: runtime.wrapping_add(bias),
        version: version.wrapping_add(bias),
    }))
}

/// Reads a process's memory.
pub struct Memory {
    file: std::fs::File,
    path: PathBuf,
}

impl Memory {
    pub fn open(proc_root: &Path, pid: u32) -> Result<Self, PyError> {
        let path = proc_root.join(pid.to_string()).join("mem");
        let file = std::fs::File::open(&path).map_err(|source| PyError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Memory { file, path })
    }

    pub fn u64(&self, at: u64) -> Result<u64, PyError> {
        let mut b = [0u8; 8];
        self.file
            .read_exact_at(&mut b, at)
            .map_err(|source| PyError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32(&self, at: u64) -> Result<u32, PyError> {
        Ok(self.u64(at)? as u32)
    }
}

/// Thread states walked at most per interpreter (and interpreters per process).
const MAX_THREADS: usize = 4096;
const MAX_INTERPRETERS: usize = 64;

/// Every `(tid, PyThreadState address)` of the process's interpreters.
pub fn thread_states(
    mem: &Memory,
    interp: &Interpreter,
    layout: &Layout,
) -> Result<Vec<(u32, u64)>, PyError> {
    let mut out = Vec::new();
    let mut is = mem.u64(interp.runtime + layout.runtime_interpreters_head)?;
    for _ in 0..MAX_INTERPRETERS {
        if is == 0 {
            break;
        }
        let mut ts = mem.u64(is + layout.interp_threads_head)?;
        for _ in 0..MAX_THREADS {
            if ts == 0 {
                break;
            }
            let tid = mem.u64(ts + layout.tstate_native_thread_id)?;
            if tid != 0 && tid <= u32::MAX as u64 {
                out.push((tid as u32, ts));
            }
            ts = mem.u64(ts + layout.tstate_next)?;
        }
        // `PyInterpreterState.next` is its first field.
        is = mem.u64(is)?;
    }
    Ok(out)
}

/// The pairs that name live threads of `pid`: a layout that does not match the running
/// interpreter reads numbers that are no thread of it.
pub fn live_threads(proc_root: &Path, pid: u32, states: Vec<(u32, u64)>) -> Vec<(u32, u64)> {
    let task = proc_root.join(pid.to_string()).join("task");
    states
        .into_iter()
        .filter(|(tid, _)| task.join(tid.to_string()).exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_parsed_and_candidates_found() {
        let text = "\
00400000-00420000 r--p 00000000 fe:01 123 /usr/bin/python3.11
00420000-00700000 r-xp 00020000 fe:01 123 /usr/bin/python3.11
7f0000000000-7f0000001000 r--p 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0
7f0000002000-7f0000003000 r--p 00000000 fe:01 789 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000004000-7f0000005000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0 [stack]
7f0000006000-7f0000007000 r--p 00000000 fe:01 999 /opt/my app/bin/py
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[4].path, "/opt/my app/bin/py");
        assert_eq!(maps[2].start, 0x7f0000000000);
        let c = candidates(&maps, "/usr/bin/python3.11");
        assert_eq!(
            c,
            vec![
                ("/usr/bin/python3.11".to_string(), 0x400000),
                (
                    "/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0".to_string(),
                    0x7f0000000000
                ),
            ]
        );
        // Garbage lines are skipped, not fatal.
        assert!(parse_maps("zz\n\n1-2 r 0 x").is_empty());
    }

    #[test]
    fn versions_and_layouts() {
        assert_eq!(version_of(0x030B07F0), (3, 11));
        assert_eq!(version_of(0x030C00A1), (3, 12));
        let l = layout((3, 11)).unwrap().frames;
        // The programs read `previous` and `owner` in one 24-byte window.
        assert!(l.frame_owner >= l.frame_previous && l.frame_owner - l.frame_previous < 24);
        assert!(layout((3, 12)).is_none());
        assert!(layout((3, 10)).is_none());
    }

    /// The agent's own executable is no interpreter.
    #[test]
    fn a_non_python_process_has_no_runtime() {
        let me = std::process::id();
        assert!(matches!(
            locate(Path::new("/proc"), me),
            Err(PyError::NoRuntime)
        ));
    }
}
