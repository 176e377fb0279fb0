//! Documents this run wrote, and whose inputs the application changed since: found from their
//! before-images and recomputed, so a value the migration owns follows its inputs. Also the
//! before-images saved one per document while the application writes, which make that lookup an
//! indexed read.

use super::before_image::strings;
use super::checkpoint::Stats;
use super::each::write_each;
use super::retry::with_retry;
use super::spec::{Backfill, Change, DocTransform};
use super::write::{
    already_applied, before_image, find_all, projection, refused, statement, Planned,
};
use crate::engine::error::Result;
use crate::engine::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
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
        let entry = match owner(
            &doc,
            entries.get(&super::catch_up::key_of(&id)),
            spec.run.started(),
        ) {
            Owner::Nobody | Owner::InFlight => continue,
            Owner::Application => {
                stats.note_moved(&id);
                continue;
            }
            Owner::Run(entry) => entry,
        };
        if let Some(p) = follow_inputs(transform, doc, entry, &mut stats) {
            planned.push(p);
        }
    }
    stats.scanned = planned.len() as u64;
    if planned.is_empty() {
        return Ok(stats);
    }
    let chunks = save_per_document(db, spec, migration, &planned, stop).await?;
    let statements: Vec<Document> = planned.iter().map(|p| statement(p, &spec.fields)).collect();
    let result = write_each(db, spec, statements, stop).await?;
    let missed = planned
        .iter()
        .zip(&result.matched)
        .filter(|(_, matched)| !**matched)
        .map(|(p, _)| before_image(p, &spec.owns))
        .collect();
    settle_after(db, spec, &chunks, missed, result.retried, stop).await?;
    if let Some((index, message)) = result.errors.first() {
        return Err(refused(spec, &planned[*index].id, message, migration));
    }
    stats.modified = result.modified;
    // A guard that failed: the application wrote it again, and its event brings it back.
    stats.conflicts = (planned.len() as u64).saturating_sub(result.matched_count());
    Ok(stats)
}

/// The write that makes `doc`, which this migration owns (`entry` is its latest write), follow
/// its current inputs: every field written set to what the transform gives for the inputs as they
/// are now, with the written fields as before the migration wrote. `None` when it already holds
/// that, or its inputs are invalid now (then counted).
pub(super) fn follow_inputs(
    transform: &DocTransform,
    doc: Document,
    entry: &Document,
    stats: &mut Stats,
) -> Option<Planned> {
    let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
    let after = entry.get_document("after").cloned().unwrap_or_default();
    let removed = strings(entry, "removed");
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
            return None;
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
        return None;
    }
    Some(Planned {
        id,
        set: target_set,
        unset: target_unset,
        before: doc,
    })
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
    /// A write of this run is under way on it (its entry is saved, its outcome not yet known):
    /// that write decides, and nothing else writes or counts the document meanwhile.
    InFlight,
}

/// Decides [`Owner`] from a document (read with every owned field) and its entries, newest
/// first (as [`entries_by_document`] gives them).
///
/// The newest settled entry decides: a write whose guard failed has its entry taken back (see
/// [`settle_after`]), and one that did happen leaves the document the migration's only while the
/// document still holds it. An older entry the document happens to hold again (a reset back to
/// a value an earlier write left) is the application's doing.
///
/// An entry saved before a write not known to have happened yet (`pending`) is this run's
/// write under way when it was saved since `run_started`, and counts once the document holds
/// it. One saved before that was left by a run that stopped between its write and settling it:
/// it counts if the document holds it, and is passed over otherwise (the write did not happen,
/// or the application changed the document since, which the entries before it then show).
/// `run_started` is `None` where no write of the caller's run can be under way.
pub(super) fn owner<'a>(
    doc: &Document,
    entries: Option<&'a Vec<Document>>,
    run_started: Option<DateTime>,
) -> Owner<'a> {
    for e in entries.into_iter().flatten() {
        let held = holds(doc, e);
        match e.get_datetime(PENDING).ok() {
            _ if held => return Owner::Run(e),
            Some(at) if run_started.is_some_and(|s| *at >= s) => return Owner::InFlight,
            Some(_) => continue,
            None => return Owner::Application,
        }
    }
    Owner::Nobody
}

/// Marks, in a chunk, that its entries were saved before their writes and are not settled yet;
/// in an entry read by [`entries_by_document`], since when.
pub(super) const PENDING: &str = "pending";

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

/// What of a chunk [`entries_in`] needs.
pub(super) fn chunk_projection() -> Document {
    doc! { "entries": 1, PENDING: 1, "createdAt": 1 }
}

/// In an entry read by [`entries_in`]: the `_id` and the time of the chunk holding it.
const CHUNK: &str = "chunk";
const SAVED_AT: &str = "savedAt";

/// The entries of a chunk (read with [`chunk_projection`]), each with the chunk's `_id` and time
/// ([`CHUNK`], [`SAVED_AT`]), and marked [`PENDING`] with that time while the chunk is not
/// settled.
pub(super) fn entries_in(chunk: &Document) -> impl Iterator<Item = Document> + '_ {
    let at = chunk
        .get_datetime("createdAt")
        .ok()
        .copied()
        .unwrap_or(DateTime::MIN);
    let pending = chunk.get_bool(PENDING).unwrap_or(false);
    let id = chunk.get("_id").cloned().unwrap_or(Bson::Null);
    chunk
        .get_array("entries")
        .into_iter()
        .flatten()
        .filter_map(Bson::as_document)
        .map(move |e| {
            let mut e = e.clone();
            e.insert(CHUNK, id.clone());
            e.insert(SAVED_AT, at);
            if pending {
                e.insert(PENDING, at);
            }
            e
        })
}

/// Undoes the writes of this batch that another write of this run may have met half-way.
///
/// Outside a transaction a guard compares values, so it cannot see a document leave the values
/// it was read with and come back to them: another write of this run (catch-up ahead of the
/// scan, or the scan behind catch-up) writes it, then the application resets it to what it was
/// (a balance back to 0), and this batch's guard, still matching, would write over the
/// application. That other write saves its entry before it writes, after this batch looked at
/// the entries (`checked`, on the server's clock). So the written documents named by an entry
/// saved since then, in a chunk not this batch's, are put back exactly as this batch found them
/// (guarded on what it wrote) and their entries taken back. Returns how many were put back.
pub(super) async fn undo_met_halfway(
    db: &Database,
    spec: &Backfill,
    migration: &str,
    written: &[&Planned],
    ours: &[Bson],
    checked: DateTime,
    stop: &Stop,
) -> Result<u64> {
    if written.is_empty() || !spec.before_images || !spec.run.may_own() {
        return Ok(0);
    }
    // Another write's entry saved since the check: once settled, it says whether that write
    // happened (a write that did not is taken back). Its outcome is waited for, briefly; one
    // still unknown then counts as having happened, which at worst leaves a document unwritten
    // for a later round rather than write over the application.
    let others_since = |e: &Document| {
        e.get_datetime(SAVED_AT).is_ok_and(|at| *at >= checked)
            && e.get(CHUNK).is_some_and(|c| !ours.contains(c))
    };
    let mut ids: Vec<Bson> = written.iter().map(|p| p.id.clone()).collect();
    let waited = std::time::Instant::now();
    let entries = loop {
        let entries = entries_of(db, migration, &ids, stop).await?;
        let unsettled = entries
            .values()
            .flatten()
            .any(|e| others_since(e) && e.contains_key(PENDING));
        if !unsettled || waited.elapsed() > std::time::Duration::from_secs(2) {
            break entries;
        }
        // Only the documents another write met can matter from here on.
        ids.retain(|id| {
            entries
                .get(&super::catch_up::key_of(id))
                .is_some_and(|es| es.iter().any(others_since))
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let met: Vec<&&Planned> = written
        .iter()
        .filter(|p| {
            entries
                .get(&super::catch_up::key_of(&p.id))
                .is_some_and(|es| es.iter().any(others_since))
        })
        .collect();
    if met.is_empty() {
        return Ok(0);
    }
    let statements: Vec<Document> = met
        .iter()
        .map(|p| {
            let entry = before_image(p, &spec.owns);
            let mut q = doc! { "_id": p.id.clone() };
            for (k, v) in entry.get_document("after").cloned().unwrap_or_default() {
                q.insert(k, doc! { "$eq": v });
            }
            for k in strings(&entry, "removed") {
                q.insert(k, doc! { "$exists": false });
            }
            let mut u = Document::new();
            let before = entry.get_document("before").cloned().unwrap_or_default();
            if !before.is_empty() {
                u.insert("$set", before);
            }
            let absent = strings(&entry, "absent");
            if !absent.is_empty() {
                u.insert("$unset", crate::engine::bson_ext::unset(&absent));
            }
            doc! { "q": q, "u": u }
        })
        .collect();
    let outcome = write_each(db, spec, statements, stop).await?;
    let undone: Vec<Bson> = met
        .iter()
        .zip(&outcome.matched)
        .filter(|(_, m)| **m)
        .map(|(p, _)| p.id.clone())
        .collect();
    if !undone.is_empty() {
        take_back(
            db,
            ours,
            &undone,
            "taking back before-images of undone writes",
            stop,
        )
        .await?;
        tracing::debug!(
            documents = undone.len(),
            "put back documents another write of this run met half-way"
        );
    }
    Ok(undone.len() as u64)
}

/// The entries of `chunks` (newest first) for `ids`, by document, newest first.
pub(super) fn entries_by_document(
    chunks: Vec<Document>,
    ids: &[Bson],
) -> std::collections::HashMap<Vec<u8>, Vec<Document>> {
    let wanted: std::collections::HashSet<Vec<u8>> =
        ids.iter().map(super::catch_up::key_of).collect();
    let mut entries: std::collections::HashMap<Vec<u8>, Vec<Document>> = Default::default();
    for e in chunks.iter().flat_map(entries_in) {
        if let Some(key) = e.get("_id").map(super::catch_up::key_of) {
            if wanted.contains(&key) {
                entries.entry(key).or_default().push(e);
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
            .projection(chunk_projection())
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
    Ok(keep_owned(spec, planned, &entries, stats))
}

/// The planned writes whose documents are neither the application's nor being written by
/// another write of this run.
pub(super) fn keep_owned(
    spec: &Backfill,
    planned: Vec<Planned>,
    entries: &std::collections::HashMap<Vec<u8>, Vec<Document>>,
    stats: &mut Stats,
) -> Vec<Planned> {
    planned
        .into_iter()
        .filter(|p| {
            let key = super::catch_up::key_of(&p.id);
            match owner(&p.before, entries.get(&key), spec.run.started()) {
                Owner::Application => {
                    stats.note_moved(&p.id);
                    false
                }
                Owner::InFlight => false,
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
                PENDING: true,
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

/// Settles the entries a stopped run left pending (saved before writes whose outcome it never
/// learnt: `kill -9`, a lost connection), before this run writes anything, so that what the
/// application does from now on cannot be mistaken for their outcome:
/// - a document holding what its entry wrote was written: the entry stays;
/// - a document still holding, on every field the entry covers, what the write was guarded on
///   was not written: the entry is taken back;
/// - any other document was written and changed since, or changed before the write: the
///   application's either way, and the entry stays (the document then holds none of it).
pub(super) async fn settle_earlier(
    db: &Database,
    spec: &Backfill,
    migration: &str,
    stop: &Stop,
) -> Result<()> {
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    let filter = doc! { "migration": migration, PENDING: true };
    let chunks: Vec<Document> = with_retry("reading before-images", stop, || async {
        images
            .find(filter.clone())
            .projection(chunk_projection())
            .await?
            .try_collect()
            .await
    })
    .await?;
    if chunks.is_empty() {
        return Ok(());
    }
    let mut entries: Vec<Document> = chunks.iter().flat_map(entries_in).collect();
    let not_written = |current: &std::collections::HashMap<Vec<u8>, Document>, e: &Document| {
        e.get("_id").is_some_and(|id| {
            current
                .get(&super::catch_up::key_of(id))
                .is_some_and(|d| !holds(d, e) && holds_what_was_read(d, e))
        })
    };
    // A write the stopped run sent may still be under way on the server (a client's death does
    // not stop it): an entry whose document still holds what was read is looked at again after
    // such writes have had time to end, and taken back only if it still does.
    for look in 0..2 {
        if look == 1 {
            tokio::select! {
                _ = tokio::time::sleep(LATE_WRITES) => {}
                _ = stop.stopped() => return Err(stop.error()),
            }
        }
        let ids: Vec<Bson> = entries
            .iter()
            .filter_map(|e| e.get("_id").cloned())
            .collect();
        let what = "reading back the documents of unsettled writes";
        let current = read_by_key(db, spec, &ids, what, stop).await?;
        entries.retain(|e| not_written(&current, e));
        if entries.is_empty() {
            break;
        }
    }
    let unwritten: Vec<Bson> = entries
        .iter()
        .filter_map(|e| e.get("_id").cloned())
        .collect();
    let chunk_ids: Vec<Bson> = chunks
        .iter()
        .filter_map(|c| c.get("_id").cloned())
        .collect();
    let what = "settling the writes a stopped run left unsettled";
    take_back(db, &chunk_ids, &unwritten, what, stop).await?;
    mark_settled(db, &chunk_ids, stop).await?;
    tracing::info!(
        migration,
        chunks = chunk_ids.len(),
        unwritten = unwritten.len(),
        "settled the writes the interrupted run left unsettled"
    );
    Ok(())
}

/// How long the writes a stopped run sent are given to end on the server before its entries are
/// judged: about the longest a batch's write takes here under load.
const LATE_WRITES: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether `doc` still holds, on every field entry `e` covers, what the write of `e` was
/// guarded on (its `before`, its `absent` fields missing, and the owned fields it did not set as
/// they are in its `after`).
fn holds_what_was_read(doc: &Document, e: &Document) -> bool {
    let before = e.get_document("before").cloned().unwrap_or_default();
    let after = e.get_document("after").cloned().unwrap_or_default();
    let absent = strings(e, "absent");
    let removed = strings(e, "removed");
    let read = |key: &String, written: Option<&Bson>| -> Option<Bson> {
        match before.get(key) {
            Some(v) => Some(v.clone()),
            None if absent.contains(key) => None,
            None => written.cloned(),
        }
    };
    after
        .iter()
        .map(|(k, v)| (k, read(k, Some(v))))
        .chain(removed.iter().map(|k| (k, read(k, None))))
        .all(|(k, expected)| match expected {
            Some(v) => already_applied(doc, &doc! { k.clone(): v }, &[]),
            None => !doc.contains_key(k),
        })
}

/// Settles the chunks a non-transactional write saved before it wrote: takes back the entries of
/// the guarded statements that did not happen (`missed`: the entries, as saved, of those whose
/// filter matched nothing), then marks the chunks settled, so [`owner`] goes by them.
///
/// A statement that matched nothing did not write, unless an earlier attempt of it did and its
/// reply was lost (`retried`: the retry then finds its own write and no match): after a retry, a
/// document holding what its entry wrote keeps the entry.
pub(super) async fn settle_after(
    db: &Database,
    spec: &Backfill,
    chunks: &[Bson],
    missed: Vec<Document>,
    retried: bool,
    stop: &Stop,
) -> Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    if !missed.is_empty() {
        let ids: Vec<Bson> = missed
            .iter()
            .filter_map(|e| e.get("_id").cloned())
            .collect();
        let current = read_by_key(db, spec, &ids, "reading back a written batch", stop).await?;
        let unwritten: Vec<Bson> = missed
            .iter()
            .filter(|e| {
                e.get("_id").is_some_and(|id| {
                    // Holding it proves nothing without a retry: another write of this run may
                    // have left the same values.
                    !retried
                        || current
                            .get(&super::catch_up::key_of(id))
                            .is_none_or(|d| !holds(d, e))
                })
            })
            .filter_map(|e| e.get("_id").cloned())
            .collect();
        if !unwritten.is_empty() {
            let what = "taking back before-images of writes that did not happen";
            take_back(db, chunks, &unwritten, what, stop).await?;
            tracing::debug!(
                entries = unwritten.len(),
                "took back the before-images of writes whose guard failed"
            );
        }
    }
    mark_settled(db, chunks, stop).await
}

/// The documents `ids` with every field the backfill reads, by key, read a thousand at a time.
pub(super) async fn read_by_key(
    db: &Database,
    spec: &Backfill,
    ids: &[Bson],
    what: &str,
    stop: &Stop,
) -> Result<std::collections::HashMap<Vec<u8>, Document>> {
    let coll = db.collection::<Document>(&spec.collection);
    let mut current = std::collections::HashMap::new();
    for part in ids.chunks(1000) {
        let filter = doc! { "_id": { "$in": part.to_vec() } };
        for d in find_all(&coll, filter, &projection(&spec.fields), what, stop).await? {
            if let Some(id) = d.get("_id") {
                current.insert(super::catch_up::key_of(id), d);
            }
        }
    }
    Ok(current)
}

/// Takes the entries of the documents `ids` out of `chunks`, a thousand documents at a time, and
/// deletes the chunks left empty. Each chunk names a document at most once, so this takes back
/// exactly those writes' entries, never an older write's.
async fn take_back(
    db: &Database,
    chunks: &[Bson],
    ids: &[Bson],
    what: &str,
    stop: &Stop,
) -> Result<()> {
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    for part in ids.chunks(1000) {
        with_retry(what, stop, || {
            images.update_many(
                doc! { "_id": { "$in": chunks.to_vec() } },
                doc! { "$pull": { "entries": { "_id": { "$in": part.to_vec() } } } },
            )
        })
        .await?;
    }
    with_retry(what, stop, || {
        images.delete_many(doc! { "_id": { "$in": chunks.to_vec() }, "entries": { "$size": 0 } })
    })
    .await?;
    Ok(())
}

/// Marks `chunks` settled: [`owner`] goes by their entries from now on.
async fn mark_settled(db: &Database, chunks: &[Bson], stop: &Stop) -> Result<()> {
    let images = db.collection::<Document>(super::BEFORE_IMAGES);
    with_retry("settling before-images", stop, || {
        images.update_many(
            doc! { "_id": { "$in": chunks.to_vec() } },
            doc! { "$unset": { PENDING: "" } },
        )
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
            !matches!(owner(d, entries.get(&key), None), Owner::Application)
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
        assert!(matches!(owner(&doc, Some(&entries), None), Owner::Run(_)));
        // A withdrawal started: the balance is still what the run wrote, the document is not.
        let moved = doc! { "_id": 1, "balance": 5.0, "pending": 25, "withdrawn": 0 };
        assert!(matches!(
            owner(&moved, Some(&entries), None),
            Owner::Application
        ));
        // Same number, another type: the application wrote it.
        let retyped = doc! { "_id": 1, "balance": 5, "pending": 0, "withdrawn": 0 };
        assert!(matches!(
            owner(&retyped, Some(&entries), None),
            Owner::Application
        ));
        assert!(matches!(owner(&doc, None, None), Owner::Nobody));
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
            owner(&after_first, Some(&newest_first), None),
            Owner::Application
        ));
    }

    #[test]
    fn a_write_under_way_decides_once_it_lands_and_one_left_by_a_stopped_run_counts_only_if_held() {
        use super::PENDING;
        use mongodb::bson::DateTime;
        let zeros = doc! { "_id": 1, "balance": 0, "pending": 0, "withdrawn": 0 };
        let settled = written(zeros.clone(), doc! { "balance": 5.0 });
        let mut after_settled = zeros.clone();
        after_settled.insert("balance", 5.0);
        let mut under_way = written(after_settled.clone(), doc! { "balance": 9.0 });
        let run_started = DateTime::from_millis(1_000_000);
        under_way.insert(PENDING, DateTime::from_millis(1_000_500));
        let entries = vec![under_way.clone(), settled.clone()];
        // Not written yet: nobody else touches or counts it.
        assert!(matches!(
            owner(&after_settled, Some(&entries), Some(run_started)),
            Owner::InFlight
        ));
        // Written: the run's.
        let mut after_write = zeros.clone();
        after_write.insert("balance", 9.0);
        assert!(matches!(
            owner(&after_write, Some(&entries), Some(run_started)),
            Owner::Run(e) if e == &under_way
        ));
        // Left by a run that stopped before settling it, and never written: the entry before
        // it decides.
        assert!(matches!(
            owner(&after_settled, Some(&entries), Some(DateTime::from_millis(2_000_000))),
            Owner::Run(e) if e == &settled
        ));
        // ... and with the application's value, the document is the application's.
        let mut moved = after_settled.clone();
        moved.insert("pending", 25);
        assert!(matches!(
            owner(&moved, Some(&entries), None),
            Owner::Application
        ));
    }
}
