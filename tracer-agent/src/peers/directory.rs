//! Which agent to ask about a caller: the node a caller's IP belongs to, and that node's
//! agent. Filled from Kubernetes (`peers::kube`): each Node's pod CIDRs and addresses, and
//! the agent pods of the DaemonSet (node, IP, exchange port). A caller on no known node
//! (a CNI that does not allocate pod IPs from `spec.podCIDRs`) is asked of every agent.
//!
//! Pure: the watchers write, the lookup client reads, tests drive it directly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// An IP network, `10.244.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n` or `x::/n`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.trim().split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What the directory knows of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub pod_cidrs: Vec<Cidr>,
    /// The node's own addresses (callers on the host network).
    pub addresses: Vec<IpAddr>,
}

/// Where a caller's agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The agent of the caller's node.
    Peer(SocketAddr),
    /// The caller is on this node: no other agent traced it.
    Local,
    /// The caller's node is known but runs no (ready) agent, or the IP is on no known node.
    Unknown,
}

#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// This agent's node: callers there are never asked about.
    pub own_node: String,
    nodes: HashMap<String, NodeInfo>,
    /// Exchange address of the agent on each node.
    agents: HashMap<String, SocketAddr>,
}

impl Directory {
    pub fn new(own_node: &str) -> Directory {
        Directory {
            own_node: own_node.to_owned(),
            ..Default::default()
        }
    }

    pub fn set_node(&mut self, name: &str, info: NodeInfo) {
        self.nodes.insert(name.to_owned(), info);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    pub fn replace_nodes(&mut self, nodes: Vec<(String, NodeInfo)>) {
        self.nodes = nodes.into_iter().collect();
    }

    pub fn set_agent(&mut self, node: &str, addr: Option<SocketAddr>) {
        match addr {
            Some(a) => self.agents.insert(node.to_owned(), a),
            None => self.agents.remove(node),
        };
    }

    pub fn replace_agents(&mut self, agents: Vec<(String, SocketAddr)>) {
        self.agents = agents.into_iter().collect();
    }

    /// The node an IP belongs to: a node's own address first, then the most specific pod
    /// CIDR.
    pub fn node_of(&self, ip: IpAddr) -> Option<&str> {
        if let Some((name, _)) = self.nodes.iter().find(|(_, n)| n.addresses.contains(&ip)) {
            return Some(name);
        }
        self.nodes
            .iter()
            .flat_map(|(name, n)| n.pod_cidrs.iter().map(move |c| (name, c)))
            .filter(|(_, c)| c.contains(ip))
            .max_by_key(|(_, c)| c.prefix)
            .map(|(name, _)| name.as_str())
    }

    pub fn route(&self, ip: IpAddr) -> Route {
        match self.node_of(ip) {
            Some(node) if node == self.own_node => Route::Local,
            Some(node) => match self.agents.get(node) {
                Some(addr) => Route::Peer(*addr),
                None => Route::Unknown,
            },
            None => Route::Unknown,
        }
    }

    /// Every other node's agent.
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.agents
            .iter()
            .filter(|(node, _)| **node != self.own_node)
            .map(|(_, a)| *a)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.244.1.0/24").unwrap();
        assert!(c.contains(ip("10.244.1.200")));
        assert!(!c.contains(ip("10.244.2.1")));
        assert!(!c.contains(ip("fd00::1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let v6 = Cidr::parse("fd00:10:244:1::/64").unwrap();
        assert!(v6.contains(ip("fd00:10:244:1::5")));
        assert!(!v6.contains(ip("fd00:10:244:2::5")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0",
            "x/8",
            "::/129",
            "10.0.0.0/-1",
            "",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn callers_route_to_their_nodes_agent() {
        let mut d = Directory::new("n1");
        let node = |cidr: &str, addr: &str| NodeInfo {
            pod_cidrs: vec![Cidr::parse(cidr).unwrap()],
            addresses: vec![ip(addr)],
        };
        d.replace_nodes(vec![
            ("n1".into(), node("10.244.1.0/24", "192.168.0.1")),
            ("n2".into(), node("10.244.2.0/24", "192.168.0.2")),
            ("n3".into(), node("10.244.3.0/24", "192.168.0.3")),
        ]);
        let (a1, a2): (SocketAddr, SocketAddr) = (
            "192.168.0.1:9478".parse().unwrap(),
            "192.168.0.2:9478".parse().unwrap(),
        );
        d.replace_agents(vec![("n1".into(), a1), ("n2".into(), a2)]);
        assert_eq!(d.route(ip("10.244.2.7")), Route::Peer(a2), "a pod on n2");
        assert_eq!(
            d.route(ip("192.168.0.2")),
            Route::Peer(a2),
            "n2's host network"
        );
        assert_eq!(d.route(ip("10.244.1.7")), Route::Local);
        assert_eq!(
            d.route(ip("10.244.3.7")),
            Route::Unknown,
            "n3 runs no agent"
        );
        assert_eq!(d.route(ip("10.9.9.9")), Route::Unknown, "on no node");
        // The agent on n2 goes away.
        d.set_agent("n2", None);
        assert_eq!(d.route(ip("10.244.2.7")), Route::Unknown);
        assert_eq!(d.peers().collect::<Vec<_>>(), Vec::<SocketAddr>::new());
        d.set_agent("n2", Some(a2));
        assert_eq!(d.peers().collect::<Vec<_>>(), vec![a2]);
    }

    #[test]
    fn the_most_specific_cidr_wins() {
        let mut d = Directory::new("n1");
        d.set_node(
            "wide",
            NodeInfo {
                pod_cidrs: vec![Cidr::parse("10.0.0.0/8").unwrap()],
                addresses: vec![],
            },
        );
        d.set_node(
            "narrow",
            NodeInfo {
                pod_cidrs: vec![Cidr::parse("10.1.2.0/24").unwrap()],
                addresses: vec![],
            },
        );
        assert_eq!(d.node_of(ip("10.1.2.3")), Some("narrow"));
        assert_eq!(d.node_of(ip("10.1.3.3")), Some("wide"));
        d.remove_node("wide");
        assert_eq!(d.node_of(ip("10.1.3.3")), None);
    }
}
