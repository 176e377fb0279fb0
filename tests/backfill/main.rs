//! The backfill pipeline end to end, through the `migrate` binary against a real server: resume
//! after SIGKILL and Ctrl-C, restart, mixed `_id` types, dry run, concurrent application writes,
//! throttling and the log file. Every interrupted run is compared document by document with an
//! uninterrupted reference run over identical data. The tests are grouped by concern, one module
//! each; this file holds the data and helpers they share.

#[path = "../common/mod.rs"]
mod common;

mod concurrency;
mod dry_run;
mod mixed_ids;
mod resume;
mod signals;
mod windows;

use common::{
    bytes, counters_of, fresh_db, load, migrate, read, result_of as result, spawn, text, Rng,
    TestDb, FIELDS, M001, M002, M003,
};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Decimal128, Document};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const COUNTRIES: [&str; 4] = ["NG", "KE", "GH", "ZA"];

/// Users of the SIGKILL test: 100k, so each backfill has ~200 checkpointed batches of 500 to be
/// killed between, with several in flight.
const SIGKILL_USERS: usize = 100_000;

// ---------------------------------------------------------------------------------------------
// Data

fn dec(s: &str) -> Bson {
    Bson::Decimal128(s.parse::<Decimal128>().unwrap())
}

/// `n` LMS users with every kind of `affiliateEarnings` the backfill meets (doubles, int32,
/// int64, Decimal128, missing, null, zeros of each type, invalid values), some already moved by
/// the application (non-zero balance) and some already carrying the fields at 0. `_id`s are
/// ObjectIds in an order unrelated to insertion order. Amounts are at least 1.00, so every valid
/// half is non-zero and a migrated user stops being a candidate.
fn users(n: usize, seed: u64) -> Vec<Document> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let mut oid = [0u8; 12];
            oid[..8].copy_from_slice(&rng.next().to_be_bytes());
            oid[8..].copy_from_slice(&(i as u32).to_be_bytes());
            let mut user = doc! {
                "_id": ObjectId::from_bytes(oid),
                "email": format!("user{i}@example.com"),
                "name": format!("User {i}"),
                "role": if i % 10 == 0 { "affiliate" } else { "student" },
                "createdAt": DateTime::from_millis(1_600_000_000_000 + i as i64 * 60_000),
                "profile": { "country": COUNTRIES[i % 4], "courses": (i % 7) as i32 },
            };
            let cents = 100 + rng.below(10_000_000) as i64;
            let earnings = match rng.below(100) {
                0..=24 => Some(Bson::Double(cents as f64 / 100.0)),
                25..=39 => Some(Bson::Int32((cents / 100) as i32)),
                40..=49 => Some(Bson::Int64(cents * 1000)),
                50..=64 => Some(dec(&format!("{}.{:02}", cents / 100, cents % 100))),
                65..=74 => None,
                75..=79 => Some(Bson::Null),
                80..=84 => Some(
                    [
                        Bson::Int32(0),
                        Bson::Double(0.0),
                        Bson::Int64(0),
                        dec("0.00"),
                    ][i % 4]
                        .clone(),
                ),
                85..=89 => Some(
                    [
                        Bson::String("12.50".into()),
                        Bson::Double(-5.0),
                        Bson::Boolean(true),
                    ][i % 3]
                        .clone(),
                ),
                _ => {
                    // Moved by the application: never a candidate of 003.
                    user.insert("withdrawableBalance", 250.0);
                    user.insert("totalWithdrawn", 100);
                    Some(Bson::Double(cents as f64 / 100.0))
                }
            };
            if let Some(earnings) = earnings {
                user.insert("affiliateEarnings", earnings);
            }
            if !user.contains_key("withdrawableBalance") {
                match rng.below(100) {
                    0..=4 => {
                        for f in FIELDS {
                            user.insert(f, 0);
                        }
                    }
                    5..=7 => {
                        user.insert("totalWithdrawn", 0);
                    }
                    _ => {}
                }
            }
            user
        })
        .collect()
}

/// `n` users lacking the withdrawal fields, each with non-zero earnings: every one is a candidate
/// of both backfills.
fn plain_users(n: usize) -> Vec<Document> {
    (0..n)
        .map(|i| {
            let mut oid = [7u8; 12];
            oid[8..].copy_from_slice(&(i as u32).to_be_bytes());
            doc! {
                "_id": ObjectId::from_bytes(oid),
                "email": format!("user{i}@example.com"),
                "affiliateEarnings": (i % 500 + 1) as f64 * 1.5,
            }
        })
        .collect()
}

/// A counter of a result or checkpoint (stored as int64).
fn n(d: &Document, key: &str) -> i64 {
    match d.get(key) {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        other => panic!("{key} is not an integer in {d}: {other:?}"),
    }
}

/// Byte-for-byte equality (types, values and field order), reporting the first difference.
fn assert_same_users(actual: &[Document], expected: &[Document]) {
    assert_eq!(actual.len(), expected.len(), "number of users");
    let differing: Vec<usize> = (0..actual.len())
        .filter(|&i| bytes(&actual[i]) != bytes(&expected[i]))
        .collect();
    if let Some(&i) = differing.first() {
        panic!(
            "{} user(s) differ from the uninterrupted reference run; first:\n  got      {}\n  expected {}",
            differing.len(),
            actual[i],
            expected[i]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary

async fn checkpoint(t: &TestDb, name: &str) -> Option<Document> {
    t.checkpoint(name).await
}

async fn scanned(t: &TestDb, name: &str) -> i64 {
    checkpoint(t, name).await.map_or(0, |cp| n(&cp, "scanned"))
}

async fn count(t: &TestDb, collection: &str) -> u64 {
    t.db.collection::<Document>(collection)
        .count_documents(doc! {})
        .await
        .unwrap()
}

fn history(record: &Document) -> Vec<String> {
    record
        .get_array("history")
        .unwrap()
        .iter()
        .map(|h| {
            h.as_document()
                .unwrap()
                .get_str("status")
                .unwrap()
                .to_string()
        })
        .collect()
}

/// What an uninterrupted `migrate up` makes of the same data, on a database of its own.
struct Reference {
    users: Vec<Document>,
    m001: Document,
    m003: Document,
}

async fn reference(data: &[Document], extra: &[&str]) -> Reference {
    let r = fresh_db("reference").await;
    load(&r, data).await;
    let mut args = vec!["up", "--no-progress"];
    args.extend_from_slice(extra);
    let out = migrate(&r, &args).await;
    assert_eq!(out.status.code(), Some(0), "reference run: {}", text(&out));
    let reference = Reference {
        users: r.all("users").await,
        m001: result(&r.record(M001).await.unwrap()).clone(),
        m003: result(&r.record(M003).await.unwrap()).clone(),
    };
    r.db.drop().await.unwrap();
    reference
}

/// 003's counters never overlap: every scanned user is exactly one of these.
fn assert_counters_add_up(result: &Document) {
    assert_eq!(
        n(result, "scanned"),
        n(result, "modified")
            + n(result, "unchanged")
            + n(result, "invalid")
            + n(result, "conflicts"),
        "{result}"
    );
}
