//! Migration source files: their names (`NNN_snake_name.rs`), their checksums, and whether they
//! define a `down`.
//!
//! One file, compiled three times: into the library (for `migrate new`), into `build.rs` (which
//! compiles `migrations/` into this crate) and into the `embed_migrations!` macro (which does the
//! same for an application's own directory), so the three agree on what a valid name is and on
//! every checksum. It therefore uses nothing but `std` and `sha2`.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// One migration file found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The number that orders it.
    pub number: u32,
    /// The file name without `.rs`, e.g. `001_add_fields`: the tracking key.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
}

/// Every migration file in `dir`, by number. A malformed name or two files sharing a number are
/// reported, one line each: a silently skipped or reordered migration is worse than no build.
pub fn scan(dir: &Path) -> Result<BTreeMap<u32, SourceFile>, Vec<String>> {
    let entries =
        fs::read_dir(dir).map_err(|e| vec![format!("cannot read {}: {e}", dir.display())])?;
    let mut found: BTreeMap<u32, SourceFile> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.starts_with('.') || path.is_dir() {
            continue;
        }
        match parse_name(&file) {
            Ok((number, name)) => {
                if let Some(other) = found.get(&number) {
                    problems.push(format!(
                        "migrations {}.rs and {name}.rs share the number {number:03}: renumber one of them",
                        other.name
                    ));
                } else {
                    found.insert(number, SourceFile { number, name, path });
                }
            }
            Err(why) => problems.push(format!("{}/{file}: {why}", dir.display())),
        }
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(problems)
    }
}

/// `001_add_fields.rs` -> (1, "001_add_fields").
pub fn parse_name(file: &str) -> Result<(u32, String), String> {
    let stem = file
        .strip_suffix(".rs")
        .ok_or("not a .rs file; migrations must be named NNN_snake_name.rs")?;
    let (digits, rest) = stem
        .split_once('_')
        .ok_or("expected NNN_snake_name.rs (a number, an underscore, a snake_case name)")?;
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must start with a number of at least three digits, e.g. 004_".into());
    }
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || rest.starts_with('_')
        || rest.ends_with('_')
    {
        return Err("the name after the number must be snake_case (a-z, 0-9, _)".into());
    }
    let number: u32 = digits.parse().map_err(|_| "number too large")?;
    if number == 0 {
        return Err("numbers start at 001".into());
    }
    Ok((number, stem.to_string()))
}

/// The name `migrate new` accepts: lower-case letters, digits and single underscores, starting
/// with a letter, so it also starts valid Rust identifiers (the generated tests' names). Stricter
/// than [`parse_name`], which keeps accepting every name it accepted before.
pub fn check_snake_case(name: &str) -> Result<(), String> {
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && !name.ends_with('_')
        && !name.contains("__");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not snake_case (a-z, 0-9, single _, starting with a letter), e.g. backfill_display_names"
        ))
    }
}

/// Hex SHA-256 of a migration's source, with every CRLF read as LF, so a checkout that converted
/// line endings hashes the same as the LF text the checksums were first taken over.
pub fn checksum(source: &[u8]) -> String {
    hex(&Sha256::digest(lf_normalised(source)))
}

fn lf_normalised(source: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(source.len());
    let mut bytes = source.iter().peekable();
    while let Some(&b) = bytes.next() {
        if b == b'\r' && bytes.peek() == Some(&&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Whether the source defines a function named `down` (outside comments and string literals).
///
/// A migration that defines `down` is reversible: the registry says so whether or not it also
/// overrides `reversible()`, so forgetting that override cannot make rollback refuse a migration
/// whose `down` exists.
pub fn defines_down(source: &str) -> bool {
    let code = strip_comments_and_strings(source);
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(2).any(|w| w == ["fn", "down"])
}

/// The source with comments and the contents of string and char literals blanked out.
fn strip_comments_and_strings(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && raw_string_start(&chars, i)
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1; // the opening quote
            while j < chars.len() {
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next.is_some() && chars.get(i + 2) == Some(&'\'') {
            // A one-char literal such as '"'; lifetimes ('a) have no closing quote there.
            i += 3;
            out.push_str("' '");
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal ('\'', '\n', '\u{..}'): skip the escaped char first.
            i += 3;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` opens a raw string (`r"`, `r#"`), not ends an identifier.
fn raw_string_start(chars: &[char], i: usize) -> bool {
    let prev_is_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
    if prev_is_ident {
        return false;
    }
    let mut j = i + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    chars.get(j) == Some(&'"')
}

/// The module list of a migrations test target: one module per migration whose tests exist in
/// `tests_dir` as `NNN_snake_name.rs`, and, for a migration without one, a test that fails
/// saying which file to add. So a new migration's tests run without a `Cargo.toml` entry, and a
/// migration nobody tested cannot pass unnoticed.
pub fn test_modules(found: &BTreeMap<u32, SourceFile>, tests_dir: &Path) -> String {
    let mut out = String::from("// Generated from the migrations directory: do not edit.\n");
    for (number, source) in found {
        let path = tests_dir.join(format!("{}.rs", source.name));
        if path.is_file() {
            let _ = writeln!(
                out,
                "#[path = {:?}]\nmod m{number:03};",
                path.display().to_string()
            );
        } else {
            let _ = writeln!(
                out,
                "#[test]\nfn m{number:03}_has_tests() {{\n    panic!(\"migrations/{name}.rs has no tests: add tests/migrations/{name}.rs\");\n}}",
                name = source.name
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_down_is_found_in_code_and_not_in_comments_or_strings() {
        assert!(defines_down(
            "impl Migration for X {\n    async fn down(&self, ctx: &Context) -> Result<Outcome> { todo!() }\n}"
        ));
        assert!(defines_down("fn down<'a>(x: &'a str) {}"));
        // Mentions that are not a definition: the registry must not call a default `down` that
        // refuses after marking the migration as rolling back.
        assert!(!defines_down(
            "// async fn down(&self) is not written yet\nfn up() {}"
        ));
        assert!(!defines_down("/* fn down() { /* nested */ } */ fn up() {}"));
        assert!(!defines_down(
            "const HELP: &str = \"write fn down here\"; fn up() {}"
        ));
        assert!(!defines_down(
            "const R: &str = r#\"fn down \"quoted\"\"#; fn up() {}"
        ));
        assert!(!defines_down(
            "fn up() { let q = '\"'; let e = '\\''; } // fn down"
        ));
        assert!(!defines_down("fn down_payment() {} fn slowdown() {}"));
        assert!(!defines_down("fn up() { let fn_down = 1; }"));
    }

    #[test]
    fn the_compiled_migrations_that_define_down_are_the_reversible_ones() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        for (_, source) in scan(&dir).unwrap() {
            let text = fs::read_to_string(&source.path).unwrap();
            // 001 to 003 all define `down` and say `reversible() -> true`; both must agree.
            assert_eq!(
                defines_down(&text),
                text.contains("fn reversible(&self) -> bool {\n        true"),
                "{}",
                source.name
            );
        }
    }

    #[test]
    fn checksums_read_crlf_as_lf() {
        assert_eq!(checksum(b"a\r\nb\n"), checksum(b"a\nb\n"));
        assert_ne!(checksum(b"a\rb\n"), checksum(b"a\nb\n"));
        assert_eq!(
            checksum(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn names_must_be_numbered_snake_case() {
        assert_eq!(parse_name("004_add_x.rs"), Ok((4, "004_add_x".into())));
        assert_eq!(parse_name("0012_x2.rs"), Ok((12, "0012_x2".into())));
        for bad in [
            "4_x.rs",
            "004-x.rs",
            "004_X.rs",
            "004_.rs",
            "000_x.rs",
            "004_x.txt",
            "x.rs",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
        assert!(check_snake_case("backfill_display_names").is_ok());
        assert!(check_snake_case("v2_names").is_ok());
        for bad in [
            "BackfillNames",
            "backfill-names",
            "2fa",
            "_x",
            "x_",
            "a__b",
            "",
            "é",
        ] {
            assert!(check_snake_case(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scan_reports_bad_names_and_shared_numbers() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["001_a.rs", "001_b.rs", "002-c.rs", ".hidden"] {
            fs::write(dir.path().join(f), "").unwrap();
        }
        let problems = scan(dir.path()).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("share the number 001"), "{problems:?}");
        assert!(problems[1].contains("002-c.rs"), "{problems:?}");
    }

    #[test]
    fn a_migration_without_a_test_file_gets_a_failing_test() {
        let tests = tempfile::tempdir().unwrap();
        fs::write(tests.path().join("001_tested.rs"), "").unwrap();
        let found: BTreeMap<u32, SourceFile> = [(1, "001_tested"), (2, "002_untested")]
            .into_iter()
            .map(|(number, name)| {
                let path = PathBuf::from(format!("{name}.rs"));
                (
                    number,
                    SourceFile {
                        number,
                        name: name.into(),
                        path,
                    },
                )
            })
            .collect();
        let modules = test_modules(&found, tests.path());
        assert!(modules.contains("mod m001;"), "{modules}");
        assert!(!modules.contains("mod m002;"), "{modules}");
        assert!(
            modules.contains("fn m002_has_tests() {\n    panic!(\"migrations/002_untested.rs has no tests: add tests/migrations/002_untested.rs\");"),
            "{modules}"
        );
    }
}
