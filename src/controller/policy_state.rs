//! A policy's learned state, kept across operator restarts in a ConfigMap.
//!
//! A policy that learns something slow to learn again (the forecast planner's daily
//! profile and its error model) exports it as JSON ([`Policy::export_state`]). The
//! controller writes it to the ConfigMap `<workload>-policy-state` in the workload's
//! namespace: owned by the workload (deleted with it), labelled like everything else the
//! operator owns, with the keys [`POLICY_KEY`] (the policy that wrote it) and
//! [`STATE_KEY`] (the JSON), and the annotation [`SAVED_AT`]. It writes at most once every
//! `ControllerConfig::policy_state_interval`, and only when the state changed. One
//! server-side apply replaces the whole object, so a crash leaves the previous state or
//! the new one, never part of either.
//!
//! On the first reconcile of a workload after a start, the controller reads the ConfigMap
//! back and gives the state to the policy ([`Policy::import_state`]) when the same kind of
//! policy wrote it (`PolicyStateRestored` Event). A state that cannot be read (bad JSON, a
//! field the policy rejects) is a `PolicyStateRejected` Warning naming the ConfigMap, the
//! key and what is wrong; the policy then starts afresh and the next save replaces it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::crd::LLMWorkload;
use crate::policy::Policy;

use super::desired::{owner_reference, LABEL_WORKLOAD, MANAGED_BY};
use super::FIELD_MANAGER;

/// The key holding the policy's state as JSON.
pub const STATE_KEY: &str = "state.json";
/// The key naming the policy that wrote the state (its [`Policy::name`]).
pub const POLICY_KEY: &str = "policy";
/// The annotation holding when the state was written (RFC 3339).
pub const SAVED_AT: &str = "llmos.dev/saved-at";

/// The ConfigMap holding a workload's policy state.
pub fn config_map_name(workload: &str) -> String {
    format!("{workload}-policy-state")
}

/// A saved state, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Saved {
    /// The policy that wrote it.
    pub policy: String,
    /// The state.
    pub state: serde_json::Value,
}

/// Why a saved state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The ConfigMap exists but a key is missing or does not parse.
    #[error("ConfigMap {config_map}: key `{key}` {message}")]
    Bad {
        /// `namespace/name` of the ConfigMap.
        config_map: String,
        /// The key at fault.
        key: &'static str,
        /// What is wrong (for JSON: the parser's line and column).
        message: String,
    },
    /// The API server did not answer the read.
    #[error("reading ConfigMap {config_map}: {source}")]
    Api {
        /// `namespace/name` of the ConfigMap.
        config_map: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// The saved state in `cm`, checked for its keys and for JSON.
pub fn parse(cm: &ConfigMap) -> Result<Saved, StateError> {
    let config_map = format!("{}/{}", cm.namespace().unwrap_or_default(), cm.name_any());
    let data = cm.data.clone().unwrap_or_default();
    let bad = |key: &'static str, message: String| StateError::Bad { config_map: config_map.clone(), key, message };
    let policy = data.get(POLICY_KEY).cloned().ok_or_else(|| bad(POLICY_KEY, "is missing".into()))?;
    let text = data.get(STATE_KEY).ok_or_else(|| bad(STATE_KEY, "is missing".into()))?;
    let state = serde_json::from_str(text).map_err(|e| bad(STATE_KEY, format!("is not JSON: {e}")))?;
    Ok(Saved { policy, state })
}

/// The ConfigMap that saves `state`, written by `policy`, for `wl` at `now`.
pub fn config_map(wl: &LLMWorkload, policy: &str, state: &serde_json::Value, now: Timestamp) -> ConfigMap {
    let name = wl.name_any();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&name)),
            namespace: wl.namespace(),
            labels: Some(BTreeMap::from([
                (LABEL_WORKLOAD.to_string(), name.clone()),
                ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(SAVED_AT.to_string(), now.to_string())])),
            owner_references: owner_reference(wl).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (POLICY_KEY.to_string(), policy.to_string()),
            (STATE_KEY.to_string(), state.to_string()),
        ])),
        ..Default::default()
    }
}

/// Reads the saved state of `wl`; `Ok(None)` when nothing was saved.
pub async fn load(client: &Client, wl: &LLMWorkload) -> Result<Option<Saved>, StateError> {
    let ns = wl.namespace().unwrap_or_default();
    let name = config_map_name(&wl.name_any());
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    match api.get_opt(&name).await {
        Ok(None) => Ok(None),
        Ok(Some(cm)) => parse(&cm).map(Some),
        Err(source) => Err(StateError::Api { config_map: format!("{ns}/{name}"), source }),
    }
}

/// Writes `cm` (one server-side apply of the whole object).
pub async fn save(client: &Client, cm: &ConfigMap) -> Result<(), kube::Error> {
    let ns = cm.namespace().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    api.patch(&cm.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(cm)).await?;
    Ok(())
}

/// What restoring a saved state into `policy` came to: `Ok(Some(note))` when it was put
/// back, `Ok(None)` when there was nothing for this policy, `Err(note)` when it was
/// rejected (the policy keeps a fresh state).
pub fn restore(policy: &mut dyn Policy, saved: Result<Option<Saved>, StateError>) -> Result<Option<String>, String> {
    match saved {
        Ok(None) => Ok(None),
        Ok(Some(s)) if s.policy != policy.name() => Ok(None),
        Ok(Some(s)) => match policy.import_state(s.state) {
            Ok(()) => Ok(Some(format!("{} resumes from its saved state", policy.name()))),
            Err(e) => Err(format!("{e}; {} starts afresh", policy.name())),
        },
        Err(e) => Err(format!("{e}; {} starts afresh", policy.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> LLMWorkload {
        let spec = serde_json::from_value(serde_json::json!({
            "variants": [{ "name": "v", "model": "m", "image": "i" }],
            "gpuPools": [{ "name": "p", "gpuType": "A100-80GB", "pricePerGpuHour": 1.0 }],
            "slo": { "ttftMs": 2000.0, "tpotMs": 100.0 },
            "policy": { "kind": "forecast" }
        }))
        .unwrap();
        let mut wl = LLMWorkload::new("chat", spec);
        wl.metadata.namespace = Some("ns".into());
        wl.metadata.uid = Some("uid-1".into());
        wl
    }

    #[test]
    fn a_saved_state_reads_back() {
        let wl = workload();
        let state = serde_json::json!({ "units": { "*": { "x": [1.5, 2] } } });
        let cm = config_map(&wl, "forecast", &state, Timestamp::UNIX_EPOCH);
        assert_eq!(cm.name_any(), "chat-policy-state");
        assert_eq!(cm.owner_references().len(), 1);
        assert_eq!(parse(&cm).unwrap(), Saved { policy: "forecast".into(), state });
    }

    #[test]
    fn a_broken_state_names_the_config_map_and_the_key() {
        let wl = workload();
        let mut cm = config_map(&wl, "forecast", &serde_json::json!({}), Timestamp::UNIX_EPOCH);
        cm.data.as_mut().unwrap().insert(STATE_KEY.into(), "{\"units\": [1,".into());
        let e = parse(&cm).unwrap_err().to_string();
        assert!(e.contains("ns/chat-policy-state") && e.contains("state.json") && e.contains("line 1"), "{e}");
        cm.data.as_mut().unwrap().remove(POLICY_KEY);
        let e = parse(&cm).unwrap_err().to_string();
        assert!(e.contains("`policy` is missing"), "{e}");
    }
}
