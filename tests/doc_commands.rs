//! The commands the README and the docs show, checked against the code, so the docs
//! cannot drift from it:
//!
//! - every `llmos …` command (in a shell block or an inline code span of README.md,
//!   docs/*.md and policies/*/CARD.md) names a subcommand that exists and only flags that
//!   subcommand has; one without placeholders (`$VAR`, `…`, `[…]`, `<…>`, `S`, `DIR`)
//!   parses with the binary's own command-line definition ([`llmos::cli::Cli`]);
//! - every repository path such a command reads (`scenarios/…`, `data/…`, `policies/…`,
//!   `manifests/…`) exists;
//! - the quick ones (`crdgen`, `trace-stats`, `simulate`, `--help`) are run, in a scratch
//!   directory that sees the repository's inputs, and must succeed;
//! - the command block of docs/e2e.md is, line for line, the walkthrough part of
//!   `scripts/walkthrough.sh`, which `tests/e2e_walkthrough.rs` runs.
//!
//! What this does not do: run the long jobs (training, comparisons of hours of traffic:
//! their figures are reproduced by the commands in docs/results.md), or compare printed
//! output with the docs.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use llmos::cli::Cli;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command a document shows: where, and its words.
#[derive(Debug, Clone)]
struct DocCommand {
    file: String,
    line: usize,
    words: Vec<String>,
    /// From a shell block (a command to run) rather than an inline span (which may be a
    /// fragment in prose, such as `llmos train` or `llmos compare --window test`).
    block: bool,
}

impl DocCommand {
    fn at(&self) -> String {
        format!("{}:{}: {}", self.file, self.line, self.words.join(" "))
    }
}

fn documents() -> Vec<PathBuf> {
    let mut out = vec![repo().join("README.md")];
    for dir in ["docs", "policies"] {
        let mut found: Vec<PathBuf> =
            walk(&repo().join(dir)).into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
        found.sort();
        out.extend(found);
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The `llmos` invocations in one shell line (pipelines and `&&` split; a comment cut).
fn invocations(line: &str) -> Vec<Vec<String>> {
    let line = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut out = Vec::new();
    for seg in line.split(['|', ';', '&']) {
        let Some(words) = shlex::split(seg.trim()) else { continue };
        // Leading `VAR=value` assignments belong to the shell.
        let words: Vec<String> = words.into_iter().skip_while(|w| w.contains('=') && !w.starts_with('-')).collect();
        let Some(first) = words.first() else { continue };
        let bin = first.rsplit('/').next().unwrap_or(first);
        if bin == "llmos" || first == "$LLMOS" {
            let mut w = words.clone();
            w[0] = "llmos".into();
            // Redirections are the shell's.
            if let Some(i) = w.iter().position(|x| x.starts_with('>') || x == "2>&1") {
                w.truncate(i);
            }
            out.push(w);
        }
    }
    out
}

/// Every `llmos` command in a Markdown text: shell blocks (continuations joined) and
/// inline code spans.
fn commands_in(file: &str, text: &str) -> Vec<DocCommand> {
    let mut out = Vec::new();
    let mut in_block: Option<bool> = None; // Some(is_shell)
    let mut pending = String::new();
    let mut pending_line = 0;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(lang) = t.strip_prefix("```") {
            in_block = match in_block {
                Some(_) => None,
                None => Some(matches!(lang.trim(), "" | "sh" | "bash" | "console" | "shell")),
            };
            continue;
        }
        match in_block {
            Some(true) => {
                if pending.is_empty() {
                    pending_line = i + 1;
                }
                let t = t.strip_prefix("$ ").unwrap_or(t);
                if let Some(head) = t.strip_suffix('\\') {
                    pending.push_str(head);
                    pending.push(' ');
                    continue;
                }
                pending.push_str(t);
                for words in invocations(&pending) {
                    out.push(DocCommand { file: file.into(), line: pending_line, words, block: true });
                }
                pending.clear();
            }
            Some(false) => {}
            None => {}
        }
    }
    // Inline spans, which may wrap a line.
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find('`') {
        let after = &rest[i + 1..];
        if after.starts_with("``") {
            // A fence: skip to its end.
            let end = after[2..].find("```").map_or(after.len(), |j| j + 5);
            offset += i + 1 + end.min(after.len());
            rest = &after[end.min(after.len())..];
            continue;
        }
        let Some(j) = after.find('`') else { break };
        let span = after[..j].replace('\n', " ");
        if span.starts_with("llmos ")
            || span.starts_with("./target/debug/llmos ")
            || span.starts_with("./target/release/llmos ")
        {
            let line = text[..offset + i].lines().count().max(1);
            for words in invocations(&span) {
                out.push(DocCommand { file: file.into(), line, words, block: false });
            }
        }
        offset += i + 1 + j + 1;
        rest = &after[j + 1..];
    }
    out
}

fn all_commands() -> Vec<DocCommand> {
    let mut out = Vec::new();
    for f in documents() {
        let text = std::fs::read_to_string(&f).expect("reading a document");
        let name = f.strip_prefix(repo()).unwrap_or(&f).display().to_string();
        out.extend(commands_in(&name, &text));
    }
    out
}

/// A word that stands for something the reader fills in.
fn placeholder(w: &str) -> bool {
    w.contains('$')
        || w.contains("...")
        || w.contains('…')
        || w.starts_with('[')
        || w.starts_with('<')
        || (w.len() <= 6 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !w.is_empty())
        || w.contains("/FILE")
        || w.ends_with("FILE.png")
}

/// Whether a parse error only says something is missing (not that something is wrong).
fn fragment(e: &clap::Error) -> bool {
    let text = e.to_string();
    text.contains("required arguments were not provided") || text.contains("a value is required")
}

/// Flags whose value is a path the command writes (not checked for existence).
const OUTPUT_FLAGS: [&str; 6] = ["--out", "--plot", "--csv", "--figures", "--save", "--record-transitions"];

#[test]
fn every_documented_llmos_command_names_real_subcommands_flags_and_files() {
    let cmds = all_commands();
    assert!(cmds.len() >= 40, "found only {} commands: the extraction is broken", cmds.len());
    let cli = Cli::command();
    let global: Vec<String> = cli.get_arguments().filter_map(|a| a.get_long().map(|l| format!("--{l}"))).collect();
    let mut problems = Vec::new();
    let mut parsed = 0;
    for c in &cmds {
        let mut words = c.words.iter().skip(1).peekable();
        // Global options before the subcommand.
        while words.peek().is_some_and(|w| w.starts_with("--")) {
            let flag = words.next().expect("peeked");
            if flag != "--help" && flag != "--version" && !flag.contains('=') {
                words.next();
            }
        }
        let Some(sub) = words.next() else { continue };
        if sub == "--help" || sub == "--version" {
            continue;
        }
        let Some(sc) = cli.find_subcommand(sub) else {
            problems.push(format!("{}: no subcommand `{sub}`", c.at()));
            continue;
        };
        let known: Vec<String> = sc.get_arguments().filter_map(|a| a.get_long().map(|l| format!("--{l}"))).collect();
        let mut prev: Option<&str> = None;
        for w in c.words.iter() {
            if let Some(flag) = w.strip_prefix("--").map(|f| format!("--{}", f.split('=').next().unwrap_or(f))) {
                if flag != "--help" && !known.contains(&flag) && !global.contains(&flag) {
                    problems.push(format!("{}: `{sub}` has no flag {flag}", c.at()));
                }
            }
            let reads = !prev.is_some_and(|p| OUTPUT_FLAGS.contains(&p));
            let repo_path =
                ["scenarios/", "data/", "policies/", "manifests/", "charts/"].iter().any(|d| w.starts_with(d));
            if reads && repo_path && !placeholder(w) && !repo().join(w.trim_end_matches('/')).exists() {
                problems.push(format!("{}: {w} does not exist", c.at()));
            }
            prev = Some(w.as_str());
        }
        if !c.words.iter().any(|w| placeholder(w)) {
            use clap::error::ErrorKind;
            match Cli::try_parse_from(&c.words) {
                Ok(_) => parsed += 1,
                Err(e) if e.kind() == ErrorKind::DisplayHelp => parsed += 1,
                // A fragment in prose may leave out what a whole command needs (a required
                // flag, or a flag's value); what it does name must exist.
                Err(e)
                    if !c.block
                        && matches!(e.kind(), ErrorKind::MissingRequiredArgument | ErrorKind::InvalidValue)
                        && fragment(&e) => {}
                Err(e) => problems.push(format!(
                    "{}: does not parse: {}",
                    c.at(),
                    e.render().to_string().lines().next().unwrap_or("")
                )),
            }
        }
    }
    eprintln!("{} documented llmos commands checked, {parsed} parsed whole", cmds.len());
    assert!(problems.is_empty(), "documented commands that drifted from the code:\n{}", problems.join("\n"));
}

/// A scratch directory that sees the repository's inputs (`scenarios`, `data`,
/// `policies`, `manifests`) through symlinks, so commands that write files write there.
fn scratch() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("temp dir");
    for name in ["scenarios", "data", "policies", "manifests", "charts"] {
        std::os::unix::fs::symlink(repo().join(name), d.path().join(name)).expect("symlink");
    }
    d
}

#[test]
fn the_quick_documented_commands_run() {
    let quick = ["crdgen", "trace-stats", "simulate"];
    let dir = scratch();
    let mut ran = Vec::new();
    for c in all_commands() {
        if c.words.iter().any(|w| placeholder(w)) {
            continue;
        }
        let help = c.words.iter().any(|w| w == "--help");
        let sub = c.words.get(1).map(String::as_str).unwrap_or("");
        let whole = help || Cli::try_parse_from(&c.words).is_ok();
        if !whole || !(help || quick.contains(&sub)) || ran.contains(&c.words) {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_llmos"))
            .args(&c.words[1..])
            .current_dir(dir.path())
            .output()
            .expect("running llmos");
        assert!(
            out.status.success(),
            "{} failed:\n{}{}",
            c.at(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push(c.words.clone());
    }
    eprintln!("ran {} documented commands: {ran:?}", ran.len());
    assert!(ran.len() >= 4, "too few quick commands found: {ran:?}");
}

#[test]
fn the_e2e_walkthrough_block_is_the_script() {
    let script = std::fs::read_to_string(repo().join("scripts/walkthrough.sh")).expect("script");
    let start = script.find("# --- walkthrough ---\n").expect("start marker") + "# --- walkthrough ---\n".len();
    let end = script.find("# --- end walkthrough ---").expect("end marker");
    let want: Vec<&str> = script[start..end].trim().lines().collect();
    let doc = std::fs::read_to_string(repo().join("docs/e2e.md")).expect("docs/e2e.md");
    let block_start = doc.find("```bash\n# scripts/walkthrough.sh").expect("docs/e2e.md has the walkthrough block");
    let body = &doc[block_start..];
    // After the fence and the block's first line (the comment naming the script).
    let body = body.splitn(3, '\n').nth(2).expect("a block body");
    let block: Vec<&str> = body[..body.find("```").expect("block end")].trim().lines().collect();
    assert_eq!(block, want, "docs/e2e.md's walkthrough block differs from scripts/walkthrough.sh");
}
