//! Cgroup v2 id → cgroup path, by walking the cgroup2 mount.
//!
//! `bpf_get_current_cgroup_id()` returns the kernfs node id of the task's cgroup in the
//! unified hierarchy, which on 64-bit kernels is the inode number of that cgroup's directory.
//! The walk is cached and refreshed on a miss, at most once per `min_rescan`, and bounded in
//! the number of cgroups it indexes: a node with thousands of pods stays a few milliseconds.
//! The id survives the process (a short-lived client has often exited before the agent
//! looks at `/proc/<pid>`), which is why it comes first.
//!
//! Kernfs allocates ids in increasing order, so an id above every id of the last walk is a
//! cgroup created since: it is looked for at once, whatever the interval (once per id), or a
//! container that starts, makes one request and exits within the interval (a `wget` in its
//! own container) would be gone before the next walk and never be attributed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `statfs(2)` magic of cgroup2 file systems.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the unified hierarchy is usually mounted: a host mount inside the agent's container
/// first (the container's own `/sys/fs/cgroup` is rooted at its own cgroup), then pure v2
/// hosts, then hybrid hosts.
pub const DEFAULT_CANDIDATES: &[&str] = &[
    "/host/sys/fs/cgroup",
    "/host/sys/fs/cgroup/unified",
    "/sys/fs/cgroup",
    "/sys/fs/cgroup/unified",
];

pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs writes into the struct we own; the path is NUL-terminated.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut buf) };
    rc == 0 && buf.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The first candidate that is a cgroup2 mount.
pub fn find_root<P: AsRef<Path>>(candidates: &[P]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(|p| p.as_ref())
        .find(|p| is_cgroup2(p))
        .map(Path::to_path_buf)
}

pub struct CgroupIds {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    max_entries: usize,
    /// The highest id the last walk found.
    max_indexed: u64,
    /// New ids a walk did not find (deleted already, or not cgroup2): not walked for again.
    missing: std::collections::HashSet<u64>,
}

impl CgroupIds {
    pub fn new(root: Option<PathBuf>) -> Self {
        CgroupIds {
            root,
            by_id: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_secs(1),
            max_entries: 200_000,
            max_indexed: 0,
            missing: std::collections::HashSet::new(),
        }
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The cgroup path (`/kubepods.slice/…`, relative to the hierarchy's root) of `id`.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        let new_cgroup = id > self.max_indexed && !self.missing.contains(&id);
        let due = new_cgroup
            || self
                .last_scan
                .is_none_or(|t| t.elapsed() >= self.min_rescan);
        if !due {
            return None;
        }
        self.scan();
        let found = self.by_id.get(&id).cloned();
        if found.is_none() && new_cgroup {
            if self.missing.len() >= 4096 {
                self.missing.clear();
            }
            self.missing.insert(id);
        }
        found
    }

    /// Re-indexes the whole hierarchy: removed cgroups disappear, new ones appear.
    pub fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut found = HashMap::new();
        let mut stack = vec![(root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let shown = if rel.is_empty() {
                "/".to_owned()
            } else {
                rel.clone()
            };
            found.insert(meta.ino(), shown);
            if found.len() >= self.max_entries {
                tracing::warn!(
                    "more than {} cgroups under {}: indexing stopped there",
                    self.max_entries,
                    root.display()
                );
                break;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // Cgroups are directories; control files are not. No symlinks in cgroupfs.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    stack.push((entry.path(), format!("{rel}/{name}")));
                }
            }
        }
        tracing::debug!("indexed {} cgroups under {}", found.len(), root.display());
        self.max_indexed = found.keys().copied().max().unwrap_or(0);
        self.by_id = found;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_hosts_unified_hierarchy_and_its_root_id() {
        // Hybrid hosts mount it at /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup.
        let root = find_root(DEFAULT_CANDIDATES).expect("a cgroup2 mount on this machine");
        let mut ids = CgroupIds::new(Some(root.clone()));
        let root_ino = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(ids.path_of(root_ino).as_deref(), Some("/"));
        // Ids of real child cgroups resolve to their names.
        if let Some(child) = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .find(|e| e.file_type().unwrap().is_dir())
        {
            let ino = child.metadata().unwrap().ino();
            let want = format!("/{}", child.file_name().to_string_lossy());
            assert_eq!(ids.path_of(ino).as_deref(), Some(want.as_str()));
        }
    }

    #[test]
    fn misses_rescan_at_most_once_per_interval() {
        let dir = std::env::temp_dir().join(format!("cgids-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let mut ids = CgroupIds::new(Some(dir.clone()));
        let b = std::fs::metadata(dir.join("a/b")).unwrap().ino();
        assert_eq!(ids.path_of(b).as_deref(), Some("/a/b"));
        std::fs::create_dir_all(dir.join("c")).unwrap();
        let c = std::fs::metadata(dir.join("c")).unwrap().ino();
        // Just scanned: a miss of an id the walk could have seen does not walk again.
        ids.max_indexed = u64::MAX;
        assert_eq!(ids.path_of(c), None);
        ids.last_scan = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(ids.path_of(c).as_deref(), Some("/c"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!is_cgroup2(&std::env::temp_dir()));
        assert_eq!(CgroupIds::new(None).path_of(1), None);
    }

    /// Kernfs ids grow: one above the last walk's highest is a new cgroup, looked for at
    /// once (a short-lived container's), and only once if it is not there.
    #[test]
    fn a_new_id_walks_again_at_once_but_only_once() {
        let dir = std::env::temp_dir().join(format!("cgids-new-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        let mut ids = CgroupIds::new(Some(dir.clone()));
        ids.scan();
        std::fs::create_dir_all(dir.join("short-lived")).unwrap();
        let new = std::fs::metadata(dir.join("short-lived")).unwrap().ino();
        // On kernfs the new directory's id is above the walk's; force it on this file system.
        ids.max_indexed = new - 1;
        assert_eq!(ids.path_of(new).as_deref(), Some("/short-lived"));

        let gone = ids.max_indexed + 1_000_000;
        let scanned = ids.last_scan;
        assert_eq!(ids.path_of(gone), None);
        assert_ne!(ids.last_scan, scanned, "a new id walks at once");
        let scanned = ids.last_scan;
        assert_eq!(ids.path_of(gone), None);
        assert_eq!(
            ids.last_scan, scanned,
            "not found once: left to the interval"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
