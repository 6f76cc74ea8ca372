//! The peer directory at the scale the cross-node exchange must reach (5,000 nodes): what
//! it keeps in memory once the node watch has delivered every Node object (each is turned
//! into its pod CIDRs and addresses and dropped), and what routing one caller costs.
//! Measured with a counting allocator in this test binary; the figures are printed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;
use tracer_agent::peers::directory::{Directory, Route};
use tracer_agent::peers::kube::node_info;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts the bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const NODES: u32 = 5_000;

/// A Node as the API server sends it (the fields a real one has that matter for size:
/// labels, addresses, pod CIDRs, capacity), node `i` owning 10.(i/256).(i%256).0/24 plus an
/// IPv6 /64, at 172.16.x.y.
fn node(i: u32) -> Node {
    let (hi, lo) = (i / 256, i % 256);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": format!("node-{i:05}.cluster.example.internal"),
            "uid": format!("00000000-0000-0000-0000-{i:012}"),
            "resourceVersion": "123456789",
            "labels": {
                "kubernetes.io/hostname": format!("node-{i:05}"),
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m6i.2xlarge",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": format!("eu-west-1{}", ["a", "b", "c"][i as usize % 3]),
            }
        },
        "spec": {
            "podCIDR": format!("10.{hi}.{lo}.0/24"),
            "podCIDRs": [format!("10.{hi}.{lo}.0/24"), format!("fd00:{hi:x}:{lo:x}::/64")],
            "providerID": format!("aws:///eu-west-1a/i-{i:017x}")
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": format!("172.16.{hi}.{lo}")},
                {"type": "Hostname", "address": format!("node-{i:05}")}
            ],
            "capacity": {"cpu": "8", "memory": "32386284Ki", "pods": "110"}
        }
    }))
    .expect("a valid Node")
}

#[test]
fn five_thousand_nodes_in_a_few_mib_and_routed_in_microseconds() {
    let mut dir = Directory::new("node-00000.cluster.example.internal");
    let before = LIVE.load(Ordering::Relaxed);
    // As the watcher does: one page of Node objects at a time, each turned into its
    // NodeInfo, the objects dropped.
    for page in (0..NODES).collect::<Vec<_>>().chunks(500) {
        let objects: Vec<Node> = page.iter().map(|&i| node(i)).collect();
        for n in &objects {
            let name = n.metadata.name.clone().expect("named");
            dir.set_node(&name, node_info(n));
        }
    }
    for i in 0..NODES {
        let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
        dir.set_agent(
            &format!("node-{i:05}.cluster.example.internal"),
            Some(SocketAddr::from(([172, 16, hi, lo], 9465))),
        );
    }
    let retained = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(dir.node_count(), NODES as usize);

    // A caller in the last node's pod CIDR: the worst case for a scan.
    let last = NODES - 1;
    let caller = IpAddr::V4(Ipv4Addr::new(
        10,
        (last / 256) as u8,
        (last % 256) as u8,
        17,
    ));
    let started = Instant::now();
    let rounds = 200;
    for _ in 0..rounds {
        assert!(matches!(dir.route(caller), Route::Peer(_)));
    }
    let per_lookup = started.elapsed() / rounds;
    println!(
        "{NODES} nodes: {retained} bytes retained ({} per node); routing a caller: {per_lookup:?}",
        retained / NODES as usize
    );
    assert!(
        retained < 8 << 20,
        "{retained} bytes for {NODES} nodes: the directory must not keep whole Node objects"
    );
}
