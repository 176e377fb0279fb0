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

/// Hex SHA-256 of a migration's tokens (see [`tokens`]): what a run records and drift is
/// measured against. Whitespace, line endings and comments are left out, so reformatting or
/// commenting an applied migration is not drift; any other change, down to a trailing comma or
/// a space inside a string literal, is.
///
/// Each token goes into the hash as its length in bytes, a `:`, then its text, so no two token
/// sequences hash the same input.
pub fn checksum(source: &[u8]) -> String {
    let text = String::from_utf8_lossy(&lf_normalised(source)).into_owned();
    let mut hasher = Sha256::new();
    for token in tokens(&text) {
        hasher.update(token.len().to_string().as_bytes());
        hasher.update(b":");
        hasher.update(token.as_bytes());
    }
    hex(&hasher.finalize())
}

/// Hex SHA-256 of a migration's bytes, with every CRLF read as LF: the checksum earlier releases
/// recorded. A record that carries it for today's source is not drift.
pub fn byte_checksum(source: &[u8]) -> String {
    hex(&Sha256::digest(lf_normalised(source)))
}

/// Checksums recorded by earlier releases for migrations whose files have been reformatted
/// since: `(name, byte checksum, token checksum)`. The byte checksum ([`byte_checksum`], what
/// earlier releases recorded) is the one under which the file was applied; the token checksum is
/// today's file's. An entry counts only while the file's tokens are still those, so any later
/// change to its code is drift again.
///
/// The byte checksums under which this source was applied by earlier releases; tokens identical
/// but for the trailing commas rustfmt added or removed before a closing bracket, each in a call's
/// arguments or a struct literal's fields, where a trailing comma means nothing.
pub const REFORMATTED: &[(&str, &str, &str)] = &[
    // `catching_up(CatchUp { .. },)` lost its trailing comma.
    (
        "001_add_withdrawal_fields_to_users",
        "a5dfb54fdb359a3e34e043bc322a4f9c1a8250964afd88e2311a1693866c2ec2",
        "a984afbbc8dc7292c1a7869fe147c5baecf5fbe35543d2d4b0a1d4fc2ce0c8a3",
    ),
    // 003 has none: its code changed after it was reformatted (it owns all three withdrawal
    // fields now), so a database that applied an earlier 003 reports drift until `repair`.
];

/// The checksums besides [`checksum`] that a record of migration `name`, whose source is
/// `source`, may carry without being drift: the byte checksum of this source, as earlier
/// releases recorded it, and the entries of [`REFORMATTED`] for it.
pub fn legacy_checksums(name: &str, source: &[u8]) -> Vec<String> {
    let tokens = checksum(source);
    let mut legacy = vec![byte_checksum(source)];
    legacy.extend(
        REFORMATTED
            .iter()
            .filter(|(n, _, t)| *n == name && *t == tokens)
            .map(|(_, bytes, _)| bytes.to_string()),
    );
    legacy
}

/// The tokens of Rust source, each as written, without whitespace and comments (line, block,
/// nested and doc comments alike).
///
/// Every token is as long as Rust's lexer makes it (string literals whole, raw ones included,
/// `'a'` a char and `'a` a lifetime, `&&` and `..=` one token each), so two sources with the same
/// tokens differ only where whitespace or a comment can stand without changing the program.
/// Source that does not lex (an unterminated literal) still gives tokens: such a file does not
/// compile, so it is never run.
pub fn tokens(source: &str) -> Vec<&str> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let chars: Vec<(usize, char)> = source.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(source.len(), |&(o, _)| o);
    let is_ident_start = |c: Option<char>| c.is_some_and(|c| c == '_' || c.is_alphabetic());
    let is_ident = |c: Option<char>| c.is_some_and(|c| c == '_' || c.is_alphanumeric());
    // The end of the quoted text from the quote at `i`, escapes skipped: past the closing `close`.
    let quoted = |mut i: usize, close: char| {
        i += 1;
        while let Some(c) = at(i) {
            i += if c == '\\' { 2 } else { 1 };
            if c == close {
                break;
            }
        }
        i.min(chars.len())
    };
    // The end of a raw string whose `#`s start at `i`: past the closing quote and as many `#`s.
    let raw = |mut i: usize| {
        let mut hashes = 0;
        while at(i) == Some('#') {
            hashes += 1;
            i += 1;
        }
        i += 1; // the opening quote
        while i < chars.len() {
            if at(i) == Some('"') && (1..=hashes).all(|h| at(i + h) == Some('#')) {
                return i + 1 + hashes;
            }
            i += 1;
        }
        i
    };
    let suffix = |mut i: usize| {
        while is_ident(at(i)) {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(c) = at(i) {
        let next = at(i + 1);
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && next == Some('/') {
            while at(i).is_some_and(|c| c != '\n') {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if at(i) == Some('/') && at(i + 1) == Some('*') {
                    depth += 1;
                    i += 2;
                } else if at(i) == Some('*') && at(i + 1) == Some('/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            continue;
        }
        if is_ident_start(Some(c)) {
            let word_end = suffix(i);
            let word = &source[offset(i)..offset(word_end)];
            let after = at(word_end);
            let hashes_then_quote = || {
                let mut j = word_end;
                while at(j) == Some('#') {
                    j += 1;
                }
                at(j) == Some('"')
            };
            i = match word {
                "r" | "br" | "cr"
                    if after == Some('"') || after == Some('#') && hashes_then_quote() =>
                {
                    suffix(raw(word_end))
                }
                "r" if after == Some('#') && is_ident_start(at(word_end + 1)) => {
                    suffix(word_end + 1)
                }
                "b" | "c" if after == Some('"') => suffix(quoted(word_end, '"')),
                "b" if after == Some('\'') => suffix(quoted(word_end, '\'')),
                _ => word_end,
            };
        } else if c.is_ascii_digit() {
            i = number(&chars, i);
        } else if c == '"' {
            i = suffix(quoted(i, '"'));
        } else if c == '\'' {
            if next == Some('\\') || next.is_some() && at(i + 2) == Some('\'') {
                i = suffix(quoted(i, '\''));
            } else {
                // A lifetime or a label: `'a`, `'static`, `'r#a`.
                i += 1;
                if at(i) == Some('r') && at(i + 1) == Some('#') {
                    i += 2;
                }
                i = suffix(i);
            }
        } else {
            let rest = &source[offset(i)..];
            let len = PUNCTUATION
                .iter()
                .find(|p| rest.starts_with(*p))
                .map_or(1, |p| p.len());
            i += len;
        }
        out.push(&source[offset(start)..offset(i)]);
    }
    out
}

/// Rust's punctuation of more than one character, longest first (maximal munch).
const PUNCTUATION: &[&str] = &[
    "<<=", ">>=", "...", "..=", "::", "->", "=>", "==", "!=", "<=", ">=", "&&", "||", "+=", "-=",
    "*=", "/=", "%=", "^=", "&=", "|=", "<<", ">>", "..",
];

/// The end of the number literal at `i`: digits, letters and `_` (`0x1F`, `1_000u32`), a
/// fraction unless the `.` starts a range or a method call (`1..2`, `1.max(2)`), and the sign of
/// an exponent (`1e-5`, not `1usize-1`).
fn number(chars: &[(usize, char)], mut i: usize) -> usize {
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let radix = at(i) == Some('0') && matches!(at(i + 1), Some('x' | 'o' | 'b'));
    let (mut letter, mut fraction) = (false, false);
    while let Some(c) = at(i) {
        if c == '_' || c.is_alphanumeric() {
            let exponent = !radix && !letter && matches!(c, 'e' | 'E');
            letter |= c.is_alphabetic();
            i += 1;
            let signed =
                matches!(at(i), Some('+' | '-')) && at(i + 1).is_some_and(|d| d.is_ascii_digit());
            if exponent && signed {
                i += 1;
            }
        } else if c == '.'
            && !radix
            && !letter
            && !fraction
            && !at(i + 1).is_some_and(|n| n == '.' || n == '_' || n.is_alphabetic())
        {
            fraction = true;
            i += 1;
        } else {
            break;
        }
    }
    i
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

/// The source's module documentation (its leading `//!` lines, without the markers): what
/// `migrate show` prints, so the description of a migration lives in its own file.
pub fn module_doc(source: &str) -> String {
    let mut lines = Vec::new();
    for line in source.lines() {
        let line = line.trim_start();
        match line.strip_prefix("//!") {
            Some(text) => lines.push(text.strip_prefix(' ').unwrap_or(text).trim_end()),
            None if line.is_empty() && !lines.is_empty() => break,
            None if line.is_empty() => continue,
            None => break,
        }
    }
    lines.join("\n")
}

/// Whether the source defines a function named `down` (outside comments and string literals).
///
/// A migration that defines `down` is reversible: the registry says so whether or not it also
/// overrides `reversible()`, so forgetting that override cannot make rollback refuse a migration
/// whose `down` exists.
pub fn defines_down(source: &str) -> bool {
    // Comments are not tokens, and a string literal is one token whatever it holds.
    tokens(source).windows(2).any(|w| w == ["fn", "down"])
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
    fn byte_checksums_read_crlf_as_lf() {
        assert_eq!(byte_checksum(b"a\r\nb\n"), byte_checksum(b"a\nb\n"));
        assert_ne!(byte_checksum(b"a\rb\n"), byte_checksum(b"a\nb\n"));
        assert_eq!(
            byte_checksum(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn same(a: &str, b: &str) -> bool {
        checksum(a.as_bytes()) == checksum(b.as_bytes())
    }

    #[test]
    fn whitespace_line_endings_and_comments_are_not_part_of_the_checksum() {
        let plain =
            "pub fn migration() -> impl Migration { Fields::new(\"users\", [\"a\", \"b\"]) }\n";
        let reformatted = "//! The fields.\n\n/// Builds it.\npub fn migration()\r\n    -> impl Migration\r\n{\n    // Two fields.\n    Fields::new(\n        \"users\", /* the collection */\n        [\"a\", \"b\"],\n    )\n}\n";
        assert_ne!(plain, reformatted);
        // The trailing comma after the array is a token: only whitespace and comments go.
        assert!(!same(plain, reformatted));
        assert!(same(plain, &reformatted.replace("],\n", "]\n")));
        assert!(same(
            "fn up() {}",
            "\u{feff}fn  up ( ) { } /** doc */ /*! inner */"
        ));
        assert!(same("a\r\nb", "a\nb"));
    }

    #[test]
    fn any_other_change_is_part_of_the_checksum() {
        for (a, b) in [
            ("let x = 1;", "let x = 2;"),
            ("let x = 1;", "let y = 1;"),
            ("f(a, b)", "f(a, b,)"),
            ("a b", "ab"),
            ("a && b", "a & &b"),
            ("x..=y", "x.. =y"),
            ("1.5", "1. 5"),
            ("1e-5", "1e - 5"),
            ("1u8", "1 u8"),
        ] {
            assert!(!same(a, b), "{a:?} and {b:?}");
        }
    }

    #[test]
    fn string_literals_are_tokens_whole() {
        // Whitespace, comment markers and quotes inside a literal are its content.
        assert!(!same(r#"f("a b")"#, r#"f("a  b")"#));
        assert!(!same(r#"f("a b")"#, r#"f("a\nb")"#));
        assert!(!same(r#"f("// x")"#, r#"f("//  x")"#));
        assert!(!same(r#"f("/* x */")"#, r#"f("/*  x */")"#));
        assert!(!same(r#"f("\" x")"#, r#"f("\"  x")"#));
        assert!(!same(r#"f(b"a b")"#, r#"f(b"a  b")"#));
        assert!(!same(r#"f(c"a b")"#, r#"f(c"a  b")"#));
        // A string's line endings are read as LF, as rustc reads them.
        assert!(same("f(\"a\r\nb\")", "f(\"a\nb\")"));
        assert_eq!(
            tokens(r#"let q = "say \"hi\" // not a comment"; // a comment"#),
            ["let", "q", "=", r#""say \"hi\" // not a comment""#, ";"]
        );
    }

    #[test]
    fn raw_strings_end_at_their_own_number_of_hashes() {
        let source =
            r###"const Q: &str = r##"a "# quote" and "#" x"##; r"b" br#"c"# cr"d" r#ident"###;
        assert_eq!(
            tokens(source),
            [
                "const",
                "Q",
                ":",
                "&",
                "str",
                "=",
                r###"r##"a "# quote" and "#" x"##"###,
                ";",
                r#"r"b""#,
                r##"br#"c"#"##,
                r#"cr"d""#,
                "r#ident"
            ]
        );
        assert!(!same(r###"r#"a b"#"###, r###"r#"a  b"#"###));
        assert!(!same(r###"r#"// x"#"###, r###"r#"//  x"#"###));
    }

    #[test]
    fn chars_and_lifetimes_are_told_apart() {
        assert_eq!(
            tokens(
                r#"fn f<'a>(x: &'a str) -> char { let c = 'a'; let q = '"'; let e = '\''; b'x' }"#
            ),
            [
                "fn", "f", "<", "'a", ">", "(", "x", ":", "&", "'a", "str", ")", "->", "char", "{",
                "let", "c", "=", "'a'", ";", "let", "q", "=", r#"'"'"#, ";", "let", "e", "=",
                r"'\''", ";", "b'x'", "}"
            ]
        );
        // A quote inside a char literal starts no string: the comment after it is still one.
        assert!(same("let q = '\"'; // x \"", "let q = '\"';"));
        assert!(!same("let c = ' ';", "let c = '  ';"));
        assert_eq!(tokens("'outer: loop { break 'outer; }")[0], "'outer");
        assert_eq!(tokens("&'static str"), ["&", "'static", "str"]);
    }

    #[test]
    fn block_comments_nest() {
        assert_eq!(tokens("a /* one /* two */ still */ b"), ["a", "b"]);
        assert_eq!(tokens("a /* /* */ b */ c"), ["a", "c"]);
        assert!(!same("a /* x */ */ b", "a b"));
    }

    #[test]
    fn numbers_keep_ranges_and_method_calls_apart() {
        assert_eq!(tokens("0..10"), ["0", "..", "10"]);
        assert_eq!(tokens("1.max(2)"), ["1", ".", "max", "(", "2", ")"]);
        assert_eq!(
            tokens("x = 1.5e-3f64 + 0x1F - 2usize-1"),
            ["x", "=", "1.5e-3f64", "+", "0x1F", "-", "2usize", "-", "1"]
        );
        assert_eq!(tokens("t.0 + 1_000"), ["t", ".", "0", "+", "1_000"]);
    }

    #[test]
    fn each_reformatted_alias_is_of_a_reformatted_migration_whose_tokens_are_todays() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut sources = BTreeMap::new();
        for dir in ["migrations", "examples/app_migrations"] {
            for (_, source) in scan(&root.join(dir)).unwrap() {
                sources.insert(source.name, fs::read(&source.path).unwrap());
            }
        }
        assert!(!REFORMATTED.is_empty());
        for (name, bytes, tokens) in REFORMATTED {
            let source = sources
                .get(*name)
                .unwrap_or_else(|| panic!("{name} is not a migration here"));
            assert_eq!(
                checksum(source),
                *tokens,
                "{name}: its code changed since it was reformatted, so its alias no longer applies"
            );
            // Only a reformatted file needs an alias: an unchanged one has its byte checksum.
            assert_ne!(byte_checksum(source), *bytes, "{name}");
            assert!(legacy_checksums(name, source).contains(&bytes.to_string()));
            // Other tokens, or another migration, do not get the alias.
            assert!(!legacy_checksums(name, b"fn other() {}").contains(&bytes.to_string()));
            assert!(!legacy_checksums("004_other", source).contains(&bytes.to_string()));
        }
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
