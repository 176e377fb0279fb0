//! Progress: a line every few seconds in the log (and on stderr when there is no bar), so
//! `tail -f logs/migration.log` shows where a run is, and the same numbers to a
//! [`ProgressView`] when the caller shows one (the command line draws a bar on a terminal).

use super::checkpoint::Stats;
use std::time::{Duration, Instant};

/// Where a backfill's progress is drawn besides the log. The engine knows no terminal: the
/// command line implements this with a progress bar.
pub trait ProgressView: Send + Sync + std::fmt::Debug {
    /// A backfill starts: `done` of about `total` documents were scanned by an earlier,
    /// interrupted run.
    fn start(&self, label: &str, total: u64, done: u64) -> Box<dyn ProgressShown>;
}

/// One backfill's progress while it is drawn. Dropped without [`ProgressShown::finish`], the
/// backfill stopped early (an error or a signal).
pub trait ProgressShown: Send {
    /// `scanned` documents so far (may pass the first estimate of the total).
    fn update(&mut self, scanned: u64);
    /// The backfill ended: stop drawing.
    fn finish(self: Box<Self>);
}

/// Target of progress log lines (kept off stderr while a bar is shown).
pub const PROGRESS_TARGET: &str = "mongo_migrate::progress";
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Tracks and shows one backfill's progress.
pub struct Progress {
    label: String,
    total: u64,
    shown: Option<Box<dyn ProgressShown>>,
    started: Instant,
    start_count: u64,
    last_log: Instant,
}

impl Progress {
    /// Starts showing progress; `done` is what an earlier (interrupted) run already scanned.
    pub fn start(label: &str, total: u64, done: u64, view: Option<&dyn ProgressView>) -> Self {
        let shown = view.map(|view| view.start(label, total, done));
        Progress {
            label: label.to_string(),
            total,
            shown,
            started: Instant::now(),
            start_count: done,
            last_log: Instant::now(),
        }
    }

    /// Updates after a checkpointed batch; logs a line every few seconds.
    pub fn update(&mut self, stats: &Stats) {
        if let Some(shown) = &mut self.shown {
            shown.update(stats.scanned);
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
        if let Some(shown) = self.shown.take() {
            shown.finish();
        }
        self.log(stats);
    }
}
