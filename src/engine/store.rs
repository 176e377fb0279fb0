//! The `migrations` tracking collection.
//!
//! One document per migration keeps the seed's fields (`name`, `executedAt`, `status`, `result`)
//! so existing tooling still reads it, and adds run state, timings, checksum, who ran it, the
//! backfill checkpoint, and a `history` array that rollback never erases (the audit trail).

use crate::engine::error::{Error, Result};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

/// Name of the tracking collection (the seed's).
pub const TRACKING_COLLECTION: &str = "migrations";

/// Record states as stored in `status`.
pub mod status {
    /// Applied.
    pub const COMPLETED: &str = "completed";
    /// `up` failed; `migrate up` runs it again.
    pub const FAILED: &str = "failed";
    /// In progress, or interrupted (then it carries a checkpoint).
    pub const RUNNING: &str = "running";
    /// `down` in progress, or interrupted.
    pub const ROLLING_BACK: &str = "rolling_back";
    /// Reverted by `migrate rollback`; `migrate up` applies it again.
    pub const ROLLED_BACK: &str = "rolled_back";
    /// Not stored: marks a record that could not be read (see [`super::Store::load_all`]).
    pub const MALFORMED: &str = "<malformed>";
}

/// Who is running: recorded on records, history entries and the lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// OS user.
    pub user: String,
}

impl Actor {
    /// The current process. The user is `$USER` (`%USERNAME%`), else the name of the process's
    /// uid (services and containers often run without `$USER`), else the uid itself.
    pub fn current() -> Self {
        Actor {
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            pid: std::process::id(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(os_user),
        }
    }
}

/// The name of the effective uid from the user database, or the uid as a number.
#[cfg(unix)]
fn os_user() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids).
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, `buf` for `buf.len()` bytes; on success
        // the strings of `entry` point into `buf`, which outlives their use below.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || entry.pw_name.is_null() {
            return uid.to_string();
        }
        // SAFETY: pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        let name = name.to_string_lossy().into_owned();
        return if name.is_empty() {
            uid.to_string()
        } else {
            name
        };
    }
}

#[cfg(not(unix))]
fn os_user() -> String {
    "unknown".into()
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} pid {}", self.user, self.host, self.pid)
    }
}

/// A tracking record as read back.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Migration name (`NNN_snake_name`).
    pub name: String,
    /// One of [`status`].
    pub status: String,
    /// When it last completed (the seed's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_at: Option<DateTime>,
    /// When the last `up`/`down` started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime>,
    /// When the last `up`/`down` ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime>,
    /// Duration of the last `up`/`down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// SHA-256 of the source that last ran.
    #[serde(default)]
    pub checksum: String,
    /// The last outcome's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Document>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Resume point of an interrupted backfill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Document>,
    /// Every `up` and `down`, oldest first.
    #[serde(default)]
    pub history: Vec<Document>,
}

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

    /// Creates the unique index on `name` (idempotent).
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
        self.coll
            .create_index(index)
            .await
            .map(|_| ())
            .map_err(Error::db("creating the unique index on migrations.name"))
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
        // migration and `up` refuses naming it.
        Ok(docs
            .into_iter()
            .map(|d| {
                let name = d.get_str("name").map(str::to_string).unwrap_or_else(|_| {
                    format!("? (_id {})", d.get("_id").cloned().unwrap_or(Bson::Null))
                });
                mongodb::bson::from_document::<Record>(d).unwrap_or_else(|e| Record {
                    name,
                    status: status::MALFORMED.to_string(),
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
                "status": status::RUNNING,
                "startedAt": started,
                "checksum": checksum,
                "host": &self.actor.host,
                "pid": self.actor.pid as i64,
                "user": &self.actor.user,
            },
            "$unset": { "error": "", "finishedAt": "", "durationMs": "" },
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
        self.update_record(
            name,
            doc! { "$set": { "checkpoint": checkpoint } },
            false,
            false,
            format!("saving the checkpoint of {name}"),
        )
        .await
    }

    /// Ends an `up` or `down`: sets `fields`, unsets `unset`, and appends a history entry whose
    /// status is `outcome` (`completed`, `failed`, `interrupted`, `rolled_back`).
    pub async fn finish(
        &self,
        name: &str,
        action: &str,
        outcome: &str,
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
            "status": outcome,
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
            update.insert(
                "$unset",
                unset
                    .iter()
                    .map(|k| (k.to_string(), Bson::String(String::new())))
                    .collect::<Document>(),
            );
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
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}
