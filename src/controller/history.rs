//! `llmos policy-history`: where the promotion of retrained policies stands for one
//! workload, read from its `status.learning` (the phase, the learned policy acting, the
//! shadow's counters, the history of promotions and rollbacks, the last Event).

use anyhow::Context as _;
use kube::api::Api;

use crate::crd::LLMWorkload;

/// Arguments of `llmos policy-history`.
#[derive(clap::Args, Debug)]
pub struct PolicyHistoryArgs {
    /// The LLMWorkload's name.
    pub workload: String,
    /// Its namespace (default: the kubeconfig's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Read the workload from this file (YAML or JSON, as `kubectl get llmw NAME -o yaml`
    /// prints it) instead of the API server.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
}

/// Runs `llmos policy-history`.
pub fn run(args: PolicyHistoryArgs) -> anyhow::Result<()> {
    let wl = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_yaml::from_str::<LLMWorkload>(&text)
                .with_context(|| format!("{} is not an LLMWorkload", path.display()))?
        }
        None => fetch(&args)?,
    };
    print!("{}", render(&wl));
    Ok(())
}

fn fetch(args: &PolicyHistoryArgs) -> anyhow::Result<LLMWorkload> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        let config = kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config)")?;
        let ns = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        let api: Api<LLMWorkload> = Api::namespaced(client, &ns);
        api.get(&args.workload).await.with_context(|| format!("reading LLMWorkload {ns}/{}", args.workload))
    })
}

/// The report: one line each for the workload, the phase and the acting policy, then the
/// shadow (if any), the history (oldest first) and the last Event.
pub fn render(wl: &LLMWorkload) -> String {
    use std::fmt::Write;
    let name = format!(
        "{}/{}",
        wl.metadata.namespace.as_deref().unwrap_or_default(),
        wl.metadata.name.as_deref().unwrap_or_default()
    );
    let mut out = String::new();
    let enabled = wl.spec.learning.promotion.enabled;
    let _ = writeln!(out, "workload   {name} (promotion {})", if enabled { "enabled" } else { "disabled" });
    let Some(l) = wl.status.as_ref().and_then(|s| s.learning.as_ref()) else {
        let _ = writeln!(out, "phase      Idle (nothing recorded in status.learning)");
        let _ = writeln!(out, "active     the spec's policy ({})", wl.spec.policy.kind.as_str());
        return out;
    };
    let since = l.since.as_deref().map(|s| format!(" since {s}")).unwrap_or_default();
    let what = match (l.phase.as_str(), &l.candidate, &l.training) {
        ("Training", _, Some(run)) => format!(" (run {run})"),
        ("Shadow" | "Watching", Some(c), _) => format!(" (candidate {} at {})", c.digest, c.checkpoint),
        _ => String::new(),
    };
    let _ = writeln!(out, "phase      {}{what}{since}", l.phase);
    match &l.active {
        Some(a) if enabled => {
            let _ = writeln!(
                out,
                "active     {} at {} (in place of the spec's {})",
                a.digest,
                a.checkpoint,
                wl.spec.policy.kind.as_str()
            );
        }
        Some(a) => {
            let _ = writeln!(
                out,
                "active     the spec's policy ({}); promotion is off, {} is kept in status",
                wl.spec.policy.kind.as_str(),
                a.digest
            );
        }
        None => {
            let _ = writeln!(out, "active     the spec's policy ({})", wl.spec.policy.kind.as_str());
        }
    }
    if let Some(e) = &l.evaluation {
        let _ = writeln!(out, "evaluation {:+.4} ± {:.4} over {} seeds", e.mean, e.ci95, e.seeds);
    }
    if let Some(s) = &l.shadow {
        let last = s.last_decision.as_ref().map(|d| {
            let t: Vec<String> = d.targets.iter().map(|t| format!("{}/{}={}", t.variant, t.pool, t.replicas)).collect();
            format!("; last: {}", t.join(", "))
        });
        let _ = writeln!(
            out,
            "shadow     {} decisions, {} the shield would have overridden{}",
            s.decisions,
            s.shield_overrides,
            last.unwrap_or_default()
        );
    }
    if let (Some(b), Some(p)) = (l.baseline, &l.previous) {
        let _ = writeln!(out, "watching   against {:.1} % SLO attainment; would roll back to {}", 100.0 * b, p.digest);
    } else if let Some(b) = l.baseline {
        let _ =
            writeln!(out, "watching   against {:.1} % SLO attainment; would roll back to the spec's policy", 100.0 * b);
    }
    if l.history.is_empty() {
        let _ = writeln!(out, "history    (none)");
    } else {
        let _ = writeln!(out, "history");
        for h in &l.history {
            let who = if h.digest.is_empty() {
                "the spec's policy".to_string()
            } else {
                format!("{} at {}", h.digest, h.checkpoint)
            };
            let _ = writeln!(out, "  {}  {:<10} {who}\n      {}", h.time, h.action, h.why);
        }
    }
    if let Some(e) = &l.last_event {
        let _ = writeln!(out, "last event {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::promotion::{LearningStatus, PolicyHistoryEntry, PolicyRef};

    #[test]
    fn the_report_names_phase_active_policy_and_history() {
        let mut wl: LLMWorkload = serde_yaml::from_str(
            "apiVersion: llmos.dev/v1alpha1\nkind: LLMWorkload\nmetadata: {name: chat, namespace: prod}\n\
             spec:\n  variants: [{name: v, model: m, image: i}]\n  gpuPools: [{name: p, gpuType: L4, pricePerGpuHour: 0.8}]\n\
             \x20 learning: {promotion: {enabled: true}}\n",
        )
        .expect("workload");
        assert!(render(&wl).contains("active     the spec's policy (hpa)"), "{}", render(&wl));
        let ckpt = PolicyRef { digest: "a".repeat(64), checkpoint: "/ckpt/r1".into() };
        wl.status = Some(crate::crd::LLMWorkloadStatus {
            learning: Some(LearningStatus {
                phase: "Watching".into(),
                since: Some("2027-01-15T08:00:00Z".into()),
                candidate: Some(ckpt.clone()),
                baseline: Some(0.97),
                active: Some(ckpt),
                history: vec![PolicyHistoryEntry {
                    digest: "a".repeat(64),
                    checkpoint: "/ckpt/r1".into(),
                    time: "2027-01-15T08:00:00Z".into(),
                    action: "Promoted".into(),
                    why: "evaluation +0.0500".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
        let r = render(&wl);
        assert!(r.contains("workload   prod/chat (promotion enabled)"), "{r}");
        assert!(r.contains("phase      Watching (candidate aaaa"), "{r}");
        assert!(r.contains("in place of the spec's hpa"), "{r}");
        assert!(r.contains("97.0 % SLO attainment; would roll back to the spec's policy"), "{r}");
        assert!(r.contains("Promoted") && r.contains("evaluation +0.0500"), "{r}");
    }
}
