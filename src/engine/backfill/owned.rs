//! Documents this run wrote, and whose inputs the application changed since: found from their
//! before-images and recomputed, so a value the migration owns follows its inputs. Also the
//! before-images saved one per document while the application writes, which make that lookup an
//! indexed read.

use super::before_image::strings;
use super::checkpoint::Stats;
use super::retry::with_retry;
use super::spec::{Backfill, Change, DocTransform};
use super::write::{
    already_applied, before_image, find_all, projection, statement, update_command, Planned,
};
use crate::engine::error::Result;
use crate::engine::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;

/// Databases whose before-images were indexed by document in this process.
static INDEXED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Recomputes documents this migration wrote earlier in the run whose inputs the application
/// changed since: as long as a document still holds exactly what the migration wrote (its latest
/// before-image's `after`), the value is the migration's own, and it must follow the inputs (a
/// balance is half of the *current* earnings). A document whose written fields the application
/// changed is the application's, and is left alone.
///
/// `ids` are documents that are no longer candidates. Returns the counters of what was written.
pub(super) async fn recompute_owned(
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
            .sort(super::before_image::NEWEST_FIRST.clone())
            .projection(doc! { "entries": 1 })
            .await?
            .try_collect()
            .await
    })
    .await?;
    let coll = db.collection::<Document>(&spec.collection);
    let current = find_all(
        &coll,
        doc! { "_id": { "$in": ids.clone() } },
        &projection(&spec.fields),
        "re-reading written documents",
        stop,
    )
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
        already_applied(doc, &after, &strings(e, "removed"))
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
        // The chunks holding any of them, newest first, through the index; their entries are
        // picked here. (Unwinding and matching on the server compares every entry of every
        // chunk with every `_id` asked for on some servers: seconds per thousand documents.)
        let chunks: Vec<Document> = with_retry("reading before-images", stop, || async {
            images
                .find(doc! { "migration": migration, "doc": { "$exists": false }, "entries._id": { "$in": missing.clone() } })
                .sort(super::before_image::NEWEST_FIRST.clone())
                .projection(doc! { "entries": 1 })
                .await?
                .try_collect()
                .await
        })
        .await?;
        let wanted: std::collections::HashSet<Vec<u8>> =
            missing.iter().map(super::catch_up::key_of).collect();
        let older: Vec<Document> = chunks
            .iter()
            .filter_map(|c| c.get_array("entries").ok())
            .flatten()
            .filter_map(Bson::as_document)
            .filter(|e| {
                e.get("_id")
                    .is_some_and(|id| wanted.contains(&super::catch_up::key_of(id)))
            })
            .cloned()
            .collect();
        group(&mut entries, older);
    }
    recompute_with(db, spec, transform, migration, current, &entries, stop).await
}

/// Recomputes the documents `current` (read with the spec's projection) from their before-image
/// `entries` (per document, newest first): see [`recompute_owned`].
pub(super) async fn recompute_with(
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
        already_applied(doc, &after, &strings(e, "removed"))
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
        let removed = strings(entry, "removed");
        // The inputs as they are now, with the written fields as before the migration wrote.
        let mut inputs = doc.clone();
        if let Ok(before) = entry.get_document("before") {
            for (k, v) in before {
                inputs.insert(k.clone(), v.clone());
            }
        }
        for k in strings(entry, "absent") {
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
        planned.push(Planned {
            id,
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
    let statements: Vec<Document> = planned.iter().map(|p| statement(p, &spec.fields)).collect();
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

/// Saves one before-image per document: a chunk of one entry, with the document's `_id` in `doc`
/// so catch-up finds it by index. Restores read them like any chunk.
pub(super) async fn save_per_document(
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
    let now = super::before_image::chunk_time();
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

/// Batch transactions insert their chunks under the read side; the before-images indexes are
/// built under the write side, so no transaction inserts a chunk while they are built (some
/// servers' index builds miss documents committed by transactions meanwhile, and a chunk a
/// lookup by document cannot find leaves a document the run wrote behind its inputs).
pub(super) static IMAGE_INDEX_BUILD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn indexed(db: &Database) -> bool {
    INDEXED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(db.name())
}

/// The indexes that find before-images by document, made once per database and process: before
/// the scan when batches go in transactions, otherwise only when the application writes during a
/// run (a quiet guarded run never pays for keeping them).
/// Callers wait for a build in progress rather than query a half-built index.
pub(super) async fn ensure_image_indexes(db: &Database, stop: &Stop) -> Result<()> {
    if indexed(db) {
        return Ok(());
    }
    let _building = IMAGE_INDEX_BUILD.write().await;
    if indexed(db) {
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
    INDEXED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(db.name().to_string());
    Ok(())
}
