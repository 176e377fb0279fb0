//! [`MigrationRunner`]: plans (applied / pending / changed / interrupted), runs pending
//! migrations under the lock, reports status, and rolls the last one back.

use crate::engine::error::{Error, Result};
use crate::engine::lock::{self, LockGuard, LockRequest};
use crate::engine::migration::{Context, Outcome, RunOptions, Stop};
use crate::engine::registry::{self, Registered};
use crate::engine::store::{status, Actor, Record, Store};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::Database;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use tracing::{error, info, warn};

/// The state of one migration, as `migrate status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Never applied (or rolled back then re-planned; see [`State::RolledBack`]).
    Pending,
    /// Applied, source unchanged.
    Completed,
    /// Applied, but its source changed since.
    Changed,
    /// Its last `up` failed; `up` retries it.
    Failed,
    /// Running now, or interrupted (then it has a checkpoint): `up --resume` continues it.
    Running,
    /// Its `down` is running or was interrupted: `rollback` again finishes it.
    RollingBack,
    /// Reverted; `up` applies it again.
    RolledBack,
    /// Recorded in the database but not compiled into this binary.
    Unknown,
    /// Its record has a status this build does not know: `up` refuses until it is fixed.
    UnknownStatus,
    /// Its record cannot be read (a field of the wrong type): `up` refuses until it is fixed.
    Malformed,
}

impl State {
    fn is_pending(self) -> bool {
        matches!(
            self,
            State::Pending | State::Failed | State::RolledBack | State::Running
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            State::Pending => "pending",
            State::Completed => "completed",
            State::Changed => "changed since applied",
            State::Failed => "failed",
            State::Running => "running",
            State::RollingBack => "rolling back",
            State::RolledBack => "rolled back",
            State::Unknown => "unknown (not in this build)",
            State::UnknownStatus => "unknown status",
            State::Malformed => "malformed record",
        };
        f.write_str(s)
    }
}

/// One line of `migrate status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// Number from the file name (0 for unknown records).
    pub number: u32,
    /// `NNN_snake_name`.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Its state.
    pub state: State,
    /// Checksum of the compiled source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The tracking record, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<Record>,
}

/// What one migration did in a run.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Its name.
    pub name: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
}

/// What [`MigrationRunner::run_pending`] did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Migrations applied (or, in a dry run, what they would do), in order.
    pub applied: Vec<Applied>,
    /// True when nothing was written.
    pub dry_run: bool,
}

/// Runs migrations against one database.
pub struct MigrationRunner {
    db: Database,
    migrations: Vec<Registered>,
    options: RunOptions,
    store: Store,
    stop: Stop,
}

impl MigrationRunner {
    /// A runner over the migrations compiled into this crate.
    pub fn new(db: Database) -> Self {
        Self::with_migrations(db, registry::compiled())
    }

    /// A runner over an explicit list (sorted by number here).
    pub fn with_migrations(db: Database, mut migrations: Vec<Registered>) -> Self {
        migrations.sort_by_key(|m| m.number);
        let store = Store::new(&db, Actor::current());
        MigrationRunner {
            db,
            migrations,
            options: RunOptions::default(),
            store,
            stop: Stop::default(),
        }
    }

    /// Sets the run options.
    pub fn with_options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// The stop flag: trigger it (e.g. on Ctrl-C) to stop after the work in flight.
    pub fn stop_handle(&self) -> Stop {
        self.stop.clone()
    }

    /// Every known migration with its state, plus records not in this build.
    pub async fn status(&self) -> Result<Vec<MigrationStatus>> {
        let records = self.store.load_all().await?;
        Ok(self.plan(records))
    }

    fn plan(&self, records: Vec<Record>) -> Vec<MigrationStatus> {
        let mut by_name: HashMap<String, Record> =
            records.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut plan: Vec<MigrationStatus> = self
            .migrations
            .iter()
            .map(|m| {
                let record = by_name.remove(m.name);
                let state = match record.as_ref().map(|r| r.status.as_str()) {
                    None => State::Pending,
                    Some(status::COMPLETED)
                        if record.as_ref().is_some_and(|r| r.checksum != m.checksum) =>
                    {
                        State::Changed
                    }
                    Some(status::COMPLETED) => State::Completed,
                    Some(status::FAILED) => State::Failed,
                    Some(status::RUNNING) => State::Running,
                    Some(status::ROLLING_BACK) => State::RollingBack,
                    Some(status::ROLLED_BACK) => State::RolledBack,
                    Some(status::MALFORMED) => State::Malformed,
                    Some(_) => State::UnknownStatus,
                };
                MigrationStatus {
                    number: m.number,
                    name: m.name.to_string(),
                    description: m.migration.description().to_string(),
                    state,
                    checksum: Some(m.checksum.to_string()),
                    record,
                }
            })
            .collect();
        let mut unknown: Vec<_> = by_name.into_values().collect();
        unknown.sort_by(|a, b| a.name.cmp(&b.name));
        plan.extend(unknown.into_iter().map(|r| MigrationStatus {
            number: 0,
            name: r.name.clone(),
            description: String::new(),
            state: State::Unknown,
            checksum: None,
            record: Some(r),
        }));
        plan
    }

    /// Refuses to run over drift or an unfinished rollback, and over an interrupted migration
    /// unless the operator chose `--resume` or `--restart`.
    fn check_runnable(&self, plan: &[MigrationStatus]) -> Result<()> {
        if let Some(to) = self.options.to {
            if !self.migrations.iter().any(|m| m.number == to) {
                return Err(Error::Config(format!(
                    "--to {to:03}: no migration has that number (see `migrate status`)"
                )));
            }
        }
        if let Some(m) = plan
            .iter()
            .find(|m| matches!(m.state, State::UnknownStatus | State::Malformed))
        {
            let record = m.record.as_ref();
            let what = match m.state {
                State::Malformed => format!(
                    "its tracking record is malformed ({})",
                    record.and_then(|r| r.error.clone()).unwrap_or_default()
                ),
                _ => format!(
                    "its tracking record has status {:?}, which this build does not know",
                    record.map(|r| r.status.as_str()).unwrap_or("?")
                ),
            };
            return Err(Error::Refused(format!(
                "migration {}: {what}; nothing was run. Fix the record in the `{}` collection (set `status` to \"failed\" to run it again, or \"completed\" if it is applied), or remove it",
                m.name,
                crate::engine::store::TRACKING_COLLECTION
            )));
        }
        let changed: Vec<&str> = plan
            .iter()
            .filter(|m| m.state == State::Changed)
            .map(|m| m.name.as_str())
            .collect();
        if !changed.is_empty() && !self.options.allow_drift {
            return Err(Error::Drift {
                names: changed.join(", "),
            });
        }
        if let Some(m) = plan.iter().find(|m| m.state == State::RollingBack) {
            return Err(Error::Refused(format!(
                "the rollback of {} was interrupted; run `migrate rollback` again to finish it before migrating up",
                m.name
            )));
        }
        if !(self.options.resume || self.options.restart) {
            if let Some(m) = plan.iter().find(|m| m.state == State::Running) {
                let checkpoint = m
                    .record
                    .as_ref()
                    .and_then(|r| r.checkpoint.as_ref())
                    .map(describe_checkpoint)
                    .unwrap_or_else(|| "none".into());
                return Err(Error::Interrupted {
                    name: m.name.clone(),
                    checkpoint,
                });
            }
        }
        Ok(())
    }

    /// Pending, and within `--to`.
    fn wanted(&self, m: &MigrationStatus) -> bool {
        m.state.is_pending() && self.options.to.is_none_or(|to| m.number <= to)
    }

    async fn lock(&self, command: &str) -> Result<LockGuard> {
        let request = LockRequest {
            actor: self.store.actor().clone(),
            command: command.to_string(),
            lease: self.options.lock_lease,
            wait: self.options.wait_for_lock,
        };
        lock::acquire(&self.db, &request, &self.stop).await
    }

    fn context(&self, name: &str, checkpoint: Option<Document>) -> Context {
        Context {
            db: self.db.clone(),
            name: name.to_string(),
            options: self.options.clone(),
            checkpoint,
            failed_attempt: None,
            applied_result: None,
            store: self.store.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Runs every pending migration in number order; the first failure stops the run.
    pub async fn run_pending(&self) -> Result<RunReport> {
        if self.options.dry_run {
            return self.dry_run().await;
        }
        self.store.ensure_indexes().await?;
        let lock = self.lock("up").await?;
        self.store.fence(lock.token());
        let result = self.run_locked().await;
        self.store.unfence();
        release(lock).await;
        result
    }

    async fn run_locked(&self) -> Result<RunReport> {
        let plan = self.plan(self.store.load_all().await?);
        self.check_runnable(&plan)?;
        let mut report = RunReport::default();
        let pending: Vec<_> = plan.iter().filter(|m| self.wanted(m)).collect();
        if pending.is_empty() {
            info!("nothing to migrate: every migration is applied");
            return Ok(report);
        }
        info!(count = pending.len(), "migrating up");
        for entry in pending {
            if self.stop.is_stopped() {
                return Err(self.stop.error());
            }
            let registered = self
                .migrations
                .iter()
                .find(|m| m.name == entry.name)
                .expect("planned from registry");
            let resume = entry.state == State::Running && self.options.resume;
            let checkpoint = if resume {
                entry.record.as_ref().and_then(|r| r.checkpoint.clone())
            } else {
                None
            };
            let started = DateTime::now();
            let clock = std::time::Instant::now();
            self.store
                .begin(registered.name, registered.checksum, resume, started)
                .await?;
            match &checkpoint {
                Some(cp) => {
                    info!(migration = registered.name, checkpoint = %describe_checkpoint(cp), "migration resuming")
                }
                None => info!(migration = registered.name, "migration started"),
            }
            let mut ctx = self.context(registered.name, checkpoint);
            if entry.state == State::Failed {
                ctx.failed_attempt = entry.record.as_ref().and_then(|r| r.checkpoint.clone());
            }
            let result = match registered.migration.up(&ctx).await {
                Ok(outcome) if outcome.success => registered
                    .migration
                    .verify(&ctx)
                    .await
                    .map(|_| outcome)
                    .map_err(|e| {
                        let reason = match e {
                            Error::Migration { reason, .. } => reason,
                            other => other.to_string(),
                        };
                        Error::migration(
                            registered.name,
                            format!("post-condition not met after up: {reason}"),
                        )
                    }),
                Ok(outcome) => Err(Error::migration(registered.name, &outcome.message)),
                Err(e) => Err(e),
            };
            match result {
                Ok(outcome) => {
                    let fields = doc! {
                        "status": status::COMPLETED,
                        "executedAt": DateTime::now(),
                        "message": &outcome.message,
                        "result": outcome.result.clone(),
                    };
                    self.store
                        .finish(
                            registered.name,
                            "up",
                            status::COMPLETED,
                            started,
                            fields,
                            &["checkpoint", "error"],
                        )
                        .await?;
                    info!(
                        migration = registered.name,
                        ms = clock.elapsed().as_millis() as u64,
                        "migration completed: {}",
                        outcome.message
                    );
                    report.applied.push(Applied {
                        name: registered.name.to_string(),
                        outcome,
                        duration: clock.elapsed(),
                    });
                }
                Err(e @ (Error::Cancelled | Error::LockLost(_))) => {
                    warn!(
                        migration = registered.name,
                        "migration interrupted; checkpoint kept"
                    );
                    let fields =
                        doc! { "status": status::RUNNING, "interruptedAt": DateTime::now() };
                    self.store
                        .finish(registered.name, "up", "interrupted", started, fields, &[])
                        .await?;
                    return Err(e);
                }
                Err(e) => {
                    let reason = match &e {
                        Error::Migration { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    error!(migration = registered.name, error = %reason, "migration failed");
                    let fields = doc! { "status": status::FAILED, "error": &reason };
                    self.store
                        .finish(registered.name, "up", status::FAILED, started, fields, &[])
                        .await?;
                    return Err(Error::migration(registered.name, reason));
                }
            }
        }
        Ok(report)
    }

    /// Scans and transforms every pending migration without writing anything, not even the lock.
    async fn dry_run(&self) -> Result<RunReport> {
        let plan = self.plan(self.store.load_all().await?);
        self.check_runnable(&plan)?;
        let mut report = RunReport {
            dry_run: true,
            ..Default::default()
        };
        for entry in plan.iter().filter(|m| self.wanted(m)) {
            let registered = self
                .migrations
                .iter()
                .find(|m| m.name == entry.name)
                .expect("planned from registry");
            let checkpoint = (entry.state == State::Running && self.options.resume)
                .then(|| entry.record.as_ref().and_then(|r| r.checkpoint.clone()))
                .flatten();
            let clock = std::time::Instant::now();
            let outcome = registered
                .migration
                .up(&self.context(registered.name, checkpoint))
                .await?;
            info!(migration = registered.name, "dry run: {}", outcome.message);
            report.applied.push(Applied {
                name: registered.name.to_string(),
                outcome,
                duration: clock.elapsed(),
            });
        }
        Ok(report)
    }

    /// Runs `down` of the last completed migration (confirmation is the caller's job).
    pub async fn rollback_last(&self) -> Result<Applied> {
        self.store.ensure_indexes().await?;
        let lock = self.lock("rollback").await?;
        self.store.fence(lock.token());
        let result = self.rollback_locked().await;
        self.store.unfence();
        release(lock).await;
        result
    }

    /// The migration `rollback_last` would revert, if any: the last one touched, which is the
    /// highest-numbered one that is applied, or failed or interrupted part-way (its partial
    /// writes are undone, not the migration before it).
    pub async fn rollback_target(&self) -> Result<Option<MigrationStatus>> {
        let plan = self.plan(self.store.load_all().await?);
        Ok(plan
            .into_iter()
            .filter(|m| {
                matches!(
                    m.state,
                    State::Completed
                        | State::Changed
                        | State::RollingBack
                        | State::Failed
                        | State::Running
                )
            })
            .max_by_key(|m| m.number))
    }

    /// Migrations that left before-images behind although they are neither applied nor partly
    /// applied (nothing will ever restore them): `(name, chunks)`.
    pub async fn orphaned_before_images(&self) -> Result<Vec<(String, u64)>> {
        use futures::TryStreamExt;
        let plan = self.plan(self.store.load_all().await?);
        let images = self
            .db
            .collection::<Document>(crate::engine::backfill::BEFORE_IMAGES);
        let groups: Vec<Document> = images
            .aggregate(vec![
                doc! { "$group": { "_id": "$migration", "chunks": { "$sum": 1 } } },
            ])
            .await
            .map_err(Error::db("reading the before-images"))?
            .try_collect()
            .await
            .map_err(Error::db("reading the before-images"))?;
        let mut orphaned: Vec<(String, u64)> = groups
            .into_iter()
            .filter_map(|g| {
                let name = g.get_str("_id").ok()?.to_string();
                let owned = plan.iter().any(|m| {
                    m.name == name
                        && matches!(
                            m.state,
                            State::Completed
                                | State::Changed
                                | State::RollingBack
                                | State::Failed
                                | State::Running
                        )
                });
                let chunks = crate::engine::backfill::int(&g, "chunks");
                (!owned).then_some((name, chunks))
            })
            .collect();
        orphaned.sort();
        Ok(orphaned)
    }

    async fn rollback_locked(&self) -> Result<Applied> {
        let target = self.rollback_target().await?.ok_or_else(|| {
            Error::Refused("nothing to roll back: no migration is completed".into())
        })?;
        if target.state == State::Changed && !self.options.allow_drift {
            return Err(Error::Drift { names: target.name });
        }
        let registered = self
            .migrations
            .iter()
            .find(|m| m.name == target.name)
            .expect("planned from registry");
        if !registered.migration.reversible() {
            return Err(Error::Refused(format!(
                "migration {} has no down, so it cannot be rolled back; nothing was changed",
                registered.name
            )));
        }
        let partial = matches!(target.state, State::Failed | State::Running);
        if partial {
            info!(
                migration = registered.name,
                state = %target.state,
                "undoing the partial writes of a migration that did not complete"
            );
        }
        let started = DateTime::now();
        let clock = std::time::Instant::now();
        self.store
            .set(
                registered.name,
                doc! { "status": status::ROLLING_BACK, "rollbackStartedAt": started },
            )
            .await?;
        info!(migration = registered.name, "rollback started");
        let mut ctx = self.context(registered.name, None);
        ctx.applied_result = target.record.as_ref().and_then(|r| r.result.clone());
        match registered.migration.down(&ctx).await {
            Ok(outcome) if outcome.success => {
                let fields = doc! { "status": status::ROLLED_BACK, "rolledBackAt": DateTime::now(), "rollbackResult": outcome.result.clone() };
                self.store
                    .finish(
                        registered.name,
                        "down",
                        status::ROLLED_BACK,
                        started,
                        fields,
                        &["error", "checkpoint"],
                    )
                    .await?;
                info!(
                    migration = registered.name,
                    "rolled back: {}", outcome.message
                );
                Ok(Applied {
                    name: registered.name.to_string(),
                    outcome,
                    duration: clock.elapsed(),
                })
            }
            Err(e @ (Error::Cancelled | Error::LockLost(_))) => {
                self.store
                    .finish(
                        registered.name,
                        "down",
                        "interrupted",
                        started,
                        doc! { "status": status::ROLLING_BACK },
                        &[],
                    )
                    .await?;
                Err(e)
            }
            other => {
                let (reason, result) = match other {
                    Ok(outcome) => (outcome.message, outcome.result),
                    Err(e) => (e.to_string(), Document::new()),
                };
                error!(migration = registered.name, error = %reason, "rollback failed");
                // Its changes are (at least partly) still in place: it stays as it was (completed,
                // or failed for a migration whose partial writes were being undone).
                let back = if partial {
                    status::FAILED
                } else {
                    status::COMPLETED
                };
                let fields = doc! { "status": back, "error": format!("rollback failed: {reason}"), "rollbackResult": result };
                self.store
                    .finish(
                        registered.name,
                        "down",
                        status::FAILED,
                        started,
                        fields,
                        &[],
                    )
                    .await?;
                Err(Error::migration(
                    registered.name,
                    format!("rollback failed: {reason}"),
                ))
            }
        }
    }
}

async fn release(lock: LockGuard) {
    if let Err(e) = lock.release().await {
        warn!("{e}");
    }
}

/// `last _id 123 (4000 scanned, 3990 modified)` for messages.
pub fn describe_checkpoint(cp: &Document) -> String {
    let n = |k: &str| {
        cp.get(k)
            .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
            .unwrap_or(0)
    };
    let last = cp
        .get("lastId")
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "last _id {last} ({} scanned, {} modified)",
        n("scanned"),
        n("modified")
    )
}
