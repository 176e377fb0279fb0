//! [`PerDocument`]: a migration whose change is computed in Rust for each document, as a builder
//! that is itself the [`Migration`], with before-images for an exact `down`.

use super::before_image::restore;
use super::pipeline::run;
use super::retry::with_retry;
use super::spec::{Backfill, CatchUp, Change, DocTransform, FastPath, Transform};
use super::write::and;
use crate::engine::error::{Error, Result};
use crate::engine::migration::{Context, Migration, Outcome};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document};
use std::sync::Arc;

/// A per-document Rust transform over the candidates of one collection.
///
/// ```
/// use mongo_migrate::backfill::{Change, PerDocument};
/// use mongodb::bson::doc;
///
/// pub fn migration() -> PerDocument {
///     let candidates = doc! { "email": { "$regex": "[A-Z]" } };
///     PerDocument::new("users", "lower-case every email", candidates, &["email"], |user| {
///         match user.get_str("email") {
///             Ok(e) => Change::Update { set: doc! { "email": e.to_lowercase() }, unset: vec![] },
///             Err(_) => Change::Invalid("email is not a string"),
///         }
///     })
/// }
/// # let _ = migration();
/// ```
///
/// - **up**: reads the candidates in `_id` batches (projected on `fields`), runs the transform
///   on them in parallel, and writes each change guarded on every field it read, so a document
///   the application changed in between is re-read, never overwritten. Invalid documents are
///   left untouched and reported (`--fail-on-invalid` fails the run instead). It resumes from its
///   checkpoint, honours `--dry-run` and the throttle, and catches up with concurrent writes
///   (see [`PerDocument::catching_up`]).
/// - **post-condition**: no candidate (narrowed by [`CatchUp::pending`] when given) is one the
///   transform would still change.
/// - **down**: restores every changed document from its before-image, guarded on what `up`
///   wrote; documents the application changed since are reported, not clobbered.
#[derive(Clone)]
pub struct PerDocument {
    collection: String,
    description: &'static str,
    filter: Document,
    fields: Vec<String>,
    transform: DocTransform,
    catch_up: CatchUp,
    fast_path: Option<FastPath>,
}

impl PerDocument {
    /// `transform` decides each document of `collection` matching `filter` (the candidates);
    /// `fields` are the fields it reads, which also guard each write.
    pub fn new(
        collection: impl Into<String>,
        description: &'static str,
        filter: Document,
        fields: &[&str],
        transform: impl Fn(&Document) -> Change + Send + Sync + 'static,
    ) -> Self {
        PerDocument {
            collection: collection.into(),
            description,
            filter,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            transform: Arc::new(transform),
            catch_up: CatchUp::default(),
            fast_path: None,
        }
    }

    /// Which concurrent writes make a document a candidate again (default: inserts and
    /// replacements; the rounds after the scan find the rest), see [`CatchUp`].
    pub fn catching_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// A server-side pipeline computing exactly what the transform computes, for speed.
    pub fn with_fast_path(mut self, fast_path: FastPath) -> Self {
        self.fast_path = Some(fast_path);
        self
    }

    fn spec(&self, ctx: &Context) -> Backfill {
        let fields: Vec<&str> = self.fields.iter().map(String::as_str).collect();
        let mut spec = Backfill::new(
            self.collection.clone(),
            self.filter.clone(),
            Transform::Client(self.transform.clone()),
        )
        .fields(&fields)
        .with_before_images()
        .catching_up(self.catch_up.clone());
        spec.fast_path = self.fast_path.clone();
        spec.label = ctx.name().to_string();
        spec
    }
}

#[async_trait]
impl Migration for PerDocument {
    fn description(&self) -> &'static str {
        self.description
    }

    async fn up(&self, ctx: &Context) -> Result<Outcome> {
        let stats = run(ctx, &self.spec(ctx)).await?;
        if stats.invalid > 0 {
            tracing::warn!(
                migration = ctx.name(),
                invalid = stats.invalid,
                reasons = %stats.invalid_reasons,
                "documents with invalid data were left untouched"
            );
        }
        let verb = if ctx.dry_run() {
            "would change"
        } else {
            "changed"
        };
        let mut message = format!(
            "{verb} {} document(s) of {}; {} already right, {} invalid left untouched, {} changed concurrently",
            stats.modified, self.collection, stats.unchanged, stats.invalid, stats.conflicts
        );
        if stats.catch_up.modified > 0 {
            message.push_str(&format!(
                "; {} more caught up after the application changed them",
                stats.catch_up.modified
            ));
        }
        Ok(Outcome::ok(message, stats.to_document()))
    }

    fn reversible(&self) -> bool {
        true
    }

    async fn down(&self, ctx: &Context) -> Result<Outcome> {
        let report = restore(ctx.db(), ctx.name(), ctx.stop()).await?;
        let mut message = format!(
            "restored {} document(s) of {}",
            report.restored + report.already,
            self.collection
        );
        if report.conflicts > 0 {
            message.push_str(&format!(
                "; {} changed since the migration and were left as they are (see rollbackResult.conflictSamples)",
                report.conflicts
            ));
        }
        Ok(Outcome::ok(message, report.to_document()))
    }

    async fn verify(&self, ctx: &Context) -> Result<()> {
        let filter = and(vec![self.filter.clone(), self.catch_up.pending.clone()]);
        let projection: Document = self
            .fields
            .iter()
            .map(|f| (f.clone(), Bson::Int32(1)))
            .collect();
        let coll = ctx.db().collection::<Document>(&self.collection);
        let left: Vec<Bson> = with_retry("checking the post-condition", ctx.stop(), || async {
            let mut cursor = coll
                .find(filter.clone())
                .projection(projection.clone())
                .await?;
            let mut left = Vec::new();
            while let Some(d) = cursor.try_next().await? {
                if matches!((self.transform)(&d), Change::Update { .. }) {
                    left.push(d.get("_id").cloned().unwrap_or(Bson::Null));
                }
            }
            Ok(left)
        })
        .await?;
        if !left.is_empty() {
            let samples: Vec<Bson> = left.iter().take(5).cloned().collect();
            return Err(Error::migration(
                ctx.name(),
                format!(
                    "{} document(s) of {} still need the change, e.g. {}",
                    left.len(),
                    self.collection,
                    Bson::Array(samples).into_relaxed_extjson()
                ),
            ));
        }
        Ok(())
    }
}
