//! The executor: carries out a [`Plan`] through the Kubernetes API, and nothing else.
//!
//! It publishes the plan's notices, server-side applies its Deployments (field manager
//! [`FIELD_MANAGER`], forced; fenced by the `resourceVersion` the plan read, see
//! [`apply_fenced`]; an apply identical to the last one this process made to a
//! Deployment whose generation has not moved since is skipped, see [`Written`]),
//! deletes the Deployments of slots that left the spec (publishing an Event for each one it deleted; one already gone is skipped), applies
//! the Service, publishes the Events about what changed and writes the status, in that
//! order, stopping at the first failed write. Every decision was made by
//! [`super::plan::plan`].

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Event as KubeEvent;
use kube::{Resource, ResourceExt};

use crate::crd::{LLMWorkload, LLMWorkloadStatus};

use super::plan::{Plan, PlannedEvent};
use super::{key_of, kube_err, Context, Error, FIELD_MANAGER};

/// Carries out `plan` for `wl` and returns when to reconcile again.
pub async fn execute(ctx: &Context, wl: &LLMWorkload, plan: &Plan) -> Result<Action, Error> {
    let (ns, name) = (wl.namespace().unwrap_or_default(), wl.name_any());
    for line in &plan.warnings {
        tracing::warn!(workload = %key_of(wl), "{line}");
    }
    for ev in &plan.notices {
        publish(ctx, wl, ev).await;
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    for d in &plan.apply {
        let dn = d.name_any();
        let key = format!("{ns}/{dn}");
        let digest = content_digest(d);
        let seen = plan.observed_deployments.get(&dn);
        let same = match (seen, written(ctx, &key)) {
            (Some(o), Some(Written::Deployment { digest: d, generation: g, uid: u })) => {
                d == digest && g == o.generation && u == o.uid
            }
            _ => false,
        };
        if same {
            ctx.metrics.object_write("deployment", "unchanged");
            continue;
        }
        let Some(out) = apply_fenced(&deployments, d, seen).await? else {
            ctx.metrics.object_write("deployment", "refused");
            tracing::info!(
                workload = %key_of(wl),
                "Deployment {ns}/{dn} changed by someone else since it was read: nothing written, planning again"
            );
            return Ok(Action::requeue(REPLAN_AFTER_REFUSAL));
        };
        ctx.metrics.object_write("deployment", "written");
        let w = out.metadata.generation.zip(out.metadata.uid).map(|(generation, uid)| Written::Deployment {
            digest,
            generation,
            uid,
        });
        remember_written(ctx, key, w);
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for del in &plan.delete {
        forget_written(ctx, &ns, std::slice::from_ref(&del.name));
        match deployments.delete(&del.name, &DeleteParams::background()).await {
            Ok(_) => publish(ctx, wl, &del.event).await,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting Deployment {ns}/{}", del.name))(e)),
        }
    }
    if let Some(svc) = &plan.service {
        let key = format!("{ns}/{name}");
        let digest = content_digest(svc);
        let now = ctx.clock.now();
        let fresh = matches!(written(ctx, &key), Some(Written::Service { digest: d, at })
            if d == digest && now < service_reassert_at(wl, at));
        if fresh {
            ctx.metrics.object_write("service", "unchanged");
        } else {
            let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
            services
                .patch(&name, &pp, &Patch::Apply(svc))
                .await
                .map_err(kube_err(format!("applying Service {ns}/{name}")))?;
            ctx.metrics.object_write("service", "written");
            remember_written(ctx, key, Some(Written::Service { digest, at: now }));
        }
    }
    for ev in &plan.events {
        publish(ctx, wl, ev).await;
    }
    patch_status(ctx, wl, &plan.status).await?;
    Ok(Action::requeue(plan.requeue_after))
}

/// How soon a reconcile whose Deployment write was refused runs again, to plan from what
/// the API server holds now.
const REPLAN_AFTER_REFUSAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Server-side applies `d`, fenced by the `resourceVersion` the plan read it at (`seen`):
/// the API server refuses the apply (409) when anyone wrote the Deployment since. A
/// Deployment's status moves its `resourceVersion` every few seconds while its Pods
/// change, so a refusal alone does not mean someone else decided: the Deployment is read
/// again, and when its spec is the one the plan read (same `uid`, same `generation`) the
/// apply is sent again at the new version. When its spec changed (a successor leader's
/// write, a `kubectl scale`), nothing is written and `Ok(None)` returned: the reconcile
/// plans again from what is there instead of writing over it. An apply a former leader
/// sent just before it was cut off, and that the network delivers after its successor
/// wrote, is thus refused, and the former leader, whose controller is dropped with the
/// Lease, never retries it. A Deployment the plan did not see is created unfenced.
pub async fn apply_fenced(
    api: &Api<Deployment>,
    d: &Deployment,
    seen: Option<&super::plan::ObservedDeployment>,
) -> Result<Option<Deployment>, Error> {
    let name = d.name_any();
    let what = || format!("applying Deployment {}/{name}", d.namespace().unwrap_or_default());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let at = |rv: Option<String>| {
        let mut fenced = d.clone();
        fenced.metadata.resource_version = rv;
        fenced
    };
    let Some(seen) = seen else {
        return api.patch(&name, &pp, &Patch::Apply(d)).await.map(Some).map_err(kube_err(what()));
    };
    match api.patch(&name, &pp, &Patch::Apply(&at(seen.resource_version.clone()))).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let now = api.get_opt(&name).await.map_err(kube_err(what()))?;
            let unchanged = now.as_ref().is_some_and(|n| {
                n.metadata.uid.as_deref() == Some(seen.uid.as_str()) && n.metadata.generation == Some(seen.generation)
            });
            if !unchanged {
                return Ok(None);
            }
            let rv = now.and_then(|n| n.metadata.resource_version);
            api.patch(&name, &pp, &Patch::Apply(&at(rv))).await.map(Some).map_err(kube_err(what()))
        }
        r => r.map(Some).map_err(kube_err(what())),
    }
}

/// How long an applied Service is trusted to be as written: it has no generation to tell
/// whether someone changed it, so it is applied again at least this often.
const SERVICE_REASSERT: std::time::Duration = std::time::Duration::from_secs(300);

/// When the Service applied at `at` is applied again: the first moment after `at` at the
/// workload's own phase of the [`SERVICE_REASSERT`] period (the hash its ticks use,
/// [`super::plan::tick_phase_ms`]). Services applied together (every workload created by
/// one `kubectl apply`, or an operator's start) are thus applied again spread over the
/// period instead of all in the same minute, five minutes later, and every five minutes
/// after that.
pub fn service_reassert_at(wl: &LLMWorkload, at: Timestamp) -> Timestamp {
    let period = SERVICE_REASSERT.as_millis() as i64;
    let phase = super::plan::tick_phase_ms(wl, period);
    let at_ms = at.as_millisecond();
    let wait = match (phase - at_ms).rem_euclid(period) {
        0 => period,
        w => w,
    };
    Timestamp::from_millisecond(at_ms.saturating_add(wait)).unwrap_or(at)
}

/// What this process last applied to an object, so that an apply that would change
/// nothing is not sent (a tick that changes nothing then costs one status write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// A Deployment: the digest of what was applied and the generation the API server
    /// gave it. Anyone else's change to its spec raises the generation, and the next
    /// reconcile applies again.
    Deployment {
        /// Digest of the applied object.
        digest: u64,
        /// `metadata.generation` after the apply.
        generation: i64,
        /// The object's `uid` (a Deployment deleted and created again by someone else is
        /// another object).
        uid: String,
    },
    /// A Service: the digest of what was applied and when.
    Service {
        /// Digest of the applied object.
        digest: u64,
        /// When it was applied (the controller's clock).
        at: Timestamp,
    },
}

fn content_digest<T: serde::Serialize>(obj: &T) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(obj).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The generation the API server gave the Deployment `key` (`namespace/name`) when this
/// process last applied it.
pub(super) fn written_generation(ctx: &Context, key: &str) -> Option<i64> {
    match written(ctx, key) {
        Some(Written::Deployment { generation, .. }) => Some(generation),
        _ => None,
    }
}

fn written(ctx: &Context, key: &str) -> Option<Written> {
    ctx.written.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
}

fn remember_written(ctx: &Context, key: String, w: Option<Written>) {
    let mut m = ctx.written.lock().unwrap_or_else(|e| e.into_inner());
    match w {
        Some(w) => {
            m.insert(key, w);
        }
        None => {
            m.remove(&key);
        }
    }
}

/// Forgets what was applied to the objects `names` in `ns` (they were deleted).
pub(crate) fn forget_written(ctx: &Context, ns: &str, names: &[String]) {
    let mut m = ctx.written.lock().unwrap_or_else(|e| e.into_inner());
    for n in names {
        m.remove(&format!("{ns}/{n}"));
    }
}

/// Publishes an Event about `wl`; a failure is logged, not returned (an Event is not
/// worth a failed reconcile). kube's Recorder folds Events with the same (type, reason,
/// action) into one series and keeps the first note, so the action names what was done
/// concretely: different actions get their own Event, repeats of the same one count up.
pub(crate) async fn publish(ctx: &Context, wl: &LLMWorkload, ev: &PlannedEvent) {
    let event = KubeEvent {
        type_: ev.type_,
        reason: ev.reason.as_str().into(),
        note: Some(truncate(ev.note.clone(), 1000)),
        action: truncate(ev.action.clone(), 120),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &wl.object_ref(&())).await {
        tracing::warn!(workload = %key_of(wl), reason = ev.reason.as_str(), error = %e, "cannot publish event");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The keys of `status.learning` that are absent when not set (cleared explicitly).
const LEARNING_OPTIONAL: [&str; 12] = [
    "since",
    "training",
    "candidate",
    "evaluation",
    "previous",
    "baseline",
    "active",
    "shadow",
    "history",
    "live",
    "consumed",
    "lastEvent",
];

/// Writes `status` with a merge patch of what it changes against the status the
/// workload was read with. Nothing is sent when the workload already has exactly this
/// status (a reconcile between ticks that changed nothing costs no write).
///
/// The patch carries the `resourceVersion` the workload was read at, so the API server
/// refuses it (409) when anyone wrote the workload since: a write a former leader sent
/// just before it was cut off, and that the network delivers after its successor wrote,
/// is refused instead of overwriting the successor's status. This process, on a
/// conflict, reads the workload again and sends the same changes at the new version:
/// only the fields its plan changed, so a reconcile that planned from a cached workload
/// older than the last tick's own write does not put the older decision back. A former
/// leader never retries: its controller is dropped, and its requests with it, when it
/// loses the Lease.
async fn patch_status(ctx: &Context, wl: &LLMWorkload, status: &LLMWorkloadStatus) -> Result<(), Error> {
    if wl.status.as_ref() == Some(status) {
        ctx.metrics.status_write("unchanged");
        return Ok(());
    }
    ctx.metrics.status_write("written");
    let ns = wl.namespace().unwrap_or_default();
    let api: Api<LLMWorkload> = Api::namespaced(ctx.client.clone(), &ns);
    let (name, pp) = (wl.name_any(), PatchParams::default());
    let body = status_patch(wl.resource_version(), wl.status.as_ref(), status)?;
    match api.patch_status(&name, &pp, &Patch::Merge(body)).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {
            ctx.metrics.status_write("conflict");
            tracing::debug!(workload = %key_of(wl), "status written by someone else since it was read: sending the changes again");
            let fresh =
                api.get_status(&name).await.map_err(kube_err("reading the workload after a status conflict"))?;
            let body = status_patch(fresh.resource_version(), wl.status.as_ref(), status)?;
            api.patch_status(&name, &pp, &Patch::Merge(body)).await.map_err(kube_err("writing status"))?;
        }
        r => {
            r.map_err(kube_err("writing status"))?;
        }
    }
    Ok(())
}

/// The keys of `status` that a write without a known previous status clears.
const STATUS_OPTIONAL: [&str; 6] =
    ["lastDecision", "shadowDecision", "observedArrivalRateRps", "sloAttainment", "costRateUsdPerHour", "slots"];

/// The merge patch that changes a workload's status from `base` (what it was read with;
/// `None` when unknown) to `status`, with the `resourceVersion` it was read at as its
/// precondition (none when unknown).
///
/// Only top-level fields that differ from `base` are sent, and a field `base` has and
/// `status` no longer sets is cleared (`null`). Without a base, every field is sent and
/// the optional ones are cleared. `learning` is nested: when it is sent, the keys its
/// phase no longer has are cleared too.
pub fn status_patch(
    resource_version: Option<String>,
    base: Option<&LLMWorkloadStatus>,
    status: &LLMWorkloadStatus,
) -> Result<serde_json::Value, Error> {
    use serde_json::Value;
    let new = serde_json::to_value(status)?;
    let new = new.as_object().cloned().unwrap_or_default();
    let old = match base {
        Some(b) => serde_json::to_value(b)?.as_object().cloned().unwrap_or_default(),
        None => serde_json::Map::new(),
    };
    let mut out: serde_json::Map<String, Value> =
        new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.insert(k.clone(), Value::Null);
    }
    if base.is_none() {
        for k in STATUS_OPTIONAL {
            out.entry(k).or_insert(Value::Null);
        }
    }
    if let Some(learning) = out.get_mut("learning").and_then(|l| l.as_object_mut()) {
        for k in LEARNING_OPTIONAL {
            learning.entry(k).or_insert(Value::Null);
        }
        if let Some(shadow) = learning.get_mut("shadow").and_then(|s| s.as_object_mut()) {
            shadow.entry("lastDecision").or_insert(Value::Null);
        }
    }
    let status = Value::Object(out);
    Ok(match resource_version {
        Some(rv) => serde_json::json!({ "metadata": { "resourceVersion": rv }, "status": status }),
        None => serde_json::json!({ "status": status }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str) -> LLMWorkload {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload",
            "metadata": {"name": "chat", "namespace": "ml", "uid": uid},
            "spec": {
                "variants": [{"name": "small", "model": "m8", "image": "vllm:1"}],
                "gpuPools": [{"name": "l4", "gpuType": "L4", "pricePerGpuHour": 0.8}]
            }
        }))
        .expect("workload")
    }

    #[test]
    fn a_status_patch_sends_only_what_changed_against_the_status_read() {
        let base = LLMWorkloadStatus {
            desired_replicas: 2,
            slo_attainment: Some(0.9),
            last_action_time: Some("2026-12-02T10:00:00Z".into()),
            ..Default::default()
        };
        let new = LLMWorkloadStatus { desired_replicas: 3, ..base.clone() };
        let new = LLMWorkloadStatus { slo_attainment: None, ..new };
        let patch = status_patch(Some("42".into()), Some(&base), &new).expect("patch");
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {"resourceVersion": "42"},
                               "status": {"desiredReplicas": 3, "sloAttainment": null}})
        );
        // Without a base: everything, the optional fields cleared, no precondition.
        let patch = status_patch(None, None, &new).expect("patch");
        assert!(patch.get("metadata").is_none());
        assert_eq!(patch["status"]["lastActionTime"], "2026-12-02T10:00:00Z");
        assert_eq!(patch["status"]["lastDecision"], serde_json::Value::Null);
        assert!(patch["status"].as_object().is_some_and(|o| o.contains_key("lastDecision")));
    }

    #[test]
    fn services_are_applied_again_at_their_own_phase_within_the_period() {
        let at = Timestamp::from_second(1_800_000_000).expect("time");
        let period = SERVICE_REASSERT.as_millis() as i64;
        let times: Vec<i64> =
            ["a", "b", "c", "d"].iter().map(|u| service_reassert_at(&workload(u), at).as_millisecond()).collect();
        for t in &times {
            let wait = t - at.as_millisecond();
            assert!(wait > 0 && wait <= period, "{wait}");
        }
        assert!(times.windows(2).any(|w| w[0] != w[1]), "spread by the uid: {times:?}");
        // Then every period, at the same phase.
        let wl = workload("a");
        let next = service_reassert_at(&wl, service_reassert_at(&wl, at));
        assert_eq!(next.as_millisecond() - times[0], period);
    }
}
