//! The [`Migration`] trait every file in `migrations/` implements, and the [`Context`] it runs in.

use crate::engine::error::{Error, Result};
use crate::engine::store::Store;
use async_trait::async_trait;
use mongodb::bson::Document;
use mongodb::Database;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One numbered migration. Its name and number come from its file name.
#[async_trait]
pub trait Migration: Send + Sync {
    /// One line saying what it does, shown by `migrate status`.
    fn description(&self) -> &'static str;

    /// Applies the migration. Must be safe to run again after a crash or a failure, and must
    /// write nothing when `ctx.dry_run()` is set (report what it would do instead).
    async fn up(&self, ctx: &Context) -> Result<Outcome>;

    /// Whether [`Migration::down`] exists; rollback is refused otherwise.
    ///
    /// No need to override it: a migration whose source file defines `fn down` is registered as
    /// reversible (see [`crate::registry::with_down`]), and the builders that write a `down`
    /// themselves ([`crate::backfill::FieldBackfill`], [`crate::backfill::PerDocument`]) say so.
    fn reversible(&self) -> bool {
        false
    }

    /// Reverts the migration's changes.
    async fn down(&self, ctx: &Context) -> Result<Outcome> {
        Err(Error::Refused(format!(
            "migration {} has no down; nothing was changed",
            ctx.name()
        )))
    }

    /// The post-condition, checked after `up` and before the migration is recorded completed.
    async fn verify(&self, _ctx: &Context) -> Result<()> {
        Ok(())
    }
}

/// What a migration reports: stored in the tracking record's `result`.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// False records the migration as failed.
    pub success: bool,
    /// One line for the operator.
    pub message: String,
    /// Structured details (counts, samples) stored as `result`.
    pub result: Document,
}

impl Outcome {
    /// A successful outcome.
    pub fn ok(message: impl Into<String>, result: Document) -> Self {
        Outcome {
            success: true,
            message: message.into(),
            result,
        }
    }
}

/// Knobs of a run, from `migrate up` flags.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Documents per batch; with `auto_batch`, the first batch's size.
    pub batch_size: usize,
    /// Tune the batch size so each batch's write takes about `target_batch` (`--batch-size
    /// auto`), within [`crate::engine::backfill::AUTO_BATCH_MIN`] and `AUTO_BATCH_MAX`.
    pub auto_batch: bool,
    /// What an auto-sized batch's write aims at.
    pub target_batch: Duration,
    /// Hold dispatch while a secondary lags the primary by more than this (None: never).
    pub max_replication_lag: Option<Duration>,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Throttle: documents scanned per second at most (None: unthrottled).
    pub max_docs_per_sec: Option<f64>,
    /// Scan and transform, write nothing.
    pub dry_run: bool,
    /// Allow destructive rollbacks (e.g. removing fields that hold real data).
    pub force: bool,
    /// Fail the run on invalid source data instead of skipping and reporting it.
    pub fail_on_invalid: bool,
    /// Continue interrupted migrations from their checkpoints.
    pub resume: bool,
    /// Start interrupted migrations over, discarding their checkpoints.
    pub restart: bool,
    /// Run even though an applied migration's source changed.
    pub allow_drift: bool,
    /// Run even though the database holds applied migrations this build does not know.
    pub ignore_unknown: bool,
    /// Wait for the lock instead of failing (None: don't wait; Some(None): forever).
    pub wait_for_lock: Option<Option<Duration>>,
    /// Lock lease; a holder that stops renewing loses the lock after this.
    pub lock_lease: Duration,
    /// Show progress through `progress_view` (progress lines go to the log either way).
    pub progress: bool,
    /// Where progress is drawn: the command line's bar, or none.
    pub progress_view: Option<std::sync::Arc<dyn crate::engine::backfill::ProgressView>>,
    /// Run pending migrations only up to and including this number.
    pub to: Option<u32>,
    /// How backfills catch up with concurrent writes (`auto`: the change stream when there is
    /// one; `passes`: passes over the candidates after the scan).
    pub catch_up: crate::engine::backfill::CatchUpMode,
    /// Write fast-path batches in transactions where the deployment has them (each batch read,
    /// imaged and written in one snapshot); off, they are guarded per field and read back.
    pub transactions: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch_size: 1000,
            auto_batch: false,
            target_batch: Duration::from_millis(500),
            max_replication_lag: Some(Duration::from_secs(10)),
            concurrency: 4,
            max_docs_per_sec: None,
            dry_run: false,
            force: false,
            fail_on_invalid: false,
            resume: false,
            restart: false,
            allow_drift: false,
            ignore_unknown: false,
            wait_for_lock: None,
            lock_lease: Duration::from_secs(60),
            progress: true,
            progress_view: None,
            to: None,
            catch_up: crate::engine::backfill::CatchUpMode::default(),
            transactions: true,
        }
    }
}

/// Why a run is stopping early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Ctrl-C or SIGTERM.
    Signal,
    /// The lock's lease could not be renewed.
    LockLost(String),
    /// `migrate pause` from the named requester (`user@host pid N`): stops as Ctrl-C does.
    Paused(String),
}

/// Shared stop flag: set by signal handlers or a lost lock, polled by long migrations.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl Stop {
    /// Asks the run to stop after the work in flight (first reason wins).
    pub fn trigger(&self, reason: StopReason) {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(reason);
        self.token.cancel();
    }
    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }
    /// Resolves once a stop is asked for.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }
    /// The error a stopped run ends with.
    pub fn error(&self) -> Error {
        match self
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            Some(StopReason::LockLost(why)) => Error::LockLost(why),
            _ => Error::Cancelled,
        }
    }
}

/// What a running migration sees.
#[derive(Clone)]
pub struct Context {
    pub(crate) db: Database,
    pub(crate) name: String,
    pub(crate) options: RunOptions,
    pub(crate) checkpoint: Option<Document>,
    pub(crate) failed_attempt: Option<Document>,
    pub(crate) applied_result: Option<Document>,
    pub(crate) store: Store,
    pub(crate) stop: Stop,
    pub(crate) live: crate::engine::control::Live,
    /// The convergence point of the backfill this migration ran, for its post-condition.
    pub(crate) convergence: Arc<Mutex<Option<Arc<crate::engine::backfill::Convergence>>>>,
}

impl Context {
    /// The convergence point of the backfill this migration ran in this process (see
    /// [`crate::engine::backfill::Convergence`]), for its post-condition.
    pub fn convergence(&self) -> Option<Arc<crate::engine::backfill::Convergence>> {
        self.convergence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_convergence(&self, point: crate::engine::backfill::Convergence) {
        *self.convergence.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(point));
    }

    /// The target database.
    pub fn db(&self) -> &Database {
        &self.db
    }
    /// This migration's name (`NNN_snake_name`).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The run's options.
    pub fn options(&self) -> &RunOptions {
        &self.options
    }
    /// True when nothing may be written.
    pub fn dry_run(&self) -> bool {
        self.options.dry_run
    }
    /// The checkpoint saved by an interrupted run, when resuming.
    pub fn checkpoint(&self) -> Option<&Document> {
        self.checkpoint.as_ref()
    }
    /// When re-running a failed migration: the checkpoint its failed attempt saved (for work a
    /// resume does not redo but that still belongs to the migration, such as indexes built).
    pub fn failed_attempt(&self) -> Option<&Document> {
        self.failed_attempt.as_ref()
    }
    /// In a `down`: the result the migration's `up` recorded.
    pub fn applied_result(&self) -> Option<&Document> {
        self.applied_result.as_ref()
    }
    /// The run's stop flag.
    pub fn stop(&self) -> &Stop {
        &self.stop
    }
    /// Saves the resume point on this migration's tracking record (never in a dry run).
    pub async fn save_checkpoint(&self, checkpoint: Document) -> Result<()> {
        if self.options.dry_run {
            return Ok(());
        }
        self.store.save_checkpoint(&self.name, checkpoint).await
    }
    /// Limits set live by `migrate throttle` while this run holds the lock.
    pub(crate) fn live(&self) -> &crate::engine::control::Live {
        &self.live
    }
    /// Who runs this migration (host, pid, user).
    pub(crate) fn actor(&self) -> &crate::engine::store::Actor {
        self.store.actor()
    }
    /// Saves the live progress (and, when given, the resume point with it) on this migration's
    /// tracking record, for `migrate status` on any host (never in a dry run).
    pub async fn save_progress(
        &self,
        checkpoint: Option<Document>,
        progress: Document,
    ) -> Result<()> {
        if self.options.dry_run {
            return Ok(());
        }
        self.store
            .save_progress(&self.name, checkpoint, progress)
            .await
    }
}
