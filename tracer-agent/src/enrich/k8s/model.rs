//! Compact views of the Kubernetes objects the agent reads. Pure: API objects in, small
//! values out, so the store and the resource rules are tested without a cluster.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// Pod annotations with this prefix become resource attributes (OpenTelemetry semantic
/// conventions, "Specify resource attributes using Kubernetes annotations").
pub const RESOURCE_ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";
/// Set by the kubelet on mirror pods; its value is the static pod's UID (its config hash),
/// which is what the static pod's cgroup is named after.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// The controller that owns a pod, directly (`Owner`) or through a ReplicaSet or Job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    pub name: String,
    /// The runtime's id without its scheme (`containerd://`, `cri-o://`, `docker://`).
    pub id: Option<String>,
    /// Literal values from the pod spec (`env[].value`; references to ConfigMaps and
    /// Secrets are not resolved: the process's own environment covers those).
    pub otel_service_name: Option<String>,
    pub otel_resource_attributes: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `resource.opentelemetry.io/<attribute>` annotations, prefix removed.
    pub resource_annotations: BTreeMap<String, String>,
    pub mirror_of: Option<String>,
    pub owner: Option<Owner>,
    pub containers: Vec<ContainerMeta>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// Succeeded or Failed: its IP may already belong to another pod.
    pub terminated: bool,
}

impl PodMeta {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    pub fn container_by_id(&self, id: &str) -> Option<&ContainerMeta> {
        self.containers.iter().find(|c| c.id.as_deref() == Some(id))
    }

    /// Only one container: processes in the pod's cgroup belong to it.
    pub fn sole_container(&self) -> Option<&ContainerMeta> {
        match self.containers.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceMeta {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceMeta {
    /// The Service the slice belongs to (`kubernetes.io/service-name` label).
    pub service: Option<ObjectKey>,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<u16>,
}

/// `containerd://abc…` → `abc…`.
pub fn strip_runtime_scheme(id: &str) -> &str {
    id.split_once("://").map(|(_, rest)| rest).unwrap_or(id)
}

fn controller(owners: Option<&Vec<OwnerReference>>) -> Option<Owner> {
    let owners = owners?;
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
        .map(|o| Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
        })
}

fn parse_ips<'a>(ips: impl Iterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips {
        if let Ok(ip) = ip.parse()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

pub fn pod_meta(pod: &Pod) -> Option<PodMeta> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone()?;
    let name = meta.name.clone()?;
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let annotations = meta.annotations.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();

    let mut containers: Vec<ContainerMeta> = Vec::new();
    if let Some(spec) = spec {
        let all = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter());
        for c in all {
            let env_value = |key: &str| {
                c.env
                    .iter()
                    .flatten()
                    .find(|e| e.name == key)
                    .and_then(|e| e.value.clone())
            };
            containers.push(ContainerMeta {
                name: c.name.clone(),
                id: None,
                otel_service_name: env_value("OTEL_SERVICE_NAME"),
                otel_resource_attributes: env_value("OTEL_RESOURCE_ATTRIBUTES"),
            });
        }
    }
    if let Some(status) = status {
        let statuses = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
            .chain(status.ephemeral_container_statuses.iter().flatten());
        for s in statuses {
            let id = s
                .container_id
                .as_deref()
                .map(|id| strip_runtime_scheme(id).to_ascii_lowercase())
                .filter(|id| !id.is_empty());
            match containers.iter_mut().find(|c| c.name == s.name) {
                Some(c) => c.id = id,
                None => containers.push(ContainerMeta {
                    name: s.name.clone(),
                    id,
                    ..Default::default()
                }),
            }
        }
    }

    let mut ips = parse_ips(
        status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str()),
    );
    if ips.is_empty() {
        ips = parse_ips(status.and_then(|s| s.pod_ip.as_deref()).into_iter());
    }
    let phase = status.and_then(|s| s.phase.as_deref());

    Some(PodMeta {
        uid: uid.to_ascii_lowercase(),
        name,
        namespace,
        node_name: spec.and_then(|s| s.node_name.clone()),
        labels: meta.labels.clone().unwrap_or_default(),
        resource_annotations: annotations
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(RESOURCE_ANNOTATION_PREFIX)
                    .map(|k| (k.to_owned(), v.clone()))
            })
            .collect(),
        mirror_of: annotations
            .get(MIRROR_ANNOTATION)
            .map(|v| v.to_ascii_lowercase()),
        owner: controller(meta.owner_references.as_ref()),
        containers,
        ips,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        terminated: matches!(phase, Some("Succeeded" | "Failed")),
    })
}

pub fn service_meta(svc: &Service) -> Option<ServiceMeta> {
    let spec = svc.spec.as_ref();
    let ips = spec
        .and_then(|s| s.cluster_ips.clone())
        .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
        .unwrap_or_default();
    Some(ServiceMeta {
        namespace: svc.metadata.namespace.clone()?,
        name: svc.metadata.name.clone()?,
        // Headless services say "None" here: parse_ips drops it.
        cluster_ips: parse_ips(ips.iter().map(String::as_str)),
    })
}

pub fn slice_meta(slice: &EndpointSlice) -> SliceMeta {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .zip(slice.metadata.namespace.as_ref())
        .map(|(name, ns)| ObjectKey::new(ns, name));
    let addresses = if slice.address_type == "FQDN" {
        Vec::new()
    } else {
        parse_ips(
            slice
                .endpoints
                .iter()
                .flat_map(|e| e.addresses.iter().map(String::as_str)),
        )
    };
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.port.and_then(|p| u16::try_from(p).ok()))
        .collect();
    SliceMeta {
        service,
        addresses,
        ports,
    }
}

/// The Deployment behind a ReplicaSet, when the names prove it: the deployment controller
/// names each ReplicaSet `<deployment>-<pod-template-hash>` and labels its pods with that
/// hash. Anything else needs a look at the ReplicaSet's own owner.
pub fn deployment_from_replicaset(
    rs_name: &str,
    pod_template_hash: Option<&str>,
) -> Option<String> {
    let hash = pod_template_hash?;
    let deployment = rs_name.strip_suffix(hash)?.strip_suffix('-')?;
    (!deployment.is_empty()).then(|| deployment.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pod_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "backend-7d4b9c8f6d-x2x9z",
                "namespace": "shop",
                "uid": "70565F42-B704-42F2-83FE-1FFB77A67800",
                "resourceVersion": "1001",
                "labels": {"app": "backend", "pod-template-hash": "7d4b9c8f6d"},
                "annotations": {
                    "resource.opentelemetry.io/service.version": "1.2.3",
                    "kubectl.kubernetes.io/restartedAt": "x"
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "backend-7d4b9c8f6d", "uid": "u1", "controller": true
                }]
            },
            "spec": {
                "nodeName": "node-1",
                "initContainers": [{"name": "init"}],
                "containers": [
                    {"name": "app", "env": [
                        {"name": "OTEL_SERVICE_NAME", "value": "orders"},
                        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
                    ]},
                    {"name": "sidecar"}
                ]
            },
            "status": {
                "phase": "Running",
                "podIP": "10.244.1.7",
                "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}],
                "initContainerStatuses": [{"name": "init", "containerID": "containerd://1111111111111111111111111111111111111111111111111111111111111111",
                    "image": "i", "imageID": "", "ready": false, "restartCount": 0}],
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://A678B5127D3F1A1BFD029818C628A8CD106D7B873FF64CD6BFAA7022579CBAB5",
                     "image": "i", "imageID": "", "ready": true, "restartCount": 0},
                    {"name": "sidecar", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ]
            }
        })
    }

    #[test]
    fn pod_fields_the_agent_uses() {
        let pod: Pod = serde_json::from_value(pod_json()).unwrap();
        let m = pod_meta(&pod).unwrap();
        assert_eq!(m.uid, "70565f42-b704-42f2-83fe-1ffb77a67800");
        assert_eq!(m.key(), ObjectKey::new("shop", "backend-7d4b9c8f6d-x2x9z"));
        assert_eq!(m.node_name.as_deref(), Some("node-1"));
        assert_eq!(
            m.owner,
            Some(Owner {
                kind: "ReplicaSet".into(),
                name: "backend-7d4b9c8f6d".into()
            })
        );
        assert_eq!(
            m.resource_annotations.get("service.version").unwrap(),
            "1.2.3"
        );
        assert_eq!(m.resource_annotations.len(), 1);
        assert_eq!(m.containers.len(), 3);
        let app = m
            .container_by_id("a678b5127d3f1a1bfd029818c628a8cd106d7b873ff64cd6bfaa7022579cbab5")
            .unwrap();
        assert_eq!(app.name, "app");
        assert_eq!(app.otel_service_name.as_deref(), Some("orders"));
        assert_eq!(m.containers[0].name, "init");
        assert!(m.containers[0].id.is_some());
        assert_eq!(m.containers[2].id, None, "not started yet");
        assert_eq!(m.ips.len(), 2);
        assert!(!m.host_network && !m.terminated);
        assert_eq!(m.sole_container(), None);
    }

    #[test]
    fn services_and_slices() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backend", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"]}
        }))
        .unwrap();
        let s = service_meta(&svc).unwrap();
        assert_eq!(s.cluster_ips, vec!["10.96.0.20".parse::<IpAddr>().unwrap()]);
        let headless: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"clusterIP": "None"}
        }))
        .unwrap();
        assert!(service_meta(&headless).unwrap().cluster_ips.is_empty());

        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "backend-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "backend"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.7"]}, {"addresses": ["10.244.2.9"]}],
            "ports": [{"port": 8080, "protocol": "TCP"}]
        }))
        .unwrap();
        let m = slice_meta(&slice);
        assert_eq!(m.service, Some(ObjectKey::new("shop", "backend")));
        assert_eq!(m.addresses.len(), 2);
        assert_eq!(m.ports, vec![8080]);
    }

    #[test]
    fn deployment_names_from_replicaset_names() {
        assert_eq!(
            deployment_from_replicaset("backend-7d4b9c8f6d", Some("7d4b9c8f6d")).as_deref(),
            Some("backend")
        );
        assert_eq!(
            deployment_from_replicaset("my-app-v2-5f6c", Some("5f6c")).as_deref(),
            Some("my-app-v2")
        );
        assert_eq!(deployment_from_replicaset("backend-7d4b9c8f6d", None), None);
        assert_eq!(deployment_from_replicaset("standalone", Some("abc")), None);
        assert_eq!(strip_runtime_scheme("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_scheme("abc"), "abc");
    }
}
