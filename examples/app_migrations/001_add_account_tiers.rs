//! Every account gets a `tier` ("free" unless it has one) and a `displayName` (its name, else
//! its email), set on the server where missing.

use mongo_migrate::backfill::FieldBackfill;
use mongodb::bson::doc;

pub fn migration() -> FieldBackfill {
    FieldBackfill::new(
        "accounts",
        "add tier and displayName to accounts lacking them",
    )
    .set("tier", "free")
    .compute("displayName", doc! { "$ifNull": ["$name", "$email"] })
}
