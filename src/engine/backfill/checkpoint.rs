//! Counters of a backfill and their round trip through the checkpoint ("resume token") stored on
//! the migration's tracking record, so a resumed run's final result covers the whole run.

use super::scan::{Position, BRACKETS};
use mongodb::bson::{doc, Bson, Document};

/// How many invalid documents are named in results and logs.
pub const INVALID_SAMPLES: usize = 20;
/// How many documents the application moved are named in results.
pub const MOVED_SAMPLES: usize = 10;

/// What a backfill did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Candidates read (or, on the server path, matched by the batch ranges).
    pub scanned: u64,
    /// Documents changed.
    pub modified: u64,
    /// Candidates that needed no change.
    pub unchanged: u64,
    /// Documents left untouched because their data is invalid.
    pub invalid: u64,
    /// Documents changed by someone else between read and write and found no longer eligible.
    pub conflicts: u64,
    /// Batches written.
    pub batches: u64,
    /// Of those, batches read, imaged and written in one transaction.
    pub in_transactions: u64,
    /// Invalid documents by reason.
    pub invalid_reasons: Document,
    /// `{_id, reason}` of the first invalid documents.
    pub invalid_samples: Vec<Bson>,
    /// Dry run: `{_id, before, after}` of the first changes.
    pub samples: Vec<Bson>,
    /// Documents this migration wrote whose written fields the application has set since (a
    /// withdrawal started, a balance reset): the application's from then on, never written
    /// again, whatever their inputs do.
    pub moved: u64,
    /// `_id`s of the first of them.
    pub moved_samples: Vec<Bson>,
    /// Of one batch: every document it found moved (not stored).
    pub moved_ids: Vec<Bson>,
    /// Of a whole run: the documents counted in `moved` by this process (not stored).
    pub moved_seen: std::collections::HashSet<Vec<u8>>,
    /// The convergence point (cluster time, server wall time): when the final check began.
    pub converged: Option<(mongodb::bson::Timestamp, mongodb::bson::DateTime)>,
    /// Documents caught up after the scan passed them (changed by the application meanwhile).
    pub catch_up: CatchUpStats,
}

/// What catch-up did: documents the application changed while the backfill ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatchUpStats {
    /// `change stream` or `passes` (empty until catch-up starts).
    pub mode: String,
    /// Change events read.
    pub events: u64,
    /// Changed documents read again (still candidates).
    pub reread: u64,
    /// Of those, documents written.
    pub modified: u64,
    /// Of those, documents whose data is invalid (left untouched, reported).
    pub invalid: u64,
    /// Of those, documents changed again between read and write and no longer eligible.
    pub conflicts: u64,
    /// Post-scan rounds over the candidate filter.
    pub rounds: u64,
}

impl CatchUpStats {
    fn to_document(&self) -> Document {
        doc! {
            "mode": &self.mode,
            "events": self.events as i64,
            "reread": self.reread as i64,
            "modified": self.modified as i64,
            "invalid": self.invalid as i64,
            "conflicts": self.conflicts as i64,
            "rounds": self.rounds as i64,
        }
    }
    fn from_document(d: &Document) -> Self {
        CatchUpStats {
            mode: d.get_str("mode").unwrap_or_default().to_string(),
            events: int(d, "events"),
            reread: int(d, "reread"),
            modified: int(d, "modified"),
            invalid: int(d, "invalid"),
            conflicts: int(d, "conflicts"),
            rounds: int(d, "rounds"),
        }
    }
}

/// A non-negative counter stored as int32 or int64 (0 when absent).
pub fn int(d: &Document, key: &str) -> u64 {
    crate::engine::bson_ext::int_field(d, key).max(0) as u64
}

impl Stats {
    /// Adds a batch's counts.
    pub fn absorb(&mut self, other: Stats) {
        self.scanned += other.scanned;
        self.modified += other.modified;
        self.unchanged += other.unchanged;
        self.invalid += other.invalid;
        self.conflicts += other.conflicts;
        self.batches += other.batches;
        self.in_transactions += other.in_transactions;
        for (reason, n) in other.invalid_reasons {
            let total =
                self.invalid_reasons.get_i64(&reason).unwrap_or(0) + n.as_i64().unwrap_or(0);
            self.invalid_reasons.insert(reason, total);
        }
        let room = INVALID_SAMPLES.saturating_sub(self.invalid_samples.len());
        self.invalid_samples
            .extend(other.invalid_samples.into_iter().take(room));
        let room = 3usize.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
        self.absorb_moved(other.moved_ids);
    }

    /// Counts the documents `other` found moved that no batch before it found, so a document
    /// met by several catch-up batches counts once.
    fn absorb_moved(&mut self, ids: Vec<Bson>) {
        for id in ids {
            if self.moved_seen.insert(super::catch_up::key_of(&id)) {
                self.moved += 1;
                if self.moved_samples.len() < MOVED_SAMPLES {
                    self.moved_samples.push(id);
                }
            }
        }
    }

    /// Takes the documents found moved in `other` (a pass whose other counters are not this
    /// batch's).
    pub fn absorb_moved_of(&mut self, other: &Stats) {
        self.absorb_moved(other.moved_ids.clone());
    }

    /// Records a document the application moved after this migration wrote it.
    pub fn note_moved(&mut self, id: &Bson) {
        self.moved += 1;
        self.moved_ids.push(id.clone());
        if self.moved_samples.len() < MOVED_SAMPLES {
            self.moved_samples.push(id.clone());
        }
    }

    /// Adds the counts of a catch-up batch: its documents were counted by the scan (or are new),
    /// so they go to `catch_up`; its invalid documents are named with the scan's.
    pub fn absorb_catch_up(&mut self, other: Stats) {
        self.catch_up.reread += other.scanned;
        self.catch_up.modified += other.modified;
        self.catch_up.invalid += other.invalid;
        self.catch_up.conflicts += other.conflicts;
        for sample in other.invalid_samples {
            if self.invalid_samples.len() < INVALID_SAMPLES
                && !self.invalid_samples.contains(&sample)
            {
                self.invalid_samples.push(sample);
            }
        }
        self.absorb_moved(other.moved_ids);
        for (reason, _) in other.invalid_reasons {
            if !self.invalid_reasons.contains_key(&reason) {
                self.invalid_reasons.insert(reason, 0i64);
            }
        }
    }

    /// Records an invalid document.
    pub fn note_invalid(&mut self, id: &Bson, reason: &'static str) {
        self.invalid += 1;
        let n = self.invalid_reasons.get_i64(reason).unwrap_or(0) + 1;
        self.invalid_reasons.insert(reason, n);
        if self.invalid_samples.len() < INVALID_SAMPLES {
            self.invalid_samples
                .push(Bson::Document(doc! { "_id": id.clone(), "reason": reason }));
        }
    }

    /// The counters as stored in results and checkpoints.
    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "scanned": self.scanned as i64,
            "modified": self.modified as i64,
            "unchanged": self.unchanged as i64,
            "invalid": self.invalid as i64,
            "conflicts": self.conflicts as i64,
            "batches": self.batches as i64,
        };
        if self.in_transactions > 0 {
            d.insert("batchesInTransactions", self.in_transactions as i64);
        }
        if !self.invalid_reasons.is_empty() {
            d.insert("invalidReasons", self.invalid_reasons.clone());
            d.insert("invalidSamples", self.invalid_samples.clone());
        }
        if !self.samples.is_empty() {
            d.insert("samples", self.samples.clone());
        }
        if self.moved > 0 {
            d.insert("movedByApplication", self.moved as i64);
            d.insert("movedSamples", self.moved_samples.clone());
        }
        if !self.catch_up.mode.is_empty() {
            d.insert("caughtUp", self.catch_up.to_document());
        }
        if let Some(point) = self.converged {
            d.insert("convergedAt", super::converge::to_document(point));
        }
        d
    }

    fn from_document(d: &Document) -> Stats {
        let n = |k: &str| int(d, k);
        Stats {
            scanned: n("scanned"),
            modified: n("modified"),
            unchanged: n("unchanged"),
            invalid: n("invalid"),
            conflicts: n("conflicts"),
            batches: n("batches"),
            in_transactions: n("batchesInTransactions"),
            invalid_reasons: d
                .get_document("invalidReasons")
                .cloned()
                .unwrap_or_default(),
            invalid_samples: d.get_array("invalidSamples").cloned().unwrap_or_default(),
            samples: Vec::new(),
            moved: n("movedByApplication"),
            moved_samples: d.get_array("movedSamples").cloned().unwrap_or_default(),
            moved_ids: Vec::new(),
            moved_seen: Default::default(),
            converged: None,
            catch_up: d
                .get_document("caughtUp")
                .map(CatchUpStats::from_document)
                .unwrap_or_default(),
        }
    }
}

/// Version of the bracket list a checkpoint's `bracket` indexes (see [`BRACKETS`]).
const BRACKET_ORDER: i32 = 2;

/// The checkpoint after a fully written prefix of the scan, with the change stream's resume
/// token once every event before it is written too.
pub fn to_checkpoint(position: &Position, stats: &Stats, token: Option<&Bson>) -> Document {
    let mut d = stats.to_document();
    d.insert("bracket", position.bracket as i32);
    d.insert("bracketOrder", BRACKET_ORDER);
    d.insert("lastId", position.last.clone().unwrap_or(Bson::Null));
    d.insert("hasLastId", position.last.is_some());
    if let Some(token) = token {
        d.insert("resumeToken", token.clone());
    }
    d
}

/// What a run resumes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// The scan position.
    pub position: Position,
    /// The counters so far.
    pub stats: Stats,
    /// The change stream's resume token, if one was saved.
    pub token: Option<Bson>,
    /// Whether the interrupted run's stream reported every write able to make a candidate since
    /// the backfill began (see [`STREAM_COMPLETE`]).
    pub stream_complete: bool,
}

/// Checkpoint field saying that the change stream behind `resumeToken` has reported, since the
/// backfill began, every write that can make a document a candidate: a resumed run that goes on
/// from that token then needs no round over the candidates after its scan either.
pub const STREAM_COMPLETE: &str = "streamComplete";

/// `checkpoint`, saying [`STREAM_COMPLETE`] when `stream_complete`.
pub fn marked(mut checkpoint: Document, stream_complete: bool) -> Document {
    if stream_complete {
        checkpoint.insert(STREAM_COMPLETE, true);
    }
    checkpoint
}

/// The position, counters and token to resume from; `None` if the checkpoint is unusable.
pub fn from_checkpoint(cp: &Document) -> Option<Resumed> {
    let mut bracket = usize::try_from(cp.get_i32("bracket").ok()?).ok()?;
    if cp.get_i32("bracketOrder").unwrap_or(1) < BRACKET_ORDER {
        // The first list had no MinKey or NaN bracket (and no MaxKey at the end): map its
        // index. The brackets it skipped are covered by the post-scan rounds.
        bracket = match bracket {
            0 => 1,
            i if i >= 9 => BRACKETS.len(),
            i => i + 2,
        };
    }
    if bracket > BRACKETS.len() {
        return None;
    }
    let last = if cp.get_bool("hasLastId").unwrap_or(false) {
        cp.get("lastId").cloned()
    } else {
        None
    };
    Some(Resumed {
        position: Position { bracket, last },
        stats: Stats::from_document(cp),
        token: cp.get("resumeToken").cloned(),
        stream_complete: cp.get_bool(STREAM_COMPLETE).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_position_and_counters() {
        let mut stats = Stats {
            scanned: 10,
            modified: 7,
            unchanged: 2,
            batches: 1,
            ..Default::default()
        };
        stats.note_invalid(&Bson::Int32(4), "string");
        let pos = Position {
            bracket: 5,
            last: Some(Bson::String("k".into())),
        };
        stats.catch_up.mode = "change stream".into();
        stats.catch_up.events = 3;
        let token = Bson::Document(doc! { "_data": "82" });
        let r = from_checkpoint(&to_checkpoint(&pos, &stats, Some(&token))).unwrap();
        assert_eq!(r.position, pos);
        assert_eq!(r.stats, stats);
        assert_eq!(r.token, Some(token));
    }

    #[test]
    fn a_null_last_id_is_kept_distinct_from_none() {
        let pos = Position {
            bracket: 0,
            last: Some(Bson::Null),
        };
        let r = from_checkpoint(&to_checkpoint(&pos, &Stats::default(), None)).unwrap();
        assert_eq!(r.position.last, Some(Bson::Null));
    }

    #[test]
    fn a_checkpoint_of_the_first_bracket_list_is_mapped() {
        let old = doc! { "bracket": 1, "lastId": 5, "hasLastId": true, "scanned": 1 };
        let r = from_checkpoint(&old).unwrap();
        assert_eq!(
            BRACKETS[r.position.bracket],
            crate::engine::backfill::scan::Bracket::Number
        );
        let done = doc! { "bracket": 9, "lastId": Bson::Null, "hasLastId": false };
        assert!(from_checkpoint(&done).unwrap().position.done());
    }
}
