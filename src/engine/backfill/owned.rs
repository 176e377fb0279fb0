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
    ensure_image_indexes(db, stop).await?;
    let entries = entries_of(db, migration, &ids, stop).await?;
    let coll = db.collection::<Document>(&spec.collection);
    let current = find_all(
        &coll,
        doc! { "_id": { "$in": ids.clone() } },
        &projection(&spec.fields),
        "re-reading written documents",
        stop,
    )
    .await?;
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
    let mut planned = Vec::new();
    for doc in current {
        let Some(id) = doc.get("_id").cloned() else {
            continue;
        };
        let entry = match owner(&doc, entries.get(&super::catch_up::key_of(&id))) {
            Owner::Nobody => continue,
            Owner::Application => {
                stats.note_moved(&id);
                continue;
            }
            Owner::Run(entry) => entry,
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
    let chunks = save_per_document(db, spec, migration, &planned, stop).await?;
    let statements: Vec<Document> = planned.iter().map(|p| statement(p, &spec.fields)).collect();
    let result = update_command(db, &spec.collection, statements, stop).await?;
    if !result.errors.is_empty() {
        return Err(result.into_error(&spec.collection));
    }
    if result.matched < planned.len() as u64 {
        settle(db, spec, migration, &chunks, stop).await?;
    }
    stats.modified = result.modified;
    // A guard that failed: the application wrote it again, and its event brings it back.
    stats.conflicts = (planned.len() as u64).saturating_sub(result.matched);
    Ok(stats)
}

/// Who a document this migration may have written belongs to.
pub(super) enum Owner<'a> {
    /// No entry names it: this migration never wrote it.
    Nobody,
    /// It holds, on every field the migration writes, what this migration's latest write to it
    /// left (that entry): the value is the migration's, and follows the inputs.
    Run(&'a Document),
    /// The migration wrote it, and a field it writes holds something else now: the application
    /// moved it (a withdrawal, a reset), and it is never written again.
    Application,
}

/// Decides [`Owner`] from a document (read with every owned field) and its entries, newest
/// first. Only the newest counts: a write whose guard failed has its entry taken back (see
/// [`settle`]), and one that did happen leaves the document the migration's only while the
/// document still holds it. An older entry the document happens to hold again (a reset back to
/// a value an earlier write left) is the application's doing.
pub(super) fn owner<'a>(doc: &Document, entries: Option<&'a Vec<Document>>) -> Owner<'a> {
    match entries.and_then(|es| es.first()) {
        None => Owner::Nobody,
        Some(newest) if holds(doc, newest) => Owner::Run(newest),
        Some(_) => Owner::Application,
    }
}

/// Whether `doc` holds what entry `e` wrote: every field of its `after`, type included, and
/// none of its `removed`.
pub(super) fn holds(doc: &Document, e: &Document) -> bool {
    let after = e.get_document("after").cloned().unwrap_or_default();
    already_applied(doc, &after, &strings(e, "removed"))
}

/// The filter of the before-image chunks naming any of `ids` (through the index on
/// `entries._id`, which holds the one-entry chunks too), read newest first.
pub(super) fn chunks_naming(migration: &str, ids: &[Bson]) -> Document {
    doc! { "migration": migration, "entries._id": { "$in": ids.to_vec() } }
}

/// The entries of `chunks` (newest first) for `ids`, by document, newest first.
pub(super) fn entries_by_document(
    chunks: Vec<Document>,
    ids: &[Bson],
) -> std::collections::HashMap<Vec<u8>, Vec<Document>> {
    let wanted: std::collections::HashSet<Vec<u8>> =
        ids.iter().map(super::catch_up::key_of).collect();
    let mut entries: std::collections::HashMap<Vec<u8>, Vec<Document>> = Default::default();
    for e in chunks
        .iter()
        .filter_map(|c| c.get_array("entries").ok())
        .flatten()
        .filter_map(Bson::as_document)
    {
        if let Some(key) = e.get("_id").map(super::catch_up::key_of) {
            if wanted.contains(&key) {
                entries.entry(key).or_default().push(e.clone());
            }
        }
    }
    entries
}

/// This migration's entries for `ids`, by document, newest first.
pub(super) async fn entries_of(
    db: &Database,
    migration: &str,
    ids: &[Bson],
    stop: &Stop,
) -> Result<std::collections::HashMap<Vec<u8>, Vec<Document>>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    let filter = chunks_naming(migration, ids);
    let chunks: Vec<Document> = with_retry("reading before-images", stop, || async {
        images
            .find(filter.clone())
            .sort(super::before_image::NEWEST_FIRST.clone())
            .projection(doc! { "entries": 1 })
            .await?
            .try_collect()
            .await
    })
    .await?;
    Ok(entries_by_document(chunks, ids))
}

/// Leaves out of `planned` the documents the application moved after this migration wrote them
/// (see [`Owner`]), counting each once. Looks only where this run may own documents already.
pub(super) async fn without_moved(
    db: &Database,
    spec: &Backfill,
    migration: &str,
    planned: Vec<Planned>,
    stats: &mut Stats,
    stop: &Stop,
) -> Result<Vec<Planned>> {
    if planned.is_empty() || !spec.before_images || !spec.run.may_own() {
        return Ok(planned);
    }
    ensure_image_indexes(db, stop).await?;
    let ids: Vec<Bson> = planned.iter().map(|p| p.id.clone()).collect();
    let entries = entries_of(db, migration, &ids, stop).await?;
    Ok(keep_owned(planned, &entries, stats))
}

/// The planned writes whose documents are not the application's.
pub(super) fn keep_owned(
    planned: Vec<Planned>,
    entries: &std::collections::HashMap<Vec<u8>, Vec<Document>>,
    stats: &mut Stats,
) -> Vec<Planned> {
    planned
        .into_iter()
        .filter(|p| {
            let key = super::catch_up::key_of(&p.id);
            match owner(&p.before, entries.get(&key)) {
                Owner::Application => {
                    stats.note_moved(&p.id);
                    false
                }
                Owner::Nobody | Owner::Run(_) => true,
            }
        })
        .collect()
}

/// Saves one before-image per document: a chunk of one entry, with the document's `_id` in `doc`
/// so catch-up finds it by index. Restores read them like any chunk.
pub(super) async fn save_per_document(
    db: &Database,
    spec: &Backfill,
    migration: &str,
    planned: &[Planned],
    stop: &Stop,
) -> Result<Vec<Bson>> {
    if planned.is_empty() {
        return Ok(Vec::new());
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
                "entries": [Bson::Document(before_image(p, &spec.owns))],
            }
        })
        .collect();
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    let inserted = with_retry("saving before-images", stop, || {
        images.insert_many(chunks.clone()).ordered(false)
    })
    .await?;
    Ok(inserted.inserted_ids.into_values().collect())
}

/// Takes back the entries of writes that did not happen. A non-transactional batch saves its
/// entries before it writes, guarded; a guard that failed (the application wrote the document
/// in between) leaves an entry claiming a value the document never held, and since the newest
/// entry decides who owns a document (see [`owner`]), that claim would make the migration
/// disown a document it still owns, leaving it behind its inputs. So after guarded statements
/// that matched fewer documents than planned, the documents are read back, and every entry of
/// `chunks` that its document does not hold, and that is still the newest entry of that
/// document, is pulled (a chunk left empty is deleted).
///
/// - An entry a newer one follows stays: the newer one decides who owns the document, and if
///   this write did happen, `down` needs it to chain back to the value before it.
/// - A write that happened and that the application undid at once is pulled as if it had not
///   happened: the document is the application's either way, and `down` leaves it either way.
pub(super) async fn settle(
    db: &Database,
    spec: &Backfill,
    migration: &str,
    chunks: &[Bson],
    stop: &Stop,
) -> Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    let saved: Vec<Document> = with_retry("reading before-images", stop, || async {
        images
            .find(doc! { "_id": { "$in": chunks.to_vec() } })
            .projection(doc! { "entries": 1 })
            .await?
            .try_collect()
            .await
    })
    .await?;
    let entries: Vec<&Document> = saved
        .iter()
        .filter_map(|c| c.get_array("entries").ok())
        .flatten()
        .filter_map(Bson::as_document)
        .collect();
    let ids: Vec<Bson> = entries
        .iter()
        .filter_map(|e| e.get("_id").cloned())
        .collect();
    let coll = db.collection::<Document>(&spec.collection);
    let current = find_all(
        &coll,
        doc! { "_id": { "$in": ids.clone() } },
        &projection(&spec.fields),
        "reading back a written batch",
        stop,
    )
    .await?;
    let by_id: std::collections::HashMap<Vec<u8>, &Document> = current
        .iter()
        .filter_map(|d| d.get("_id").map(|id| (super::catch_up::key_of(id), d)))
        .collect();
    // Read after the documents: a later write of this migration that moved a document on saved
    // its entry before it wrote, so it is among these.
    let newest = entries_of(db, migration, &ids, stop).await?;
    let unwritten: Vec<Bson> = entries
        .iter()
        .filter(|e| {
            e.get("_id").is_some_and(|id| {
                let key = super::catch_up::key_of(id);
                by_id.get(&key).is_some_and(|d| !holds(d, e))
                    && newest.get(&key).and_then(|es| es.first()) == Some(*e)
            })
        })
        .filter_map(|e| e.get("_id").cloned())
        .collect();
    if unwritten.is_empty() {
        return Ok(());
    }
    // Each chunk names a document at most once, so pulling by `_id` within these chunks takes
    // back exactly this batch's entries, never an older write's.
    with_retry(
        "taking back before-images of writes that did not happen",
        stop,
        || {
            images.update_many(
                doc! { "_id": { "$in": chunks.to_vec() } },
                doc! { "$pull": { "entries": { "_id": { "$in": unwritten.clone() } } } },
            )
        },
    )
    .await?;
    with_retry(
        "taking back before-images of writes that did not happen",
        stop,
        || {
            images
                .delete_many(doc! { "_id": { "$in": chunks.to_vec() }, "entries": { "$size": 0 } })
        },
    )
    .await?;
    tracing::debug!(
        entries = unwritten.len(),
        "took back the before-images of writes whose guard failed"
    );
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

/// Of `docs` (read with every field `spec` owns), those the application has not moved after
/// this migration wrote them: a post-condition judges these, and leaves the application's own
/// documents to it.
pub async fn not_moved(
    ctx: &crate::engine::migration::Context,
    spec: &Backfill,
    docs: Vec<Document>,
) -> Result<Vec<Document>> {
    if docs.is_empty() || !spec.before_images {
        return Ok(docs);
    }
    let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
    let entries = entries_of(ctx.db(), ctx.name(), &ids, ctx.stop()).await?;
    Ok(docs
        .into_iter()
        .filter(|d| {
            let key = d
                .get("_id")
                .map(super::catch_up::key_of)
                .unwrap_or_default();
            !matches!(owner(d, entries.get(&key)), Owner::Application)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{owner, Owner};
    use crate::engine::backfill::write::{before_image, Planned};
    use mongodb::bson::{doc, Bson, Document};

    fn owns() -> Vec<String> {
        ["balance", "pending", "withdrawn"]
            .iter()
            .map(|f| f.to_string())
            .collect()
    }

    fn written(before: Document, set: Document) -> Document {
        let p = Planned {
            id: Bson::Int32(1),
            set,
            unset: Vec::new(),
            before,
        };
        before_image(&p, &owns())
    }

    #[test]
    fn an_entry_records_every_owned_field_after_the_write_not_only_those_it_set() {
        let e = written(
            doc! { "_id": 1, "earnings": 10, "balance": 0, "pending": 0 },
            doc! { "balance": 5.0 },
        );
        assert_eq!(
            e.get_document("after").unwrap(),
            &doc! { "balance": 5.0, "pending": 0 }
        );
        assert_eq!(e.get_document("before").unwrap(), &doc! { "balance": 0 });
        // A field the write left missing must stay missing for the document to be the run's.
        assert_eq!(
            e.get_array("removed").unwrap(),
            &vec![Bson::String("withdrawn".into())]
        );
    }

    #[test]
    fn a_document_is_the_runs_only_while_every_owned_field_holds_what_it_wrote() {
        let e = written(
            doc! { "_id": 1, "balance": 0, "pending": 0, "withdrawn": 0 },
            doc! { "balance": 5.0 },
        );
        let entries = vec![e];
        let doc = doc! { "_id": 1, "earnings": 99, "balance": 5.0, "pending": 0, "withdrawn": 0 };
        assert!(matches!(owner(&doc, Some(&entries)), Owner::Run(_)));
        // A withdrawal started: the balance is still what the run wrote, the document is not.
        let moved = doc! { "_id": 1, "balance": 5.0, "pending": 25, "withdrawn": 0 };
        assert!(matches!(owner(&moved, Some(&entries)), Owner::Application));
        // Same number, another type: the application wrote it.
        let retyped = doc! { "_id": 1, "balance": 5, "pending": 0, "withdrawn": 0 };
        assert!(matches!(
            owner(&retyped, Some(&entries)),
            Owner::Application
        ));
        assert!(matches!(owner(&doc, None), Owner::Nobody));
    }

    #[test]
    fn a_reset_back_to_what_an_older_write_left_is_the_applications() {
        let zeros = doc! { "_id": 1, "balance": 0, "pending": 0 };
        // The first write set the missing field, the second the balance.
        let first = written(zeros.clone(), doc! { "withdrawn": 0 });
        let mut after_first = zeros.clone();
        after_first.insert("withdrawn", 0);
        let second = written(after_first.clone(), doc! { "balance": 7.5 });
        let newest_first = vec![second, first];
        assert!(matches!(
            owner(&after_first, Some(&newest_first)),
            Owner::Application
        ));
    }
}
