//! What the controller's watches keep besides kube's reflector stores: the owned
//! Deployments indexed by workload, and the trimming of cached objects.
//!
//! A reflector's [`Store`](kube::runtime::reflector::Store) is found by name only; a
//! reconcile that wanted "the Deployments of workload W" had to walk all of them
//! (`store.state()`, every Deployment the operator manages, at every tick of every
//! workload: at 1,000 workloads a fifth of the operator's CPU). [`DeploymentIndex`] keeps
//! the names of each workload's Deployments, fed by the same watch events as the store,
//! so a reconcile looks up its own few by name.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::desired;

/// (namespace, workload) → names of the Deployments labelled with that workload.
type Index = HashMap<(String, String), BTreeSet<String>>;

/// The names of the managed Deployments per workload (`llmos.dev/workload` label), as
/// the Deployment watch reports them. Cheap to clone (shared).
#[derive(Clone, Debug, Default)]
pub struct DeploymentIndex {
    inner: Arc<Mutex<Indexes>>,
}

#[derive(Debug, Default)]
struct Indexes {
    /// What the watch has reported.
    live: Index,
    /// A relist in progress (from `Init` to `InitDone`), which then replaces `live`.
    relist: Option<Index>,
}

fn key_of(d: &Deployment) -> Option<((String, String), String)> {
    let workload = d.labels().get(desired::LABEL_WORKLOAD)?.clone();
    Some(((d.namespace().unwrap_or_default(), workload), d.name_any()))
}

fn insert(index: &mut Index, d: &Deployment) {
    if let Some((key, name)) = key_of(d) {
        index.entry(key).or_default().insert(name);
    }
}

impl DeploymentIndex {
    /// Follows one event of the Deployment watch.
    pub fn apply(&self, event: &watcher::Event<Deployment>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(d) => insert(&mut g.live, d),
            watcher::Event::Delete(d) => {
                if let Some((key, name)) = key_of(d) {
                    if let Some(names) = g.live.get_mut(&key) {
                        names.remove(&name);
                        if names.is_empty() {
                            g.live.remove(&key);
                        }
                    }
                }
            }
            watcher::Event::Init => g.relist = Some(Index::new()),
            watcher::Event::InitApply(d) => match g.relist.as_mut() {
                Some(relist) => insert(relist, d),
                None => insert(&mut g.live, d),
            },
            watcher::Event::InitDone => {
                if let Some(relist) = g.relist.take() {
                    g.live = relist;
                }
            }
        }
    }

    /// The names of the Deployments labelled with `workload` in `namespace`, sorted.
    pub fn names(&self, namespace: &str, workload: &str) -> Vec<String> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.live
            .get(&(namespace.to_string(), workload.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Drops what no reconcile reads from a cached object: `metadata.managedFields` (one
/// entry per field manager and subresource, often larger than the spec) and the
/// `kubectl.kubernetes.io/last-applied-configuration` annotation (a copy of the spec as
/// applied by kubectl). The watch caches hold every workload and every managed
/// Deployment for as long as the operator runs.
pub fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(ns: &str, name: &str, workload: &str) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.namespace = Some(ns.into());
        d.metadata.name = Some(name.into());
        d.metadata.labels = Some([(desired::LABEL_WORKLOAD.to_string(), workload.to_string())].into());
        d
    }

    #[test]
    fn the_index_follows_applies_deletes_and_relists() {
        let ix = DeploymentIndex::default();
        ix.apply(&watcher::Event::Apply(dep("a", "w-v-p", "w")));
        ix.apply(&watcher::Event::Apply(dep("a", "w-v-q", "w")));
        ix.apply(&watcher::Event::Apply(dep("b", "w-v-p", "w")));
        assert_eq!(ix.names("a", "w"), ["w-v-p", "w-v-q"]);
        assert_eq!(ix.names("b", "w"), ["w-v-p"]);
        ix.apply(&watcher::Event::Delete(dep("a", "w-v-p", "w")));
        assert_eq!(ix.names("a", "w"), ["w-v-q"]);
        // A relist replaces what was known once it is complete.
        ix.apply(&watcher::Event::Init);
        ix.apply(&watcher::Event::InitApply(dep("a", "x-v-p", "x")));
        assert_eq!(ix.names("a", "w"), ["w-v-q"], "the old view stands until InitDone");
        ix.apply(&watcher::Event::InitDone);
        assert!(ix.names("a", "w").is_empty());
        assert_eq!(ix.names("a", "x"), ["x-v-p"]);
        // Unlabelled Deployments are not indexed.
        let mut other = dep("a", "other", "w");
        other.metadata.labels = None;
        ix.apply(&watcher::Event::Apply(other));
        assert!(ix.names("a", "w").is_empty());
    }

    #[test]
    fn trim_drops_managed_fields_and_the_last_applied_annotation() {
        let mut d = dep("a", "n", "w");
        d.metadata.managed_fields = Some(vec![Default::default()]);
        d.metadata.annotations = Some(
            [
                ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{}".to_string()),
                ("keep".to_string(), "me".to_string()),
            ]
            .into(),
        );
        trim(&mut d);
        assert!(d.metadata.managed_fields.is_none());
        assert_eq!(d.metadata.annotations.unwrap().keys().collect::<Vec<_>>(), ["keep"]);
    }
}
