//! The convergence point of a backfill on a collection the application never stops writing.
//!
//! A check of a live collection can only speak for one moment: a document the application writes
//! after the check began may need the change again a millisecond later, whatever the run does.
//! So the run names that moment. `T` is the cluster time at which its final check over the
//! candidates begins (the last round's look, after the scan), recorded with the server's wall
//! time as `convergedAt` in the result and shown by `migrate status`. `completed` then means:
//! every document whose last application write came before `T` holds what an uninterrupted run
//! over the data as of `T` would have produced. Documents written at or after `T` are the
//! application's from then on: catch-up wrote those its stream reported during the final round,
//! and none of them fails the run.
//!
//! The migration's post-condition is judged as of `T`: a document that fails it is excused only
//! when the change stream reported an application write to it at or after `T`. On MongoDB a
//! snapshot read at `T` would say the same; the test server accepts `atClusterTime` but answers
//! with current data, so the stream is what tells. A failing document with no such event still
//! fails the run, so a lost event never turns into a wrong `completed`; without a stream nothing
//! is excused.

use super::catch_up::{key_of, Watcher};
use crate::engine::error::Result;
use crate::engine::migration::Context;
use mongodb::bson::{doc, DateTime, Document, Timestamp};

/// The convergence point of the backfill a migration ran, kept in its [`Context`] for its
/// post-condition.
pub struct Convergence {
    /// `T`: the cluster time at which the final check began.
    pub cluster_time: Timestamp,
    /// The server's wall time just before `T` was read.
    pub wall_time: DateTime,
    /// The run's change stream, still reading, to tell which documents changed after `T`.
    pub(super) watcher: Option<Watcher>,
}

/// Reads the point a check about to begin stands for: the server's wall time, then its cluster
/// time (so every write acknowledged before that wall time is before `T`), and has the stream
/// note every document it reports from then on. `None` where the server reports no cluster time.
pub(super) async fn mark(
    ctx: &Context,
    watcher: Option<&Watcher>,
) -> Option<(Timestamp, DateTime)> {
    let wall = crate::engine::liveness::server_now(ctx.db()).await;
    let at = super::catch_up::cluster_time(ctx.db()).await?;
    if let Some(w) = watcher {
        w.mark(at);
    }
    Some((at, wall))
}

/// `{clusterTime, wallTime}` as the result stores it.
pub(super) fn to_document((at, wall): (Timestamp, DateTime)) -> Document {
    doc! { "clusterTime": at, "wallTime": wall }
}

/// Of `docs`, those the post-condition must judge, and how many it leaves to the application
/// because the stream reported a write to them at or after the convergence point (see the
/// module). Without a convergence point or a stream, every document is judged.
pub async fn judged_as_of_convergence(
    ctx: &Context,
    docs: Vec<Document>,
) -> Result<(Vec<Document>, u64)> {
    if docs.is_empty() {
        return Ok((docs, 0));
    }
    let point = ctx.convergence();
    let Some((at, watcher)) = point
        .as_ref()
        .and_then(|c| c.watcher.as_ref().map(|w| (c.cluster_time, w)))
    else {
        return Ok((docs, 0));
    };
    let now = super::catch_up::cluster_time(ctx.db()).await;
    let changed = match watcher.changed_since(at, now).await {
        Ok(changed) => changed,
        Err(e) => {
            tracing::warn!(migration = ctx.name(), error = %e, "the change stream cannot say which documents changed after the convergence point; every document is judged");
            return Ok((docs, 0));
        }
    };
    let before = docs.len();
    let judged: Vec<Document> = docs
        .into_iter()
        .filter(|d| d.get("_id").is_none_or(|id| !changed.contains(&key_of(id))))
        .collect();
    let excused = (before - judged.len()) as u64;
    Ok((judged, excused))
}
