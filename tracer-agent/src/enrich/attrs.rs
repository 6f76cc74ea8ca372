//! The resource of a traced process: pure rules over what /proc, the cgroup path and the
//! Kubernetes API said about it.

use super::process::{ProcessInfo, process_resource};
use crate::spans::{AttrValue, Resource};

use super::cgroup::CgroupInfo;
use super::k8s::model::{ContainerMeta, PodMeta};

/// Everything known about one process.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub process: &'a ProcessInfo,
    pub cgroup: &'a CgroupInfo,
    /// The pod, once the API has told about it.
    pub pod: Option<&'a PodMeta>,
    /// `(attribute, name)` of the pod's workloads, innermost first (see `Store::workloads`).
    pub workloads: &'a [(&'static str, String)],
    /// Kubernetes mode: this node's name.
    pub node_name: Option<&'a str>,
    pub host_name: &'a str,
}

impl Subject<'_> {
    pub fn container(&self) -> Option<&ContainerMeta> {
        let pod = self.pod?;
        match &self.cgroup.container_id {
            Some(id) => pod.container_by_id(id),
            None => pod.sole_container(),
        }
    }
}

fn service_name_from_attrs(raw: Option<&str>) -> Option<String> {
    raw?.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == "service.name" && !v.trim().is_empty()).then(|| v.trim().to_owned())
    })
}

/// `service.name` of a process in a pod, first found wins:
/// 1. `OTEL_SERVICE_NAME` in the process's environment, else in the container's spec;
/// 2. `service.name` in `OTEL_RESOURCE_ATTRIBUTES` (same two places);
/// 3. the pod annotation `resource.opentelemetry.io/service.name`;
/// 4. the pod labels `app.kubernetes.io/name`, then `app`;
/// 5. the outermost workload (Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet);
/// 6. the pod's name.
///
/// 1–2 are what an OpenTelemetry SDK in the process would report, so SDK spans and ours
/// agree. 3–6 follow the semantic conventions' Kubernetes guidance, except that
/// `app.kubernetes.io/instance` is not used: it usually names a Helm release, shared by all
/// the services the release installs.
pub fn k8s_service_name(s: &Subject, pod: &PodMeta) -> String {
    let container = s.container();
    let nonempty = |v: Option<&String>| v.filter(|v| !v.is_empty()).cloned();
    nonempty(s.process.otel_service_name.as_ref())
        .or_else(|| nonempty(container.and_then(|c| c.otel_service_name.as_ref())))
        .or_else(|| service_name_from_attrs(s.process.otel_resource_attributes.as_deref()))
        .or_else(|| {
            service_name_from_attrs(container.and_then(|c| c.otel_resource_attributes.as_deref()))
        })
        .or_else(|| nonempty(pod.resource_annotations.get("service.name")))
        .or_else(|| nonempty(pod.labels.get("app.kubernetes.io/name")))
        .or_else(|| nonempty(pod.labels.get("app")))
        .or_else(|| s.workloads.last().map(|(_, n)| n.clone()))
        .unwrap_or_else(|| pod.name.clone())
}

fn set(attrs: &mut Vec<(String, AttrValue)>, key: &str, value: impl Into<AttrValue>) {
    let value = value.into();
    match attrs.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => attrs.push((key.to_owned(), value)),
    }
}

pub fn build_resource(s: &Subject) -> Resource {
    let mut process = s.process.clone();
    // Only the process's own environment is authoritative; when it is unreadable (another
    // user's process without CAP_SYS_PTRACE), the container spec's literal values stand in.
    if let Some(c) = s.container()
        && process.otel_resource_attributes.is_none()
    {
        process.otel_resource_attributes = c.otel_resource_attributes.clone();
    }
    let host = s.node_name.unwrap_or(s.host_name);
    let mut attrs = process_resource(&process, host).attributes;
    if let Some(id) = &s.cgroup.container_id {
        set(&mut attrs, "container.id", id.clone());
    }
    if let Some(node) = s.node_name {
        set(&mut attrs, "k8s.node.name", node);
    }
    if let Some(uid) = &s.cgroup.pod_uid {
        set(&mut attrs, "k8s.pod.uid", uid.clone());
    }
    if let Some(pod) = s.pod {
        // The API's UID: for static pods the cgroup carries the config hash instead.
        set(&mut attrs, "k8s.pod.uid", pod.uid.clone());
        set(&mut attrs, "k8s.pod.name", pod.name.clone());
        set(&mut attrs, "k8s.namespace.name", pod.namespace.clone());
        if let Some(c) = s.container() {
            set(&mut attrs, "k8s.container.name", c.name.clone());
        }
        for (key, name) in s.workloads {
            set(&mut attrs, key, name.clone());
        }
        for (key, value) in &pod.resource_annotations {
            if key != "service.name" {
                set(&mut attrs, key, value.clone());
            }
        }
        set(&mut attrs, "service.name", k8s_service_name(s, pod));
    }
    Resource { attributes: attrs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::k8s::model::Owner;

    fn process() -> ProcessInfo {
        ProcessInfo {
            pid: 7,
            comm: "python3".into(),
            exe_path: Some("/usr/local/bin/python3.11".into()),
            ..Default::default()
        }
    }

    fn cgroup() -> CgroupInfo {
        CgroupInfo {
            container_id: Some("a".repeat(64)),
            runtime: None,
            pod_uid: Some("70565f42-b704-42f2-83fe-1ffb77a67800".into()),
        }
    }

    fn pod() -> PodMeta {
        PodMeta {
            uid: "70565f42-b704-42f2-83fe-1ffb77a67800".into(),
            name: "backend-7d4b9c8f6d-x2x9z".into(),
            namespace: "shop".into(),
            owner: Some(Owner {
                kind: "ReplicaSet".into(),
                name: "backend-7d4b9c8f6d".into(),
            }),
            containers: vec![
                ContainerMeta {
                    name: "app".into(),
                    id: Some("a".repeat(64)),
                    ..Default::default()
                },
                ContainerMeta {
                    name: "proxy".into(),
                    id: Some("b".repeat(64)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn get(r: &Resource, key: &str) -> Option<String> {
        r.get(key).map(|v| v.to_string())
    }

    #[test]
    fn off_kubernetes_the_process_and_its_container() {
        let (p, c) = (process(), cgroup());
        let r = build_resource(&Subject {
            process: &p,
            cgroup: &c,
            pod: None,
            workloads: &[],
            node_name: None,
            host_name: "box",
        });
        assert_eq!(r.service_name(), "python3.11");
        assert_eq!(get(&r, "container.id"), Some("a".repeat(64)));
        assert_eq!(get(&r, "host.name").as_deref(), Some("box"));
        assert_eq!(get(&r, "k8s.node.name"), None);
    }

    #[test]
    fn pod_attributes_and_service_name_precedence() {
        let (mut p, c, mut pod) = (process(), cgroup(), pod());
        let workloads = vec![
            ("k8s.replicaset.name", "backend-7d4b9c8f6d".to_owned()),
            ("k8s.deployment.name", "backend".to_owned()),
        ];
        let build = |p: &ProcessInfo, pod: &PodMeta| {
            build_resource(&Subject {
                process: p,
                cgroup: &c,
                pod: Some(pod),
                workloads: &workloads,
                node_name: Some("node-1"),
                host_name: "agent-pod",
            })
        };
        let r = build(&p, &pod);
        assert_eq!(
            get(&r, "k8s.pod.name").as_deref(),
            Some("backend-7d4b9c8f6d-x2x9z")
        );
        assert_eq!(get(&r, "k8s.namespace.name").as_deref(), Some("shop"));
        assert_eq!(get(&r, "k8s.container.name").as_deref(), Some("app"));
        assert_eq!(get(&r, "k8s.node.name").as_deref(), Some("node-1"));
        assert_eq!(get(&r, "host.name").as_deref(), Some("node-1"));
        assert_eq!(get(&r, "k8s.deployment.name").as_deref(), Some("backend"));
        assert_eq!(get(&r, "container.id"), Some("a".repeat(64)));
        // Workload name, then labels, then the annotation, then env: each overrides.
        assert_eq!(r.service_name(), "backend");
        pod.labels.insert("app".into(), "be".into());
        assert_eq!(build(&p, &pod).service_name(), "be");
        pod.labels
            .insert("app.kubernetes.io/name".into(), "backend-api".into());
        assert_eq!(build(&p, &pod).service_name(), "backend-api");
        pod.resource_annotations
            .insert("service.name".into(), "annotated".into());
        pod.resource_annotations
            .insert("service.version".into(), "2".into());
        let r = build(&p, &pod);
        assert_eq!(r.service_name(), "annotated");
        assert_eq!(get(&r, "service.version").as_deref(), Some("2"));
        pod.containers[0].otel_resource_attributes = Some("service.name=from-spec-attrs".into());
        assert_eq!(build(&p, &pod).service_name(), "from-spec-attrs");
        pod.containers[0].otel_service_name = Some("from-spec".into());
        assert_eq!(build(&p, &pod).service_name(), "from-spec");
        p.otel_service_name = Some("from-env".into());
        assert_eq!(build(&p, &pod).service_name(), "from-env");
        // No workload at all (a bare pod): the pod's name.
        let bare = PodMeta {
            owner: None,
            ..self::pod()
        };
        let r = build_resource(&Subject {
            process: &process(),
            cgroup: &c,
            pod: Some(&bare),
            workloads: &[],
            node_name: Some("node-1"),
            host_name: "h",
        });
        assert_eq!(r.service_name(), "backend-7d4b9c8f6d-x2x9z");
    }

    #[test]
    fn pod_known_only_by_its_cgroup() {
        let (p, c) = (process(), cgroup());
        let r = build_resource(&Subject {
            process: &p,
            cgroup: &c,
            pod: None,
            workloads: &[],
            node_name: Some("node-1"),
            host_name: "h",
        });
        assert_eq!(
            get(&r, "k8s.pod.uid").as_deref(),
            Some("70565f42-b704-42f2-83fe-1ffb77a67800")
        );
        assert_eq!(get(&r, "k8s.pod.name"), None);
        assert_eq!(r.service_name(), "python3.11");
    }
}
