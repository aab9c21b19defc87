//! Judging policies run later against references already run: the (policy, load) rows of
//! an earlier comparison of the same runs join a new one (`llmos compare --with-report`).
//!
//! A multi-day comparison costs hours on a small machine; a policy trained afterwards (a
//! DQN retrained on the training days) need not rerun every HPA/KPA setting and the
//! clairvoyant sweep to be judged against them. The earlier report must describe the same
//! runs: the same scenario, window, number of seeds and the same column set (the twin is
//! deterministic, so the same seeds and loads replay the same arrivals). Its rows for
//! policies the new run does not have are added, and the frontiers and per-policy figures
//! are computed again over all rows. Episodes and plots stay those of the new run.

use serde_json::Value;

use super::stats::{self, Estimate, Row};
use super::{CompareReport, EvalError};
use crate::policy::Registry;

/// Adds to `report` the rows of `earlier` (a `report.json` read from `origin`) for the
/// policies `report` lacks, at the loads it has, and recomputes its frontiers and figures.
/// Returns the policies added. An earlier report of other runs, or a row that does not
/// parse, is an error naming `origin` and the field.
pub fn merge_rows(
    report: &mut CompareReport,
    earlier: &Value,
    origin: &str,
    registry: &Registry,
) -> Result<Vec<String>, EvalError> {
    let bad = |field: &str, msg: String| EvalError::Config(format!("{origin}: `{field}` {msg}"));
    let same = |field: &str, ours: Value| {
        if earlier.get(field) == Some(&ours) {
            Ok(())
        } else {
            Err(bad(field, format!("is {:?}, this run's is {ours}: not the same runs", earlier.get(field))))
        }
    };
    same("scenario", Value::from(report.scenario.clone()))?;
    same("window", serde_json::to_value(report.window).map_err(|e| bad("window", e.to_string()))?)?;
    same("seeds", Value::from(report.seeds))?;
    let names: Vec<&'static str> = stats::columns().iter().map(|c| c.name).collect();
    let rows = earlier.get("rows").and_then(Value::as_array).ok_or_else(|| bad("rows", "is missing".into()))?;
    let mut added = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let row = parse_row(r, &names, registry).map_err(|m| bad(&format!("rows[{i}]"), m))?;
        let known = report.policies.contains(&row.policy) && !added.contains(&row.policy);
        if known || !report.loads.contains(&row.load) {
            continue;
        }
        if !added.contains(&row.policy) {
            let kind = row.kind.ok_or_else(|| {
                bad(&format!("rows[{i}].policy"), format!("`{}` is not a registered kind", row.policy))
            })?;
            added.push(row.policy.clone());
            report.policies.push(row.policy.clone());
            report.kinds.push(kind);
        }
        report.rows.push(row);
    }
    report.frontiers = stats::frontiers(&report.rows, &report.loads);
    report.figures = stats::policy_figures(&report.rows);
    report.target_winners = stats::target_winners(&report.rows, &report.loads, report.slo_target_pct);
    Ok(added)
}

/// One row of a report: its policy, load, and one estimate per column, in the columns of
/// this build. A column of this build that the report lacks (a report written before the
/// column was added) has no value (`n = 0`, shown as `-`); a column this build does not
/// know is an error.
fn parse_row(r: &Value, names: &[&'static str], registry: &Registry) -> Result<Row, String> {
    let policy = r.get("policy").and_then(Value::as_str).ok_or("has no `policy`")?.to_string();
    let load = r.get("load").and_then(Value::as_f64).ok_or("has no numeric `load`")?;
    let columns = r.get("columns").and_then(Value::as_array).ok_or("has no `columns`")?;
    let values = r.get("values").and_then(Value::as_array).ok_or("has no `values`")?;
    let listed: Vec<&str> = columns.iter().filter_map(Value::as_str).collect();
    let unknown = listed.iter().any(|c| !names.contains(c));
    if listed.len() != columns.len() || values.len() != listed.len() || unknown {
        return Err(format!(
            "has the columns {listed:?} and {} values; this build's are {names:?} (a report of another version)",
            values.len()
        ));
    }
    // A mean with no seed behind it was written as null (NaN).
    let num = |v: &Value, k: &str| v.get(k).and_then(|x| if x.is_null() { Some(f64::NAN) } else { x.as_f64() });
    let parse = |v: &Value, name: &str| {
        let (mean, ci95) = (num(v, "mean"), num(v, "ci95"));
        let n = v.get("n").and_then(Value::as_u64);
        match (mean, ci95, n) {
            (Some(mean), Some(ci95), Some(n)) => Ok(Estimate { mean, ci95, n: n as usize }),
            _ => Err(format!("column `{name}` is not {{mean, ci95, n}}")),
        }
    };
    let values = names
        .iter()
        .map(|name| match listed.iter().position(|c| c == name) {
            Some(i) => parse(&values[i], name),
            None => Ok(Estimate { mean: f64::NAN, ci95: f64::NAN, n: 0 }),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Row { kind: registry.kind_of(&policy), policy, load, columns: names.to_vec(), values })
}
