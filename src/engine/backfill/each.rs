//! Guarded statements whose outcomes are known one by one.
//!
//! An `update` command of many statements says how many matched, not which. A write outside a
//! transaction saves its before-images first, so it must know which of its guarded statements
//! did not happen, to take exactly their entries back: an entry claiming a write that never
//! happened would make the migration disown a document it owns, and taking back the entry of a
//! write that did happen (and that the application undid a moment later, say a balance reset to
//! what it was) would make the migration write over the application. The `bulkWrite` command
//! (MongoDB 8.0 and later) answers per statement in one round trip; elsewhere each statement goes
//! as its own `update`, several at a time.

use super::retry::with_retry;
use super::spec::Backfill;
use crate::engine::error::Result;
use crate::engine::migration::Stop;
use futures::StreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::{UpdateModifications, UpdateOneModel};
use mongodb::{Database, Namespace};
use std::sync::atomic::Ordering;

/// Statements sent at once where each goes as its own command.
const IN_FLIGHT: usize = 16;

/// What each statement did.
#[derive(Debug, Default)]
pub(super) struct Outcomes {
    /// Per statement: whether its filter matched (it wrote, or found the values already there).
    pub(super) matched: Vec<bool>,
    /// Documents changed.
    pub(super) modified: u64,
    /// `(statement index, message)` of the statements the server refused.
    pub(super) errors: Vec<(usize, String)>,
    /// Whether a statement was sent more than once (a transient failure retried): one that then
    /// matched nothing may have been applied by the attempt whose reply was lost.
    pub(super) retried: bool,
}

impl Outcomes {
    /// How many statements matched.
    pub(super) fn matched_count(&self) -> u64 {
        self.matched.iter().filter(|m| **m).count() as u64
    }
}

/// Sends `statements` (`{q, u}` documents, one document each, guarded) and reports each one's
/// outcome. Transient failures are retried: a statement applied by an attempt whose reply was
/// lost then finds its guard failing and reports no match, which the caller tells apart by
/// reading the document back.
pub(super) async fn write_each(
    db: &Database,
    spec: &Backfill,
    statements: Vec<Document>,
    stop: &Stop,
) -> Result<Outcomes> {
    if statements.is_empty() {
        return Ok(Outcomes::default());
    }
    // 0: not known yet, 1: bulkWrite answers, 2: it does not here.
    if spec.run.bulk_write.load(Ordering::Acquire) != 2 {
        match bulk(db, &spec.collection, &statements, stop).await? {
            Some(outcomes) => {
                spec.run.bulk_write.store(1, Ordering::Release);
                return Ok(outcomes);
            }
            None => {
                tracing::debug!("no bulkWrite command here; guarded statements go one by one");
                spec.run.bulk_write.store(2, Ordering::Release);
            }
        }
    }
    one_by_one(db, &spec.collection, statements, stop).await
}

/// Through one `bulkWrite`; `None` where the deployment has no such command.
async fn bulk(
    db: &Database,
    collection: &str,
    statements: &[Document],
    stop: &Stop,
) -> Result<Option<Outcomes>> {
    let namespace = Namespace {
        db: db.name().to_string(),
        coll: collection.to_string(),
    };
    let models: Vec<UpdateOneModel> = statements
        .iter()
        .map(|s| {
            UpdateOneModel::builder()
                .namespace(namespace.clone())
                .filter(s.get_document("q").cloned().unwrap_or_default())
                .update(UpdateModifications::Document(
                    s.get_document("u").cloned().unwrap_or_default(),
                ))
                .build()
        })
        .collect();
    let mut outcomes = Outcomes {
        matched: vec![false; statements.len()],
        ..Default::default()
    };
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let reply = with_retry(
        &format!("writing a batch to {collection}"),
        stop,
        || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            match db
                .client()
                .bulk_write(models.clone())
                .ordered(false)
                .verbose_results()
                .await
            {
                Ok(result) => Ok(Ok(result)),
                // Refused statements are answered, not raised: the others' results come with them.
                Err(e) if matches!(e.kind.as_ref(), ErrorKind::BulkWrite(_)) => Ok(Err(e)),
                Err(e) => Err(e),
            }
        },
    )
    .await;
    let result = match reply {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => {
            let ErrorKind::BulkWrite(failure) = e.kind.as_ref() else {
                unreachable!("only bulk write errors are passed on");
            };
            for (index, error) in &failure.write_errors {
                outcomes.errors.push((*index, error.message.clone()));
            }
            outcomes.errors.sort();
            match &failure.partial_result {
                Some(mongodb::error::PartialBulkWriteResult::Verbose(partial)) => partial.clone(),
                _ => return Ok(Some(outcomes)),
            }
        }
        Err(e) if unsupported(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    outcomes.retried = attempts.load(Ordering::Relaxed) > 1;
    for (index, update) in &result.update_results {
        if let Some(m) = outcomes.matched.get_mut(*index) {
            *m = update.matched_count > 0;
        }
        outcomes.modified += update.modified_count;
    }
    Ok(Some(outcomes))
}

/// Whether a failed `bulkWrite` means the deployment has none: a server before 8.0 (the driver
/// refuses before sending), or a server that does not know the command.
fn unsupported(e: &crate::engine::error::Error) -> bool {
    let text = e.to_string();
    text.contains("only supported on MongoDB 8.0")
        || text.contains("no such command")
        || text.contains("CommandNotFound")
}

/// Each statement as its own `update`, [`IN_FLIGHT`] at a time.
async fn one_by_one(
    db: &Database,
    collection: &str,
    statements: Vec<Document>,
    stop: &Stop,
) -> Result<Outcomes> {
    let retried = std::sync::atomic::AtomicBool::new(false);
    let replies: Vec<Result<Document>> = futures::stream::iter(statements)
        .map(|statement| {
            let retried = &retried;
            async move {
                let command = doc! { "update": collection, "updates": [statement] };
                let mut attempts = 0;
                let reply = with_retry(&format!("writing a batch to {collection}"), stop, || {
                    attempts += 1;
                    db.run_command(command.clone())
                })
                .await;
                if attempts > 1 {
                    retried.store(true, Ordering::Relaxed);
                }
                reply
            }
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut outcomes = Outcomes {
        retried: retried.load(Ordering::Relaxed),
        ..Default::default()
    };
    for (index, reply) in replies.into_iter().enumerate() {
        let reply = reply?;
        outcomes
            .matched
            .push(super::checkpoint::int(&reply, "n") > 0);
        outcomes.modified += super::checkpoint::int(&reply, "nModified");
        if let Some(error) = reply
            .get_array("writeErrors")
            .ok()
            .and_then(|e| e.first())
            .and_then(|e| e.as_document())
        {
            let message = error.get_str("errmsg").unwrap_or("unknown").to_string();
            outcomes.errors.push((index, message));
        }
    }
    Ok(outcomes)
}
