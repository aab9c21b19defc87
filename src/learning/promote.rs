//! Shadow, promote, roll back: the decision logic as a pure state machine, no I/O.
//!
//! [`next`] takes the state, the time and one [`Input`] and returns the next state, the
//! Event to emit (reason and a message with the numbers) and, on a promotion or a
//! rollback, the policy-history entry. The controller stores the state (status), emits
//! the Events and acts on the active policy; the training and evaluation Jobs feed it.
//!
//! The rule:
//!
//! 1. **Evaluation**: the candidate and the incumbent run in the twin on the same seeds;
//!    the input is the per-seed paired difference of the harness's score
//!    (candidate − incumbent, higher is better). With `d̄ ± h` the mean and the 95 %
//!    half-width of Student's t ([`crate::eval::stats::Estimate`], the harness's
//!    intervals), the candidate goes on only when it has at least `min_seeds` seeds and
//!    `d̄ − h > margin`: better by the margin with 95 % confidence. A tie (`d̄ − h = margin`)
//!    is a rejection, and so is any non-finite difference.
//! 2. **Shadow**: the candidate decides next to the active policy without acting for
//!    `shadow_s` seconds and at least `min_shadow_decisions` decisions; it is rejected as
//!    soon as the shield would have overridden more than `max_shield_override_fraction`
//!    of its decisions, and promoted when the shadow time is over within that bound.
//! 3. **Rollback**: the incumbent's live SLO attainment over the last
//!    `rollback_window_s` before the promotion is the baseline (`fallback_baseline` when
//!    no window was seen). Once the promoted policy has run `rollback_window_s`, if its
//!    attainment over the last `rollback_window_s` (windows weighted by length) falls below
//!    `baseline − rollback_margin`, the previous policy comes back. After `watch_s`
//!    without a rollback the promoted policy is the incumbent and the machine is idle.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::eval::stats::Estimate;

/// The numbers of the rule (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromotionConfig {
    /// Score difference the lower end of the 95 % interval must exceed.
    pub margin: f64,
    /// Fewest paired seeds an evaluation must have.
    pub min_seeds: usize,
    /// Shadow time before a promotion, seconds.
    pub shadow_s: f64,
    /// Fewest shadow decisions before a promotion.
    pub min_shadow_decisions: u64,
    /// Largest fraction of shadow decisions the shield may have overridden.
    pub max_shield_override_fraction: f64,
    /// How far (fraction, 0.02 = 2 pt) the promoted policy's live SLO attainment may fall
    /// below the incumbent's before it is rolled back.
    pub rollback_margin: f64,
    /// The window of live SLO attainment both sides are judged over, seconds.
    pub rollback_window_s: f64,
    /// Baseline attainment when the incumbent left no live window (e.g. the SLO target).
    pub fallback_baseline: f64,
    /// How long after a promotion a rollback is considered, seconds.
    pub watch_s: f64,
}

impl Default for PromotionConfig {
    /// Margin 0, 3 seeds, 1 h of shadow with ≥ 100 decisions and no shield override,
    /// rollback below 2 pt over 30 min within 24 h, baseline 0.95 without history.
    fn default() -> Self {
        PromotionConfig {
            margin: 0.0,
            min_seeds: 3,
            shadow_s: 3600.0,
            min_shadow_decisions: 100,
            max_shield_override_fraction: 0.0,
            rollback_margin: 0.02,
            rollback_window_s: 1800.0,
            fallback_baseline: 0.95,
            watch_s: 86_400.0,
        }
    }
}

/// A trained policy: its checkpoint and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// SHA-256 of the checkpoint (`llmos digest`).
    pub digest: String,
    /// Where the checkpoint is.
    pub checkpoint: String,
}

/// An evaluation's numbers, as the messages and the shadow phase carry them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationSummary {
    /// Mean paired difference (candidate − incumbent).
    pub mean: f64,
    /// 95 % half-width.
    pub ci95: f64,
    /// Paired seeds.
    pub seeds: usize,
}

/// Where the machine is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// Nothing in progress.
    Idle,
    /// A training run is going on.
    Training {
        /// Its name.
        run: String,
        /// Since when (Unix seconds).
        since_unix_s: f64,
    },
    /// A candidate that passed evaluation decides in shadow.
    Shadow {
        /// The candidate.
        candidate: Candidate,
        /// Since when (Unix seconds).
        since_unix_s: f64,
        /// Its evaluation.
        evaluation: EvaluationSummary,
    },
    /// A promoted policy is watched for degradation.
    Watching {
        /// The promoted policy.
        promoted: Candidate,
        /// What it replaced (`None`: the spec's own policy).
        previous: Option<Candidate>,
        /// Promoted when (Unix seconds).
        since_unix_s: f64,
        /// The incumbent's live SLO attainment it is judged against.
        baseline: f64,
    },
}

/// One input to the machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A training run started.
    TrainingStarted {
        /// Its name.
        run: String,
    },
    /// A candidate was evaluated against the incumbent.
    Evaluated {
        /// The candidate.
        candidate: Candidate,
        /// Per seed, candidate score − incumbent score (higher is better).
        paired_differences: Vec<f64>,
    },
    /// Shadow statistics so far (cumulative since the shadow started).
    Shadow {
        /// Decisions the candidate made.
        decisions: u64,
        /// How many of them the shield would have changed.
        shield_overrides: u64,
    },
    /// A window of live SLO attainment of the active policy.
    Live {
        /// Fraction of requests that met the SLO, 0..1.
        slo_attainment: f64,
        /// Length of the window, seconds.
        window_s: f64,
    },
}

/// The Event reasons the machine emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventReason {
    /// A training run started.
    TrainingStarted,
    /// A candidate failed its evaluation or its shadow.
    CandidateRejected,
    /// A candidate passed its evaluation and decides in shadow.
    ShadowStarted,
    /// A candidate became the active policy.
    Promoted,
    /// A promoted policy was replaced by the one before it.
    RolledBack,
}

impl EventReason {
    /// The Event's `reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::TrainingStarted => "TrainingStarted",
            EventReason::CandidateRejected => "CandidateRejected",
            EventReason::ShadowStarted => "ShadowStarted",
            EventReason::Promoted => "Promoted",
            EventReason::RolledBack => "RolledBack",
        }
    }
}

/// An Event to emit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromotionEvent {
    /// Its reason.
    pub reason: EventReason,
    /// Its message, with the numbers.
    pub message: String,
}

/// One entry of the policy history (status).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The checkpoint digest now active (empty: the spec's own policy).
    pub digest: String,
    /// Its checkpoint.
    pub checkpoint: String,
    /// When (Unix seconds).
    pub at_unix_s: f64,
    /// [`EventReason::Promoted`] or [`EventReason::RolledBack`].
    pub action: EventReason,
    /// Why, with the numbers.
    pub why: String,
}

/// The machine's state: phase, active policy, history and the recent live windows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromotionState {
    /// Where the machine is.
    pub phase: Phase,
    /// The learned policy acting now (`None`: the spec's own policy).
    pub active: Option<Candidate>,
    /// Promotions and rollbacks, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Live windows of the active policy: `(end Unix s, attainment, length s)`.
    pub live: VecDeque<(f64, f64, f64)>,
}

impl PromotionState {
    /// Idle, with `active` acting.
    pub fn new(active: Option<Candidate>) -> PromotionState {
        PromotionState { phase: Phase::Idle, active, history: Vec::new(), live: VecDeque::new() }
    }

    /// Applies [`next`] in place and returns what it produced.
    pub fn apply(&mut self, cfg: &PromotionConfig, at_unix_s: f64, input: &Input) -> Transition {
        let t = next(self, cfg, at_unix_s, input);
        *self = t.state.clone();
        t
    }

    /// Length-weighted mean attainment of the live windows that ended after `from_unix_s`.
    fn live_mean(&self, from_unix_s: f64) -> Option<f64> {
        let (mut w, mut s) = (0.0, 0.0);
        for &(_, a, len) in self.live.iter().filter(|l| l.0 > from_unix_s) {
            w += len;
            s += a * len;
        }
        (w > 0.0).then(|| s / w)
    }
}

/// What one input did.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The next state.
    pub state: PromotionState,
    /// The Event to emit, if any.
    pub event: Option<PromotionEvent>,
    /// The policy-history entry added, if any.
    pub history: Option<HistoryEntry>,
    /// Why the input changed nothing, when it did not fit the phase.
    pub ignored: Option<String>,
}

fn name(c: Option<&Candidate>) -> String {
    c.map(|c| short(&c.digest)).unwrap_or_else(|| "the spec's policy".into())
}

fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// The next state for `input` at `at_unix_s` (see the module docs for the rule).
pub fn next(state: &PromotionState, cfg: &PromotionConfig, at_unix_s: f64, input: &Input) -> Transition {
    let mut t = Transition { state: state.clone(), event: None, history: None, ignored: None };
    let s = &mut t.state;
    match (input, &state.phase) {
        (Input::TrainingStarted { run }, Phase::Idle | Phase::Training { .. }) => {
            s.phase = Phase::Training { run: run.clone(), since_unix_s: at_unix_s };
            t.event = event(EventReason::TrainingStarted, format!("training run {run} started"));
        }
        (Input::Evaluated { candidate, paired_differences }, Phase::Idle | Phase::Training { .. }) => {
            let (phase, ev) = judge(cfg, candidate, paired_differences, at_unix_s);
            s.phase = phase;
            t.event = Some(ev);
        }
        (Input::Shadow { decisions, shield_overrides }, Phase::Shadow { candidate, since_unix_s, evaluation }) => {
            shadow(&mut t, cfg, at_unix_s, (*decisions, *shield_overrides), (candidate, *since_unix_s, evaluation));
        }
        (Input::Live { slo_attainment, window_s }, _) => {
            if !(slo_attainment.is_finite() && window_s.is_finite() && *window_s > 0.0) {
                t.ignored = Some(format!("live window {slo_attainment} over {window_s} s is not a number"));
                return t;
            }
            s.live.push_back((at_unix_s, slo_attainment.clamp(0.0, 1.0), *window_s));
            let horizon = at_unix_s - cfg.rollback_window_s.max(0.0);
            while s.live.front().is_some_and(|l| l.0 <= horizon) {
                s.live.pop_front();
            }
            if let Phase::Watching { promoted, previous, since_unix_s, baseline } = &state.phase {
                watch(&mut t, cfg, at_unix_s, (promoted, previous.as_ref(), *since_unix_s, *baseline));
            }
        }
        (input, phase) => {
            t.ignored = Some(format!("{input:?} does not apply while {phase:?}"));
        }
    }
    t
}

fn event(reason: EventReason, message: String) -> Option<PromotionEvent> {
    Some(PromotionEvent { reason, message })
}

/// Rule 1: the evaluation.
fn judge(cfg: &PromotionConfig, c: &Candidate, diffs: &[f64], at: f64) -> (Phase, PromotionEvent) {
    let reject = |message: String| {
        (
            Phase::Idle,
            PromotionEvent {
                reason: EventReason::CandidateRejected,
                message: format!("{}: {message}", short(&c.digest)),
            },
        )
    };
    if diffs.iter().any(|d| !d.is_finite()) {
        return reject("an evaluation seed has no finite score difference".into());
    }
    if diffs.len() < cfg.min_seeds.max(1) {
        return reject(format!("{} paired seeds, at least {} needed", diffs.len(), cfg.min_seeds.max(1)));
    }
    let e = Estimate::of(diffs);
    let lower = e.mean - e.ci95;
    let numbers = format!(
        "score difference {:+.4} ± {:.4} (95 %, {} seeds), lower bound {:+.4}, margin {:.4}",
        e.mean, e.ci95, e.n, lower, cfg.margin
    );
    // A NaN margin or bound rejects too.
    if lower.partial_cmp(&cfg.margin) != Some(std::cmp::Ordering::Greater) {
        return reject(format!("not better than the incumbent by the margin: {numbers}"));
    }
    let evaluation = EvaluationSummary { mean: e.mean, ci95: e.ci95, seeds: e.n };
    let message = format!("{} beats the incumbent: {numbers}; shadow for {:.0} s", short(&c.digest), cfg.shadow_s);
    (
        Phase::Shadow { candidate: c.clone(), since_unix_s: at, evaluation },
        PromotionEvent { reason: EventReason::ShadowStarted, message },
    )
}

/// Rule 2: the shadow.
fn shadow(
    t: &mut Transition,
    cfg: &PromotionConfig,
    at: f64,
    (decisions, overrides): (u64, u64),
    (c, since, ev): (&Candidate, f64, &EvaluationSummary),
) {
    let frac = if decisions > 0 { overrides as f64 / decisions as f64 } else { 0.0 };
    let numbers = format!(
        "shield would have overridden {overrides} of {decisions} shadow decisions ({:.1} %, at most {:.1} %)",
        100.0 * frac,
        100.0 * cfg.max_shield_override_fraction
    );
    if frac > cfg.max_shield_override_fraction {
        t.state.phase = Phase::Idle;
        t.event = event(EventReason::CandidateRejected, format!("{}: {numbers}", short(&c.digest)));
        return;
    }
    if at - since < cfg.shadow_s || decisions < cfg.min_shadow_decisions {
        return;
    }
    let s = &mut t.state;
    let live = s.live_mean(at - cfg.rollback_window_s);
    let baseline = live.unwrap_or(cfg.fallback_baseline);
    let source = match live {
        Some(_) => "the incumbent's live SLO attainment",
        None => "no live window of the incumbent closed yet: the fallback baseline",
    };
    let why = format!(
        "evaluation {:+.4} ± {:.4} ({} seeds); {numbers} over {:.0} s; replaces {}; rollback baseline {:.1} % ({source})",
        ev.mean,
        ev.ci95,
        ev.seeds,
        at - since,
        name(s.active.as_ref()),
        100.0 * baseline
    );
    let previous = s.active.replace(c.clone());
    s.live.clear();
    s.phase = Phase::Watching { promoted: c.clone(), previous, since_unix_s: at, baseline };
    let entry = HistoryEntry {
        digest: c.digest.clone(),
        checkpoint: c.checkpoint.clone(),
        at_unix_s: at,
        action: EventReason::Promoted,
        why: why.clone(),
    };
    s.history.push(entry.clone());
    t.history = Some(entry);
    t.event = event(EventReason::Promoted, format!("{} promoted: {why}", short(&c.digest)));
}

/// Rule 3: the watch after a promotion.
fn watch(
    t: &mut Transition,
    cfg: &PromotionConfig,
    at: f64,
    (promoted, previous, since, baseline): (&Candidate, Option<&Candidate>, f64, f64),
) {
    let s = &mut t.state;
    if at - since >= cfg.rollback_window_s {
        let from = (at - cfg.rollback_window_s).max(since);
        if let Some(now) = s.live_mean(from) {
            if now < baseline - cfg.rollback_margin {
                let why = format!(
                    "live SLO attainment {:.1} % over the last {:.0} s is below the incumbent's {:.1} % by more than {:.1} pt",
                    100.0 * now,
                    cfg.rollback_window_s,
                    100.0 * baseline,
                    100.0 * cfg.rollback_margin
                );
                s.active = previous.cloned();
                s.live.clear();
                s.phase = Phase::Idle;
                let entry = HistoryEntry {
                    digest: previous.map(|p| p.digest.clone()).unwrap_or_default(),
                    checkpoint: previous.map(|p| p.checkpoint.clone()).unwrap_or_default(),
                    at_unix_s: at,
                    action: EventReason::RolledBack,
                    why: why.clone(),
                };
                s.history.push(entry.clone());
                t.history = Some(entry);
                let msg = format!("{} rolled back to {}: {why}", short(&promoted.digest), name(previous));
                t.event = event(EventReason::RolledBack, msg);
                return;
            }
        }
    }
    if at - since >= cfg.watch_s {
        s.phase = Phase::Idle;
    }
}

// The training resource's status carries candidates and evaluations in these terms; the
// conversions live here so that the CRD types do not depend on the rule.
impl From<crate::crd::training::CandidateRef> for Candidate {
    fn from(c: crate::crd::training::CandidateRef) -> Self {
        Candidate { digest: c.digest, checkpoint: c.checkpoint }
    }
}

impl From<Candidate> for crate::crd::training::CandidateRef {
    fn from(c: Candidate) -> Self {
        crate::crd::training::CandidateRef { digest: c.digest, checkpoint: c.checkpoint }
    }
}

impl crate::crd::training::TrainingEvaluation {
    /// The numbers as the promotion rule takes them.
    pub fn summary(&self) -> EvaluationSummary {
        EvaluationSummary { mean: self.mean, ci95: self.ci95, seeds: self.seeds as usize }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(d: &str) -> Candidate {
        Candidate { digest: d.repeat(16), checkpoint: format!("/ckpt/{d}") }
    }

    fn cfg() -> PromotionConfig {
        PromotionConfig {
            shadow_s: 600.0,
            min_shadow_decisions: 10,
            rollback_window_s: 300.0,
            watch_s: 3600.0,
            ..Default::default()
        }
    }

    /// Evaluates `diffs`, then reports clean shadow statistics after the shadow time.
    fn run(diffs: &[f64], overrides: u64) -> (PromotionState, Vec<EventReason>) {
        let c = cfg();
        let mut s = PromotionState::new(Some(cand("a")));
        let mut reasons = Vec::new();
        let mut push = |t: Transition| reasons.extend(t.event.map(|e| e.reason));
        push(s.apply(&c, 0.0, &Input::TrainingStarted { run: "r1".into() }));
        push(s.apply(&c, 10.0, &Input::Evaluated { candidate: cand("b"), paired_differences: diffs.to_vec() }));
        push(s.apply(&c, 300.0, &Input::Shadow { decisions: 20, shield_overrides: 0 }));
        push(s.apply(&c, 700.0, &Input::Shadow { decisions: 40, shield_overrides: overrides }));
        (s, reasons)
    }

    #[test]
    fn a_better_candidate_is_shadowed_then_promoted() {
        let (s, reasons) = run(&[0.05, 0.06, 0.04, 0.05], 0);
        assert_eq!(reasons, [EventReason::TrainingStarted, EventReason::ShadowStarted, EventReason::Promoted]);
        assert_eq!(s.active, Some(cand("b")));
        assert_eq!(s.history.len(), 1);
        assert!(s.history[0].why.contains("evaluation +0.0500"), "{}", s.history[0].why);
    }

    #[test]
    fn worse_and_tied_candidates_are_rejected() {
        for diffs in [[-0.05, -0.04, -0.06], [0.0, 0.0, 0.0], [0.1, -0.1, 0.0]] {
            let (s, reasons) = run(&diffs, 0);
            assert_eq!(reasons, [EventReason::TrainingStarted, EventReason::CandidateRejected], "{diffs:?}");
            assert_eq!(s.active, Some(cand("a")));
            assert!(s.history.is_empty());
        }
        let (_, reasons) = run(&[0.5, 0.5], 0);
        assert_eq!(reasons[1], EventReason::CandidateRejected, "two seeds are fewer than min_seeds");
    }

    #[test]
    fn shield_overrides_in_shadow_reject_a_good_candidate() {
        let (s, reasons) = run(&[0.05, 0.06, 0.04], 1);
        assert_eq!(reasons, [EventReason::TrainingStarted, EventReason::ShadowStarted, EventReason::CandidateRejected]);
        assert_eq!(s.active, Some(cand("a")));
        assert_eq!(s.phase, Phase::Idle);
    }

    #[test]
    fn a_degrading_promoted_policy_is_rolled_back_and_a_good_one_kept() {
        let c = cfg();
        for (after, rolled) in [(0.90, true), (0.975, false)] {
            let mut s = PromotionState::new(Some(cand("a")));
            let live = |a: f64| Input::Live { slo_attainment: a, window_s: 60.0 };
            let diffs = vec![0.1, 0.1, 0.11];
            s.apply(&c, 0.0, &Input::Evaluated { candidate: cand("b"), paired_differences: diffs });
            for i in 1..10 {
                s.apply(&c, 60.0 * i as f64, &live(0.98)); // the incumbent, during the shadow
            }
            let t = s.apply(&c, 600.0, &Input::Shadow { decisions: 50, shield_overrides: 0 });
            assert_eq!(t.event.unwrap().reason, EventReason::Promoted);
            assert!(matches!(s.phase, Phase::Watching { baseline, .. } if (baseline - 0.98).abs() < 1e-9));
            let mut reasons = Vec::new();
            for i in 1..=70 {
                reasons.extend(s.apply(&c, 600.0 + 60.0 * i as f64, &live(after)).event.map(|e| e.reason));
            }
            assert_eq!(reasons.contains(&EventReason::RolledBack), rolled, "after {after}");
            assert_eq!(s.active, Some(cand(if rolled { "a" } else { "b" })));
            assert_eq!(s.phase, Phase::Idle);
            let last = s.history.last().unwrap();
            if rolled {
                assert_eq!(last.action, EventReason::RolledBack);
                assert_eq!(last.digest, cand("a").digest);
                assert!(last.why.contains("90.0 %") && last.why.contains("98.0 %"), "{}", last.why);
            } else {
                assert_eq!(last.action, EventReason::Promoted);
            }
        }
    }

    #[test]
    fn inputs_out_of_phase_change_nothing() {
        let s = PromotionState::new(None);
        let t = next(&s, &cfg(), 0.0, &Input::Shadow { decisions: 1, shield_overrides: 0 });
        assert!(t.ignored.is_some() && t.event.is_none() && t.state == s);
        let bad = next(&s, &cfg(), 0.0, &Input::Live { slo_attainment: f64::NAN, window_s: 60.0 });
        assert!(bad.ignored.is_some() && bad.state == s);
    }

    proptest! {
        #[test]
        fn no_candidate_that_is_never_better_by_the_margin_is_promoted(
            diffs in prop::collection::vec(-1.0f64..1.0, 3..12),
            margin in 0.0f64..0.5,
        ) {
            let c = PromotionConfig { margin, ..cfg() };
            let diffs: Vec<f64> = diffs.iter().map(|d| d.min(margin)).collect();
            let s = PromotionState::new(None);
            let t = next(&s, &c, 0.0, &Input::Evaluated { candidate: cand("x"), paired_differences: diffs });
            prop_assert_eq!(t.event.unwrap().reason, EventReason::CandidateRejected);
            prop_assert_eq!(t.state.phase, Phase::Idle);
        }

        #[test]
        fn a_clearly_better_candidate_always_reaches_shadow(
            noise in prop::collection::vec(-0.01f64..0.01, 3..12),
            margin in 0.0f64..0.5,
        ) {
            let c = PromotionConfig { margin, ..cfg() };
            let diffs: Vec<f64> = noise.iter().map(|n| margin + 0.1 + n).collect();
            let t = next(&PromotionState::new(None), &c, 0.0, &Input::Evaluated { candidate: cand("x"), paired_differences: diffs });
            prop_assert_eq!(t.event.unwrap().reason, EventReason::ShadowStarted);
        }
    }
}
