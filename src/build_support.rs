//! For an application's `build.rs`: rebuild when its migrations change.
//!
//! `embed_migrations!` reads the folder while the application compiles, so cargo must know to
//! compile again when a migration is added, edited or removed. Cargo already watches the files
//! a crate's sources name, but not a folder's new files. In the application's `build.rs` (with
//! `mongo-migrate` also under `[build-dependencies]`):
//!
//! ```no_run
//! fn main() {
//!     mongo_migrate::build::rerun_on_migrations("migrations");
//! }
//! ```

// The example is a whole build script.
#![allow(clippy::needless_doctest_main)]

use std::path::Path;

/// Tells cargo to run the build script again, and so recompile, whenever `dir` (relative to the
/// package's `Cargo.toml`) or any file in it changes: one `cargo:rerun-if-changed` line for the
/// folder (a file added or removed) and one for each `.rs` file in it (a file edited).
pub fn rerun_on_migrations(dir: impl AsRef<Path>) {
    for line in rerun_lines(dir.as_ref()) {
        println!("{line}");
    }
}

/// The lines [`rerun_on_migrations`] prints, sorted.
pub fn rerun_lines(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| format!("cargo:rerun-if-changed={}", p.display()))
        .collect();
    files.sort();
    let mut lines = vec![format!("cargo:rerun-if-changed={}", dir.display())];
    lines.extend(files);
    lines
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_folder_and_each_migration_in_it_trigger_a_rebuild() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/app_migrations");
        let lines = super::rerun_lines(&dir);
        assert_eq!(
            lines[0],
            format!("cargo:rerun-if-changed={}", dir.display())
        );
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[1].ends_with("001_add_account_tiers.rs"), "{lines:?}");
        assert!(lines[2].ends_with("002_lowercase_emails.rs"), "{lines:?}");
    }
}
