//! The `migrations` tracking collection.
//!
//! One document per migration keeps the seed's fields (`name`, `executedAt`, `status`, `result`)
//! so existing tooling still reads it, and adds run state, timings, checksum, who ran it, the
//! backfill checkpoint, and a `history` array that rollback never erases (the audit trail).

use crate::engine::error::{Error, Result};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

/// Name of the tracking collection (the seed's).
pub const TRACKING_COLLECTION: &str = "migrations";

pub use crate::engine::record::{Actor, Ended, Record, RecordStatus};

/// Access to the tracking collection.
///
/// Under the lock every write is fenced: a runner claims a record by writing its lock's token
/// into it (`lockToken`) when it begins working on it, and every later write is conditioned on
/// that token. A runner that lost the lock (paused past its lease while another took over and
/// claimed the record) finds its token gone on its next write and stops at once, without
/// touching the records. Records nobody works on are never written, so a refused run changes
/// nothing.
#[derive(Debug, Clone)]
pub struct Store {
    coll: Collection<Document>,
    actor: Actor,
    fence: std::sync::Arc<std::sync::RwLock<Option<ObjectId>>>,
}

/// Why a fenced write found nothing to write.
fn fenced() -> Error {
    Error::LockLost(
        "another run took the lock over while this one was paused; this run stopped without touching the tracking records".into(),
    )
}

impl Store {
    /// The tracking collection of `db`.
    pub fn new(db: &Database, actor: Actor) -> Self {
        Store {
            coll: db.collection(TRACKING_COLLECTION),
            actor,
            fence: Default::default(),
        }
    }

    /// Fences this store's writes with the token of the lock it holds.
    pub fn fence(&self, token: ObjectId) {
        *self.fence.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
    }

    /// Ends fencing (the lock was released).
    pub fn unfence(&self) {
        *self.fence.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn token(&self) -> Option<ObjectId> {
        *self.fence.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The filter of `name`'s record, with the fencing token when fenced.
    fn record(&self, name: &str) -> Document {
        match self.token() {
            Some(token) => doc! { "name": name, "lockToken": token },
            None => doc! { "name": name },
        }
    }

    fn is_fenced(&self) -> bool {
        self.fence
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// An update of one record: fenced, and the lock counted lost when its token is gone (an
    /// upsert then collides with the record's unique name).
    /// `claim` writes the token into the record instead of requiring it (the first write of a
    /// run to a record).
    async fn update_record(
        &self,
        name: &str,
        mut update: Document,
        upsert: bool,
        claim: bool,
        what: String,
    ) -> Result<()> {
        let filter = match (claim, self.token()) {
            (true, Some(token)) => {
                if let Ok(set) = update.get_document_mut("$set") {
                    set.insert("lockToken", token);
                }
                doc! { "name": name }
            }
            _ => self.record(name),
        };
        let result = self.coll.update_one(filter, update).upsert(upsert).await;
        match result {
            Ok(r) if self.is_fenced() && r.matched_count == 0 && r.upserted_id.is_none() => {
                Err(fenced())
            }
            Ok(_) => Ok(()),
            Err(e) if self.is_fenced() && is_duplicate_key(&e) => Err(fenced()),
            Err(e) => Err(Error::db(what)(e)),
        }
    }

    /// Who this store records as the actor.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// Creates the unique index on `name` (idempotent). Records no run of this tool wrote
    /// (without a name, or two with one name) stop the index from being built: refused, saying
    /// which and how to remove them, since without the index two runs could record one
    /// migration twice.
    pub async fn ensure_indexes(&self) -> Result<()> {
        let index = IndexModel::builder()
            .keys(doc! { "name": 1 })
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("name_unique".to_string())
                    .build(),
            )
            .build();
        let result = self.coll.create_index(index).await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(self.duplicated_names().await?),
            Err(e) => Err(Error::db("creating the unique index on migrations.name")(e)),
        }
    }

    /// How many records have no name (`name` null, missing or not a string): no run wrote them,
    /// and no migration reads them.
    pub async fn unnamed_records(&self) -> Result<u64> {
        self.coll
            .count_documents(unnamed())
            .await
            .map_err(Error::db("counting the records without a name"))
    }

    /// Why the unique index on `name` cannot be built: the records without a name, and the
    /// names recorded more than once.
    async fn duplicated_names(&self) -> Result<Error> {
        use futures::TryStreamExt;
        let what = "looking for the records that stop the unique index on migrations.name";
        let unnamed = self.unnamed_records().await?;
        let twice: Vec<Document> = self
            .coll
            .aggregate(vec![
                doc! { "$match": { "name": { "$type": "string" } } },
                doc! { "$group": { "_id": "$name", "n": { "$sum": 1 } } },
                doc! { "$match": { "n": { "$gt": 1 } } },
                doc! { "$sort": { "_id": 1 } },
                doc! { "$limit": 5 },
            ])
            .await
            .map_err(Error::db(what))?
            .try_collect()
            .await
            .map_err(Error::db(what))?;
        let mut found = Vec::new();
        if unnamed > 0 {
            found.push(format!(
                "{unnamed} record(s) without a name (`name` null, missing or not a string), which no migration run writes; look at them with `db.{TRACKING_COLLECTION}.find({UNNAMED_SHELL})` and, once sure they are junk, remove them with `db.{TRACKING_COLLECTION}.deleteMany({UNNAMED_SHELL})`"
            ));
        }
        for d in &twice {
            found.push(format!(
                "{} records named {}; keep the one that tells its state and delete the others",
                crate::engine::backfill::int(d, "n"),
                d.get("_id").cloned().unwrap_or(Bson::Null)
            ));
        }
        if found.is_empty() {
            found.push("a record was written twice meanwhile; run the command again".into());
        }
        Ok(Error::Refused(format!(
            "the `{TRACKING_COLLECTION}` collection holds records that stop its unique index on `name` from being built: {}. Nothing was changed",
            found.join("; ")
        )))
    }

    /// Every record, by name.
    pub async fn load_all(&self) -> Result<Vec<Record>> {
        use futures::TryStreamExt;
        let docs: Vec<Document> = self
            .coll
            .find(doc! {})
            .await
            .map_err(Error::db("reading the migrations collection"))?
            .try_collect()
            .await
            .map_err(Error::db("reading the migrations collection"))?;
        // A record that cannot be read is still listed, flagged, so `status` shows every other
        // migration and `up` refuses naming it. One without a name belongs to no migration:
        // left out (`status` counts them), lest thousands of them each pass for a migration.
        Ok(docs
            .into_iter()
            .filter_map(|d| Some((d.get_str("name").ok()?.to_string(), d)))
            .map(|(name, d)| {
                mongodb::bson::from_document::<Record>(d).unwrap_or_else(|e| Record {
                    name,
                    status: RecordStatus::Malformed,
                    error: Some(e.to_string()),
                    ..Record::default()
                })
            })
            .collect())
    }

    /// Marks `name` running (upserting its record). `keep_checkpoint` keeps a resume point.
    pub async fn begin(
        &self,
        name: &str,
        checksum: &str,
        keep_checkpoint: bool,
        started: DateTime,
    ) -> Result<()> {
        let mut update = doc! {
            "$set": {
                "status": RecordStatus::Running,
                "startedAt": started,
                "checksum": checksum,
                "host": &self.actor.host,
                "pid": self.actor.pid as i64,
                "user": &self.actor.user,
            },
            // An earlier adoption or baseline no longer describes what this run applies (the
            // history keeps them), and a previous run's progress would pass for this one's until
            // its first batch.
            "$unset": { "error": "", "finishedAt": "", "durationMs": "", "adoptedAt": "", "baselinedAt": "", "progress": "" },
        };
        if !keep_checkpoint {
            update
                .get_document_mut("$unset")
                .unwrap()
                .insert("checkpoint", "");
        }
        self.update_record(
            name,
            update,
            true,
            true,
            format!("recording {name} as running"),
        )
        .await
    }

    /// Stores the backfill resume point.
    pub async fn save_checkpoint(&self, name: &str, mut checkpoint: Document) -> Result<()> {
        checkpoint.insert("updatedAt", DateTime::now());
        self.set_retried(name, doc! { "checkpoint": checkpoint }, "checkpoint")
            .await
    }

    /// Stores the live progress (`progress`, stamped with `heartbeatAt`) and, when given, the
    /// resume point, in one write.
    pub async fn save_progress(
        &self,
        name: &str,
        checkpoint: Option<Document>,
        mut progress: Document,
    ) -> Result<()> {
        let now = DateTime::now();
        progress.insert("heartbeatAt", now);
        let mut set = doc! { "progress": progress };
        if let Some(mut checkpoint) = checkpoint {
            checkpoint.insert("updatedAt", now);
            set.insert("checkpoint", checkpoint);
        }
        self.set_retried(name, set, "progress").await
    }

    /// Sets `set` on `name`'s record (fenced), retried through transient errors: a plain `$set`
    /// is safe to repeat.
    async fn set_retried(&self, name: &str, set: Document, what: &str) -> Result<()> {
        let update = doc! { "$set": set };
        idempotent(|| {
            self.update_record(
                name,
                update.clone(),
                false,
                false,
                format!("saving the {what} of {name}"),
            )
        })
        .await
    }

    /// Ends an `up` or `down`: sets `fields`, unsets `unset`, and appends a history entry whose
    /// status is `outcome`.
    pub async fn finish(
        &self,
        name: &str,
        action: &str,
        outcome: Ended,
        started: DateTime,
        mut fields: Document,
        unset: &[&str],
    ) -> Result<()> {
        let finished = DateTime::now();
        let duration = finished.timestamp_millis() - started.timestamp_millis();
        fields.insert("finishedAt", finished);
        fields.insert("durationMs", duration);
        let mut entry = doc! {
            "action": action,
            "status": outcome.as_str(),
            "startedAt": started,
            "finishedAt": finished,
            "durationMs": duration,
            "host": &self.actor.host,
            "pid": self.actor.pid as i64,
            "user": &self.actor.user,
        };
        for key in ["result", "error", "checksum"] {
            if let Some(v) = fields.get(key) {
                entry.insert(key, v.clone());
            }
        }
        let mut update = doc! { "$set": fields, "$push": { "history": entry } };
        if !unset.is_empty() {
            update.insert("$unset", crate::engine::bson_ext::unset(unset));
        }
        self.update_record(
            name,
            update,
            true,
            false,
            format!("recording the end of {action} for {name}"),
        )
        .await
    }

    /// Sets fields without a history entry (e.g. `rolling_back`), claiming the record for this
    /// run's lock.
    pub async fn set(&self, name: &str, fields: Document) -> Result<()> {
        self.update_record(
            name,
            doc! { "$set": fields },
            false,
            true,
            format!("updating the record of {name}"),
        )
        .await
    }
    /// A history entry of an administrative action on `name`'s record (adoption, baseline,
    /// repair, control), saying who did it and when.
    fn admin_entry(&self, action: &str, status: &str) -> Document {
        doc! {
            "action": action,
            "status": status,
            "at": DateTime::now(),
            "host": &self.actor.host,
            "pid": self.actor.pid as i64,
            "user": &self.actor.user,
        }
    }

    /// Adopts the records the JavaScript runner wrote for migration `name` (`from`: a record
    /// named `name.js`, and/or `name` itself when it is `completed` without a checksum).
    ///
    /// A `.js` record is renamed to `name`, or, when `name` has a record of its own, kept whole
    /// in that record's history and removed. A `completed` record gains `checksum` (today's) and
    /// `adoptedAt`, so drift is detected from now on. Every adoption appends a history entry.
    pub async fn adopt(&self, name: &str, checksum: &str, from: &[String]) -> Result<()> {
        let what = || format!("adopting the record of {name}");
        let find = |n: &str| self.coll.find_one(doc! { "name": n });
        let mut own = find(name).await.map_err(Error::db(what()))?.is_some();
        for legacy in from.iter().filter(|f| f.as_str() != name) {
            if !own {
                self.coll
                    .update_one(
                        doc! { "name": legacy },
                        doc! { "$set": { "name": name, "adoptedFrom": legacy } },
                    )
                    .await
                    .map_err(Error::db(what()))?;
                own = true;
                continue;
            }
            let Some(mut old) = find(legacy).await.map_err(Error::db(what()))? else {
                continue;
            };
            old.remove("_id");
            let mut entry = self.admin_entry("adopt", "merged");
            entry.insert("from", legacy);
            entry.insert("record", old);
            self.update_record(
                name,
                doc! { "$push": { "history": entry }, "$set": {} },
                false,
                true,
                what(),
            )
            .await?;
            self.coll
                .delete_one(doc! { "name": legacy })
                .await
                .map_err(Error::db(what()))?;
        }
        let Some(record) = find(name).await.map_err(Error::db(what()))? else {
            return Ok(());
        };
        let status = record.get_str("status").unwrap_or("").to_string();
        let unclaimed = status == RecordStatus::Completed.as_str()
            && record.get_str("checksum").unwrap_or("").is_empty();
        let mut entry = self.admin_entry("adopt", &status);
        entry.insert(
            "from",
            record.get_str("adoptedFrom").unwrap_or(name).to_string(),
        );
        let mut set = doc! { "adoptedAt": DateTime::now() };
        if unclaimed {
            set.insert("checksum", checksum);
            entry.insert("checksum", checksum);
        }
        self.update_record(
            name,
            doc! { "$set": set, "$push": { "history": entry } },
            false,
            true,
            what(),
        )
        .await
    }

    /// Records `name` as applied without running it (`migrate baseline`): the database was
    /// brought to its state by other means.
    pub async fn baseline(&self, name: &str, checksum: &str, upto: u32) -> Result<()> {
        let now = DateTime::now();
        let mut entry = self.admin_entry("baseline", RecordStatus::Completed.as_str());
        entry.insert("checksum", checksum);
        entry.insert(
            "note",
            format!("marked applied without running it (migrate baseline --to {upto:03})"),
        );
        let update = doc! {
            "$set": {
                "status": RecordStatus::Completed,
                "executedAt": now,
                "baselinedAt": now,
                "checksum": checksum,
                "result": { "baseline": true },
                "host": &self.actor.host,
                "pid": self.actor.pid as i64,
                "user": &self.actor.user,
            },
            "$unset": { "error": "", "checkpoint": "", "startedAt": "", "finishedAt": "", "durationMs": "" },
            "$push": { "history": entry },
        };
        self.update_record(name, update, true, true, format!("baselining {name}"))
            .await
    }

    /// Records `checksum` as the checksum of `name`'s record (`migrate repair`): its source changed
    /// since it was applied, and the operator accepted the change. The history entry names the
    /// checksum it replaces and who accepted it.
    pub async fn repair(&self, name: &str, old: &str, checksum: &str) -> Result<()> {
        let mut entry = self.admin_entry("repair", RecordStatus::Completed.as_str());
        entry.insert("oldChecksum", old);
        entry.insert("checksum", checksum);
        let update = doc! { "$set": { "checksum": checksum }, "$push": { "history": entry } };
        self.update_record(
            name,
            update,
            false,
            true,
            format!("recording today's checksum of {name}"),
        )
        .await
    }
}

/// The records without a name, as a filter.
fn unnamed() -> Document {
    doc! { "name": { "$not": { "$type": "string" } } }
}

/// [`unnamed`] as an operator types it in `mongosh`.
const UNNAMED_SHELL: &str = r#"{name: {$not: {$type: "string"}}}"#;

/// Runs `write` again while it fails transiently (a failover, a server restart), for about a
/// minute as the batches' own writes are: checkpoint and progress writes are `$set`s, so a
/// second one has no other effect, and a run whose batches survived an outage must not fail on
/// the record write after them.
async fn idempotent<F, Fut>(write: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut delay = std::time::Duration::from_millis(250);
    for attempt in 1.. {
        match write().await {
            Err(Error::Db { source, context })
                if attempt < 7 && crate::engine::backfill::is_transient(&source) =>
            {
                tracing::warn!(attempt, error = %source, "{context} failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(16));
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}
