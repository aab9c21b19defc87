//! Replays the fuzz targets' committed inputs on stable Rust: every seed (`fuzz/seeds/`)
//! and every input that once broke a property (`fuzz/regressions/`) goes through its
//! target's entry point in `llmos::fuzz`. A target panics when a property fails, so a
//! crash once found and fixed stays fixed. (`scripts/fuzz.sh` runs the fuzzers; the
//! corpus they grow is kept outside the clone.)
//!
//! The seeds also show that the targets reach past the parsers: every seed is accepted
//! by its reader, except those whose name starts with `rejected-`, which must be refused.

use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn every_target_has_a_fuzz_binary_and_seeds() {
    for (name, _) in llmos::fuzz::TARGETS {
        let bin = root().join("fuzz_targets").join(format!("{name}.rs"));
        let text = fs::read_to_string(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            text.contains(&format!("llmos::fuzz::{name}(data)")),
            "{} does not call llmos::fuzz::{name}",
            bin.display()
        );
        let manifest = fs::read_to_string(root().join("Cargo.toml")).expect("fuzz/Cargo.toml");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
        assert!(!files(&root().join("seeds").join(name)).is_empty(), "no seeds for {name}");
    }
}

#[test]
fn seeds_reach_past_the_parsers() {
    for (name, target) in llmos::fuzz::TARGETS {
        for f in files(&root().join("seeds").join(name)) {
            let data = fs::read(&f).expect("read seed");
            let accepted = target(&data);
            let rejected = f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("rejected-"));
            assert_eq!(accepted, !rejected, "{}: accepted = {accepted}", f.display());
        }
    }
}

#[test]
fn regressions_replay_without_a_failed_property() {
    let mut n = 0;
    for (name, target) in llmos::fuzz::TARGETS {
        for dir in ["regressions"] {
            for f in files(&root().join(dir).join(name)) {
                let data = fs::read(&f).expect("read input");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{}: a property failed (see the panic above)", f.display());
                n += 1;
            }
        }
    }
    eprintln!("replayed {n} inputs");
}
