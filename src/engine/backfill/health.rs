//! Reads the cluster's health for the lag gate (see `tuning.rs`): the secondaries' lag from
//! `replSetGetStatus` (member optimes) and `serverStatus.flowControl.isLagged`, no more than once
//! a second. A server that refuses both (a standalone, a user without the `clusterMonitor`
//! role) is said once to have no lag throttling, and is not asked again.

use super::tuning::HealthSample;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Whether this process said yet how lag throttling stands: once per run, not once per backfill.
static ANNOUNCED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Health is read at most this often.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The probe of one backfill.
pub struct Probe {
    admin: Database,
    last: Option<Instant>,
    lag_available: bool,
    flow_available: bool,
}

impl Probe {
    /// A probe over the deployment of `db`.
    pub fn new(db: &Database) -> Self {
        Probe {
            admin: db.client().database("admin"),
            last: None,
            lag_available: true,
            flow_available: true,
        }
    }

    /// A new sample when a second has passed since the last one, else `None`.
    pub async fn sample(&mut self, migration: &str) -> Option<HealthSample> {
        if self.last.is_some_and(|t| t.elapsed() < PROBE_EVERY)
            || !(self.lag_available || self.flow_available)
        {
            return None;
        }
        self.last = Some(Instant::now());
        let mut sample = HealthSample::default();
        if self.lag_available {
            match self.admin.run_command(doc! { "replSetGetStatus": 1 }).await {
                Ok(status) => sample.lag = Some(lag_of(&status)),
                Err(e) => {
                    self.lag_available = false;
                    tracing::debug!(error = %e, "replSetGetStatus refused");
                }
            }
        }
        if self.flow_available {
            // Only the section needed: the heavy ones are left out.
            let command = doc! {
                "serverStatus": 1, "flowControl": 1, "metrics": 0, "wiredTiger": 0,
                "locks": 0, "tcmalloc": 0, "opLatencies": 0,
            };
            match self.admin.run_command(command).await {
                Ok(status) => {
                    sample.flow_control_lagged = status
                        .get_document("flowControl")
                        .ok()
                        .and_then(|f| f.get_bool("isLagged").ok());
                }
                Err(e) => {
                    self.flow_available = false;
                    tracing::debug!(error = %e, "serverStatus refused");
                }
            }
        }
        if !ANNOUNCED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            match sample.lag {
                Some(lag) => info!(
                    migration,
                    "lag throttling on: replication lag {} s, read from replSetGetStatus",
                    lag.as_secs()
                ),
                None => warn!(
                    migration,
                    "lag throttling unavailable: the server answers no replSetGetStatus (a standalone, or no clusterMonitor role); going on without it"
                ),
            }
        }
        Some(sample)
    }
}

/// How far the slowest secondary is behind the primary (or, with no primary in view, the most
/// advanced member); zero with no secondaries.
pub fn lag_of(status: &Document) -> Duration {
    let members: Vec<&Document> = status
        .get_array("members")
        .map(|m| m.iter().filter_map(Bson::as_document).collect())
        .unwrap_or_default();
    let optime = |m: &Document| {
        m.get_datetime("optimeDate")
            .ok()
            .map(|t| t.timestamp_millis())
    };
    let state = |m: &Document| crate::engine::bson_ext::int_field(m, "state");
    let primary = members
        .iter()
        .filter(|m| state(m) == 1)
        .find_map(|m| optime(m));
    let Some(reference) = primary.or_else(|| members.iter().filter_map(|m| optime(m)).max()) else {
        return Duration::ZERO;
    };
    let behind = members
        .iter()
        .filter(|m| state(m) == 2)
        .filter_map(|m| optime(m))
        .map(|t| reference.saturating_sub(t).max(0))
        .max()
        .unwrap_or(0);
    Duration::from_millis(behind as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::DateTime;

    fn member(state: i32, at_ms: i64) -> Document {
        doc! { "state": state, "optimeDate": DateTime::from_millis(at_ms) }
    }

    #[test]
    fn lag_is_the_slowest_secondary_behind_the_primary() {
        let status = doc! { "members": [member(2, 86_000), member(1, 100_000), member(2, 98_000), member(7, 0)] };
        assert_eq!(lag_of(&status), Duration::from_secs(14));
    }

    #[test]
    fn a_one_member_set_has_no_lag() {
        assert_eq!(
            lag_of(&doc! { "members": [member(1, 5_000)] }),
            Duration::ZERO
        );
        assert_eq!(lag_of(&doc! {}), Duration::ZERO);
    }

    #[test]
    fn without_a_primary_in_view_the_most_advanced_member_is_the_reference() {
        let status = doc! { "members": [member(2, 50_000), member(2, 40_000)] };
        assert_eq!(lag_of(&status), Duration::from_secs(10));
    }
}
