//! How `migrate status` shows a running backfill (holder, percentage, rate, ETA, heartbeat,
//! throttle) and an interrupted one, and `status --watch`.

use super::report::print_status;
use crate::engine::error::Result;
use crate::engine::runner::{MigrationRunner, MigrationStatus, State};
use std::io::IsTerminal;
use std::time::Duration;

/// `status --watch` refreshes this often.
const REFRESH: Duration = Duration::from_secs(2);

/// The note of a running backfill, e.g. `running on db-ops-1 pid 4242, 41% (123,000 /
/// 300,000), 12.3k docs/s, ETA 2m10s, heartbeat 2s ago`.
pub(super) fn running_note(m: &MigrationStatus) -> String {
    let Some(p) = &m.progress else {
        return "running, no progress yet".into();
    };
    let holder = &p["holder"];
    let mut parts = vec![format!(
        "running on {} pid {}",
        holder["host"].as_str().unwrap_or("?"),
        holder["pid"].as_i64().map_or("?".into(), |p| p.to_string())
    )];
    if let (Some(scanned), Some(total)) = (p["scanned"].as_i64(), p["total"].as_i64()) {
        let pct = if total > 0 {
            100 * scanned / total
        } else {
            100
        };
        parts.push(format!(
            "{pct}% ({} / {})",
            thousands(scanned),
            thousands(total)
        ));
    }
    if let Some(rate) = p["docsPerSec"].as_f64() {
        parts.push(format!("{} docs/s", short(rate)));
    }
    if let Some(eta) = p["etaSeconds"].as_i64() {
        parts.push(format!("ETA {}", duration(eta)));
    }
    if let Some(age) = p["heartbeatAgeSeconds"].as_f64() {
        parts.push(format!("heartbeat {}s ago", age.round() as i64));
    }
    let throttle = &p["throttle"];
    if throttle["state"] == "throttled" {
        if let Some(why) = throttle["reason"].as_str() {
            parts.push(format!("throttled: {why}"));
        }
    }
    if let Some(size) = p["batchSize"].as_i64() {
        let mode = throttle["batchSizeMode"].as_str().unwrap_or("");
        let auto = if mode == "auto" { " (auto)" } else { "" };
        parts.push(format!("batch {size}{auto}"));
    }
    parts.join(", ")
}

/// The note of an interrupted backfill: where it stopped and how to continue.
pub(super) fn interrupted_note(m: &MigrationStatus) -> String {
    let checkpoint = m
        .record
        .as_ref()
        .and_then(|r| r.checkpoint.as_ref())
        .map(|cp| {
            format!(
                "checkpoint: {}",
                crate::engine::plan::describe_checkpoint(cp)
            )
        })
        .unwrap_or_else(|| "no checkpoint".into());
    format!("no live holder; {checkpoint}; resume with: migrate up --resume")
}

/// 123456 -> `123,456`.
fn thousands(n: i64) -> String {
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// 12345.0 -> `12.3k`.
fn short(rate: f64) -> String {
    if rate >= 1_000_000.0 {
        format!("{:.1}M", rate / 1_000_000.0)
    } else if rate >= 1000.0 {
        format!("{:.1}k", rate / 1000.0)
    } else {
        format!("{rate:.0}")
    }
}

/// 130 -> `2m10s`.
fn duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m"),
    }
}

/// Prints the status every 2 s until no migration is running (once when none is).
pub(super) async fn watch(runner: &MigrationRunner, json: bool) -> Result<()> {
    let clear = !json && std::io::stdout().is_terminal();
    loop {
        let status = runner.status().await?;
        if clear {
            // Home and clear, so the table refreshes in place.
            print!("\x1b[H\x1b[2J");
        }
        print_status(&status, json);
        if !status.iter().any(|m| m.state == State::Running) {
            return Ok(());
        }
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_the_issue_example() {
        assert_eq!(thousands(123_000), "123,000");
        assert_eq!(thousands(300), "300");
        assert_eq!(short(12_345.0), "12.3k");
        assert_eq!(short(950.0), "950");
        assert_eq!(duration(130), "2m10s");
        assert_eq!(duration(7), "7s");
        assert_eq!(duration(3 * 3600 + 60), "3h01m");
    }
}
