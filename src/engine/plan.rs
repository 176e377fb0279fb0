//! Planning, without I/O: the state of every migration from its tracking record, what `up` runs
//! next, what `rollback` reverts, and what is refused and why. The runner loads the records and
//! acts on the plan; everything here is unit-tested on plain data.

use crate::engine::bson_ext::int_field;
use crate::engine::error::{Error, Result};
use crate::engine::migration::RunOptions;
use crate::engine::registry::Registered;
use crate::engine::store::{Record, RecordStatus, TRACKING_COLLECTION};
use mongodb::bson::Document;
use serde::Serialize;
use std::collections::HashMap;

/// The state of one migration, as `migrate status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Never applied (or rolled back then re-planned; see [`State::RolledBack`]).
    Pending,
    /// Applied, source unchanged.
    Completed,
    /// Applied by the JavaScript runner this tool replaces (a `completed` record without a
    /// checksum, or named with `.js`): counts as applied; the next `up`, `rollback` or
    /// `baseline` adopts the record (gives it today's checksum and a history entry).
    Adopted,
    /// Applied, but its source changed since.
    Changed,
    /// Its last `up` failed; `up` retries it.
    Failed,
    /// Running now, or interrupted (then it has a checkpoint): `up --resume` continues it.
    Running,
    /// Running as recorded, but its holder is gone (its process died on this host, or its
    /// lease expired): `up --resume` continues it. Only `status` tells it from
    /// [`State::Running`], since only it reads the lock.
    Interrupted,
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
    /// `up` runs it.
    fn is_pending(self) -> bool {
        matches!(
            self,
            State::Pending
                | State::Failed
                | State::RolledBack
                | State::Running
                | State::Interrupted
        )
    }

    /// Applied, or applied part-way: `rollback` can revert it, and its before-images are kept.
    fn is_touched(self) -> bool {
        matches!(
            self,
            State::Completed
                | State::Adopted
                | State::Changed
                | State::RollingBack
                | State::Failed
                | State::Running
                | State::Interrupted
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            State::Pending => "pending",
            State::Completed => "completed",
            State::Adopted => "applied (adopted from the JavaScript runner)",
            State::Changed => "changed since applied",
            State::Failed => "failed",
            State::Running => "running",
            State::Interrupted => "interrupted",
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
    /// Records the JavaScript runner wrote for this migration that are still to be adopted:
    /// named with `.js`, or `completed` without a checksum.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_adopt: Vec<String>,
    /// A running or interrupted backfill's live progress (see [`crate::engine::liveness`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
}

/// The JavaScript runner's file suffix, which its records' names may carry.
pub const JS_SUFFIX: &str = ".js";

/// The state a record gives compiled-in migration `m`.
fn state_of(record: Option<&Record>, m: &Registered) -> State {
    let Some(record) = record else {
        return State::Pending;
    };
    match &record.status {
        // No checksum was ever recorded (the JavaScript runner kept none): not drift.
        RecordStatus::Completed if record.checksum.is_empty() => State::Adopted,
        RecordStatus::Completed if !m.accepts(&record.checksum) => State::Changed,
        RecordStatus::Completed => State::Completed,
        RecordStatus::Failed => State::Failed,
        RecordStatus::Running => State::Running,
        RecordStatus::RollingBack => State::RollingBack,
        RecordStatus::RolledBack => State::RolledBack,
        RecordStatus::Malformed => State::Malformed,
        RecordStatus::Other(_) => State::UnknownStatus,
    }
}

/// Every compiled-in migration (in `migrations`' order) with its state, then the records of
/// migrations not in this build, by name.
///
/// A record named with `.js` (as the JavaScript runner names them) is that migration's record.
/// When both a plain and a `.js` record exist, the plain one is the record; the other is listed
/// in `to_adopt` and merged into it on adoption.
pub fn plan(migrations: &[Registered], records: Vec<Record>) -> Vec<MigrationStatus> {
    let mut by_name: HashMap<String, Record> =
        records.into_iter().map(|r| (r.name.clone(), r)).collect();
    let mut plan: Vec<MigrationStatus> = migrations
        .iter()
        .map(|m| {
            let plain = by_name.remove(m.name);
            let js = by_name.remove(&format!("{}{JS_SUFFIX}", m.name));
            let mut to_adopt: Vec<String> = js.iter().map(|r| r.name.clone()).collect();
            let record = match (plain, js) {
                (Some(plain), _) => Some(plain),
                (None, js) => js,
            };
            if let Some(r) = &record {
                let unclaimed = r.status == RecordStatus::Completed && r.checksum.is_empty();
                if unclaimed && r.name == m.name {
                    to_adopt.push(r.name.clone());
                }
            }
            MigrationStatus {
                number: m.number,
                name: m.name.to_string(),
                description: m.migration.description().to_string(),
                state: state_of(record.as_ref(), m),
                checksum: Some(m.checksum.to_string()),
                record,
                to_adopt,
                progress: None,
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
        to_adopt: Vec::new(),
        progress: None,
    }));
    plan
}

/// The migrations whose records are to be adopted, with the names of those records.
pub fn adoptions(plan: &[MigrationStatus]) -> impl Iterator<Item = &MigrationStatus> + '_ {
    plan.iter().filter(|m| !m.to_adopt.is_empty())
}

/// Refuses to run over drift or an unfinished rollback, and over an interrupted migration
/// unless the operator chose `--resume` or `--restart`.
pub fn check_runnable(
    migrations: &[Registered],
    plan: &[MigrationStatus],
    options: &RunOptions,
) -> Result<()> {
    if let Some(to) = options.to {
        if !migrations.iter().any(|m| m.number == to) {
            return Err(Error::Config(format!(
                "--to {to:03}: no migration has that number (see `migrate status`)"
            )));
        }
    }
    check_readable(plan)?;
    check_known(plan, options)?;
    let changed: Vec<&str> = plan
        .iter()
        .filter(|m| m.state == State::Changed)
        .map(|m| m.name.as_str())
        .collect();
    if !changed.is_empty() && !options.allow_drift {
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
    if !(options.resume || options.restart) {
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

/// Refuses while a migration's record has a status this build does not know or cannot be read:
/// its state is unknown, so neither what `up` would run nor what `rollback` would revert
/// beneath it can be decided.
pub fn check_readable(plan: &[MigrationStatus]) -> Result<()> {
    match plan
        .iter()
        .find(|m| matches!(m.state, State::UnknownStatus | State::Malformed))
    {
        Some(m) => Err(unreadable_record(m)),
        None => Ok(()),
    }
}

/// The records of migrations this build does not have that are applied, or applied part-way
/// (anything but rolled back): written by a newer build, or by other tooling.
pub fn unknown_applied(plan: &[MigrationStatus]) -> impl Iterator<Item = &MigrationStatus> + '_ {
    plan.iter().filter(|m| {
        m.state == State::Unknown
            && m.record
                .as_ref()
                .is_some_and(|r| r.status != RecordStatus::RolledBack)
    })
}

/// Refuses, unless `--ignore-unknown`, when the database holds applied migrations this build
/// does not know: running `up` over them would claim a schema they may have changed, and a
/// rollback would revert what lies beneath them.
pub fn check_known(plan: &[MigrationStatus], options: &RunOptions) -> Result<()> {
    if options.ignore_unknown {
        return Ok(());
    }
    let unknown: Vec<String> = unknown_applied(plan)
        .map(|m| {
            let status = m.record.as_ref().map(|r| r.status.as_str()).unwrap_or("?");
            format!("{} ({status})", m.name)
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "the database holds {} applied migration(s) this build does not know: {}; this build is older than the database's migrations. Run a build that has them, or pass --ignore-unknown to go on knowingly; nothing was changed",
        unknown.len(),
        unknown.join(", ")
    )))
}

/// Why a record with an unknown status, or one that cannot be read, stops `up`, `rollback` and
/// `baseline`.
fn unreadable_record(m: &MigrationStatus) -> Error {
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
    Error::Refused(format!(
        "migration {}: {what}; nothing was changed. Fix the record in the `{TRACKING_COLLECTION}` collection (set `status` to \"failed\" to run it again, or \"completed\" if it is applied), or remove it",
        m.name,
    ))
}

/// What `up` runs, in order: the pending migrations within `--to`.
pub fn pending<'a>(
    plan: &'a [MigrationStatus],
    options: &'a RunOptions,
) -> impl Iterator<Item = &'a MigrationStatus> + 'a {
    plan.iter()
        .filter(|m| m.state.is_pending() && options.to.is_none_or(|to| m.number <= to))
}

/// The checkpoint `up` continues from: an interrupted migration's, with `--resume` only.
pub fn resume_point(m: &MigrationStatus, options: &RunOptions) -> Option<Document> {
    (m.state == State::Running && options.resume)
        .then(|| m.record.as_ref().and_then(|r| r.checkpoint.clone()))
        .flatten()
}

/// The migration `rollback` reverts, if any: the last one touched, which is the
/// highest-numbered one that is applied, or failed or interrupted part-way (its partial writes
/// are undone, not the migration before it).
pub fn rollback_target(plan: Vec<MigrationStatus>) -> Option<MigrationStatus> {
    plan.into_iter()
        .filter(|m| m.state.is_touched())
        .max_by_key(|m| m.number)
}

/// What `rollback` reverts, newest first: without `to`, the last migration touched; with
/// `to`, every migration numbered above it that is applied or applied part-way.
pub fn rollback_targets(plan: Vec<MigrationStatus>, to: Option<u32>) -> Vec<MigrationStatus> {
    match to {
        None => rollback_target(plan).into_iter().collect(),
        Some(to) => {
            let mut targets: Vec<MigrationStatus> = plan
                .into_iter()
                .filter(|m| m.state.is_touched() && m.number > to)
                .collect();
            targets.sort_by_key(|m| std::cmp::Reverse(m.number));
            targets
        }
    }
}

/// Refuses a rollback over a record that cannot be read (the migration it belongs to may be
/// applied, and reverting what lies beneath it would leave it over data it does not expect), and
/// over applied migrations this build does not know, unless `--ignore-unknown`.
pub fn check_rollback(plan: &[MigrationStatus], options: &RunOptions) -> Result<()> {
    check_readable(plan)?;
    check_known(plan, options)
}

/// Why `rollback` (with `--to`, when given) has nothing to revert.
pub fn nothing_to_roll_back(to: Option<u32>) -> String {
    match to {
        None => "nothing to roll back: no migration is completed".into(),
        Some(to) => format!("nothing to roll back: no migration above {to:03} is applied"),
    }
}

/// What `baseline --to` marks applied: every migration up to `to` that is not applied yet.
/// Refused, with nothing marked, when one of them is interrupted or its rollback is, since
/// its partial writes would then be recorded as a whole migration.
pub fn baseline_targets(plan: &[MigrationStatus], to: u32) -> Result<Vec<&MigrationStatus>> {
    check_readable(plan)?;
    let mut targets = Vec::new();
    for m in plan.iter().filter(|m| m.number != 0 && m.number <= to) {
        match m.state {
            State::Running | State::RollingBack => {
                return Err(Error::Refused(format!(
                    "migration {} is {} part-way; finish it (`migrate up --resume`) or undo it (`migrate rollback`) before a baseline; nothing was marked",
                    m.name, m.state
                )))
            }
            State::Pending | State::Failed | State::RolledBack => targets.push(m),
            _ => {}
        }
    }
    Ok(targets)
}

/// An applied migration whose record holds a checksum that is not its source's (drift), as
/// `migrate repair` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumRepair {
    /// The migration.
    pub name: String,
    /// The name of its record: the migration's, or the JavaScript runner's (`.js`).
    pub record: String,
    /// The checksum the record holds.
    pub recorded: String,
    /// Its source's checksum today.
    pub checksum: String,
}

/// What `repair` records today's checksum on: every applied migration whose source changed
/// since (see [`State::Changed`]).
pub fn repair_targets(plan: &[MigrationStatus]) -> Vec<ChecksumRepair> {
    plan.iter()
        .filter(|m| m.state == State::Changed)
        .filter_map(|m| {
            let record = m.record.as_ref()?;
            Some(ChecksumRepair {
                name: m.name.clone(),
                record: record.name.clone(),
                recorded: record.checksum.clone(),
                checksum: m.checksum.clone()?,
            })
        })
        .collect()
}

/// Whether before-images of `name` belong to a migration that is applied or partly applied
/// (otherwise nothing will ever restore them).
pub fn owns_before_images(plan: &[MigrationStatus], name: &str) -> bool {
    plan.iter().any(|m| m.name == name && m.state.is_touched())
}

/// `last _id 123 (4000 scanned, 3990 modified)` for messages.
pub fn describe_checkpoint(cp: &Document) -> String {
    let n = |k: &str| int_field(cp, k);
    let last = match cp.get("lastId") {
        None => "-".into(),
        id => crate::engine::bson_ext::show(id),
    };
    format!(
        "last _id {last} ({} scanned, {} modified)",
        n("scanned"),
        n("modified")
    )
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
