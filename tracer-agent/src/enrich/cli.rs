//! Command-line flags (each with an environment variable, so a ConfigMap can set them) for
//! metadata and Kubernetes mode.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, ValueEnum};

use super::{EnrichConfig, EnrichError, KubeScope};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KubeMode {
    /// On when KUBERNETES_SERVICE_HOST is set (the agent runs in a pod).
    Auto,
    #[value(alias = "on")]
    True,
    #[value(alias = "off")]
    False,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EnrichArgs {
    /// Kubernetes mode: trace pods only, with pod metadata from the API server.
    /// `--kubernetes` alone means true; default auto (on inside a pod).
    #[arg(
        long,
        value_name = "auto|true|false",
        env = "TRACER_KUBERNETES",
        default_value = "auto",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub kubernetes: KubeMode,

    /// This node's name (Kubernetes mode; from the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Trace only pods in these namespaces (repeatable or comma-separated). Default: all.
    #[arg(
        long = "namespace",
        env = "TRACER_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS"
    )]
    pub namespaces: Vec<String>,

    /// Never trace pods in these namespaces (repeatable or comma-separated).
    #[arg(
        long = "exclude-namespace",
        env = "TRACER_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS"
    )]
    pub exclude_namespaces: Vec<String>,

    /// Kubernetes mode: also trace processes outside pods (kubelet, host daemons).
    #[arg(long, env = "TRACER_TRACE_HOST_PROCESSES")]
    pub trace_host_processes: bool,

    /// UID of the agent's own pod (downward API metadata.uid); never traced.
    #[arg(long, env = "POD_UID", value_name = "UID")]
    pub pod_uid: Option<String>,

    /// Cluster DNS domain used in peers' `server.address` (`svc.ns.svc.<domain>`).
    #[arg(long, env = "TRACER_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Watch Services and EndpointSlices cluster-wide to name CLIENT spans' peers.
    #[arg(long, env = "TRACER_KUBE_PEERS", default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub kube_peers: bool,

    /// The cgroup2 mount to resolve cgroup ids in. Default: the first cgroup2 mount of
    /// /host/sys/fs/cgroup, /host/sys/fs/cgroup/unified, /sys/fs/cgroup, /sys/fs/cgroup/unified.
    #[arg(long, env = "TRACER_CGROUP_ROOT", value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,

    /// How long spans of a pod wait for its metadata before leaving without it (ms).
    #[arg(
        long,
        env = "TRACER_METADATA_WAIT_MS",
        default_value_t = 5000,
        value_name = "MS"
    )]
    pub metadata_wait_ms: u64,
}

impl EnrichArgs {
    /// The enricher's configuration; `env` looks up environment variables (for the auto mode).
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<EnrichConfig, EnrichError> {
        let on = match self.kubernetes {
            KubeMode::True => true,
            KubeMode::False => false,
            KubeMode::Auto => env("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()),
        };
        let clean = |list: &[String]| -> Vec<String> {
            list.iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let kubernetes = if on {
            let node_name = self
                .node_name
                .clone()
                .filter(|n| !n.is_empty())
                .ok_or(EnrichError::NoNodeName)?;
            let own_pod_uid = self
                .pod_uid
                .clone()
                .filter(|u| !u.is_empty())
                .map(|u| u.to_ascii_lowercase())
                .or_else(|| super::pod_uid_of(std::path::Path::new("/proc"), std::process::id()));
            Some(KubeScope {
                node_name,
                include_namespaces: clean(&self.namespaces),
                exclude_namespaces: clean(&self.exclude_namespaces),
                host_processes: self.trace_host_processes,
                own_pod_uid,
                cluster_domain: self.cluster_domain.trim_matches('.').to_owned(),
                watch_peers: self.kube_peers,
            })
        } else {
            None
        };
        Ok(EnrichConfig {
            kubernetes,
            cgroup_root: self.cgroup_root.clone(),
            metadata_wait: Duration::from_millis(self.metadata_wait_ms),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        enrich: EnrichArgs,
    }

    fn parse(args: &[&str]) -> EnrichArgs {
        Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .unwrap()
            .enrich
    }

    #[test]
    fn kubernetes_mode_auto_on_and_off() {
        let none = |_: &str| None;
        let in_pod = |k: &str| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_owned());
        assert!(parse(&[]).resolve(none).unwrap().kubernetes.is_none());
        assert!(matches!(
            parse(&[]).resolve(in_pod),
            Err(EnrichError::NoNodeName)
        ));
        let cfg = parse(&["--node-name", "n1"]).resolve(in_pod).unwrap();
        assert_eq!(cfg.kubernetes.unwrap().node_name, "n1");
        assert!(
            parse(&["--kubernetes=false"])
                .resolve(in_pod)
                .unwrap()
                .kubernetes
                .is_none()
        );
        let cfg = parse(&[
            "--kubernetes",
            "--node-name",
            "n1",
            "--namespace",
            "shop,web",
            "--exclude-namespace",
            "kube-system",
            "--pod-uid",
            "ABC",
            "--kube-peers",
            "false",
            "--metadata-wait-ms",
            "100",
        ])
        .resolve(none)
        .unwrap();
        let k = cfg.kubernetes.unwrap();
        assert_eq!(k.include_namespaces, vec!["shop", "web"]);
        assert!(k.namespace_traced("shop") && !k.namespace_traced("kube-system"));
        assert!(!k.namespace_traced("other"));
        assert_eq!(k.own_pod_uid.as_deref(), Some("abc"));
        assert!(!k.watch_peers);
        assert_eq!(cfg.metadata_wait, Duration::from_millis(100));
    }
}
