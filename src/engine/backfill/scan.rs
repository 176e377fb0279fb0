//! The scan position: candidates are read in `_id` order after (bracket, last `_id`), so a scan
//! can be reopened from any point (see the pipeline's scanner, which reopens its cursor every few
//! minutes because cursors die after 10 idle minutes and sessions after 30).
//!
//! `$gt` on `_id` only matches values of the same BSON type bracket, so a collection whose `_id`s
//! mix types (numbers, strings, ObjectIds, ...) is walked one bracket at a time, in the server's
//! sort order, each bracket opened with `$gte` its smallest value. The position is therefore
//! (bracket, last `_id`), which is what the checkpoint stores.
//!
//! Values no range reaches get brackets of their own, selected by equality: MinKey and
//! MaxKey (no value is below or above them), and NaN (`$gte: -Infinity` does not match it). Each
//! holds at most a couple of documents (`_id` is unique). Whatever a server's range operators
//! still miss (for example a `$gt` on binary `_id`s that disagrees with the server's own sort
//! order) is found by the post-scan rounds over the candidate filter, which use no `_id` range.

use mongodb::bson::{
    doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Document, Timestamp,
};

/// Type brackets of `_id`, in the server's sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bracket {
    /// MinKey (sorts before everything).
    MinKey,
    /// `null` (at most one document).
    Null,
    /// NaN (double or decimal): sorts before every number, but no range matches it.
    NaN,
    /// int, long, double, decimal (compared numerically).
    Number,
    /// strings.
    String,
    /// embedded documents.
    Object,
    /// binary.
    Binary,
    /// ObjectId.
    ObjectId,
    /// booleans.
    Bool,
    /// dates.
    Date,
    /// timestamps.
    Timestamp,
    /// MaxKey (sorts after everything).
    MaxKey,
}

/// Every bracket, in scan order. A checkpoint stores an index into this list, so new brackets
/// only ever go where they keep old indexes meaning what they meant, or the position is mapped.
pub const BRACKETS: [Bracket; 12] = [
    Bracket::MinKey,
    Bracket::Null,
    Bracket::NaN,
    Bracket::Number,
    Bracket::String,
    Bracket::Object,
    Bracket::Binary,
    Bracket::ObjectId,
    Bracket::Bool,
    Bracket::Date,
    Bracket::Timestamp,
    Bracket::MaxKey,
];

impl Bracket {
    /// The `_id` condition selecting this bracket from its start, or after `last`.
    pub fn id_filter(self, last: Option<&Bson>) -> Document {
        // Brackets selected by equality hold at most two documents: after the first batch
        // nothing is left, whatever `last` is. Equality rather than `$type`: every server
        // answers it from the `_id` index, and some scan the collection for a `$type`.
        match self {
            Bracket::MinKey => return doc! { "_id": Bson::MinKey },
            Bracket::MaxKey => return doc! { "_id": Bson::MaxKey },
            Bracket::Null => return doc! { "_id": Bson::Null },
            Bracket::NaN => return doc! { "_id": f64::NAN },
            _ => {}
        }
        if let Some(last) = last {
            return doc! { "_id": { "$gt": last.clone() } };
        }
        let lowest: Bson = match self {
            Bracket::Number => Bson::Double(f64::NEG_INFINITY),
            Bracket::String => Bson::String(String::new()),
            Bracket::Object => Bson::Document(Document::new()),
            Bracket::Binary => Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: Vec::new(),
            }),
            Bracket::ObjectId => Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bracket::Bool => Bson::Boolean(false),
            Bracket::Date => Bson::DateTime(DateTime::from_millis(i64::MIN)),
            Bracket::Timestamp => Bson::Timestamp(Timestamp {
                time: 0,
                increment: 0,
            }),
            Bracket::MinKey | Bracket::MaxKey | Bracket::Null | Bracket::NaN => {
                unreachable!("returned above")
            }
        };
        doc! { "_id": { "$gte": lowest } }
    }

    /// Whether a bracket is done after one batch (selected by type or equality, not a range).
    pub fn single_batch(self) -> bool {
        matches!(
            self,
            Bracket::MinKey | Bracket::MaxKey | Bracket::Null | Bracket::NaN
        )
    }
}

/// Where a scan stands: the bracket, and the last `_id` handed out within it.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    /// Index into [`BRACKETS`]; `BRACKETS.len()` means done.
    pub bracket: usize,
    /// Last `_id` handed out in that bracket.
    pub last: Option<Bson>,
}

impl Position {
    /// The very beginning.
    pub fn start() -> Self {
        Position {
            bracket: 0,
            last: None,
        }
    }
    /// Whether every bracket is done.
    pub fn done(&self) -> bool {
        self.bracket >= BRACKETS.len()
    }
    /// The filter for the next batch: the candidates after this position in its bracket.
    /// The `_id` condition leads: some planners pick the first indexed field they see, and a
    /// candidate field such as `balance: 0` matches nearly everything.
    pub fn filter(&self, candidates: &Document) -> Document {
        let ids = BRACKETS[self.bracket].id_filter(self.last.as_ref());
        if candidates.is_empty() {
            ids
        } else {
            doc! { "$and": [ids, candidates.clone()] }
        }
    }
    /// Moves past a batch whose last `_id` is `last`.
    pub fn advance_to(&mut self, last: Bson) {
        if BRACKETS[self.bracket].single_batch() {
            self.next_bracket();
        } else {
            self.last = Some(last);
        }
    }
    /// Moves to the next bracket (the current one has no more candidates).
    pub fn next_bracket(&mut self) {
        self.bracket += 1;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bracket_opens_at_its_lowest_value() {
        assert_eq!(
            Bracket::Number.id_filter(None),
            doc! { "_id": { "$gte": f64::NEG_INFINITY } }
        );
        assert_eq!(
            Bracket::String.id_filter(None),
            doc! { "_id": { "$gte": "" } }
        );
        assert_eq!(Bracket::Null.id_filter(None), doc! { "_id": Bson::Null });
    }

    #[test]
    fn single_value_brackets_end_after_one_batch() {
        let mut p = Position::start();
        assert_eq!(BRACKETS[p.bracket], Bracket::MinKey);
        p.advance_to(Bson::MinKey);
        assert_eq!(BRACKETS[p.bracket], Bracket::Null);
        assert_eq!(p.last, None);
    }

    #[test]
    fn position_walks_brackets_in_order() {
        let mut p = Position::start();
        while BRACKETS[p.bracket] != Bracket::Number {
            p.next_bracket();
        }
        p.advance_to(Bson::Int32(5));
        assert_eq!(p.filter(&doc! {}), doc! { "_id": { "$gt": 5 } });
        p.next_bracket();
        assert_eq!(p.last, None);
        while !p.done() {
            p.next_bracket();
        }
        assert!(p.done());
    }
}
