//! Catch-up work and the rounds after the scan.
//!
//! Documents named by change events are read again (only those still candidates) and written by
//! the same guarded write, with before-images, as the scan's batches. After the scan and the
//! stream's drain, rounds over the candidate filter find what is still left (writes the stream
//! does not report, writes that landed during the drain, or everything the application changed
//! when there is no stream) and write it, until a round finds nothing.
//!
//! With a stream, a round also ends the run when every document it found was changed by the
//! application while the round ran: as of the round's start nothing was left, which is the most a
//! check can say of a collection that never stops changing.

use super::catch_up::{key_of, Watcher};
use super::checkpoint::{to_checkpoint, Stats};
use super::owned::{recompute_owned, recompute_with};
use super::retry::with_retry;
use super::scan::Position;
use super::server::{server_batch, Scope};
use super::spec::{Backfill, CatchUp, Change, Transform};
use super::write::{already_applied, and, client_batch, find_all, projection};
use crate::engine::error::{Error, Result};
use crate::engine::migration::Context;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use std::collections::{HashMap, HashSet};
use tracing::{info, warn};

/// Rounds over the candidates before the run gives up (each finds what the previous one's
/// duration let the application change).
pub const MAX_ROUNDS: u64 = 8;

/// Transforms and writes the documents named by `ids` that are still candidates.
pub async fn process_ids(ctx: &Context, spec: &Backfill, ids: Vec<Bson>) -> Result<Stats> {
    let options = ctx.options();
    // Catch-up writes documents anywhere, ahead of the scan too: from now on a batch may meet a
    // document this run wrote.
    spec.run.owning_some();
    // The application is writing these very documents.
    let spec = &spec.while_live();
    let mut stats = Stats::default();
    for chunk in ids.chunks(options.batch_size.max(1)) {
        let part = match &spec.transform {
            Transform::Server(updates) => {
                server_batch(
                    ctx.db(),
                    spec,
                    updates,
                    Scope::Ids(chunk),
                    options.dry_run,
                    ctx.stop(),
                )
                .await?
            }
            Transform::Client(_) => {
                let coll = ctx.db().collection::<Document>(&spec.collection);
                let filter = and(vec![
                    doc! { "_id": { "$in": chunk.to_vec() } },
                    spec.filter.clone(),
                ]);
                let docs = find_all(
                    &coll,
                    filter,
                    &projection(&spec.fields),
                    "re-reading changed documents",
                    ctx.stop(),
                )
                .await?;
                // The others are no longer candidates; those this run wrote follow their inputs.
                let found: HashSet<Vec<u8>> = docs
                    .iter()
                    .filter_map(|d| d.get("_id").map(key_of))
                    .collect();
                let others: Vec<Bson> = chunk
                    .iter()
                    .filter(|id| !found.contains(&key_of(id)))
                    .cloned()
                    .collect();
                let mut part = process_docs(ctx, spec, docs).await?;
                if let (Transform::Client(transform), false) = (&spec.transform, options.dry_run) {
                    part.absorb(
                        recompute_owned(ctx.db(), spec, transform, ctx.name(), others, ctx.stop())
                            .await?,
                    );
                }
                part
            }
        };
        stats.absorb(part);
    }
    Ok(stats)
}

/// Transforms and writes documents already read (with the spec's projection).
async fn process_docs(ctx: &Context, spec: &Backfill, docs: Vec<Document>) -> Result<Stats> {
    let Transform::Client(transform) = &spec.transform else {
        unreachable!("server transforms are written by _id");
    };
    if docs.is_empty() {
        return Ok(Stats::default());
    }
    let options = ctx.options();
    client_batch(
        ctx.db(),
        spec,
        transform,
        docs,
        ctx.name(),
        options.dry_run,
        options.fail_on_invalid,
        ctx.stop(),
    )
    .await
}

/// Rounds over the candidates after the scan: write what is left until a round finds nothing
/// (or, with a stream, only documents the application changed during the round). The checkpoint
/// (at the scan's end, `done`) is saved after each round.
///
/// With a stream that has reported every write able to make a candidate since the backfill
/// began (`complete`), nothing the stream did not name can be left behind the scan. That is
/// checked once, not assumed: one look over the candidates, then the drain. When every document
/// the look found was named by the stream, the run is done without counting a round. Any other
/// document found means events went missing on their way (the test server drops some, see
/// docs/test-server.md) or the scan's ranges missed it (servers have disagreed with their own
/// sort order over the rarer `_id` types), and is said in the log; that, or a drain that gives
/// up, brings back full rounds. Left unchecked, such a document would only surface in the migration's
/// post-condition, and fail the run.
pub async fn rounds(
    ctx: &Context,
    spec: &Backfill,
    catch_up: &CatchUp,
    watcher: Option<(&Watcher, bool)>,
    stats: &mut Stats,
    done: &Position,
    mut token: Option<Bson>,
) -> Result<()> {
    // Every candidate a round finds may be one the scan wrote and the application reset since.
    spec.run.owning_some();
    let mut complete = watcher.is_some_and(|(_, complete)| complete);
    let mut watcher = watcher.map(|(w, _)| w);
    let mut trust_stream = complete;
    for round in 1..=MAX_ROUNDS {
        if !trust_stream {
            stats.catch_up.rounds += 1;
        }
        // The check about to begin may be the final one: its start is the convergence point.
        stats.converged = super::converge::mark(ctx, watcher)
            .await
            .or(stats.converged);
        let mut found = left_over(ctx, spec, catch_up, stats).await?;
        let revisit = round == 1
            && spec
                .run
                .revisit_owned
                .load(std::sync::atomic::Ordering::Acquire);
        if watcher.is_none() || revisit {
            // Without a stream (or, once, for what an earlier attempt wrote before this run's
            // stream began) nothing says which written documents the application changed since:
            // every one is looked at again.
            let rewritten = owned_pass(ctx, spec, stats).await?;
            if revisit && !rewritten.is_empty() {
                info!(
                    migration = ctx.name(),
                    rewritten = rewritten.len(),
                    "documents an earlier attempt wrote were recomputed: their inputs changed since"
                );
            }
            if watcher.is_none() {
                // Another round must look: nothing else reports what changes them next.
                found.extend(rewritten);
            }
        }
        if !found.is_empty() {
            info!(
                migration = ctx.name(),
                round,
                left = found.len(),
                "candidates left after the scan written"
            );
        }
        // With a stream, every round also writes what the application changed while it ran
        // (a document the run wrote, whose inputs changed, is no candidate the check can find),
        // and tells which of the documents found were changed meanwhile.
        let mut explained = found.is_empty();
        // A stream that stopped for good (a restarted server that kept no history): the rounds
        // go on by passes, which also look at every written document.
        let read = match watcher {
            Some(w) => match drained_and_taken(ctx, w).await {
                Ok(read) => Some((w, read)),
                Err(why) => {
                    warn!(migration = ctx.name(), reason = %why, "{}", super::pipeline::LOST_STREAM);
                    stats.catch_up.mode = "passes".into();
                    (watcher, token, complete, trust_stream) = (None, None, false, false);
                    save(ctx, done, stats, None, false).await?;
                    continue;
                }
            },
            None => None,
        };
        if let Some((watcher, (drained, taken))) = read {
            let changed: HashSet<Vec<u8>> = taken.ids.iter().map(key_of).collect();
            let unreported = found
                .iter()
                .filter(|id| !changed.contains(&key_of(id)))
                .count();
            explained = unreported == 0;
            let part = process_ids(ctx, spec, taken.ids).await?;
            stats.absorb_catch_up(part);
            stats.catch_up.events = watcher.events();
            token = taken
                .token
                .as_ref()
                .and_then(super::catch_up::token_to_bson)
                .or(token);
            save(ctx, done, stats, token.as_ref(), complete).await?;
            if trust_stream && (!drained || !explained) {
                if !explained {
                    warn!(
                        migration = ctx.name(),
                        unreported,
                        "candidates were left that neither the scan nor the change stream reported (lost change events, or ids the scan's ranges missed); those found are written, and rounds over the candidates follow"
                    );
                }
                trust_stream = false;
                continue;
            }
        } else if !found.is_empty() {
            save(ctx, done, stats, token.as_ref(), complete).await?;
        }
        if trust_stream {
            info!(
                migration = ctx.name(),
                "no round over the candidates needed: one look found nothing the change stream did not report"
            );
            return Ok(());
        }
        if found.is_empty() {
            info!(
                migration = ctx.name(),
                round, "no candidate left after the scan"
            );
            return Ok(());
        }
        if explained {
            info!(
                migration = ctx.name(),
                round, "every candidate left was changed by the application during the round"
            );
            return Ok(());
        }
        if round == MAX_ROUNDS {
            let left = found.len();
            let samples: Vec<Bson> = found.into_iter().take(5).collect();
            warn!(migration = ctx.name(), "candidates keep appearing");
            return Err(Error::migration(
                ctx.name(),
                format!(
                    "after {MAX_ROUNDS} rounds {left} document(s) of {} still needed the change, e.g. {}: something keeps writing them; run `migrate up` again when it is quieter",
                    spec.collection,
                    Bson::Array(samples).into_relaxed_extjson()
                ),
            ));
        }
    }
    Ok(())
}

/// Drains the stream up to the current cluster time and takes what it reported; the reason
/// when the stream has stopped for good.
async fn drained_and_taken(
    ctx: &Context,
    watcher: &Watcher,
) -> std::result::Result<(bool, super::catch_up::Taken), String> {
    let until = super::catch_up::cluster_time(ctx.db()).await;
    let drained = watcher.drain(until).await.map_err(|e| e.to_string())?;
    let taken = watcher.take().map_err(|e| e.to_string())?;
    Ok((drained, taken))
}

/// One round over the candidates: writes those that still need the change, and returns their
/// `_id`s.
async fn left_over(
    ctx: &Context,
    spec: &Backfill,
    catch_up: &CatchUp,
    stats: &mut Stats,
) -> Result<Vec<Bson>> {
    let coll = ctx.db().collection::<Document>(&spec.collection);
    let filter = and(vec![spec.filter.clone(), catch_up.pending.clone()]);
    let projection = projection(&spec.fields);
    let batch = ctx.options().batch_size.max(1);
    let mut cursor = with_retry("looking for candidates left", ctx.stop(), || {
        coll.find(filter.clone()).projection(projection.clone())
    })
    .await?;
    let mut found: Vec<Bson> = Vec::new();
    let mut chunk: Vec<Document> = Vec::new();
    loop {
        let next = cursor
            .try_next()
            .await
            .map_err(Error::db("looking for candidates left"))?;
        let end = next.is_none();
        if let Some(doc) = next {
            if needs_change(spec, &doc) {
                found.push(doc.get("_id").cloned().unwrap_or(Bson::Null));
                chunk.push(doc);
            }
        }
        if chunk.len() >= batch || (end && !chunk.is_empty()) {
            let docs = std::mem::take(&mut chunk);
            let part = match &spec.transform {
                Transform::Server(_) => {
                    let ids: Vec<Bson> =
                        docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
                    process_ids(ctx, spec, ids).await?
                }
                Transform::Client(_) => process_docs(ctx, spec, docs).await?,
            };
            // A candidate the application moved after the migration wrote it (a balance reset)
            // is its own: never written, and not work left.
            if !part.moved_ids.is_empty() {
                let moved: HashSet<Vec<u8>> = part.moved_ids.iter().map(key_of).collect();
                found.retain(|id| !moved.contains(&key_of(id)));
            }
            stats.absorb_catch_up(part);
        }
        if end {
            return Ok(found);
        }
    }
}

/// Passes over every document this migration wrote (from its before-images), recomputing those
/// whose inputs changed; returns the `_id`s rewritten.
async fn owned_pass(ctx: &Context, spec: &Backfill, stats: &mut Stats) -> Result<Vec<Bson>> {
    let Transform::Client(transform) = &spec.transform else {
        return Ok(Vec::new());
    };
    if !spec.before_images || ctx.dry_run() {
        return Ok(Vec::new());
    }
    // Chunks newest first, each document decided by the first (newest) entry met: the chunk in
    // hand says what was written, so no lookup by document is needed.
    let images = ctx.db().collection::<Document>(super::BEFORE_IMAGES);
    let mut cursor = with_retry("reading before-images", ctx.stop(), || {
        images
            .find(doc! { "migration": ctx.name() })
            .sort(super::before_image::NEWEST_FIRST.clone())
    })
    .await?;
    let coll = ctx.db().collection::<Document>(&spec.collection);
    let projection = projection(&spec.fields);
    let batch = ctx.options().batch_size.max(1);
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut pending: HashMap<Vec<u8>, Vec<Document>> = HashMap::new();
    let mut rewritten = Vec::new();
    loop {
        let next = cursor
            .try_next()
            .await
            .map_err(Error::db("reading before-images"))?;
        let end = next.is_none();
        for entry in next
            .as_ref()
            .and_then(|c| c.get_array("entries").ok())
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_document())
        {
            if let Some(id) = entry.get("_id") {
                let key = key_of(id);
                if seen.insert(key.clone()) {
                    pending.insert(key, vec![entry.clone()]);
                }
            }
        }
        if pending.len() >= batch || (end && !pending.is_empty()) {
            let ids: Vec<Bson> = std::mem::take(&mut pending)
                .into_values()
                .filter_map(|e| e.first()?.get("_id").cloned())
                .collect();
            // Every entry of these documents: the newest may be a write not settled, and then
            // the one before it decides (see `owner`).
            let entries = super::owned::entries_of(ctx.db(), ctx.name(), &ids, ctx.stop()).await?;
            let current = find_all(
                &coll,
                doc! { "_id": { "$in": ids.clone() } },
                &projection,
                "re-reading written documents",
                ctx.stop(),
            )
            .await?;
            let part = recompute_with(
                ctx.db(),
                spec,
                transform,
                ctx.name(),
                current,
                &entries,
                ctx.stop(),
            )
            .await?;
            // Written, or changed again between the read and the write (its guard failed):
            // either way another round must look. Without a stream nothing else reports them.
            let again = part.modified + part.conflicts;
            if again > 0 {
                // Which ones is not reported by the write; the batch stands for them.
                rewritten.extend(ids.into_iter().take(again as usize));
            }
            stats.absorb_catch_up(part);
        }
        if end {
            return Ok(rewritten);
        }
    }
}

async fn save(
    ctx: &Context,
    done: &Position,
    stats: &Stats,
    token: Option<&Bson>,
    stream_complete: bool,
) -> Result<()> {
    if ctx.dry_run() {
        return Ok(());
    }
    let checkpoint = super::checkpoint::marked(to_checkpoint(done, stats, token), stream_complete);
    ctx.save_checkpoint(checkpoint).await
}

/// Whether a candidate read by a round still needs the change (an invalid or already migrated
/// document stays a candidate by the filter, but is not work left).
fn needs_change(spec: &Backfill, doc: &Document) -> bool {
    match &spec.transform {
        Transform::Server(_) => true,
        Transform::Client(transform) => match transform(doc) {
            Change::Update { set, unset } => !already_applied(doc, &set, &unset),
            Change::Unchanged | Change::Invalid(_) => false,
        },
    }
}
