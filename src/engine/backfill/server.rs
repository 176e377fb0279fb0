//! The server path: the backfill's own update documents or pipelines applied to a batch's
//! documents on the server (nothing travels to the client), each statement also matching the
//! candidate filter, so a redo touches only documents that still need it.

use super::checkpoint::Stats;
use super::missing::{set_if_missing, write_missing};
use super::retry::with_retry;
use super::spec::{Backfill, ServerUpdate, ServerUpdateKind};
use super::write::{and, update_command};
use crate::engine::bson_ext::show;
use crate::engine::error::{Error, Result};
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
    let filters: Vec<Document> = updates
        .iter()
        .map(|u| and(vec![range.clone(), spec.filter.clone(), u.filter.clone()]))
        .collect();
    let statements = updates
        .iter()
        .zip(&filters)
        .map(|(u, q)| match &u.update {
            ServerUpdateKind::Operators(ops) => {
                doc! { "q": q.clone(), "u": ops.clone(), "multi": true }
            }
            ServerUpdateKind::Pipeline(stages) => {
                doc! { "q": q.clone(), "u": stages.clone(), "multi": true }
            }
        })
        .collect();
    let result = update_command(db, &spec.collection, statements, stop).await?;
    if let Some((index, message)) = result.errors.first() {
        let (update, filter) = (&updates[*index], &filters[*index]);
        return Err(refused_statement(db, spec, update, filter, message, stop).await);
    }
    stats.modified += result.modified;
    stats.unchanged = stats.scanned.saturating_sub(stats.modified);
    Ok(stats)
}

/// The server refused a statement of many documents, most often an expression that fails for
/// some of them (`$subtract` of a number and a string): its error names no document. This names
/// the fields the statement sets, the first document it fails for (found by evaluating it
/// read-only, see [`first_failing`]), and what the author can do.
async fn refused_statement(
    db: &Database,
    spec: &Backfill,
    update: &ServerUpdate,
    filter: &Document,
    message: &str,
    stop: &Stop,
) -> Error {
    let fields = fields_set(&update.update);
    let what = match fields.as_slice() {
        [] => "its update".to_string(),
        [one] => format!("field {one}"),
        many => format!("fields {}", many.join(", ")),
    };
    let which = match first_failing(db, spec, update, filter, stop).await {
        Ok(Some(id)) => format!("{} _id {}", spec.collection, show(Some(&id))),
        Ok(None) => format!("a document of {} in this batch", spec.collection),
        Err(e) => {
            tracing::debug!("looking for the document the server refused: {e}");
            format!("a document of {} in this batch", spec.collection)
        }
    };
    let read = fields_read(&update.update);
    let reads = match read.as_slice() {
        [] => String::new(),
        fields => format!(
            " (its expression reads {}; look at their values there)",
            fields.join(", ")
        ),
    };
    let example = read.first().map(String::as_str).unwrap_or("field");
    Error::migration(
        &spec.collection,
        format!(
            "the server could not compute {what} for {which}{reads}: {message}. The expression fails for some documents: give it only those it can compute, with `.only(...)` (e.g. `.only(doc! {{ \"{example}\": {{ \"$type\": \"number\" }} }})` when it needs numbers), or guard it with a type check (`$cond` on `$isNumber`, or `$convert` with `onError`)"
        ),
    )
}

/// The document fields an update's expressions read (`"$fee"`; not variables such as
/// `"$$NOW"`), in order of first use.
fn fields_read(update: &ServerUpdateKind) -> Vec<String> {
    fn walk(value: &Bson, found: &mut Vec<String>) {
        match value {
            Bson::String(s) => {
                if let Some(field) = s.strip_prefix('$').filter(|f| !f.starts_with('$')) {
                    if !field.is_empty() && !found.iter().any(|f| f == field) {
                        found.push(field.to_string());
                    }
                }
            }
            Bson::Document(d) => d.values().for_each(|v| walk(v, found)),
            Bson::Array(a) => a.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    match update {
        ServerUpdateKind::Operators(ops) => walk(&Bson::Document(ops.clone()), &mut found),
        ServerUpdateKind::Pipeline(stages) => stages
            .iter()
            .for_each(|s| walk(&Bson::Document(s.clone()), &mut found)),
    }
    found
}

/// The fields an update sets or removes: the keys under each operator, or under each stage of a
/// pipeline (`$set`, `$addFields`, `$unset`).
fn fields_set(update: &ServerUpdateKind) -> Vec<String> {
    let stages: Vec<&Document> = match update {
        ServerUpdateKind::Operators(ops) => vec![ops],
        ServerUpdateKind::Pipeline(stages) => stages.iter().collect(),
    };
    let mut fields: Vec<String> = Vec::new();
    for stage in stages {
        for (_, spec) in stage {
            let names: Vec<String> = match spec {
                Bson::Document(d) => d.keys().cloned().collect(),
                Bson::String(s) => vec![s.clone()],
                Bson::Array(a) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            for name in names {
                if !fields.contains(&name) {
                    fields.push(name);
                }
            }
        }
    }
    fields
}

/// Documents evaluated at once while looking for the one a pipeline fails for.
const PROBE_CHUNK: usize = 64;

/// The first document (in `_id` order) matching `filter` that a pipeline update fails for, found
/// read-only: the pipeline is run as an aggregation over chunks of their `_id`s, then one by one
/// within the chunk that fails. `None` for an operator update (which has no aggregation form),
/// or when every document evaluates (the write failed for another reason).
async fn first_failing(
    db: &Database,
    spec: &Backfill,
    update: &ServerUpdate,
    filter: &Document,
    stop: &Stop,
) -> Result<Option<Bson>> {
    let ServerUpdateKind::Pipeline(stages) = &update.update else {
        return Ok(None);
    };
    let coll = db.collection::<Document>(&spec.collection);
    let candidates: Vec<Document> = with_retry("reading the refused batch's ids", stop, || async {
        coll.find(filter.clone())
            .projection(doc! { "_id": 1 })
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await
    })
    .await?;
    let ids: Vec<Bson> = candidates
        .into_iter()
        .filter_map(|mut d| d.remove("_id"))
        .collect();
    let evaluates = |ids: Vec<Bson>| {
        let mut pipeline = vec![doc! { "$match": { "_id": { "$in": ids } } }];
        pipeline.extend(stages.iter().cloned());
        pipeline.push(doc! { "$project": { "_id": 1 } });
        let coll = coll.clone();
        async move {
            match coll.aggregate(pipeline).await {
                Ok(cursor) => cursor.try_collect::<Vec<Document>>().await.is_ok(),
                Err(_) => false,
            }
        }
    };
    for chunk in ids.chunks(PROBE_CHUNK) {
        if evaluates(chunk.to_vec()).await {
            continue;
        }
        for id in chunk {
            if !evaluates(vec![id.clone()]).await {
                return Ok(Some(id.clone()));
            }
        }
    }
    Ok(None)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_update_names_the_fields_it_sets_and_those_its_expression_reads() {
        let pipeline = ServerUpdateKind::Pipeline(vec![doc! { "$set": {
            "net": { "$subtract": ["$amount", "$fee"] },
            "at": "$$NOW",
        } }]);
        assert_eq!(fields_set(&pipeline), ["net", "at"]);
        assert_eq!(fields_read(&pipeline), ["amount", "fee"]);
        let operators = ServerUpdateKind::Operators(
            doc! { "$set": { "tier": "free" }, "$unset": { "old": "" } },
        );
        assert_eq!(fields_set(&operators), ["tier", "old"]);
        assert!(fields_read(&operators).is_empty());
    }
}
