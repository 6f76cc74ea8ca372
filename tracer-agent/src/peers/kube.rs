//! Fills the peer directory from Kubernetes: every Node (its pod CIDRs and addresses) and
//! the agent pods of this DaemonSet (a label selector in the agent's namespace: node, pod IP,
//! exchange port). Two small watches: one object per node each, whatever the cluster runs.
//!
//! Same watcher discipline as the metadata (`enrich::k8s::watch`): list, watch from the
//! list's resourceVersion, re-list on `410 Gone`, back off on failures; a re-list replaces
//! the directory's view at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

use super::directory::{Cidr, Directory, NodeInfo};
use crate::metrics::Metrics;

/// The container port name that carries an agent pod's exchange port.
pub const EXCHANGE_PORT_NAME: &str = "exchange";

/// Which pods are the other agents.
#[derive(Debug, Clone)]
pub struct AgentPods {
    pub namespace: String,
    /// `app.kubernetes.io/name=tracer-agent`.
    pub selector: String,
    /// Used when a pod declares no port named `exchange`.
    pub default_port: u16,
}

/// A node's pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`) and addresses.
pub fn node_info(node: &Node) -> NodeInfo {
    let spec = node.spec.as_ref();
    let mut cidrs: Vec<&str> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if cidrs.is_empty()
        && let Some(one) = spec.and_then(|s| s.pod_cidr.as_deref())
    {
        cidrs.push(one);
    }
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .collect()
        })
        .unwrap_or_default();
    NodeInfo {
        pod_cidrs: cidrs.into_iter().filter_map(Cidr::parse).collect(),
        addresses,
    }
}

/// An agent pod's node and exchange address, if it is running with an IP.
pub fn agent_of(pod: &Pod, default_port: u16) -> Option<(String, SocketAddr)> {
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(EXCHANGE_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(default_port);
    Some((node, SocketAddr::new(ip, port)))
}

/// Starts both watches; they run until the runtime stops.
pub fn spawn(
    client: Client,
    directory: Arc<RwLock<Directory>>,
    agents: AgentPods,
    metrics: Arc<Metrics>,
) {
    let dir = directory.clone();
    let m = metrics.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    tokio::spawn(async move {
        let api = nodes;
        let cfg = watcher::Config::default().any_semantic();
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut buffer: Option<Vec<(String, NodeInfo)>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => {
                    Metrics::inc(&m.kube_watch_errors);
                    tracing::warn!("watching nodes for the exchange: {e}");
                }
                Ok(Event::Init) => buffer = Some(Vec::new()),
                Ok(Event::InitApply(n)) => {
                    if let Some(b) = buffer.as_mut() {
                        b.push((n.name_any(), node_info(&n)));
                    }
                }
                Ok(Event::InitDone) => {
                    let nodes = buffer.take().unwrap_or_default();
                    tracing::info!("exchange: {} nodes listed", nodes.len());
                    dir.write().expect("directory lock").replace_nodes(nodes);
                }
                Ok(Event::Apply(n)) => dir
                    .write()
                    .expect("directory lock")
                    .set_node(&n.name_any(), node_info(&n)),
                Ok(Event::Delete(n)) => dir
                    .write()
                    .expect("directory lock")
                    .remove_node(&n.name_any()),
            }
        }
    });
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client, &agents.namespace);
        let cfg = watcher::Config::default()
            .labels(&agents.selector)
            .any_semantic();
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut buffer: Option<Vec<(String, SocketAddr)>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Err(e) => {
                    Metrics::inc(&metrics.kube_watch_errors);
                    tracing::warn!("watching the agent pods for the exchange: {e}");
                }
                Ok(Event::Init) => buffer = Some(Vec::new()),
                Ok(Event::InitApply(p)) => {
                    if let (Some(b), Some(a)) = (buffer.as_mut(), agent_of(&p, agents.default_port))
                    {
                        b.push(a);
                    }
                }
                Ok(Event::InitDone) => {
                    let found = buffer.take().unwrap_or_default();
                    tracing::info!("exchange: {} agent pods listed", found.len());
                    directory
                        .write()
                        .expect("directory lock")
                        .replace_agents(found);
                }
                Ok(Event::Apply(p)) => {
                    let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                        continue;
                    };
                    let addr = agent_of(&p, agents.default_port).map(|(_, a)| a);
                    directory
                        .write()
                        .expect("directory lock")
                        .set_agent(&node, addr);
                }
                Ok(Event::Delete(p)) => {
                    if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                        directory
                            .write()
                            .expect("directory lock")
                            .set_agent(&node, None);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_agent_pods_are_read() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n2"},
            "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24", "fd00:2::/64"]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "192.168.0.2"},
                {"type": "Hostname", "address": "n2"}
            ]}
        }))
        .unwrap();
        let info = node_info(&node);
        assert_eq!(info.pod_cidrs.len(), 2);
        assert_eq!(
            info.addresses,
            vec!["192.168.0.2".parse::<IpAddr>().unwrap()]
        );

        let pod = |phase: &str, ports: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "tracer-agent-x", "namespace": "tracing"},
                "spec": {"nodeName": "n2", "containers": [{"name": "agent", "image": "a", "ports": ports}]},
                "status": {"phase": phase, "podIP": "192.168.0.2"}
            }))
            .unwrap()
        };
        let named = serde_json::json!([{"name": "metrics", "containerPort": 9477},
                                       {"name": "exchange", "containerPort": 9555}]);
        assert_eq!(
            agent_of(&pod("Running", named.clone()), 9478),
            Some(("n2".into(), "192.168.0.2:9555".parse().unwrap()))
        );
        assert_eq!(
            agent_of(&pod("Running", serde_json::json!([])), 9478),
            Some(("n2".into(), "192.168.0.2:9478".parse().unwrap()))
        );
        assert_eq!(agent_of(&pod("Pending", named), 9478), None);
    }
}
