//! Counters of a backfill and their round trip through the checkpoint ("resume token") stored on
//! the migration's tracking record, so a resumed run's final result covers the whole run.

use super::scan::{Position, BRACKETS};
use mongodb::bson::{doc, Bson, Document};

/// How many invalid documents are named in results and logs.
pub const INVALID_SAMPLES: usize = 20;

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
    /// Invalid documents by reason.
    pub invalid_reasons: Document,
    /// `{_id, reason}` of the first invalid documents.
    pub invalid_samples: Vec<Bson>,
    /// Dry run: `{_id, before, after}` of the first changes.
    pub samples: Vec<Bson>,
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
        if !self.invalid_reasons.is_empty() {
            d.insert("invalidReasons", self.invalid_reasons.clone());
            d.insert("invalidSamples", self.invalid_samples.clone());
        }
        if !self.samples.is_empty() {
            d.insert("samples", self.samples.clone());
        }
        d
    }

    fn from_document(d: &Document) -> Stats {
        let n = |k: &str| {
            d.get(k)
                .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
                .unwrap_or(0)
                .max(0) as u64
        };
        Stats {
            scanned: n("scanned"),
            modified: n("modified"),
            unchanged: n("unchanged"),
            invalid: n("invalid"),
            conflicts: n("conflicts"),
            batches: n("batches"),
            invalid_reasons: d
                .get_document("invalidReasons")
                .cloned()
                .unwrap_or_default(),
            invalid_samples: d.get_array("invalidSamples").cloned().unwrap_or_default(),
            samples: Vec::new(),
        }
    }
}

/// The checkpoint after a fully written prefix of the scan.
pub fn to_checkpoint(position: &Position, stats: &Stats) -> Document {
    let mut d = stats.to_document();
    d.insert("bracket", position.bracket as i32);
    d.insert("lastId", position.last.clone().unwrap_or(Bson::Null));
    d.insert("hasLastId", position.last.is_some());
    d
}

/// The position and counters to resume from; `None` if the checkpoint is unusable.
pub fn from_checkpoint(cp: &Document) -> Option<(Position, Stats)> {
    let bracket = cp.get_i32("bracket").ok()? as usize;
    if bracket > BRACKETS.len() {
        return None;
    }
    let last = if cp.get_bool("hasLastId").unwrap_or(false) {
        cp.get("lastId").cloned()
    } else {
        None
    };
    Some((Position { bracket, last }, Stats::from_document(cp)))
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
        let (p, s) = from_checkpoint(&to_checkpoint(&pos, &stats)).unwrap();
        assert_eq!(p, pos);
        assert_eq!(s, stats);
    }

    #[test]
    fn a_null_last_id_is_kept_distinct_from_none() {
        let pos = Position {
            bracket: 0,
            last: Some(Bson::Null),
        };
        let (p, _) = from_checkpoint(&to_checkpoint(&pos, &Stats::default())).unwrap();
        assert_eq!(p.last, Some(Bson::Null));
    }
}
