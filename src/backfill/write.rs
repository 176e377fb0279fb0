//! Writes one batch in one round trip: an `update` command with many statements, unordered.
//!
//! Server path: each statement covers the batch's `_id` range and the candidate filter, so a redo
//! touches only documents that still need it. Client path: each statement is guarded on every
//! field the transform read (compare-and-set), so a redone batch has no second effect and a
//! concurrent application write is never overwritten; a document whose guard failed is re-read
//! and, if still a candidate, recomputed and written again.

use super::checkpoint::Stats;
use super::retry::with_retry;
use super::spec::{Backfill, Change, DocTransform, ServerUpdate, ServerUpdateKind};
use crate::error::{Error, Result};
use crate::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Database;
use rayon::prelude::*;

/// Conflict rounds before a document that keeps changing under us is left to a later run.
const CONFLICT_ROUNDS: usize = 3;

/// Result of one `update` command.
struct UpdateResult {
    matched: u64,
    modified: u64,
}

/// Sends `statements` as one unordered `update` command, retrying transient failures (safe: every
/// statement is idempotent by its filter).
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
    if let Ok(errors) = reply.get_array("writeErrors") {
        let first = errors
            .first()
            .and_then(Bson::as_document)
            .and_then(|e| e.get_str("errmsg").ok())
            .unwrap_or("unknown");
        return Err(Error::Migration {
            name: collection.to_string(),
            reason: format!("{} write error(s) in a batch, first: {first}", errors.len()),
        });
    }
    let n = |k: &str| {
        reply
            .get(k)
            .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
            .unwrap_or(0)
            .max(0) as u64
    };
    Ok(UpdateResult {
        matched: n("n"),
        modified: n("nModified"),
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

/// Applies the server-side updates to the candidates with `_id` in `[first, last]`.
pub async fn server_batch(
    db: &Database,
    spec: &Backfill,
    updates: &[ServerUpdate],
    ids: &[Bson],
    dry_run: bool,
    stop: &Stop,
) -> Result<Stats> {
    let (first, last) = (
        ids.first().expect("non-empty batch"),
        ids.last().expect("non-empty batch"),
    );
    let range = doc! { "_id": { "$gte": first.clone(), "$lte": last.clone() } };
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
        update.insert(
            "$unset",
            p.unset
                .iter()
                .map(|k| (k.clone(), Bson::String(String::new())))
                .collect::<Document>(),
        );
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
        if spec.before_images {
            let chunk = doc! {
                "migration": migration,
                "collection": &spec.collection,
                "createdAt": DateTime::now(),
                "entries": planned.iter().map(|p| Bson::Document(before_image(p))).collect::<Vec<_>>(),
            };
            let images = db.collection::<Document>(super::BEFORE_IMAGES);
            with_retry("saving before-images", stop, || {
                images.insert_one(chunk.clone())
            })
            .await?;
        }
        let statements = statements(spec, &planned, round == 0);
        let result = update_command(db, &spec.collection, statements, stop).await?;
        stats.modified += result.modified;
        if result.matched == planned.len() as u64 {
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
        let gone = planned.len() as u64 - result.matched;
        // Those already holding exactly what we would write were written by an earlier run of
        // this migration, killed with batches in flight that the server still completed after
        // this run read them: this migration's change, which no run has counted.
        let holding_ours = doc! { "$or": planned.iter().map(written).collect::<Vec<_>>() };
        let ours = with_retry("checking documents written meanwhile", stop, || {
            coll.count_documents(holding_ours.clone())
        })
        .await?;
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

/// `{_id, field: {$eq: value}, removed: {$exists: false}}`: the document as `p` would leave it.
fn written(p: &Planned) -> Bson {
    let mut q = doc! { "_id": p.id.clone() };
    for (k, v) in &p.set {
        q.insert(k.clone(), field_guard(Some(v)));
    }
    for k in &p.unset {
        q.insert(k.clone(), field_guard(None));
    }
    Bson::Document(q)
}

/// The batch's statements: one server-side update for the documents the fast path computes
/// exactly (first round only), one guarded statement per other document.
fn statements(spec: &Backfill, planned: &[Planned], use_fast_path: bool) -> Vec<Document> {
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
            doc! { "_id": { "$in": fast_ids } },
            spec.filter.clone(),
            fast.guard.clone(),
        ]);
        out.push(doc! { "q": q, "u": fast.pipeline.clone(), "multi": true });
    }
    out
}

/// `{_id: 1, f: 1, ...}`.
pub fn projection(fields: &[String]) -> Document {
    let mut p = doc! { "_id": 1 };
    for f in fields {
        p.insert(f.clone(), 1);
    }
    p
}
