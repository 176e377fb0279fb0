//! Restoring a batch of before-images in one transaction.
//!
//! The guarded restore (`before_image::restore_entries`) sends one statement per entry, each
//! guarded on what its write left: exact on any deployment, but a statement per document costs
//! about 250 ms per 1000 on the test server, three times the `up` that wrote them. In a
//! transaction the batch's documents are read once, and where each one ends is worked out here:
//! its entries applied newest first, each only when the document holds exactly what that entry
//! wrote (as the guards would have it). The documents whose every entry applies are written with
//! one statement per end state, their `_id`s in an `$in`; for a backfill whose documents started
//! alike (003's all held a balance of 0) that is one statement per batch. The snapshot keeps this
//! exact: a document the application changes after the read makes the write conflict, and the
//! batch is read and worked out again. Documents where an entry does not apply (changed since,
//! already restored, gone) go on to the guarded statements, which tell those cases apart.

use super::atomic::{retryable, start_snapshot, unsupported, ATTEMPTS};
use super::before_image::strings;
use crate::engine::bson_ext::unset;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::{ClientSession, Database};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tracing::{debug, info, warn};

/// A restore's transactions, in one session: none before [`Restorer::begin`], nor once the
/// deployment turned out to have none.
#[derive(Default)]
pub(super) struct Restorer {
    session: Option<ClientSession>,
}

/// What a transaction restored, and the entries left to the guarded statements.
pub(super) struct Restored {
    /// Keys (`catch_up::key_of`) of the documents put back to their oldest entry's before-state.
    pub restored: Vec<Vec<u8>>,
    /// Entries of the other documents, newest first as given.
    pub left: Vec<Document>,
}

/// Field of a chunk naming the session of the restore under way, so that a restore run after it
/// was killed ends the transaction it left open: otherwise that transaction holds its documents,
/// and the new restore waits on them, until the server ends it (60 s on MongoDB).
const RESTORE_SESSION: &str = "restoreSession";

impl Restorer {
    /// Ends the transaction a killed restore of `migration` may have left open, then names this
    /// restore's session in the chunks left to restore. Best effort: a restore that cannot do
    /// either still restores exactly, and at worst waits for the old transaction to end.
    pub(super) async fn begin(&mut self, db: &Database, migration: &str) {
        let chunks = db.collection::<Document>(super::BEFORE_IMAGES);
        let filter = doc! { "migration": migration, RESTORE_SESSION: { "$exists": true } };
        match chunks.distinct(RESTORE_SESSION, filter).await {
            Ok(sessions) if !sessions.is_empty() => {
                let ended = db
                    .client()
                    .database("admin")
                    .run_command(doc! { "killSessions": sessions.clone() })
                    .await;
                match ended {
                    Ok(_) => info!(
                        sessions = sessions.len(),
                        "ended the transaction the interrupted rollback left open"
                    ),
                    Err(e) => {
                        warn!(error = %e, "the interrupted rollback's session could not be ended; its open transaction holds its documents until the server ends it")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "reading the sessions of an interrupted rollback"),
        }
        let session = match db.client().start_session().await {
            Ok(session) => session,
            Err(e) => {
                self.unusable(&e);
                return;
            }
        };
        let id = session.id().clone();
        self.session = Some(session);
        if let Err(e) = chunks
            .update_many(
                doc! { "migration": migration },
                doc! { "$set": { RESTORE_SESSION: id } },
            )
            .await
        {
            debug!(error = %e, "naming the rollback's session in the before-images");
        }
    }

    /// Restores what it can of `entries` (newest first) in one transaction. `None` when the
    /// guarded statements must take the whole batch: no transactions here, or the documents
    /// kept changing.
    pub(super) async fn batch(
        &mut self,
        db: &Database,
        collection: &str,
        entries: &[Document],
    ) -> Option<Restored> {
        if entries.is_empty() {
            return None;
        }
        let mut delay = Duration::from_millis(20);
        for attempt in 1..=ATTEMPTS {
            let session = self.session.as_mut()?;
            match attempt_in(db, collection, entries, session).await {
                Ok(Some(done)) => return Some(done),
                // Not a batch this can do (see `attempt`): nothing was written.
                Ok(None) => return None,
                Err(e) if unsupported(&e) => return self.unusable(&e),
                Err(e) if retryable(&e) && attempt < ATTEMPTS => {
                    debug!(attempt, error = %e, "restore transaction aborted; redoing it");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
                Err(e) => {
                    debug!(error = %e, "a restore batch goes to the guarded statements");
                    return None;
                }
            }
        }
        None
    }

    fn unusable(&mut self, e: &mongodb::error::Error) -> Option<Restored> {
        info!(error = %e, "no transactions here: the rollback restores each document with a guarded statement");
        self.session = None;
        None
    }
}

async fn attempt_in(
    db: &Database,
    collection: &str,
    entries: &[Document],
    session: &mut ClientSession,
) -> mongodb::error::Result<Option<Restored>> {
    start_snapshot(session).await?;
    match attempt(db, collection, entries, session).await {
        Ok(Some(done)) => {
            session.commit_transaction().await?;
            Ok(Some(done))
        }
        other => {
            let _ = session.abort_transaction().await;
            other
        }
    }
}

/// Reads the batch's documents, works out where each ends, and writes those whose every entry
/// applies; the caller commits. `None` when the writes did not match what was read (a
/// deployment whose transactions do not isolate): the caller aborts.
async fn attempt(
    db: &Database,
    collection: &str,
    entries: &[Document],
    session: &mut ClientSession,
) -> mongodb::error::Result<Option<Restored>> {
    let by_document = by_document(entries);
    let ids: Vec<Bson> = by_document.iter().map(|(id, _)| id.clone()).collect();
    let mut fields = doc! { "_id": 1 };
    for (_, chain) in &by_document {
        for field in chain.iter().flat_map(|e| touched(e)) {
            fields.insert(field, 1);
        }
    }
    let coll = db.collection::<Document>(collection);
    let current: Vec<Document> = coll
        .find(doc! { "_id": { "$in": ids } })
        .projection(fields)
        .session(&mut *session)
        .await?
        .stream(&mut *session)
        .try_collect()
        .await?;
    let mut current: HashMap<Vec<u8>, Document> = current
        .into_iter()
        .filter_map(|d| Some((super::catch_up::key_of(d.get("_id")?), d)))
        .collect();
    // Documents by the state they end in: one statement each.
    let mut ends: HashMap<Vec<u8>, (Document, Vec<Bson>)> = HashMap::new();
    let mut restored = Vec::new();
    for (id, chain) in by_document {
        let key = super::catch_up::key_of(&id);
        let end = current
            .remove(&key)
            .and_then(|document| end_state(document, &chain));
        if let Some(update) = end {
            // Nothing to put back (entries that changed nothing): no statement, for an empty
            // update document would replace the whole document with nothing.
            if !update.is_empty() {
                let mut bytes = Vec::new();
                let _ = update.to_writer(&mut bytes);
                ends.entry(bytes).or_insert((update, Vec::new())).1.push(id);
            }
            restored.push(key);
        }
    }
    // The other documents' entries go on in the order given, newest first.
    let done: HashSet<&Vec<u8>> = restored.iter().collect();
    let left: Vec<Document> = entries
        .iter()
        .filter(|e| {
            e.get("_id")
                .is_none_or(|id| !done.contains(&super::catch_up::key_of(id)))
        })
        .cloned()
        .collect();
    if ends.is_empty() {
        return Ok(Some(Restored { restored, left }));
    }
    let expected: usize = ends.values().map(|(_, ids)| ids.len()).sum();
    let statements: Vec<Document> = ends
        .into_values()
        .map(|(u, ids)| doc! { "q": { "_id": { "$in": ids } }, "u": u, "multi": true })
        .collect();
    let reply = db
        .run_command(doc! { "update": collection, "updates": statements, "ordered": true })
        .session(&mut *session)
        .await?;
    let matched = crate::engine::bson_ext::int_field(&reply, "n");
    if reply.get_array("writeErrors").is_ok() || matched != expected as i64 {
        debug!(
            matched,
            expected, "a restore transaction's writes did not match what it read"
        );
        return Ok(None);
    }
    Ok(Some(Restored { restored, left }))
}

/// The entries of each document, in the order given (newest first), documents in the order of
/// their first entry.
fn by_document(entries: &[Document]) -> Vec<(Bson, Vec<&Document>)> {
    let mut order: Vec<(Bson, Vec<&Document>)> = Vec::new();
    let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
    for e in entries {
        let Some(id) = e.get("_id") else { continue };
        let key = super::catch_up::key_of(id);
        let i = *at.entry(key).or_insert_with(|| {
            order.push((id.clone(), Vec::new()));
            order.len() - 1
        });
        order[i].1.push(e);
    }
    order
}

/// The fields an entry wrote, removed, or restores.
fn touched(entry: &Document) -> Vec<String> {
    let keys = |name: &str| -> Vec<String> {
        entry
            .get_document(name)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut fields = keys("after");
    fields.extend(keys("before"));
    fields.extend(strings(entry, "removed"));
    fields.extend(strings(entry, "absent"));
    fields
}

/// The update that puts `document` where its entries (newest first) leave it, when every entry
/// applies: the document holds exactly the values that entry wrote (type included) and lacks
/// the fields it removed. `None` when one does not, or for a field path the comparison here
/// cannot follow (a dotted or `$` name): the guarded statements then take the document.
fn end_state(mut document: Document, chain: &[&Document]) -> Option<Document> {
    let mut fields: Vec<String> = Vec::new();
    for entry in chain {
        let after = entry.get_document("after").cloned().unwrap_or_default();
        let before = entry.get_document("before").cloned().unwrap_or_default();
        let removed = strings(entry, "removed");
        let absent = strings(entry, "absent");
        for field in touched(entry) {
            if field.contains('.') || field.starts_with('$') || field == "_id" {
                return None;
            }
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
        let holds = after.iter().all(|(k, v)| document.get(k) == Some(v))
            && removed.iter().all(|k| !document.contains_key(k));
        if !holds {
            return None;
        }
        for (k, v) in before {
            document.insert(k, v);
        }
        for k in &absent {
            document.remove(k);
        }
    }
    let mut set = Document::new();
    let mut gone = Vec::new();
    for field in fields {
        match document.get(&field) {
            Some(v) => {
                set.insert(field, v.clone());
            }
            None => gone.push(field),
        }
    }
    let mut update = Document::new();
    if !set.is_empty() {
        update.insert("$set", set);
    }
    if !gone.is_empty() {
        update.insert("$unset", unset(&gone));
    }
    Some(update)
}

#[cfg(test)]
mod tests {
    use super::end_state;
    use mongodb::bson::{doc, Bson, Document};

    fn entry(before: Document, absent: &[&str], after: Document, removed: &[&str]) -> Document {
        doc! { "_id": 1, "before": before, "absent": absent, "after": after, "removed": removed }
    }

    #[test]
    fn a_document_holding_what_was_written_ends_in_its_before_state() {
        let e = entry(doc! { "b": 0 }, &["t"], doc! { "b": 10.5, "t": 0 }, &[]);
        let update = end_state(doc! { "_id": 1, "b": 10.5, "t": 0, "x": 1 }, &[&e]).unwrap();
        assert_eq!(update, doc! { "$set": { "b": 0 }, "$unset": { "t": "" } });
    }

    #[test]
    fn entries_apply_newest_first_each_on_what_the_newer_left() {
        // Written by the scan (b: 0 -> 5.0), then caught up (b: 5.0 -> 7.0).
        let older = entry(doc! { "b": 0 }, &[], doc! { "b": 5.0 }, &[]);
        let newer = entry(doc! { "b": 5.0 }, &[], doc! { "b": 7.0 }, &[]);
        let update = end_state(doc! { "_id": 1, "b": 7.0 }, &[&newer, &older]).unwrap();
        assert_eq!(update, doc! { "$set": { "b": 0 } });
        // The newer one's write changed since: the guarded statements tell what happened.
        assert_eq!(
            end_state(doc! { "_id": 1, "b": 8.0 }, &[&newer, &older]),
            None
        );
    }

    #[test]
    fn a_value_equal_in_number_but_not_in_type_is_not_what_was_written() {
        let e = entry(doc! { "b": 0 }, &[], doc! { "b": 10.0 }, &[]);
        assert_eq!(end_state(doc! { "_id": 1, "b": 10_i32 }, &[&e]), None);
        assert_eq!(end_state(doc! { "_id": 1 }, &[&e]), None);
    }

    #[test]
    fn a_removed_field_must_still_be_missing_and_comes_back() {
        let e = entry(doc! { "old": "x" }, &[], doc! {}, &["old"]);
        let update = end_state(doc! { "_id": 1 }, &[&e]).unwrap();
        assert_eq!(update, doc! { "$set": { "old": "x" } });
        assert_eq!(end_state(doc! { "_id": 1, "old": Bson::Null }, &[&e]), None);
    }

    #[test]
    fn an_entry_that_changed_nothing_puts_nothing_back() {
        let e = entry(doc! {}, &[], doc! {}, &[]);
        assert_eq!(end_state(doc! { "_id": 1, "b": 1 }, &[&e]), Some(doc! {}));
    }

    #[test]
    fn dotted_fields_are_left_to_the_guarded_statements() {
        let e = entry(doc! { "a.b": 0 }, &[], doc! { "a.b": 1 }, &[]);
        assert_eq!(end_state(doc! { "_id": 1, "a.b": 1 }, &[&e]), None);
    }
}
