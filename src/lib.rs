//! mongo-migrate: numbered MongoDB migrations and checkpointed, resumable, throttled backfills.
//!
//! # Layout
//!
//! - [`cli`]: the `migrate` command line (the binary's `main` only calls [`cli::main`]).
//! - [`config`]: connection settings from flags, the environment and `.env`.
//! - [`logging`]: stderr and `logs/migration.log` (installed by the binary only).
//! - [`error`]: the one error type and the exit codes.
//! - [`migration`]: the [`Migration`] trait, its [`Context`] and [`RunOptions`].
//! - [`registry`]: the migrations compiled in from `migrations/`, with pinned checksums.
//! - [`runner`]: [`MigrationRunner`]: plan, run pending, status, rollback.
//! - [`store`]: the `migrations` tracking collection.
//! - [`lock`]: the lease lock that keeps two runners apart.
//! - [`backfill`]: the batch pipeline (scan, transform, write, checkpoint, throttle, progress).
//! - [`money`]: exact halving of amounts for the balance backfill.
//! - [`sample`]: realistic LMS sample data.
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

pub mod backfill;
pub mod cli;
pub mod config;
pub mod error;
pub mod lock;
pub mod logging;
pub mod migration;
pub mod money;
pub mod registry;
pub mod runner;
pub mod sample;
pub mod store;

pub use error::{Error, Result};
pub use migration::{Context, Migration, Outcome, RunOptions, Stop, StopReason};
pub use registry::Registered;
pub use runner::{MigrationRunner, MigrationStatus, RunReport, State};
