//! No dependency cycles between modules, no function over 100 lines outside tests, and
//! every module opening with a comment that says its job.
//!
//! Reads `src/` and collects, for every module, the modules its code names (`crate::a::b`
//! and `super::x` paths): between top-level modules, and inside every folder (nested
//! ones too) between its files and subfolders. Comment lines and `#[cfg(test)]` sections (unit tests may reach
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

/// Every module path that follows `prefix` in `text` (identifiers joined by `::`; a
/// brace group `a::{b, c::d}` gives `a::b` and `a::c::d`).
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        rest = read_paths(rest, Vec::new(), &mut out);
    }
    out
}

/// Reads one path (or brace group) at the start of `text` below `base`; returns the rest.
fn read_paths<'a>(mut text: &'a str, mut path: Vec<String>, out: &mut Vec<Vec<String>>) -> &'a str {
    loop {
        let t = text.trim_start();
        if let Some(inner) = t.strip_prefix('{') {
            let mut rest = inner;
            loop {
                rest = read_paths(rest, path.clone(), out).trim_start();
                match rest.chars().next() {
                    Some(',') => rest = &rest[1..],
                    Some('}') => return &rest[1..],
                    _ => return rest,
                }
            }
        }
        let end = t.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(t.len());
        if end == 0 {
            break;
        }
        path.push(t[..end].to_string());
        text = &t[end..];
        match text.strip_prefix("::") {
            Some(r) => text = r,
            None => break,
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
    text
}

/// The longest prefix of `path` (below `src/`) that is a module: a file or a folder.
fn module_prefix(src: &Path, path: &[String]) -> Vec<String> {
    let mut dir = src.to_path_buf();
    let mut out = Vec::new();
    for name in path {
        let is_dir = dir.join(name).join("mod.rs").exists();
        let is_file = dir.join(format!("{name}.rs")).exists();
        if !(is_dir || is_file) {
            break;
        }
        out.push(name.clone());
        if !is_dir {
            break;
        }
        dir = dir.join(name);
    }
    out
}

/// The graph between top-level modules, and for every folder (`twin`, `twin/traces`, ...)
/// the graph between its files and subfolders. A reference from module path `a` to module
/// path `b` is an edge in the deepest folder that holds both, between the children of that
/// folder they lie under.
fn graphs() -> (Graph, BTreeMap<String, Graph>) {
    let src = Path::new("src");
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut top = Graph::new();
    let mut folders: BTreeMap<String, Graph> = BTreeMap::new();
    for f in &files {
        let mut me: Vec<String> = f
            .strip_prefix(src)
            .unwrap()
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if me.len() == 1 && (me[0] == "lib" || me[0] == "main") {
            continue;
        }
        if me.last().is_some_and(|m| m == "mod") {
            me.pop();
        }
        let text = code(f);
        top.entry(me[0].clone()).or_default();
        // `super::x` from a file resolves in its folder; from a folder's mod.rs, in the
        // folder above.
        let here: Vec<String> = me[..me.len() - 1].to_vec();
        let mut refs: Vec<Vec<String>> = paths_after(&text, "crate::");
        for p in paths_after(&text, "super::") {
            refs.push(here.iter().cloned().chain(p).collect());
        }
        for r in refs {
            let target = module_prefix(src, &r);
            let common = me.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common >= me.len() || common >= target.len() {
                continue; // itself, an ancestor or a descendant
            }
            let (from, to) = (me[common].clone(), target[common].clone());
            if common == 0 {
                top.entry(from).or_default().insert(to);
            } else {
                let g = folders.entry(me[..common].join("/")).or_default();
                g.entry(from).or_default().insert(to);
            }
        }
        if me.len() >= 2 {
            folders.entry(here.join("/")).or_default().entry(me[me.len() - 1].clone()).or_default();
        }
    }
    (top, folders)
}

/// The code of every file under `src/<folder>`.
fn folder_code(folder: &str) -> Vec<(std::path::PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new("src").join(folder), &mut files);
    files.into_iter().map(|f| (f.clone(), code(&f))).collect()
}

#[test]
fn top_level_modules_form_no_cycle() {
    let (top, _) = graphs();
    for expected in ["control", "controller", "crd", "dataplane", "eval", "metrics", "observe", "policy", "rl", "twin"]
    {
        assert!(top.contains_key(expected), "module {expected} not found in {:?}", top.keys());
    }
    eprintln!("{top:#?}");
    assert_eq!(cycle(&top), None, "a cycle between top-level modules");
}

#[test]
fn files_of_each_folder_form_no_cycle() {
    let (_, folders) = graphs();
    for expected in ["rl", "twin", "twin/traces", "controller", "policy"] {
        assert!(folders.contains_key(expected), "folder {expected} not found in {:?}", folders.keys());
    }
    eprintln!("{folders:#?}");
    for (folder, g) in &folders {
        assert_eq!(cycle(g), None, "a cycle between the files of src/{folder}");
    }
}

#[test]
fn the_simulator_uses_neither_kube_nor_the_controller_nor_learning() {
    for (file, text) in folder_code("twin") {
        for banned in ["kube::", "k8s_openapi::", "crate::controller", "crate::rl", "crate::eval", "crate::dataplane"] {
            assert!(!text.contains(banned), "{} names {banned}", file.display());
        }
    }
}

#[test]
fn the_folder_graph_sees_nested_folders() {
    let (top, folders) = graphs();
    // The trace readers' stream uses the ServeGen generator, and the twin's simulator
    // uses the traces folder: both edges must be seen.
    assert!(folders["twin/traces"]["stream"].contains("servegen"), "{:?}", folders["twin/traces"]);
    assert!(folders["twin"]["sim"].contains("traces"), "{:?}", folders["twin"]);
    assert!(top["dataplane"].contains("twin"), "{:?}", top["dataplane"]);
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
            let t = t
                .strip_prefix("pub ")
                .or_else(|| t.strip_prefix("pub(crate) "))
                .or_else(|| t.strip_prefix("pub(super) "))
                .unwrap_or(t);
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

#[test]
fn every_module_opens_with_a_comment_saying_its_job() {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.starts_with("//!"), "{} does not open with a `//!` comment saying its job", f.display());
    }
}
