//! A lease lock so two runners never work on one database at once.
//!
//! The lock is one document in `migrations_lock`. Taking it is an upsert (the unique `_id` makes
//! exactly one of two racing runners win), or a guarded update that replaces a holder whose lease
//! expired, or whose process is gone from this same host.
//! Every time in the lock is the server's (`$$NOW`): runners on hosts with skewed clocks judge a
//! lease by one clock, so none can steal a live lease or write one that is already over.
//!
//! The holder renews the lease from a background task; if renewal finds the lock taken over, or
//! the task dies (a panic), the run is stopped, because from then on two runners could write.

use crate::engine::error::{Error, Result};
use crate::engine::migration::{Stop, StopReason};
use crate::engine::store::Actor;
use futures::FutureExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, Database};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Name of the lock collection.
pub const LOCK_COLLECTION: &str = "migrations_lock";
/// `_id` of the one lock document.
pub(crate) const LOCK_ID: &str = "migrate";

/// Shortest lease `migrate` accepts: renewal every third of it must fit in a slow network's
/// round trips.
pub const MIN_LEASE: Duration = Duration::from_secs(5);
/// Longest lease: a crashed holder on another host blocks every run this long.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// A held lock. Call [`LockGuard::release`] on every path; dropping it only stops the heartbeat.
pub struct LockGuard {
    coll: Collection<Document>,
    token: ObjectId,
    heartbeat: Heartbeat,
}

/// How to take the lock.
#[derive(Debug, Clone)]
pub struct LockRequest {
    /// Who takes it.
    pub actor: Actor,
    /// What is being run (`up`, `rollback`).
    pub command: String,
    /// Lease length; renewed every third of it. At most [`MAX_LEASE`].
    pub lease: Duration,
    /// `None`: fail at once when held; `Some(None)`: wait forever; `Some(Some(d))`: wait up to `d`.
    pub wait: Option<Option<Duration>>,
}

/// Who holds the lock, for messages.
struct Holder {
    who: String,
    since: String,
    expires: String,
}

impl Holder {
    fn from_lock(lock: &Document) -> Holder {
        let time = |k: &str| {
            lock.get_datetime(k)
                .map(|t| t.try_to_rfc3339_string().unwrap_or_default())
                .unwrap_or_else(|_| "?".into())
        };
        Holder {
            who: describe(lock),
            since: time("acquiredAt"),
            expires: time("expiresAt"),
        }
    }

    fn into_error(self) -> Error {
        Error::Locked {
            holder: self.who,
            since: self.since,
            expires: self.expires,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (since {}, lease until {})",
            self.who, self.since, self.expires
        )
    }
}

/// Takes the lock, or fails with [`Error::Locked`] naming the holder.
pub async fn acquire(db: &Database, request: &LockRequest, stop: &Stop) -> Result<LockGuard> {
    if request.lease.is_zero() || request.lease > MAX_LEASE {
        return Err(Error::Config(format!(
            "lock lease of {:?} is out of range: it must be more than 0 and at most {}s",
            request.lease,
            MAX_LEASE.as_secs()
        )));
    }
    let coll: Collection<Document> = db.collection(LOCK_COLLECTION);
    let token = ObjectId::new();
    let started = tokio::time::Instant::now();
    let mut announced = false;
    loop {
        match try_acquire(&coll, token, request).await? {
            None => break,
            Some(held) => {
                let Some(limit) = request.wait else {
                    return Err(held.into_error());
                };
                if let Some(limit) = limit {
                    if started.elapsed() >= limit {
                        return Err(Error::LockTimeout(limit, held.to_string()));
                    }
                }
                if !announced {
                    info!("waiting for the lock held by {held}");
                    announced = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.stopped() => return Err(stop.error()),
                }
            }
        }
    }
    info!(holder = %request.actor, command = %request.command, "lock acquired");
    let heartbeat = Heartbeat::start(
        renew(coll.clone(), token, request.lease, stop.clone()),
        stop.clone(),
    );
    Ok(LockGuard {
        coll,
        token,
        heartbeat,
    })
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// `$$NOW + lease` on the server. (`$dateAdd` rather than `$add` of a date and a number: both
/// are MongoDB, but not every MongoDB-compatible server takes `$add` over a date.)
fn server_now_plus(lease: Duration) -> Document {
    doc! { "$dateAdd": { "startDate": "$$NOW", "unit": "millisecond", "amount": lease_ms(lease) } }
}

/// The lock document as an update pipeline, its times taken from the server's clock. Strings
/// go through `$literal`: in a pipeline, a value starting with `$` would be read as a field.
fn holder_pipeline(token: ObjectId, request: &LockRequest) -> Vec<Document> {
    let literal = |s: &str| doc! { "$literal": s };
    vec![doc! {
        "$replaceWith": {
            "_id": LOCK_ID,
            "token": token,
            "host": literal(&request.actor.host),
            "pid": request.actor.pid as i64,
            "user": literal(&request.actor.user),
            "command": literal(&request.command),
            "acquiredAt": "$$NOW",
            "heartbeatAt": "$$NOW",
            "expiresAt": server_now_plus(request.lease),
        }
    }]
}

/// `Ok(None)` when acquired, `Ok(Some(holder))` when held by someone else.
async fn try_acquire(
    coll: &Collection<Document>,
    token: ObjectId,
    request: &LockRequest,
) -> Result<Option<Holder>> {
    // A free lock: an upsert matching our own new token never matches, so it inserts, and the
    // unique `_id` makes it fail while anyone holds the lock. (An upsert, not an insert, so the
    // times come from the server.)
    match coll
        .update_one(
            doc! { "_id": LOCK_ID, "token": token },
            holder_pipeline(token, request),
        )
        .upsert(true)
        .await
    {
        Ok(_) => return Ok(None),
        Err(e) if is_duplicate_key(&e) => {}
        Err(e) => return Err(Error::db("taking the migration lock")(e)),
    }
    // An expired lease, judged by the server's clock in the same step that takes it over.
    let expired = doc! { "_id": LOCK_ID, "$expr": { "$lt": ["$expiresAt", "$$NOW"] } };
    let previous = coll
        .find_one_and_update(expired, holder_pipeline(token, request))
        .return_document(ReturnDocument::Before)
        .await
        .map_err(Error::db("taking over the migration lock"))?;
    if let Some(previous) = previous {
        warn!(
            previous = %describe(&previous),
            reason = "its lease expired",
            "took over the migration lock"
        );
        return Ok(None);
    }
    let Some(current) = coll
        .find_one(doc! { "_id": LOCK_ID })
        .await
        .map_err(Error::db("reading the migration lock"))?
    else {
        // Released meanwhile: try again at once.
        return Box::pin(try_acquire(coll, token, request)).await;
    };
    if holder_is_dead_here(&current, &request.actor) {
        let old_token = current.get("token").cloned().unwrap_or(Bson::Null);
        let taken = coll
            .find_one_and_update(
                doc! { "_id": LOCK_ID, "token": old_token },
                holder_pipeline(token, request),
            )
            .await
            .map_err(Error::db("taking over the migration lock"))?;
        if taken.is_some() {
            warn!(
                previous = %describe(&current),
                reason = "its process is gone",
                "took over the migration lock"
            );
            return Ok(None);
        }
        // Someone else took it over first.
        let current = coll
            .find_one(doc! { "_id": LOCK_ID })
            .await
            .map_err(Error::db("reading the migration lock"))?
            .unwrap_or_default();
        return Ok(Some(Holder::from_lock(&current)));
    }
    Ok(Some(Holder::from_lock(&current)))
}

/// The pid stored in a lock, whichever integer type wrote it.
fn stored_pid(lock: &Document) -> Option<i64> {
    match lock.get("pid")? {
        Bson::Int64(pid) => Some(*pid),
        Bson::Int32(pid) => Some(i64::from(*pid)),
        _ => None,
    }
}

/// A holder on this host whose pid no longer exists crashed: waiting out its lease helps no one.
pub(crate) fn holder_is_dead_here(current: &Document, me: &Actor) -> bool {
    let same_host = current
        .get_str("host")
        .map(|h| h == me.host)
        .unwrap_or(false);
    match stored_pid(current) {
        Some(pid) if same_host && pid != i64::from(me.pid) && cfg!(target_os = "linux") => {
            process_gone(pid)
        }
        _ => false,
    }
}

/// Whether process `pid` is gone: no such process, or one that has exited and only waits for
/// its parent to collect its status (a zombie). A `migrate` killed with `kill -9` whose parent
/// does not reap it at once (a shell that has moved on, a container whose init never reaps)
/// stays a zombie; it holds nothing and will never release its lock.
fn process_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (command) state ...`; the command may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| matches!(state, "Z" | "X" | "x")),
        Err(_) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
    }
}

fn describe(lock: &Document) -> String {
    let pid = stored_pid(lock).map_or_else(|| "?".into(), |p| p.to_string());
    format!(
        "`migrate {}` by {}@{} pid {}",
        lock.get_str("command").unwrap_or("?"),
        lock.get_str("user").unwrap_or("?"),
        lock.get_str("host").unwrap_or("?"),
        pid
    )
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}

/// Renews the lease every third of it; stops the run if the lock was taken over or cannot be
/// renewed before it expires.
async fn renew(coll: Collection<Document>, token: ObjectId, lease: Duration, stop: Stop) {
    let period = (lease / 3).max(Duration::from_millis(200));
    let mut valid_until = tokio::time::Instant::now() + lease;
    let extend = vec![doc! { "$set": {
        "heartbeatAt": "$$NOW",
        "expiresAt": server_now_plus(lease),
    } }];
    loop {
        tokio::time::sleep(period).await;
        let attempt = tokio::time::Instant::now();
        match coll
            .update_one(doc! { "_id": LOCK_ID, "token": token }, extend.clone())
            .await
        {
            Ok(r) if r.matched_count == 1 => valid_until = attempt + lease,
            Ok(_) => {
                stop.trigger(StopReason::LockLost("another runner took it over".into()));
                return;
            }
            Err(e) => {
                warn!(error = %e, "could not renew the migration lock; retrying");
                if tokio::time::Instant::now() >= valid_until {
                    stop.trigger(StopReason::LockLost(format!(
                        "lease expired while the server was unreachable: {e}"
                    )));
                    return;
                }
            }
        }
    }
}

/// The renewal task, watched: if it ends while the lock is held (a panic, or any other end
/// without a stop of its own), the run is stopped with [`Error::LockLost`], since nothing renews
/// the lease any more and another runner may take it.
struct Heartbeat {
    task: JoinHandle<()>,
    released: Arc<AtomicBool>,
}

impl Heartbeat {
    fn start(renewal: impl std::future::Future<Output = ()> + Send + 'static, stop: Stop) -> Self {
        let released = Arc::new(AtomicBool::new(false));
        let watchdog = Watchdog {
            stop: stop.clone(),
            released: released.clone(),
        };
        let task = tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(renewal).catch_unwind().await;
            if let Err(panic) = outcome {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                stop.trigger(StopReason::LockLost(format!(
                    "the task renewing its lease panicked: {what}"
                )));
            }
            drop(watchdog);
        });
        Heartbeat { task, released }
    }

    /// Ends the renewal on purpose (the lock is being released).
    fn stop(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

/// Stops the run when the renewal task ends without having been told to.
struct Watchdog {
    stop: Stop,
    released: Arc<AtomicBool>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if !self.released.load(Ordering::SeqCst) {
            self.stop.trigger(StopReason::LockLost(
                "the task renewing its lease ended".into(),
            ));
        }
    }
}

impl LockGuard {
    /// The token of this hold: the fencing token of every tracking write made under it.
    pub fn token(&self) -> ObjectId {
        self.token
    }

    /// Stops renewing and deletes the lock (only if still ours).
    pub async fn release(self) -> Result<()> {
        self.heartbeat.stop();
        self.coll
            .delete_one(doc! { "_id": LOCK_ID, "token": self.token })
            .await
            .map_err(Error::db(
                "releasing the migration lock (it will expire by itself)",
            ))?;
        info!("lock released");
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.heartbeat.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_killed_process_not_yet_reaped_is_gone_and_a_running_one_is_not() {
        let mut running = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i64::from(running.id());
        assert!(!process_gone(pid));
        running.kill().unwrap();
        // Killed but not waited for: a zombie until `wait` below.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !process_gone(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(process_gone(pid), "a zombie counts as gone");
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        running.wait().unwrap();
        assert!(process_gone(pid));
    }

    #[tokio::test]
    async fn a_heartbeat_that_panics_stops_the_run_with_lock_lost() {
        let stop = Stop::default();
        let heartbeat = Heartbeat::start(
            async { panic!("overflow when adding duration to instant") },
            stop.clone(),
        );
        tokio::time::timeout(Duration::from_secs(5), stop.stopped())
            .await
            .expect("the run is stopped");
        let err = stop.error();
        assert!(
            matches!(&err, Error::LockLost(why) if why.contains("panicked: overflow")),
            "{err}"
        );
        heartbeat.stop();
    }

    #[tokio::test]
    async fn a_heartbeat_that_ends_unasked_stops_the_run() {
        let stop = Stop::default();
        let _heartbeat = Heartbeat::start(async {}, stop.clone());
        tokio::time::timeout(Duration::from_secs(5), stop.stopped())
            .await
            .expect("the run is stopped");
        assert!(matches!(stop.error(), Error::LockLost(why) if why.contains("ended")));
    }

    #[tokio::test]
    async fn a_released_heartbeat_stops_nothing() {
        let stop = Stop::default();
        let heartbeat = Heartbeat::start(std::future::pending(), stop.clone());
        heartbeat.stop();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!stop.is_stopped());
    }

    #[test]
    fn holder_pid_reads_int32_and_int64() {
        let int32 = doc! { "command": "up", "user": "bob", "host": "h", "pid": 777_i32 };
        let int64 = doc! { "command": "up", "user": "bob", "host": "h", "pid": 777_i64 };
        assert_eq!(describe(&int32), "`migrate up` by bob@h pid 777");
        assert_eq!(describe(&int64), describe(&int32));
    }
}
