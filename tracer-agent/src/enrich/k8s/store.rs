//! The agent's picture of the cluster: pods on this node, Services and EndpointSlices for
//! peer names, and the owners of ReplicaSets and Jobs. Fed by the watchers, read by the
//! enricher. Every change bumps `generation`, so readers rebuild only what may have changed.
//!
//! A watcher (re)start lists everything again; the listed objects are buffered and swapped
//! in at the end of the list (`replace_*`), so readers never see a half-listed store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::model::{ObjectKey, Owner, PodMeta, ServiceMeta, SliceMeta, deployment_from_replicaset};

/// What a CLIENT span's destination is, in cluster terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// For `server.address`: the Service's DNS name, or the workload's name.
    pub address: String,
    /// For `peer.service`: the Service's or the workload's name.
    pub service: String,
    pub namespace: String,
}

/// Kinds of workload a pod can belong to, as resource attribute keys.
pub const WORKLOAD_ATTRS: &[(&str, &str)] = &[
    ("Deployment", "k8s.deployment.name"),
    ("ReplicaSet", "k8s.replicaset.name"),
    ("StatefulSet", "k8s.statefulset.name"),
    ("DaemonSet", "k8s.daemonset.name"),
    ("CronJob", "k8s.cronjob.name"),
    ("Job", "k8s.job.name"),
];

#[derive(Debug, Default)]
pub struct Store {
    pods: HashMap<String, Arc<PodMeta>>,
    mirror_uid: HashMap<String, String>,
    pod_by_ip: HashMap<IpAddr, String>,
    services: HashMap<ObjectKey, ServiceMeta>,
    service_by_ip: HashMap<IpAddr, ObjectKey>,
    slices: HashMap<ObjectKey, SliceMeta>,
    endpoints_by_ip: HashMap<IpAddr, BTreeSet<ObjectKey>>,
    /// (namespace, kind, name) of a ReplicaSet or Job → its controller, `None` if it has none.
    owners: HashMap<(String, String, String), Option<Owner>>,
    pub pods_synced: bool,
    pub services_synced: bool,
    pub slices_synced: bool,
}

/// Shared between the watcher tasks (writers) and the pipeline (reader).
#[derive(Debug, Default, Clone)]
pub struct SharedStore {
    inner: Arc<RwLock<Store>>,
    generation: Arc<AtomicU64>,
}

impl SharedStore {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    pub fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut guard);
        self.generation.fetch_add(1, Ordering::AcqRel);
        r
    }
}

impl Store {
    // ---- pods -------------------------------------------------------------------------

    pub fn apply_pod(&mut self, pod: PodMeta) {
        self.unindex_pod(&pod.uid);
        let pod = Arc::new(pod);
        if let Some(hash) = &pod.mirror_of {
            self.mirror_uid.insert(hash.clone(), pod.uid.clone());
        }
        if !pod.host_network && !pod.terminated {
            for ip in &pod.ips {
                self.pod_by_ip.insert(*ip, pod.uid.clone());
            }
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    pub fn delete_pod(&mut self, uid: &str) {
        self.unindex_pod(uid);
    }

    fn unindex_pod(&mut self, uid: &str) {
        let Some(old) = self.pods.remove(uid) else {
            return;
        };
        if let Some(hash) = &old.mirror_of {
            self.mirror_uid.remove(hash);
        }
        for ip in &old.ips {
            if self.pod_by_ip.get(ip).is_some_and(|u| u == uid) {
                self.pod_by_ip.remove(ip);
            }
        }
    }

    pub fn replace_pods(&mut self, pods: Vec<PodMeta>) {
        self.pods.clear();
        self.mirror_uid.clear();
        self.pod_by_ip.clear();
        for p in pods {
            self.apply_pod(p);
        }
        self.pods_synced = true;
    }

    /// By the UID in the cgroup path: a pod's own UID, or a static pod's config hash.
    pub fn pod(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.pods
            .get(uid)
            .or_else(|| self.mirror_uid.get(uid).and_then(|u| self.pods.get(u)))
            .cloned()
    }

    pub fn pods_iter(&self) -> impl Iterator<Item = &Arc<PodMeta>> {
        self.pods.values()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    // ---- services and endpoint slices ---------------------------------------------------

    pub fn apply_service(&mut self, svc: ServiceMeta) {
        let key = ObjectKey::new(&svc.namespace, &svc.name);
        self.delete_service(&key);
        for ip in &svc.cluster_ips {
            self.service_by_ip.insert(*ip, key.clone());
        }
        self.services.insert(key, svc);
    }

    pub fn delete_service(&mut self, key: &ObjectKey) {
        if let Some(old) = self.services.remove(key) {
            for ip in &old.cluster_ips {
                if self.service_by_ip.get(ip) == Some(key) {
                    self.service_by_ip.remove(ip);
                }
            }
        }
    }

    pub fn replace_services(&mut self, svcs: Vec<ServiceMeta>) {
        self.services.clear();
        self.service_by_ip.clear();
        for s in svcs {
            self.apply_service(s);
        }
        self.services_synced = true;
    }

    pub fn apply_slice(&mut self, key: ObjectKey, slice: SliceMeta) {
        self.delete_slice(&key);
        for ip in &slice.addresses {
            self.endpoints_by_ip
                .entry(*ip)
                .or_default()
                .insert(key.clone());
        }
        self.slices.insert(key, slice);
    }

    pub fn delete_slice(&mut self, key: &ObjectKey) {
        if let Some(old) = self.slices.remove(key) {
            for ip in &old.addresses {
                if let Some(set) = self.endpoints_by_ip.get_mut(ip) {
                    set.remove(key);
                    if set.is_empty() {
                        self.endpoints_by_ip.remove(ip);
                    }
                }
            }
        }
    }

    pub fn replace_slices(&mut self, slices: Vec<(ObjectKey, SliceMeta)>) {
        self.slices.clear();
        self.endpoints_by_ip.clear();
        for (k, s) in slices {
            self.apply_slice(k, s);
        }
        self.slices_synced = true;
    }

    // ---- owners -----------------------------------------------------------------------

    pub fn set_owner(&mut self, namespace: &str, kind: &str, name: &str, owner: Option<Owner>) {
        self.owners
            .insert((namespace.into(), kind.into(), name.into()), owner);
    }

    pub fn knows_owner(&self, namespace: &str, kind: &str, name: &str) -> bool {
        self.owners
            .contains_key(&(namespace.into(), kind.into(), name.into()))
    }

    /// The workloads a pod belongs to, outermost last: e.g. ReplicaSet then Deployment.
    /// `(attribute key, name)` pairs, from owner references and known owners.
    pub fn workloads(&self, pod: &PodMeta) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let Some(owner) = &pod.owner else {
            return out;
        };
        push_workload(&mut out, owner);
        let parent = match owner.kind.as_str() {
            "ReplicaSet" => deployment_from_replicaset(
                &owner.name,
                pod.labels.get("pod-template-hash").map(String::as_str),
            )
            .map(|name| Owner {
                kind: "Deployment".into(),
                name,
            })
            .or_else(|| self.known_owner(&pod.namespace, owner)),
            "Job" => self.known_owner(&pod.namespace, owner),
            _ => None,
        };
        if let Some(parent) = parent {
            push_workload(&mut out, &parent);
        }
        out
    }

    fn known_owner(&self, namespace: &str, owner: &Owner) -> Option<Owner> {
        self.owners
            .get(&(namespace.into(), owner.kind.clone(), owner.name.clone()))
            .cloned()
            .flatten()
    }

    // ---- peers ------------------------------------------------------------------------

    /// The cluster name of `ip:port`: a Service ClusterIP, a pod IP behind a Service (the
    /// Service whose slice lists the port wins), or a pod IP of this node's pods.
    pub fn peer(&self, ip: IpAddr, port: u16, cluster_domain: &str) -> Option<PeerInfo> {
        let service_peer = |key: &ObjectKey| PeerInfo {
            address: format!("{}.{}.svc.{cluster_domain}", key.name, key.namespace),
            service: key.name.clone(),
            namespace: key.namespace.clone(),
        };
        if let Some(key) = self.service_by_ip.get(&ip) {
            return Some(service_peer(key));
        }
        if let Some(slices) = self.endpoints_by_ip.get(&ip) {
            let candidates: BTreeMap<bool, Vec<&ObjectKey>> =
                slices.iter().fold(BTreeMap::new(), |mut acc, k| {
                    if let Some(s) = self.slices.get(k)
                        && let Some(svc) = &s.service
                    {
                        acc.entry(s.ports.contains(&port)).or_default().push(svc);
                    }
                    acc
                });
            // `true` (port listed) sorts last; within it, the smallest key for stability.
            if let Some(best) = candidates
                .iter()
                .next_back()
                .and_then(|(_, v)| v.iter().min())
            {
                return Some(service_peer(best));
            }
        }
        let pod = self.pod_by_ip.get(&ip).and_then(|uid| self.pods.get(uid))?;
        let name = self
            .workloads(pod)
            .last()
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| pod.name.clone());
        Some(PeerInfo {
            address: name.clone(),
            service: name,
            namespace: pod.namespace.clone(),
        })
    }
}

fn push_workload(out: &mut Vec<(&'static str, String)>, owner: &Owner) {
    if let Some((_, key)) = WORKLOAD_ATTRS.iter().find(|(k, _)| *k == owner.kind) {
        out.push((key, owner.name.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str, ip: &str, owner: Option<(&str, &str)>) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            name: name.into(),
            namespace: "shop".into(),
            ips: vec![ip.parse().unwrap()],
            owner: owner.map(|(k, n)| Owner {
                kind: k.into(),
                name: n.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_by_uid_mirror_hash_and_ip() {
        let mut s = Store::default();
        let mut p = pod("u1", "etcd-node1", "10.0.0.5", None);
        p.mirror_of = Some("6a8a8ef2c4e1b4d0b64fd2c2d3c8e3a4".into());
        s.apply_pod(p);
        assert_eq!(s.pod("u1").unwrap().name, "etcd-node1");
        assert_eq!(s.pod("6a8a8ef2c4e1b4d0b64fd2c2d3c8e3a4").unwrap().uid, "u1");
        // A new pod reusing the IP takes it over; deleting the old one keeps the new mapping.
        s.apply_pod(pod("u2", "web-0", "10.0.0.5", Some(("StatefulSet", "web"))));
        s.delete_pod("u1");
        assert!(s.pod("6a8a8ef2c4e1b4d0b64fd2c2d3c8e3a4").is_none());
        let peer = s
            .peer("10.0.0.5".parse().unwrap(), 80, "cluster.local")
            .unwrap();
        assert_eq!(
            (peer.address.as_str(), peer.service.as_str()),
            ("web", "web")
        );
        s.replace_pods(vec![]);
        assert!(s.pods_synced);
        assert!(s.peer("10.0.0.5".parse().unwrap(), 80, "c").is_none());
    }

    #[test]
    fn workloads_from_owners() {
        let mut s = Store::default();
        let mut p = pod(
            "u",
            "backend-7d4b9c8f6d-x2x9z",
            "10.0.0.6",
            Some(("ReplicaSet", "backend-7d4b9c8f6d")),
        );
        p.labels
            .insert("pod-template-hash".into(), "7d4b9c8f6d".into());
        assert_eq!(
            s.workloads(&p),
            vec![
                ("k8s.replicaset.name", "backend-7d4b9c8f6d".to_owned()),
                ("k8s.deployment.name", "backend".to_owned())
            ]
        );
        // No hash label: only a looked-up owner says which Deployment it is.
        p.labels.clear();
        assert_eq!(s.workloads(&p).len(), 1);
        s.set_owner(
            "shop",
            "ReplicaSet",
            "backend-7d4b9c8f6d",
            Some(Owner {
                kind: "Deployment".into(),
                name: "be".into(),
            }),
        );
        assert_eq!(s.workloads(&p)[1], ("k8s.deployment.name", "be".to_owned()));

        let job = pod(
            "j",
            "report-28934-abcde",
            "10.0.0.7",
            Some(("Job", "report-28934")),
        );
        assert_eq!(
            s.workloads(&job),
            vec![("k8s.job.name", "report-28934".to_owned())]
        );
        s.set_owner(
            "shop",
            "Job",
            "report-28934",
            Some(Owner {
                kind: "CronJob".into(),
                name: "report".into(),
            }),
        );
        assert_eq!(
            s.workloads(&job)[1],
            ("k8s.cronjob.name", "report".to_owned())
        );
        let ds = pod("d", "agent-x", "10.0.0.8", Some(("DaemonSet", "agent")));
        assert_eq!(
            s.workloads(&ds),
            vec![("k8s.daemonset.name", "agent".to_owned())]
        );
        assert!(s.workloads(&pod("n", "bare", "10.0.0.9", None)).is_empty());
    }

    #[test]
    fn peers_by_cluster_ip_and_endpoints() {
        let mut s = Store::default();
        s.apply_service(ServiceMeta {
            namespace: "shop".into(),
            name: "backend".into(),
            cluster_ips: vec!["10.96.0.20".parse().unwrap()],
        });
        let by_vip = s
            .peer("10.96.0.20".parse().unwrap(), 8080, "cluster.local")
            .unwrap();
        assert_eq!(by_vip.address, "backend.shop.svc.cluster.local");
        assert_eq!(by_vip.service, "backend");

        // A pod IP behind two Services: the one exposing the dialled port wins.
        let slice = |svc: &str, port: u16| SliceMeta {
            service: Some(ObjectKey::new("shop", svc)),
            addresses: vec!["10.244.1.7".parse().unwrap()],
            ports: vec![port],
        };
        s.apply_slice(ObjectKey::new("shop", "metrics-x"), slice("metrics", 9090));
        s.apply_slice(ObjectKey::new("shop", "backend-x"), slice("backend", 8080));
        let ip = "10.244.1.7".parse().unwrap();
        assert_eq!(
            s.peer(ip, 8080, "cluster.local").unwrap().service,
            "backend"
        );
        assert_eq!(
            s.peer(ip, 9090, "cluster.local").unwrap().service,
            "metrics"
        );
        assert_eq!(s.peer(ip, 1, "cluster.local").unwrap().service, "backend");
        s.delete_slice(&ObjectKey::new("shop", "backend-x"));
        s.delete_slice(&ObjectKey::new("shop", "metrics-x"));
        assert!(s.peer(ip, 8080, "cluster.local").is_none());
        s.delete_service(&ObjectKey::new("shop", "backend"));
        assert!(s.peer("10.96.0.20".parse().unwrap(), 8080, "c").is_none());
    }

    #[test]
    fn host_network_and_finished_pods_do_not_claim_ips() {
        let mut s = Store::default();
        let mut p = pod(
            "h",
            "kube-proxy-x",
            "192.0.2.10",
            Some(("DaemonSet", "kube-proxy")),
        );
        p.host_network = true;
        s.apply_pod(p);
        let mut done = pod("f", "job-x", "10.0.0.9", None);
        done.terminated = true;
        s.apply_pod(done);
        assert!(s.peer("192.0.2.10".parse().unwrap(), 80, "c").is_none());
        assert!(s.peer("10.0.0.9".parse().unwrap(), 80, "c").is_none());
        assert_eq!(s.pod_count(), 2);
    }
}
