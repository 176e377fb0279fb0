//! Several "set this field where it is missing" statements written as one write per document.
//!
//! A backfill that gives documents the fields they lack (`{f: {$exists: false}}` →
//! `{$set: {f: v}}`, one statement per field) would write a document that lacks three fields
//! three times, once per statement. The scan reads those fields, so the engine knows which ones
//! each document lacks: documents are grouped by the set of fields they lack, and each group gets
//! one statement that sets exactly those fields, guarded on exactly that set being missing (a
//! present value, null included, is never touched). A document therefore costs one write, and
//! the number of fields added stays exact: each statement adds its group's fields to every
//! document it modifies.
//!
//! A document the application changed between the read and the write matches no group. When the
//! groups matched fewer documents than were read, the plain per-field statements run over the
//! batch's range, which cover whatever is left.

use super::spec::{ServerUpdate, ServerUpdateKind};
use super::write::{and, update_command};
use crate::engine::error::Result;
use crate::engine::migration::Stop;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use std::collections::BTreeMap;

/// The fields and values of `updates` when every one sets one field only where it is missing,
/// each a different field, and there are at least two (one statement is already one write).
pub(super) fn set_if_missing(updates: &[ServerUpdate]) -> Option<Vec<(String, Bson)>> {
    let mut fields: Vec<(String, Bson)> = Vec::new();
    for u in updates {
        let ServerUpdateKind::Operators(ops) = &u.update else {
            return None;
        };
        let set = ops.get_document("$set").ok().filter(|_| ops.len() == 1)?;
        let (field, value) = set.iter().next().filter(|_| set.len() == 1)?;
        let missing = doc! { field.clone(): { "$exists": false } };
        if u.filter != missing || fields.iter().any(|(f, _)| f == field) {
            return None;
        }
        fields.push((field.clone(), value.clone()));
    }
    (fields.len() >= 2).then_some(fields)
}

/// Writes `docs` (read with `fields` projected) lacking some of `fields`, one statement per set
/// of missing fields, each document once. Returns the number of fields added, and whether every
/// document was written as read (if not, the caller runs the per-field statements, which add the
/// rest).
pub(super) async fn write_missing(
    db: &Database,
    collection: &str,
    candidates: &Document,
    fields: &[(String, Bson)],
    docs: &[Document],
    range: &Document,
    stop: &Stop,
) -> Result<(u64, bool)> {
    // Missing-field set (as a bit mask over `fields`) -> documents read with it.
    let mut groups: BTreeMap<u64, u64> = BTreeMap::new();
    for d in docs {
        let mask = fields
            .iter()
            .enumerate()
            .filter(|(_, (f, _))| !d.contains_key(f))
            .fold(0u64, |m, (i, _)| m | 1 << i);
        if mask != 0 {
            *groups.entry(mask).or_default() += 1;
        }
    }
    let (mut matched, mut added, mut complete) = (0u64, 0u64, true);
    let expected: u64 = groups.values().sum();
    for &mask in groups.keys() {
        let mut guard = Document::new();
        let mut set = Document::new();
        for (i, (f, v)) in fields.iter().enumerate() {
            let lacks = mask & (1 << i) != 0;
            guard.insert(f.clone(), doc! { "$exists": !lacks });
            if lacks {
                set.insert(f.clone(), doc! { "$literal": v.clone() });
            }
        }
        let q = and(vec![range.clone(), candidates.clone(), guard]);
        // One command per group: the reply's counters are per command, and each group adds a
        // known number of fields per document.
        // A pipeline `$set` appends new fields in the order given, as the per-field statements
        // did; an operator `$set` would add them in lexicographic order (MongoDB 5.0+).
        let statement = doc! { "q": q, "u": [{ "$set": set }], "multi": true };
        let result = update_command(db, collection, vec![statement], stop).await?;
        added += result.modified * u64::from(mask.count_ones());
        if result.errors.is_empty() {
            matched += result.matched;
        } else {
            // A server may refuse the pipeline form for some document (the test server does for
            // a MinKey `_id`): the per-field statements then write what this one left.
            tracing::debug!(collection, error = %result.errors[0].1, "a grouped write was refused; writing field by field");
            complete = false;
        }
    }
    Ok((added, complete && matched == expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(field: &str) -> ServerUpdate {
        ServerUpdate::operators(
            doc! { field: { "$exists": false } },
            doc! { "$set": { field: 0 } },
        )
    }

    #[test]
    fn statements_each_setting_a_missing_field_are_merged() {
        let fields = set_if_missing(&[add("a"), add("b"), add("c")]).unwrap();
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn other_statements_are_left_as_they_are() {
        // One statement, a field twice, a filter on another field, a pipeline, two fields set.
        assert!(set_if_missing(&[add("a")]).is_none());
        assert!(set_if_missing(&[add("a"), add("a")]).is_none());
        let other_filter = ServerUpdate::operators(
            doc! { "x": { "$exists": false } },
            doc! { "$set": { "b": 0 } },
        );
        assert!(set_if_missing(&[add("a"), other_filter]).is_none());
        let pipeline = ServerUpdate::pipeline(
            doc! { "b": { "$exists": false } },
            vec![doc! { "$set": { "b": 0 } }],
        );
        assert!(set_if_missing(&[add("a"), pipeline]).is_none());
        let two = ServerUpdate::operators(
            doc! { "b": { "$exists": false } },
            doc! { "$set": { "b": 0, "c": 0 } },
        );
        assert!(set_if_missing(&[add("a"), two]).is_none());
        let unset = ServerUpdate::operators(
            doc! { "b": { "$exists": false } },
            doc! { "$set": { "b": 0 }, "$unset": { "c": "" } },
        );
        assert!(set_if_missing(&[add("a"), unset]).is_none());
    }
}
