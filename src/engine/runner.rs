//! [`MigrationRunner`]: runs pending migrations under the lock, reports status, and rolls the
//! last one back. What to run and what to refuse is [`crate::engine::plan`]'s; the runner loads
//! the records, takes the lock, and drives each migration through one begin -> call -> finish
//! path (`MigrationRunner::execute`) in either direction.

pub use crate::engine::plan::{describe_checkpoint, ChecksumRepair, MigrationStatus, State};

use crate::engine::control;
use crate::engine::direction::{Direction, Ending};
use crate::engine::error::{Error, Result};
use crate::engine::lock::{self, LockGuard, LockRequest};
use crate::engine::migration::{Context, Outcome, RunOptions, Stop};
use crate::engine::plan;
use crate::engine::registry::{self, Registered};
use crate::engine::store::{Actor, RecordStatus, Store};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::Database;
use std::time::Duration;
use tracing::{error, info, warn};

/// Adoption of the JavaScript runner's records, `baseline`, `repair`, and the rollback preview.
mod admin;

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
    /// Migrations whose JavaScript-runner records were adopted (or, in a dry run, would be).
    pub adopted: Vec<String>,
}

/// What `rollback --dry-run` reports for one migration it would revert.
#[derive(Debug, Clone)]
pub struct RollbackPreview {
    /// The migration and its state.
    pub status: MigrationStatus,
    /// It failed or was interrupted: only its partial writes would be undone.
    pub partial: bool,
    /// Whether it has a `down` (a rollback is refused otherwise).
    pub reversible: bool,
    /// Its before-images: documents they would restore, and in how many chunks.
    pub images: crate::engine::backfill::ImagesSummary,
}

/// Runs migrations against one database.
pub struct MigrationRunner {
    db: Database,
    migrations: Vec<Registered>,
    options: RunOptions,
    store: Store,
    stop: Stop,
    live: control::Live,
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
            live: control::Live::default(),
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
    /// A migration recorded `running` whose holder is gone reads [`State::Interrupted`], and
    /// running ones carry their live progress.
    pub async fn status(&self) -> Result<Vec<MigrationStatus>> {
        let mut plan = self.plan().await?;
        crate::engine::liveness::annotate(&self.db, &mut plan, self.store.actor()).await?;
        Ok(plan)
    }

    /// How many records of the tracking collection have no name: no run wrote them, and
    /// they are left out of [`Self::status`].
    pub async fn unnamed_records(&self) -> Result<u64> {
        self.store.unnamed_records().await
    }

    async fn plan(&self) -> Result<Vec<MigrationStatus>> {
        Ok(plan::plan(&self.migrations, self.store.load_all().await?))
    }

    fn registered(&self, name: &str) -> &Registered {
        self.migrations
            .iter()
            .find(|m| m.name == name)
            .expect("planned from registry")
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
            live: self.live.clone(),
            convergence: Default::default(),
        }
    }

    /// Runs every pending migration in number order; the first failure stops the run.
    pub async fn run_pending(&self) -> Result<RunReport> {
        let mut report = RunReport::default();
        self.run_pending_into(&mut report).await?;
        Ok(report)
    }

    /// [`Self::run_pending`], filling `report` as it goes, so a caller still has what was
    /// applied before a failure.
    pub async fn run_pending_into(&self, report: &mut RunReport) -> Result<()> {
        if self.options.dry_run {
            return self.dry_run(report).await;
        }
        self.store.ensure_indexes().await?;
        let lock = self.lock("up").await?;
        self.store.fence(lock.token());
        let control = control::watch(&self.db, lock.token(), self.live.clone(), self.stop.clone());
        let result = self.run_locked(report).await;
        drop(control);
        self.store.unfence();
        release(lock).await;
        result
    }

    async fn run_locked(&self, report: &mut RunReport) -> Result<()> {
        let plan = self.plan().await?;
        plan::check_runnable(&self.migrations, &plan, &self.options)?;
        let (plan, adopted) = self.adopt(plan).await?;
        report.adopted = adopted;
        let pending: Vec<_> = plan::pending(&plan, &self.options).collect();
        if pending.is_empty() {
            info!("nothing to migrate: every migration is applied");
            return Ok(());
        }
        info!(count = pending.len(), "migrating up");
        for entry in pending {
            if self.stop.is_stopped() {
                return Err(self.stop.error());
            }
            self.end_abandoned_transactions(entry.record.as_ref()).await;
            let checkpoint = plan::resume_point(entry, &self.options);
            let mut ctx = self.context(&entry.name, checkpoint);
            if entry.state == State::Failed {
                ctx.failed_attempt = entry.record.as_ref().and_then(|r| r.checkpoint.clone());
            }
            let resume = entry.state == State::Running && self.options.resume;
            let applied = self
                .execute(self.registered(&entry.name), Direction::Up { resume }, ctx)
                .await?;
            report.applied.push(applied);
        }
        Ok(())
    }

    /// Scans and transforms every pending migration without writing anything, not even the lock.
    async fn dry_run(&self, report: &mut RunReport) -> Result<()> {
        let plan = self.plan().await?;
        plan::check_runnable(&self.migrations, &plan, &self.options)?;
        report.dry_run = true;
        report.adopted = plan::adoptions(&plan).map(|m| m.name.clone()).collect();
        for entry in plan::pending(&plan, &self.options) {
            let registered = self.registered(&entry.name);
            let checkpoint = plan::resume_point(entry, &self.options);
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
        Ok(())
    }

    /// Runs `down` of the last migration touched (confirmation is the caller's job).
    pub async fn rollback_last(&self) -> Result<Applied> {
        let mut applied = self.rollback_to(None).await?;
        applied
            .pop()
            .ok_or_else(|| Error::Refused(plan::nothing_to_roll_back(None)))
    }

    /// Reverts, newest first, what [`plan::rollback_targets`] names: the last migration touched
    /// (`to` = None), or every one numbered above `to`. Every target must have a `down`, or
    /// nothing is reverted; the first failure stops the rest.
    pub async fn rollback_to(&self, to: Option<u32>) -> Result<Vec<Applied>> {
        self.store.ensure_indexes().await?;
        let lock = self.lock("rollback").await?;
        self.store.fence(lock.token());
        let control = control::watch(&self.db, lock.token(), self.live.clone(), self.stop.clone());
        let result = self.rollback_locked(to).await;
        drop(control);
        self.store.unfence();
        release(lock).await;
        result
    }

    /// The migration `rollback_last` would revert, if any (see [`plan::rollback_target`]).
    pub async fn rollback_target(&self) -> Result<Option<MigrationStatus>> {
        Ok(plan::rollback_target(self.plan().await?))
    }

    /// What `rollback_to(to)` would revert, newest first.
    /// Refused as the rollback itself is (see [`plan::check_rollback`]).
    pub async fn rollback_targets(&self, to: Option<u32>) -> Result<Vec<MigrationStatus>> {
        let plan = self.plan().await?;
        plan::check_rollback(&plan, &self.options)?;
        Ok(plan::rollback_targets(plan, to))
    }

    /// Migrations that left before-images behind although they are neither applied nor partly
    /// applied (nothing will ever restore them): `(name, chunks)`.
    pub async fn orphaned_before_images(&self) -> Result<Vec<(String, u64)>> {
        use futures::TryStreamExt;
        let plan = self.plan().await?;
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
                let chunks = crate::engine::backfill::int(&g, "chunks");
                (!plan::owns_before_images(&plan, &name)).then_some((name, chunks))
            })
            .collect();
        orphaned.sort();
        Ok(orphaned)
    }

    async fn rollback_locked(&self, to: Option<u32>) -> Result<Vec<Applied>> {
        let plan = self.plan().await?;
        plan::check_rollback(&plan, &self.options)?;
        let (plan, _) = self.adopt(plan).await?;
        let targets = plan::rollback_targets(plan, to);
        if targets.is_empty() {
            return Err(Error::Refused(plan::nothing_to_roll_back(to)));
        }
        // Everything is checked before anything is reverted, so a refusal changes nothing.
        let drifted: Vec<&str> = targets
            .iter()
            .filter(|t| t.state == State::Changed)
            .map(|t| t.name.as_str())
            .collect();
        if !drifted.is_empty() && !self.options.allow_drift {
            return Err(Error::Drift {
                names: drifted.join(", "),
            });
        }
        if let Some(t) = targets
            .iter()
            .find(|t| !self.registered(&t.name).migration.reversible())
        {
            return Err(Error::Refused(format!(
                "migration {} has no down, so it cannot be rolled back; nothing was changed",
                t.name
            )));
        }
        let mut applied = Vec::new();
        for target in targets {
            if self.stop.is_stopped() {
                return Err(self.stop.error());
            }
            let registered = self.registered(&target.name);
            let partial = matches!(
                target.state,
                State::Failed | State::Running | State::Interrupted
            );
            if partial {
                info!(
                    migration = registered.name,
                    state = %target.state,
                    "undoing the partial writes of a migration that did not complete"
                );
            }
            self.end_abandoned_transactions(target.record.as_ref())
                .await;
            let mut ctx = self.context(registered.name, None);
            ctx.applied_result = target.record.as_ref().and_then(|r| r.result.clone());
            applied.push(
                self.execute(registered, Direction::Down { partial }, ctx)
                    .await?,
            );
        }
        Ok(applied)
    }

    /// Ends the batch transactions a killed run of this migration left open (named in its
    /// checkpoint), before anything runs again over its documents: resumed, restarted or rolled
    /// back, it would otherwise wait for them as long as the server lets them live.
    async fn end_abandoned_transactions(&self, record: Option<&crate::engine::record::Record>) {
        if let Some(checkpoint) = record.and_then(|r| r.checkpoint.as_ref()) {
            crate::engine::backfill::end_abandoned(&self.db, checkpoint).await;
        }
    }

    /// One `up` or `down`: records its start, calls it, and records how it ended (completed,
    /// interrupted with its checkpoint kept, or failed) in the record and its history.
    async fn execute(
        &self,
        registered: &Registered,
        direction: Direction,
        ctx: Context,
    ) -> Result<Applied> {
        let name = registered.name;
        let started = DateTime::now();
        let clock = std::time::Instant::now();
        match direction {
            Direction::Up { resume } => {
                self.store
                    .begin(name, registered.checksum, resume, started)
                    .await?;
                match ctx.checkpoint() {
                    Some(cp) => {
                        info!(migration = name, checkpoint = %describe_checkpoint(cp), "migration resuming")
                    }
                    None => info!(migration = name, "migration started"),
                }
            }
            Direction::Down { .. } => {
                let fields =
                    doc! { "status": RecordStatus::RollingBack, "rollbackStartedAt": started };
                self.store.set(name, fields).await?;
                info!(migration = name, "rollback started");
            }
        }
        let ending = direction.call(registered, &ctx).await;
        match (direction, &ending) {
            (Direction::Up { .. }, Ending::Stopped(_)) => {
                warn!(migration = name, "migration interrupted; checkpoint kept")
            }
            (Direction::Up { .. }, Ending::Failed { reason, .. }) => {
                error!(migration = name, error = %reason, "migration failed")
            }
            (Direction::Down { .. }, Ending::Failed { reason, .. }) => {
                error!(migration = name, error = %reason, "rollback failed")
            }
            _ => {}
        }
        let (outcome, fields, unset) = direction.record(&ending);
        self.store
            .finish(name, direction.action(), outcome, started, fields, unset)
            .await?;
        match ending {
            Ending::Done(outcome) => {
                match direction {
                    Direction::Up { .. } => info!(
                        migration = name,
                        ms = clock.elapsed().as_millis() as u64,
                        "migration completed: {}",
                        outcome.message
                    ),
                    Direction::Down { .. } => {
                        info!(migration = name, "rolled back: {}", outcome.message)
                    }
                }
                Ok(Applied {
                    name: name.to_string(),
                    outcome,
                    duration: clock.elapsed(),
                })
            }
            Ending::Stopped(e) => Err(e),
            Ending::Failed { reason, .. } => {
                Err(Error::migration(name, direction.failure_reason(&reason)))
            }
        }
    }
}

async fn release(lock: LockGuard) {
    if let Err(e) = lock.release().await {
        warn!("{e}");
    }
}
