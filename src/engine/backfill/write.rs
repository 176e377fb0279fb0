//! The client path: writes one batch of documents transformed in Rust with an `update` command of
//! many statements, unordered. It stores the batch's before-images first (when the backfill keeps
//! them), and re-reads and rewrites the documents whose guard failed, for a bounded number of
//! rounds. Each statement is guarded on every field the transform read (compare-and-set), so a
//! redone batch has no second effect and a concurrent application write is never overwritten.
//! Also the pieces every path shares: the `update` command, the guards, the projections. The
//! server path is `server.rs`; reading back fast-path writes is `readback.rs`; recomputing what
//! the run owns is `owned.rs`.

use super::checkpoint::{int, Stats};
use super::each::write_each;
use super::owned::{save_per_document, without_moved};
use super::readback::{record_what_was_written, FastWrite};
use super::retry::with_retry;
use super::spec::{Backfill, Change, DocTransform};
use crate::engine::error::{Error, Result};
use crate::engine::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use rayon::prelude::*;

/// Conflict rounds before a document that keeps changing under us is left to a later run.
const CONFLICT_ROUNDS: usize = 3;

/// Result of one `update` command.
pub(super) struct UpdateResult {
    pub(super) matched: u64,
    pub(super) modified: u64,
    /// `(statement index, message)` of the statements the server refused.
    pub(super) errors: Vec<(usize, String)>,
}

/// Sends `statements` as one unordered `update` command, retrying transient failures (safe: every
/// statement is idempotent by its filter). Statements the server refuses are returned, not
/// raised, so the caller can name the document or take another path.
pub(super) async fn update_command(
    db: &Database,
    collection: &str,
    statements: Vec<Document>,
    stop: &Stop,
) -> Result<UpdateResult> {
    let command = doc! { "update": collection, "updates": statements, "ordered": false };
    let reply = with_retry(&format!("writing a batch to {collection}"), stop, || {
        db.run_command(command.clone())
    })
    .await?;
    let errors = reply
        .get_array("writeErrors")
        .map(|errors| {
            errors
                .iter()
                .filter_map(Bson::as_document)
                .map(|e| {
                    (
                        int(e, "index") as usize,
                        e.get_str("errmsg").unwrap_or("unknown").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(UpdateResult {
        matched: int(&reply, "n"),
        modified: int(&reply, "nModified"),
        errors,
    })
}

/// Every document matching `filter`, with `projection`, retried like every read (used to read
/// batches of documents by `_id` again).
pub(super) async fn find_all(
    coll: &mongodb::Collection<Document>,
    filter: Document,
    projection: &Document,
    what: &str,
    stop: &Stop,
) -> Result<Vec<Document>> {
    with_retry(what, stop, || async {
        coll.find(filter.clone())
            .projection(projection.clone())
            .await?
            .try_collect()
            .await
    })
    .await
}

/// `{$and: [a, b, ...]}` without empty parts.
pub fn and(parts: Vec<Document>) -> Document {
    let mut parts: Vec<Document> = parts.into_iter().filter(|d| !d.is_empty()).collect();
    match parts.len() {
        0 => Document::new(),
        1 => parts.pop().unwrap(),
        _ => doc! { "$and": parts },
    }
}

/// A planned per-document write.
pub(super) struct Planned {
    pub(super) id: Bson,
    pub(super) set: Document,
    pub(super) unset: Vec<String>,
    pub(super) before: Document,
}

/// Runs the transform on rayon (off the async workers) and sorts the outcomes.
pub(super) async fn plan(
    transform: &DocTransform,
    docs: Vec<Document>,
    stats: &mut Stats,
) -> Vec<Planned> {
    let transform = transform.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let changes: Vec<Change> = docs.par_iter().map(|d| transform(d)).collect();
        let _ = tx.send((docs, changes));
    });
    let (docs, changes) = rx.await.expect("the rayon task sends before it ends");
    let mut planned = Vec::new();
    for (doc, change) in docs.into_iter().zip(changes) {
        stats.scanned += 1;
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        match change {
            Change::Invalid(reason) => stats.note_invalid(&id, reason),
            Change::Update { set, unset } if !already_applied(&doc, &set, &unset) => {
                planned.push(Planned {
                    id,
                    set,
                    unset,
                    before: doc,
                });
            }
            _ => stats.unchanged += 1,
        }
    }
    planned
}

pub(super) fn already_applied(doc: &Document, set: &Document, unset: &[String]) -> bool {
    set.iter().all(|(k, v)| same_value(doc.get(k), v)) && unset.iter().all(|k| !doc.contains_key(k))
}

/// Exact equality, type included (an Int32 0 is not a Double 0.0 for the data's owner).
fn same_value(current: Option<&Bson>, target: &Bson) -> bool {
    match (current, target) {
        (Some(Bson::Double(a)), Bson::Double(b)) => a.to_bits() == b.to_bits(),
        (Some(a), b) => a == b,
        (None, _) => false,
    }
}

/// The guard for one read field: its value as read, or its absence.
pub(super) fn field_guard(value: Option<&Bson>) -> Bson {
    match value {
        Some(v) => Bson::Document(doc! { "$eq": v.clone() }),
        None => Bson::Document(doc! { "$exists": false }),
    }
}

/// The `{_id, before, absent, after, removed}` entry that lets `down` restore a document, and
/// says what the document holds once written: `after` and `removed` cover every field of `owns`
/// (the fields the migration writes, see [`Backfill::owning`]), not only those this write
/// changes, so a document is the migration's only while all of them hold what it left.
pub(super) fn before_image(p: &Planned, owns: &[String]) -> Document {
    let mut before = Document::new();
    let mut absent = Vec::new();
    for key in p.set.keys().chain(p.unset.iter()) {
        match p.before.get(key) {
            Some(v) => {
                before.insert(key.clone(), v.clone());
            }
            None => absent.push(Bson::String(key.clone())),
        }
    }
    let mut after = p.set.clone();
    let mut removed: Vec<Bson> = p.unset.iter().map(|k| Bson::String(k.clone())).collect();
    for key in owns {
        if after.contains_key(key) || p.unset.contains(key) {
            continue;
        }
        match p.before.get(key) {
            Some(v) => {
                after.insert(key.clone(), v.clone());
            }
            None => removed.push(Bson::String(key.clone())),
        }
    }
    // Empty lists are left out: most entries have neither, and chunks stay small.
    let mut entry = doc! { "_id": p.id.clone(), "before": before, "after": after };
    if !absent.is_empty() {
        entry.insert("absent", absent);
    }
    if !removed.is_empty() {
        entry.insert("removed", removed);
    }
    entry
}

/// The guarded statement for one document: it matches only while every read field (`fields`)
/// is still as read. Built only for the documents written one by one, not for every document
/// planned (most go in one server-side statement).
pub(super) fn statement(p: &Planned, fields: &[String]) -> Document {
    let mut guard = doc! { "_id": p.id.clone() };
    for f in fields {
        guard.insert(f.clone(), field_guard(p.before.get(f)));
    }
    let mut update = Document::new();
    if !p.set.is_empty() {
        update.insert("$set", p.set.clone());
    }
    if !p.unset.is_empty() {
        update.insert("$unset", crate::engine::bson_ext::unset(&p.unset));
    }
    doc! { "q": guard, "u": update }
}

/// The server refused the write of one document: the error names it.
pub(super) fn refused(spec: &Backfill, id: &Bson, message: &str, migration: &str) -> Error {
    Error::migration(
        migration,
        format!(
            "the server refused the write of {} {}: {message}",
            spec.collection,
            Bson::Document(doc! { "_id": id.clone() }).into_relaxed_extjson()
        ),
    )
}

/// The refusal of a batch holding invalid data under `--fail-on-invalid`.
pub(super) fn invalid_refusal(spec: &Backfill, migration: &str, stats: &Stats) -> Error {
    Error::migration(
        migration,
        format!(
            "invalid data and --fail-on-invalid is set: {} document(s) in {} cannot be migrated ({}), e.g. {}. Fix them, or run without --fail-on-invalid to skip and report them",
            stats.invalid,
            spec.collection,
            crate::engine::bson_ext::show_counts(&stats.invalid_reasons),
            Bson::Array(stats.invalid_samples.clone()).into_relaxed_extjson()
        ),
    )
}

/// Transforms and writes one batch of documents read by the scan.
#[allow(clippy::too_many_arguments)]
pub async fn client_batch(
    db: &Database,
    spec: &Backfill,
    transform: &DocTransform,
    docs: Vec<Document>,
    migration: &str,
    dry_run: bool,
    fail_on_invalid: bool,
    stop: &Stop,
) -> Result<Stats> {
    let mut stats = Stats {
        batches: 1,
        ..Default::default()
    };
    let mut planned = plan(transform, docs, &mut stats).await;
    if fail_on_invalid && stats.invalid > 0 {
        return Err(invalid_refusal(spec, migration, &stats));
    }
    // When the entries were last looked at (see `undo_met_halfway`).
    let mut checked = super::before_image::chunk_time();
    if !dry_run {
        planned = without_moved(db, spec, migration, planned, &mut stats, stop).await?;
    }
    if dry_run {
        stats.modified = planned.len() as u64;
        stats.samples = planned
            .iter()
            .take(3)
            .map(|p| {
                let mut after = p.before.clone();
                for (k, v) in &p.set {
                    after.insert(k.clone(), v.clone());
                }
                for k in &p.unset {
                    after.remove(k);
                }
                Bson::Document(
                    doc! { "_id": p.id.clone(), "before": p.before.clone(), "after": after },
                )
            })
            .collect();
        return Ok(stats);
    }
    let coll = db.collection::<Document>(&spec.collection);
    let mut use_fast_path = true;
    for round in 0..=CONFLICT_ROUNDS {
        if planned.is_empty() {
            break;
        }
        if round == CONFLICT_ROUNDS {
            stats.conflicts += planned.len() as u64;
            tracing::warn!(
                collection = %spec.collection,
                count = planned.len(),
                "documents kept changing during the batch; left for the next run"
            );
            break;
        }
        let mut chunk = None;
        // Every chunk holding this round's entries, to take back those of writes that did not
        // happen.
        let mut saved = Vec::new();
        if spec.before_images && spec.per_document_images {
            saved = save_per_document(db, spec, migration, &planned, stop).await?;
        } else if spec.before_images {
            let entries: Vec<Bson> = planned
                .iter()
                .map(|p| Bson::Document(before_image(p, &spec.owns)))
                .collect();
            let doc = doc! {
                "migration": migration,
                "collection": &spec.collection,
                "createdAt": super::before_image::chunk_time(),
                super::owned::PENDING: true,
                "entries": entries.clone(),
            };
            let images = db.collection::<Document>(super::BEFORE_IMAGES);
            let id = with_retry("saving before-images", stop, || {
                images.insert_one(doc.clone())
            })
            .await?
            .inserted_id;
            saved.push(id.clone());
            chunk = Some((id, entries));
        }
        let (guarded, fast) = statements(spec, &planned, use_fast_path);
        let (mut matched, mut fast_failed, mut retried) = (0u64, false, false);
        // Entries of the writes that may not have happened, for `settle_after` to check.
        let mut missed: Vec<Document> = Vec::new();
        if let Some((fast, statement)) = &fast {
            let result =
                update_command(db, &spec.collection, vec![statement.clone()], stop).await?;
            (matched, fast_failed) = (result.matched, !result.errors.is_empty());
            // A failed server-side update may have written part of its documents.
            retried = fast_failed;
            stats.modified += result.modified;
            if let Some((_, message)) = result.errors.first() {
                // The server could not compute some document (e.g. a value outside its exact
                // range): the documents it did not write go one by one in the next round.
                tracing::warn!(
                    collection = %spec.collection,
                    error = %message,
                    "the server-side update of a batch failed; writing its documents one by one"
                );
                use_fast_path = false;
                missed.extend(
                    planned
                        .iter()
                        .filter(|p| fast.ids.contains(&p.id))
                        .map(|p| before_image(p, &spec.owns)),
                );
            } else if let Some((chunk_id, entries)) = chunk.take() {
                let written = record_what_was_written(
                    db, spec, transform, &planned, fast, chunk_id, entries, stop,
                )
                .await?;
                // The server computed from inputs the application changed since the read: what
                // it set is this batch's write (a reset met half-way is undone from it below).
                for (i, set) in written {
                    planned[i].set = set;
                }
            }
        }
        let each = write_each(
            db,
            spec,
            guarded.iter().map(|(_, s)| s.clone()).collect(),
            stop,
        )
        .await?;
        matched += each.matched_count();
        stats.modified += each.modified;
        missed.extend(
            guarded
                .iter()
                .zip(&each.matched)
                .filter(|(_, matched)| !**matched)
                .map(|((i, _), _)| before_image(&planned[*i], &spec.owns)),
        );
        let wrote: Vec<&Planned> = {
            let missed_ids: Vec<&Bson> = missed.iter().filter_map(|e| e.get("_id")).collect();
            planned
                .iter()
                .filter(|p| !missed_ids.contains(&&p.id))
                .collect()
        };
        super::owned::settle_after(db, spec, &saved, missed, retried || each.retried, stop).await?;
        if let Some((index, message)) = each.errors.first() {
            return Err(refused(
                spec,
                &planned[guarded[*index].0].id,
                message,
                migration,
            ));
        }
        let undone =
            super::owned::undo_met_halfway(db, spec, migration, &wrote, &saved, checked, stop)
                .await?;
        stats.modified = stats.modified.saturating_sub(undone);
        if !fast_failed && matched == planned.len() as u64 {
            break;
        }
        // Some guards failed: someone wrote those documents since we read them. Re-read the
        // ones still eligible and recompute; the ones written by us now come back unchanged.
        let ids: Vec<Bson> = planned.iter().map(|p| p.id.clone()).collect();
        let filter = and(vec![doc! { "_id": { "$in": ids } }, spec.filter.clone()]);
        let reread = find_all(
            &coll,
            filter,
            &projection(&spec.fields),
            "re-reading changed documents",
            stop,
        )
        .await?;
        let gone = planned.len() as u64 - matched.min(planned.len() as u64);
        // Those no longer candidates but holding exactly what we would write were written by an
        // earlier run of this migration, killed with batches in flight that the server still
        // completed after this run read them: this migration's change, which no run has counted.
        let still: std::collections::HashSet<Vec<u8>> = reread
            .iter()
            .filter_map(|d| d.get("_id").map(super::catch_up::key_of))
            .collect();
        let left: Vec<&Planned> = planned
            .iter()
            .filter(|p| !still.contains(&super::catch_up::key_of(&p.id)))
            .collect();
        let ours = holding_ours(&coll, &left, stop).await?;
        let written_before = ours.saturating_sub(matched).min(gone);
        stats.modified += written_before;
        let mut again = Stats::default();
        planned = plan(transform, reread, &mut again).await;
        // What this batch just wrote may have been moved by the application since (a reset
        // makes it a candidate again): from here on the entries decide, whatever the run knew
        // before it wrote anything.
        spec.run.owning_some();
        checked = super::before_image::chunk_time();
        planned = without_moved(db, spec, migration, planned, &mut again, stop).await?;
        stats.absorb_moved_of(&again);
        // Written by us in this round: counted in `modified`, not again.
        let still_pending = planned.len() as u64;
        // Those no longer eligible (or now invalid) were changed by the application: left alone.
        stats.conflicts += gone.saturating_sub(still_pending + written_before + again.moved);
    }
    stats.unchanged = stats
        .scanned
        .saturating_sub(stats.modified + stats.invalid + stats.conflicts + stats.moved);
    Ok(stats)
}

/// How many of `planned` hold exactly what they would be written to. One `$in` read (a `$or`
/// of one clause per document is orders of magnitude slower on some servers).
async fn holding_ours(
    coll: &mongodb::Collection<Document>,
    planned: &[&Planned],
    stop: &Stop,
) -> Result<u64> {
    if planned.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Bson> = planned.iter().map(|p| p.id.clone()).collect();
    let current: Vec<Document> =
        with_retry("checking documents written meanwhile", stop, || async {
            coll.find(doc! { "_id": { "$in": ids.clone() } })
                .await?
                .try_collect()
                .await
        })
        .await?;
    Ok(planned
        .iter()
        .filter(|p| {
            current
                .iter()
                .find(|d| d.get("_id") == Some(&p.id))
                .is_some_and(|d| already_applied(d, &p.set, &p.unset))
        })
        .count() as u64)
}

/// A guarded statement, with the index in `planned` of the document it writes.
type Guarded = (usize, Document);

/// The batch's statements: one guarded statement per document (with its index in `planned`),
/// and one server-side update for the documents the fast path computes exactly (first round
/// only).
fn statements(
    spec: &Backfill,
    planned: &[Planned],
    use_fast_path: bool,
) -> (Vec<Guarded>, Option<(FastWrite, Document)>) {
    let mut guarded = Vec::new();
    let mut fast_ids = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        match &spec.fast_path {
            Some(fast) if use_fast_path && (fast.exact_for)(&p.before) => {
                fast_ids.push(p.id.clone())
            }
            _ => guarded.push((i, statement(p, &spec.fields))),
        }
    }
    if let (Some(fast), false) = (&spec.fast_path, fast_ids.is_empty()) {
        let q = and(vec![
            doc! { "_id": { "$in": fast_ids.clone() } },
            spec.filter.clone(),
            fast.guard.clone(),
        ]);
        let statement = doc! { "q": q, "u": fast.pipeline.clone(), "multi": true };
        return (guarded, Some((FastWrite { ids: fast_ids }, statement)));
    }
    (guarded, None)
}

/// `{_id: 1, f: 1, ...}`.
pub fn projection(fields: &[String]) -> Document {
    let mut p = doc! { "_id": 1 };
    for f in fields {
        p.insert(f.clone(), 1);
    }
    p
}
