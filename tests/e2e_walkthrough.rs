//! The walkthrough of docs/e2e.md, run as a user runs it: `scripts/walkthrough.sh` starts
//! the loopback control plane, Prometheus, `llmos twin-serve` and the operator, applies
//! `manifests/examples/` and waits until every example workload has been decided for;
//! this test runs the script on free ports and checks what it printed. The command block
//! of docs/e2e.md is checked against the script by `tests/doc_commands.rs`.
//!
//! Needs what `e2e_operator` needs; `LLMOS_SKIP_E2E=1` skips.

mod e2e_support;

use std::process::Command;

use e2e_support::{free_port, k8s_bin, missing_prerequisites, repo, skip_requested, tail};

#[test]
fn the_walkthrough_script_runs_and_every_example_is_decided_for() {
    if skip_requested() {
        eprintln!("LLMOS_SKIP_E2E=1: skipping the walkthrough");
        return;
    }
    let missing = missing_prerequisites(true);
    assert!(missing.is_empty(), "end-to-end prerequisites missing (set LLMOS_SKIP_E2E=1 to skip): {missing:?}");
    let run = tempfile::tempdir().expect("temp dir");
    let port = || free_port().to_string();
    let op_addr = format!("127.0.0.1:{}", free_port());
    let out = Command::new("bash")
        .arg(repo().join("scripts/walkthrough.sh"))
        .arg(run.path())
        .env("LLMOS", env!("CARGO_BIN_EXE_llmos"))
        .env("LLMOS_K8S_BIN", k8s_bin())
        .env("PROM_PORT", port())
        .env("OPERATOR_ADDR", &op_addr)
        .env("ETCD_PORT", port())
        .env("ETCD_PEER_PORT", port())
        .env("API_PORT", port())
        .env("KCM_PORT", port())
        .env("WATCH_S", "180")
        .output()
        .expect("running scripts/walkthrough.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the walkthrough failed:\n{}\n{}", tail(&stdout), tail(&stderr));
    for want in [
        "== kubectl get llmworkloads -o wide",
        "chat-small",
        "href=\"/decisions/default/chat-small\"",
        "href=\"/decisions/default/chat\"",
        "| policy hpa |",
        "| policy kpa |",
        "llmos_workload_arrival_rate_rps",
    ] {
        assert!(stdout.contains(want), "the walkthrough's output lacks {want:?}:\n{stdout}");
    }
    eprintln!("{stdout}");
}
