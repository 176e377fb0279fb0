//! What the operator reads on stdout: the run report and the status table (or its JSON).

use super::exit_codes::ProcessExitCode;
use super::logging::print_out;
use crate::engine::error::Error;
use crate::engine::runner::{MigrationStatus, RollbackPreview, RunReport, State};

/// `println!` with the line's secrets hidden (see [`print_out`]).
macro_rules! out {
    ($($arg:tt)*) => {
        print_out(format!($($arg)*))
    };
}

pub(super) fn print_report(report: &RunReport) {
    if !report.adopted.is_empty() {
        let verb = if report.dry_run {
            "would adopt"
        } else {
            "adopted"
        };
        out!(
            "{verb} the JavaScript runner's record(s) of {}",
            report.adopted.join(", ")
        );
    }
    if report.applied.is_empty() {
        out!("nothing to migrate: every migration is applied");
        return;
    }
    for applied in &report.applied {
        let verb = if report.dry_run {
            "would apply"
        } else {
            "applied"
        };
        out!(
            "{verb} {} in {:.1}s: {}",
            applied.name,
            applied.duration.as_secs_f64(),
            applied.outcome.message
        );
        if report.dry_run && !applied.outcome.result.is_empty() {
            let json = mongodb::bson::Bson::Document(applied.outcome.result.clone())
                .into_relaxed_extjson();
            out!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
    }
    if report.dry_run {
        out!("dry run: nothing was written");
    }
}

/// BSON values (dates, ObjectIds, 64-bit counters) as relaxed extended JSON: dates as
/// ISO-8601 strings, numbers as plain numbers.
fn relaxed_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    match mongodb::bson::to_bson(value) {
        Ok(bson) => bson.into_relaxed_extjson(),
        Err(e) => serde_json::json!({ "error": format!("cannot serialize: {e}") }),
    }
}

/// `up --json`: what was applied (or would be), what was adopted, and the error if any.
pub(super) fn print_report_json(report: &RunReport, error: Option<&Error>) {
    let applied: Vec<serde_json::Value> = report
        .applied
        .iter()
        .map(|a| {
            serde_json::json!({
                "name": a.name,
                "success": a.outcome.success,
                "message": a.outcome.message,
                "durationMs": a.duration.as_millis() as u64,
                "result": mongodb::bson::Bson::Document(a.outcome.result.clone()).into_relaxed_extjson(),
            })
        })
        .collect();
    let mut doc = serde_json::json!({
        "ok": error.is_none(),
        "dryRun": report.dry_run,
        "adopted": report.adopted,
        "applied": applied,
    });
    if let Some(e) = error {
        doc["error"] = serde_json::Value::String(e.to_string());
        doc["exitCode"] = serde_json::Value::from(e.exit_code());
    }
    out!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
}

/// `rollback --dry-run`: each migration that would be reverted and what it would restore.
pub(super) fn print_rollback_preview(previews: &[RollbackPreview], to: Option<u32>) {
    if previews.is_empty() {
        out!("{}", crate::engine::plan::nothing_to_roll_back(to));
    }
    for p in previews {
        let m = &p.status;
        let how = if !p.reversible {
            "refused: it has no down".to_string()
        } else if p.images.chunks > 0 {
            format!(
                "restores {} document(s) from its before-images ({} chunk(s)), except those changed since",
                p.images.documents, p.images.chunks
            )
        } else {
            let recorded = m
                .record
                .as_ref()
                .and_then(|r| r.result.as_ref())
                .map(summarize_result)
                .filter(|s| !s.is_empty())
                .map(|s| format!(" (its recorded result: {s})"))
                .unwrap_or_default();
            format!("runs its down{recorded}")
        };
        // The JavaScript runner kept no before-images and no list of what it created.
        let adopted =
            m.state == State::Adopted || m.record.as_ref().is_some_and(|r| r.adopted_at.is_some());
        let how = if adopted {
            format!("{how}; it was applied by the JavaScript runner, which kept no before-images, so only what its down finds without them is reverted")
        } else {
            how
        };
        let what = if p.partial {
            "would undo the partial writes of"
        } else {
            "would roll back"
        };
        out!("{what} {} ({}): {how}", m.name, m.state);
    }
    out!("dry run: nothing was written");
}

pub(super) fn print_status(status: &[MigrationStatus], json: bool) {
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&relaxed_json(&status)).unwrap_or_default()
        );
        return;
    }
    // As wide as the longest state shown, so a long one does not push its row out of line.
    let width = status
        .iter()
        .map(|m| m.state.to_string().len())
        .chain([22])
        .max()
        .unwrap_or(22);
    out!(
        "{:<4} {:<42} {:<width$} {:<20} {:>9}  NOTE",
        "#",
        "MIGRATION",
        "STATE",
        "EXECUTED AT (UTC)",
        "DURATION"
    );
    for m in status {
        let record = m.record.as_ref();
        // A migration in progress (or interrupted) shows when this attempt started, not when an
        // earlier one completed.
        let in_progress = matches!(
            m.state,
            State::Running | State::Interrupted | State::RollingBack
        );
        let when = record
            .and_then(|r| {
                if in_progress {
                    r.started_at
                } else {
                    r.executed_at.or(r.started_at)
                }
            })
            .map(|t| t.to_chrono().format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        let duration = record
            .and_then(|r| r.duration_ms)
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let note = match m.state {
            State::Running => super::live::running_note(m),
            State::Interrupted => super::live::interrupted_note(m),
            State::Failed => record.and_then(|r| r.error.clone()).unwrap_or_default(),
            State::Changed => {
                "source changed since applied: `up` refuses until restored or accepted (`migrate repair`)".into()
            }
            State::Pending => m.description.clone(),
            State::Adopted => format!(
                "recorded without a checksum{}; the next `up` adopts it",
                record
                    .filter(|r| r.name != m.name)
                    .map(|r| format!(" as {}", r.name))
                    .unwrap_or_default()
            ),
            State::UnknownStatus => format!(
                "status {:?} is not one this build knows: `up` refuses until the record is fixed or removed",
                record.map(|r| r.status.as_str()).unwrap_or("?")
            ),
            State::Unknown => match record.map(|r| &r.status) {
                Some(crate::engine::store::RecordStatus::RolledBack) => {
                    "rolled back; not in this build".to_string()
                }
                status => format!(
                    "applied ({}) but not in this build, which is older than the database's migrations: `up`, `rollback` and `baseline` refuse without --ignore-unknown",
                    status.map(|s| s.as_str()).unwrap_or("?")
                ),
            },
            State::Malformed => format!(
                "cannot be read ({}): `up` refuses until the record is fixed or removed",
                record.and_then(|r| r.error.clone()).unwrap_or_default()
            ),
            _ => {
                let summary = record
                    .and_then(|r| r.result.as_ref())
                    .map(summarize_result)
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| m.description.clone());
                match record {
                    Some(r) if m.state == State::Completed && r.baselined_at.is_some() => {
                        "marked applied by `migrate baseline`, not run".to_string()
                    }
                    Some(r) if m.state == State::Completed && r.adopted_at.is_some() => format!(
                        "adopted from the JavaScript runner's {}; {summary}",
                        r.adopted_from.as_deref().unwrap_or(&r.name)
                    ),
                    _ => summary,
                }
            }
        };
        let number = if m.number == 0 {
            "?".into()
        } else {
            format!("{:03}", m.number)
        };
        out!(
            "{number:<4} {:<42} {:<width$} {when:<20} {duration:>9}  {note}",
            m.name,
            m.state.to_string()
        );
    }
}

/// `modified=10 invalid=2 (e.g. _id 7, "u9")` from a result's top-level counters and samples.
fn summarize_result(result: &mongodb::bson::Document) -> String {
    let mut summary = result
        .iter()
        .filter_map(|(k, v)| crate::engine::bson_ext::as_int(v).map(|n| format!("{k}={n}")))
        .collect::<Vec<_>>()
        .join(" ");
    if let Ok(caught) = result.get_document("caughtUp") {
        summary.push_str(&format!(
            " caughtUp={} ({}, {} events)",
            crate::engine::backfill::int(caught, "modified"),
            caught.get_str("mode").unwrap_or("?"),
            crate::engine::backfill::int(caught, "events")
        ));
    }
    if let Ok(at) = result
        .get_document("convergedAt")
        .and_then(|c| c.get_datetime("wallTime"))
    {
        summary.push_str(&format!(
            " converged at {}",
            at.try_to_rfc3339_string().unwrap_or_default()
        ));
    }
    if let Ok(samples) = result.get_array("invalidSamples") {
        let ids: Vec<String> = samples
            .iter()
            .filter_map(|s| {
                s.as_document()?
                    .get("_id")
                    .map(|id| id.clone().into_relaxed_extjson().to_string())
            })
            .take(5)
            .collect();
        if !ids.is_empty() {
            summary.push_str(&format!(" (invalid e.g. _id {})", ids.join(", ")));
        }
    }
    summary
}
