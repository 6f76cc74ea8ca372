//! Which agent to ask about a caller: the node a caller's IP belongs to, and that node's
//! agent. Filled from Kubernetes (`peers::kube`): each Node's pod CIDRs and addresses, and
//! the agent pods of the DaemonSet (node, IP, exchange port). A caller on no known node
//! (a CNI that does not allocate pod IPs from `spec.podCIDRs`) is asked of every agent.
//!
//! Pure: the watchers write, the lookup client reads, tests drive it directly.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
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

    /// The network's address: `ip` with the bits past the prefix cleared, if `ip` is of
    /// the network's family.
    fn masked(ip: IpAddr, prefix: u8) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(v4) if prefix <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Some(IpAddr::V4((u32::from(v4) & mask).into()))
            }
            IpAddr::V6(v6) if prefix <= 128 => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Some(IpAddr::V6((u128::from(v6) & mask).into()))
            }
            _ => None,
        }
    }

    fn key(&self) -> Option<(u8, IpAddr)> {
        Some((self.prefix, Self::masked(self.addr, self.prefix)?))
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
    /// The nodes by address and by pod network (prefix, network address): routing a
    /// caller is one lookup per prefix length in use (one or two in a cluster), not a scan
    /// of every node, which at 5,000 nodes took most of a millisecond.
    by_address: HashMap<IpAddr, String>,
    by_network: HashMap<(u8, IpAddr), String>,
    /// Prefix lengths in use, longest first, with how many networks use each.
    prefixes: BTreeMap<Reverse<u8>, usize>,
}

impl Directory {
    pub fn new(own_node: &str) -> Directory {
        Directory {
            own_node: own_node.to_owned(),
            ..Default::default()
        }
    }

    pub fn set_node(&mut self, name: &str, info: NodeInfo) {
        self.remove_node(name);
        self.index(name, &info);
        self.nodes.insert(name.to_owned(), info);
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(info) = self.nodes.remove(name) else {
            return;
        };
        for a in &info.addresses {
            if self.by_address.get(a).is_some_and(|n| n == name) {
                self.by_address.remove(a);
            }
        }
        for key in info.pod_cidrs.iter().filter_map(Cidr::key) {
            if self.by_network.get(&key).is_some_and(|n| n == name) {
                self.by_network.remove(&key);
                if let Some(count) = self.prefixes.get_mut(&Reverse(key.0)) {
                    *count -= 1;
                    if *count == 0 {
                        self.prefixes.remove(&Reverse(key.0));
                    }
                }
            }
        }
    }

    pub fn replace_nodes(&mut self, nodes: Vec<(String, NodeInfo)>) {
        self.nodes.clear();
        self.by_address.clear();
        self.by_network.clear();
        self.prefixes.clear();
        for (name, info) in nodes {
            self.set_node(&name, info);
        }
    }

    fn index(&mut self, name: &str, info: &NodeInfo) {
        for a in &info.addresses {
            self.by_address.insert(*a, name.to_owned());
        }
        for key in info.pod_cidrs.iter().filter_map(Cidr::key) {
            // Two nodes claiming one network (a misconfiguration): the later one answers.
            if self.by_network.insert(key, name.to_owned()).is_none() {
                *self.prefixes.entry(Reverse(key.0)).or_default() += 1;
            }
        }
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
        if let Some(name) = self.by_address.get(&ip) {
            return Some(name);
        }
        self.prefixes.keys().find_map(|&Reverse(prefix)| {
            let network = Cidr::masked(ip, prefix)?;
            self.by_network.get(&(prefix, network)).map(String::as_str)
        })
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
        assert_eq!(d.node_of(ip("10.1.2.3")), Some("narrow"));
    }

    /// The index follows every change: a node's networks and addresses move with it.
    #[test]
    fn the_index_follows_updates() {
        let mut d = Directory::new("n1");
        let node = |cidrs: &[&str], addrs: &[&str]| NodeInfo {
            pod_cidrs: cidrs.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            addresses: addrs.iter().map(|a| ip(a)).collect(),
        };
        d.set_node(
            "n2",
            node(&["10.244.2.0/24", "fd00:2::/64"], &["192.168.0.2"]),
        );
        assert_eq!(d.node_of(ip("fd00:2::9")), Some("n2"));
        assert_eq!(d.node_of(ip("10.244.2.9")), Some("n2"));
        // n2 gets another pod network and address; the old ones are gone.
        d.set_node("n2", node(&["10.244.9.0/24"], &["192.168.0.9"]));
        assert_eq!(d.node_of(ip("10.244.2.9")), None);
        assert_eq!(d.node_of(ip("fd00:2::9")), None);
        assert_eq!(d.node_of(ip("192.168.0.2")), None);
        assert_eq!(d.node_of(ip("10.244.9.9")), Some("n2"));
        assert_eq!(d.node_of(ip("192.168.0.9")), Some("n2"));
        // A /16 node and the replaced set.
        d.replace_nodes(vec![("n3".into(), node(&["10.245.0.0/16"], &[]))]);
        assert_eq!(d.node_of(ip("10.244.9.9")), None);
        assert_eq!(d.node_of(ip("10.245.77.1")), Some("n3"));
        d.remove_node("n3");
        assert_eq!(d.node_of(ip("10.245.77.1")), None);
        assert!(d.prefixes.is_empty() && d.by_network.is_empty());
    }
}
