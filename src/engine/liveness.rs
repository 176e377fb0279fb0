//! Whether a migration recorded `running` still has a live holder, and what `status` shows of
//! its live progress. The holder is gone when its lease expired (by the server's clock) or, on
//! this host, when its process no longer exists; a run that lost its lock to another run is
//! gone too. Its record then reads `interrupted`, with the checkpoint to resume from.

use crate::engine::control::current_lock;
use crate::engine::error::Result;
use crate::engine::plan::{MigrationStatus, State};
use crate::engine::store::Actor;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Database;

/// The server's clock (`hello.localTime`), when it reports one.
pub async fn server_time(db: &Database) -> Option<DateTime> {
    db.run_command(doc! { "hello": 1 })
        .await
        .ok()
        .and_then(|r| r.get_datetime("localTime").ok().copied())
}

/// The server's clock, else this host's: leases and heartbeats are the server's times, so their
/// age is judged by its clock.
pub async fn server_now(db: &Database) -> DateTime {
    server_time(db).await.unwrap_or_else(DateTime::now)
}

/// Whether the holder of `lock` is alive: its lease has not expired (by the server's clock
/// `now`), and, when it runs on this host, its process still exists.
pub fn holder_alive(lock: &Document, now: DateTime, me: &Actor) -> bool {
    let unexpired = lock
        .get_datetime("expiresAt")
        .map(|t| *t > now)
        .unwrap_or(false);
    unexpired && !crate::engine::lock::holder_is_dead_here(lock, me)
}

/// Reads the lock and the server's clock, then marks every `running` migration whose holder is
/// gone as [`State::Interrupted`] and attaches each one's live progress.
pub async fn annotate(db: &Database, plan: &mut [MigrationStatus], me: &Actor) -> Result<()> {
    if !plan.iter().any(|m| m.state == State::Running) {
        return Ok(());
    }
    let lock = current_lock(db).await?;
    let now = server_now(db).await;
    for m in plan.iter_mut().filter(|m| m.state == State::Running) {
        let Some(record) = &m.record else { continue };
        let holder = lock.as_ref().filter(|lock| {
            let ours = match &record.lock_token {
                Some(token) => lock.get_object_id("token").ok() == Some(*token),
                // A record from before fencing names no token: any live holder may be its run.
                None => true,
            };
            ours && holder_alive(lock, now, me)
        });
        if holder.is_none() {
            m.state = State::Interrupted;
        }
        m.progress = progress(record.progress.as_ref(), holder, now);
    }
    Ok(())
}

/// The record's progress, with the holder's latest heartbeat (the lock's `polledAt`, stamped
/// every second, or its lease renewal, when newer than the last checkpoint's) and its age in
/// seconds.
fn progress(
    saved: Option<&Document>,
    holder: Option<&Document>,
    now: DateTime,
) -> Option<serde_json::Value> {
    let mut progress = saved.cloned().or_else(|| {
        holder.map(|lock| {
            doc! { "holder": {
                "host": lock.get("host").cloned().unwrap_or(Bson::Null),
                "pid": lock.get("pid").cloned().unwrap_or(Bson::Null),
                "user": lock.get("user").cloned().unwrap_or(Bson::Null),
            } }
        })
    })?;
    let saved_beat = progress.get_datetime("heartbeatAt").ok().copied();
    let lock_beat = holder.and_then(|l| {
        let at = |k: &str| l.get_datetime(k).ok().copied();
        at("polledAt").max(at("heartbeatAt"))
    });
    if let Some(beat) = saved_beat.max(lock_beat) {
        progress.insert("heartbeatAt", beat);
        let age = (now.timestamp_millis() - beat.timestamp_millis()).max(0) as f64 / 1000.0;
        progress.insert("heartbeatAgeSeconds", (age * 10.0).round() / 10.0);
    }
    Some(Bson::Document(progress).into_relaxed_extjson())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newer_heartbeat_wins_and_its_age_is_by_the_server_clock() {
        let now = DateTime::from_millis(100_000);
        let saved = doc! { "scanned": 5_i64, "heartbeatAt": DateTime::from_millis(90_000) };
        let lock = doc! { "host": "h", "pid": 7_i64, "user": "u", "heartbeatAt": DateTime::from_millis(98_000) };
        let p = progress(Some(&saved), Some(&lock), now).unwrap();
        assert_eq!(p["heartbeatAgeSeconds"], 2.0);
        assert_eq!(p["scanned"], 5);
        let gone = progress(Some(&saved), None, now).unwrap();
        assert_eq!(gone["heartbeatAgeSeconds"], 10.0);
    }

    #[test]
    fn a_live_holder_without_progress_yet_is_named_from_the_lock() {
        let lock = doc! { "host": "h", "pid": 7_i64, "user": "u" };
        let p = progress(None, Some(&lock), DateTime::now()).unwrap();
        assert_eq!(p["holder"]["host"], "h");
        assert!(progress(None, None, DateTime::now()).is_none());
    }

    #[test]
    fn an_expired_lease_is_a_dead_holder() {
        let me = Actor {
            host: "elsewhere".into(),
            pid: 1,
            user: "me".into(),
        };
        let now = DateTime::from_millis(100_000);
        let lock = |expires| doc! { "host": "h", "pid": 7_i64, "expiresAt": DateTime::from_millis(expires) };
        assert!(holder_alive(&lock(100_001), now, &me));
        assert!(!holder_alive(&lock(99_999), now, &me));
    }
}
