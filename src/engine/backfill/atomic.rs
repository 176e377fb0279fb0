//! Fast-path batches written in one transaction: the batch's documents are read, their
//! before-images saved and the server-side update applied in a single snapshot. What the update
//! computes from is then exactly what was read and imaged, whatever the application writes
//! meanwhile: a document it changes after the snapshot makes the transaction abort with a write
//! conflict, and the batch is read and written again. So the write needs no per-document guard
//! and no read-back, and stays exact on a live collection, where the guarded path of `write.rs`
//! has to go document by document.
//!
//! Transactions need a replica set or a sharded cluster. An empty transaction before the scan
//! finds out; on a standalone server (or with `--no-transactions`) every batch takes the guarded
//! path, and the scan reads the fields it needs instead of bare `_id`s.

use super::checkpoint::Stats;
use super::spec::{Backfill, DocTransform, FastPath};
use super::write::{and, before_image, find_all, plan, projection, statement, Planned};
use crate::engine::error::{Error, Result};
use crate::engine::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{ClientSession, Database};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Attempts of one batch before it goes the guarded way (each failed on a write conflict: the
/// application kept writing the batch's documents). A rollback's batches too (`restore_atomic`).
pub(super) const ATTEMPTS: u32 = 5;

/// Whether the deployment runs transactions, shared by a run's batches (unknown until tried),
/// and the sessions the batches run them in.
///
/// The sessions are made before the scan, one per batch in flight, and their ids go into every
/// checkpoint: a run killed with a transaction open leaves it holding its documents until the
/// server's transaction lifetime runs out (60 s on MongoDB), blocking the application's writes to
/// them and the resumed run; the resumed run ends those transactions first (`killSessions`).
#[derive(Clone, Default)]
pub(super) struct Transactions {
    state: Arc<AtomicU8>,
    /// Set once a batch has committed; until then batches go one at a time (see `attempt_once`).
    warmed: Arc<AtomicBool>,
    first: Arc<tokio::sync::Mutex<()>>,
    sessions: Arc<tokio::sync::Mutex<Vec<ClientSession>>>,
    ids: Arc<std::sync::Mutex<Vec<Document>>>,
}

/// Checkpoint field holding the ids of the sessions a run's transactions use.
const SESSIONS: &str = "transactionSessions";

const AVAILABLE: u8 = 1;
const UNAVAILABLE: u8 = 2;

impl Transactions {
    fn usable(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNAVAILABLE
    }

    /// `checkpoint` with the ids of this run's sessions.
    pub(super) fn tagged(&self, mut checkpoint: Document) -> Document {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if !ids.is_empty() {
            checkpoint.insert(
                SESSIONS,
                ids.iter().cloned().map(Bson::Document).collect::<Vec<_>>(),
            );
        }
        checkpoint
    }

    /// Makes every batch transaction read a snapshot that holds every write up to `t` (the
    /// cluster time the run began at, from which its change stream reports). On a replica set a
    /// transaction's snapshot is majority-committed data, which can lag behind the latest writes;
    /// with the session's operation time at `t` the server waits until it holds them. Without
    /// this, a write just before the run began could be in neither the snapshot nor the stream.
    pub(super) async fn read_after(&self, t: mongodb::bson::Timestamp) {
        for session in self.sessions.lock().await.iter_mut() {
            session.advance_operation_time(t);
        }
    }

    /// The `lsid.id` of this run's sessions, as change events name them.
    pub(super) fn session_ids(&self) -> Vec<Bson> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().filter_map(|id| id.get("id").cloned()).collect()
    }

    async fn take(&self, db: &Database) -> mongodb::error::Result<ClientSession> {
        loop {
            if let Some(session) = self.sessions.lock().await.pop() {
                return Ok(session);
            }
            if self
                .ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                // No pool (sessions could not be made up front): one session per attempt.
                return db.client().start_session().await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn give_back(&self, session: ClientSession) {
        if !self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            self.sessions.lock().await.push(session);
        }
    }

    fn found(&self, available: bool) {
        let state = if available { AVAILABLE } else { UNAVAILABLE };
        if self.state.swap(state, Ordering::Relaxed) != state {
            if available {
                info!("fast-path batches are written in transactions");
            } else {
                info!("this deployment has no transactions (a standalone server): fast-path batches are guarded per field and read back");
            }
        }
    }
}

/// Whether a run's batches can go in transactions: a fast path whose before-images are kept in
/// batch chunks, transactions not turned off (`--no-transactions`), not a dry run.
pub(super) fn applies(spec: &Backfill, dry_run: bool, allowed: bool) -> bool {
    allowed
        && !dry_run
        && spec.fast_path.is_some()
        && spec.before_images
        && !spec.per_document_images
}

/// Whether this deployment runs transactions, found by running an empty one (after creating the
/// before-images collection, which concurrent transactions must not each try to create).
pub(super) async fn probe(
    db: &Database,
    transactions: &Transactions,
    in_flight: usize,
    stop: &Stop,
) -> bool {
    prepare(db).await;
    let tried = async {
        let mut session = db.client().start_session().await?;
        session.start_transaction().await?;
        db.collection::<Document>(super::BEFORE_IMAGES)
            .find_one(doc! {})
            .session(&mut session)
            .await?;
        session.commit_transaction().await
    }
    .await;
    match tried {
        Ok(()) => {
            // Built before any transaction inserts a chunk (see `owned::IMAGE_INDEX_BUILD`):
            // a resumed run, a killed run's build, or a build started by another process then
            // never races the inserts, and catch-up under writes finds every chunk by index.
            if let Err(e) = super::owned::ensure_image_indexes(db, stop).await {
                warn!(error = %e, "the before-images could not be indexed; batches are written guarded");
                transactions.found(false);
                return false;
            }
            for _ in 0..in_flight.max(1) {
                match db.client().start_session().await {
                    Ok(session) => {
                        transactions
                            .ids
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(session.id().clone());
                        transactions.sessions.lock().await.push(session);
                    }
                    Err(e) => warn!(error = %e, "a session could not be made"),
                }
            }
            transactions.found(true)
        }
        Err(e) if unsupported(&e) => transactions.found(false),
        Err(e) => {
            warn!(error = %e, "transactions could not be tried; batches are written guarded");
            transactions.found(false);
        }
    }
    transactions.usable()
}

/// The `lsid.id` of the sessions whose transactions an interrupted run wrote in.
pub(super) fn sessions_in(checkpoint: &Document) -> Vec<Bson> {
    checkpoint
        .get_array(SESSIONS)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_document()?.get("id").cloned())
        .collect()
}

/// Ends the transactions a killed run left open (their sessions are named in its checkpoint), so
/// they stop holding their documents now rather than when the server's transaction lifetime runs
/// out. Killing a session that is gone or was never used is harmless.
pub(crate) async fn end_abandoned(db: &Database, checkpoint: &Document) {
    let Ok(ids) = checkpoint.get_array(SESSIONS) else {
        return;
    };
    if ids.is_empty() {
        return;
    }
    match db
        .client()
        .database("admin")
        .run_command(doc! { "killSessions": ids.clone() })
        .await
    {
        Ok(_) => info!(
            sessions = ids.len(),
            "ended the transactions the interrupted run left open"
        ),
        Err(e) => {
            warn!(error = %e, "the interrupted run's sessions could not be ended; its open transactions hold their documents until the server ends them")
        }
    }
}

/// The candidates of a batch's `_id` range with the fields the transform reads, for the guarded
/// path when a batch read as bare `_id`s cannot go in a transaction.
pub(super) async fn read_range(
    db: &Database,
    spec: &Backfill,
    scanned: &[Document],
    stop: &Stop,
) -> Result<Vec<Document>> {
    let Some(range) = range_of(spec, scanned) else {
        return Ok(Vec::new());
    };
    let coll = db.collection::<Document>(&spec.collection);
    find_all(
        &coll,
        range,
        &projection(&spec.fields),
        "reading a batch's candidates",
        stop,
    )
    .await
}

/// The candidates from the first to the last `_id` of a scanned batch.
fn range_of(spec: &Backfill, scanned: &[Document]) -> Option<Document> {
    let id = |d: Option<&Document>| d.and_then(|d| d.get("_id")).cloned();
    let (first, last) = (id(scanned.first())?, id(scanned.last())?);
    Some(and(vec![
        doc! { "_id": { "$gte": first, "$lte": last } },
        spec.filter.clone(),
    ]))
}

/// Creates the before-images collection if it is missing.
async fn prepare(db: &Database) {
    let names = db
        .list_collection_names()
        .filter(doc! { "name": super::BEFORE_IMAGES })
        .await
        .unwrap_or_default();
    if names.is_empty() {
        if let Err(e) = db.create_collection(super::BEFORE_IMAGES).await {
            // Another run created it first (NamespaceExists), or the server refused: the
            // transactions then create it, retrying on the conflict.
            tracing::debug!(error = %e, "creating the before-images collection");
        }
    }
}

/// What one transaction did.
enum Attempt {
    Committed(Box<Stats>),
    /// The server could not do the batch this way (it refused a statement, or the snapshot did
    /// not hold what was read): nothing was written, and the guarded path takes the batch.
    NotHere(String),
}

/// What every attempt at one batch needs.
struct Job<'a> {
    db: &'a Database,
    spec: &'a Backfill,
    transform: &'a DocTransform,
    fast: &'a FastPath,
    /// The candidates of the batch's `_id` range.
    range: Document,
    migration: &'a str,
    fail_on_invalid: bool,
}

/// Writes the scan batch `scanned` (read by the scan's cursor, in `_id` order) in a transaction.
/// `None` when the guarded path must take it: no transactions here, or the documents kept
/// changing.
#[allow(clippy::too_many_arguments)]
pub(super) async fn transaction_batch(
    db: &Database,
    spec: &Backfill,
    transform: &DocTransform,
    scanned: &[Document],
    transactions: &Transactions,
    migration: &str,
    fail_on_invalid: bool,
    stop: &Stop,
) -> Result<Option<Stats>> {
    let Some(range) = range_of(spec, scanned) else {
        return Ok(Some(Stats::default()));
    };
    let job = Job {
        db,
        spec,
        transform,
        fast: spec.fast_path.as_ref().expect("applies() checked"),
        range,
        migration,
        fail_on_invalid,
    };
    let mut delay = Duration::from_millis(20);
    for attempt in 1..=ATTEMPTS {
        match attempt_once(&job, transactions).await {
            Ok(Attempt::Committed(stats)) => {
                let mut stats = *stats;
                account_for(&mut stats);
                return Ok(Some(stats));
            }
            Ok(Attempt::NotHere(why)) => {
                warn!(collection = %spec.collection, reason = %why, "a batch could not be written in a transaction; writing it guarded");
                return Ok(None);
            }
            Err(Failed::Unsupported) => {
                transactions.found(false);
                return Ok(None);
            }
            Err(Failed::Db(e)) if retryable(&e) && attempt < ATTEMPTS => {
                // A conflict says the application is writing these documents: the batch-size
                // tuner takes it as it takes a retried failure, and halves the batches.
                super::retry::count_retry();
                if is_write_conflict(&e) {
                    // The application writing the batch's documents: routine on a live
                    // collection, and counted by the tuner.
                    tracing::debug!(attempt, error = %e, "batch transaction aborted; redoing it");
                } else {
                    // A failover, a dropped connection, a restarting server: the operator
                    // following the log sees the outage and that the run rides it out.
                    warn!(attempt, error = %e, "a batch transaction failed; retrying it in {delay:?}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    // Stopping: the guarded path finishes the batch, as every batch in flight.
                    _ = stop.stopped() => return Ok(None),
                }
                delay *= 3;
            }
            Err(Failed::Db(e)) if retryable(&e) => {
                warn!(collection = %spec.collection, error = %e, "a batch kept conflicting with concurrent writes; writing it guarded");
                return Ok(None);
            }
            Err(Failed::Db(e)) => return Err(Error::db("writing a batch in a transaction")(e)),
            Err(Failed::Refused(e)) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// `scanned` counts the candidates the transaction read (as a filtered scan would), and those
/// that needed no change are unchanged.
fn account_for(stats: &mut Stats) {
    stats.unchanged = stats
        .scanned
        .saturating_sub(stats.modified + stats.invalid + stats.conflicts + stats.moved);
}

enum Failed {
    /// The deployment has no transactions.
    Unsupported,
    Db(mongodb::error::Error),
    /// The migration's own refusal (invalid data under `--fail-on-invalid`).
    Refused(Error),
}

impl From<mongodb::error::Error> for Failed {
    fn from(e: mongodb::error::Error) -> Self {
        if unsupported(&e) {
            Failed::Unsupported
        } else {
            Failed::Db(e)
        }
    }
}

/// IllegalOperation ("Transaction numbers are only allowed on a replica set member or mongos"),
/// or a driver that sees no session support.
pub(super) fn unsupported(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => c.code == 20,
        ErrorKind::SessionsNotSupported => true,
        ErrorKind::Transaction { message, .. } => message.contains("replica set"),
        _ => false,
    }
}

/// WriteConflict: another writer changed a document the transaction wrote.
fn is_write_conflict(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 112)
}

/// A write conflict, a failover, or a commit whose outcome is unknown: the batch is read and
/// written again (a committed batch leaves no candidates to write twice).
pub(super) fn retryable(e: &mongodb::error::Error) -> bool {
    e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        || e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
        || super::retry::is_transient(e)
}

async fn attempt_once(
    job: &Job<'_>,
    transactions: &Transactions,
) -> std::result::Result<Attempt, Failed> {
    // No before-images index is built while this transaction inserts its chunk.
    let _chunk = super::owned::IMAGE_INDEX_BUILD.read().await;
    // Until a chunk is in, the before-images index on `entries._id` may not be multikey yet: the
    // first insert of an array sets that flag in the catalog, and concurrent transactions each
    // setting it abort one another with write conflicts (which would also halve the batch size
    // on a quiet collection). So batches go one at a time until one has committed.
    let _alone = match transactions.warmed.load(Ordering::Acquire) {
        true => None,
        false => Some(transactions.first.lock().await),
    };
    let mut session = transactions.take(job.db).await?;
    let outcome = attempt_in(job, &mut session).await;
    transactions.give_back(session).await;
    if matches!(outcome, Ok(Attempt::Committed(_))) {
        transactions.warmed.store(true, Ordering::Release);
    }
    outcome
}

/// Starts a transaction whose reads all come from one snapshot, which is what lets a batch (and
/// a rollback's batch) write without per-document guards: a document changed after the snapshot
/// makes the write conflict. Committed with majority, so a failover does not undo it.
pub(super) async fn start_snapshot(session: &mut ClientSession) -> mongodb::error::Result<()> {
    session
        .start_transaction()
        .read_concern(ReadConcern::snapshot())
        .write_concern(WriteConcern::majority())
        .await
}

async fn attempt_in(
    job: &Job<'_>,
    session: &mut ClientSession,
) -> std::result::Result<Attempt, Failed> {
    start_snapshot(session).await?;
    match in_transaction(job, session).await {
        Ok(Attempt::Committed(stats)) => {
            session.commit_transaction().await?;
            Ok(Attempt::Committed(stats))
        }
        other => {
            // Nothing of the batch stays: the snapshot's writes go with the transaction.
            let _ = session.abort_transaction().await;
            other
        }
    }
}

/// Reads, images and writes the batch; the caller commits.
async fn in_transaction(
    job: &Job<'_>,
    session: &mut ClientSession,
) -> std::result::Result<Attempt, Failed> {
    let Job {
        db,
        spec,
        transform,
        fast,
        migration,
        fail_on_invalid,
        ..
    } = *job;
    let range = &job.range;
    let coll = db.collection::<Document>(&spec.collection);
    let docs: Vec<Document> = coll
        .find(range.clone())
        .projection(projection(&spec.fields))
        .session(&mut *session)
        .await?
        .stream(&mut *session)
        .try_collect()
        .await?;
    let read: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
    let mut stats = Stats {
        batches: 1,
        in_transactions: 1,
        ..Default::default()
    };
    let planned = plan(transform, docs, &mut stats).await;
    if fail_on_invalid && stats.invalid > 0 {
        return Err(Failed::Refused(super::write::invalid_refusal(
            spec, migration, &stats,
        )));
    }
    stats.scanned = read.len() as u64;
    let planned = if planned.is_empty() || !spec.run.may_own() {
        planned
    } else {
        // Documents this migration may have written already (catch-up ahead of the scan, an
        // earlier attempt): those the application moved since are left out, read from the same
        // snapshot as the documents.
        let ids: Vec<Bson> = planned.iter().map(|p| p.id.clone()).collect();
        let chunks: Vec<Document> = db
            .collection::<Document>(super::BEFORE_IMAGES)
            .find(super::owned::chunks_naming(migration, &ids))
            .sort(super::before_image::NEWEST_FIRST.clone())
            .projection(super::owned::chunk_projection())
            .session(&mut *session)
            .await?
            .stream(&mut *session)
            .try_collect()
            .await?;
        let entries = super::owned::entries_by_document(chunks, &ids);
        super::owned::keep_owned(spec, planned, &entries, &mut stats)
    };
    if planned.is_empty() {
        return Ok(Attempt::Committed(Box::new(stats)));
    }
    let (quick, one_by_one): (Vec<&Planned>, Vec<&Planned>) =
        planned.iter().partition(|p| (fast.exact_for)(&p.before));
    let entries: Vec<Bson> = planned
        .iter()
        .map(|p| Bson::Document(before_image(p, &spec.owns)))
        .collect();
    db.collection::<Document>(super::BEFORE_IMAGES)
        .insert_one(doc! {
            "migration": migration,
            "collection": &spec.collection,
            "createdAt": super::before_image::chunk_time(),
            "entries": entries,
        })
        .session(&mut *session)
        .await?;
    let mut statements: Vec<Document> = one_by_one
        .iter()
        .map(|p| statement(p, &spec.fields))
        .collect();
    if !quick.is_empty() {
        statements.push(doc! {
            "q": quick_filter(range, &read, &quick),
            "u": fast.pipeline.clone(),
            "multi": true,
        });
    }
    let reply = db
        .run_command(doc! { "update": &spec.collection, "updates": statements, "ordered": false })
        .session(&mut *session)
        .await?;
    if let Ok(errors) = reply.get_array("writeErrors") {
        let first = errors
            .first()
            .and_then(Bson::as_document)
            .and_then(|e| e.get_str("errmsg").ok())
            .unwrap_or("unknown");
        return Ok(Attempt::NotHere(format!(
            "the server refused a write: {first}"
        )));
    }
    let matched = super::checkpoint::int(&reply, "n");
    if matched != planned.len() as u64 {
        // In one snapshot every statement matches what was read; anything else means this
        // deployment's transactions do not isolate, and the guarded path must take the batch.
        return Ok(Attempt::NotHere(format!(
            "the update matched {matched} of the {} documents read in the same snapshot",
            planned.len()
        )));
    }
    stats.modified = super::checkpoint::int(&reply, "nModified");
    Ok(Attempt::Committed(Box::new(stats)))
}

/// The fast statement's filter: the batch's range of candidates without the other documents the
/// snapshot read there (invalid, already right, or computed in Rust), or the documents one by one
/// when those others are many (a long `$nin` costs more than `$in`).
fn quick_filter(range: &Document, read: &[Bson], quick: &[&Planned]) -> Document {
    let written: HashSet<Vec<u8>> = quick
        .iter()
        .map(|p| super::catch_up::key_of(&p.id))
        .collect();
    let others: Vec<Bson> = read
        .iter()
        .filter(|id| !written.contains(&super::catch_up::key_of(id)))
        .cloned()
        .collect();
    if others.is_empty() {
        range.clone()
    } else if others.len() * 4 <= quick.len() {
        and(vec![range.clone(), doc! { "_id": { "$nin": others } }])
    } else {
        let ids: Vec<Bson> = quick.iter().map(|p| p.id.clone()).collect();
        and(vec![range.clone(), doc! { "_id": { "$in": ids } }])
    }
}
