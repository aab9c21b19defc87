//! Several workloads on shared GPU pools in the twin (`llmos share`): the pools are never
//! over-committed (checked at every tick by the run itself), preempted replicas drain
//! without losing a request, the same seed gives the same run, the arbiter's priorities
//! show in the outcome, a replica that does not fit its pool goes to another pool of its
//! workload, and a bad mix file is an error naming the field.

use std::path::Path;

use llmos::control::cluster::Allocator;
use llmos::eval::cluster::{run_mix, table};
use llmos::twin::cluster::Mix;

fn mix(name: &str) -> Mix {
    Mix::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/shared").join(name)).expect("mix loads")
}

#[test]
fn the_arbiter_serves_priorities_and_first_come_does_not() {
    let m = mix("three-services-one-pool.toml");
    let first = run_mix(&m, Allocator::FirstCome, 0, Some("hpa"), None).expect("first-come runs");
    let arb = run_mix(&m, Allocator::Arbiter, 0, Some("hpa"), None).expect("arbiter runs");
    for r in [&first, &arb] {
        assert!(r.peak_held_gpus[0] <= m.file.pools[0].capacity_gpus, "{:?}", r.peak_held_gpus);
        assert!(
            r.peak_held_gpus[0] == m.file.pools[0].capacity_gpus,
            "the pool is short at the peak: {:?}",
            r.peak_held_gpus
        );
    }
    // Priority order in the arbiter's outcome: the middle priority gets more of its SLO
    // than under first-come, at the lowest priority's expense; the lowest is the one
    // preempted.
    let (code_fc, code_arb) = (first.workloads[1].attainment(), arb.workloads[1].attainment());
    assert!(code_arb > code_fc + 0.05, "code {code_fc} -> {code_arb}");
    assert!(arb.workloads[2].preempted_replicas > 0);
    assert_eq!(arb.workloads[0].preempted_replicas + arb.workloads[1].preempted_replicas, 0);
    assert_eq!(first.workloads.iter().map(|w| w.preempted_replicas).sum::<u64>(), 0);
    // Drained, not lost: every request that arrived finished or was rejected at the gateway,
    // and none was rejected here.
    for w in &arb.workloads {
        assert_eq!(w.rejected, 0, "{}", w.name);
    }
    let text = table(&m, &[first, arb]);
    assert!(text.contains("weighted SLO met") && text.contains("arbiter"), "{text}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let m = mix("code-bursts-first.toml");
    let a = run_mix(&m, Allocator::Arbiter, 3, Some("hpa"), None).unwrap();
    let b = run_mix(&m, Allocator::Arbiter, 3, Some("hpa"), None).unwrap();
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
}

#[test]
fn a_guaranteed_share_is_never_preempted_while_it_is_used() {
    // chat (priority 5) has 4 guaranteed GPUs; code (priority 10) bursts. The arbiter may
    // take chat's replicas above 4 GPUs only.
    let m = mix("code-bursts-first.toml");
    let r = run_mix(&m, Allocator::Arbiter, 0, Some("hpa"), None).unwrap();
    assert!(r.workloads[1].attainment() > 0.99, "chat keeps its SLO: {}", r.workloads[1].attainment());
}

#[test]
fn a_replica_that_does_not_fit_goes_to_the_other_pool() {
    // code may run on the A100s or the H100s; its HPA asks for A100s (cheaper). Under the
    // arbiter the replicas that do not fit there are granted on the H100s; under
    // first-come they wait for A100s while the H100s stay idle.
    let m = mix("two-pools.toml");
    let first = run_mix(&m, Allocator::FirstCome, 0, Some("hpa"), None).unwrap();
    let arb = run_mix(&m, Allocator::Arbiter, 0, Some("hpa"), None).unwrap();
    assert_eq!(first.peak_held_gpus[1], 0, "first-come never uses the H100s");
    assert!(arb.peak_held_gpus[1] > 0 && arb.peak_held_gpus[1] <= 4, "{:?}", arb.peak_held_gpus);
    assert!(arb.workloads[1].substituted_replicas > 0);
    assert!(arb.workloads[1].attainment() > first.workloads[1].attainment() + 0.1);
}

#[test]
fn a_bad_mix_file_names_the_field() {
    let dir = std::env::temp_dir().join(format!("llmos-mix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let code = root.join("scenarios/azure-code-llama3-8b-a100.toml");
    let tiny = root.join("scenarios/tiny-step-two-pools.toml");
    let cases = [
        (format!("name='m'\n[[pools]]\nname='a100'\ncapacity_gpus=4\n[[workloads]]\nname='a'\nscenario='{}'\nload=-1\n", code.display()), "workloads[0].load"),
        (format!("name='m'\n[[pools]]\nname='h100'\ncapacity_gpus=4\n[[workloads]]\nname='a'\nscenario='{}'\n", code.display()), "none of its pools"),
        (format!("name='m'\n[[pools]]\nname='a100'\ncapacity_gpus=4\n[[workloads]]\nname='a'\nscenario='{}'\n[[workloads]]\nname='a'\nscenario='{}'\n", code.display(), code.display()), "workloads[1].name"),
        (format!("name='m'\n[[pools]]\nname='a100'\ncapacity_gpus=4\n[[workloads]]\nname='a'\nscenario='{}'\nwindow=[0.5, 0.2]\n", code.display()), "workloads[0].window"),
        (format!("name='m'\n[[pools]]\nname='a100'\ncapacity_gpus=4\n[[workloads]]\nname='a'\nscenario='{}'\nprio=3\n", code.display()), "line 8"),
        (format!("name='m'\n[[pools]]\nname='a100'\ncapacity_gpus=4\n[[workloads]]\nname='a'\nscenario='{}'\n[[workloads]]\nname='b'\nscenario='{}'\n", code.display(), tiny.display()), "workloads[1].scenario"),
        ("name='m'\n[[pools]]\nname='a100'\ncapacity_gpus=4\n[[workloads]]\nname='a'\nscenario='missing.toml'\n".to_string(), "workloads[0].scenario"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.join(format!("m{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let err = Mix::load(&p).err().map(|e| e.to_string()).unwrap_or_else(|| panic!("case {i} loaded"));
        assert!(err.contains(want), "case {i}: {err}");
    }
    // Initial replicas that do not fit the shared pool.
    let p = dir.join("small.toml");
    std::fs::write(
        &p,
        format!(
            "name='m'\n[[pools]]\nname='a100'\ncapacity_gpus=1\n[[workloads]]\nname='a'\nscenario='{}'\n",
            code.display()
        ),
    )
    .unwrap();
    let err = Mix::load(&p).unwrap().build(0).err().expect("2 initial replicas on 1 GPU").to_string();
    assert!(err.contains("pools[0].capacity_gpus"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
