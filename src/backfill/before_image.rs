//! Before-images: what a client-side backfill changed, kept so `down` restores it exactly.
//!
//! Each written batch first stores one chunk `{migration, collection, createdAt, entries}` in
//! `migrations_before_images`, each entry `{_id, before, absent, after, removed}`: the changed
//! fields' old values, the fields that did not exist, and what was written. One insert per batch
//! keeps the cost small. Restoring is guarded on `after`, so a document the application changed
//! since is reported, never clobbered.

use super::retry::with_retry;
use crate::error::Result;
use crate::migration::Stop;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use serde::Serialize;

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

/// Restores every document `migration` changed, newest chunk first, deleting each chunk once
/// applied (so an interrupted restore resumes where it stopped).
pub async fn restore(db: &Database, migration: &str, stop: &Stop) -> Result<RestoreReport> {
    let chunks = db.collection::<Document>(BEFORE_IMAGES);
    let mut report = RestoreReport::default();
    loop {
        if stop.is_stopped() {
            return Err(stop.error());
        }
        let filter = doc! { "migration": migration };
        let chunk = with_retry("reading before-images", stop, || {
            chunks.find_one(filter.clone()).sort(doc! { "_id": -1 })
        })
        .await?;
        let Some(chunk) = chunk else { break };
        let collection = chunk.get_str("collection").unwrap_or("users").to_string();
        let entries: Vec<Document> = chunk
            .get_array("entries")
            .map(|a| a.iter().filter_map(|e| e.as_document().cloned()).collect())
            .unwrap_or_default();
        restore_chunk(db, &collection, &entries, &mut report, stop).await?;
        let id = chunk.get("_id").cloned().unwrap_or(Bson::Null);
        with_retry("deleting an applied before-image", stop, || {
            chunks.delete_one(doc! { "_id": id.clone() })
        })
        .await?;
    }
    Ok(report)
}

fn strings(entry: &Document, key: &str) -> Vec<String> {
    entry
        .get_array(key)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn restore_chunk(
    db: &Database,
    collection: &str,
    entries: &[Document],
    report: &mut RestoreReport,
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
            u.insert(
                "$unset",
                absent
                    .iter()
                    .map(|k| (k.clone(), Bson::String(String::new())))
                    .collect::<Document>(),
            );
        }
        if !u.is_empty() {
            statements.push(doc! { "q": q, "u": u });
        }
    }
    let matched = if statements.is_empty() {
        0
    } else {
        let command = doc! { "update": collection, "updates": statements, "ordered": false };
        let reply = with_retry(&format!("restoring a batch of {collection}"), stop, || {
            db.run_command(command.clone())
        })
        .await?;
        reply
            .get("n")
            .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
            .unwrap_or(0)
            .max(0) as u64
    };
    report.restored += matched;
    if matched == entries.len() as u64 {
        return Ok(());
    }
    // Some guards failed: tell "already restored" from "changed since" by looking.
    let ids: Vec<Bson> = entries
        .iter()
        .filter_map(|e| e.get("_id").cloned())
        .collect();
    let coll = db.collection::<Document>(collection);
    let current: Vec<Document> = with_retry("checking restored documents", stop, || async {
        coll.find(doc! { "_id": { "$in": ids.clone() } })
            .await?
            .try_collect()
            .await
    })
    .await?;
    let mut in_before_state = 0u64;
    for e in entries {
        let id = e.get("_id");
        let doc = current.iter().find(|d| d.get("_id") == id);
        let before = e.get_document("before").cloned().unwrap_or_default();
        let absent = strings(e, "absent");
        let ok = doc.is_some_and(|d| {
            before.iter().all(|(k, v)| d.get(k) == Some(v))
                && absent.iter().all(|k| !d.contains_key(k))
        });
        if ok {
            in_before_state += 1;
        } else {
            report.conflicts += 1;
            if report.conflict_samples.len() < super::INVALID_SAMPLES {
                report
                    .conflict_samples
                    .push(id.cloned().unwrap_or(Bson::Null));
            }
        }
    }
    report.already += in_before_state.saturating_sub(matched);
    Ok(())
}
