//! Which way a migration runs, how its call ended, and what its tracking record gets for that
//! ending: the direction-specific parts of the runner's one begin -> call -> finish path.

use crate::engine::error::Error;
use crate::engine::migration::{Context, Outcome};
use crate::engine::registry::Registered;
use crate::engine::store::{Ended, RecordStatus};
use mongodb::bson::{doc, DateTime, Document};

/// Which way a migration runs, with what its record needs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// `up`; `resume` keeps the checkpoint of an interrupted run.
    Up { resume: bool },
    /// `down`; `partial` undoes a migration that failed or was interrupted part-way.
    Down { partial: bool },
}

/// How a call of `up` or `down` ended.
pub(crate) enum Ending {
    /// It did its work (for `up`, its post-condition holds).
    Done(Outcome),
    /// A signal or a lost lock stopped it after saving its checkpoint.
    Stopped(Error),
    /// It failed; `result` is what a failed `down` reported.
    Failed { reason: String, result: Document },
}

impl Direction {
    /// The history entry's `action`.
    pub(crate) fn action(self) -> &'static str {
        match self {
            Direction::Up { .. } => "up",
            Direction::Down { .. } => "down",
        }
    }

    /// Calls the migration: `up` then its post-condition, or `down`.
    pub(crate) async fn call(self, registered: &Registered, ctx: &Context) -> Ending {
        let migration = &registered.migration;
        match self {
            Direction::Up { .. } => match migration.up(ctx).await {
                Ok(outcome) if outcome.success => match migration.verify(ctx).await {
                    Ok(()) => Ending::Done(outcome),
                    Err(e) => {
                        Ending::failed(format!("post-condition not met after up: {}", reason_of(e)))
                    }
                },
                Ok(outcome) => Ending::failed(outcome.message),
                Err(e @ (Error::Cancelled | Error::LockLost(_))) => Ending::Stopped(e),
                Err(e) => Ending::failed(reason_of(e)),
            },
            Direction::Down { .. } => match migration.down(ctx).await {
                Ok(outcome) if outcome.success => Ending::Done(outcome),
                Ok(outcome) => Ending::Failed {
                    reason: outcome.message,
                    result: outcome.result,
                },
                Err(e @ (Error::Cancelled | Error::LockLost(_))) => Ending::Stopped(e),
                // The whole message, naming the migration: the record keeps the error as it was.
                Err(e) => Ending::failed(e.to_string()),
            },
        }
    }

    /// What the record and its history get for `ending`: the history status, the fields to
    /// set, the fields to unset.
    pub(crate) fn record(self, ending: &Ending) -> (Ended, Document, &'static [&'static str]) {
        match (self, ending) {
            (Direction::Up { .. }, Ending::Done(outcome)) => (
                Ended::Completed,
                doc! {
                    "status": RecordStatus::Completed,
                    "executedAt": DateTime::now(),
                    "message": &outcome.message,
                    "result": outcome.result.clone(),
                },
                &["checkpoint", "error", "progress"],
            ),
            (Direction::Down { .. }, Ending::Done(outcome)) => (
                Ended::RolledBack,
                doc! { "status": RecordStatus::RolledBack, "rolledBackAt": DateTime::now(), "rollbackResult": outcome.result.clone() },
                &["error", "checkpoint", "progress"],
            ),
            (Direction::Up { .. }, Ending::Stopped(_)) => (
                Ended::Interrupted,
                doc! { "status": RecordStatus::Running, "interruptedAt": DateTime::now() },
                &[],
            ),
            (Direction::Down { .. }, Ending::Stopped(_)) => (
                Ended::Interrupted,
                doc! { "status": RecordStatus::RollingBack },
                &[],
            ),
            (Direction::Up { .. }, Ending::Failed { reason, .. }) => (
                Ended::Failed,
                doc! { "status": RecordStatus::Failed, "error": super::redact::redact(reason) },
                &[],
            ),
            (Direction::Down { partial }, Ending::Failed { reason, result }) => {
                // Its changes are (at least partly) still in place: it stays as it was
                // (completed, or failed for a migration whose partial writes were being undone).
                let back = if partial {
                    RecordStatus::Failed
                } else {
                    RecordStatus::Completed
                };
                let error = format!("rollback failed: {reason}");
                (
                    Ended::Failed,
                    doc! { "status": back, "error": super::redact::redact(&error), "rollbackResult": result.clone() },
                    &[],
                )
            }
        }
    }

    /// The reason a failed call is reported with.
    pub(crate) fn failure_reason(self, reason: &str) -> String {
        match self {
            Direction::Up { .. } => reason.to_string(),
            Direction::Down { .. } => format!("rollback failed: {reason}"),
        }
    }
}

impl Ending {
    fn failed(reason: String) -> Ending {
        Ending::Failed {
            reason,
            result: Document::new(),
        }
    }
}

/// A failure's reason without the `migration X failed:` prefix the record does not need.
fn reason_of(e: Error) -> String {
    match e {
        Error::Migration { reason, .. } => reason,
        other => other.to_string(),
    }
}
