//! Writes one batch with an `update` command of many statements, unordered. The server path
//! takes that one round trip; the client path may take several: it stores the batch's
//! before-images first (when the backfill keeps them), and re-reads and rewrites the documents
//! whose guard failed, for a bounded number of rounds.
//!
//! Server path: each statement covers the batch's `_id` range and the candidate filter, so a redo
//! touches only documents that still need it. Client path: each statement is guarded on every
//! field the transform read (compare-and-set), so a redone batch has no second effect and a
//! concurrent application write is never overwritten; a document whose guard failed is re-read
//! and, if still a candidate, recomputed and written again.

use super::checkpoint::{int, Stats};
use super::retry::with_retry;
use super::spec::{Backfill, Change, DocTransform, ServerUpdate, ServerUpdateKind};
use crate::engine::error::{Error, Result};
use crate::engine::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Database;
use rayon::prelude::*;

/// Databases whose before-images were indexed by document in this process.
static INDEXED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Conflict rounds before a document that keeps changing under us is left to a later run.
const CONFLICT_ROUNDS: usize = 3;

/// Result of one `update` command.
struct UpdateResult {
    matched: u64,
    modified: u64,
    /// `(statement index, message)` of the statements the server refused.
    errors: Vec<(usize, String)>,
}

impl UpdateResult {
    /// The refused statements as an error of `what`, naming the first.
    fn into_error(self, what: &str) -> Error {
        let (index, first) = self.errors.first().cloned().unwrap_or_default();
        Error::Migration {
            name: what.to_string(),
            reason: format!(
                "{} write error(s) in a batch, first (statement {index}): {first}",
                self.errors.len()
            ),
        }
    }
}

/// Sends `statements` as one unordered `update` command, retrying transient failures (safe: every
/// statement is idempotent by its filter). Statements the server refuses are returned, not
/// raised, so the caller can name the document or take another path.
async fn update_command(
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

/// `{$and: [a, b, ...]}` without empty parts.
pub fn and(parts: Vec<Document>) -> Document {
    let mut parts: Vec<Document> = parts.into_iter().filter(|d| !d.is_empty()).collect();
    match parts.len() {
        0 => Document::new(),
        1 => parts.pop().unwrap(),
        _ => doc! { "$and": parts },
    }
}

/// Which documents a server-side batch covers.
pub enum Scope<'a> {
    /// The scan's batch: every `_id` from the first to the last read, in sort order.
    Range(&'a [Bson]),
    /// Documents named one by one (catch-up), in no particular order.
    Ids(&'a [Bson]),
}

/// Applies the server-side updates to the candidates in `scope`.
pub async fn server_batch(
    db: &Database,
    spec: &Backfill,
    updates: &[ServerUpdate],
    scope: Scope<'_>,
    dry_run: bool,
    stop: &Stop,
) -> Result<Stats> {
    let (ids, range) = match scope {
        Scope::Range(ids) => {
            let (first, last) = (
                ids.first().expect("non-empty batch"),
                ids.last().expect("non-empty batch"),
            );
            (
                ids,
                doc! { "_id": { "$gte": first.clone(), "$lte": last.clone() } },
            )
        }
        Scope::Ids(ids) => (ids, doc! { "_id": { "$in": ids.to_vec() } }),
    };
    let mut stats = Stats {
        scanned: ids.len() as u64,
        batches: 1,
        ..Default::default()
    };
    if dry_run {
        let coll = db.collection::<Document>(&spec.collection);
        for update in updates {
            let filter = and(vec![
                spec.filter.clone(),
                update.filter.clone(),
                range.clone(),
            ]);
            stats.modified += with_retry("counting a batch", stop, || {
                coll.count_documents(filter.clone())
            })
            .await?;
            if stats.samples.len() < 3 {
                if let ServerUpdateKind::Operators(ops) = &update.update {
                    let found: Vec<Document> = with_retry("sampling a batch", stop, || async {
                        coll.find(filter.clone())
                            .limit(3)
                            .await?
                            .try_collect()
                            .await
                    })
                    .await?;
                    stats.samples.extend(found.into_iter().map(|before| {
                        let after = simulate(&before, ops);
                        Bson::Document(doc! { "_id": before.get("_id").cloned().unwrap_or(Bson::Null), "before": before, "after": after })
                    }));
                }
            }
        }
        stats.unchanged = stats.scanned.saturating_sub(stats.modified);
        return Ok(stats);
    }
    let statements = updates
        .iter()
        .map(|u| {
            let q = and(vec![range.clone(), spec.filter.clone(), u.filter.clone()]);
            match &u.update {
                ServerUpdateKind::Operators(ops) => {
                    doc! { "q": q, "u": ops.clone(), "multi": true }
                }
                ServerUpdateKind::Pipeline(stages) => {
                    doc! { "q": q, "u": stages.clone(), "multi": true }
                }
            }
        })
        .collect();
    let result = update_command(db, &spec.collection, statements, stop).await?;
    if !result.errors.is_empty() {
        return Err(result.into_error(&spec.collection));
    }
    stats.modified = result.modified;
    stats.unchanged = stats.scanned.saturating_sub(result.modified);
    Ok(stats)
}

/// `$set` / `$unset` applied in memory, for dry-run samples.
fn simulate(before: &Document, ops: &Document) -> Document {
    let mut after = before.clone();
    if let Ok(set) = ops.get_document("$set") {
        for (k, v) in set {
            after.insert(k.clone(), v.clone());
        }
    }
    if let Ok(unset) = ops.get_document("$unset") {
        for k in unset.keys() {
            after.remove(k);
        }
    }
    after
}

/// A planned per-document write.
struct Planned {
    id: Bson,
    guard: Document,
    set: Document,
    unset: Vec<String>,
    before: Document,
}

/// Runs the transform on rayon (off the async workers) and sorts the outcomes.
async fn plan(
    transform: &DocTransform,
    fields: &[String],
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
                let mut guard = doc! { "_id": id.clone() };
                for f in fields {
                    guard.insert(f.clone(), field_guard(doc.get(f)));
                }
                planned.push(Planned {
                    id,
                    guard,
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

fn already_applied(doc: &Document, set: &Document, unset: &[String]) -> bool {
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
fn field_guard(value: Option<&Bson>) -> Bson {
    match value {
        Some(v) => Bson::Document(doc! { "$eq": v.clone() }),
        None => Bson::Document(doc! { "$exists": false }),
    }
}

/// The `{_id, before, absent, after, removed}` entry that lets `down` restore a document.
fn before_image(p: &Planned) -> Document {
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
    // Empty lists are left out: most entries have neither, and chunks stay small.
    let mut entry = doc! { "_id": p.id.clone(), "before": before, "after": p.set.clone() };
    if !absent.is_empty() {
        entry.insert("absent", absent);
    }
    if !p.unset.is_empty() {
        entry.insert(
            "removed",
            p.unset
                .iter()
                .map(|k| Bson::String(k.clone()))
                .collect::<Vec<_>>(),
        );
    }
    entry
}

fn statement(p: &Planned) -> Document {
    let mut update = Document::new();
    if !p.set.is_empty() {
        update.insert("$set", p.set.clone());
    }
    if !p.unset.is_empty() {
        update.insert("$unset", crate::engine::bson_ext::unset(&p.unset));
    }
    doc! { "q": p.guard.clone(), "u": update }
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
    let mut planned = plan(transform, &spec.fields, docs, &mut stats).await;
    if fail_on_invalid && stats.invalid > 0 {
        return Err(Error::migration(
            migration,
            format!(
                "invalid data and --fail-on-invalid is set: {} document(s) in {} cannot be migrated ({:?}), e.g. {}. Fix them, or run without --fail-on-invalid to skip and report them",
                stats.invalid,
                spec.collection,
                stats.invalid_reasons,
                Bson::Array(stats.invalid_samples.clone()).into_relaxed_extjson()
            ),
        ));
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
        if spec.before_images && spec.per_document_images {
            save_per_document(db, spec, migration, &planned, stop).await?;
        } else if spec.before_images {
            let entries: Vec<Bson> = planned
                .iter()
                .map(|p| Bson::Document(before_image(p)))
                .collect();
            let doc = doc! {
                "migration": migration,
                "collection": &spec.collection,
                "createdAt": DateTime::now(),
                "entries": entries.clone(),
            };
            let images = db.collection::<Document>(super::BEFORE_IMAGES);
            let id = with_retry("saving before-images", stop, || {
                images.insert_one(doc.clone())
            })
            .await?
            .inserted_id;
            chunk = Some((id, entries));
        }
        let (statements, fast) = statements(spec, &planned, use_fast_path);
        let fast_index = fast.as_ref().map(|_| statements.len() - 1);
        let result = update_command(db, &spec.collection, statements, stop).await?;
        stats.modified += result.modified;
        if let Some((index, message)) = result.errors.iter().find(|(i, _)| Some(*i) != fast_index) {
            let id = planned
                .iter()
                .filter(|p| !fast.as_ref().is_some_and(|f| f.ids.contains(&p.id)))
                .nth(*index)
                .map(|p| p.id.clone())
                .unwrap_or(Bson::Null);
            return Err(Error::migration(
                migration,
                format!(
                    "the server refused the write of {} {}: {message}",
                    spec.collection,
                    Bson::Document(doc! { "_id": id }).into_relaxed_extjson()
                ),
            ));
        }
        let fast_failed = !result.errors.is_empty();
        if fast_failed {
            // The server could not compute some document (e.g. a value outside its exact range):
            // the documents it did not write go one by one in the next round.
            tracing::warn!(
                collection = %spec.collection,
                error = %result.errors[0].1,
                "the server-side update of a batch failed; writing its documents one by one"
            );
            use_fast_path = false;
        }
        if let (Some(fast), Some((chunk_id, entries))) = (&fast, chunk.take()) {
            if !fast_failed {
                record_what_was_written(
                    db, spec, transform, &planned, fast, chunk_id, entries, stop,
                )
                .await?;
            }
        }
        if !fast_failed && result.matched == planned.len() as u64 {
            break;
        }
        // Some guards failed: someone wrote those documents since we read them. Re-read the
        // ones still eligible and recompute; the ones written by us now come back unchanged.
        let ids: Vec<Bson> = planned.iter().map(|p| p.id.clone()).collect();
        let filter = and(vec![doc! { "_id": { "$in": ids } }, spec.filter.clone()]);
        let projection = projection(&spec.fields);
        let reread: Vec<Document> = with_retry("re-reading changed documents", stop, || async {
            coll.find(filter.clone())
                .projection(projection.clone())
                .await?
                .try_collect()
                .await
        })
        .await?;
        let gone = planned.len() as u64 - result.matched.min(planned.len() as u64);
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
        let written_before = ours.saturating_sub(result.matched).min(gone);
        stats.modified += written_before;
        let mut again = Stats::default();
        planned = plan(transform, &spec.fields, reread, &mut again).await;
        // Written by us in this round: counted in `modified`, not again.
        let still_pending = planned.len() as u64;
        // Those no longer eligible (or now invalid) were changed by the application: left alone.
        stats.conflicts += gone.saturating_sub(still_pending + written_before);
    }
    stats.unchanged = stats
        .scanned
        .saturating_sub(stats.modified + stats.invalid + stats.conflicts);
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

/// The documents of a batch written by the fast path.
struct FastWrite {
    ids: Vec<Bson>,
}

/// Makes the before-images of the fast path's documents say what the server actually wrote.
///
/// The server computes from the document as it is when written, which is what was read unless
/// the application changed an input in between. Such a document is read back: if its fields are
/// exactly what the transform gives for its current inputs, that is what this batch wrote, and its
/// entry records it, so `down` restores it. Anything else (the application also changed a written
/// field) keeps the entry as it is, and `down` reports the document as changed rather than
/// overwrite the application's value.
#[allow(clippy::too_many_arguments)]
async fn record_what_was_written(
    db: &Database,
    spec: &Backfill,
    transform: &DocTransform,
    planned: &[Planned],
    fast: &FastWrite,
    chunk_id: Bson,
    mut entries: Vec<Bson>,
    stop: &Stop,
) -> Result<()> {
    let coll = db.collection::<Document>(&spec.collection);
    let projection = projection(&spec.fields);
    let ids = fast.ids.clone();
    let current: Vec<Document> = with_retry("reading back a written batch", stop, || async {
        coll.find(doc! { "_id": { "$in": ids.clone() } })
            .projection(projection.clone())
            .await?
            .try_collect()
            .await
    })
    .await?;
    let by_id: std::collections::HashMap<Vec<u8>, &Document> = current
        .iter()
        .filter_map(|d| d.get("_id").map(|id| (super::catch_up::key_of(id), d)))
        .collect();
    let mut corrected = 0usize;
    for (p, entry) in planned.iter().zip(entries.iter_mut()) {
        let Some(now) = by_id.get(&super::catch_up::key_of(&p.id)) else {
            continue;
        };
        if already_applied(now, &p.set, &p.unset) {
            continue;
        }
        // The inputs as they are now, with the written fields as they were before the write.
        let mut inputs = (*now).clone();
        for key in p.set.keys().chain(p.unset.iter()) {
            match p.before.get(key) {
                Some(v) => inputs.insert(key.clone(), v.clone()),
                None => inputs.remove(key),
            };
        }
        if let Change::Update { set, unset } = transform(&inputs) {
            if unset == p.unset && set.keys().eq(p.set.keys()) && already_applied(now, &set, &unset)
            {
                if let Some(e) = entry.as_document_mut() {
                    e.insert("after", set);
                    corrected += 1;
                }
            }
        }
    }
    if corrected > 0 {
        let images = db.collection::<Document>(super::BEFORE_IMAGES);
        with_retry("correcting before-images", stop, || {
            images.update_one(
                doc! { "_id": chunk_id.clone() },
                doc! { "$set": { "entries": entries.clone() } },
            )
        })
        .await?;
        tracing::debug!(
            corrected,
            "inputs changed between read and write; before-images record what was written"
        );
    }
    Ok(())
}

/// The batch's statements: one server-side update for the documents the fast path computes
/// exactly (first round only), one guarded statement per other document.
fn statements(
    spec: &Backfill,
    planned: &[Planned],
    use_fast_path: bool,
) -> (Vec<Document>, Option<FastWrite>) {
    let mut out = Vec::new();
    let mut fast_ids = Vec::new();
    for p in planned {
        match &spec.fast_path {
            Some(fast) if use_fast_path && (fast.exact_for)(&p.before) => {
                fast_ids.push(p.id.clone())
            }
            _ => out.push(statement(p)),
        }
    }
    if let (Some(fast), false) = (&spec.fast_path, fast_ids.is_empty()) {
        let q = and(vec![
            doc! { "_id": { "$in": fast_ids.clone() } },
            spec.filter.clone(),
            fast.guard.clone(),
        ]);
        out.push(doc! { "q": q, "u": fast.pipeline.clone(), "multi": true });
        return (out, Some(FastWrite { ids: fast_ids }));
    }
    (out, None)
}

/// `{_id: 1, f: 1, ...}`.
pub fn projection(fields: &[String]) -> Document {
    let mut p = doc! { "_id": 1 };
    for f in fields {
        p.insert(f.clone(), 1);
    }
    p
}

/// Recomputes documents this migration wrote earlier in the run whose inputs the application
/// changed since: as long as a document still holds exactly what the migration wrote (its latest
/// before-image's `after`), the value is the migration's own, and it must follow the inputs (a
/// balance is half of the *current* earnings). A document whose written fields the application
/// changed is the application's, and is left alone.
///
/// `ids` are documents that are no longer candidates. Returns the counters of what was written.
pub async fn recompute_owned(
    db: &Database,
    spec: &Backfill,
    transform: &DocTransform,
    migration: &str,
    ids: Vec<Bson>,
    stop: &Stop,
) -> Result<Stats> {
    if ids.is_empty() || !spec.before_images {
        return Ok(Stats::default());
    }
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    ensure_image_indexes(db, stop).await?;
    // Images saved one per document (while the application writes) are found by index; only
    // documents not among them are looked for in the batch images of quieter stretches.
    let single: Vec<Document> = with_retry("reading before-images", stop, || async {
        images
            .find(doc! { "migration": migration, "doc": { "$in": ids.clone() } })
            .sort(doc! { "_id": -1 })
            .projection(doc! { "entries": 1 })
            .await?
            .try_collect()
            .await
    })
    .await?;
    let coll = db.collection::<Document>(&spec.collection);
    let projection = projection(&spec.fields);
    let current: Vec<Document> = with_retry("re-reading written documents", stop, || async {
        coll.find(doc! { "_id": { "$in": ids.clone() } })
            .projection(projection.clone())
            .await?
            .try_collect()
            .await
    })
    .await?;
    // Newest first. A batch saves its entries before it writes, and a write whose guard failed
    // leaves an entry that never happened: the entry that counts is the newest one whose `after`
    // the document holds.
    let mut entries: std::collections::HashMap<Vec<u8>, Vec<Document>> = Default::default();
    group(
        &mut entries,
        single
            .into_iter()
            .filter_map(|c| c.get_array("entries").ok()?.first()?.as_document().cloned())
            .collect(),
    );
    let holds = |doc: &Document, e: &Document| {
        let after = e.get_document("after").cloned().unwrap_or_default();
        already_applied(doc, &after, &strings_of(e, "removed"))
    };
    // Documents none of whose single images they hold: look in the batch images.
    let missing: Vec<Bson> = current
        .iter()
        .filter(|d| {
            d.get("_id").is_some_and(|id| {
                entries
                    .get(&super::catch_up::key_of(id))
                    .is_none_or(|es| !es.iter().any(|e| holds(d, e)))
            })
        })
        .filter_map(|d| d.get("_id").cloned())
        .collect();
    if !missing.is_empty() {
        let older: Vec<Document> = with_retry("reading before-images", stop, || async {
            images
                .aggregate(vec![
                    doc! { "$match": { "migration": migration, "doc": { "$exists": false }, "entries._id": { "$in": missing.clone() } } },
                    doc! { "$sort": { "_id": -1 } },
                    doc! { "$unwind": "$entries" },
                    doc! { "$match": { "entries._id": { "$in": missing.clone() } } },
                    doc! { "$replaceRoot": { "newRoot": "$entries" } },
                ])
                .await?
                .try_collect()
                .await
        })
        .await?;
        group(&mut entries, older);
    }
    recompute_with(db, spec, transform, migration, current, &entries, stop).await
}

/// Recomputes the documents `current` (read with the spec's projection) from their before-image
/// `entries` (per document, newest first): see [`recompute_owned`].
pub async fn recompute_with(
    db: &Database,
    spec: &Backfill,
    transform: &DocTransform,
    migration: &str,
    current: Vec<Document>,
    entries: &std::collections::HashMap<Vec<u8>, Vec<Document>>,
    stop: &Stop,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let holds = |doc: &Document, e: &Document| {
        let after = e.get_document("after").cloned().unwrap_or_default();
        already_applied(doc, &after, &strings_of(e, "removed"))
    };
    let mut planned = Vec::new();
    for doc in current {
        let Some(id) = doc.get("_id").cloned() else {
            continue;
        };
        let Some(candidates) = entries.get(&super::catch_up::key_of(&id)) else {
            continue;
        };
        let Some(entry) = candidates.iter().find(|e| holds(&doc, e)) else {
            continue; // the application changed a written field: its value now
        };
        let after = entry.get_document("after").cloned().unwrap_or_default();
        let removed = strings_of(entry, "removed");
        // The inputs as they are now, with the written fields as before the migration wrote.
        let mut inputs = doc.clone();
        if let Ok(before) = entry.get_document("before") {
            for (k, v) in before {
                inputs.insert(k.clone(), v.clone());
            }
        }
        for k in strings_of(entry, "absent") {
            inputs.remove(&k);
        }
        let (set, unset) = match transform(&inputs) {
            Change::Invalid(reason) => {
                stats.note_invalid(&id, reason);
                continue;
            }
            Change::Unchanged => (Document::new(), Vec::new()),
            Change::Update { set, unset } => (set, unset),
        };
        // What the document should hold for its current inputs, over every field written.
        let mut desired = inputs.clone();
        for (k, v) in &set {
            desired.insert(k.clone(), v.clone());
        }
        for k in &unset {
            desired.remove(k);
        }
        let mut target_set = Document::new();
        let mut target_unset = Vec::new();
        for key in after.keys().chain(set.keys()).chain(removed.iter()) {
            if target_set.contains_key(key) || target_unset.contains(key) {
                continue;
            }
            match desired.get(key) {
                Some(v) => {
                    target_set.insert(key.clone(), v.clone());
                }
                None => target_unset.push(key.clone()),
            }
        }
        if already_applied(&doc, &target_set, &target_unset) {
            continue;
        }
        let mut guard = doc! { "_id": id.clone() };
        for f in &spec.fields {
            guard.insert(f.clone(), field_guard(doc.get(f)));
        }
        planned.push(Planned {
            id,
            guard,
            set: target_set,
            unset: target_unset,
            before: doc,
        });
    }
    stats.scanned = planned.len() as u64;
    if planned.is_empty() {
        return Ok(stats);
    }
    save_per_document(db, spec, migration, &planned, stop).await?;
    let statements: Vec<Document> = planned.iter().map(statement).collect();
    let result = update_command(db, &spec.collection, statements, stop).await?;
    if !result.errors.is_empty() {
        return Err(result.into_error(&spec.collection));
    }
    stats.modified = result.modified;
    // A guard that failed: the application wrote it again, and its event brings it back.
    stats.conflicts = (planned.len() as u64).saturating_sub(result.matched);
    Ok(stats)
}

/// Adds before-image entries to the per-document lists, keeping their order.
fn group(entries: &mut std::collections::HashMap<Vec<u8>, Vec<Document>>, found: Vec<Document>) {
    for e in found {
        if let Some(id) = e.get("_id") {
            entries
                .entry(super::catch_up::key_of(id))
                .or_default()
                .push(e);
        }
    }
}

fn strings_of(entry: &Document, key: &str) -> Vec<String> {
    entry
        .get_array(key)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Saves one before-image per document: a chunk of one entry, with the document's `_id` in `doc`
/// so catch-up finds it by index. Restores read them like any chunk.
async fn save_per_document(
    db: &Database,
    spec: &Backfill,
    migration: &str,
    planned: &[Planned],
    stop: &Stop,
) -> Result<()> {
    if planned.is_empty() {
        return Ok(());
    }
    ensure_image_indexes(db, stop).await?;
    let now = DateTime::now();
    let chunks: Vec<Document> = planned
        .iter()
        .map(|p| {
            doc! {
                "migration": migration,
                "collection": &spec.collection,
                "createdAt": now,
                "doc": p.id.clone(),
                "entries": [Bson::Document(before_image(p))],
            }
        })
        .collect();
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    with_retry("saving before-images", stop, || {
        images.insert_many(chunks.clone()).ordered(false)
    })
    .await?;
    Ok(())
}

/// The indexes that find before-images by document, made once per database and process, and
/// only when the application writes during a run (a quiet run never pays for keeping them).
async fn ensure_image_indexes(db: &Database, stop: &Stop) -> Result<()> {
    if !INDEXED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(db.name().to_string())
    {
        return Ok(());
    }
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    let indexes = vec![
        mongodb::IndexModel::builder()
            .keys(doc! { "migration": 1, "doc": 1 })
            .build(),
        mongodb::IndexModel::builder()
            .keys(doc! { "migration": 1, "entries._id": 1 })
            .build(),
    ];
    with_retry("indexing before-images", stop, || {
        images.create_indexes(indexes.clone())
    })
    .await?;
    Ok(())
}
