//! Production control of a running backfill, from other processes: live progress in `status`
//! (and its JSON) and an interrupted run told from a live one ([`status`]), `pause` ([`pause`]),
//! `throttle`, the batch size tuned to the target batch time and the lag read from the server
//! ([`limits`]). This file holds the helpers they share.

#[path = "../common/mod.rs"]
mod common;

mod limits;
mod pause;
mod status;

use common::{fresh_db, migrate, text, Running, TestDb, M001, M003};
use mongo_migrate::sample::{self, SampleSpec};
use mongodb::bson::{doc, Document};

async fn sample_users(t: &TestDb, users: u64) {
    let spec = SampleSpec {
        users,
        withdrawals: users / 10,
        seed: 11,
        invalid_earnings: 0,
        mixed_ids: false,
    };
    sample::load(&t.db, &spec).await.expect("load sample data");
}

/// The record a run is working on now, with its live progress.
async fn live_record(t: &TestDb) -> Option<Document> {
    t.db.collection::<Document>("migrations")
        .find_one(doc! { "status": "running", "progress.scanned": { "$gt": 0 } })
        .await
        .unwrap()
}

fn progress(record: &Document) -> &Document {
    record.get_document("progress").expect("progress")
}

fn num(d: &Document, key: &str) -> f64 {
    match d.get(key) {
        Some(mongodb::bson::Bson::Double(v)) => *v,
        Some(v) => mongo_migrate::engine::bson_ext::as_int(v).unwrap_or(-1) as f64,
        None => panic!("no {key} in {d}"),
    }
}

/// `users`, `_id` to withdrawal fields, for comparing two databases.
async fn users_of(t: &TestDb) -> Vec<Document> {
    t.all("users").await
}

fn hostname() -> String {
    hostname::get().unwrap().to_string_lossy().into_owned()
}
