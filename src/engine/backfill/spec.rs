//! How a migration describes a backfill.

use mongodb::bson::Document;
use std::sync::Arc;

/// A server-side update applied to every candidate in a batch's `_id` range.
#[derive(Debug, Clone)]
pub struct ServerUpdate {
    /// Extra filter for this statement (ANDed with the backfill's filter and the range).
    pub filter: Document,
    /// An update document (`{$set: ...}`) or, as `Pipeline`, an aggregation pipeline update.
    pub update: ServerUpdateKind,
}

/// The two update forms the server accepts.
#[derive(Debug, Clone)]
pub enum ServerUpdateKind {
    /// `{$set: {...}, $unset: {...}}`.
    Operators(Document),
    /// `[{$set: {...}}, ...]`.
    Pipeline(Vec<Document>),
}

impl ServerUpdate {
    /// An operator update (`{$set: ...}`) for candidates also matching `filter`.
    pub fn operators(filter: Document, update: Document) -> Self {
        ServerUpdate {
            filter,
            update: ServerUpdateKind::Operators(update),
        }
    }
    /// A pipeline update for candidates also matching `filter`.
    pub fn pipeline(filter: Document, stages: Vec<Document>) -> Self {
        ServerUpdate {
            filter,
            update: ServerUpdateKind::Pipeline(stages),
        }
    }
}

/// What the per-document transform decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Nothing to do.
    Unchanged,
    /// Set these fields (and remove `unset`). The write is guarded on every projected field as
    /// read, so a document changed since the read is not overwritten.
    Update {
        /// Fields to set.
        set: Document,
        /// Fields to remove.
        unset: Vec<String>,
    },
    /// The document's data cannot be migrated; it is left untouched and reported.
    Invalid(&'static str),
}

/// Per-document transform (runs on rayon across a batch).
pub type DocTransform = Arc<dyn Fn(&Document) -> Change + Send + Sync>;

/// A server-side equivalent of a per-document transform, for the documents it computes exactly.
///
/// The Rust transform still decides every document (invalid, unchanged, or the exact values to
/// set, which the before-images record); the documents for which `exact_for` holds are then
/// written by one pipeline update over their `_id`s instead of one statement each, which is
/// several times cheaper for the server. The update runs only on documents still matching the
/// backfill's filter and `guard`, so a document changed in between is never overwritten.
#[derive(Clone)]
pub struct FastPath {
    /// Extra conditions the documents must still meet when written (e.g. valid input types).
    pub guard: Document,
    /// The pipeline update computing exactly what the transform computes.
    pub pipeline: Vec<Document>,
    /// Whether the pipeline's result equals the transform's for this document as read.
    pub exact_for: Arc<dyn Fn(&Document) -> bool + Send + Sync>,
}

/// Where the change is computed.
#[derive(Clone)]
pub enum Transform {
    /// On the server, over each batch's `_id` range: nothing travels to the client.
    Server(Vec<ServerUpdate>),
    /// In Rust, per document.
    Client(DocTransform),
}

/// A backfill over one collection.
#[derive(Clone)]
pub struct Backfill {
    /// Collection to scan.
    pub collection: String,
    /// Candidates: documents that may need the change. Documents outside it are never read.
    pub filter: Document,
    /// Fields the client transform reads (besides `_id`); also the guard of each write.
    pub fields: Vec<String>,
    /// The change.
    pub transform: Transform,
    /// Keep before-images of every changed document so `down` can restore them exactly.
    pub before_images: bool,
    /// Save one before-image per document (indexed by document) instead of one per batch: set
    /// while the application writes, when catch-up looks images up by document.
    pub per_document_images: bool,
    /// Save checkpoints (off for work that simply restarts, such as a `down`).
    pub checkpoints: bool,
    /// Label of the progress bar and log lines.
    pub label: String,
    /// Server-side equivalent of a client transform, for speed.
    pub fast_path: Option<FastPath>,
    /// Catch up with documents the application changes during the run (see [`CatchUp`]).
    pub catch_up: Option<CatchUp>,
    /// Every field the migration writes (see [`Backfill::owning`]). Empty: the fields each write
    /// sets or removes.
    pub owns: Vec<String>,
    /// What this run has learnt about the documents it owns.
    pub(super) run: Arc<RunState>,
}

/// State one run of a backfill shares between its batches.
#[derive(Default)]
pub(super) struct RunState {
    /// Whether a document a batch is about to write may already have been written by this
    /// migration (a previous attempt, or catch-up ahead of the scan): its batches then look up
    /// the migration's entries before writing. A fresh scan over documents nothing wrote yet
    /// skips that read.
    pub(super) may_own: std::sync::atomic::AtomicBool,
    /// When the run began, on the server's clock (milliseconds; 0 before): entries saved since,
    /// and not settled yet, are its writes under way.
    pub(super) started_ms: std::sync::atomic::AtomicI64,
    /// Whether documents an earlier attempt wrote must be looked at again after the scan: their
    /// inputs may have changed while no stream of this run was reading (a re-run after a
    /// failure, a resume whose token could not be used).
    pub(super) revisit_owned: std::sync::atomic::AtomicBool,
    /// Whether the deployment answers `bulkWrite` (0: not known yet, 1: yes, 2: no).
    pub(super) bulk_write: std::sync::atomic::AtomicU8,
}

impl RunState {
    pub(super) fn may_own(&self) -> bool {
        self.may_own.load(std::sync::atomic::Ordering::Acquire)
    }
    pub(super) fn started(&self) -> Option<mongodb::bson::DateTime> {
        match self.started_ms.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            ms => Some(mongodb::bson::DateTime::from_millis(ms)),
        }
    }
    pub(super) fn start(&self, at: mongodb::bson::DateTime) {
        self.started_ms
            .store(at.timestamp_millis(), std::sync::atomic::Ordering::Release);
    }
    pub(super) fn owning_some(&self) {
        self.may_own
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Which concurrent writes can make a document a candidate (again), and how to find the
/// candidates left after the scan.
///
/// The change stream reports inserts, replacements, updates that set one of `updated` and updates
/// that remove one of `removed`. Fields the backfill itself sets belong in `removed` only: an
/// update that sets them is, on a quiet collection, the backfill's own write, and watching it
/// would read every written document back. A write the stream does not report (the application
/// setting a written field back to a candidate value) is still found by the post-scan rounds.
#[derive(Debug, Clone, Default)]
pub struct CatchUp {
    /// Fields whose update can make a document a candidate.
    pub updated: Vec<String>,
    /// Fields whose removal can make a document a candidate.
    pub removed: Vec<String>,
    /// Narrows the candidate filter to documents that certainly still need the change, for the
    /// post-scan rounds (a client transform still decides each one). Empty: the candidate filter.
    pub pending: Document,
}

impl Backfill {
    /// A backfill with checkpoints on and before-images off.
    pub fn new(collection: impl Into<String>, filter: Document, transform: Transform) -> Self {
        let collection = collection.into();
        Backfill {
            label: collection.clone(),
            collection,
            filter,
            fields: Vec::new(),
            transform,
            before_images: false,
            per_document_images: false,
            checkpoints: true,
            fast_path: None,
            catch_up: None,
            owns: Vec::new(),
            run: Arc::default(),
        }
    }
    /// Names every field the migration writes. A document the migration wrote stays its own only
    /// while every one of them still holds what it wrote: once the application sets any of them
    /// (a withdrawal started, a balance reset), the document is the application's, and is never
    /// written again by this migration, whatever its inputs do. The fields are also read (added
    /// to [`Backfill::fields`]).
    pub fn owning(mut self, fields: &[&str]) -> Self {
        for f in fields {
            if !self.fields.iter().any(|g| g == f) {
                self.fields.push(f.to_string());
            }
        }
        self.owns = fields.iter().map(|f| f.to_string()).collect();
        self
    }
    /// Catches up with concurrent writes: the change stream during the run, then rounds over the
    /// candidates until none is left (see [`CatchUp`]).
    pub fn catching_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = Some(catch_up);
        self
    }
    /// Sets the fields the transform reads.
    pub fn fields(mut self, fields: &[&str]) -> Self {
        self.fields = fields.iter().map(|f| f.to_string()).collect();
        self
    }
    /// Records before-images for exact rollback.
    pub fn with_before_images(mut self) -> Self {
        self.before_images = true;
        self
    }
    /// Writes the documents `fast_path` computes exactly with one server-side update per batch.
    pub fn with_fast_path(mut self, fast_path: FastPath) -> Self {
        self.fast_path = Some(fast_path);
        self
    }
    /// The same backfill for documents the application is writing: each written by its own
    /// statement guarded on every field read (the fast path computes from the document as it is
    /// at write time, which cannot be guarded per document cheaply), with one before-image per
    /// document so catch-up finds it by index.
    pub(super) fn while_live(&self) -> Backfill {
        let mut spec = self.clone();
        spec.fast_path = None;
        spec.per_document_images = true;
        spec
    }
    /// Disables checkpoints (and catch-up, which needs them to resume).
    pub fn without_checkpoints(mut self) -> Self {
        self.checkpoints = false;
        self.catch_up = None;
        self
    }
}
