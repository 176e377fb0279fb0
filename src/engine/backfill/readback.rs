//! Fast-path batches read back what the server wrote, so before-images record it.

use super::retry::with_retry;
use super::spec::{Backfill, Change, DocTransform};
use super::write::{already_applied, Planned};
use crate::engine::error::Result;
use crate::engine::migration::Stop;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;

/// The documents of a batch written by the fast path.
pub(super) struct FastWrite {
    pub(super) ids: Vec<Bson>,
}

/// Makes the before-images of the fast path's documents say what the server actually wrote.
///
/// The server computes from the document as it is when written, which is what was read unless
/// the application changed an input in between. Such a document is read back: if its fields are
/// exactly what the transform gives for its current inputs, that is what this batch wrote, and its
/// entry records it, so `down` restores it. Anything else (the application also changed a written
/// field) keeps the entry as it is, and `down` reports the document as changed rather than
/// overwrite the application's value.
///
/// Returns, by index into `planned`, what the server set where that differs from the plan, so
/// that whatever later checks this batch's writes (see `owned::undo_met_halfway`) goes by what
/// was written.
#[allow(clippy::too_many_arguments)]
pub(super) async fn record_what_was_written(
    db: &Database,
    spec: &Backfill,
    transform: &DocTransform,
    planned: &[Planned],
    fast: &FastWrite,
    chunk_id: Bson,
    mut entries: Vec<Bson>,
    stop: &Stop,
) -> Result<Vec<(usize, Document)>> {
    let by_id =
        super::owned::read_by_key(db, spec, &fast.ids, "reading back a written batch", stop)
            .await?;
    let mut corrected = Vec::new();
    for (i, (p, entry)) in planned.iter().zip(entries.iter_mut()).enumerate() {
        let Some(now) = by_id.get(&super::catch_up::key_of(&p.id)) else {
            continue;
        };
        if already_applied(now, &p.set, &p.unset) {
            continue;
        }
        // The inputs as they are now, with the written fields as they were before the write.
        let mut inputs = (*now).clone();
        for key in p.set.keys().chain(p.unset.iter()) {
            match p.before.get(key) {
                Some(v) => inputs.insert(key.clone(), v.clone()),
                None => inputs.remove(key),
            };
        }
        if let Change::Update { set, unset } = transform(&inputs) {
            if unset == p.unset && set.keys().eq(p.set.keys()) && already_applied(now, &set, &unset)
            {
                if let Some(e) = entry.as_document_mut() {
                    // The fields this write set; the other owned fields stay as recorded.
                    let mut after = e.get_document("after").cloned().unwrap_or_default();
                    for (k, v) in &set {
                        after.insert(k.clone(), v.clone());
                    }
                    e.insert("after", after);
                    corrected.push((i, set));
                }
            }
        }
    }
    if !corrected.is_empty() {
        let images = db.collection::<Document>(super::BEFORE_IMAGES);
        with_retry("correcting before-images", stop, || {
            images.update_one(
                doc! { "_id": chunk_id.clone() },
                doc! { "$set": { "entries": entries.clone() } },
            )
        })
        .await?;
        tracing::debug!(
            corrected = corrected.len(),
            "inputs changed between read and write; before-images record what was written"
        );
    }
    Ok(corrected)
}
