//! Tests of migrations/001_add_withdrawal_fields_to_users.rs against a real server: missing
//! fields added as 0 field by field, existing values kept, idempotence, the recorded counts,
//! mixed `_id` types, and both forms of `down`.

use crate::common;

use common::{all_bytes as bytes, fresh_db, result_of, TestDb};
use mongo_migrate::{MigrationRunner, RunOptions};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};

const NAME: &str = "001_add_withdrawal_fields_to_users";
const FIELDS: [&str; 3] = [
    "withdrawableBalance",
    "totalWithdrawn",
    "pendingWithdrawals",
];

/// Small batches, so a handful of users spans several batches (and, with mixed `_id`s, brackets).
fn options() -> RunOptions {
    common::small_batches()
}

/// A runner over 001 only.
fn runner(t: &TestDb, options: RunOptions) -> MigrationRunner {
    common::runner_for(t, |n| n <= 1, options)
}

async fn insert_users(t: &TestDb, users: Vec<Document>) {
    t.db.collection::<Document>("users")
        .insert_many(users)
        .await
        .unwrap();
}

async fn user(t: &TestDb, id: impl Into<Bson>) -> Document {
    t.db.collection::<Document>("users")
        .find_one(doc! { "_id": id.into() })
        .await
        .unwrap()
        .expect("user exists")
}

/// `user` with the three withdrawal fields at Int32 0.
fn with_defaults(mut user: Document) -> Document {
    for f in FIELDS {
        user.insert(f, 0);
    }
    user
}

#[tokio::test]
async fn users_get_exactly_the_missing_fields_as_zero_and_keep_existing_values() {
    let t = fresh_db("m001_missing").await;
    insert_users(
        &t,
        vec![
            doc! { "_id": 1, "name": "none", "affiliateEarnings": 40.0 },
            doc! { "_id": 2, "name": "balance only", "withdrawableBalance": 12.5 },
            doc! { "_id": 3, "name": "two", "totalWithdrawn": 7_i64, "pendingWithdrawals": 2.25 },
            doc! { "_id": 4, "name": "all", "withdrawableBalance": 1, "totalWithdrawn": 2, "pendingWithdrawals": 3 },
            doc! { "_id": 5, "name": "null pending", "pendingWithdrawals": Bson::Null },
        ],
    )
    .await;

    runner(&t, options()).run_pending().await.unwrap();

    assert_eq!(
        t.all("users").await,
        vec![
            doc! { "_id": 1, "name": "none", "affiliateEarnings": 40.0, "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0 },
            doc! { "_id": 2, "name": "balance only", "withdrawableBalance": 12.5, "totalWithdrawn": 0, "pendingWithdrawals": 0 },
            doc! { "_id": 3, "name": "two", "totalWithdrawn": 7_i64, "pendingWithdrawals": 2.25, "withdrawableBalance": 0 },
            doc! { "_id": 4, "name": "all", "withdrawableBalance": 1, "totalWithdrawn": 2, "pendingWithdrawals": 3 },
            // A field that exists (even as null) is the application's value: not replaced.
            doc! { "_id": 5, "name": "null pending", "pendingWithdrawals": Bson::Null, "withdrawableBalance": 0, "totalWithdrawn": 0 },
        ]
    );
    let added = user(&t, 1).await;
    for f in FIELDS {
        assert_eq!(added.get(f), Some(&Bson::Int32(0)), "{f} is an Int32 0");
    }
}

#[tokio::test]
async fn result_counts_users_fields_and_batches_and_the_record_is_completed() {
    let t = fresh_db("m001_counts").await;
    // 10 users lacking all three fields, 5 lacking one, 4 complete: 15 candidates, 35 fields.
    let mut users = Vec::new();
    for i in 0..10 {
        users.push(doc! { "_id": i, "affiliateEarnings": i });
    }
    for i in 10..15 {
        users.push(doc! { "_id": i, "withdrawableBalance": 1.5, "totalWithdrawn": 0 });
    }
    for i in 15..19 {
        users.push(with_defaults(doc! { "_id": i }));
    }
    insert_users(&t, users).await;

    let report = runner(&t, options()).run_pending().await.unwrap();
    assert_eq!(report.applied.len(), 1);
    let outcome = &report.applied[0].outcome;
    assert!(outcome.success);
    let expected = doc! { "usersUpdated": 15_i64, "fieldsAdded": 35_i64, "batches": 3_i64 };
    assert_eq!(outcome.result, expected);
    assert!(
        outcome.message.contains("35") && outcome.message.contains("15"),
        "{}",
        outcome.message
    );

    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    assert_eq!(result_of(&record), &expected);
    assert!(record.get_datetime("executedAt").is_ok());
    assert!(record.get("error").is_none());
    assert!(
        record.get("checkpoint").is_none(),
        "a completed run keeps no checkpoint"
    );
    let lacking = t
        .db
        .collection::<Document>("users")
        .count_documents(doc! { "$or": FIELDS.iter().map(|f| doc! { *f: { "$exists": false } }).collect::<Vec<_>>() })
        .await
        .unwrap();
    assert_eq!(lacking, 0, "the post-condition holds");
}

#[tokio::test]
async fn second_run_changes_nothing() {
    let t = fresh_db("m001_twice").await;
    let mut users = Vec::new();
    for i in 0..12 {
        users.push(doc! { "_id": i, "affiliateEarnings": i * 10 });
    }
    users.push(doc! { "_id": 12, "withdrawableBalance": 12.5 });
    insert_users(&t, users).await;

    runner(&t, options()).run_pending().await.unwrap();
    let after_first = t.all("users").await;

    // Run the migration's `up` once more (as a retry after a crash would), not just the runner.
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": NAME },
            doc! { "$set": { "status": "failed" } },
        )
        .await
        .unwrap();
    let report = runner(&t, options()).run_pending().await.unwrap();
    assert_eq!(report.applied.len(), 1, "the migration ran again");
    let result = &report.applied[0].outcome.result;
    assert_eq!(result.get_i64("fieldsAdded").unwrap(), 0);
    assert_eq!(result.get_i64("usersUpdated").unwrap(), 0);
    assert_eq!(bytes(&t.all("users").await), bytes(&after_first));
    assert_eq!(t.status(NAME).await, "completed");

    // And a runner that finds it applied does nothing at all.
    let report = runner(&t, options()).run_pending().await.unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(bytes(&t.all("users").await), bytes(&after_first));
}

#[tokio::test]
async fn users_with_mixed_id_types_all_get_the_fields() {
    let t = fresh_db("m001_mixed").await;
    let oids: Vec<ObjectId> = (0..9).map(|_| ObjectId::new()).collect();
    let mut users = Vec::new();
    for i in 0..9 {
        users.push(doc! { "_id": i, "kind": "int32" });
        users.push(doc! { "_id": 1_000_000_000_000_i64 + i as i64, "kind": "int64" });
        users.push(doc! { "_id": format!("user-{i:02}"), "kind": "string" });
        users.push(doc! { "_id": oids[i as usize], "kind": "oid" });
    }
    users.push(doc! { "_id": 2.5, "kind": "double" });
    users.push(doc! { "_id": { "tenant": "a", "n": 1 }, "kind": "object" });
    users.push(doc! { "_id": Bson::Null, "kind": "null" });
    users.push(doc! { "_id": true, "kind": "bool" });
    users.push(doc! { "_id": DateTime::from_millis(1_700_000_000_000), "kind": "date" });
    insert_users(&t, users).await;

    let report = runner(&t, options()).run_pending().await.unwrap();
    let result = &report.applied[0].outcome.result;
    assert_eq!(result.get_i64("usersUpdated").unwrap(), 41);
    assert_eq!(result.get_i64("fieldsAdded").unwrap(), 41 * 3);

    let all = t.all("users").await;
    assert_eq!(all.len(), 41);
    for u in &all {
        for f in FIELDS {
            assert_eq!(u.get(f), Some(&Bson::Int32(0)), "{f} of {u}");
        }
    }
    for id in [
        Bson::Int32(8),
        Bson::Int64(1_000_000_000_008),
        Bson::String("user-00".into()),
        Bson::ObjectId(oids[4]),
    ] {
        let u = user(&t, id.clone()).await;
        assert_eq!(u.get("_id"), Some(&id), "the _id keeps its type");
    }
}

#[tokio::test]
async fn down_removes_the_fields_only_where_all_three_are_zero() {
    let t = fresh_db("m001_down").await;
    insert_users(
        &t,
        vec![
            doc! { "_id": 1, "name": "fresh" },
            doc! { "_id": 2, "name": "earned", "withdrawableBalance": 12.5 },
            doc! { "_id": 3, "name": "fresh too", "affiliateEarnings": 8 },
            doc! { "_id": 4, "name": "pending", "pendingWithdrawals": 2 },
        ],
    )
    .await;
    let runner = runner(&t, options());
    runner.run_pending().await.unwrap();
    // The application moves money after the migration.
    t.db.collection::<Document>("users")
        .update_one(doc! { "_id": 3 }, doc! { "$set": { "totalWithdrawn": 4 } })
        .await
        .unwrap();

    let applied = runner.rollback_last().await.unwrap();
    assert_eq!(applied.name, NAME);
    assert_eq!(
        applied.outcome.result,
        doc! { "usersReverted": 1_i64, "leftAlone": 3_i64 }
    );
    assert!(
        applied.outcome.message.contains("left 3 user(s) alone")
            && applied.outcome.message.contains("--force"),
        "{}",
        applied.outcome.message
    );
    assert_eq!(
        t.all("users").await,
        vec![
            doc! { "_id": 1, "name": "fresh" },
            doc! { "_id": 2, "name": "earned", "withdrawableBalance": 12.5, "totalWithdrawn": 0, "pendingWithdrawals": 0 },
            doc! { "_id": 3, "name": "fresh too", "affiliateEarnings": 8, "withdrawableBalance": 0, "totalWithdrawn": 4, "pendingWithdrawals": 0 },
            doc! { "_id": 4, "name": "pending", "pendingWithdrawals": 2, "withdrawableBalance": 0, "totalWithdrawn": 0 },
        ]
    );
    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "rolled_back");
    assert_eq!(
        record.get_document("rollbackResult").unwrap(),
        &doc! { "usersReverted": 1_i64, "leftAlone": 3_i64 }
    );
}

#[tokio::test]
async fn down_with_force_removes_the_fields_everywhere() {
    let t = fresh_db("m001_force").await;
    let mut users = vec![
        doc! { "_id": "a", "name": "earned", "withdrawableBalance": 12.5 },
        doc! { "_id": "b", "name": "withdrawn", "totalWithdrawn": 3, "affiliateEarnings": 9 },
    ];
    for i in 0..9 {
        users.push(doc! { "_id": i, "name": format!("fresh {i}") });
    }
    insert_users(&t, users.clone()).await;
    runner(&t, options()).run_pending().await.unwrap();

    let forced = runner(
        &t,
        RunOptions {
            force: true,
            ..options()
        },
    );
    let applied = forced.rollback_last().await.unwrap();
    assert_eq!(
        applied.outcome.result,
        doc! { "usersReverted": 11_i64, "leftAlone": 0_i64 }
    );
    let stripped: Vec<Document> = t
        .all("users")
        .await
        .into_iter()
        .filter(|u| FIELDS.iter().any(|f| u.contains_key(*f)))
        .collect();
    assert!(stripped.is_empty(), "fields left on {stripped:?}");
    assert_eq!(
        user(&t, "b").await,
        doc! { "_id": "b", "name": "withdrawn", "affiliateEarnings": 9 }
    );
    assert_eq!(
        t.record(NAME)
            .await
            .unwrap()
            .get_document("rollbackResult")
            .unwrap(),
        &doc! { "usersReverted": 11_i64, "leftAlone": 0_i64 }
    );
}

#[tokio::test]
async fn up_after_a_rollback_adds_the_fields_again() {
    let t = fresh_db("m001_redo").await;
    insert_users(
        &t,
        (0..10)
            .map(|i| doc! { "_id": i, "name": format!("u{i}") })
            .collect(),
    )
    .await;
    let runner = runner(&t, options());
    runner.run_pending().await.unwrap();
    let migrated = t.all("users").await;
    runner.rollback_last().await.unwrap();
    assert!(t
        .all("users")
        .await
        .iter()
        .all(|u| FIELDS.iter().all(|f| !u.contains_key(*f))));

    let report = runner.run_pending().await.unwrap();
    assert_eq!(
        report.applied[0]
            .outcome
            .result
            .get_i64("fieldsAdded")
            .unwrap(),
        30
    );
    assert_eq!(bytes(&t.all("users").await), bytes(&migrated));
    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    let actions: Vec<&str> = record
        .get_array("history")
        .unwrap()
        .iter()
        .map(|h| h.as_document().unwrap().get_str("action").unwrap())
        .collect();
    assert_eq!(actions, ["up", "down", "up"]);
}

#[tokio::test]
async fn dry_run_reports_the_work_and_writes_nothing() {
    let t = fresh_db("m001_dry").await;
    let mut users = Vec::new();
    for i in 0..9 {
        users.push(doc! { "_id": i });
    }
    users.push(doc! { "_id": 9, "withdrawableBalance": 12.5 });
    insert_users(&t, users).await;
    let before = t.all("users").await;

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
    assert!(report.dry_run);
    let result = &report.applied[0].outcome.result;
    assert_eq!(result.get_i64("usersUpdated").unwrap(), 10);
    assert_eq!(result.get_i64("fieldsAdded").unwrap(), 29);
    assert!(report.applied[0].outcome.message.starts_with("would add"));
    assert_eq!(bytes(&t.all("users").await), bytes(&before));
    assert!(t.record(NAME).await.is_none(), "no tracking record either");
    assert_eq!(
        t.db.list_collection_names().await.unwrap(),
        ["users"],
        "no lock, tracking or checkpoint collection was created"
    );
}

#[tokio::test]
async fn each_user_is_written_once_whatever_fields_it_lacks() {
    let t = fresh_db("m001_one_write").await;
    // Every combination of missing, null and present fields, across several batches.
    let mut users = Vec::new();
    for i in 0..40 {
        let mut u = doc! { "_id": i };
        for (bit, f) in FIELDS.iter().enumerate() {
            match (i >> (2 * bit)) & 3 {
                0 => {}
                1 => {
                    u.insert(*f, Bson::Null);
                }
                _ => {
                    u.insert(*f, 2.5 * f64::from(i));
                }
            }
        }
        users.push(u);
    }
    insert_users(&t, users.clone()).await;
    let Ok(mut stream) = t.db.collection::<Document>("users").watch().await else {
        return; // no change streams on this deployment: the counts below cannot be observed
    };

    let report = runner(&t, options()).run_pending().await.unwrap();

    // Each user that lacked a field got them all in one update, and no other user was written.
    let mut writes: std::collections::HashMap<i32, u32> = Default::default();
    let mut empty = 0;
    while empty < 2 {
        match stream.next_if_any().await.unwrap() {
            Some(event) => {
                let id = event.document_key.unwrap().get_i32("_id").unwrap();
                *writes.entry(id).or_default() += 1;
            }
            None => empty += 1,
        }
    }
    let lacking: Vec<&Document> = users
        .iter()
        .filter(|u| FIELDS.iter().any(|f| !u.contains_key(*f)))
        .collect();
    assert_eq!(writes.len(), lacking.len(), "{writes:?}");
    assert!(writes.values().all(|&n| n == 1), "{writes:?}");
    // Present values, null included, are kept; only missing fields became Int32 0.
    let after = t.all("users").await;
    for (before, now) in users.iter().zip(&after) {
        for f in FIELDS {
            let expected = before.get(f).cloned().unwrap_or(Bson::Int32(0));
            assert_eq!(now.get(f), Some(&expected), "{f} of {before}");
        }
    }
    let fields_added: usize = lacking
        .iter()
        .map(|u| FIELDS.iter().filter(|f| !u.contains_key(**f)).count())
        .sum();
    let result = &report.applied[0].outcome.result;
    assert_eq!(result.get_i64("fieldsAdded").unwrap(), fields_added as i64);
    assert_eq!(
        result.get_i64("usersUpdated").unwrap(),
        lacking.len() as i64
    );
}
