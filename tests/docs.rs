//! The documentation against the repository and the binary: every relative link in README.md
//! and docs/*.md resolves (to a file, and for `#anchor` links to a heading in it), every command
//! and long flag that `migrate --help` prints is documented, every `--flag` the docs name exists,
//! and the README stays short. Needs no database: the help comes from the built binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const README_MAX_LINES: usize = 300;

/// Where a newly added flag is documented in full; named by the failure message.
const FLAG_REFERENCE: &str = "docs/commands.md";

/// Flags the docs quote from other tools' command lines, never `migrate`'s. Each is here on
/// purpose: a `--flag` in the docs that is neither in some `migrate ... --help` nor here fails
/// `every_flag_the_docs_name_is_a_flag_of_migrate`.
const OTHER_TOOLS_FLAGS: &[(&str, &str)] = &[
    ("--path", "cargo install --path ."),
    ("--release", "cargo build --release"),
    ("--test", "cargo test --test migrations NAME"),
    ("--bench", "cargo bench --bench backfill"),
    ("--example", "cargo run --example app_startup"),
    ("--bin", "cargo run --bin migrate, in an application"),
    ("--all-targets", "cargo clippy --all-targets"),
    ("--quick", "the backfill benchmark's own argument"),
    (
        "--fake",
        "refinery's, the counterpart of `migrate baseline`",
    ),
    ("--host", "secantusd-rs, the test server"),
    ("--port", "secantusd-rs, the test server"),
    ("--storage-path", "secantusd-rs, the test server"),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, as (path relative to the root, text).
fn doc_files() -> Vec<(String, String)> {
    let root = root();
    let mut names = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| {
            e.expect("a docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text =
                std::fs::read_to_string(root.join(&n)).unwrap_or_else(|e| panic!("{n}: {e}"));
            (n, text)
        })
        .collect()
}

/// The lines of a markdown text outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// A line with the contents of its inline code spans removed (the backticks stay).
fn without_code_spans(line: &str) -> String {
    let mut in_code = false;
    line.chars()
        .filter(|&c| {
            if c == '`' {
                in_code = !in_code;
                return true;
            }
            !in_code
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, markdown links reduced to their text, every
/// character but letters, digits, `-` and `_` dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // `[text](target)` reads as `text`.
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find("](").and_then(|close| {
            after[close + 2..]
                .find(')')
                .map(|end| (close, close + 2 + end))
        }) {
            Some((close, end)) => {
                text.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            None => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a markdown text's headings define, duplicates numbered as GitHub does.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` of a markdown text, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((number, target.to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// What is wrong with each relative link of the markdown file `name` (relative to `root`).
fn broken_links(root: &Path, name: &str, text: &str) -> Vec<String> {
    let dir = root
        .join(name)
        .parent()
        .expect("a file has a folder")
        .to_path_buf();
    let mut problems = Vec::new();
    for (line, target) in link_targets(text) {
        if target.is_empty() {
            problems.push(format!("{name}:{line}: a link with no target"));
            continue;
        }
        if ["http://", "https://", "mailto:"]
            .iter()
            .any(|scheme| target.starts_with(scheme))
        {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let file = if path.is_empty() {
            root.join(name)
        } else {
            dir.join(path)
        };
        if !file.exists() {
            problems.push(format!(
                "{name}:{line}: `{target}`: {} does not exist",
                file.display()
            ));
            continue;
        }
        let Some(anchor) = anchor else { continue };
        if file.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        let linked = std::fs::read_to_string(&file).unwrap_or_default();
        if !anchors(&linked).contains(anchor) {
            problems.push(format!(
                "{name}:{line}: `{target}`: no heading of {} has the anchor #{anchor}",
                file.display()
            ));
        }
    }
    problems
}

/// `migrate ARGS --help`, run from the built binary.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_migrate"))
        .args(args)
        .arg("--help")
        .env_remove("MONGODB_URI")
        .output()
        .expect("the migrate binary runs");
    assert!(
        out.status.success(),
        "migrate {} --help failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The subcommands a `--help` lists under `Commands:`, `help` left out.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line is indented by two spaces; its wrapped description by more.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// The long flags a `--help` defines: the first `--name` of each option line (`  -v, --verbose...`,
/// `      --uri <URI>`), not the flags its descriptions mention.
fn defined_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter(|l| {
            let indent = l.len() - l.trim_start().len();
            indent <= 6 && l.trim_start().starts_with('-')
        })
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| {
            let name: String = w[2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            format!("--{name}")
        })
        .collect()
}

/// Every `--long-flag` written in a text, with its line number.
fn flags_in(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut at = 0;
        while at + 2 < chars.len() {
            let starts = chars[at] == '-'
                && chars[at + 1] == '-'
                && chars[at + 2].is_ascii_lowercase()
                && (at == 0 || !(chars[at - 1].is_ascii_alphanumeric() || chars[at - 1] == '-'));
            if !starts {
                at += 1;
                continue;
            }
            let end = (at + 2..chars.len())
                .find(|&j| !(chars[j].is_ascii_alphanumeric() || chars[j] == '-'))
                .unwrap_or(chars.len());
            let flag: String = chars[at..end].iter().collect();
            out.push((i + 1, flag.trim_end_matches('-').to_string()));
            at = end;
        }
    }
    out
}

/// Each subcommand with the long flags its `--help` defines; "" is `migrate` itself.
fn help_flags() -> BTreeMap<String, BTreeSet<String>> {
    let top = help(&[]);
    let mut flags = BTreeMap::new();
    flags.insert(String::new(), defined_flags(&top));
    for command in subcommands(&top) {
        flags.insert(command.clone(), defined_flags(&help(&[&command])));
    }
    flags
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let root = root();
    let files = doc_files();
    assert!(files.len() > 1, "docs/ holds the documentation: {files:?}");
    let problems: Vec<String> = files
        .iter()
        .flat_map(|(name, text)| broken_links(&root, name, text))
        .collect();
    assert!(
        problems.is_empty(),
        "broken links:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_link_check_finds_missing_files_and_missing_anchors() {
    let dir = tempfile::tempdir().expect("a scratch folder");
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(
        dir.path().join("docs/a.md"),
        "# Title\n\n## Flags of `migrate up`\n\n## Flags of `migrate up`\n",
    )
    .unwrap();
    let text = "[ok](docs/a.md#flags-of-migrate-up) [dup](docs/a.md#flags-of-migrate-up-1)\n\
                [gone](docs/b.md) [no heading](docs/a.md#nowhere) `[code](not/a/link.md)`\n\
                ```\n[fenced](not/a/link.md)\n```\n[web](https://example.com/x.md)\n";
    let problems = broken_links(dir.path(), "README.md", text);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("docs/b.md") && problems[0].contains("does not exist"));
    assert!(problems[1].contains("#nowhere"));
}

#[test]
fn anchors_are_the_slugs_github_gives_headings() {
    assert_eq!(slug(" Flags of `migrate up`"), "flags-of-migrate-up");
    assert_eq!(slug(" Ownership, exactly"), "ownership-exactly");
    assert_eq!(
        slug(" 001_add_withdrawal_fields_to_users"),
        "001_add_withdrawal_fields_to_users"
    );
    assert_eq!(
        slug(" Starting one: `migrate new`"),
        "starting-one-migrate-new"
    );
    assert_eq!(slug(" See [the guide](docs/x.md) now"), "see-the-guide-now");
}

#[test]
fn every_command_and_long_flag_in_help_is_documented() {
    let files = doc_files();
    let documented: BTreeSet<String> = files
        .iter()
        .flat_map(|(_, text)| flags_in(text).into_iter().map(|(_, f)| f))
        .collect();
    let all_text: String = files.iter().map(|(_, t)| t.as_str()).collect();
    let mut missing = Vec::new();
    for (command, flags) in help_flags() {
        if !command.is_empty() {
            let named = format!("migrate {command}");
            let found = all_text.match_indices(&named).any(|(at, _)| {
                !all_text[at + named.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
            if !found {
                missing.push(format!(
                    "the command `{named}` (listed by `migrate --help`) is in neither README.md \
                     nor docs/*.md: add a row to the commands tables of README.md and {FLAG_REFERENCE}"
                ));
            }
        }
        for flag in flags {
            if !documented.contains(&flag) {
                let help = if command.is_empty() {
                    "migrate --help".to_string()
                } else {
                    format!("migrate {command} --help")
                };
                missing.push(format!(
                    "the flag `{flag}` (printed by `{help}`) is in neither README.md nor \
                     docs/*.md: describe it in {FLAG_REFERENCE}"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_flag_the_docs_name_is_a_flag_of_migrate() {
    let known: BTreeSet<String> = help_flags().into_values().flatten().collect();
    let mut unknown = Vec::new();
    for (name, text) in doc_files() {
        for (line, flag) in flags_in(&text) {
            if !known.contains(&flag) && !OTHER_TOOLS_FLAGS.iter().any(|(f, _)| *f == flag) {
                unknown.push(format!(
                    "{name}:{line}: `{flag}` is not printed by any `migrate ... --help`: fix the \
                     doc, or if it is another tool's flag, add it to OTHER_TOOLS_FLAGS in \
                     tests/docs.rs"
                ));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "unknown flags:\n  {}",
        unknown.join("\n  ")
    );
}

#[test]
fn the_flag_scan_reads_long_flags_and_skips_dashes_that_are_not_flags() {
    let text =
        "`migrate up --resume --batch-size N|auto`\n|---|---:|\ncargo bench -- --quick, x--y\n";
    let flags: Vec<String> = flags_in(text).into_iter().map(|(_, f)| f).collect();
    assert_eq!(flags, ["--resume", "--batch-size", "--quick"]);
    let help = "Options:\n  -v, --verbose...\n          More (see --quiet)\n      --to <NNN>\n";
    assert_eq!(
        defined_flags(help).into_iter().collect::<Vec<_>>(),
        ["--to", "--verbose"]
    );
}

#[test]
fn the_readme_is_at_most_300_lines() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move detail into docs/"
    );
}

#[test]
fn the_readme_names_the_test_command_ci_runs() {
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "bash scripts/test.sh"),
        ".ci/run runs `bash scripts/test.sh`"
    );
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    assert!(
        readme.contains("bash scripts/test.sh"),
        "README.md says how to run the tests: `bash scripts/test.sh`"
    );
}
