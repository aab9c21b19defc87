//! Bad input gets an error naming the file, line or field.

use std::io::Write;

use llmos::twin::traces::Trace;
use llmos::twin::Scenario;

const SPEC: &str = r#"
[spec]
variants = [{ name = "v", model = "MODEL", image = "vllm", gpusPerReplica = 1 }]
gpuPools = [{ name = "p", gpuType = "GPU", pricePerGpuHour = 1.0 }]
"#;

fn scenario(workload: &str, model: &str, gpu: &str) -> String {
    format!("{workload}\n{}", SPEC.replace("MODEL", model).replace("GPU", gpu))
}

const SYN: &str = r#"[workload.synthetic]
duration_s = 10.0
arrival = { kind = "poisson", rate_rps = RATE }
lengths = { kind = "fixed", input_tokens = 10, output_tokens = 10 }
"#;

#[test]
fn malformed_trace_row_names_file_and_line() {
    let mut f = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    write!(f, "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n2023-11-16 18:15:47.1,12,abc\r\n").unwrap();
    let e = Trace::load(f.path(), None).unwrap_err().to_string();
    assert!(
        e.contains(&f.path().display().to_string()) && e.contains("line 3") && e.contains("GeneratedTokens"),
        "{e}"
    );
}

#[test]
fn unknown_scenario_field_is_named() {
    let text = scenario(&SYN.replace("RATE", "1.0"), "llama-3-8b", "A100-80GB")
        .replace("duration_s = 10.0", "duration_s = 10.0\nburst_factor = 3");
    let e = Scenario::from_toml_str(&text, "bad.toml").unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("burst_factor") && e.contains("line"), "{e}");
}

#[test]
fn model_that_does_not_fit_is_named() {
    let text = scenario(&SYN.replace("RATE", "1.0"), "meta-llama/Meta-Llama-3-70B-Instruct", "L4");
    let e = Scenario::from_toml_str(&text, "s.toml").unwrap_err().to_string();
    assert!(e.contains("does not fit") && e.contains("spec.variants[0]") && e.contains("L4"), "{e}");
}

#[test]
fn unknown_model_lists_known_names() {
    let text = scenario(&SYN.replace("RATE", "1.0"), "gpt-17", "A100-80GB");
    let e = Scenario::from_toml_str(&text, "s.toml").unwrap_err().to_string();
    assert!(e.contains("spec.variants[0].model") && e.contains("Llama-3-8B"), "{e}");
}

#[test]
fn negative_rate_is_named() {
    let text = scenario(&SYN.replace("RATE", "-2.0"), "llama-3-8b", "A100-80GB");
    let e = Scenario::from_toml_str(&text, "s.toml").unwrap_err().to_string();
    assert!(e.contains("rate_rps") && e.contains("-2"), "{e}");
}

#[test]
fn negative_load_is_named() {
    let text = scenario(&SYN.replace("RATE", "1.0"), "llama-3-8b", "A100-80GB")
        .replace("[workload.synthetic]", "[workload]\nload = -1.0\n[workload.synthetic]");
    let e = Scenario::from_toml_str(&text, "s.toml").unwrap_err().to_string();
    assert!(e.contains("workload.load"), "{e}");
}
