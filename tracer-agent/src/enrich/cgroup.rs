//! Cgroup paths → container id and pod UID. Pure: strings in, values out.
//!
//! Every container runtime names the cgroup of a container after the container's 64-hex id,
//! and the kubelet names the pod's cgroup after the pod UID; only the decoration differs:
//!
//! | runtime, driver      | container cgroup (leaf)                          | pod cgroup (parent)                     |
//! |----------------------|--------------------------------------------------|-----------------------------------------|
//! | containerd, systemd  | `cri-containerd-<id>.scope`                      | `kubepods-<qos>-pod<uid_>.slice`        |
//! | containerd, cgroupfs | `<id>`                                           | `pod<uid>`                              |
//! | containerd, v1 quirk | `kubepods-…-pod<uid_>.slice:cri-containerd:<id>` | (same component)                        |
//! | CRI-O, systemd       | `crio-<id>.scope` (`crio-conmon-<id>.scope`)     | `kubepods-<qos>-pod<uid_>.slice`        |
//! | CRI-O, cgroupfs      | `crio-<id>`                                      | `pod<uid>`                              |
//! | Docker, systemd      | `docker-<id>.scope`                              | `kubepods-<qos>-pod<uid_>.slice` (k8s)  |
//! | Docker, cgroupfs     | `/docker/<id>`, or `<id>` under `pod<uid>`       | `pod<uid>` (k8s)                        |
//! | podman, systemd      | `libpod-<id>.scope` (`…/container` with split)   | `machine-libpod_pod_<podid>.slice`      |
//! | podman, cgroupfs     | `/libpod_parent/libpod-<id>`                     | `/libpod_parent/<podid>`                |
//!
//! `<uid_>` is the pod UID with `-` escaped to `_` (systemd uses `-` as the slice
//! separator). The same names appear on cgroup v1 (in each controller's line of
//! `/proc/<pid>/cgroup`), on v2 (the `0::` line) and on hybrid hosts (both). Paths seen from a
//! private cgroup namespace start with `/..` components; only the names matter here.
//!
//! The *deepest* container-looking component wins: a kind node is itself a container, and
//! processes may create sub-cgroups below their container's (`/<id>/kube-proxy`).

use std::fmt;

/// The container engine a cgroup name points to, when the decoration tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    /// The scheme prefix Kubernetes uses in `containerStatuses[].containerID`.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one cgroup path says about the container and pod a process runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CgroupInfo {
    /// Full 64-hex container id, lowercase.
    pub container_id: Option<String>,
    /// `None` when the name carries no decoration (cgroupfs layouts): the id is still right.
    pub runtime: Option<Runtime>,
    /// Pod UID in its canonical `-` form (static pods: the 32-hex config hash).
    pub pod_uid: Option<String>,
}

impl CgroupInfo {
    pub fn is_empty(&self) -> bool {
        self.container_id.is_none() && self.pod_uid.is_none()
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Container ids are 64 hex digits in every runtime listed above. Requiring the full length
/// keeps unit names like `session-3.scope` or `docker-compose@x.service` from matching.
fn container_id(s: &str) -> Option<String> {
    (s.len() == 64 && is_hex(s)).then(|| s.to_ascii_lowercase())
}

/// A pod UID: an RFC 4122 UUID with `-` or systemd's `_`, or a static pod's 32-hex hash.
fn pod_uid(s: &str) -> Option<String> {
    if s.len() == 32 && is_hex(s) {
        return Some(s.to_ascii_lowercase());
    }
    if s.len() != 36 {
        return None;
    }
    let canonical: String = s
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let groups: Vec<&str> = canonical.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    (lens == [8, 4, 4, 4, 12] && groups.iter().all(|g| is_hex(g))).then_some(canonical)
}

/// The pod UID inside one component: `pod<uid>` (cgroupfs) or `…-pod<uid_>.slice` (systemd).
fn pod_in_component(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    if let Some(uid) = name.strip_prefix("pod").and_then(pod_uid) {
        return Some(uid);
    }
    // `kubepods-burstable-pod<uid_>` / `kubelet-kubepods-pod<uid_>`.
    let (prefix, uid) = name.rsplit_once("-pod")?;
    if !prefix.contains("kubepods") {
        return None;
    }
    pod_uid(uid)
}

/// Outcome of looking at one path component.
enum Leaf {
    Container(Option<Runtime>, String),
    /// A runtime's helper process (conmon): inside the container's scope naming, but not the
    /// container's workload. It is attributed to nothing rather than to the container.
    Helper,
}

fn container_in_component(component: &str) -> Option<Leaf> {
    // containerd with the systemd driver on cgroup v1 when systemd does not manage the path:
    // `kubepods-besteffort-pod<uid_>.slice:cri-containerd:<id>`.
    if let Some((_, rest)) = component.split_once(':')
        && let Some((prefix, id)) = rest.split_once(':')
    {
        let runtime = match prefix {
            "cri-containerd" => Some(Runtime::Containerd),
            "crio" => Some(Runtime::CriO),
            "docker" => Some(Runtime::Docker),
            _ => None,
        };
        return container_id(id).map(|id| Leaf::Container(runtime, id));
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    for (prefix, runtime) in [
        ("crio-conmon-", None),
        ("libpod-conmon-", None),
        ("cri-containerd-", Some(Runtime::Containerd)),
        ("containerd-", Some(Runtime::Containerd)),
        ("crio-", Some(Runtime::CriO)),
        ("docker-", Some(Runtime::Docker)),
        // podman under a systemd unit (quadlet): the payload sub-cgroup.
        ("libpod-payload-", Some(Runtime::Podman)),
        ("libpod-", Some(Runtime::Podman)),
    ] {
        if let Some(id) = name.strip_prefix(prefix).and_then(container_id) {
            return Some(match runtime {
                Some(r) => Leaf::Container(Some(r), id),
                None => Leaf::Helper,
            });
        }
    }
    container_id(name).map(|id| Leaf::Container(None, id))
}

/// Parses one cgroup path (`/kubepods.slice/…/cri-containerd-<id>.scope`). Returns an empty
/// info for host processes.
pub fn parse_path(path: &str) -> CgroupInfo {
    let components: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    let mut info = CgroupInfo::default();
    let mut leaf_at = None;
    for (i, component) in components.iter().enumerate().rev() {
        match container_in_component(component) {
            Some(Leaf::Container(runtime, id)) => {
                info.runtime = runtime;
                info.container_id = Some(id);
                leaf_at = Some(i);
                break;
            }
            Some(Leaf::Helper) => return CgroupInfo::default(),
            None => {}
        }
    }
    // The pod is the nearest pod-looking ancestor of the container (or, for a process placed
    // in the pod's own cgroup, the deepest one). The containerd quirk keeps both in one
    // component, so the leaf itself is searched too.
    let end = leaf_at.map(|i| i + 1).unwrap_or(components.len());
    info.pod_uid = components[..end].iter().rev().find_map(|c| {
        let before_colon = c.split(':').next().unwrap_or(c);
        pod_in_component(before_colon)
    });
    if info.runtime.is_none() && info.container_id.is_some() {
        // cgroupfs layouts: the parent directory may still name the engine.
        let parent = leaf_at
            .and_then(|i| i.checked_sub(1))
            .map(|i| components[i]);
        info.runtime = match parent {
            Some("docker") => Some(Runtime::Docker),
            Some("libpod_parent") => Some(Runtime::Podman),
            Some("containerd") => Some(Runtime::Containerd),
            _ => None,
        };
    }
    info
}

/// `/proc/<pid>/cgroup`, split into the unified (v2) path and the v1 hierarchies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroup {
    /// The `0::<path>` line (cgroup v2 and hybrid hosts).
    pub unified: Option<String>,
    /// `(controllers, path)` of every v1 line, e.g. `("cpu,cpuacct", "/kubepods/…")`.
    pub v1: Vec<(String, String)>,
}

pub fn parse_proc_cgroup(contents: &str) -> ProcCgroup {
    let mut out = ProcCgroup::default();
    for line in contents.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            out.unified = Some(path.to_owned());
        } else if !path.is_empty() {
            out.v1.push((controllers.to_owned(), path.to_owned()));
        }
    }
    out
}

impl ProcCgroup {
    /// The container and pod of the process. The unified path is exact where the runtime
    /// places containers in it (v2 and most hybrid hosts); on v1 hosts, and on hybrid hosts
    /// whose runtime leaves the unified hierarchy to systemd, the v1 controllers tell.
    /// Among v1 lines, the first that names a container wins: runtimes put a container in
    /// the same place in every controller they manage.
    pub fn container(&self) -> CgroupInfo {
        if let Some(path) = &self.unified {
            let info = parse_path(path);
            if info.container_id.is_some() {
                return info;
            }
        }
        let mut best = self.unified.as_deref().map(parse_path).unwrap_or_default();
        for (_, path) in &self.v1 {
            let info = parse_path(path);
            if info.container_id.is_some() {
                return info;
            }
            if best.is_empty() {
                best = info;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests;
