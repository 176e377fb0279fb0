//! Before-images: what a client-side backfill changed, kept so `down` restores it exactly.
//!
//! Each written batch first stores one chunk `{migration, collection, createdAt, entries}` in
//! `migrations_before_images`, each entry `{_id, before, absent, after, removed}`: the changed
//! fields' old values, the fields that did not exist, and what was written. One insert per batch
//! keeps the cost small. Restoring is guarded on `after`, so a document the application changed
//! since is reported, never clobbered.

use super::retry::with_retry;
use crate::engine::bson_ext::unset;
use crate::engine::error::Result;
use crate::engine::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Database;
use serde::Serialize;
use std::collections::HashMap;

/// Collection holding before-images.
pub const BEFORE_IMAGES: &str = "migrations_before_images";

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Documents put back to their before-image.
    pub restored: u64,
    /// Documents already in their before state (e.g. a redone rollback).
    pub already: u64,
    /// Documents changed since the migration wrote them: left as they are.
    pub conflicts: u64,
    /// `_id`s of the first conflicts.
    pub conflict_samples: Vec<Bson>,
}

impl RestoreReport {
    /// As a result document.
    pub fn to_document(&self) -> Document {
        doc! {
            "restored": self.restored as i64,
            "already": self.already as i64,
            "conflicts": self.conflicts as i64,
            "conflictSamples": self.conflict_samples.clone(),
        }
    }
}

/// What the before-images of one migration hold: what a rollback of it would restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImagesSummary {
    /// Chunks saved.
    pub chunks: u64,
    /// Distinct documents they hold an image of.
    pub documents: u64,
}

/// Counts the before-images of `migration`, reading only.
pub async fn images_summary(db: &Database, migration: &str) -> Result<ImagesSummary> {
    let chunks = db.collection::<Document>(BEFORE_IMAGES);
    let what = || format!("reading the before-images of {migration}");
    let count = chunks
        .count_documents(doc! { "migration": migration })
        .await
        .map_err(crate::engine::error::Error::db(what()))?;
    if count == 0 {
        return Ok(ImagesSummary::default());
    }
    let pipeline = vec![
        doc! { "$match": { "migration": migration } },
        doc! { "$unwind": "$entries" },
        doc! { "$group": { "_id": { "c": "$collection", "id": "$entries._id" } } },
        doc! { "$count": "documents" },
    ];
    let counted: Vec<Document> = chunks
        .aggregate(pipeline)
        .await
        .map_err(crate::engine::error::Error::db(what()))?
        .try_collect()
        .await
        .map_err(crate::engine::error::Error::db(what()))?;
    Ok(ImagesSummary {
        chunks: count,
        documents: counted
            .first()
            .map(|d| super::int(d, "documents"))
            .unwrap_or(0),
    })
}

/// Newest chunk first. `createdAt` is the server's clock (see [`chunk_time`]), so chunks saved by
/// a killed run and by the run that resumed it order right even within one second, where
/// ObjectIds of two processes do not; `_id` breaks ties within a process.
pub static NEWEST_FIRST: std::sync::LazyLock<Document> =
    std::sync::LazyLock::new(|| doc! { "createdAt": -1, "_id": -1 });

/// Milliseconds to add to this host's clock to read the server's.
static SERVER_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Reads the server's clock (`hello.localTime`) so [`chunk_time`] follows it; a server that does
/// not report it leaves this host's clock in use.
pub async fn align_clock(db: &Database) {
    let local = DateTime::now().timestamp_millis();
    if let Some(server) = crate::engine::liveness::server_time(db).await {
        let after = DateTime::now().timestamp_millis();
        let offset = server.timestamp_millis() - (local + after) / 2;
        SERVER_OFFSET_MS.store(offset, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The `createdAt` of a new chunk: now, on the server's clock.
pub fn chunk_time() -> DateTime {
    DateTime::from_millis(
        DateTime::now().timestamp_millis()
            + SERVER_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// Entries restored per `update` command: chunks are read newest first until this many entries.
const RESTORE_BATCH: usize = 1000;

/// Restores every document `migration` changed, newest entry first, deleting the chunks once
/// applied (so an interrupted restore resumes where it stopped). Chunks are taken together until
/// about `RESTORE_BATCH` entries, so one-entry chunks (saved per document while the application
/// wrote) cost no more than batch chunks. Each batch goes in a transaction where the deployment
/// has them (see `restore_atomic`); what that leaves, and every batch elsewhere, goes by guarded
/// statements.
pub async fn restore(db: &Database, migration: &str, stop: &Stop) -> Result<RestoreReport> {
    let mut restorer = super::restore_atomic::Restorer::default();
    let chunks = db.collection::<Document>(BEFORE_IMAGES);
    let order = mongodb::IndexModel::builder()
        .keys(doc! { "migration": 1, "createdAt": -1, "_id": -1 })
        .build();
    with_retry("indexing before-images", stop, || {
        chunks.create_index(order.clone())
    })
    .await?;
    restorer.begin(db, migration).await;
    let mut report = RestoreReport::default();
    // Documents not in the before-state of their oldest entry seen so far: an older entry (in a
    // later batch) may still restore them; whatever is left at the end changed since.
    let mut unresolved: HashMap<Vec<u8>, (String, Document)> = HashMap::new();
    let mut reader = ChunkReader::new(db, migration, stop);
    loop {
        if stop.is_stopped() {
            return Err(stop.error());
        }
        // By collection, newest first, up to RESTORE_BATCH entries (at least one chunk).
        let Some(first) = reader.next().await? else {
            break;
        };
        let collection = first.get_str("collection").unwrap_or("users").to_string();
        let mut taken = Vec::new();
        let mut entries: Vec<Document> = Vec::new();
        let mut chunk = Some(first);
        while let Some(c) = chunk {
            if c.get_str("collection").unwrap_or("users") != collection {
                reader.hold(c);
                break;
            }
            taken.push(c.get("_id").cloned().unwrap_or(Bson::Null));
            entries.extend(
                c.get_array("entries")
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e.as_document().cloned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            );
            if entries.len() >= RESTORE_BATCH {
                break;
            }
            // A cursor that failed ends the batch here: the next one reopens it after this
            // batch's chunks are deleted, so none comes back twice.
            chunk = reader.next_in_batch().await?;
        }
        let left = match restorer.batch(db, &collection, &entries).await {
            Some(done) => {
                // Each document counted once, however many entries it had.
                report.restored += done.restored.len() as u64;
                for key in &done.restored {
                    unresolved.remove(key);
                }
                done.left
            }
            None => entries,
        };
        restore_entries(db, &collection, &left, &mut report, &mut unresolved, stop).await?;
        with_retry("deleting applied before-images", stop, || {
            chunks.delete_many(doc! { "_id": { "$in": taken.clone() } })
        })
        .await?;
    }
    // What no older entry restored was changed since the migration wrote it.
    let mut by_collection: HashMap<String, Vec<Document>> = HashMap::new();
    for (collection, entry) in unresolved.into_values() {
        by_collection.entry(collection).or_default().push(entry);
    }
    for (collection, entries) in by_collection {
        let current = current_of(db, &collection, &entries, stop).await?;
        for e in &entries {
            if !in_before_state(&current, e) {
                report.conflicts += 1;
                if report.conflict_samples.len() < super::INVALID_SAMPLES {
                    report
                        .conflict_samples
                        .push(e.get("_id").cloned().unwrap_or(Bson::Null));
                }
            }
        }
    }
    Ok(report)
}

/// The chunks of one migration, newest first, through one cursor. A query per batch would make
/// a server that evaluates a query's whole result before it returns the first document (the
/// test server) read every chunk left again for every batch: 003's rollback of 100,000 users
/// took 22 s that way and 12.8 s through one cursor. A cursor that fails is reopened; chunks
/// already applied are deleted by then, so the new one starts where the restore stands.
struct ChunkReader<'a> {
    chunks: mongodb::Collection<Document>,
    migration: &'a str,
    stop: &'a Stop,
    cursor: Option<mongodb::Cursor<Document>>,
    held: Option<Document>,
    failures: u32,
}

impl<'a> ChunkReader<'a> {
    fn new(db: &Database, migration: &'a str, stop: &'a Stop) -> ChunkReader<'a> {
        ChunkReader {
            chunks: db.collection::<Document>(BEFORE_IMAGES),
            migration,
            stop,
            cursor: None,
            held: None,
            failures: 0,
        }
    }

    /// Gives back a chunk read too far (another collection's): the next call returns it.
    fn hold(&mut self, chunk: Document) {
        self.held = Some(chunk);
    }

    /// The next chunk, reopening the cursor (as often as `with_retry` would retry) on transient
    /// failures; `None` when every chunk was read.
    async fn next(&mut self) -> Result<Option<Document>> {
        loop {
            match self.next_in_batch().await? {
                Some(chunk) => return Ok(Some(chunk)),
                None if self.cursor.is_some() => return Ok(None),
                // The cursor failed and was dropped: reopen it.
                None => continue,
            }
        }
    }

    /// The next chunk; `None` at the end, and also when the cursor failed (it is then dropped,
    /// and the next call reopens it).
    async fn next_in_batch(&mut self) -> Result<Option<Document>> {
        if let Some(chunk) = self.held.take() {
            return Ok(Some(chunk));
        }
        let what = "reading before-images";
        if self.cursor.is_none() {
            let filter = doc! { "migration": self.migration };
            let chunks = &self.chunks;
            self.cursor = Some(
                with_retry(what, self.stop, || {
                    chunks
                        .find(filter.clone())
                        .sort(NEWEST_FIRST.clone())
                        .batch_size(16)
                })
                .await?,
            );
        }
        let cursor = self.cursor.as_mut().expect("opened above");
        match cursor.try_next().await {
            Ok(chunk) => {
                self.failures = 0;
                Ok(chunk)
            }
            Err(e) if super::retry::is_transient(&e) && self.failures < 6 => {
                self.failures += 1;
                tracing::warn!(error = %e, "{what} failed; reopening the cursor");
                self.cursor = None;
                Ok(None)
            }
            Err(e) => Err(crate::engine::error::Error::db(what)(e)),
        }
    }
}

async fn current_of(
    db: &Database,
    collection: &str,
    entries: &[Document],
    stop: &Stop,
) -> Result<Vec<Document>> {
    let ids: Vec<Bson> = entries
        .iter()
        .filter_map(|e| e.get("_id").cloned())
        .collect();
    let coll = db.collection::<Document>(collection);
    with_retry("checking restored documents", stop, || async {
        coll.find(doc! { "_id": { "$in": ids.clone() } })
            .await?
            .try_collect()
            .await
    })
    .await
}

/// Whether the document of `e` holds `e`'s before-state.
fn in_before_state(current: &[Document], e: &Document) -> bool {
    let id = e.get("_id");
    let before = e.get_document("before").cloned().unwrap_or_default();
    let absent = strings(e, "absent");
    current
        .iter()
        .find(|d| d.get("_id") == id)
        .is_some_and(|d| {
            before.iter().all(|(k, v)| d.get(k) == Some(v))
                && absent.iter().all(|k| !d.contains_key(k))
        })
}

/// The strings of an entry's array field (`absent`, `removed`).
pub(super) fn strings(entry: &Document, key: &str) -> Vec<String> {
    entry
        .get_array(key)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Restores `entries` (newest first) in one ordered `update` command: several entries of one
/// document then apply newest to oldest, each guarded on what its write left.
async fn restore_entries(
    db: &Database,
    collection: &str,
    entries: &[Document],
    report: &mut RestoreReport,
    unresolved: &mut HashMap<Vec<u8>, (String, Document)>,
    stop: &Stop,
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut statements = Vec::with_capacity(entries.len());
    for e in entries {
        let before = e.get_document("before").cloned().unwrap_or_default();
        let absent = strings(e, "absent");
        let after = e.get_document("after").cloned().unwrap_or_default();
        let removed = strings(e, "removed");
        let mut q = doc! { "_id": e.get("_id").cloned().unwrap_or(Bson::Null) };
        for (k, v) in &after {
            q.insert(k.clone(), doc! { "$eq": v.clone() });
        }
        for k in &removed {
            q.insert(k.clone(), doc! { "$exists": false });
        }
        let mut u = Document::new();
        if !before.is_empty() {
            u.insert("$set", before);
        }
        if !absent.is_empty() {
            u.insert("$unset", unset(&absent));
        }
        if !u.is_empty() {
            statements.push(doc! { "q": q, "u": u });
        }
    }
    let matched = if statements.is_empty() {
        0
    } else {
        let command = doc! { "update": collection, "updates": statements, "ordered": true };
        let reply = with_retry(&format!("restoring a batch of {collection}"), stop, || {
            db.run_command(command.clone())
        })
        .await?;
        super::int(&reply, "n")
    };
    // The oldest entry of each document in this batch decides where it should now stand.
    let mut oldest: HashMap<Vec<u8>, &Document> = HashMap::new();
    for e in entries {
        if let Some(id) = e.get("_id") {
            oldest.insert(super::catch_up::key_of(id), e);
        }
    }
    if matched == entries.len() as u64 {
        // Every entry applied: each document is back (counted once, however many entries).
        for key in oldest.keys() {
            unresolved.remove(key);
        }
        report.restored += oldest.len() as u64;
        return Ok(());
    }
    // Some guards failed: tell "restored", "already restored" and "changed since" by looking.
    let latest: Vec<Document> = oldest.values().map(|e| (*e).clone()).collect();
    let current = current_of(db, collection, &latest, stop).await?;
    let mut in_before = 0u64;
    for (key, e) in &oldest {
        if in_before_state(&current, e) {
            in_before += 1;
            unresolved.remove(key);
        } else {
            unresolved.insert(key.clone(), (collection.to_string(), (*e).clone()));
        }
    }
    // Documents back in their before-state that no statement matched were already there.
    let unmatched = entries.len() as u64 - matched.min(entries.len() as u64);
    let already = unmatched.min(in_before);
    report.already += already;
    report.restored += in_before - already;
    Ok(())
}
