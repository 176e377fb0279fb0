//! The server path: the backfill's own update documents or pipelines applied to a batch's
//! documents on the server (nothing travels to the client), each statement also matching the
//! candidate filter, so a redo touches only documents that still need it.

use super::checkpoint::Stats;
use super::missing::{set_if_missing, write_missing};
use super::retry::with_retry;
use super::spec::{Backfill, ServerUpdate, ServerUpdateKind};
use super::write::{and, update_command};
use crate::engine::error::Result;
use crate::engine::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;

/// Which documents a server-side batch covers.
pub enum Scope<'a> {
    /// The scan's batch: every `_id` from the first to the last read, in sort order (read with
    /// the fields [`set_if_missing`] names, if any).
    Range(&'a [Document]),
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
    let (scanned, range, read) = match scope {
        Scope::Range(docs) => {
            let id = |d: Option<&Document>| {
                d.and_then(|d| d.get("_id"))
                    .cloned()
                    .expect("non-empty batch")
            };
            let (first, last) = (id(docs.first()), id(docs.last()));
            (
                docs.len(),
                doc! { "_id": { "$gte": first, "$lte": last } },
                Some(docs),
            )
        }
        Scope::Ids(ids) => (ids.len(), doc! { "_id": { "$in": ids.to_vec() } }, None),
    };
    let mut stats = Stats {
        scanned: scanned as u64,
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
    // Fields set where missing, read by the scan: one write per document instead of one per field.
    if let (Some(fields), Some(docs)) = (set_if_missing(updates), read) {
        let (added, complete) = write_missing(
            db,
            &spec.collection,
            &spec.filter,
            &fields,
            docs,
            &range,
            stop,
        )
        .await?;
        stats.modified = added;
        if complete {
            stats.unchanged = stats.scanned.saturating_sub(added);
            return Ok(stats);
        }
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
    stats.modified += result.modified;
    stats.unchanged = stats.scanned.saturating_sub(stats.modified);
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
