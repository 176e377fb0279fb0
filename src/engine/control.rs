//! Control of a running migration from any host: `migrate pause` and `migrate throttle` write
//! their requests into the lock document, the one document every holder already owns and every
//! host can find, and the holder reads it back every second from a task of its own.
//!
//! That task also stamps the lock's `polledAt` each second (`heartbeatAt` and the lease stay the
//! renewal's, see [`crate::engine::lock`]), so `migrate status` can show a heartbeat seconds old
//! rather than up to a third of a lease. Every request is also pushed to the running migration's
//! `history`, naming who sent it.

use crate::engine::error::{Error, Result};
use crate::engine::lock::{LOCK_COLLECTION, LOCK_ID};
use crate::engine::migration::{Stop, StopReason};
use crate::engine::store::{Actor, TRACKING_COLLECTION};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// How often the holder looks for requests (and stamps `polledAt`).
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// A batch size: fixed, or tuned to the target batch time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// Tuned by [`crate::engine::backfill`] within its bounds.
    Auto,
    /// Exactly this many documents.
    Fixed(usize),
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchSize::Auto => f.write_str("auto"),
            BatchSize::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for BatchSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(BatchSize::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=100_000).contains(&n) => Ok(BatchSize::Fixed(n)),
            _ => Err(format!(
                "{s:?} is not a batch size: `auto` or a number from 1 to 100000"
            )),
        }
    }
}

/// Limits set live by `migrate throttle`, over the ones the run started with. `None` keeps the
/// run's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Documents per second at most.
    pub max_docs_per_sec: Option<f64>,
    /// Batch size.
    pub batch_size: Option<BatchSize>,
}

impl Overrides {
    fn from_lock(lock: &Document) -> Overrides {
        let Ok(limits) = lock.get_document("limits") else {
            return Overrides::default();
        };
        Overrides {
            max_docs_per_sec: match limits.get("maxDocsPerSec") {
                Some(Bson::Double(v)) => Some(*v),
                Some(Bson::Int32(v)) => Some(f64::from(*v)),
                Some(Bson::Int64(v)) => Some(*v as f64),
                _ => None,
            },
            batch_size: match limits.get("batchSize") {
                Some(Bson::String(s)) => s.parse().ok(),
                Some(v) => crate::engine::bson_ext::as_int(v)
                    .and_then(|n| usize::try_from(n).ok())
                    .map(BatchSize::Fixed),
                None => None,
            },
        }
    }
}

impl std::fmt::Display for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self
            .max_docs_per_sec
            .map_or_else(|| "the run's own".into(), |r| format!("{r:.0} docs/s"));
        let batch = self
            .batch_size
            .map_or_else(|| "the run's own".into(), |b| b.to_string());
        write!(f, "max docs/s {rate}, batch size {batch}")
    }
}

/// The live limits a holder shares between its control task and its backfill.
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<Mutex<Overrides>>);

impl Live {
    /// The limits set live now.
    pub fn overrides(&self) -> Overrides {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, overrides: Overrides) -> bool {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *current != overrides;
        *current = overrides;
        changed
    }
}

fn lock_coll(db: &Database) -> Collection<Document> {
    db.collection(LOCK_COLLECTION)
}

/// Runs until aborted: every second, stamps `polledAt` on the lock held with `token`,
/// applies the limits it carries and stops the run (as Ctrl-C does) when a pause is asked for.
pub fn watch(db: &Database, token: ObjectId, live: Live, stop: Stop) -> WatchGuard {
    let coll = lock_coll(db);
    let task = tokio::spawn(async move {
        let beat = vec![doc! { "$set": { "polledAt": "$$NOW" } }];
        let mut applied: Option<Bson> = None;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let lock = match coll
                .find_one_and_update(doc! { "_id": LOCK_ID, "token": token }, beat.clone())
                .return_document(ReturnDocument::After)
                .await
            {
                Ok(Some(lock)) => lock,
                // Lost or released: the lease renewal is what notices and stops the run.
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "could not read control requests; trying again");
                    continue;
                }
            };
            if let Ok(pause) = lock.get_document("pause") {
                if !stop.is_stopped() {
                    let by = requester(pause);
                    warn!(by = %by, "pause requested: finishing the batches in flight and saving the checkpoint");
                    stop.trigger(StopReason::Paused(by));
                }
            }
            let overrides = Overrides::from_lock(&lock);
            if live.set(overrides.clone()) {
                info!(limits = %overrides, "throttle changed by `migrate throttle`");
            }
            let id = lock
                .get_document("limits")
                .ok()
                .and_then(|l| l.get("id").cloned());
            if id.is_some() && id != applied {
                let ack = coll
                    .update_one(
                        doc! { "_id": LOCK_ID, "token": token },
                        doc! { "$set": { "limitsApplied": id.clone().unwrap_or(Bson::Null) } },
                    )
                    .await;
                if ack.is_ok() {
                    applied = id;
                }
            }
        }
    });
    WatchGuard(task)
}

/// The control task of a held lock; ended when dropped (before the lock is released).
pub struct WatchGuard(tokio::task::JoinHandle<()>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn requester(request: &Document) -> String {
    format!(
        "{}@{} pid {}",
        request.get_str("user").unwrap_or("?"),
        request.get_str("host").unwrap_or("?"),
        crate::engine::bson_ext::int_field(request, "pid")
    )
}

/// The lock document, if anyone holds the lock.
pub async fn current_lock(db: &Database) -> Result<Option<Document>> {
    lock_coll(db)
        .find_one(doc! { "_id": LOCK_ID })
        .await
        .map_err(Error::db("reading the migration lock"))
}

/// A request sent to the holder: what it asks for and who sent it.
pub enum Request {
    /// Stop after the batches in flight, as Ctrl-C does.
    Pause,
    /// Change the limits (`None` in a field leaves it as set).
    Throttle(Overrides),
    /// Drop every live limit: back to the run's own.
    Clear,
}

/// Sends `request` to the current holder; returns its lock document as it was, or `None` when
/// no run holds the lock.
pub async fn send(db: &Database, request: &Request, me: &Actor) -> Result<Option<Document>> {
    let Some(lock) = current_lock(db).await? else {
        return Ok(None);
    };
    let token = lock.get("token").cloned().unwrap_or(Bson::Null);
    let by = doc! { "host": &me.host, "pid": me.pid as i64, "user": &me.user };
    let mut sent = by.clone();
    sent.insert("at", DateTime::now());
    let (update, action, detail) = match request {
        Request::Pause => (doc! { "$set": { "pause": sent } }, "pause", Document::new()),
        Request::Throttle(o) => {
            let mut set = doc! { "limits.id": ObjectId::new(), "limits.at": DateTime::now() };
            let mut detail = Document::new();
            if let Some(rate) = o.max_docs_per_sec {
                set.insert("limits.maxDocsPerSec", rate);
                detail.insert("maxDocsPerSec", rate);
            }
            if let Some(size) = o.batch_size {
                let v = match size {
                    BatchSize::Auto => Bson::String("auto".into()),
                    BatchSize::Fixed(n) => Bson::Int64(n as i64),
                };
                set.insert("limits.batchSize", v.clone());
                detail.insert("batchSize", v);
            }
            (doc! { "$set": set }, "throttle", detail)
        }
        Request::Clear => (
            doc! { "$unset": { "limits": "" } },
            "throttle",
            doc! { "clear": true },
        ),
    };
    let r = lock_coll(db)
        .update_one(doc! { "_id": LOCK_ID, "token": &token }, update)
        .await
        .map_err(Error::db("writing the request into the migration lock"))?;
    if r.matched_count == 0 {
        // Released between the read and the write.
        return Ok(None);
    }
    record(db, &token, action, by, detail).await?;
    Ok(Some(lock))
}

/// Appends a control action to the history of the migration the holder works on (the record
/// it claimed with its token and has not finished), or of the last one it claimed.
async fn record(
    db: &Database,
    token: &Bson,
    action: &str,
    by: Document,
    detail: Document,
) -> Result<()> {
    let records: Collection<Document> = db.collection(TRACKING_COLLECTION);
    let mut entry = doc! { "action": action, "status": "requested", "at": DateTime::now() };
    entry.extend(by);
    entry.extend(detail);
    let push = doc! { "$push": { "history": entry } };
    let working = doc! { "lockToken": token, "status": { "$in": ["running", "rolling_back"] } };
    let r = records
        .update_many(working, push.clone())
        .await
        .map_err(Error::db("recording the request in the migration history"))?;
    if r.matched_count == 0 {
        let last = records
            .find_one(doc! { "lockToken": token })
            .sort(doc! { "startedAt": -1 })
            .await
            .map_err(Error::db("recording the request in the migration history"))?;
        if let Some(last) = last {
            records
                .update_one(doc! { "_id": last.get("_id").cloned() }, push)
                .await
                .map_err(Error::db("recording the request in the migration history"))?;
        }
    }
    Ok(())
}

/// Waits until the holder of `lock` has released it (or lost it), polling every 250 ms; false
/// when `timeout` ran out first.
pub async fn wait_released(db: &Database, lock: &Document, timeout: Duration) -> Result<bool> {
    let token = lock.get("token").cloned().unwrap_or(Bson::Null);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let held = lock_coll(db)
            .count_documents(doc! { "_id": LOCK_ID, "token": &token })
            .await
            .map_err(Error::db("reading the migration lock"))?;
        if held == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits up to `timeout` for the holder to acknowledge the limits sent to it.
pub async fn wait_applied(db: &Database, token: &Bson, timeout: Duration) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let lock = lock_coll(db)
            .find_one(doc! { "_id": LOCK_ID, "token": token })
            .await
            .map_err(Error::db("reading the migration lock"))?;
        let Some(lock) = lock else { return Ok(false) };
        let id = lock
            .get_document("limits")
            .ok()
            .and_then(|l| l.get("id").cloned());
        // Cleared limits are applied when the holder's next poll sees them gone; there is
        // nothing to acknowledge.
        if id.is_none() || lock.get("limitsApplied") == id.as_ref() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_parses_auto_and_bounded_numbers() {
        assert_eq!("auto".parse::<BatchSize>(), Ok(BatchSize::Auto));
        assert_eq!("250".parse::<BatchSize>(), Ok(BatchSize::Fixed(250)));
        assert!("0".parse::<BatchSize>().is_err());
        assert!("100001".parse::<BatchSize>().is_err());
        assert!("lots".parse::<BatchSize>().is_err());
    }

    #[test]
    fn overrides_read_from_the_lock_whatever_the_number_type() {
        let lock = doc! { "limits": { "maxDocsPerSec": 2000_i32, "batchSize": 500_i64 } };
        let o = Overrides::from_lock(&lock);
        assert_eq!(o.max_docs_per_sec, Some(2000.0));
        assert_eq!(o.batch_size, Some(BatchSize::Fixed(500)));
        let auto = Overrides::from_lock(&doc! { "limits": { "batchSize": "auto" } });
        assert_eq!(auto.batch_size, Some(BatchSize::Auto));
        assert_eq!(auto.max_docs_per_sec, None);
        assert_eq!(Overrides::from_lock(&doc! {}), Overrides::default());
    }
}
