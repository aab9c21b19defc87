//! What the Pods of an LLMPolicyTraining run, as processes: `llmos train-job` for two
//! indexes on a recorded workload writes two distinct candidates with their digests,
//! atomically (a killed write's temporary directory is never read, and the next attempt
//! removes it), and `llmos evaluate-candidates` scores them and the incumbent in the twin
//! and writes a result whose numbers hold together (the mean of the paired differences,
//! the 95 % half-width of `eval::stats::Estimate`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use llmos::crd::training::TrainingEvaluation;
use llmos::learning::job::{read_candidates, CandidateFile, CANDIDATE_FILE, EVALUATION_FILE};

mod training_support;
use training_support::{write_record, TINY_DQN};

/// The workload the record belongs to: one Llama-3-8B variant on A100s, HPA every 5 s.
const WORKLOAD_SPEC: &str = r#"{
  "variants": [{"name": "llama3-8b", "model": "llama-3-8b", "image": "vllm/vllm-openai:v0.6.3", "minReplicas": 1, "maxReplicas": 6}],
  "gpuPools": [{"name": "a100", "gpuType": "A100-80GB", "pricePerGpuHour": 3.0, "capacityGpus": 8}],
  "limits": {"minTotalReplicas": 1, "maxTotalReplicas": 6, "maxStepChange": 2, "scaleDownCooldownSeconds": 10},
  "policy": {"kind": "hpa", "intervalSeconds": 5}
}"#;

fn llmos(args: &[&str], workdir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmos"))
        .args(args)
        .env("LLMOS_WORKLOAD_SPEC", WORKLOAD_SPEC)
        .env_remove("JOB_COMPLETION_INDEX")
        .current_dir(workdir)
        .output()
        .expect("running llmos");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn train_job_writes_two_candidates_and_evaluate_candidates_scores_them() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let records = write_record(&tmp.path().join("records"), 40);
    let config = tmp.path().join("tiny-dqn.toml");
    std::fs::write(&config, TINY_DQN).expect("config");
    let root = tmp.path().join("trainings/t1");
    let (records_s, config_s, root_s) =
        (records.display().to_string(), config.display().to_string(), root.display().to_string());

    // A killed write of index 1 left a half-written temporary directory.
    let leftover = root.join(".tmp-candidate-1-99999");
    std::fs::create_dir_all(&leftover).expect("leftover");
    std::fs::write(leftover.join("checkpoint.json"), "{ half").expect("half a file");
    // And a directory named like a candidate, but without candidate.json (never complete).
    std::fs::create_dir_all(root.join("candidate-7")).expect("incomplete candidate");
    std::fs::write(root.join("candidate-7/checkpoint.json"), "{}").expect("file");

    let t_train = Instant::now();
    for index in ["0", "1"] {
        let log = tmp.path().join(format!("term-{index}"));
        let (ok, out) = llmos(
            &[
                "train-job",
                "--root",
                &root_s,
                "--index",
                index,
                "--base-seed",
                "10",
                "--algorithm",
                "dqn",
                "--steps",
                "200",
                "--config",
                &config_s,
                "--records",
                &records_s,
                "--cpu",
                "--termination-log",
                &log.display().to_string(),
            ],
            tmp.path(),
        );
        assert!(ok, "train-job {index} failed:\n{out}");
        let reported: CandidateFile =
            serde_json::from_str(&std::fs::read_to_string(&log).expect("termination message")).expect("candidate JSON");
        assert_eq!(reported.index.to_string(), index);
    }
    let train_s = t_train.elapsed().as_secs_f64();
    assert!(!leftover.exists(), "index 1's next attempt removes the killed attempt's temporary directory");

    let (found, skipped) = read_candidates(&root).expect("read candidates");
    assert_eq!(found.iter().map(|c| c.file.index).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(found.iter().map(|c| c.file.seed).collect::<Vec<_>>(), [10, 11], "seed = base + index");
    assert_ne!(found[0].file.digest, found[1].file.digest, "two seeds, two distinct candidates");
    for c in &found {
        assert_eq!(c.file.digest.len(), 64);
        let digest =
            Command::new(env!("CARGO_BIN_EXE_llmos")).arg("digest").arg(&c.dir).output().expect("llmos digest");
        assert_eq!(String::from_utf8_lossy(&digest.stdout).trim(), c.file.digest, "the digest `llmos digest` prints");
    }
    assert!(skipped.iter().any(|s| s.contains("candidate-7")), "the incomplete directory is left out: {skipped:?}");
    // Nothing temporary is left in the training's directory.
    let names: Vec<String> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");

    // A temporary directory written after the candidates is never read either.
    std::fs::create_dir_all(root.join(".tmp-candidate-0-4242")).unwrap();
    std::fs::write(root.join(".tmp-candidate-0-4242/candidate.json"), "{").unwrap();

    let log = tmp.path().join("term-eval");
    let evaluate = || {
        let t = Instant::now();
        let (ok, out) = llmos(
            &[
                "evaluate-candidates",
                "--root",
                &root_s,
                "--candidates",
                "2",
                "--seeds",
                "3",
                "--window",
                "all",
                "--config",
                &config_s,
                "--records",
                &records_s,
                "--termination-log",
                &log.display().to_string(),
            ],
            tmp.path(),
        );
        (ok, out, t.elapsed().as_secs_f64())
    };
    let (ok, out, mut eval_s) = evaluate();
    assert!(ok, "evaluate-candidates failed:\n{out}");
    let from_file: TrainingEvaluation =
        serde_json::from_slice(&std::fs::read(root.join(EVALUATION_FILE)).expect("evaluation.json")).expect("JSON");
    let message = std::fs::read_to_string(&log).expect("termination message");
    assert!(message.len() < 4096, "the termination message must fit the kubelet's 4 KiB");
    let from_log: TrainingEvaluation = serde_json::from_str(&message).expect("termination JSON");
    assert_eq!(from_log.paired_differences, from_file.paired_differences);
    let e = from_file;
    assert_eq!(e.seeds, 3);
    assert_eq!(e.paired_differences.len(), 3);
    let est = llmos::eval::stats::Estimate::of(&e.paired_differences);
    assert!((e.mean - est.mean).abs() < 1e-9, "mean {} vs {}", e.mean, est.mean);
    assert!((e.ci95 - est.ci95).abs() < 1e-9, "ci95 {} vs {}", e.ci95, est.ci95);
    assert!(found
        .iter()
        .any(|c| c.file.digest == e.candidate.digest && c.dir.display().to_string() == e.candidate.checkpoint));
    assert_eq!(e.incumbent.policy, "hpa");
    assert_eq!(e.candidates.len(), 2);
    // The chosen candidate has the best mean score, and its differences are its scores
    // minus the incumbent's.
    let best = e.candidates[0].mean_score.unwrap();
    assert!(e.candidates.iter().all(|c| c.mean_score.unwrap() <= best));
    let inc = e.incumbent_mean_score.unwrap();
    assert!(
        (best - inc - e.mean).abs() < 1e-6 * best.abs().max(1.0),
        "best {best} − incumbent {inc} ≠ mean {}",
        e.mean
    );
    assert!(!root.join("candidate-0/.tmp").exists());
    if eval_s >= 1.0 {
        // A busy machine (the whole suite on two cores): the best of two runs is judged.
        let (ok, out, again) = evaluate();
        assert!(ok, "evaluate-candidates failed the second time:\n{out}");
        eval_s = eval_s.min(again);
    }
    assert!(eval_s < 1.0, "the evaluation took {eval_s:.2} s; under a second is wanted");
    eprintln!(
        "learning_job: 2 indexes of 200 DQN steps in {train_s:.1} s; evaluation of 2 candidates + incumbent on 3 seeds in {eval_s:.2} s: {:+.3} ± {:.3}",
        e.mean, e.ci95
    );

    // An evaluation missing an index names it.
    let (ok, out) = llmos(
        &["evaluate-candidates", "--root", &root_s, "--candidates", "3", "--seeds", "2", "--records", &records_s],
        tmp.path(),
    );
    assert!(!ok && out.contains("[2]"), "{out}");
    // A train-job without an index says where the index comes from.
    let (ok, out) = llmos(&["train-job", "--root", &root_s, "--steps", "10", "--records", &records_s], tmp.path());
    assert!(!ok && out.contains("JOB_COMPLETION_INDEX"), "{out}");
    // A candidate whose files changed after it was published is left out, with the reason.
    std::fs::write(root.join("candidate-1/model.safetensors"), b"not the weights").unwrap();
    let (found, skipped) = read_candidates(&root).unwrap();
    assert_eq!(found.len(), 1);
    assert!(skipped.iter().any(|s| s.contains("candidate-1") && s.contains("digest")), "{skipped:?}");
    let _ = CANDIDATE_FILE;
}
