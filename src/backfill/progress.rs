//! Progress: an indicatif bar on stderr when it is a terminal, and a progress line every few
//! seconds in the log (and on stderr when there is no bar), so `tail -f logs/migration.log`
//! shows where a run is.

use super::checkpoint::Stats;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Target of progress log lines (kept off stderr while a bar is shown).
pub const PROGRESS_TARGET: &str = "mongo_migrate::progress";
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Tracks and shows one backfill's progress.
pub struct Progress {
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    start_count: u64,
    last_log: Instant,
}

impl Progress {
    /// Starts showing progress; `done` is what an earlier (interrupted) run already scanned.
    pub fn start(label: &str, total: u64, done: u64, show_bar: bool) -> Self {
        let bar = (show_bar && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total.max(done));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40.cyan/blue}] {human_pos}/{human_len} ({rate}, ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} docs/s", state.per_sec());
                    },
                )
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar.set_position(done);
            bar.enable_steady_tick(Duration::from_millis(200));
            crate::logging::set_progress_bar(Some(bar.clone()));
            bar
        });
        Progress {
            label: label.to_string(),
            total,
            bar,
            started: Instant::now(),
            start_count: done,
            last_log: Instant::now(),
        }
    }

    /// Updates after a checkpointed batch; logs a line every few seconds.
    pub fn update(&mut self, stats: &Stats) {
        if let Some(bar) = &self.bar {
            if stats.scanned > bar.length().unwrap_or(0) {
                bar.set_length(stats.scanned);
            }
            bar.set_position(stats.scanned);
        }
        if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            self.log(stats);
        }
    }

    fn log(&self, stats: &Stats) {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = stats.scanned.saturating_sub(self.start_count) as f64 / elapsed;
        let total = self.total.max(stats.scanned);
        let eta = if rate > 0.0 {
            format!("{:.0}s", total.saturating_sub(stats.scanned) as f64 / rate)
        } else {
            "-".into()
        };
        let pct = if total > 0 {
            100.0 * stats.scanned as f64 / total as f64
        } else {
            100.0
        };
        tracing::info!(
            target: PROGRESS_TARGET,
            scanned = stats.scanned,
            modified = stats.modified,
            invalid = stats.invalid,
            "{}: {}/{} ({pct:.1}%), {rate:.0} docs/s, ETA {eta}",
            self.label,
            stats.scanned,
            total
        );
    }

    /// Clears the bar and logs the final line.
    pub fn finish(mut self, stats: &Stats) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            crate::logging::set_progress_bar(None);
        }
        self.log(stats);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
            crate::logging::set_progress_bar(None);
        }
    }
}
