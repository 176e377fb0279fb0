//! The runner's administrative work on the tracking records: adopting what the JavaScript
//! runner recorded, marking migrations applied without running them (`baseline`), accepting the
//! changed source of applied ones (`repair`), and saying what a rollback would do without doing it.

use super::{release, MigrationRunner, MigrationStatus, RollbackPreview, State};
use crate::engine::error::{Error, Result};
use crate::engine::plan::{self, ChecksumRepair};
use tracing::{info, warn};

impl MigrationRunner {
    /// Adopts every record the JavaScript runner left (see [`plan::adoptions`]), then plans
    /// again. Returns the new plan and the names adopted.
    pub(super) async fn adopt(
        &self,
        plan: Vec<MigrationStatus>,
    ) -> Result<(Vec<MigrationStatus>, Vec<String>)> {
        let mut adopted = Vec::new();
        for m in plan::adoptions(&plan) {
            let registered = self.registered(&m.name);
            self.store
                .adopt(registered.name, registered.checksum, &m.to_adopt)
                .await?;
            info!(
                migration = registered.name,
                records = %m.to_adopt.join(", "),
                "adopted the JavaScript runner's record"
            );
            adopted.push(m.name.clone());
        }
        if adopted.is_empty() {
            return Ok((plan, adopted));
        }
        Ok((self.plan().await?, adopted))
    }

    /// What `rollback_to(to)` would do, read without writing anything (not even the lock).
    pub async fn rollback_preview(&self, to: Option<u32>) -> Result<Vec<RollbackPreview>> {
        let mut previews = Vec::new();
        for status in self.rollback_targets(to).await? {
            let images = crate::engine::backfill::images_summary(&self.db, &status.name).await?;
            let reversible = self.registered(&status.name).migration.reversible();
            previews.push(RollbackPreview {
                partial: matches!(
                    status.state,
                    State::Failed | State::Running | State::Interrupted
                ),
                reversible,
                images,
                status,
            });
        }
        Ok(previews)
    }

    /// Marks every migration up to `to` that is not applied as applied, without running it,
    /// for a database brought to that state by other means (`migrate baseline`). In a dry run,
    /// only says which. Returns their names.
    pub async fn baseline(&self, to: u32) -> Result<Vec<String>> {
        if !self.migrations.iter().any(|m| m.number == to) {
            return Err(Error::Config(format!(
                "--to {to:03}: no migration has that number (see `migrate status`)"
            )));
        }
        if self.options.dry_run {
            let plan = self.plan().await?;
            plan::check_known(&plan, &self.options)?;
            return Ok(plan::baseline_targets(&plan, to)?
                .into_iter()
                .map(|m| m.name.clone())
                .collect());
        }
        self.store.ensure_indexes().await?;
        let lock = self.lock("baseline").await?;
        self.store.fence(lock.token());
        let result = self.baseline_locked(to).await;
        self.store.unfence();
        release(lock).await;
        result
    }

    /// The applied migrations whose recorded checksum is not their source's (see
    /// [`plan::repair_targets`]), read without writing anything (not even the lock).
    pub async fn repair_targets(&self) -> Result<Vec<ChecksumRepair>> {
        Ok(plan::repair_targets(&self.plan().await?))
    }

    /// Records today's checksum on each of `confirmed` (as [`Self::repair_targets`] listed them)
    /// under the lock, each with a `repair` history entry naming the checksum it replaces
    /// (`migrate repair`). One whose record changed since it was listed is left as it is: what
    /// it holds now was not what the operator accepted. Returns those repaired.
    pub async fn repair(&self, confirmed: &[ChecksumRepair]) -> Result<Vec<ChecksumRepair>> {
        self.store.ensure_indexes().await?;
        let lock = self.lock("repair").await?;
        self.store.fence(lock.token());
        let result = self.repair_locked(confirmed).await;
        self.store.unfence();
        release(lock).await;
        result
    }

    async fn repair_locked(&self, confirmed: &[ChecksumRepair]) -> Result<Vec<ChecksumRepair>> {
        let targets = plan::repair_targets(&self.plan().await?);
        let mut repaired = Vec::new();
        for target in targets {
            if !confirmed.contains(&target) {
                warn!(
                    migration = target.name,
                    recorded = target.recorded,
                    "not repaired: its record changed since it was listed"
                );
                continue;
            }
            self.store
                .repair(&target.record, &target.recorded, &target.checksum)
                .await?;
            info!(
                migration = target.name,
                old = target.recorded,
                checksum = target.checksum,
                "recorded today's checksum (repair)"
            );
            repaired.push(target);
        }
        Ok(repaired)
    }

    async fn baseline_locked(&self, to: u32) -> Result<Vec<String>> {
        let plan = self.plan().await?;
        plan::check_known(&plan, &self.options)?;
        plan::baseline_targets(&plan, to)?;
        let (plan, _) = self.adopt(plan).await?;
        let mut marked = Vec::new();
        for m in plan::baseline_targets(&plan, to)? {
            let registered = self.registered(&m.name);
            self.store
                .baseline(registered.name, registered.checksum, to)
                .await?;
            info!(
                migration = registered.name,
                "marked applied without running it (baseline)"
            );
            marked.push(m.name.clone());
        }
        Ok(marked)
    }
}
