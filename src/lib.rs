//! mongo-migrate: numbered MongoDB migrations and checkpointed, resumable, throttled backfills.
//!
//! # Layout
//!
//! Three layers, one folder each:
//!
//! - [`engine`]: the generic engine. Migrations ([`Migration`], [`RunOptions`]), the compiled-in
//!   [`registry`], the [`MigrationRunner`], the tracking [`store`], the [`lock`], and the
//!   [`backfill`] pipeline. It knows no LMS field and no terminal.
//! - [`cli`]: the `migrate` command line (the binary's `main` only calls [`cli::main`]): flags,
//!   configuration, logging, the progress bar, tables and exit codes.
//! - [`lms`]: the LMS domain: the [`money`] rule and realistic [`sample`] data.
//!
//! The migrations themselves live in `migrations/`, one file each, compiled in by `build.rs`.
//!
//! # Running from Rust
//!
//! ```no_run
//! # async fn demo() -> mongo_migrate::Result<()> {
//! let client = mongodb::Client::with_uri_str("mongodb://localhost:27017").await.unwrap();
//! let runner = mongo_migrate::MigrationRunner::new(client.database("lms"));
//! runner.run_pending().await?;
//! for m in runner.status().await? {
//!     println!("{} {}", m.name, m.state);
//! }
//! runner.rollback_last().await?;
//! # Ok(()) }
//! ```

// `embed_migrations!` expands to `::mongo_migrate::...` paths, which this lets work in here too.
extern crate self as mongo_migrate;

pub mod cli;
pub mod engine;
pub mod lms;
pub mod testing;

// The short paths the migrations (`crate::backfill`, `crate::money`, ...), tests and benches use.
// The migrations' sources are checksummed, so their `use` lines stay as they are.
pub use cli::{config, logging};
pub use engine::{backfill, error, lock, migration, registry, runner, store};
pub use lms::{money, sample};

pub use error::{Error, Result};
pub use migration::{Context, Migration, Outcome, RunOptions, Stop, StopReason};
pub use registry::Registered;
pub use runner::{MigrationRunner, MigrationStatus, RunReport, State};

/// An application's own migrations, compiled in from a directory: `dir/NNN_snake_name.rs`
/// files (relative to the calling crate's `Cargo.toml`), each exposing
/// `pub fn migration() -> impl Migration`, as a `Vec<Registered>` for
/// [`MigrationRunner::with_migrations`]. Checksums (SHA-256, CRLF read as LF) and `down`
/// detection are exactly those `build.rs` gives this crate's own `migrations/`; a malformed name
/// or a shared number is a compile error.
///
/// ```ignore
/// let runner = MigrationRunner::with_migrations(db, mongo_migrate::embed_migrations!("migrations"));
/// ```
///
/// An edit to a migration recompiles the crate; a new file needs a rebuild, so add
/// `println!("cargo:rerun-if-changed=migrations");` to the application's `build.rs`. See
/// `examples/app_startup.rs`.
pub use mongo_migrate_macros::embed_migrations;
