//! `migrate new NAME`: writes the next migration and its tests from templates that compile, run
//! and pass as they are, then says what to edit. It needs no database.

use crate::engine::error::{Error, Result};
use crate::engine::sources;
use clap::Args;
use std::fs;
use std::path::{Path, PathBuf};

/// `migrate new --help`.
pub(super) const LONG_HELP: &str = "\
Write the next migration and its tests from templates, then say what to edit.

Writes migrations/NNN_NAME.rs and tests/migrations/NNN_NAME.rs under --dir (default: the current
directory, the repository root), NNN being the next free number. Both work as they are: the
migration is a server-side field backfill (FieldBackfill: up, down and a post-condition, run on
the backfill pipeline, so it resumes, dry-runs, throttles and catches up like every backfill),
and its tests run it against the test server. Edit the collection, the field, its value and the
description, and the tests with them.

The migration is compiled into `migrate` by the next `cargo build`; `cargo test NAME` runs its
tests (no Cargo.toml entry needed). Needs no database and writes nothing else. Refuses a name
that is not snake_case (exit 2), and a number or name already taken (exit 5).

In an application that embeds its own migrations (a Cargo.toml under --dir that is not this
repository's, or --app): writes migrations/NNN_NAME.rs against the public API
(mongo_migrate::backfill) and tests/migration_NNN_NAME.rs on mongo_migrate::testing, creating
migrations/ if needed. They need mongo-migrate, mongodb, and tokio (features macros,
rt-multi-thread) among the application's dependencies.

Example:
  migrate new backfill_display_names
  $EDITOR migrations/004_backfill_display_names.rs tests/migrations/004_backfill_display_names.rs
  cargo test backfill_display_names
  cargo build && migrate status && migrate up";

/// The arguments of `migrate new`.
#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// The migration's name in snake_case (a-z, 0-9, single _, starting with a letter), e.g.
    /// backfill_display_names
    #[arg(value_parser = parse_name)]
    pub(crate) name: String,
    /// Take this number instead of the next free one (refused if a migration has it)
    #[arg(long, value_name = "NNN", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) number: Option<u32>,
    /// The repository root, holding migrations/ and tests/migrations/ (or an application's
    /// root, holding its Cargo.toml)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) dir: PathBuf,
    /// Write for an application that embeds its migrations (`embed_migrations!`): code against
    /// the public API, tests in tests/. Implied when --dir holds a Cargo.toml of another package
    #[arg(long)]
    pub(crate) app: bool,
}

/// Whether `dir` is an application's root rather than this repository's: `--app`, or a
/// Cargo.toml whose package is not mongo-migrate.
fn is_app(args: &NewArgs) -> bool {
    if args.app {
        return true;
    }
    let Ok(manifest) = fs::read_to_string(args.dir.join("Cargo.toml")) else {
        return false;
    };
    !manifest.lines().any(|l| {
        let l = l.trim();
        l.starts_with("name")
            && l.split_once('=').is_some_and(|(k, v)| {
                k.trim() == "name" && v.trim().trim_matches('"') == "mongo-migrate"
            })
    })
}

/// The arguments of `migrate build-script`.
#[derive(Debug, Args)]
pub(crate) struct BuildScriptArgs {
    /// The application's migrations folder, relative to its Cargo.toml (what it passes to
    /// `embed_migrations!`)
    #[arg(long, value_name = "DIR", default_value = "migrations")]
    pub(crate) migrations: String,
    /// The application's root, holding its Cargo.toml
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) dir: PathBuf,
    /// Overwrite an existing build.rs
    #[arg(long)]
    pub(crate) force: bool,
}

/// `migrate build-script`: writes `build.rs`, refusing to overwrite one unless `--force`.
pub(super) fn build_script(args: &BuildScriptArgs) -> i32 {
    use super::exit_codes::{exit, ProcessExitCode};
    let path = args.dir.join("build.rs");
    let result = if path.exists() && !args.force {
        Err(Error::Refused(format!(
            "{} exists; add its line by hand (`println!(\"cargo:rerun-if-changed={}\");`) or pass --force to overwrite it",
            path.display(),
            args.migrations
        )))
    } else {
        fs::write(&path, build_rs(&args.migrations))
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
    };
    match result {
        Ok(()) => {
            println!("created {}", path.display());
            exit::SUCCESS
        }
        Err(e) => {
            super::logging::print_err(format!("error: {e}\n"));
            e.exit_code()
        }
    }
}

/// The build script: cargo scans a folder named by `rerun-if-changed` for any change, a new
/// file included, which the proc macro alone would not trigger.
fn build_rs(migrations: &str) -> String {
    format!(
        "// Written by `migrate build-script`. `embed_migrations!` reads {migrations}/ while the\n\
         // application compiles: rebuild when a migration is added, edited or removed.\n\
         fn main() {{\n    \
         println!(\"cargo:rerun-if-changed={migrations}\");\n\
         }}\n"
    )
}

const MIGRATION: &str = include_str!("templates/migration.rs.tmpl");
const TEST: &str = include_str!("templates/test.rs.tmpl");
const APP_MIGRATION: &str = include_str!("templates/app_migration.rs.tmpl");
const APP_TEST: &str = include_str!("templates/app_test.rs.tmpl");

/// `migrate new`: the exit code.
pub(super) fn main(args: &NewArgs) -> i32 {
    use super::exit_codes::{exit, ProcessExitCode};
    match run(args) {
        Ok(_) => exit::SUCCESS,
        Err(e) => {
            super::logging::print_err(format!("error: {e}\n"));
            e.exit_code()
        }
    }
}

/// `migrate new`: the paths written, after printing them and the next steps.
fn run(args: &NewArgs) -> Result<(PathBuf, PathBuf)> {
    let app = is_app(args);
    let migrations = args.dir.join("migrations");
    let tests = match app {
        true => args.dir.join("tests"),
        false => args.dir.join("tests").join("migrations"),
    };
    if app && !migrations.is_dir() {
        fs::create_dir_all(&migrations)
            .map_err(|e| Error::Config(format!("cannot create {}: {e}", migrations.display())))?;
    }
    if !migrations.is_dir() {
        return Err(Error::Config(format!(
            "no migrations directory at {}: run `migrate new` from the repository root, or pass --dir",
            migrations.display()
        )));
    }
    let found = sources::scan(&migrations).map_err(|problems| {
        Error::Config(format!(
            "the migrations directory has problems to fix first:\n  {}",
            problems.join("\n  ")
        ))
    })?;
    if let Some(same) = found
        .values()
        .find(|m| m.name.split_once('_').map(|(_, n)| n) == Some(args.name.as_str()))
    {
        return Err(Error::Refused(format!(
            "a migration named {} already exists ({}); choose another name",
            args.name,
            same.path.display()
        )));
    }
    let number = match args.number {
        Some(n) if found.contains_key(&n) => {
            return Err(Error::Refused(format!(
                "number {n:03} is taken by {}; omit --number to take the next free one ({:03})",
                found[&n].name,
                next_free(&found)
            )))
        }
        Some(n) => n,
        None => next_free(&found),
    };
    let numbered = format!("{number:03}_{}", args.name);
    let migration_path = migrations.join(format!("{numbered}.rs"));
    let test_path = match app {
        true => tests.join(format!("migration_{numbered}.rs")),
        false => tests.join(format!("{numbered}.rs")),
    };
    if test_path.exists() {
        return Err(Error::Refused(format!(
            "{} already exists; move it away or choose another name",
            test_path.display()
        )));
    }
    let render = |template: &str| {
        template
            .replace("__NUMBERED__", &numbered)
            .replace("__NUMBER__", &number.to_string())
            .replace("__NNN__", &format!("{number:03}"))
            .replace("__NAME__", &args.name)
            .replace("__FIELD__", &camel_case(&args.name))
    };
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| Error::Config(format!("cannot write {path}: {e}"))
    };
    fs::create_dir_all(&tests).map_err(io(&tests))?;
    let (migration, test) = match app {
        true => (APP_MIGRATION, APP_TEST),
        false => (MIGRATION, TEST),
    };
    fs::write(&migration_path, render(migration)).map_err(io(&migration_path))?;
    fs::write(&test_path, render(test)).map_err(io(&test_path))?;
    // The templates are rustfmt-clean; a long name can make a line rustfmt would wrap, and CI
    // checks both files with rustfmt, so they are formatted here when rustfmt is at hand.
    let _ = std::process::Command::new("rustfmt")
        .args(["--edition", "2021"])
        .arg(&migration_path)
        .arg(&test_path)
        .stderr(std::process::Stdio::null())
        .status();

    println!("created {}", migration_path.display());
    println!("created {}", test_path.display());
    println!(
        "next:\n  \
         1. edit {m}: the description, the collection, the field and its value\n  \
         2. edit {t} to match (its `expected` says what the field ends up holding)\n  \
         3. cargo test {name}\n  \
         4. cargo build, then `{cli} status` lists {numbered} pending and `{cli} up` applies it",
        m = migration_path.display(),
        t = test_path.display(),
        name = args.name,
        cli = if app {
            "<your binary calling mongo_migrate::cli::run>"
        } else {
            "migrate"
        },
    );
    Ok((migration_path, test_path))
}

fn next_free(found: &std::collections::BTreeMap<u32, sources::SourceFile>) -> u32 {
    found.keys().next_back().map_or(1, |n| n + 1)
}

/// `backfill_display_names` -> `backfillDisplayNames`: the template's field name.
fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The `NAME` argument: snake_case, checked before anything is read or written.
fn parse_name(s: &str) -> std::result::Result<String, String> {
    sources::check_snake_case(s).map(|()| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_the_camel_case_of_the_migration_name() {
        assert_eq!(camel_case("backfill_display_names"), "backfillDisplayNames");
        assert_eq!(camel_case("v2_tiers"), "v2Tiers");
        assert_eq!(camel_case("x"), "x");
    }

    #[test]
    fn every_placeholder_of_the_templates_is_filled() {
        let args = NewArgs {
            name: "backfill_display_names".into(),
            number: None,
            dir: PathBuf::from("."),
            app: false,
        };
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("migrations")).unwrap();
        fs::write(dir.path().join("migrations/001_first.rs"), "").unwrap();
        let args = NewArgs {
            dir: dir.path().to_path_buf(),
            ..args
        };
        let (migration, test) = run(&args).unwrap();
        assert!(migration.ends_with("migrations/002_backfill_display_names.rs"));
        for path in [migration, test] {
            let text = fs::read_to_string(&path).unwrap();
            assert!(!text.contains("__"), "{}: {text}", path.display());
        }
    }

    #[test]
    fn build_script_watches_the_migrations_folder_and_keeps_an_existing_build_rs() {
        let dir = tempfile::tempdir().unwrap();
        let args = BuildScriptArgs {
            migrations: "db/migrations".into(),
            dir: dir.path().to_path_buf(),
            force: false,
        };
        assert_eq!(build_script(&args), 0);
        let written = fs::read_to_string(dir.path().join("build.rs")).unwrap();
        assert!(written.contains("println!(\"cargo:rerun-if-changed=db/migrations\");"));
        assert!(written.contains("fn main() {"));
        fs::write(dir.path().join("build.rs"), "fn main() {}").unwrap();
        assert_eq!(build_script(&args), 5);
        assert_eq!(
            fs::read_to_string(dir.path().join("build.rs")).unwrap(),
            "fn main() {}"
        );
        let forced = BuildScriptArgs {
            force: true,
            ..args
        };
        assert_eq!(build_script(&forced), 0);
        assert_eq!(
            fs::read_to_string(dir.path().join("build.rs")).unwrap(),
            written
        );
    }

    #[test]
    fn in_an_application_it_writes_against_the_public_api_and_tests_in_tests() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"shop\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        let args = NewArgs {
            name: "add_tiers".into(),
            number: None,
            dir: dir.path().to_path_buf(),
            app: false,
        };
        let (migration, test) = run(&args).unwrap();
        assert!(migration.ends_with("migrations/001_add_tiers.rs"));
        assert!(test.ends_with("tests/migration_001_add_tiers.rs"));
        for path in [migration, test] {
            let text = fs::read_to_string(&path).unwrap();
            assert!(!text.contains("__"), "{}: {text}", path.display());
            assert!(!text.contains("crate::"), "{}: {text}", path.display());
            assert!(!text.contains("common"), "{}: {text}", path.display());
        }
    }
}
