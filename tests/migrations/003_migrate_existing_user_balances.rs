//! Tests of migrations/003_migrate_existing_user_balances.rs against a real server: halving to
//! the cent by numeric kind, users without earnings, invalid earnings left untouched and reported
//! (or failing the run), moved balances never overwritten, idempotence, exact rollback with
//! conflicts reported, and a dry run that writes nothing.

use crate::common;

use common::{bytes, counters_of, fresh_db, result_of, TestDb};
use futures::TryStreamExt;
use mongo_migrate::money::{classify, Earnings};
use mongo_migrate::{MigrationRunner, RunOptions};
use mongodb::bson::{doc, oid::ObjectId, Bson, Decimal128, Document};

const NAME: &str = "003_migrate_existing_user_balances";
const FIELDS: [&str; 3] = [
    "withdrawableBalance",
    "totalWithdrawn",
    "pendingWithdrawals",
];
const BEFORE_IMAGES: &str = "migrations_before_images";

/// Small batches, so a few dozen users span several batches and `_id` type brackets.
fn options() -> RunOptions {
    common::small_batches()
}

/// A runner over the compiled migrations whose numbers `keep` accepts.
fn runner(t: &TestDb, keep: impl Fn(u32) -> bool, options: RunOptions) -> MigrationRunner {
    common::runner_for(t, keep, options)
}

/// 003 alone: it sets the fields 001 would have added itself.
fn only_003(t: &TestDb, options: RunOptions) -> MigrationRunner {
    runner(t, |n| n == 3, options)
}

/// 001 then 003, the order production runs them in (002 only adds indexes).
fn with_001(t: &TestDb, options: RunOptions) -> MigrationRunner {
    runner(t, |n| n == 1 || n == 3, options)
}

fn dec(s: &str) -> Bson {
    Bson::Decimal128(s.parse::<Decimal128>().unwrap())
}

async fn insert_users(t: &TestDb, users: Vec<Document>) {
    t.db.collection::<Document>("users")
        .insert_many(users)
        .await
        .unwrap();
}

/// The user with `_id` `id` out of `docs`.
fn find<'a>(docs: &'a [Document], id: &Bson) -> &'a Document {
    docs.iter()
        .find(|d| d.get("_id") == Some(id))
        .unwrap_or_else(|| panic!("no user {id}"))
}

/// Asserts two snapshots are byte-for-byte identical, naming the first document that differs.
fn assert_identical(actual: &[Document], expected: &[Document]) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{actual:#?}\n!=\n{expected:#?}"
    );
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(bytes(a), bytes(e), "\n{a}\n!=\n{e}");
    }
}

/// Every collection's documents, by collection name (sorted): the whole database's state.
async fn snapshot(t: &TestDb) -> Vec<(String, Vec<Document>)> {
    let mut names = t.db.list_collection_names().await.unwrap();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let docs = t.all(&name).await;
        out.push((name, docs));
    }
    out
}

async fn before_image_chunks(t: &TestDb) -> u64 {
    t.db.collection::<Document>(BEFORE_IMAGES)
        .count_documents(doc! {})
        .await
        .unwrap()
}

/// Marks 003 failed so the next run executes its `up` again (as a retry after a crash would).
async fn make_003_pending_again(t: &TestDb) {
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": NAME },
            doc! { "$set": { "status": "failed" } },
        )
        .await
        .unwrap();
}

/// The reason `money` gives for invalid earnings (the text is the money module's; which values
/// are invalid is asserted here).
fn reason(earnings: &Bson) -> &'static str {
    match classify(Some(earnings)) {
        Earnings::Invalid(reason) => reason,
        other => panic!("{earnings} should be invalid earnings, classified {other:?}"),
    }
}

#[tokio::test]
async fn earnings_are_halved_to_the_cent_ties_to_even_keeping_their_numeric_kind() {
    let t = fresh_db("m003_half").await;
    let cases: Vec<(Bson, Bson, Bson)> = vec![
        // (_id, affiliateEarnings, expected withdrawableBalance)
        (Bson::Int32(1), Bson::Double(123.45), Bson::Double(61.72)),
        (Bson::Int32(2), Bson::Double(123.47), Bson::Double(61.74)),
        (Bson::Int32(3), Bson::Double(10.0), Bson::Double(5.0)),
        (Bson::Int32(4), Bson::Double(0.03), Bson::Double(0.02)),
        (Bson::Int32(5), Bson::Double(99.99), Bson::Double(50.0)),
        (Bson::Int32(6), Bson::Int32(101), Bson::Double(50.5)),
        (Bson::Int32(7), Bson::Int32(7), Bson::Double(3.5)),
        (
            Bson::Int32(8),
            Bson::Int64(3_000_000_001),
            Bson::Double(1_500_000_000.5),
        ),
        (Bson::Int32(9), Bson::Int64(40), Bson::Double(20.0)),
        (Bson::String("d1".into()), dec("100.01"), dec("50.00")),
        (Bson::String("d2".into()), dec("100.03"), dec("50.02")),
        (Bson::String("d3".into()), dec("7"), dec("3.50")),
        (Bson::String("d4".into()), dec("0.125"), dec("0.06")),
    ];
    insert_users(
        &t,
        cases
            .iter()
            .map(|(id, earnings, _)| doc! { "_id": id.clone(), "affiliateEarnings": earnings.clone() })
            .collect(),
    )
    .await;

    with_001(&t, options()).run_pending().await.unwrap();

    // 9 numeric `_id`s then 4 strings, 7 per batch: batches of 7, 2 and 4.
    let users = t.all("users").await;
    for (id, earnings, balance) in &cases {
        let user = find(&users, id);
        let expected = doc! {
            "_id": id.clone(),
            "affiliateEarnings": earnings.clone(),
            "withdrawableBalance": balance.clone(),
            "totalWithdrawn": 0,
            "pendingWithdrawals": 0,
        };
        assert_eq!(bytes(user), bytes(&expected), "\n{user}\n!=\n{expected}");
    }
    // Decimal balances keep two decimal places (exponent -2).
    let d1 = find(&users, &Bson::String("d1".into()));
    let Some(Bson::Decimal128(half)) = d1.get("withdrawableBalance") else {
        panic!("{d1}");
    };
    assert_eq!(half.to_string(), "50.00");

    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    assert_eq!(
        counters_of(result_of(&record)),
        doc! {
            "scanned": 13_i64, "modified": 13_i64, "unchanged": 0_i64, "invalid": 0_i64, "conflicts": 0_i64, "batches": 3_i64,
            // A deployment with change streams has transactions: every batch went in one, and
            // the stream reports every write but theirs, so no round over the candidates follows.
            "batchesInTransactions": 3_i64,
            "caughtUp": { "mode": "change stream", "events": 0_i64, "reread": 0_i64, "modified": 0_i64, "invalid": 0_i64, "conflicts": 0_i64, "rounds": 0_i64 },
        }
    );
}

#[tokio::test]
async fn users_without_earnings_get_a_zero_balance_and_all_three_fields() {
    let t = fresh_db("m003_none").await;
    insert_users(
        &t,
        vec![
            doc! { "_id": 1, "name": "missing" },
            doc! { "_id": 2, "name": "null", "affiliateEarnings": Bson::Null },
            doc! { "_id": 3, "name": "int zero", "affiliateEarnings": 0 },
            doc! { "_id": 4, "name": "double zero", "affiliateEarnings": 0.0 },
            doc! { "_id": 5, "name": "decimal zero", "affiliateEarnings": dec("0.00") },
            doc! { "_id": 6, "name": "partial", "withdrawableBalance": 0, "affiliateEarnings": Bson::Null },
            doc! { "_id": 7, "name": "complete", "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0 },
        ],
    )
    .await;

    let report = only_003(&t, options()).run_pending().await.unwrap();
    let result = &report.applied[0].outcome.result;
    assert_eq!(result.get_i64("scanned").unwrap(), 7);
    assert_eq!(result.get_i64("invalid").unwrap(), 0);
    assert_eq!(
        result.get_i64("unchanged").unwrap(),
        1,
        "the complete user needs nothing"
    );

    let users = t.all("users").await;
    for user in &users {
        for f in FIELDS {
            assert!(user.contains_key(f), "{f} missing on {user}");
        }
        assert_eq!(user.get_i32("totalWithdrawn").unwrap(), 0, "{user}");
        assert_eq!(user.get_i32("pendingWithdrawals").unwrap(), 0, "{user}");
    }
    // No earnings: the balance is the Int32 0 every other new field gets.
    for id in [1, 2, 6, 7] {
        let user = find(&users, &Bson::Int32(id));
        assert_eq!(
            user.get("withdrawableBalance"),
            Some(&Bson::Int32(0)),
            "{user}"
        );
    }
    // Zero earnings: a zero balance, of the kind money gives for zero (or Int32 0 if none).
    for id in [3, 4, 5] {
        let user = find(&users, &Bson::Int32(id));
        let zero = match classify(user.get("affiliateEarnings")) {
            Earnings::None => Bson::Int32(0),
            Earnings::Half(half) => half,
            Earnings::Invalid(why) => panic!("zero earnings are valid, got {why}"),
        };
        assert_eq!(user.get("withdrawableBalance"), Some(&zero), "{user}");
        let numeric = match &zero {
            Bson::Int32(n) => *n as f64,
            Bson::Double(x) => *x,
            Bson::Decimal128(d) => d.to_string().parse().unwrap(),
            other => panic!("not a number: {other}"),
        };
        assert_eq!(numeric, 0.0, "{user}");
    }
    assert_eq!(
        bytes(find(&users, &Bson::Int32(7))),
        bytes(
            &doc! { "_id": 7, "name": "complete", "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0 }
        )
    );
    assert_eq!(t.status(NAME).await, "completed");
}

/// `(_id, affiliateEarnings)` of users whose earnings cannot be migrated.
fn invalid_cases() -> Vec<(Bson, Bson)> {
    vec![
        (Bson::Int32(10), Bson::String("12.50".into())),
        (Bson::Int32(11), Bson::Double(-5.0)),
        (Bson::Int32(12), Bson::Int32(-3)),
        (Bson::Int32(13), Bson::Int64(-1)),
        (Bson::Int32(14), Bson::Double(f64::NAN)),
        (Bson::Int32(15), Bson::Double(f64::INFINITY)),
        (
            Bson::String("neg-inf".into()),
            Bson::Double(f64::NEG_INFINITY),
        ),
        (Bson::String("bool".into()), Bson::Boolean(true)),
        (
            Bson::String("embedded".into()),
            Bson::Document(doc! { "amount": 10, "currency": "USD" }),
        ),
        (Bson::ObjectId(ObjectId::new()), dec("-1.00")),
        (Bson::ObjectId(ObjectId::new()), dec("NaN")),
        (Bson::ObjectId(ObjectId::new()), dec("Infinity")),
    ]
}

#[tokio::test]
async fn invalid_earnings_leave_the_user_untouched_and_are_reported() {
    let t = fresh_db("m003_invalid").await;
    let invalid = invalid_cases();
    let mut users: Vec<Document> = invalid
        .iter()
        .map(|(id, earnings)| doc! { "_id": id.clone(), "name": "bad", "affiliateEarnings": earnings.clone() })
        .collect();
    // One invalid user already carries withdrawal fields (as after 001): still untouched.
    users.push(doc! { "_id": 16, "affiliateEarnings": "7", "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0 });
    for i in 0..6 {
        users.push(doc! { "_id": 100 + i, "affiliateEarnings": 20.0 });
    }
    insert_users(&t, users).await;
    let before = t.all("users").await;

    let report = only_003(&t, options()).run_pending().await.unwrap();
    let outcome = &report.applied[0].outcome;
    assert!(
        outcome.message.contains("13 invalid left untouched"),
        "{}",
        outcome.message
    );

    // Every invalid user is byte-for-byte as it was; the valid ones were migrated.
    let after = t.all("users").await;
    let mut invalid_ids: Vec<Bson> = invalid.iter().map(|(id, _)| id.clone()).collect();
    invalid_ids.push(Bson::Int32(16));
    for id in &invalid_ids {
        assert_eq!(
            bytes(find(&after, id)),
            bytes(find(&before, id)),
            "user {id} was touched"
        );
    }
    for i in 0..6 {
        assert_eq!(
            find(&after, &Bson::Int32(100 + i)).get("withdrawableBalance"),
            Some(&Bson::Double(10.0))
        );
    }

    // The record names every invalid user, with its reason, and counts the reasons.
    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    let result = result_of(&record);
    assert_eq!(result.get_i64("invalid").unwrap(), 13);
    assert_eq!(result.get_i64("modified").unwrap(), 6);
    let mut reasons = Document::new();
    let mut expected_samples = Vec::new();
    let mut all_invalid = invalid.clone();
    all_invalid.push((Bson::Int32(16), Bson::String("7".into())));
    for (id, earnings) in &all_invalid {
        let why = reason(earnings);
        let n = reasons.get_i64(why).unwrap_or(0);
        reasons.insert(why, n + 1);
        expected_samples.push(doc! { "_id": id.clone(), "reason": why });
    }
    assert_eq!(result.get_document("invalidReasons").unwrap(), &reasons);
    let samples: Vec<Document> = result
        .get_array("invalidSamples")
        .unwrap()
        .iter()
        .map(|s| s.as_document().unwrap().clone())
        .collect();
    assert_eq!(samples.len(), expected_samples.len(), "{samples:?}");
    for sample in &expected_samples {
        assert!(samples.contains(sample), "{sample} not among {samples:?}");
    }
}

#[tokio::test]
async fn fail_on_invalid_fails_the_run_instead_and_it_succeeds_once_the_data_is_fixed() {
    let t = fresh_db("m003_strict").await;
    let mut users = vec![doc! { "_id": 0, "affiliateEarnings": "12.50" }];
    for i in 1..=3 {
        users.push(doc! { "_id": i, "affiliateEarnings": 4.0 });
    }
    insert_users(&t, users).await;
    let strict = RunOptions {
        fail_on_invalid: true,
        ..options()
    };

    let err = only_003(&t, strict.clone())
        .run_pending()
        .await
        .unwrap_err();
    t.assert_failed(
        &err,
        NAME,
        &["--fail-on-invalid", r#""_id":0"#],
        "--fail-on-invalid",
    )
    .await;
    // The batch holding the invalid user wrote nothing.
    assert_eq!(
        t.all("users").await,
        vec![
            doc! { "_id": 0, "affiliateEarnings": "12.50" },
            doc! { "_id": 1, "affiliateEarnings": 4.0 },
            doc! { "_id": 2, "affiliateEarnings": 4.0 },
            doc! { "_id": 3, "affiliateEarnings": 4.0 },
        ]
    );

    // The operator fixes the data; the failed migration runs again and completes.
    t.db.collection::<Document>("users")
        .update_one(
            doc! { "_id": 0 },
            doc! { "$set": { "affiliateEarnings": 12.5 } },
        )
        .await
        .unwrap();
    only_003(&t, strict).run_pending().await.unwrap();
    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    assert_eq!(result_of(&record).get_i64("invalid").unwrap(), 0);
    let user = find(&t.all("users").await, &Bson::Int32(0)).clone();
    assert_eq!(
        user,
        doc! { "_id": 0, "affiliateEarnings": 12.5, "withdrawableBalance": 6.25, "totalWithdrawn": 0, "pendingWithdrawals": 0 }
    );
}

#[tokio::test]
async fn users_whose_withdrawal_fields_already_moved_are_not_overwritten() {
    let t = fresh_db("m003_moved").await;
    insert_users(
        &t,
        vec![
            doc! { "_id": 1, "affiliateEarnings": 100.0, "withdrawableBalance": 5 },
            doc! { "_id": 2, "affiliateEarnings": 100.0, "totalWithdrawn": 3 },
            doc! { "_id": 3, "affiliateEarnings": 100.0, "pendingWithdrawals": 2 },
            doc! { "_id": 4, "affiliateEarnings": 100.0, "withdrawableBalance": 5.0, "totalWithdrawn": 3.5, "pendingWithdrawals": 2_i64 },
            doc! { "_id": 5, "affiliateEarnings": 100.0 },
        ],
    )
    .await;
    // 001 first (as in production), then the application keeps working, then 003.
    runner(&t, |n| n == 1, options())
        .run_pending()
        .await
        .unwrap();
    let after_001 = t.all("users").await;

    let report = with_001(&t, options()).run_pending().await.unwrap();
    assert_eq!(report.applied.len(), 1);
    let result = &report.applied[0].outcome.result;
    assert_eq!(
        result.get_i64("scanned").unwrap(),
        1,
        "only user 5 is a candidate"
    );
    assert_eq!(result.get_i64("modified").unwrap(), 1);

    let users = t.all("users").await;
    for id in 1..=4 {
        let id = Bson::Int32(id);
        assert_eq!(
            bytes(find(&users, &id)),
            bytes(find(&after_001, &id)),
            "user {id} was overwritten"
        );
    }
    assert_eq!(
        find(&users, &Bson::Int32(5)).get("withdrawableBalance"),
        Some(&Bson::Double(50.0))
    );
}

#[tokio::test]
async fn moved_users_lacking_other_fields_are_left_alone_when_003_runs_alone() {
    let t = fresh_db("m003_moved_alone").await;
    insert_users(
        &t,
        vec![
            doc! { "_id": 1, "affiliateEarnings": 100.0, "totalWithdrawn": 3 },
            doc! { "_id": 2, "affiliateEarnings": 100.0 },
        ],
    )
    .await;
    let before = t.all("users").await;

    only_003(&t, options()).run_pending().await.unwrap();

    let users = t.all("users").await;
    assert_eq!(bytes(&users[0]), bytes(&before[0]));
    assert_eq!(
        users[1],
        doc! { "_id": 2, "affiliateEarnings": 100.0, "withdrawableBalance": 50.0, "totalWithdrawn": 0, "pendingWithdrawals": 0 }
    );
    assert_eq!(t.status(NAME).await, "completed");
}

/// A mix of users, `_id` types and prior states, for idempotence and rollback.
fn mixed_users() -> Vec<Document> {
    let mut users = vec![
        doc! { "_id": 1, "affiliateEarnings": 123.45 },
        doc! { "_id": 2, "affiliateEarnings": 101, "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0 },
        doc! { "_id": 3, "affiliateEarnings": dec("100.01"), "withdrawableBalance": 0.0, "totalWithdrawn": 0_i64 },
        doc! { "_id": 4, "name": "no earnings" },
        doc! { "_id": 5, "affiliateEarnings": Bson::Null, "pendingWithdrawals": 0 },
        doc! { "_id": 6, "affiliateEarnings": "12.50" },
        doc! { "_id": 7, "affiliateEarnings": 50, "withdrawableBalance": 5 },
        doc! { "_id": "alice", "affiliateEarnings": 80.0, "email": "a@example.com" },
        doc! { "_id": "bob", "affiliateEarnings": 12.34, "withdrawableBalance": 0 },
        doc! { "_id": "carol", "affiliateEarnings": -4.0 },
    ];
    for i in 0..12 {
        users.push(doc! { "_id": ObjectId::new(), "affiliateEarnings": 10 + i, "n": i });
    }
    users
}

#[tokio::test]
async fn second_run_modifies_nothing() {
    let t = fresh_db("m003_twice").await;
    insert_users(&t, mixed_users()).await;
    with_001(&t, options()).run_pending().await.unwrap();
    let after_first = t.all("users").await;
    let chunks = before_image_chunks(&t).await;
    assert!(chunks > 0);

    make_003_pending_again(&t).await;
    let report = with_001(&t, options()).run_pending().await.unwrap();
    assert_eq!(report.applied.len(), 1, "003 ran again");
    let result = &report.applied[0].outcome.result;
    assert_eq!(result.get_i64("modified").unwrap(), 0, "{result}");
    assert_eq!(result.get_i64("conflicts").unwrap(), 0, "{result}");
    assert_identical(&t.all("users").await, &after_first);
    assert_eq!(
        before_image_chunks(&t).await,
        chunks,
        "nothing written, nothing to keep"
    );
}

#[tokio::test]
async fn rollback_restores_every_touched_user_exactly() {
    let t = fresh_db("m003_rollback").await;
    insert_users(&t, mixed_users()).await;
    let before = t.all("users").await;

    let runner = only_003(&t, options());
    let report = runner.run_pending().await.unwrap();
    let modified = report.applied[0]
        .outcome
        .result
        .get_i64("modified")
        .unwrap();
    // Everyone but the two invalid users (6, carol) and the one whose balance moved (7).
    assert_eq!(modified, before.len() as i64 - 3);
    assert_ne!(t.all("users").await, before);

    let applied = runner.rollback_last().await.unwrap();
    assert_eq!(
        applied.outcome.result,
        doc! { "restored": modified, "already": 0_i64, "conflicts": 0_i64, "conflictSamples": [] }
    );
    // Byte-for-byte: previous values and types back, fields absent before absent again.
    assert_identical(&t.all("users").await, &before);
    assert_eq!(
        before_image_chunks(&t).await,
        0,
        "applied chunks are deleted"
    );
    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "rolled_back");
    assert_eq!(
        record.get_document("rollbackResult").unwrap(),
        &applied.outcome.result
    );
}

#[tokio::test]
async fn rollback_after_001_and_003_restores_the_state_001_left() {
    let t = fresh_db("m003_rollback_001").await;
    insert_users(&t, mixed_users()).await;
    runner(&t, |n| n == 1, options())
        .run_pending()
        .await
        .unwrap();
    let after_001 = t.all("users").await;
    let runner = with_001(&t, options());
    runner.run_pending().await.unwrap();

    let applied = runner.rollback_last().await.unwrap();
    assert_eq!(applied.name, NAME);
    assert_identical(&t.all("users").await, &after_001);
    assert_eq!(
        t.status("001_add_withdrawal_fields_to_users").await,
        "completed",
        "only the last migration is rolled back"
    );
}

#[tokio::test]
async fn rollback_leaves_a_user_changed_after_up_and_reports_the_conflict() {
    let t = fresh_db("m003_conflict").await;
    insert_users(&t, mixed_users()).await;
    let before = t.all("users").await;
    let runner = only_003(&t, options());
    runner.run_pending().await.unwrap();
    let migrated = t.all("users").await;

    // The application pays out to alice after the migration.
    let alice = Bson::String("alice".into());
    t.db.collection::<Document>("users")
        .update_one(
            doc! { "_id": alice.clone() },
            doc! { "$set": { "withdrawableBalance": 999 } },
        )
        .await
        .unwrap();

    let applied = runner.rollback_last().await.unwrap();
    let result = &applied.outcome.result;
    assert_eq!(result.get_i64("conflicts").unwrap(), 1, "{result}");
    assert_eq!(
        result.get_array("conflictSamples").unwrap(),
        &vec![alice.clone()]
    );
    assert!(
        applied.outcome.message.contains("1 user(s) changed since"),
        "{}",
        applied.outcome.message
    );
    let record = t.record(NAME).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "rolled_back");
    let stored = record.get_document("rollbackResult").unwrap();
    assert_eq!(stored.get_i64("conflicts").unwrap(), 1);
    assert_eq!(
        stored.get_array("conflictSamples").unwrap(),
        &vec![alice.clone()]
    );

    // Alice keeps the application's 999 (and what the migration gave her otherwise); everyone
    // else is back to exactly their state before `up`.
    let after = t.all("users").await;
    let mut alice_now = find(&migrated, &alice).clone();
    alice_now.insert("withdrawableBalance", 999);
    assert_eq!(bytes(find(&after, &alice)), bytes(&alice_now));
    let others = |docs: &[Document]| -> Vec<Document> {
        docs.iter()
            .filter(|d| d.get("_id") != Some(&alice))
            .cloned()
            .collect()
    };
    assert_identical(&others(&after), &others(&before));
}

#[tokio::test]
async fn dry_run_writes_nothing_and_reports_counts_and_samples() {
    let t = fresh_db("m003_dry").await;
    insert_users(&t, mixed_users()).await;
    t.db.collection::<Document>("withdrawals")
        .insert_one(doc! { "_id": 1, "userId": 1, "amount": 5.0, "status": "pending" })
        .await
        .unwrap();
    let names_before = {
        let mut n = t.db.list_collection_names().await.unwrap();
        n.sort();
        n
    };
    let before = snapshot(&t).await;
    let indexes_before: Vec<String> =
        t.db.collection::<Document>("users")
            .list_index_names()
            .await
            .unwrap();

    // Every compiled migration, dry: 001 and 002 report too, 003 sees the data as it is.
    let report = runner(
        &t,
        |n| n <= 3,
        RunOptions {
            dry_run: true,
            ..options()
        },
    )
    .run_pending()
    .await
    .unwrap();
    assert!(report.dry_run);
    let names: Vec<&str> = report.applied.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "001_add_withdrawal_fields_to_users",
            "002_create_withdrawal_indexes",
            NAME
        ]
    );
    let outcome = &report.applied[2].outcome;
    assert!(
        outcome.message.starts_with("would set"),
        "{}",
        outcome.message
    );
    let result = &outcome.result;
    let users = mixed_users().len() as i64;
    // Candidates: all but user 7 (moved). Invalid: 6 and carol. The rest would change.
    assert_eq!(result.get_i64("scanned").unwrap(), users - 1, "{result}");
    assert_eq!(result.get_i64("invalid").unwrap(), 2, "{result}");
    assert_eq!(result.get_i64("modified").unwrap(), users - 3, "{result}");
    let samples = result.get_array("samples").unwrap();
    assert_eq!(samples.len(), 3, "{result}");
    let first = samples[0].as_document().unwrap();
    assert_eq!(first.get("_id"), Some(&Bson::Int32(1)));
    assert_eq!(
        first.get_document("before").unwrap(),
        &doc! { "_id": 1, "affiliateEarnings": 123.45 }
    );
    assert_eq!(
        first.get_document("after").unwrap(),
        &doc! { "_id": 1, "affiliateEarnings": 123.45, "withdrawableBalance": 61.72, "totalWithdrawn": 0, "pendingWithdrawals": 0 }
    );

    // Nothing written anywhere: same collections, same documents, no index, no record, no lock.
    let mut names_after = t.db.list_collection_names().await.unwrap();
    names_after.sort();
    assert_eq!(names_after, names_before);
    let after = snapshot(&t).await;
    assert_eq!(after.len(), before.len());
    for ((name_a, docs_a), (name_b, docs_b)) in after.iter().zip(&before) {
        assert_eq!(name_a, name_b);
        assert_identical(docs_a, docs_b);
    }
    let indexes_after: Vec<String> =
        t.db.collection::<Document>("users")
            .list_index_names()
            .await
            .unwrap();
    assert_eq!(indexes_after, indexes_before);
    let chunks: Vec<Document> =
        t.db.collection::<Document>(BEFORE_IMAGES)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
    assert!(chunks.is_empty());
}

/// Amounts of every kind and shape: whole cents, sub-cent fractions, ties, long fractions that
/// do not survive 15 digits, integers of both widths, Decimal128 at several exponents.
fn many_amounts(n: u64) -> Vec<Bson> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let r = next();
            match i % 8 {
                0 | 1 => Bson::Double((r % 10_000_000) as f64 / 100.0),
                2 => Bson::Double((r % 100_000_000) as f64 / 1000.0),
                3 => Bson::Double((r % 1_000_000) as f64 / 7.0),
                4 => Bson::Int32((r % 1_000_000) as i32),
                5 => Bson::Int64((r % 100_000_000_000) as i64),
                6 => dec(&format!("{}.{:02}", r % 1_000_000, r % 100)),
                _ => dec(&format!("{}.{:05}", r % 10_000, r % 100_000)),
            }
        })
        .collect()
}

#[tokio::test]
async fn server_fast_path_agrees_with_the_exact_rule_on_thousands_of_amounts() {
    let t = fresh_db("fastpath").await;
    let amounts = many_amounts(4000);
    let users: Vec<Document> = amounts
        .iter()
        .enumerate()
        .map(|(i, e)| doc! { "_id": i as i64, "affiliateEarnings": e.clone() })
        .collect();
    let on_server = users
        .iter()
        .filter(|u| mongo_migrate::registry::generated::m003::exact_on_server(u))
        .count();
    assert!(
        on_server > 3000,
        "most amounts take the server path ({on_server})"
    );
    assert!(
        on_server < 4000,
        "some take the per-document path ({on_server})"
    );
    insert_users(&t, users).await;
    let options = RunOptions {
        batch_size: 500,
        ..options()
    };
    only_003(&t, options).run_pending().await.unwrap();
    let stored: Vec<Document> = t.all("users").await;
    for (user, earnings) in stored.iter().zip(&amounts) {
        let Earnings::Half(expected) = classify(Some(earnings)) else {
            panic!("{earnings} is a valid amount")
        };
        let actual = user.get("withdrawableBalance").unwrap();
        // Compare the raw BSON: type and representation, not just the number.
        assert_eq!(
            bson_bytes(actual),
            bson_bytes(&expected),
            "{earnings:?}: stored {actual:?}, rule says {expected:?}"
        );
    }
}

fn bson_bytes(v: &Bson) -> Vec<u8> {
    mongodb::bson::to_vec(&doc! { "v": v.clone() }).unwrap()
}
