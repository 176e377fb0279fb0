//! What the operator reads on stdout: the run report and the status table (or its JSON).

use super::logging::print_out;
use crate::engine::runner::{MigrationStatus, RunReport, State};

/// `println!` with the line's secrets hidden (see [`print_out`]).
macro_rules! out {
    ($($arg:tt)*) => {
        print_out(format!($($arg)*))
    };
}

pub(super) fn print_report(report: &RunReport) {
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

pub(super) fn print_status(status: &[MigrationStatus], json: bool) {
    if json {
        let value = serde_json::to_value(status).unwrap_or_default();
        out!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return;
    }
    out!(
        "{:<4} {:<42} {:<22} {:<20} {:>9}  NOTE",
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
                "source changed since applied: `up` refuses until restored or --allow-drift".into()
            }
            State::Pending => m.description.clone(),
            State::UnknownStatus => format!(
                "status {:?} is not one this build knows: `up` refuses until the record is fixed or removed",
                record.map(|r| r.status.as_str()).unwrap_or("?")
            ),
            State::Malformed => format!(
                "cannot be read ({}): `up` refuses until the record is fixed or removed",
                record.and_then(|r| r.error.clone()).unwrap_or_default()
            ),
            _ => record
                .and_then(|r| r.result.as_ref())
                .map(summarize_result)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| m.description.clone()),
        };
        let number = if m.number == 0 {
            "?".into()
        } else {
            format!("{:03}", m.number)
        };
        out!(
            "{number:<4} {:<42} {:<22} {when:<20} {duration:>9}  {note}",
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
