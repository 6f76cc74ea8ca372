//! Feeds the store from the Kubernetes API with `kube`'s watcher: list, then watch from the
//! list's resourceVersion, following bookmarks; on `410 Gone` (the resourceVersion expired)
//! list again; on any other failure retry with exponential backoff. A re-list is buffered
//! and swapped in whole, so the store never shows half a list.
//!
//! Pods are watched on this node only (`spec.nodeName` field selector), Services and
//! EndpointSlices cluster-wide (peers live anywhere). ReplicaSets and Jobs are read one at a
//! time, when a pod's owner cannot be told from names alone, and cached.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::model::{self, ObjectKey, Owner, PodMeta, deployment_from_replicaset};
use super::store::{SharedStore, Store};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub node_name: String,
    /// Also watch Services and EndpointSlices (cluster-wide) to name CLIENT spans' peers.
    pub peers: bool,
}

/// One kind of watched object and how it lands in the store.
trait Watched: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    type Item: Send;
    const WHAT: &'static str;
    fn convert(&self) -> Option<Self::Item>;
    fn apply(store: &mut Store, item: Self::Item);
    fn delete(store: &mut Store, obj: &Self);
    fn replace(store: &mut Store, items: Vec<Self::Item>);
}

impl Watched for Pod {
    type Item = PodMeta;
    const WHAT: &'static str = "pods";
    fn convert(&self) -> Option<PodMeta> {
        model::pod_meta(self)
    }
    fn apply(store: &mut Store, item: PodMeta) {
        store.apply_pod(item);
    }
    fn delete(store: &mut Store, obj: &Self) {
        if let Some(uid) = obj.uid() {
            store.delete_pod(&uid.to_ascii_lowercase());
        }
    }
    fn replace(store: &mut Store, items: Vec<PodMeta>) {
        store.replace_pods(items);
    }
}

impl Watched for Service {
    type Item = model::ServiceMeta;
    const WHAT: &'static str = "services";
    fn convert(&self) -> Option<Self::Item> {
        model::service_meta(self)
    }
    fn apply(store: &mut Store, item: Self::Item) {
        store.apply_service(item);
    }
    fn delete(store: &mut Store, obj: &Self) {
        store.delete_service(&ObjectKey::new(
            &obj.namespace().unwrap_or_default(),
            &obj.name_any(),
        ));
    }
    fn replace(store: &mut Store, items: Vec<Self::Item>) {
        store.replace_services(items);
    }
}

impl Watched for EndpointSlice {
    type Item = (ObjectKey, model::SliceMeta);
    const WHAT: &'static str = "endpointslices";
    fn convert(&self) -> Option<Self::Item> {
        Some((
            ObjectKey::new(&self.namespace()?, &self.name_any()),
            model::slice_meta(self),
        ))
    }
    fn apply(store: &mut Store, (key, slice): Self::Item) {
        store.apply_slice(key, slice);
    }
    fn delete(store: &mut Store, obj: &Self) {
        store.delete_slice(&ObjectKey::new(
            &obj.namespace().unwrap_or_default(),
            &obj.name_any(),
        ));
    }
    fn replace(store: &mut Store, items: Vec<Self::Item>) {
        store.replace_slices(items);
    }
}

/// Starts the watchers; they run until the runtime stops.
pub fn spawn(
    client: Client,
    store: SharedStore,
    cfg: &WatchConfig,
    metrics: Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let pods = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", cfg.node_name))
        // Served from the API server's watch cache: cheap when every node lists at once.
        .any_semantic();
    let owners = OwnerLookup {
        client: client.clone(),
    };
    tasks.push(tokio::spawn(run::<Pod>(
        Api::all(client.clone()),
        pods,
        store.clone(),
        metrics.clone(),
        Some(owners),
    )));
    if cfg.peers {
        tasks.push(tokio::spawn(run::<Service>(
            Api::all(client.clone()),
            watcher::Config::default().any_semantic(),
            store.clone(),
            metrics.clone(),
            None,
        )));
        tasks.push(tokio::spawn(run::<EndpointSlice>(
            Api::all(client),
            watcher::Config::default().any_semantic(),
            store,
            metrics,
            None,
        )));
    }
    tasks
}

async fn run<K>(
    api: Api<K>,
    wc: watcher::Config,
    store: SharedStore,
    metrics: Arc<Metrics>,
    owners: Option<OwnerLookup>,
) where
    K: Watched,
    K::DynamicType: Default,
{
    let mut stream = watcher::watcher(api, wc).default_backoff().boxed();
    let mut buffer: Option<Vec<K::Item>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                // The watcher retries by itself (after a backoff); a 410 starts a new list.
                Metrics::inc(&metrics.kube_watch_errors);
                tracing::warn!("watching {}: {e}", K::WHAT);
                continue;
            }
        };
        match event {
            Event::Init => buffer = Some(Vec::new()),
            Event::InitApply(obj) => {
                if let (Some(buf), Some(item)) = (buffer.as_mut(), obj.convert()) {
                    buf.push(item);
                }
            }
            Event::InitDone => {
                let items = buffer.take().unwrap_or_default();
                let n = items.len();
                store.write(|s| K::replace(s, items));
                tracing::info!("kubernetes metadata: {n} {} listed", K::WHAT);
            }
            Event::Apply(obj) => {
                if let Some(item) = obj.convert() {
                    store.write(|s| K::apply(s, item));
                }
            }
            Event::Delete(obj) => store.write(|s| K::delete(s, &obj)),
        }
        if let Some(lookup) = &owners {
            lookup.resolve_missing(&store).await;
            let n = store.read(|s| s.pod_count());
            metrics.kube_pods.store(n as u64, Ordering::Relaxed);
        }
    }
}

/// Reads the owner of ReplicaSets and Jobs that names alone do not explain.
struct OwnerLookup {
    client: Client,
}

impl OwnerLookup {
    async fn resolve_missing(&self, store: &SharedStore) {
        let wanted: Vec<(String, Owner)> = store.read(|s| {
            let mut wanted = Vec::new();
            for pod in s.pods_iter() {
                let Some(owner) = &pod.owner else { continue };
                let named = owner.kind == "ReplicaSet"
                    && deployment_from_replicaset(
                        &owner.name,
                        pod.labels.get("pod-template-hash").map(String::as_str),
                    )
                    .is_some();
                let lookup = matches!(owner.kind.as_str(), "ReplicaSet" | "Job") && !named;
                if lookup
                    && !s.knows_owner(&pod.namespace, &owner.kind, &owner.name)
                    && !wanted.contains(&(pod.namespace.clone(), owner.clone()))
                {
                    wanted.push((pod.namespace.clone(), owner.clone()));
                }
            }
            wanted
        });
        for (ns, owner) in wanted {
            let parent = match owner.kind.as_str() {
                "ReplicaSet" => self.controller_of::<ReplicaSet>(&ns, &owner.name).await,
                _ => self.controller_of::<Job>(&ns, &owner.name).await,
            };
            match parent {
                Ok(parent) => store.write(|s| s.set_owner(&ns, &owner.kind, &owner.name, parent)),
                Err(e) => tracing::warn!("reading {} {ns}/{}: {e}", owner.kind, owner.name),
            }
        }
    }

    async fn controller_of<K>(&self, ns: &str, name: &str) -> Result<Option<Owner>, kube::Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        Ok(api.get_opt(name).await?.and_then(|obj| {
            let refs = obj.meta().owner_references.clone().unwrap_or_default();
            refs.iter()
                .find(|o| o.controller == Some(true))
                .or(refs.first())
                .map(|o| Owner {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                })
        }))
    }
}

/// A client from `KUBECONFIG` (or `~/.kube/config`), else the in-cluster service account.
pub async fn client() -> Result<Client, crate::enrich::EnrichError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| crate::enrich::EnrichError::KubeConfig(e.to_string()))?;
    Client::try_from(config).map_err(|e| crate::enrich::EnrichError::KubeClient(e.to_string()))
}
