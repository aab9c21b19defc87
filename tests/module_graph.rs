//! No dependency cycles between modules, and no function over 100 lines outside tests.
//!
//! Reads `src/` and collects, for every module, the modules its code names
//! (`crate::x` between top-level modules; `super::x` and `crate::<folder>::x` between the
//! files of one folder). Comment lines and `#[cfg(test)]` sections (unit tests may reach
//! anywhere) are skipped; a folder's `mod.rs` is its parent and not a node of the folder's
//! graph. Both graphs must be acyclic: `rl` may use `eval`'s results or the reverse, not
//! both; the simulator does not reach back into the controller; and so on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The code of a file without comment lines and without its `#[cfg(test)]` section.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every name that follows `prefix` in `text` (an identifier).
fn names_after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let after = &rest[i + prefix.len()..];
        let end = after.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(after.len());
        if end > 0 {
            out.push(&after[..end]);
        }
        rest = &after[end..];
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A cycle of the graph, if any (depth-first search).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(n: &str, g: &Graph, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|x| x == m).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn graphs() -> (Graph, BTreeMap<String, Graph>) {
    let src = Path::new("src");
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut top = Graph::new();
    let mut folders: BTreeMap<String, Graph> = BTreeMap::new();
    for f in &files {
        let rel: Vec<String> = f
            .strip_prefix(src)
            .unwrap()
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if rel.len() == 1 && (rel[0] == "lib" || rel[0] == "main") {
            continue;
        }
        let module = rel[0].clone();
        let text = code(f);
        let deps = top.entry(module.clone()).or_default();
        for n in names_after(&text, "crate::") {
            if n != module {
                deps.insert(n.to_string());
            }
        }
        // Files of a folder (not its mod.rs), one level down.
        if rel.len() == 2 && rel[1] != "mod" {
            let me = rel[1].clone();
            let g = folders.entry(module.clone()).or_default();
            let deps = g.entry(me.clone()).or_default();
            let inside = format!("crate::{module}::");
            for n in names_after(&text, "super::").into_iter().chain(names_after(&text, &inside)) {
                let sibling = f.parent().unwrap().join(format!("{n}.rs")).exists()
                    || f.parent().unwrap().join(n).join("mod.rs").exists();
                if n != me && sibling {
                    deps.insert(n.to_string());
                }
            }
        }
    }
    (top, folders)
}

#[test]
fn top_level_modules_form_no_cycle() {
    let (top, _) = graphs();
    for expected in ["control", "controller", "crd", "eval", "metrics", "observe", "policy", "rl", "twin"] {
        assert!(top.contains_key(expected), "module {expected} not found in {:?}", top.keys());
    }
    eprintln!("{top:#?}");
    assert_eq!(cycle(&top), None, "a cycle between top-level modules");
}

#[test]
fn files_of_each_folder_form_no_cycle() {
    let (_, folders) = graphs();
    assert!(folders.contains_key("rl") && folders.contains_key("twin"));
    for (folder, g) in &folders {
        assert_eq!(cycle(g), None, "a cycle between the files of src/{folder}");
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}

/// Lines of every function outside unit tests: from its `fn` line to the `}` at the same
/// indentation, both included.
fn function_lengths() -> Vec<(usize, String)> {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut out = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().take_while(|l| !l.trim_start().starts_with("#[cfg(test)]")).collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let indent = &line[..line.len() - t.len()];
            let t = t.strip_prefix("pub ").or_else(|| t.strip_prefix("pub(crate) ")).unwrap_or(t);
            let t = t.strip_prefix("async ").unwrap_or(t);
            if !t.starts_with("fn ") || line.trim_end().ends_with(';') {
                continue;
            }
            let close = format!("{indent}}}");
            if let Some(j) = lines[i..].iter().position(|l| l.trim_end() == close) {
                let name = t[3..].split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("");
                out.push((j + 1, format!("{}: {name}", f.display())));
            }
        }
    }
    out
}

#[test]
fn no_function_outside_tests_is_over_100_lines() {
    let fns = function_lengths();
    assert!(fns.len() > 500, "only {} functions found", fns.len());
    let long: Vec<_> = fns.iter().filter(|(n, _)| *n > 100).collect();
    assert!(long.is_empty(), "functions over 100 lines: {long:?}");
}
