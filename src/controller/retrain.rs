//! Retraining on a schedule (`spec.learning.retrain`): at a control tick, the leader
//! decides whether a new round of training starts for the workload and which finished
//! rounds are deleted.
//!
//! The decision is [`next_step`], a pure function of the workload's trainings as listed
//! (the same list the promotion step reads), the promotion's phase and the seconds of
//! traffic recorded since the newest training was created. A round is an
//! `LLMPolicyTraining` named `<workload>-retrain-<round>`, a copy of the template named
//! in `from` with fresh seeds (index `i` of round `r` trains with seed `baseSeed + r ×
//! seeds + i`) and, with `resumeFromActive`, the acting learned policy as its base
//! checkpoint. The name is fixed by the round, so two leaders that both decide to start
//! the same round create one object (the second gets a conflict and does nothing), and
//! the schedule's state is the trainings themselves: nothing to lose in a restart.
//!
//! The workload owns its rounds (owner reference): deleting the workload deletes them,
//! and deleting a round deletes its Jobs. When the operator mounts the training volume
//! at the Jobs' `mountPath`, a deleted round's directory goes too, unless it holds the
//! checkpoint acting now, the one in shadow, or the one a rollback would restore.

use std::collections::BTreeMap;
use std::path::Path;

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::{Resource, ResourceExt};

use crate::crd::retrain::RetrainSpec;
use crate::crd::training::LLMPolicyTraining;
use crate::crd::LLMWorkload;

use super::plan::{EventReason, PlannedEvent};

/// Label on a scheduled round: the workload it retrains.
pub const RETRAIN_OF_LABEL: &str = "llmos.dev/retrain-of";
/// Label on a scheduled round: its round number.
pub const ROUND_LABEL: &str = "llmos.dev/retrain-round";
/// Annotation on a scheduled round: the template it copies.
pub const FROM_ANNOTATION: &str = "llmos.dev/retrain-from";

/// A training of the workload as the schedule sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Its name.
    pub name: String,
    /// Created when (Unix seconds; 0 when the server gave none).
    pub created_s: f64,
    /// Phase `Evaluated` or `Failed`.
    pub finished: bool,
    /// The round, for a training the schedule created.
    pub round: Option<u64>,
}

/// What the schedule does at this tick.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing yet, and why (for the log).
    Wait(String),
    /// Start this round.
    Start(u64),
}

/// The workload's trainings among `objects` (any `LLMPolicyTraining` of the namespace
/// whose `spec.workload` names it), oldest first as listed.
pub fn runs_of(objects: &[DynamicObject], workload: &str) -> Vec<Run> {
    let mut out = Vec::new();
    for o in objects {
        if o.data.pointer("/spec/workload").and_then(|v| v.as_str()) != Some(workload) {
            continue;
        }
        let phase = o.data.pointer("/status/phase").and_then(|v| v.as_str()).unwrap_or_default();
        let scheduled = o.labels().get(RETRAIN_OF_LABEL).is_some_and(|w| w == workload);
        out.push(Run {
            name: o.name_any(),
            created_s: o.metadata.creation_timestamp.as_ref().map_or(0.0, |t| t.0.as_second() as f64),
            finished: matches!(phase, "Evaluated" | "Failed"),
            round: scheduled.then(|| o.labels().get(ROUND_LABEL).and_then(|r| r.parse().ok())).flatten(),
        });
    }
    out
}

/// Whether a round starts now. `in_shadow`: a candidate decides in shadow (a new
/// evaluation would be judged against a moving incumbent and wait behind it anyway).
/// `recorded(since)`: seconds of traffic recorded after `since` (Unix seconds), asked
/// only when every other condition holds.
pub fn next_step(
    spec: &RetrainSpec,
    now_s: f64,
    runs: &[Run],
    in_shadow: bool,
    recorded: &mut dyn FnMut(f64) -> Result<f64, String>,
) -> Step {
    if let Some(r) = runs.iter().find(|r| !r.finished) {
        return Step::Wait(format!("training {} has not finished", r.name));
    }
    if in_shadow {
        return Step::Wait("a candidate is in shadow".into());
    }
    let newest = runs.iter().map(|r| r.created_s).fold(f64::NEG_INFINITY, f64::max);
    let due = newest + f64::from(spec.interval_seconds);
    if now_s < due {
        return Step::Wait(format!("the next round is due in {:.0} s", due - now_s));
    }
    if spec.min_recorded_seconds > 0 {
        let since = if newest.is_finite() { newest } else { 0.0 };
        match recorded(since) {
            Ok(s) if s < f64::from(spec.min_recorded_seconds) => {
                return Step::Wait(format!(
                    "{s:.0} s of traffic recorded since the last training, {} s needed",
                    spec.min_recorded_seconds
                ))
            }
            Ok(_) => {}
            Err(e) => return Step::Wait(format!("cannot read the record: {e}")),
        }
    }
    let round = runs.iter().filter_map(|r| r.round).max().unwrap_or(0) + 1;
    Step::Start(round)
}

/// The finished scheduled rounds to delete: all but the newest `historyLimit`, oldest
/// first. Trainings applied by hand (the template among them) are never chosen.
pub fn to_prune(spec: &RetrainSpec, runs: &[Run]) -> Vec<String> {
    let mut done: Vec<(u64, &str)> =
        runs.iter().filter(|r| r.finished).filter_map(|r| r.round.map(|n| (n, r.name.as_str()))).collect();
    done.sort();
    let keep = spec.history_limit as usize;
    let extra = done.len().saturating_sub(keep);
    done.into_iter().take(extra).map(|(_, n)| n.to_string()).collect()
}

/// The name of round `round` of workload `workload`.
pub fn round_name(workload: &str, round: u64) -> String {
    format!("{workload}-retrain-{round}")
}

/// Round `round` of `wl`, copied from `template`: fresh seeds, the active checkpoint as
/// base when `resumeFromActive` and one acts, the workload as owner. Errs when the
/// template trains another workload.
pub fn render(
    template: &LLMPolicyTraining,
    wl: &LLMWorkload,
    round: u64,
    active: Option<&str>,
) -> Result<LLMPolicyTraining, String> {
    let name = wl.name_any();
    let retrain = &wl.spec.learning.retrain;
    if template.spec.workload != name {
        return Err(format!(
            "spec.learning.retrain.from: LLMPolicyTraining {} trains workload {:?}, not {name:?}",
            template.name_any(),
            template.spec.workload
        ));
    }
    let mut spec = template.spec.clone();
    spec.base_seed = spec.base_seed.wrapping_add(round.wrapping_mul(u64::from(spec.seeds)));
    if let Some(a) = active.filter(|_| retrain.resume_from_active) {
        spec.base_checkpoint = Some(a.to_string());
    }
    let mut t = LLMPolicyTraining::new(&round_name(&name, round), spec);
    t.metadata.namespace = wl.namespace();
    t.metadata.labels =
        Some(BTreeMap::from([(RETRAIN_OF_LABEL.into(), name.clone()), (ROUND_LABEL.into(), round.to_string())]));
    t.metadata.annotations = Some(BTreeMap::from([(FROM_ANNOTATION.into(), template.name_any())]));
    t.metadata.owner_references = wl.controller_owner_ref(&()).map(|o| vec![o]);
    Ok(t)
}

/// Whether deleting the directory `root` would delete one of `protected` (checkpoint
/// paths).
pub fn holds_any(root: &str, protected: &[String]) -> bool {
    let root = Path::new(root);
    protected.iter().any(|p| Path::new(p).starts_with(root))
}

/// What the promotion step knows that the schedule needs.
pub(super) struct PromotionView {
    /// A candidate decides in shadow.
    pub in_shadow: bool,
    /// The learned checkpoint acting now, if any.
    pub active: Option<String>,
    /// Checkpoints whose files must stay: active, in shadow, previous.
    pub protected: Vec<String>,
}

/// The schedule's step at a tick of `wl`: starts a round when due, deletes rounds beyond
/// the history limit. Returns the Events (a start, deletions, a refused template).
/// `said` is the last refusal published, so that a lasting problem is said once.
pub(super) async fn tick(
    client: &kube::Client,
    wl: &LLMWorkload,
    objects: &[DynamicObject],
    view: &PromotionView,
    record_dir: Option<&Path>,
    now_s: f64,
    said: &mut Option<String>,
) -> Vec<PlannedEvent> {
    let spec = &wl.spec.learning.retrain;
    let name = wl.name_any();
    let runs = runs_of(objects, &name);
    let mut events = prune(client, wl, objects, &runs, view).await;
    let mut recorded = |since: f64| match record_dir {
        Some(dir) => crate::learning::store::recorded_seconds_since(dir, since).map_err(|e| e.to_string()),
        None => Err("the operator keeps no traffic record (llmos run --record-dir)".to_string()),
    };
    let round = match next_step(spec, now_s, &runs, view.in_shadow, &mut recorded) {
        Step::Wait(why) => {
            tracing::debug!(workload = %name, "retrain waits: {why}");
            return events;
        }
        Step::Start(round) => round,
    };
    let template = objects.iter().find(|o| o.name_any() == spec.from);
    let rendered = match template {
        None => Err(format!("spec.learning.retrain.from: no LLMPolicyTraining {:?} in this namespace", spec.from)),
        Some(o) => serde_json::to_value(o)
            .and_then(serde_json::from_value::<LLMPolicyTraining>)
            .map_err(|e| format!("spec.learning.retrain.from: LLMPolicyTraining {:?} cannot be read: {e}", spec.from))
            .and_then(|t| render(&t, wl, round, view.active.as_deref())),
    };
    match rendered {
        Ok(t) => {
            *said = None;
            events.extend(create(client, wl, &t).await);
        }
        Err(e) if said.as_deref() != Some(e.as_str()) => {
            tracing::warn!(workload = %name, "{e}");
            events.push(PlannedEvent::warning(EventReason::RetrainRefused, "Retrain", e.clone()));
            *said = Some(e);
        }
        Err(_) => {}
    }
    events
}

async fn create(client: &kube::Client, wl: &LLMWorkload, t: &LLMPolicyTraining) -> Option<PlannedEvent> {
    let api: Api<LLMPolicyTraining> = Api::namespaced(client.clone(), &wl.namespace().unwrap_or_default());
    let name = t.name_any();
    match api.create(&PostParams::default(), t).await {
        Ok(_) => {
            let base = t.spec.base_checkpoint.as_deref().unwrap_or("fresh weights");
            let note = format!(
                "created LLMPolicyTraining {name} from {} (seeds {}..{}, base {base})",
                wl.spec.learning.retrain.from,
                t.spec.base_seed,
                t.spec.base_seed + u64::from(t.spec.seeds) - 1
            );
            Some(PlannedEvent::normal(EventReason::RetrainStarted, format!("Retrain {name}"), note))
        }
        // Another leader (or a tick whose list was older) created it already.
        Err(kube::Error::Api(e)) if e.code == 409 => None,
        Err(e) => {
            tracing::warn!(workload = %wl.name_any(), error = %e, "cannot create LLMPolicyTraining {name}; retrying next tick");
            None
        }
    }
}

/// Deletes the rounds beyond the history limit (their Jobs go with them) and, where the
/// operator sees the training volume, their directories unless they hold a protected
/// checkpoint.
async fn prune(
    client: &kube::Client,
    wl: &LLMWorkload,
    objects: &[DynamicObject],
    runs: &[Run],
    view: &PromotionView,
) -> Vec<PlannedEvent> {
    let api: Api<LLMPolicyTraining> = Api::namespaced(client.clone(), &wl.namespace().unwrap_or_default());
    let mut deleted = Vec::new();
    for name in to_prune(&wl.spec.learning.retrain, runs) {
        let root = objects
            .iter()
            .find(|o| o.name_any() == name)
            .and_then(|o| o.data.pointer("/spec/volume/mountPath").and_then(|v| v.as_str()))
            .map(|mount| super::training::training_dir(mount, &name));
        if let Some(root) = root.as_deref() {
            if holds_any(root, &view.protected) {
                continue;
            }
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(workload = %wl.name_any(), error = %e, "cannot delete LLMPolicyTraining {name}; retrying next tick");
                continue;
            }
        }
        let files = match root.as_deref().map(Path::new).filter(|p| p.is_dir()) {
            Some(dir) => match std::fs::remove_dir_all(dir) {
                Ok(()) => format!(" and {}", dir.display()),
                Err(e) => format!(" ({} left: {e})", dir.display()),
            },
            None => String::new(),
        };
        deleted.push(format!("{name}{files}"));
    }
    if deleted.is_empty() {
        return Vec::new();
    }
    let note = format!("deleted finished rounds beyond historyLimit: {}", deleted.join(", "));
    vec![PlannedEvent::normal(EventReason::RetrainPruned, "Prune", note)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, created_s: f64, finished: bool, round: Option<u64>) -> Run {
        Run { name: name.into(), created_s, finished, round }
    }

    fn spec() -> RetrainSpec {
        RetrainSpec {
            enabled: true,
            from: "first".into(),
            interval_seconds: 3600,
            min_recorded_seconds: 600,
            resume_from_active: true,
            history_limit: 2,
        }
    }

    fn enough(_: f64) -> Result<f64, String> {
        Ok(1e9)
    }

    #[test]
    fn a_round_starts_when_the_last_finished_the_interval_passed_and_traffic_was_recorded() {
        let s = spec();
        let runs = [run("first", 1000.0, true, None)];
        assert_eq!(next_step(&s, 4600.0, &runs, false, &mut enough), Step::Start(1));
        let wait = next_step(&s, 4500.0, &runs, false, &mut enough);
        assert!(matches!(&wait, Step::Wait(w) if w.contains("100 s")), "{wait:?}");
        let mut since_asked = None;
        let mut little = |since: f64| {
            since_asked = Some(since);
            Ok(599.0)
        };
        let wait = next_step(&s, 9000.0, &runs, false, &mut little);
        assert!(matches!(&wait, Step::Wait(w) if w.contains("599 s") && w.contains("600 s")), "{wait:?}");
        assert_eq!(since_asked, Some(1000.0), "recorded since the newest training's creation");
        let mut broken = |_: f64| Err("bad line".to_string());
        assert!(matches!(next_step(&s, 9000.0, &runs, false, &mut broken), Step::Wait(w) if w.contains("bad line")));
        let no_min = RetrainSpec { min_recorded_seconds: 0, ..s.clone() };
        let mut never = |_: f64| -> Result<f64, String> { panic!("not asked when no minimum") };
        assert_eq!(next_step(&no_min, 9000.0, &runs, false, &mut never), Step::Start(1));
    }

    #[test]
    fn a_running_training_or_a_shadow_holds_the_schedule() {
        let s = spec();
        let runs = [run("first", 0.0, true, None), run("chat-retrain-1", 10.0, false, Some(1))];
        assert!(matches!(next_step(&s, 1e6, &runs, false, &mut enough), Step::Wait(w) if w.contains("chat-retrain-1")));
        let done = [run("first", 0.0, true, None), run("chat-retrain-1", 10.0, true, Some(1))];
        assert!(matches!(next_step(&s, 1e6, &done, true, &mut enough), Step::Wait(w) if w.contains("shadow")));
        assert_eq!(next_step(&s, 1e6, &done, false, &mut enough), Step::Start(2));
        // A training applied by hand later counts for the interval, not for the rounds.
        let manual = [done[0].clone(), done[1].clone(), run("by-hand", 999_000.0, true, None)];
        assert!(matches!(next_step(&s, 1e6, &manual, false, &mut enough), Step::Wait(_)));
        assert_eq!(next_step(&s, 1e7, &manual, false, &mut enough), Step::Start(2));
    }

    #[test]
    fn pruning_keeps_the_newest_finished_rounds_and_never_touches_manual_ones() {
        let s = spec();
        let runs = [
            run("first", 0.0, true, None),
            run("w-retrain-1", 1.0, true, Some(1)),
            run("w-retrain-3", 3.0, false, Some(3)),
            run("w-retrain-2", 2.0, true, Some(2)),
            run("w-retrain-10", 10.0, true, Some(10)),
        ];
        assert_eq!(to_prune(&s, &runs), ["w-retrain-1"]);
        let one = RetrainSpec { history_limit: 1, ..s };
        assert_eq!(to_prune(&one, &runs), ["w-retrain-1", "w-retrain-2"]);
        assert!(holds_any("/v/trainings/w-retrain-1", &["/v/trainings/w-retrain-1/cand-0".into()]));
        assert!(!holds_any("/v/trainings/w-retrain-1", &["/v/trainings/w-retrain-10/cand-0".into()]));
    }

    fn workload() -> LLMWorkload {
        let mut wl: LLMWorkload = serde_json::from_value(serde_json::json!({
            "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload",
            "metadata": {"name": "chat", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "variants": [{"name": "v", "model": "m", "image": "i", "minReplicas": 1, "maxReplicas": 4}],
                "gpuPools": [{"name": "p", "gpuType": "A100-80GB", "pricePerGpuHour": 2.0}],
                "learning": {"retrain": {"enabled": true, "from": "first"}}
            }
        }))
        .unwrap();
        wl.metadata.namespace = Some("ns".into());
        wl
    }

    fn template(workload: &str) -> LLMPolicyTraining {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMPolicyTraining",
            "metadata": {"name": "first", "namespace": "ns"},
            "spec": {"workload": workload, "algorithm": "dqn", "steps": 1000, "seeds": 2, "baseSeed": 5,
                     "baseCheckpoint": "/v/base", "volume": {"hostPath": "/srv/llmos"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_round_copies_the_template_with_fresh_seeds_and_the_active_policy() {
        let wl = workload();
        let t = render(&template("chat"), &wl, 3, Some("/v/trainings/chat-retrain-2/cand-1")).unwrap();
        assert_eq!(t.name_any(), "chat-retrain-3");
        assert_eq!(t.namespace().as_deref(), Some("ns"));
        assert_eq!((t.spec.base_seed, t.spec.seeds, t.spec.steps), (11, 2, 1000));
        assert_eq!(t.spec.base_checkpoint.as_deref(), Some("/v/trainings/chat-retrain-2/cand-1"));
        assert_eq!(t.labels().get(ROUND_LABEL).map(String::as_str), Some("3"));
        assert_eq!(t.labels().get(RETRAIN_OF_LABEL).map(String::as_str), Some("chat"));
        let owner = &t.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("LLMWorkload", "chat", "u-1"));
        let fresh = render(&template("chat"), &wl, 3, None).unwrap();
        assert_eq!(fresh.spec.base_checkpoint.as_deref(), Some("/v/base"), "no active policy: the template's base");
        let e = render(&template("other"), &wl, 1, None).unwrap_err();
        assert!(e.contains("spec.learning.retrain.from") && e.contains("\"other\""), "{e}");
    }
}
