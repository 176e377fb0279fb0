//! Paces batches so the average rate stays under `--max-docs-per-sec`.

use std::time::Duration;
use tokio::time::Instant;

/// Paces dispatches: after `n` documents, the next batch may start no earlier than
/// `start + n / rate`, so the long-run rate never exceeds the limit (bursts are one batch).
#[derive(Debug)]
pub struct Throttle {
    rate: Option<f64>,
    start: Instant,
    dispatched: u64,
}

impl Throttle {
    /// `rate` in documents per second; `None` never waits.
    pub fn new(rate: Option<f64>) -> Self {
        Throttle {
            rate,
            start: Instant::now(),
            dispatched: 0,
        }
    }

    /// How long to wait before dispatching more, given what was dispatched so far.
    pub fn delay(&self) -> Duration {
        match self.rate {
            Some(rate) => {
                let due = Duration::from_secs_f64(self.dispatched as f64 / rate);
                due.saturating_sub(self.start.elapsed())
            }
            None => Duration::ZERO,
        }
    }

    /// The limit in force.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// Changes the limit (`migrate throttle`): pacing starts over from now at the new rate, so
    /// neither the documents dispatched under the old rate nor the time spent count against it.
    pub fn set_rate(&mut self, rate: Option<f64>) {
        if rate != self.rate {
            *self = Throttle::new(rate);
        }
    }

    /// Records a dispatched batch of `docs` documents.
    pub fn dispatched(&mut self, docs: u64) {
        self.dispatched += docs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unthrottled_never_waits() {
        let mut t = Throttle::new(None);
        t.dispatched(1_000_000);
        assert_eq!(t.delay(), Duration::ZERO);
    }

    #[test]
    fn a_new_rate_paces_from_the_change_on() {
        let mut t = Throttle::new(Some(100.0));
        t.dispatched(10_000);
        assert!(t.delay() > Duration::from_secs(90));
        t.set_rate(Some(2000.0));
        assert_eq!(t.delay(), Duration::ZERO, "the old backlog is forgotten");
        t.dispatched(2000);
        assert!(t.delay() > Duration::from_millis(900), "{:?}", t.delay());
        t.set_rate(None);
        assert_eq!(t.delay(), Duration::ZERO);
    }

    #[test]
    fn delay_grows_with_dispatched_documents() {
        let mut t = Throttle::new(Some(1000.0));
        assert_eq!(t.delay(), Duration::ZERO);
        t.dispatched(5000);
        let d = t.delay();
        assert!(
            d > Duration::from_millis(4900) && d <= Duration::from_secs(5),
            "{d:?}"
        );
    }
}
