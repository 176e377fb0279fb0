//! Catch-up from the change stream: documents the application changes while a backfill runs.
//!
//! The scan reads each document once. A document the application changes after the scan passed
//! it (its earnings go from 0 to positive, a field is removed, a user is inserted) can become a
//! candidate again, and the run would end with it unmigrated. So before the scan starts, a change
//! stream is opened on the collection, matching only the events that can make a document a
//! candidate. A background task collects the `_id`s of those events; the driver loop takes them
//! between batches and runs them through the same guarded write and before-images as the scan's
//! own batches (those still ahead of the scan too: its cursor may already hold them as they were).
//!
//! The stream's resume token is saved with every checkpoint, but only the token of events whose
//! catch-up is written: a resumed run replays every event it has not finished. When the token is
//! gone from the oplog, or the deployment has no change streams, the run falls back to passes
//! over the candidates after the scan (see `settle`).

use crate::engine::error::{Error, Result};
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::Collection;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How long one `getMore` on the stream waits for events: short, so a drain ends quickly on a
/// quiet collection (see [`drained`] for what an empty batch proves).
const AWAIT: Duration = Duration::from_millis(100);
/// After an empty batch, the next `getMore` waits up to this long, unless a drain is waiting.
/// A `getMore` that awaits events is work for the server for as long as it waits (on the test
/// server, an idle stream polled back to back made a scan's updates about 1.2 times slower;
/// pausing between empty batches removed that). The collected ids are taken every 500 ms, so
/// the pause delays no catch-up.
const IDLE_PAUSE: Duration = Duration::from_millis(250);
/// A drain that sees no empty batch within this long (the application never pauses) stops at
/// the first event after the scan's end time, or gives up here and leaves the rest to the
/// post-condition rounds.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// How a backfill catches up with concurrent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUpMode {
    /// From the change stream when the deployment has one, else by passes.
    #[default]
    Auto,
    /// Passes over the candidates after the scan, without a change stream.
    Passes,
    /// No catch-up at all: only for a collection nothing else writes during the run (a
    /// maintenance window). A concurrent write can then be missed.
    Off,
}

impl std::str::FromStr for CatchUpMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" | "stream" => Ok(CatchUpMode::Auto),
            "passes" => Ok(CatchUpMode::Passes),
            "off" => Ok(CatchUpMode::Off),
            other => Err(format!(
                "{other:?} is not a catch-up mode (auto, passes, off)"
            )),
        }
    }
}

/// What the stream should report: inserts and replacements, updates that set one of `updated`,
/// and updates that remove one of `removed`. Only `_id`s travel.
pub fn pipeline(updated: &[String], removed: &[String]) -> Vec<Document> {
    let mut either = vec![doc! { "operationType": { "$in": ["insert", "replace"] } }];
    for f in updated {
        either.push(doc! {
            "operationType": "update",
            format!("updateDescription.updatedFields.{f}"): { "$exists": true },
        });
    }
    if !removed.is_empty() {
        either.push(doc! {
            "operationType": "update",
            "updateDescription.removedFields": { "$in": removed.to_vec() },
        });
    }
    vec![
        doc! { "$match": { "$or": either } },
        doc! { "$project": { "operationType": 1, "documentKey": 1, "clusterTime": 1 } },
    ]
}

/// What the stream reports when the backfill writes every batch in a transaction: every insert,
/// replacement and update except those of the transactions in `sessions` (this run's and an
/// interrupted run's), which are the backfill's own writes. A change event names the session of
/// a write made in a transaction (`lsid`), and only of such a write, so the backfill's batches
/// are left out without leaving out anything the application does. Such a stream reports every
/// write that can make a document a candidate, whatever the filter reads.
pub fn pipeline_except(sessions: Vec<Bson>) -> Vec<Document> {
    vec![
        doc! { "$match": {
            "operationType": { "$in": ["insert", "replace", "update"] },
            "lsid.id": { "$nin": sessions },
        } },
        doc! { "$project": { "operationType": 1, "documentKey": 1, "clusterTime": 1 } },
    ]
}

/// Whether a stream reporting inserts, replacements and removals of `removed` reports every
/// write that can make a document match `filter`: true when the filter only asks, through
/// `$and` and `$or`, for top-level fields of `removed` to be missing. Such a field goes missing
/// by its removal alone; setting it, or anything below it, only ever makes a missing field
/// present.
pub fn removals_cover(filter: &Document, removed: &[String]) -> bool {
    filter
        .iter()
        .all(|(key, value)| match (key.as_str(), value) {
            ("$and" | "$or", Bson::Array(parts)) => parts
                .iter()
                .all(|p| p.as_document().is_some_and(|p| removals_cover(p, removed))),
            (field, Bson::Document(test)) if !field.starts_with('$') && !field.contains('.') => {
                removed.iter().any(|r| r == field)
                    && test.len() == 1
                    && matches!(
                        test.get("$exists"),
                        Some(Bson::Boolean(false)) | Some(Bson::Int32(0)) | Some(Bson::Int64(0))
                    )
            }
            _ => false,
        })
}

/// Ids collected from the stream and the token that covers them.
#[derive(Default)]
struct Shared {
    ids: Vec<Bson>,
    seen: HashSet<Vec<u8>>,
    /// Resume token after the last event in `ids` (or the stream's high-water mark when idle).
    token: Option<ResumeToken>,
    /// Cluster time of the last event read.
    last_event_time: Option<Timestamp>,
    /// `getMore`s that came back empty.
    empty_batches: u64,
    /// The cluster time the last empty batch's resume token stands for, where the server's
    /// tokens say (MongoDB's do): every event up to it was delivered.
    empty_through: Option<Timestamp>,
    /// Events read in all.
    events: u64,
    /// When the last event was read.
    last_event_at: Option<Instant>,
    /// Why the stream stopped, if it did.
    failed: Option<String>,
    /// Drains waiting: the collector skips its idle pause while one is.
    draining: u32,
    /// Still opening (a stream resumed in the background).
    opening: bool,
    /// Why the stream could not be resumed from its token.
    unusable: Option<String>,
    /// From this cluster time on, the time of each document's latest event is kept (see
    /// [`Watcher::mark`]).
    marked: Option<Timestamp>,
    /// The cluster time of each document's latest event since `marked`.
    latest: std::collections::HashMap<Vec<u8>, Timestamp>,
    /// The stream marks (see [`MARKS`]) the stream has delivered.
    marks_seen: HashSet<Vec<u8>>,
}

/// The collection of stream marks: a drain writes one and waits for the stream to deliver it.
/// The stream watches the database, matching the backfill's collection and this one, and a
/// stream delivers events in commit order, so once the mark comes, every write committed
/// before it has come too, whatever the server's tokens say and however far its stream lags
/// (some servers hold every stream back while any transaction is open). The mark is deleted
/// once seen; only inserts are watched.
pub const MARKS: &str = "migrations_stream_marks";

/// The `_id`s changed since a token, with the token to save once they are written.
pub struct Taken {
    /// Changed documents, each once.
    pub ids: Vec<Bson>,
    /// Covers every event behind `ids`.
    pub token: Option<ResumeToken>,
}

/// A running change stream on the backfill's collection.
pub struct Watcher {
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
    marks: Collection<Document>,
}

/// Why opening the stream failed: no change streams here, or the token left the oplog.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl Watcher {
    /// Opens a new stream and starts collecting (a resumed one is reopened by
    /// [`Watcher::resume`]).
    ///
    /// A new stream starts just after `begun`, the cluster time the run read before it read
    /// anything (batch transactions read no earlier snapshot, see `atomic`). Left to itself, a
    /// server may start it at an earlier point (a commit point that lags behind the latest
    /// writes under load), and it then reports writes made before the run began, such as a
    /// load just finished: the scan sees those anyway, and catching them up as well only splits
    /// the work between the two counters.
    pub async fn open(
        coll: &Collection<Document>,
        pipeline: Vec<Document>,
        begun: Option<Timestamp>,
    ) -> std::result::Result<Watcher, Unavailable> {
        let (stream, first) = open_stream(coll, pipeline.clone(), None, begun).await?;
        let shared = Arc::new(Mutex::new(Shared {
            token: stream.resume_token(),
            ..Default::default()
        }));
        if let Some(event) = first {
            record(&shared, &event, stream.resume_token());
        }
        let task = tokio::spawn(collect(
            stream,
            shared.clone(),
            Reopen {
                coll: coll.clone(),
                pipeline,
            },
        ));
        Ok(Watcher {
            shared,
            task,
            marks: marks_of(coll),
        })
    }

    /// Reopens the stream after `token` in the background and starts collecting once it is
    /// open, so the scan starts at once. Opening from a token makes the server filter every
    /// write since the token before it answers (0.5 s per 25,000 writes of the interrupted run
    /// on the test server), which would otherwise hold back the first batch. Until it is open
    /// the watcher reports nothing and its token stays `token`; whether the token could be used
    /// is known from [`Watcher::unusable`] and [`Watcher::opened`].
    pub fn resume(
        coll: &Collection<Document>,
        pipeline: Vec<Document>,
        token: ResumeToken,
        migration: String,
    ) -> Watcher {
        let shared = Arc::new(Mutex::new(Shared {
            token: Some(token.clone()),
            opening: true,
            ..Default::default()
        }));
        let marks = marks_of(coll);
        let coll = coll.clone();
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                match open_stream(&coll, pipeline.clone(), Some(token), None).await {
                    Ok((stream, first)) => {
                        {
                            let mut s = lock(&shared);
                            s.opening = false;
                            if let Some(t) = stream.resume_token() {
                                s.token = Some(t);
                            }
                        }
                        if let Some(event) = first {
                            record(&shared, &event, stream.resume_token());
                        }
                        tracing::info!(
                            migration,
                            "change stream resumed from the saved resume token"
                        );
                        collect(stream, shared, Reopen { coll, pipeline }).await;
                    }
                    Err(Unavailable(why)) => {
                        let mut s = lock(&shared);
                        s.opening = false;
                        s.unusable = Some(why);
                    }
                }
            }
        });
        Watcher {
            shared,
            task,
            marks,
        }
    }

    /// Why the stream could not be reopened from its token, once that is known.
    pub fn unusable(&self) -> Option<String> {
        lock(&self.shared).unusable.clone()
    }

    /// Waits until the stream is open (at once for one opened by [`Watcher::open`]).
    pub async fn opened(&self) -> std::result::Result<(), Unavailable> {
        loop {
            {
                let s = lock(&self.shared);
                if let Some(why) = &s.unusable {
                    return Err(Unavailable(why.clone()));
                }
                if !s.opening {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Why the stream stopped for good, if it did: the run then catches up by passes.
    pub fn failed(&self) -> Option<String> {
        lock(&self.shared).failed.clone()
    }

    /// The ids collected so far, and the token covering them.
    pub fn take(&self) -> Result<Taken> {
        let mut s = lock(&self.shared);
        if let Some(why) = &s.failed {
            return Err(Error::Config(format!("the change stream stopped: {why}")));
        }
        s.seen.clear();
        Ok(Taken {
            ids: std::mem::take(&mut s.ids),
            token: s.token.clone(),
        })
    }

    /// Keeps, from cluster time `from` on, which documents the stream reports and when (the
    /// first mark stands; a later one only narrows what [`Watcher::changed_since`] is asked).
    pub fn mark(&self, from: Timestamp) {
        let mut s = lock(&self.shared);
        if s.marked.is_none() {
            s.marked = Some(from);
        }
    }

    /// The documents the stream has reported an event for at or after cluster time `t` (which
    /// must not be before the first [`Watcher::mark`]), once every event up to now is read. An
    /// event without a cluster time is not counted: nothing says it came after `t`.
    pub async fn changed_since(
        &self,
        t: Timestamp,
        now: Option<Timestamp>,
    ) -> Result<HashSet<Vec<u8>>> {
        self.drain(now).await?;
        let s = lock(&self.shared);
        if let Some(why) = &s.failed {
            return Err(Error::Config(format!("the change stream stopped: {why}")));
        }
        Ok(s.latest
            .iter()
            .filter(|(_, at)| !earlier(**at, t))
            .map(|(key, _)| key.clone())
            .collect())
    }

    /// Whether the application wrote to the collection within `window`.
    pub fn live_within(&self, window: Duration) -> bool {
        lock(&self.shared)
            .last_event_at
            .is_some_and(|t| t.elapsed() < window)
    }

    /// Events read so far.
    pub fn events(&self) -> u64 {
        lock(&self.shared).events
    }

    /// Waits until every event up to the cluster time `until` was read (see [`drained`]). Gives
    /// up after [`DRAIN_LIMIT`], and then says so (`false`).
    pub async fn drain(&self, until: Option<Timestamp>) -> Result<bool> {
        let start = {
            let mut s = lock(&self.shared);
            s.draining += 1;
            s.empty_batches
        };
        // Counted down however the drain ends, a cancelled one included.
        let _draining = Draining(&self.shared);
        let mark = self.write_mark().await;
        let drained = self.drain_from(start, until, mark.as_ref()).await;
        if let Some(id) = mark {
            // Best effort: a mark left behind is a few bytes no drain reads again.
            let _ = self.marks.delete_one(doc! { "_id": id }).await;
        }
        drained
    }

    /// Writes a stream mark (see [`MARKS`]) and returns its `_id`; `None` where it cannot be
    /// written (the drain then goes by what the stream's batches say).
    async fn write_mark(&self) -> Option<Bson> {
        let id = Bson::ObjectId(mongodb::bson::oid::ObjectId::new());
        let mark = doc! { "_id": id.clone(), "at": mongodb::bson::DateTime::now() };
        match self.marks.insert_one(mark).await {
            Ok(_) => Some(id),
            Err(e) => {
                debug!(error = %short(&e), "no stream mark written; draining by empty batches");
                None
            }
        }
    }

    async fn drain_from(
        &self,
        start: u64,
        until: Option<Timestamp>,
        mark: Option<&Bson>,
    ) -> Result<bool> {
        let begun = Instant::now();
        loop {
            {
                let s = lock(&self.shared);
                if let Some(why) = &s.failed {
                    return Err(Error::Config(format!("the change stream stopped: {why}")));
                }
                let done = match mark {
                    Some(id) => s.marks_seen.contains(&key_of(id)) || by_time(&s, until),
                    None => drained(&s, start, until),
                };
                if done {
                    return Ok(true);
                }
            }
            if begun.elapsed() > DRAIN_LIMIT {
                warn!("the change stream did not drain within {DRAIN_LIMIT:?}; the post-condition rounds take the rest");
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Whether the stream has delivered every event up to the cluster time `until`, for a drain
/// that began when `start` empty batches had come back:
/// - an event later than `until` was read (events arrive in cluster-time order);
/// - an empty batch whose resume token stands for `until` or later: a server reports in the
///   token of an empty batch how far it has read (MongoDB's postBatchResumeToken). An empty
///   batch alone proves less there: a replica set's stream reports only majority-committed
///   writes, so an application write acknowledged before `until` but not yet replicated comes
///   in a later batch;
/// - where tokens do not say their time: two empty batches since the drain began, the second
///   fetched after it began.
fn drained(s: &Shared, start: u64, until: Option<Timestamp>) -> bool {
    by_time(s, until) || (s.empty_through.is_none() && s.empty_batches >= start + 2)
}

/// Whether the stream's cluster times prove it has delivered every event up to `until`: an
/// event later than it was read, or an empty batch's token stands for it or later.
fn by_time(s: &Shared, until: Option<Timestamp>) -> bool {
    let Some(until) = until else {
        return false;
    };
    let later = |a: Timestamp, b: Timestamp| (a.time, a.increment) > (b.time, b.increment);
    if s.last_event_time.is_some_and(|last| later(last, until)) {
        return true;
    }
    s.empty_through
        .is_some_and(|through| !later(until, through))
}

/// The cluster time a resume token stands for, where the token says it in MongoDB's form: a hex
/// string whose first byte is the type of a timestamp (130) and whose next eight are the
/// timestamp, big-endian (seconds, then increment). `None` for any other form: servers may
/// encode their tokens their own way, and the drain then goes by empty batches alone.
fn token_time(token: &ResumeToken) -> Option<Timestamp> {
    let data = mongodb::bson::to_document(token).ok()?;
    let hex = data.get_str("_data").ok()?;
    let byte = |i: usize| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok();
    if byte(0)? != 130 {
        return None;
    }
    let word = |from: usize| -> Option<u32> {
        (from..from + 4).try_fold(0u32, |acc, i| Some(acc << 8 | u32::from(byte(i)?)))
    };
    Some(Timestamp {
        time: word(1)?,
        increment: word(5)?,
    })
}

/// Opens a stream (after `token`, or just after `begun`) and reads its first batch, which proves
/// the token is still in the oplog (a lost token fails here).
async fn open_stream(
    coll: &Collection<Document>,
    pipeline: Vec<Document>,
    token: Option<ResumeToken>,
    begun: Option<Timestamp>,
) -> std::result::Result<(ChangeStream<Event>, Option<Event>), Unavailable> {
    let db = coll.client().database(&coll.namespace().db);
    let pipeline = with_marks(coll.name(), pipeline);
    let watch = || db.watch().pipeline(pipeline.clone()).max_await_time(AWAIT);
    let stream = match token {
        Some(t) => watch().resume_after(t).await,
        None => match begun {
            // A server that refuses the start time gets a stream from wherever it starts.
            Some(now) => match watch().start_at_operation_time(just_after(now)).await {
                Ok(stream) => Ok(stream),
                Err(e) => {
                    debug!(error = %e, "a change stream from the current cluster time was refused");
                    watch().await
                }
            },
            None => watch().await,
        },
    };
    let mut stream = stream.map_err(|e| Unavailable(short(&e)))?;
    let first = stream
        .next_if_any()
        .await
        .map_err(|e| Unavailable(short(&e)))?;
    Ok((stream, first))
}

/// The collection of `coll`'s stream marks.
fn marks_of(coll: &Collection<Document>) -> Collection<Document> {
    coll.client()
        .database(&coll.namespace().db)
        .collection(MARKS)
}

/// `pipeline` (a `$match` first) for a stream on the whole database: its events of `coll`,
/// and the inserts of stream marks, each with its namespace.
fn with_marks(coll: &str, pipeline: Vec<Document>) -> Vec<Document> {
    pipeline
        .into_iter()
        .enumerate()
        .map(|(i, stage)| {
            if let (0, Ok(m)) = (i, stage.get_document("$match")) {
                return doc! { "$match": { "$or": [
                    { "$and": [{ "ns.coll": coll }, m.clone()] },
                    { "ns.coll": MARKS, "operationType": "insert" },
                ] } };
            }
            match stage.get_document("$project") {
                Ok(p) => {
                    let mut p = p.clone();
                    p.insert("ns", 1);
                    doc! { "$project": p }
                }
                Err(_) => stage,
            }
        })
        .collect()
}

/// A drain in progress, for the collector's [`idle`] pause.
struct Draining<'a>(&'a Mutex<Shared>);

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        lock(self.0).draining -= 1;
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn short(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => format!("{} ({})", c.message, c.code_name),
        _ => e.to_string(),
    }
}

type Event = ChangeStreamEvent<Document>;

fn record(shared: &Mutex<Shared>, event: &Event, token: Option<ResumeToken>) {
    let mut s = lock(shared);
    if event.ns.as_ref().and_then(|ns| ns.coll.as_deref()) == Some(MARKS) {
        if let Some(id) = event.document_key.as_ref().and_then(|k| k.get("_id")) {
            s.marks_seen.insert(key_of(id));
        }
        if token.is_some() {
            s.token = token;
        }
        return;
    }
    s.events += 1;
    s.last_event_at = Some(Instant::now());
    if let Some(t) = event.cluster_time {
        s.last_event_time = Some(t);
    }
    if let Some(id) = event.document_key.as_ref().and_then(|k| k.get("_id")) {
        let key = key_of(id);
        if let (Some(mark), Some(at)) = (s.marked, event.cluster_time) {
            if !earlier(at, mark) {
                s.latest.insert(key.clone(), at);
            }
        }
        if s.seen.insert(key) {
            s.ids.push(id.clone());
        }
    }
    if token.is_some() {
        s.token = token;
    }
}

/// Whether cluster time `a` comes before `b`.
fn earlier(a: Timestamp, b: Timestamp) -> bool {
    (a.time, a.increment) < (b.time, b.increment)
}

/// The bytes of an `_id`, for de-duplication (`Bson` is not `Hash`).
///
/// An ObjectId (the common `_id`, met once per document of every batch) is its type byte and
/// its twelve bytes; any other value, a one-field document holding it, whose encoding starts
/// with its length and is never those thirteen bytes (a 13-byte document begins with 13).
pub fn key_of(id: &Bson) -> Vec<u8> {
    if let Bson::ObjectId(oid) = id {
        let mut out = Vec::with_capacity(13);
        out.push(0x07);
        out.extend_from_slice(&oid.bytes());
        return out;
    }
    let mut out = Vec::new();
    let _ = doc! { "k": id.clone() }.to_writer(&mut out);
    out
}

/// What reopens a stream that failed.
struct Reopen {
    coll: Collection<Document>,
    pipeline: Vec<Document>,
}

/// How long a failed stream is reopened from its token before the run gives up on it: a server
/// restart or a failover takes seconds to tens of seconds.
const REOPEN_FOR: Duration = Duration::from_secs(60);

async fn collect(mut stream: ChangeStream<Event>, shared: Arc<Mutex<Shared>>, reopen: Reopen) {
    let mut failures = 0u32;
    loop {
        match stream.next_if_any().await {
            Ok(Some(event)) => {
                failures = 0;
                record(&shared, &event, stream.resume_token());
            }
            Ok(None) => {
                failures = 0;
                {
                    let mut s = lock(&shared);
                    s.empty_batches += 1;
                    s.empty_through = stream.resume_token().as_ref().and_then(token_time);
                    // Idle: the high-water mark moves past events that did not match.
                    if s.ids.is_empty() {
                        if let Some(t) = stream.resume_token() {
                            s.token = Some(t);
                        }
                    }
                }
                idle(&shared).await;
            }
            Err(e) => {
                // The driver already resumed once on resumable errors; a few more tries cover a
                // brief outage. Then the stream is opened again after its token (a restarted
                // server, a new primary), and only a stream that cannot be (its history is gone)
                // is given up: the run then catches up by passes (see `pipeline`).
                failures += 1;
                if failures <= 3 && super::retry::is_transient(&e) {
                    debug!(error = %e, "change stream error; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                    continue;
                }
                warn!(error = %short(&e), "the change stream failed; opening it again from its resume token");
                match reopened(&reopen, &shared).await {
                    Ok(again) => {
                        failures = 0;
                        stream = again;
                        tracing::info!("change stream reopened from its resume token");
                    }
                    Err(why) => {
                        lock(&shared).failed = Some(format!("{}; reopening it: {why}", short(&e)));
                        return;
                    }
                }
            }
        }
    }
}

/// Opens the stream again after the token covering every id collected so far, retrying while
/// the server cannot be reached, for up to [`REOPEN_FOR`]. Events after the token come again;
/// ids already collected are not collected twice.
async fn reopened(
    reopen: &Reopen,
    shared: &Mutex<Shared>,
) -> std::result::Result<ChangeStream<Event>, String> {
    let begun = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let token = lock(shared).token.clone();
        let Some(token) = token else {
            return Err("no resume token was read yet".into());
        };
        match open_stream(&reopen.coll, reopen.pipeline.clone(), Some(token), None).await {
            Ok((stream, first)) => {
                if let Some(event) = first {
                    record(shared, &event, stream.resume_token());
                }
                return Ok(stream);
            }
            Err(Unavailable(why)) if begun.elapsed() < REOPEN_FOR && unreachable(&why) => {
                debug!(reason = %why, "the change stream cannot be opened yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(Unavailable(why)) => return Err(why),
        }
    }
}

/// Whether opening a stream failed for want of a server (rather than for a token the server
/// refuses).
fn unreachable(why: &str) -> bool {
    let why = why.to_ascii_lowercase();
    [
        "connection",
        "timed out",
        "timeout",
        "server selection",
        "refused",
        "reset",
        "broken pipe",
        "not primary",
        "shutdown",
        "shutting down",
        "interrupted",
    ]
    .iter()
    .any(|w| why.contains(w))
}

/// Waits up to [`IDLE_PAUSE`] before the next `getMore`, at once when a drain is waiting.
async fn idle(shared: &Mutex<Shared>) {
    let until = Instant::now() + IDLE_PAUSE;
    while Instant::now() < until && lock(shared).draining == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The server's current cluster time, read from a command reply (`None` on a server that does
/// not report one; the drain then relies on an empty batch alone).
pub async fn cluster_time(db: &mongodb::Database) -> Option<Timestamp> {
    let reply = db.run_command(doc! { "ping": 1 }).await.ok()?;
    reply.get_timestamp("operationTime").ok().or_else(|| {
        reply
            .get_document("$clusterTime")
            .ok()
            .and_then(|c| c.get_timestamp("clusterTime").ok())
    })
}

/// The cluster time right after `t` (a stream's start is inclusive; every write at `t` itself
/// was committed before the time was read, so the scan sees it).
fn just_after(t: Timestamp) -> Timestamp {
    match t.increment.checked_add(1) {
        Some(increment) => Timestamp {
            time: t.time,
            increment,
        },
        None => Timestamp {
            time: t.time + 1,
            increment: 0,
        },
    }
}

/// The token as stored in a checkpoint.
pub fn token_to_bson(token: &ResumeToken) -> Option<Bson> {
    mongodb::bson::to_bson(token).ok()
}

/// The token read back from a checkpoint.
pub fn token_from_bson(value: &Bson) -> Option<ResumeToken> {
    mongodb::bson::from_bson(value.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::{drained, key_of, removals_cover, token_time, Shared};
    use mongodb::bson::{doc, oid::ObjectId, Bson, Timestamp};
    use mongodb::change_stream::event::ResumeToken;

    fn token(data: &str) -> ResumeToken {
        mongodb::bson::from_document(doc! { "_data": data }).unwrap()
    }

    fn at(time: u32, increment: u32) -> Timestamp {
        Timestamp { time, increment }
    }

    #[test]
    fn a_mongodb_token_says_its_cluster_time() {
        // A MongoDB 6 event token: 82, the timestamp, then the rest of the key.
        let event = token("8263F7A2B9000000072B022C0100296E5A1004AB12CD34EF5646645F696400645A1004");
        assert_eq!(token_time(&event), Some(at(0x63F7_A2B9, 7)));
        // A high-water-mark token (an empty batch's postBatchResumeToken).
        let mark = token("8265A1B2C3000000012B0229296E04");
        assert_eq!(token_time(&mark), Some(at(0x65A1_B2C3, 1)));
    }

    #[test]
    fn tokens_of_other_forms_say_no_time() {
        // The test server's: a hex BSON document.
        let other = token("2B000000127300040000000000000011740006000000911D0E6B026E000100000000036B00050000000000");
        assert_eq!(token_time(&other), None);
        for data in ["", "82", "8263F7A2", "82ZZF7A2B900000007", "é"] {
            assert_eq!(token_time(&token(data)), None, "{data}");
        }
    }

    #[test]
    fn an_empty_batch_drains_the_stream_only_as_far_as_its_token_says() {
        let until = Some(at(100, 5));
        let mut s = Shared {
            empty_batches: 3,
            empty_through: Some(at(100, 4)),
            ..Default::default()
        };
        // Behind `until`, however many empty batches came back.
        assert!(!drained(&s, 0, until));
        s.empty_through = Some(at(100, 5));
        assert!(drained(&s, 3, until));
        s.empty_through = Some(at(101, 0));
        assert!(drained(&s, 3, until));
        // An event after `until` proves it too.
        s.empty_through = Some(at(99, 0));
        s.last_event_time = Some(at(100, 6));
        assert!(drained(&s, 3, until));
        s.last_event_time = Some(at(100, 5));
        assert!(!drained(&s, 3, until));
    }

    #[test]
    fn without_token_times_two_empty_batches_since_the_drain_began_drain_it() {
        let mut s = Shared {
            empty_batches: 4,
            ..Default::default()
        };
        assert!(!drained(&s, 3, Some(at(100, 5))));
        s.empty_batches = 5;
        assert!(drained(&s, 3, Some(at(100, 5))));
        // Without a cluster time to drain to, the same.
        assert!(drained(&s, 3, None));
        assert!(!drained(&s, 4, None));
    }

    #[test]
    fn ids_have_the_same_key_exactly_when_they_are_the_same_value() {
        let a = ObjectId::parse_str("65000000750dd70000000001").unwrap();
        let b = ObjectId::parse_str("65000000750dd70000000002").unwrap();
        assert_eq!(key_of(&Bson::ObjectId(a)), key_of(&Bson::ObjectId(a)));
        assert_ne!(key_of(&Bson::ObjectId(a)), key_of(&Bson::ObjectId(b)));
        let others = [
            Bson::String("65000000750dd70000000001".into()),
            Bson::Binary(mongodb::bson::Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Generic,
                bytes: a.bytes().to_vec(),
            }),
            Bson::Int64(7),
            Bson::Document(doc! { "a": 1 }),
        ];
        for other in &others {
            assert_ne!(key_of(other), key_of(&Bson::ObjectId(a)), "{other}");
            assert_eq!(key_of(other), key_of(&other.clone()));
        }
    }

    fn removed() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn missing_removed_fields_are_covered_by_removals() {
        let filter = doc! { "$or": [{ "a": { "$exists": false } }, { "b": { "$exists": false } }] };
        assert!(removals_cover(&filter, &removed()));
        assert!(removals_cover(&doc! { "a": { "$exists": 0 } }, &removed()));
        assert!(removals_cover(
            &doc! { "$and": [{ "$or": [{ "a": { "$exists": false } }] }] },
            &removed()
        ));
    }

    #[test]
    fn a_value_an_update_can_set_is_not_covered_by_removals() {
        // `{a: 0}` becomes true when the application sets `a` to 0: no removal says so.
        let filter = doc! { "$or": [{ "a": { "$exists": false } }, { "a": 0 }] };
        assert!(!removals_cover(&filter, &removed()));
        assert!(!removals_cover(&doc! { "a": Bson::Null }, &removed()));
        assert!(!removals_cover(
            &doc! { "a": { "$exists": true } },
            &removed()
        ));
    }

    #[test]
    fn unwatched_nested_negated_or_computed_tests_are_not_covered() {
        for filter in [
            doc! { "c": { "$exists": false } },
            doc! { "a.x": { "$exists": false } },
            doc! { "$nor": [{ "a": { "$exists": true } }] },
            doc! { "a": { "$not": { "$exists": true } } },
            doc! { "$expr": { "$eq": ["$a", null] } },
            doc! { "a": { "$exists": false, "$type": "int" } },
        ] {
            assert!(!removals_cover(&filter, &removed()), "{filter}");
        }
    }
}
