//! Retries transient failures (network drops, failovers, the driver's retryable labels) with
//! backoff, so a blip does not end a long backfill; anything else fails at once.

use crate::engine::error::{Error, Result};
use crate::engine::migration::Stop;
use mongodb::error::{ErrorKind, RETRYABLE_WRITE_ERROR};
use std::future::IntoFuture;
use std::time::Duration;
use tracing::warn;

const ATTEMPTS: u32 = 7;

/// Transient failures retried so far in this process. The batch-size tuner halves when this
/// grows: a failover or a struggling network is the time for smaller batches. (One count per
/// process is enough: a process runs one backfill at a time.)
static TRANSIENT_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many transient failures were retried so far in this process.
pub fn transient_retries() -> u64 {
    TRANSIENT_RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a retry made elsewhere (a transaction redone after a write conflict).
pub fn count_retry() {
    TRANSIENT_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Whether `e` may pass if the operation is simply tried again.
pub fn is_transient(e: &mongodb::error::Error) -> bool {
    if e.contains_label(RETRYABLE_WRITE_ERROR)
        || e.contains_label("TransientTransactionError")
        || e.contains_label("RetryableReadError")
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. } => true,
        // NotWritablePrimary, InterruptedAtShutdown, HostUnreachable, NetworkTimeout, ...
        ErrorKind::Command(c) => matches!(
            c.code,
            6 | 7 | 89 | 91 | 189 | 10107 | 11600 | 11602 | 13435 | 13436
        ),
        _ => false,
    }
}

/// Runs `op` until it succeeds, fails permanently, or transient failures last ~1 minute.
pub async fn with_retry<T, F, Fut>(what: &str, stop: &Stop, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: IntoFuture<Output = mongodb::error::Result<T>>,
{
    let mut delay = Duration::from_millis(250);
    for attempt in 1.. {
        match op().into_future().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                TRANSIENT_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(attempt, error = %e, "{what} failed; retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.stopped() => return Err(Error::db(what)(e)),
                }
                delay = (delay * 2).min(Duration::from_secs(16));
            }
            Err(e) => return Err(Error::db(what)(e)),
        }
    }
    unreachable!("the loop returns")
}
