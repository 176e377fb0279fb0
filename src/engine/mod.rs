//! The generic engine: numbered migrations tracked in the database, run under a lease lock, with
//! the batch pipeline for large collections. It knows no LMS field and no terminal: progress goes
//! out through [`backfill::ProgressView`], failures as [`error::Error`], and the caller decides
//! what the operator sees.
//!
//! - [`migration`]: the [`migration::Migration`] trait, its context and run options.
//! - [`registry`]: the migrations compiled in from `migrations/`, with pinned checksums.
//! - [`liveness`]: whether a running migration's holder is alive, with its live progress.
//! - [`plan`]: what runs next and what is refused, from the tracking records (no I/O).
//! - [`runner`]: [`runner::MigrationRunner`]: run pending, status, rollback, under the lock.
//! - [`store`]: the `migrations` tracking collection; [`record`]: what it holds.
//! - [`lock`]: the lease lock that keeps two runners apart; [`control`]: pause and throttle
//!   requests to the run holding it, from any host.
//! - [`backfill`]: the batch pipeline (scan, transform, write, checkpoint, catch-up, progress).
//! - [`sources`]: migration file names, checksums and `down` detection (shared with `build.rs`
//!   and `embed_migrations!`).
//! - [`error`]: the one error type, each message saying what to do.

pub mod backfill;
pub mod bson_ext;
pub mod control;
mod direction;
pub mod error;
pub mod liveness;
pub mod lock;
pub mod migration;
pub mod plan;
pub mod record;
pub mod redact;
pub mod registry;
pub mod runner;
pub mod sources;
pub mod store;
