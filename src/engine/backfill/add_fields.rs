//! [`FieldBackfill`]: the commonest migration, "give every document lacking these fields a
//! value", as a builder that is itself the [`Migration`]: `up`, `down` and the post-condition
//! are written once here.

use super::pipeline::{remaining, run, sample_ids};
use super::spec::{Backfill, CatchUp, ServerUpdate, Transform};
use super::write::and;
use crate::engine::error::{Error, Result};
use crate::engine::migration::{Context, Migration, Outcome};
use async_trait::async_trait;
use mongodb::bson::{doc, Bson, Document};

/// Sets fields where they are missing, on the server, over the backfill pipeline.
///
/// ```
/// use mongo_migrate::backfill::FieldBackfill;
/// use mongodb::bson::doc;
///
/// pub fn migration() -> FieldBackfill {
///     FieldBackfill::new("users", "give every user a displayName and a tier")
///         .set("tier", "free")
///         .compute("displayName", doc! { "$ifNull": ["$name", ""] })
/// }
/// # let _ = migration();
/// ```
///
/// - **up**: one server-side update per field over each batch's `_id` range, matching only the
///   documents that still lack that field (a value already there, even `null`, is kept). It
///   resumes from its checkpoint, honours `--dry-run`, `--batch-size`, `--concurrency` and
///   `--max-docs-per-sec`, and catches up with documents inserted or stripped of a field while
///   it runs.
/// - **post-condition**: no document matching [`FieldBackfill::only`] lacks any of the fields.
/// - **down**: removes the fields from the documents where every one of them still holds what
///   `up` would write (for a computed field: its expression, evaluated now), and reports how many
///   it left alone; `rollback --force` removes them everywhere. A document that already held
///   exactly that value before `up` loses it too: when that matters, use
///   [`PerDocument`](super::PerDocument), which keeps before-images.
#[derive(Debug, Clone)]
pub struct FieldBackfill {
    collection: String,
    description: &'static str,
    only: Document,
    fields: Vec<(String, Value)>,
}

#[derive(Debug, Clone)]
enum Value {
    /// Stored as given.
    Constant(Bson),
    /// An aggregation expression evaluated on the server against the document.
    Computed(Bson),
}

impl FieldBackfill {
    /// A backfill of `collection` with no field yet; `description` is what `migrate status` shows.
    pub fn new(collection: impl Into<String>, description: &'static str) -> Self {
        FieldBackfill {
            collection: collection.into(),
            description,
            only: Document::new(),
            fields: Vec::new(),
        }
    }

    /// Where `field` is missing, sets it to `value` (stored as given, `$`-strings included).
    pub fn set(mut self, field: impl Into<String>, value: impl Into<Bson>) -> Self {
        self.fields
            .push((field.into(), Value::Constant(value.into())));
        self
    }

    /// Where `field` is missing, sets it to the aggregation `expression` evaluated against the
    /// document on the server (e.g. `{"$ifNull": ["$name", ""]}`).
    pub fn compute(mut self, field: impl Into<String>, expression: impl Into<Bson>) -> Self {
        self.fields
            .push((field.into(), Value::Computed(expression.into())));
        self
    }

    /// Only documents matching `filter` get the fields (and are checked by the post-condition).
    pub fn only(mut self, filter: Document) -> Self {
        self.only = filter;
        self
    }

    fn lacking_any(&self) -> Document {
        let missing: Vec<Document> = self
            .fields
            .iter()
            .map(|(f, _)| doc! { f.as_str(): { "$exists": false } })
            .collect();
        and(vec![self.only.clone(), doc! { "$or": missing }])
    }

    fn up_spec(&self, ctx: &Context) -> Backfill {
        assert!(
            !self.fields.is_empty(),
            "FieldBackfill {} sets no field: add .set() or .compute()",
            ctx.name()
        );
        let updates = self
            .fields
            .iter()
            .map(|(f, value)| {
                let missing = doc! { f.as_str(): { "$exists": false } };
                match value {
                    Value::Constant(v) => {
                        ServerUpdate::operators(missing, doc! { "$set": { f.as_str(): v.clone() } })
                    }
                    Value::Computed(e) => ServerUpdate::pipeline(
                        missing,
                        vec![doc! { "$set": { f.as_str(): e.clone() } }],
                    ),
                }
            })
            .collect();
        // Only a new document or a removed field can make a document lack a field again.
        let mut spec = Backfill::new(
            self.collection.clone(),
            self.lacking_any(),
            Transform::Server(updates),
        )
        .catching_up(CatchUp {
            removed: self.fields.iter().map(|(f, _)| f.clone()).collect(),
            ..CatchUp::default()
        });
        spec.label = ctx.name().to_string();
        spec
    }

    /// Documents where every field holds what `up` writes.
    fn all_hold_what_up_writes(&self) -> Document {
        let holds: Vec<Document> = self
            .fields
            .iter()
            .map(|(f, value)| {
                let written = match value {
                    Value::Constant(v) => Bson::Document(doc! { "$literal": v.clone() }),
                    Value::Computed(e) => e.clone(),
                };
                doc! { f.as_str(): { "$exists": true }, "$expr": { "$eq": [format!("${f}"), written] } }
            })
            .collect();
        doc! { "$and": holds }
    }

    fn holding_any(&self) -> Document {
        let present: Vec<Document> = self
            .fields
            .iter()
            .map(|(f, _)| doc! { f.as_str(): { "$exists": true } })
            .collect();
        and(vec![self.only.clone(), doc! { "$or": present }])
    }
}

#[async_trait]
impl Migration for FieldBackfill {
    fn description(&self) -> &'static str {
        self.description
    }

    async fn up(&self, ctx: &Context) -> Result<Outcome> {
        let stats = run(ctx, &self.up_spec(ctx)).await?;
        let verb = if ctx.dry_run() { "would set" } else { "set" };
        Ok(Outcome::ok(
            format!(
                "{verb} {} missing field(s) on {} document(s) of {}",
                stats.modified, stats.scanned, self.collection
            ),
            stats.to_document(),
        ))
    }

    fn reversible(&self) -> bool {
        true
    }

    async fn down(&self, ctx: &Context) -> Result<Outcome> {
        let filter = if ctx.options().force {
            self.holding_any()
        } else {
            and(vec![self.only.clone(), self.all_hold_what_up_writes()])
        };
        let unset: Document = self
            .fields
            .iter()
            .map(|(f, _)| (f.clone(), Bson::String(String::new())))
            .collect();
        let mut spec = Backfill::new(
            self.collection.clone(),
            filter,
            Transform::Server(vec![ServerUpdate::operators(
                doc! {},
                doc! { "$unset": unset },
            )]),
        )
        .without_checkpoints();
        spec.label = format!("{} rollback", ctx.name());
        let stats = run(ctx, &spec).await?;
        let still: Backfill = Backfill::new(
            self.collection.clone(),
            self.holding_any(),
            Transform::Server(vec![]),
        );
        let left_alone = remaining(ctx, &still, doc! {}).await?;
        let mut message = format!(
            "removed the fields from {} document(s) of {}",
            stats.scanned, self.collection
        );
        if left_alone > 0 {
            message.push_str(&format!(
                "; left {left_alone} document(s) alone because a field no longer holds what up wrote (rollback --force removes those too)"
            ));
        }
        Ok(Outcome::ok(
            message,
            doc! { "reverted": stats.scanned as i64, "leftAlone": left_alone as i64 },
        ))
    }

    async fn verify(&self, ctx: &Context) -> Result<()> {
        let spec = self.up_spec(ctx);
        let lacking = remaining(ctx, &spec, doc! {}).await?;
        if lacking > 0 {
            let samples = sample_ids(ctx, &spec, 5).await?;
            return Err(Error::migration(
                ctx.name(),
                format!(
                    "{lacking} document(s) of {} still lack a field, e.g. {}",
                    self.collection,
                    Bson::Array(samples).into_relaxed_extjson()
                ),
            ));
        }
        Ok(())
    }
}
