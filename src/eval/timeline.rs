//! Per-tick timelines of episodes (`llmos compare --timeline DIR`): what the policy asked
//! for in each slot, what the shield let through and why, the replicas that were ready,
//! and what the traffic did in the interval that followed. A comparison's table says
//! *that* a policy lost a cell; its timeline says *when* and *how* (a replica it kept, a
//! scale-up the budget refused, a cold start it waited for).

use std::fmt::Write as _;

use crate::control::Tick;

/// One slot (variant on a pool) at one tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlotRow {
    /// Replicas the policy asked for.
    pub proposed: u32,
    /// Replicas the shield let through (and the twin applied).
    pub applied: u32,
    /// Ready replicas at the start of the tick.
    pub ready: u32,
    /// Replicas starting (scheduled, loading weights) at the start of the tick.
    pub starting: u32,
}

/// One control tick of an episode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimelineRow {
    /// Simulated time at the end of the tick's interval, seconds.
    pub time_s: f64,
    /// Requests that arrived in the interval.
    pub arrived: u64,
    /// Requests that finished in the interval.
    pub finished: u64,
    /// Of those, the ones that met the SLO.
    pub slo_met: u64,
    /// Requests rejected in the interval.
    pub rejected: u64,
    /// Σ quality of the requests that finished within the SLO.
    pub quality_met: f64,
    /// Cost accrued in the interval, USD.
    pub cost_usd: f64,
    /// The tick's reward.
    pub reward: f64,
    /// Whether every slot's metrics were seen (a policy holds on a blind tick).
    pub complete: bool,
    /// Per slot, in the order of [`Timeline::slots`].
    pub slots: Vec<SlotRow>,
    /// The shield's overrides, `Rule variant/pool asked->applied`, in rule order.
    pub overrides: Vec<String>,
    /// The policy's reason, as it would appear in an Event.
    pub reason: String,
}

/// The ticks of one episode, with the slots fixed by its first tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// (variant, pool) of every slot, in the order of the first observation.
    pub slots: Vec<(String, String)>,
    /// One row per tick.
    pub rows: Vec<TimelineRow>,
}

impl Timeline {
    /// Appends `tick`. Slots that appear after the first tick (none in the twin: the
    /// observation lists every allowed slot from the start) are left out.
    pub fn push(&mut self, tick: &Tick) {
        if self.slots.is_empty() {
            self.slots = tick.observation.slots.iter().map(|s| (s.variant.clone(), s.pool.clone())).collect();
        }
        let slots = self
            .slots
            .iter()
            .map(|(v, p)| {
                let obs = tick.observation.slot(v, p);
                SlotRow {
                    proposed: tick.proposed.replicas(v, p).or(obs.map(|s| s.desired_replicas)).unwrap_or(0),
                    applied: tick.outcome.decision.replicas(v, p).or(obs.map(|s| s.desired_replicas)).unwrap_or(0),
                    ready: obs.map_or(0, |s| s.ready_replicas),
                    starting: obs.map_or(0, |s| s.starting_replicas),
                }
            })
            .collect();
        let overrides = (tick.outcome.overrides.iter())
            .map(|o| format!("{} {}/{} {}->{}", o.rule, o.variant, o.pool, o.asked, o.applied))
            .collect();
        let s = &tick.stats;
        self.rows.push(TimelineRow {
            time_s: s.time_s,
            arrived: s.arrived,
            finished: s.finished,
            slo_met: s.slo_met,
            rejected: s.rejected,
            quality_met: s.quality_met_sum,
            cost_usd: s.cost_usd,
            reward: tick.reward,
            complete: tick.observation.is_complete(),
            slots,
            overrides,
            reason: tick.proposed.reason.clone(),
        });
    }

    /// The timeline as CSV: one header line, one line per tick; per slot the columns
    /// `<variant>/<pool> proposed|applied|ready|starting`; overrides joined by `; `.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("time_s,arrived,finished,slo_met,rejected,quality_met,cost_usd,reward,complete");
        for (v, p) in &self.slots {
            for col in ["proposed", "applied", "ready", "starting"] {
                let _ = write!(out, ",{v}/{p} {col}");
            }
        }
        out.push_str(",overrides,reason\n");
        for r in &self.rows {
            let _ = write!(
                out,
                "{:.1},{},{},{},{},{:.4},{:.6},{:.6},{}",
                r.time_s, r.arrived, r.finished, r.slo_met, r.rejected, r.quality_met, r.cost_usd, r.reward, r.complete
            );
            for s in &r.slots {
                let _ = write!(out, ",{},{},{},{}", s.proposed, s.applied, s.ready, s.starting);
            }
            let _ = writeln!(out, ",{},{}", csv_field(&r.overrides.join("; ")), csv_field(&r.reason));
        }
        out
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The file name of an episode's timeline: the policy's label with every character other
/// than ASCII letters, digits, `-`, `_` and `.` replaced by `_`, then the seed and load.
pub fn file_name(policy: &str, seed: u64, load: f64) -> String {
    let clean: String =
        policy.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    format!("{clean}.seed{seed}.x{load}.csv")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_are_quoted_and_names_are_safe() {
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(file_name("dqn:docs/x/ens-012", 1, 1.5), "dqn_docs_x_ens-012.seed1.x1.5.csv");
    }

    #[test]
    fn the_csv_has_a_column_per_slot_and_field() {
        let t = Timeline {
            slots: vec![("8b".into(), "l4".into())],
            rows: vec![TimelineRow {
                time_s: 15.0,
                arrived: 3,
                slots: vec![SlotRow { proposed: 2, applied: 1, ready: 1, starting: 0 }],
                overrides: vec!["Budget 8b/l4 2->1".into()],
                reason: "up, then".into(),
                ..Default::default()
            }],
        };
        let csv = t.to_csv();
        let mut lines = csv.lines();
        let header = lines.next().unwrap();
        assert!(header.ends_with("8b/l4 proposed,8b/l4 applied,8b/l4 ready,8b/l4 starting,overrides,reason"));
        let row = lines.next().unwrap();
        assert!(row.starts_with("15.0,3,"), "{row}");
        assert!(row.ends_with(",2,1,1,0,Budget 8b/l4 2->1,\"up, then\""), "{row}");
    }
}
