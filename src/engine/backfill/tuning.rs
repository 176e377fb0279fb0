//! The dispatch loop's decisions, without I/O: how large the next batch is, and whether the
//! cluster's health says to hold dispatch. Lag samples and batch latencies go in; a delay and a
//! batch size come out. The loop feeds it what it measures (see `pipeline.rs` and
//! `health.rs`), so every rule here is tested on simulated sequences.

use std::time::Duration;

/// Smallest auto-sized batch: below this the per-batch round trips dominate.
pub const AUTO_BATCH_MIN: usize = 100;
/// Largest auto-sized batch: memory stays bounded by this times `--concurrency` documents, and a
/// redone batch (after a crash) stays small.
pub const AUTO_BATCH_MAX: usize = 10_000;
/// Documents all batches in flight may hold together when sized automatically: the ceiling of
/// an auto-sized batch is this over `--concurrency`. Memory follows the documents in flight
/// (about 6 KiB each through the driver, the before-images and the guards), and a run of 003 on
/// 100,000 users peaked at 90 MiB when batches could grow to 10,000 with 4 in flight, against
/// 43 MiB at 1000; 6000 in flight keeps peak RSS under 64 MiB.
pub const AUTO_DOCS_IN_FLIGHT: usize = 6_000;
/// A batch slower than this many times the target is a latency spike: the size halves at once.
const SPIKE: f64 = 3.0;
/// A batch may grow by at most this factor per batch written, so one unusually fast batch
/// cannot make the next one huge.
const MAX_GROWTH: f64 = 1.5;
/// Changes smaller than this fraction are not made, so the size does not jitter with noise.
const DEADBAND: f64 = 0.1;
/// While held, health is looked at again after this long.
pub const HOLD_RECHECK: Duration = Duration::from_secs(1);

/// Tunes the batch size so each batch's write takes about `target`.
///
/// It keeps a smoothed write time per document and sizes the next batch to fill the target with
/// it: per-document time falls as batches grow (the per-batch overhead is shared), so the size
/// climbs step by step on a quiet server and settles where the target is met. A spike (a batch
/// over three times the target) or a transient error halves it at once and forgets the estimate.
#[derive(Debug, Clone)]
pub struct BatchTuner {
    size: usize,
    ceiling: usize,
    target: Duration,
    per_doc_ms: Option<f64>,
}

impl BatchTuner {
    /// Starts at `start` (clamped to the bounds).
    pub fn new(start: usize, target: Duration) -> Self {
        BatchTuner {
            size: start.clamp(AUTO_BATCH_MIN, AUTO_BATCH_MAX),
            ceiling: AUTO_BATCH_MAX,
            target,
            per_doc_ms: None,
        }
    }

    /// Never grows past `ceiling` (within the bounds), e.g. to keep the documents of every batch
    /// in flight under [`AUTO_DOCS_IN_FLIGHT`].
    pub fn with_ceiling(mut self, ceiling: usize) -> Self {
        self.ceiling = ceiling.clamp(AUTO_BATCH_MIN, AUTO_BATCH_MAX);
        self.size = self.size.min(self.ceiling);
        self
    }

    /// The size of the next batch.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A batch of `docs` documents took `latency` to write. Returns `Some((old, new))` when the
    /// size changed.
    pub fn observe(&mut self, docs: usize, latency: Duration) -> Option<(usize, usize)> {
        if docs == 0 {
            return None;
        }
        let old = self.size;
        let ms = latency.as_secs_f64() * 1000.0;
        let target = self.target.as_secs_f64() * 1000.0;
        if ms > SPIKE * target {
            return self.halve();
        }
        let sample = ms / docs as f64;
        let per_doc = match self.per_doc_ms {
            Some(estimate) => 0.7 * estimate + 0.3 * sample,
            None => sample,
        };
        self.per_doc_ms = Some(per_doc);
        let ideal = target / per_doc.max(1e-6);
        let current = old as f64;
        let next = ideal.clamp(current / 2.0, current * MAX_GROWTH);
        if (next - current).abs() < DEADBAND * current {
            return None;
        }
        self.size = (next.round() as usize).clamp(AUTO_BATCH_MIN, self.ceiling);
        (self.size != old).then_some((old, self.size))
    }

    /// A transient error (network, failover) was retried: halve.
    pub fn transient_error(&mut self) -> Option<(usize, usize)> {
        self.halve()
    }

    fn halve(&mut self) -> Option<(usize, usize)> {
        let old = self.size;
        self.size = (old / 2).max(AUTO_BATCH_MIN);
        self.per_doc_ms = None;
        (self.size != old).then_some((old, self.size))
    }
}

/// What the health probe read (`None`: the server does not report it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HealthSample {
    /// How far the slowest secondary is behind the primary.
    pub lag: Option<Duration>,
    /// `serverStatus.flowControl.isLagged`.
    pub flow_control_lagged: Option<bool>,
}

/// Whether dispatch may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Dispatch.
    Open,
    /// Hold, and why (for the log, the bar and the live progress).
    Held(String),
}

/// Holds dispatch while the lag is over `max_lag` or flow control says the majority lags.
#[derive(Debug, Clone)]
pub struct LagGate {
    max_lag: Duration,
    gate: Gate,
    last_lag: Option<Duration>,
}

impl LagGate {
    /// Open until a sample says otherwise.
    pub fn new(max_lag: Duration) -> Self {
        LagGate {
            max_lag,
            gate: Gate::Open,
            last_lag: None,
        }
    }

    /// Takes a sample; returns the new gate when it changed.
    pub fn sample(&mut self, sample: HealthSample) -> Option<Gate> {
        self.last_lag = sample.lag.or(self.last_lag);
        let next = match sample.lag {
            Some(lag) if lag > self.max_lag => Gate::Held(format!(
                "replication lag {} s > {} s",
                lag.as_secs(),
                self.max_lag.as_secs()
            )),
            _ if sample.flow_control_lagged == Some(true) => {
                Gate::Held("flow control: the majority is lagging".into())
            }
            _ => Gate::Open,
        };
        // Held for another number of seconds is the same state: the reason is kept current for
        // the live progress, but only a change of state is reported.
        let same = matches!(
            (&next, &self.gate),
            (Gate::Open, Gate::Open) | (Gate::Held(_), Gate::Held(_))
        );
        self.gate = next.clone();
        (!same).then_some(next)
    }

    /// The current gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// How long to wait before dispatching: nothing while open, a recheck period while held.
    pub fn delay(&self) -> Duration {
        match self.gate {
            Gate::Open => Duration::ZERO,
            Gate::Held(_) => HOLD_RECHECK,
        }
    }

    /// The last lag read, if any.
    pub fn last_lag(&self) -> Option<Duration> {
        self.last_lag
    }

    /// The limit.
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A server whose batch write costs `fixed` ms plus `per_doc` ms per document.
    fn run(tuner: &mut BatchTuner, batches: usize, fixed: f64, per_doc: f64) -> Vec<usize> {
        (0..batches)
            .map(|_| {
                let n = tuner.size();
                let latency = Duration::from_secs_f64((fixed + per_doc * n as f64) / 1000.0);
                tuner.observe(n, latency);
                tuner.size()
            })
            .collect()
    }

    #[test]
    fn a_quiet_server_grows_the_batch_until_the_target_is_met() {
        let mut t = BatchTuner::new(1000, ms(500));
        // 40 ms per batch plus 0.1 ms per document: 4600 documents fill 500 ms.
        let sizes = run(&mut t, 30, 40.0, 0.1);
        assert!(sizes[0] > 1000, "{sizes:?}");
        assert!(sizes.windows(2).all(|w| w[1] >= w[0]), "{sizes:?}");
        let last = *sizes.last().unwrap();
        assert!((4000..=5200).contains(&last), "{sizes:?}");
    }

    #[test]
    fn growth_is_bounded_per_batch_and_overall() {
        let mut t = BatchTuner::new(1000, ms(500));
        let sizes = run(&mut t, 40, 1.0, 0.001);
        assert_eq!(sizes[0], 1500, "at most half as large again per batch");
        assert_eq!(*sizes.last().unwrap(), AUTO_BATCH_MAX);
    }

    #[test]
    fn a_slow_server_shrinks_the_batch_to_the_lower_bound_at_most() {
        let mut t = BatchTuner::new(1000, ms(500));
        // 1 ms per document: 500 documents fill the target.
        let sizes = run(&mut t, 10, 0.0, 1.0);
        assert!((450..=550).contains(sizes.last().unwrap()), "{sizes:?}");
        let mut slow = BatchTuner::new(1000, ms(500));
        let sizes = run(&mut slow, 20, 0.0, 20.0);
        assert_eq!(*sizes.last().unwrap(), AUTO_BATCH_MIN, "{sizes:?}");
    }

    #[test]
    fn a_latency_spike_halves_at_once_and_the_size_recovers_after() {
        let mut t = BatchTuner::new(4000, ms(500));
        run(&mut t, 5, 40.0, 0.1);
        let before = t.size();
        assert_eq!(t.observe(before, ms(2000)), Some((before, before / 2)));
        let after = run(&mut t, 20, 40.0, 0.1);
        assert!(*after.last().unwrap() >= before * 9 / 10, "{after:?}");
    }

    #[test]
    fn transient_errors_halve_down_to_the_lower_bound() {
        let mut t = BatchTuner::new(1000, ms(500));
        assert_eq!(t.transient_error(), Some((1000, 500)));
        assert_eq!(t.transient_error(), Some((500, 250)));
        assert_eq!(t.transient_error(), Some((250, 125)));
        assert_eq!(t.transient_error(), Some((125, AUTO_BATCH_MIN)));
        assert_eq!(t.transient_error(), None);
        assert_eq!(t.size(), AUTO_BATCH_MIN);
    }

    #[test]
    fn noise_within_the_deadband_changes_nothing() {
        let mut t = BatchTuner::new(1000, ms(500));
        // Right on target, give or take 5%.
        for latency in [500, 520, 480, 510, 490] {
            assert_eq!(t.observe(1000, ms(latency)), None);
        }
        assert_eq!(t.size(), 1000);
    }

    fn lag(secs: u64) -> HealthSample {
        HealthSample {
            lag: Some(Duration::from_secs(secs)),
            flow_control_lagged: Some(false),
        }
    }

    #[test]
    fn lag_over_the_limit_holds_until_it_recovers() {
        let mut g = LagGate::new(Duration::from_secs(10));
        let mut changes = Vec::new();
        for s in [0, 3, 9, 10, 14, 30, 12, 8, 2] {
            if let Some(change) = g.sample(lag(s)) {
                changes.push((s, change));
            }
        }
        assert_eq!(
            changes,
            vec![
                (14, Gate::Held("replication lag 14 s > 10 s".into())),
                (8, Gate::Open)
            ],
            "one change into the hold at the first sample over, one out at the first under"
        );
        assert_eq!(g.delay(), Duration::ZERO);
    }

    #[test]
    fn a_held_gate_delays_and_a_single_spike_holds_once() {
        let mut g = LagGate::new(Duration::from_secs(10));
        assert!(g.sample(lag(40)).is_some());
        assert_eq!(g.delay(), HOLD_RECHECK);
        // The reason follows the lag, but the gate stays held: no new change.
        assert_eq!(g.sample(lag(35)), None);
        assert_eq!(g.sample(lag(1)), Some(Gate::Open));
        assert_eq!(g.last_lag(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn flow_control_holds_even_with_no_lag_reported() {
        let mut g = LagGate::new(Duration::from_secs(10));
        let lagged = HealthSample {
            lag: None,
            flow_control_lagged: Some(true),
        };
        assert!(matches!(g.sample(lagged), Some(Gate::Held(why)) if why.contains("flow control")));
        assert_eq!(g.sample(HealthSample::default()), Some(Gate::Open));
    }

    #[test]
    fn a_server_that_reports_nothing_never_holds() {
        let mut g = LagGate::new(Duration::from_secs(10));
        for _ in 0..5 {
            assert_eq!(g.sample(HealthSample::default()), None);
        }
        assert_eq!(*g.gate(), Gate::Open);
    }

    #[test]
    fn a_ceiling_caps_growth_and_the_start() {
        let mut tuner = BatchTuner::new(5000, Duration::from_millis(500)).with_ceiling(1500);
        assert_eq!(tuner.size(), 1500);
        for _ in 0..20 {
            tuner.observe(tuner.size(), Duration::from_millis(10));
        }
        assert_eq!(tuner.size(), 1500);
        let below = BatchTuner::new(1000, Duration::from_millis(500)).with_ceiling(1);
        assert_eq!(below.size(), AUTO_BATCH_MIN);
    }
}
