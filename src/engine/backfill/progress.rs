//! Progress: a line every few seconds in the log (and on stderr when there is no bar), so
//! `tail -f logs/migration.log` shows where a run is, and the same numbers to a
//! [`ProgressView`] when the caller shows one (the command line draws a bar on a terminal).

use super::checkpoint::Stats;
use mongodb::bson::{doc, Bson, Document};
use std::collections::VecDeque;
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
    /// The throttle state changed: `message` says how (empty when no longer throttled).
    fn message(&mut self, _message: &str) {}
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
    /// `(when, scanned)` over the last minute, for the live rate.
    window: VecDeque<(Instant, u64)>,
}

/// The live rate is measured over this much of the recent past.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The throttle as the live progress shows it.
#[derive(Debug, Clone, Default)]
pub struct ThrottleView {
    /// Why dispatch is held or slowed, `None` when it is not.
    pub reason: Option<String>,
    /// The rate limit in force.
    pub max_docs_per_sec: Option<f64>,
    /// The last replication lag read, and the limit.
    pub lag: Option<Duration>,
    /// The lag limit.
    pub max_lag: Option<Duration>,
    /// `auto` or the fixed size in force.
    pub batch_mode: String,
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
            window: VecDeque::from([(Instant::now(), done)]),
        }
    }

    /// Documents per second over the last minute (since the start when younger).
    pub fn rate(&mut self, scanned: u64) -> f64 {
        let now = Instant::now();
        self.window.push_back((now, scanned));
        // Keep one sample older than the window as its baseline.
        while self.window.len() > 2 && now.duration_since(self.window[1].0) >= RATE_WINDOW {
            self.window.pop_front();
        }
        let (since, base) = self.window[0];
        let secs = now.duration_since(since).as_secs_f64();
        if secs < 1e-3 {
            return 0.0;
        }
        scanned.saturating_sub(base) as f64 / secs
    }

    /// The live progress the tracking record carries (`heartbeatAt` is added when stored).
    pub fn record(
        &mut self,
        stats: &Stats,
        batch_size: usize,
        throttle: &ThrottleView,
        holder: &crate::engine::store::Actor,
    ) -> Document {
        let rate = self.rate(stats.scanned);
        let total = self.total.max(stats.scanned);
        let eta = if rate > 0.0 {
            Bson::Int64((total.saturating_sub(stats.scanned) as f64 / rate).ceil() as i64)
        } else {
            Bson::Null
        };
        let opt = |v: Option<f64>| v.map_or(Bson::Null, Bson::Double);
        doc! {
            "scanned": stats.scanned as i64,
            "total": total as i64,
            "docsPerSec": (rate * 10.0).round() / 10.0,
            "etaSeconds": eta,
            "batchSize": batch_size as i64,
            "throttle": {
                "state": if throttle.reason.is_some() { "throttled" } else { "none" },
                "reason": throttle.reason.clone().map_or(Bson::Null, Bson::String),
                "maxDocsPerSec": opt(throttle.max_docs_per_sec),
                "lagSeconds": opt(throttle.lag.map(|l| l.as_secs_f64())),
                "maxLagSeconds": opt(throttle.max_lag.map(|l| l.as_secs_f64())),
                "batchSizeMode": &throttle.batch_mode,
            },
            "holder": { "host": &holder.host, "pid": holder.pid as i64, "user": &holder.user },
        }
    }

    /// Shows a change of throttle state on the bar.
    pub fn message(&mut self, message: &str) {
        if let Some(shown) = &mut self.shown {
            shown.message(message);
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
