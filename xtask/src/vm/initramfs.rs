//! The guest's initramfs: an uncompressed `newc` cpio archive (the kernel unpacks it without
//! any decompressor, and no `cpio` tool is needed) holding `/init` (the guest suite), the agent,
//! the shared libraries `ldd` lists for them, and `/dev/console`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes a `newc` ("070701") archive. Entries must come parents first; [`Archive::file`] and
/// friends add missing parent directories themselves.
pub struct Archive<W: Write> {
    out: W,
    ino: u32,
    dirs: BTreeSet<String>,
    written: u64,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Self {
        Archive {
            out,
            ino: 0,
            dirs: BTreeSet::new(),
            written: 0,
        }
    }

    fn header(&mut self, name: &str, mode: u32, size: u32, rdev: (u32, u32)) -> io::Result<()> {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0, // ino, mode, uid, gid
            1,
            0,
            size, // nlink, mtime, filesize
            0,
            0,
            rdev.0,
            rdev.1, // devmajor, devminor, rdevmajor, rdevminor
            name.len() as u32 + 1,
            0, // check
        ];
        let mut head = String::from("070701");
        for f in fields {
            head.push_str(&format!("{f:08x}"));
        }
        self.write(head.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0; 3][..n])
    }

    /// Archive paths are relative (`bin/x`); `/bin/x` is accepted and made relative.
    fn norm(path: &str) -> String {
        path.trim_start_matches('/').to_owned()
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                let name = prefix.clone();
                self.header(&name, S_IFDIR | 0o755, 0, (0, 0))?;
            }
        }
        Ok(())
    }

    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = Self::norm(path);
        self.parents(&path)?;
        if self.dirs.insert(path.clone()) {
            self.header(&path, S_IFDIR | 0o755, 0, (0, 0))?;
        }
        Ok(())
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = Self::norm(path);
        self.parents(&path)?;
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        self.header(&path, S_IFREG | (mode & 0o7777), size, (0, 0))?;
        self.write(data)?;
        self.pad()
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = Self::norm(path);
        self.parents(&path)?;
        self.header(&path, S_IFLNK | 0o777, target.len() as u32, (0, 0))?;
        self.write(target.as_bytes())?;
        self.pad()
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = Self::norm(path);
        self.parents(&path)?;
        self.header(&path, S_IFCHR | (mode & 0o7777), 0, (major, minor))
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Shared libraries of `binary` as `ldd` resolves them on this host (the dynamic loader
/// included), as absolute paths.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd (glibc's libc-bin provides it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static binaries: "not a dynamic executable".
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&text).with_context(|| format!("ldd {}: {text}", binary.display()))
}

/// Pure: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)` lines to paths; the vDSO has none.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("missing library: {line}");
        }
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split(" (").next().unwrap_or_default().trim(),
            None => line.split(" (").next().unwrap_or_default().trim(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Strips debug info into `dest` with binutils' `strip` (present wherever Rust links, via
/// gcc); copies as is when it is missing. Debug builds shrink ~5x, which matters for a guest
/// that unpacks them into RAM under emulation.
fn stripped(src: &Path, dest: &Path) -> Result<()> {
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(dest)
        .arg(src)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(src, dest)
            .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    }
    Ok(())
}

/// Binaries to put in the image: (path inside the guest, host file).
pub struct Contents {
    pub init: PathBuf,
    pub agent: PathBuf,
    /// Statically linked programs stored as they are: (path inside the guest, host file).
    pub static_files: Vec<(String, PathBuf)>,
}

/// Builds the image at `out`; returns its size in bytes.
pub fn build(contents: &Contents, out: &Path, scratch: &Path) -> Result<u64> {
    std::fs::create_dir_all(scratch)?;
    let mut archive = Archive::new(BufWriter::new(
        File::create(out).with_context(|| format!("creating {}", out.display()))?,
    ));
    for dir in ["dev", "proc", "sys", "tmp"] {
        archive.dir(dir)?;
    }
    // The kernel opens /dev/console for init's stdio before init runs (devtmpfs comes later).
    archive.char_device("dev/console", 0o600, 5, 1)?;

    let mut libs = BTreeSet::new();
    for (guest_path, host) in [
        ("bin/tracer-vm-guest", &contents.init),
        ("bin/tracer-agent", &contents.agent),
    ] {
        let name = host
            .file_name()
            .context("binary path without a file name")?;
        let small = scratch.join(name);
        stripped(host, &small)?;
        let data = std::fs::read(&small)?;
        archive.file(guest_path, 0o755, &data)?;
        libs.extend(shared_libraries(host)?);
    }
    for (guest_path, host) in &contents.static_files {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        archive.file(guest_path, 0o755, &data)?;
    }
    archive.symlink("init", "/bin/tracer-vm-guest")?;
    for lib in libs {
        // Store the file the path resolves to, under the path the binaries ask for.
        let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        archive.file(&lib.to_string_lossy(), 0o755, &data)?;
    }
    let file = archive.finish()?.into_inner().map_err(|e| e.into_error())?;
    Ok(file.metadata()?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&archive[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&archive[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name_start = at + 110;
            let name = std::str::from_utf8(&archive[name_start..name_start + namesize - 1])
                .unwrap()
                .to_owned();
            assert_eq!(archive[name_start + namesize - 1], 0);
            let data_start = (name_start + namesize).next_multiple_of(4);
            let data = archive[data_start..data_start + size].to_vec();
            at = (data_start + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(at, archive.len());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn writes_newc_with_parents_first_and_padding() {
        let mut a = Archive::new(Vec::new());
        a.char_device("/dev/console", 0o600, 5, 1).unwrap();
        a.file("/usr/lib/x/libfoo.so", 0o755, b"abcde").unwrap();
        a.file("usr/lib/x/libbar.so", 0o644, b"").unwrap();
        a.symlink("init", "/bin/guest").unwrap();
        let bytes = a.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let e = entries(&bytes);
        let names: Vec<_> = e.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/libfoo.so",
                "usr/lib/x/libbar.so",
                "init"
            ]
        );
        assert_eq!(e[0].1, S_IFDIR | 0o755);
        assert_eq!(e[1].1, S_IFCHR | 0o600);
        assert_eq!(
            e[5],
            (
                "usr/lib/x/libfoo.so".into(),
                S_IFREG | 0o755,
                b"abcde".to_vec()
            )
        );
        assert_eq!(
            e[7],
            ("init".into(), S_IFLNK | 0o777, b"/bin/guest".to_vec())
        );
    }

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibssl.so.3 => not found\n").is_err());
    }
}
