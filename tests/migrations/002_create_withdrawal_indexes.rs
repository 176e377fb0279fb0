//! Tests of migrations/002_create_withdrawal_indexes.rs against a real server: the exact index
//! set, re-runs as no-ops, conflicts stopping `up` by name, and `down` dropping only what `up`
//! created.

use crate::common;

use common::{fresh_db, TestDb};
use futures::TryStreamExt;
use mongo_migrate::{Error, MigrationRunner, RunOptions};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

const NAME: &str = "002_create_withdrawal_indexes";

/// The LMS's index list, written out independently of the migration: (collection, name, keys).
const EXPECTED: [(&str, &str, &[&str]); 15] = [
    ("withdrawals", "userId_1", &["userId"]),
    ("withdrawals", "status_1", &["status"]),
    ("withdrawals", "createdAt_1", &["createdAt"]),
    ("withdrawals", "processedAt_1", &["processedAt"]),
    (
        "withdrawals",
        "transactionReference_1",
        &["transactionReference"],
    ),
    ("withdrawals", "userId_1_status_1", &["userId", "status"]),
    (
        "withdrawals",
        "status_1_createdAt_1",
        &["status", "createdAt"],
    ),
    (
        "withdrawals",
        "status_1_processedAt_1",
        &["status", "processedAt"],
    ),
    ("withdrawals", "status_1_amount_1", &["status", "amount"]),
    (
        "withdrawals",
        "status_1_method_1_createdAt_1",
        &["status", "method", "createdAt"],
    ),
    ("users", "withdrawableBalance_1", &["withdrawableBalance"]),
    ("users", "totalWithdrawn_1", &["totalWithdrawn"]),
    ("users", "pendingWithdrawals_1", &["pendingWithdrawals"]),
    (
        "users",
        "affiliateEarnings_1_withdrawableBalance_1",
        &["affiliateEarnings", "withdrawableBalance"],
    ),
    (
        "users",
        "pendingWithdrawals_1_withdrawableBalance_1",
        &["pendingWithdrawals", "withdrawableBalance"],
    ),
];

fn options() -> RunOptions {
    common::small_batches()
}

/// A runner over 002 only.
fn runner(t: &TestDb, options: RunOptions) -> MigrationRunner {
    common::runner_for(t, |n| n == 2, options)
}

/// An index as listed: its name and its keys as ordered `(field, direction)` pairs.
type Index = (String, Vec<(String, Bson)>);

/// `index("email_1", &[("email", 1)])`.
fn index(name: &str, keys: &[(&str, i32)]) -> Index {
    (
        name.to_string(),
        keys.iter()
            .map(|(f, d)| (f.to_string(), Bson::Int32(*d)))
            .collect(),
    )
}

fn keys(fields: &[&str]) -> Document {
    fields
        .iter()
        .map(|f| (f.to_string(), Bson::Int32(1)))
        .collect()
}

/// `(name, keys as [(field, direction)])` of every index of `collection`, sorted by name. Keys are
/// kept as ordered pairs: a compound index's field order matters.
async fn indexes(t: &TestDb, collection: &str) -> Vec<Index> {
    let models: Vec<IndexModel> = match t.db.collection::<Document>(collection).list_indexes().await
    {
        Ok(cursor) => cursor.try_collect().await.unwrap(),
        // NamespaceNotFound: a collection that does not exist has no indexes.
        Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 26) => Vec::new(),
        Err(e) => panic!("listing indexes of {collection}: {e}"),
    };
    let mut out: Vec<_> = models
        .into_iter()
        .map(|m| {
            let name = m.options.and_then(|o| o.name).unwrap_or_default();
            (name, m.keys.into_iter().collect())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What `indexes` should return for `collection` after `up`, plus `extra`.
fn expected(collection: &str, extra: &[(&str, &[&str])]) -> Vec<Index> {
    let mut out: Vec<_> = EXPECTED
        .iter()
        .filter(|(c, _, _)| *c == collection)
        .map(|(_, name, fields)| (*name, *fields))
        .chain(std::iter::once(("_id_", &["_id"][..])))
        .chain(extra.iter().copied())
        .map(|(name, fields)| (name.to_string(), keys(fields).into_iter().collect()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn qualified(filter: impl Fn(&str) -> bool) -> Vec<Bson> {
    EXPECTED
        .iter()
        .filter(|(c, n, _)| filter(&format!("{c}.{n}")))
        .map(|(c, n, _)| Bson::String(format!("{c}.{n}")))
        .collect()
}

async fn create_index(t: &TestDb, collection: &str, keys: Document, options: IndexOptions) {
    t.db.collection::<Document>(collection)
        .create_index(IndexModel::builder().keys(keys).options(options).build())
        .await
        .unwrap();
}

fn named(name: &str) -> IndexOptions {
    IndexOptions::builder().name(name.to_string()).build()
}

async fn seed_collections(t: &TestDb) {
    t.db.collection::<Document>("users")
        .insert_one(doc! { "_id": 1, "affiliateEarnings": 10 })
        .await
        .unwrap();
    t.db.collection::<Document>("withdrawals")
        .insert_one(doc! { "_id": 1, "userId": 1, "status": "pending", "amount": 5 })
        .await
        .unwrap();
}

#[tokio::test]
async fn up_creates_exactly_the_fifteen_indexes_with_their_names_and_keys() {
    let t = fresh_db("m002_create").await;
    seed_collections(&t).await;

    let report = runner(&t, options()).run_pending().await.unwrap();
    let outcome = &report.applied[0].outcome;
    assert_eq!(
        outcome.result,
        doc! { "created": qualified(|_| true), "present": Vec::<Bson>::new() }
    );
    assert_eq!(outcome.message, "created 15 index(es), 0 already present");

    assert_eq!(
        indexes(&t, "withdrawals").await,
        expected("withdrawals", &[])
    );
    assert_eq!(indexes(&t, "users").await, expected("users", &[]));
    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    assert_eq!(record.get_document("result").unwrap(), &outcome.result);
}

#[tokio::test]
async fn up_on_a_database_without_the_collections_creates_them_with_the_indexes() {
    let t = fresh_db("m002_empty").await;
    runner(&t, options()).run_pending().await.unwrap();
    assert_eq!(
        indexes(&t, "withdrawals").await,
        expected("withdrawals", &[])
    );
    assert_eq!(indexes(&t, "users").await, expected("users", &[]));
    assert_eq!(t.status(NAME).await, "completed");
}

#[tokio::test]
async fn rerunning_up_over_existing_indexes_is_a_no_op() {
    let t = fresh_db("m002_rerun").await;
    seed_collections(&t).await;
    runner(&t, options()).run_pending().await.unwrap();
    let users = indexes(&t, "users").await;
    let withdrawals = indexes(&t, "withdrawals").await;

    // A runner that finds it applied does nothing.
    assert!(runner(&t, options())
        .run_pending()
        .await
        .unwrap()
        .applied
        .is_empty());

    // `up` itself run again (as a retry after a crash would) finds every index present.
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": NAME },
            doc! { "$set": { "status": "failed" } },
        )
        .await
        .unwrap();
    let report = runner(&t, options()).run_pending().await.unwrap();
    assert_eq!(
        report.applied[0].outcome.result,
        doc! { "created": Vec::<Bson>::new(), "present": qualified(|_| true) }
    );
    assert_eq!(indexes(&t, "users").await, users);
    assert_eq!(indexes(&t, "withdrawals").await, withdrawals);
    assert_eq!(t.status(NAME).await, "completed");
}

#[tokio::test]
async fn rollback_then_up_recreates_the_same_indexes() {
    let t = fresh_db("m002_redo").await;
    seed_collections(&t).await;
    let runner = runner(&t, options());
    runner.run_pending().await.unwrap();

    let applied = runner.rollback_last().await.unwrap();
    assert_eq!(
        applied.outcome.result,
        doc! { "dropped": qualified(|_| true) }
    );
    assert_eq!(
        indexes(&t, "withdrawals").await,
        expected("withdrawals", &[])
            .into_iter()
            .filter(|(n, _)| n == "_id_")
            .collect::<Vec<_>>()
    );
    assert_eq!(
        indexes(&t, "users").await,
        expected("users", &[])
            .into_iter()
            .filter(|(n, _)| n == "_id_")
            .collect::<Vec<_>>()
    );
    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "rolled_back");
    assert_eq!(
        record.get_document("rollbackResult").unwrap(),
        &applied.outcome.result
    );

    let report = runner.run_pending().await.unwrap();
    assert_eq!(
        report.applied[0]
            .outcome
            .result
            .get_array("created")
            .unwrap(),
        &qualified(|_| true)
    );
    assert_eq!(
        indexes(&t, "withdrawals").await,
        expected("withdrawals", &[])
    );
    assert_eq!(indexes(&t, "users").await, expected("users", &[]));
}

#[tokio::test]
async fn index_with_the_same_name_but_other_keys_stops_up_and_names_it() {
    let t = fresh_db("m002_samename").await;
    seed_collections(&t).await;
    create_index(&t, "withdrawals", doc! { "userId": -1 }, named("userId_1")).await;

    let err = runner(&t, options()).run_pending().await.unwrap_err();
    t.assert_failed(
        &err,
        NAME,
        &["withdrawals.userId_1", "dropIndex(\"userId_1\")"],
        "withdrawals.userId_1",
    )
    .await;
    // Nothing was created: the conflict is found before any index is built.
    assert_eq!(
        indexes(&t, "withdrawals").await,
        vec![
            index("_id_", &[("_id", 1)]),
            index("userId_1", &[("userId", -1)])
        ]
    );
    assert_eq!(indexes(&t, "users").await.len(), 1, "only _id_ on users");
}

#[tokio::test]
async fn index_with_the_same_name_and_keys_but_other_options_stops_up() {
    let t = fresh_db("m002_options").await;
    seed_collections(&t).await;
    create_index(
        &t,
        "users",
        doc! { "totalWithdrawn": 1 },
        IndexOptions::builder()
            .name("totalWithdrawn_1".to_string())
            .sparse(true)
            .build(),
    )
    .await;

    let err = runner(&t, options()).run_pending().await.unwrap_err();
    assert!(
        matches!(&err, Error::Migration { reason, .. } if reason.contains("users.totalWithdrawn_1") && reason.contains("options")),
        "{err}"
    );
    assert_eq!(t.status(NAME).await, "failed");
}

#[tokio::test]
async fn same_keys_under_another_name_stops_up_and_names_both() {
    let t = fresh_db("m002_samekeys").await;
    seed_collections(&t).await;
    create_index(
        &t,
        "withdrawals",
        doc! { "status": 1, "createdAt": 1 },
        named("by_status_and_date"),
    )
    .await;

    let err = runner(&t, options()).run_pending().await.unwrap_err();
    t.assert_failed(
        &err,
        NAME,
        &["withdrawals.by_status_and_date", "status_1_createdAt_1"],
        "by_status_and_date",
    )
    .await;
    assert_eq!(
        indexes(&t, "withdrawals").await.len(),
        2,
        "only _id_ and the operator's index"
    );

    // Once the operator drops it, `up` succeeds.
    t.db.collection::<Document>("withdrawals")
        .drop_index("by_status_and_date")
        .await
        .unwrap();
    runner(&t, options()).run_pending().await.unwrap();
    assert_eq!(
        indexes(&t, "withdrawals").await,
        expected("withdrawals", &[])
    );
    assert_eq!(t.status(NAME).await, "completed");
}

#[tokio::test]
async fn identical_index_that_existed_before_is_reported_present_and_kept_by_down() {
    let t = fresh_db("m002_present").await;
    seed_collections(&t).await;
    create_index(
        &t,
        "users",
        doc! { "withdrawableBalance": 1 },
        named("withdrawableBalance_1"),
    )
    .await;
    // An unrelated index of the application, never touched.
    create_index(&t, "users", doc! { "email": 1 }, named("email_1")).await;

    let runner = runner(&t, options());
    let report = runner.run_pending().await.unwrap();
    let pre_existing = "users.withdrawableBalance_1";
    assert_eq!(
        report.applied[0].outcome.result,
        doc! {
            "created": qualified(|q| q != pre_existing),
            "present": [pre_existing],
        }
    );
    assert_eq!(
        indexes(&t, "users").await,
        expected("users", &[("email_1", &["email"])])
    );

    let applied = runner.rollback_last().await.unwrap();
    assert_eq!(
        applied.outcome.result,
        doc! { "dropped": qualified(|q| q != pre_existing) }
    );
    assert_eq!(applied.outcome.message, "dropped 14 index(es)");
    assert_eq!(
        indexes(&t, "users").await,
        vec![
            index("_id_", &[("_id", 1)]),
            index("email_1", &[("email", 1)]),
            index("withdrawableBalance_1", &[("withdrawableBalance", 1)]),
        ]
    );
    assert_eq!(
        indexes(&t, "withdrawals").await,
        vec![index("_id_", &[("_id", 1)])]
    );
}

#[tokio::test]
async fn dry_run_creates_no_index_and_reports_what_it_would_create() {
    let t = fresh_db("m002_dry").await;
    seed_collections(&t).await;
    let report = runner(
        &t,
        RunOptions {
            dry_run: true,
            ..options()
        },
    )
    .run_pending()
    .await
    .unwrap();
    let outcome = &report.applied[0].outcome;
    assert_eq!(
        outcome.message,
        "would create 15 index(es), 0 already present"
    );
    assert_eq!(
        outcome.result.get_array("created").unwrap(),
        &qualified(|_| true)
    );
    assert_eq!(indexes(&t, "users").await.len(), 1);
    assert_eq!(indexes(&t, "withdrawals").await.len(), 1);
    assert!(t.record(NAME).await.is_none());
}

#[tokio::test]
async fn indexes_built_before_a_failure_part_way_are_still_dropped_by_down() {
    let t = fresh_db("m002_partial").await;
    seed_collections(&t).await;
    let runner = runner(&t, options());
    runner.run_pending().await.unwrap();
    // The state a failure while building the users indexes leaves (the test server builds
    // every index MongoDB refuses, so the failure itself cannot be provoked here): the
    // withdrawals indexes built, the users ones not, the record failed with the checkpoint
    // `up` saves before it builds anything.
    for (collection, name, _) in EXPECTED {
        if collection == "users" {
            t.db.collection::<Document>("users")
                .drop_index(name)
                .await
                .unwrap();
        }
    }
    let record = t.record(NAME).await.unwrap();
    let created = record
        .get_document("result")
        .unwrap()
        .get_array("created")
        .unwrap()
        .clone();
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": NAME },
            doc! { "$set": { "status": "failed", "error": "creating indexes on users: ...", "checkpoint": { "created": created } } },
        )
        .await
        .unwrap();

    let report = runner.run_pending().await.unwrap();
    assert_eq!(
        report.applied[0].outcome.result,
        doc! { "created": qualified(|_| true), "present": Bson::Array(vec![]) },
        "the withdrawals indexes of the failed attempt are reported as created, not present"
    );
    let applied = runner.rollback_last().await.unwrap();
    assert_eq!(
        applied.outcome.result,
        doc! { "dropped": qualified(|_| true) }
    );
}
