//! A lease lock so two runners never work on one database at once.
//!
//! The lock is one document in `migrations_lock`. Taking it is an insert (the unique `_id` makes
//! exactly one of two racing runners win) or a guarded update that replaces a holder whose lease
//! expired, or whose process is gone from this same host. The holder renews the lease from a
//! background task; if renewal finds the lock taken over, the run is stopped, because from then on
//! two runners could write.

use crate::error::{Error, Result};
use crate::migration::{Stop, StopReason};
use crate::store::Actor;
use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};
use mongodb::{Collection, Database};
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Name of the lock collection.
pub const LOCK_COLLECTION: &str = "migrations_lock";
const LOCK_ID: &str = "migrate";

/// A held lock. Call [`LockGuard::release`] on every path; dropping it only stops the heartbeat.
pub struct LockGuard {
    coll: Collection<Document>,
    token: ObjectId,
    heartbeat: JoinHandle<()>,
}

/// How to take the lock.
#[derive(Debug, Clone)]
pub struct LockRequest {
    /// Who takes it.
    pub actor: Actor,
    /// What is being run (`up`, `rollback`).
    pub command: String,
    /// Lease length; renewed every third of it.
    pub lease: Duration,
    /// `None`: fail at once when held; `Some(None)`: wait forever; `Some(Some(d))`: wait up to `d`.
    pub wait: Option<Option<Duration>>,
}

/// Takes the lock, or fails with [`Error::Locked`] naming the holder.
pub async fn acquire(db: &Database, request: &LockRequest, stop: &Stop) -> Result<LockGuard> {
    let coll: Collection<Document> = db.collection(LOCK_COLLECTION);
    let token = ObjectId::new();
    let started = tokio::time::Instant::now();
    let mut announced = false;
    loop {
        match try_acquire(&coll, token, request).await? {
            None => break,
            Some(held) => {
                let Some(limit) = request.wait else {
                    return Err(held);
                };
                if let Some(limit) = limit {
                    if started.elapsed() >= limit {
                        return Err(Error::LockTimeout(limit, held.to_string()));
                    }
                }
                if !announced {
                    info!("waiting for the lock: {held}");
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
    let heartbeat = tokio::spawn(renew(coll.clone(), token, request.lease, stop.clone()));
    Ok(LockGuard {
        coll,
        token,
        heartbeat,
    })
}

/// `Ok(None)` when acquired, `Ok(Some(Error::Locked))` when held by someone else.
async fn try_acquire(
    coll: &Collection<Document>,
    token: ObjectId,
    request: &LockRequest,
) -> Result<Option<Error>> {
    let now = DateTime::now();
    let lease_ms = request.lease.as_millis() as i64;
    let holder = doc! {
        "_id": LOCK_ID,
        "token": token,
        "host": &request.actor.host,
        "pid": request.actor.pid as i64,
        "user": &request.actor.user,
        "command": &request.command,
        "acquiredAt": now,
        "heartbeatAt": now,
        "expiresAt": DateTime::from_millis(now.timestamp_millis() + lease_ms),
    };
    match coll.insert_one(holder.clone()).await {
        Ok(_) => return Ok(None),
        Err(e) if is_duplicate_key(&e) => {}
        Err(e) => return Err(Error::db("taking the migration lock")(e)),
    }
    let Some(current) = coll
        .find_one(doc! { "_id": LOCK_ID })
        .await
        .map_err(Error::db("reading the migration lock"))?
    else {
        // Released between our insert and read: try again at once.
        return Box::pin(try_acquire(coll, token, request)).await;
    };
    let expired = current
        .get_datetime("expiresAt")
        .map(|t| *t < now)
        .unwrap_or(true);
    let dead = holder_is_dead_here(&current, &request.actor);
    if expired || dead {
        let old_token = current
            .get("token")
            .cloned()
            .unwrap_or(mongodb::bson::Bson::Null);
        let taken = coll
            .replace_one(doc! { "_id": LOCK_ID, "token": old_token }, holder)
            .await
            .map_err(Error::db("taking over the migration lock"))?;
        if taken.matched_count == 1 {
            warn!(
                previous = %describe(&current),
                reason = if dead { "its process is gone" } else { "its lease expired" },
                "took over the migration lock"
            );
            return Ok(None);
        }
        // Someone else took it over first.
        return Ok(Some(locked(coll).await?));
    }
    Ok(Some(locked_from(&current)))
}

/// A holder on this host whose pid no longer exists crashed: waiting out its lease helps no one.
fn holder_is_dead_here(current: &Document, me: &Actor) -> bool {
    let same_host = current
        .get_str("host")
        .map(|h| h == me.host)
        .unwrap_or(false);
    let pid = current
        .get_i64("pid")
        .ok()
        .or_else(|| current.get_i32("pid").ok().map(i64::from));
    match pid {
        Some(pid) if same_host && pid as u32 != me.pid && cfg!(target_os = "linux") => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

async fn locked(coll: &Collection<Document>) -> Result<Error> {
    let current = coll
        .find_one(doc! { "_id": LOCK_ID })
        .await
        .map_err(Error::db("reading the migration lock"))?
        .unwrap_or_default();
    Ok(locked_from(&current))
}

fn locked_from(current: &Document) -> Error {
    let fmt = |k: &str| {
        current
            .get_datetime(k)
            .map(|t| t.try_to_rfc3339_string().unwrap_or_default())
            .unwrap_or_default()
    };
    Error::Locked {
        holder: describe(current),
        since: fmt("acquiredAt"),
        expires: fmt("expiresAt"),
    }
}

fn describe(lock: &Document) -> String {
    let pid = lock
        .get_i64("pid")
        .map(|p| p.to_string())
        .unwrap_or_else(|_| "?".into());
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
    loop {
        tokio::time::sleep(period).await;
        let now = DateTime::now();
        let expires = DateTime::from_millis(now.timestamp_millis() + lease.as_millis() as i64);
        let attempt = tokio::time::Instant::now();
        match coll
            .update_one(
                doc! { "_id": LOCK_ID, "token": token },
                doc! { "$set": { "heartbeatAt": now, "expiresAt": expires } },
            )
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

impl LockGuard {
    /// The token of this hold: the fencing token of every tracking write made under it.
    pub fn token(&self) -> ObjectId {
        self.token
    }

    /// Stops renewing and deletes the lock (only if still ours).
    pub async fn release(self) -> Result<()> {
        self.heartbeat.abort();
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
        self.heartbeat.abort();
    }
}
