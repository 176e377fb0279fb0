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
    /// Save checkpoints (off for work that simply restarts, such as a `down`).
    pub checkpoints: bool,
    /// Label of the progress bar and log lines.
    pub label: String,
    /// Server-side equivalent of a client transform, for speed.
    pub fast_path: Option<FastPath>,
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
            checkpoints: true,
            fast_path: None,
        }
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
    /// Disables checkpoints.
    pub fn without_checkpoints(mut self) -> Self {
        self.checkpoints = false;
        self
    }
}
