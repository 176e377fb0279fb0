//! What the dispatch loop asks before each batch: how long to wait and how large to make it.
//! It joins the run's own limits, the ones `migrate throttle` set live, the rate throttle, the
//! lag gate fed by the health probe, and the batch-size tuner; the decisions themselves are in
//! `tuning.rs` and `throttle.rs`. Every change of throttle state goes to the log and the bar
//! here, and is flagged for the loop to store in the live progress.

use super::health::Probe;
use super::progress::{Progress, ThrottleView};
use super::throttle::Throttle;
use super::tuning::{BatchTuner, Gate, LagGate};
use crate::engine::control::{BatchSize, Overrides};
use crate::engine::migration::Context;
use std::time::Duration;
use tracing::{info, warn};

/// What to do before the next dispatch.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// Dispatch now.
    Go,
    /// Pace the rate: wait this long, then dispatch.
    Pace(Duration),
    /// The cluster is unhealthy: dispatch nothing, look again in a while.
    Held(Duration),
}

/// One backfill's limits and tuning.
pub struct Governor {
    own_rate: Option<f64>,
    own_batch: BatchSize,
    target: Duration,
    throttle: Throttle,
    batch: BatchSize,
    tuner: BatchTuner,
    gate: Option<(LagGate, Probe)>,
    overrides: Overrides,
    retries_seen: u64,
    changed: bool,
}

impl Governor {
    /// The limits `ctx`'s run started with.
    pub fn new(ctx: &Context) -> Self {
        let o = ctx.options();
        let own_batch = if o.auto_batch {
            BatchSize::Auto
        } else {
            BatchSize::Fixed(o.batch_size.max(1))
        };
        let gate = o
            .max_replication_lag
            .filter(|_| !o.dry_run)
            .map(|max| (LagGate::new(max), Probe::new(ctx.db())));
        Governor {
            own_rate: o.max_docs_per_sec,
            own_batch,
            target: o.target_batch,
            throttle: Throttle::new(o.max_docs_per_sec),
            batch: own_batch,
            tuner: BatchTuner::new(o.batch_size.max(1), o.target_batch)
                .with_ceiling(super::tuning::AUTO_DOCS_IN_FLIGHT / o.concurrency.max(1)),
            gate,
            overrides: Overrides::default(),
            retries_seen: super::retry::transient_retries(),
            changed: false,
        }
    }

    /// Before a dispatch: applies limits set live, reads health when due, and says how long to
    /// wait.
    pub async fn before_dispatch(&mut self, ctx: &Context, progress: &mut Progress) -> Wait {
        let overrides = ctx.live().overrides();
        if overrides != self.overrides {
            self.overrides = overrides;
            self.throttle
                .set_rate(self.overrides.max_docs_per_sec.or(self.own_rate));
            self.batch = self.overrides.batch_size.unwrap_or(self.own_batch);
            info!(migration = ctx.name(), max_docs_per_sec = %self.throttle.rate().map_or("unthrottled".to_string(), |r| r.to_string()), batch_size = %self.batch, "limits changed");
            self.announce(progress);
        }
        let retries = super::retry::transient_retries();
        if retries > self.retries_seen {
            self.retries_seen = retries;
            // A fixed size stays as the operator set it: only an auto size is halved.
            let auto = self.batch == BatchSize::Auto;
            if let Some((old, new)) = auto.then(|| self.tuner.transient_error()).flatten() {
                self.batch_changed(ctx, old, new, "a transient error was retried");
            }
        }
        let mut change = None;
        if let Some((gate, probe)) = &mut self.gate {
            if let Some(sample) = probe.sample(ctx.name()).await {
                change = gate.sample(sample);
            }
        }
        if let Some(change) = change {
            match &change {
                Gate::Held(why) => warn!(migration = ctx.name(), "throttled: {why}"),
                Gate::Open => info!(
                    migration = ctx.name(),
                    "throttle lifted: the cluster is healthy again"
                ),
            }
            self.announce(progress);
        }
        if let Some((gate, _)) = &self.gate {
            if let Gate::Held(_) = gate.gate() {
                return Wait::Held(gate.delay());
            }
        }
        match self.throttle.delay() {
            d if d.is_zero() => Wait::Go,
            d => Wait::Pace(d),
        }
    }

    fn announce(&mut self, progress: &mut Progress) {
        self.changed = true;
        let message = self
            .view()
            .reason
            .map(|why| format!("throttled: {why}"))
            .unwrap_or_default();
        progress.message(&message);
    }

    /// True once after each change of throttle state, so it is stored in the live progress
    /// even when no batch is written meanwhile.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The size of the next batch. An auto size is kept to half the rate limit, so a throttled
    /// run still writes a batch at least twice a second and its rate stays even.
    pub fn batch_size(&self) -> usize {
        match self.batch {
            BatchSize::Fixed(n) => n,
            BatchSize::Auto => {
                let size = self.tuner.size();
                match self.throttle.rate() {
                    Some(rate) => size.min(((rate / 2.0) as usize).max(1)),
                    None => size,
                }
            }
        }
    }

    /// A batch of `docs` documents was dispatched.
    pub fn dispatched(&mut self, docs: usize) {
        self.throttle.dispatched(docs as u64);
    }

    /// A scan batch of `docs` documents took `latency` to write.
    pub fn batch_done(&mut self, ctx: &Context, docs: usize, latency: Duration) {
        if self.batch != BatchSize::Auto {
            return;
        }
        if let Some((old, new)) = self.tuner.observe(docs, latency) {
            let why = format!(
                "a batch of {docs} took {} ms to write, target {} ms",
                latency.as_millis(),
                self.target.as_millis()
            );
            self.batch_changed(ctx, old, new, &why);
        }
    }

    /// Logged at debug level: auto sizing changes the size about twice a second, which at info
    /// level drowned the log; the size in use is in every progress record.
    fn batch_changed(&mut self, ctx: &Context, old: usize, new: usize, why: &str) {
        tracing::debug!(
            migration = ctx.name(),
            "batch size {old} -> {new} (auto): {why}"
        );
    }

    /// The throttle as the live progress shows it.
    pub fn view(&self) -> ThrottleView {
        let held = self.gate.as_ref().and_then(|(g, _)| match g.gate() {
            Gate::Held(why) => Some(why.clone()),
            Gate::Open => None,
        });
        let rate = self.throttle.rate();
        ThrottleView {
            reason: held.or_else(|| rate.map(|r| format!("rate limit {r:.0} docs/s"))),
            max_docs_per_sec: rate,
            lag: self.gate.as_ref().and_then(|(g, _)| g.last_lag()),
            max_lag: self.gate.as_ref().map(|(g, _)| g.max_lag()),
            batch_mode: self.batch.to_string(),
        }
    }
}
