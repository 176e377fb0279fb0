//! Migration 003's core written with `PerDocument`: the same candidates, catch-up, post-condition
//! and before-image rollback around the same money rule (003's `transform` and `fast_path`).

use mongo_migrate::backfill::{CatchUp, PerDocument};
use mongo_migrate::registry::generated::m003::{fast_path, transform};
use mongodb::bson::{doc, Document};

const EARNINGS: &str = "affiliateEarnings";
const FIELDS: [&str; 3] = [
    "withdrawableBalance",
    "totalWithdrawn",
    "pendingWithdrawals",
];

/// Users whose three withdrawal fields are all missing or 0: nothing has moved yet.
fn untouched() -> Document {
    let each = FIELDS.map(|f| doc! { "$or": [{ f: { "$exists": false } }, { f: 0 }] });
    doc! { "$and": each.to_vec() }
}

/// Users holding a withdrawal field that is not a number: read and reported, never skipped.
fn non_numeric() -> Document {
    let each = FIELDS.map(|f| doc! { f: { "$exists": true, "$not": { "$type": "number" } } });
    doc! { "$or": each.to_vec() }
}

/// Candidates that certainly still need the change: a field missing, or earnings worth a cent.
fn left_unmigrated() -> Document {
    let missing = FIELDS.map(|f| doc! { f: { "$exists": false } });
    doc! { "$or": [{ "$or": missing.to_vec() }, { EARNINGS: { "$gt": 0.01 } }] }
}

pub fn migration() -> PerDocument {
    let candidates = doc! { "$or": [untouched(), non_numeric()] };
    let read = [EARNINGS, FIELDS[0], FIELDS[1], FIELDS[2]];
    PerDocument::new(
        "users",
        "set withdrawableBalance to 50% of affiliateEarnings (exact to the cent)",
        candidates,
        &read,
        transform,
    )
    .with_fast_path(fast_path())
    // Earnings changed, or a withdrawal field removed, can make a user owed a balance again.
    .catching_up(CatchUp {
        updated: vec![EARNINGS.into()],
        removed: FIELDS.map(String::from).to_vec(),
        pending: left_unmigrated(),
    })
}
