//! The backfill pipeline end to end, through the `migrate` binary against a real server: resume
//! after SIGKILL and Ctrl-C, restart, mixed `_id` types, dry run, concurrent application writes,
//! throttling and the log file. Every interrupted run is compared document by document with an
//! uninterrupted reference run over identical data.

mod common;

use common::{bytes, fresh_db, load, migrate, read, result_of as result, spawn, text, Rng, TestDb};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Decimal128, Document};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const M001: &str = "001_add_withdrawal_fields_to_users";
const M002: &str = "002_create_withdrawal_indexes";
const M003: &str = "003_migrate_existing_user_balances";
const FIELDS: [&str; 3] = [
    "withdrawableBalance",
    "totalWithdrawn",
    "pendingWithdrawals",
];
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
    t.record(name)
        .await
        .and_then(|r| r.get_document("checkpoint").ok().cloned())
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

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn resumes_after_sigkill_without_double_applying_or_skipping() {
    let data = users(SIGKILL_USERS, 1);
    let total = data.len() as i64;
    let reference = reference(&data, &["--batch-size", "5000"]).await;
    let t = fresh_db("sigkill").await;
    load(&t, &data).await;

    let base = [
        "up",
        "--batch-size",
        "500",
        "--concurrency",
        "4",
        "--no-progress",
    ];
    let resume: Vec<&str> = base.iter().copied().chain(["--resume"]).collect();
    // (migration whose checkpoint decides, share of users scanned, extra delay): the kills land
    // in the middle of 001, early in 003, and late in 003, a few ms after a checkpoint so some
    // land while batches are being written.
    let kills = [(M001, 0.4, 0), (M003, 0.15, 3), (M003, 0.6, 11)];
    for (trial, &(name, share, delay_ms)) in kills.iter().enumerate() {
        let mut run = spawn(&t, if trial == 0 { &base } else { &resume });
        let pid = run.pid();
        let threshold = (total as f64 * share) as i64;
        run.wait_until(&format!("{name} scanned {threshold}"), async || {
            scanned(&t, name).await >= threshold
        })
        .await;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let out = run.kill().await;
        assert_eq!(
            out.status.code(),
            None,
            "killed by a signal: {}",
            text(&out)
        );
        if trial > 0 {
            let log = text(&out);
            assert!(
                log.contains("took over the migration lock") && log.contains("its process is gone"),
                "trial {trial}: the dead holder's lock is taken over at once:\n{log}"
            );
            assert!(
                log.contains("migration resuming"),
                "trial {trial}: continues from the checkpoint:\n{log}"
            );
        }

        let record = t.record(name).await.unwrap();
        assert_eq!(
            record.get_str("status").unwrap(),
            "running",
            "trial {trial}: killed mid-run"
        );
        let done = scanned(&t, name).await;
        assert!(
            threshold <= done && done < total,
            "trial {trial}: checkpoint {done} of {total}"
        );
        let lock =
            t.db.collection::<Document>("migrations_lock")
                .find_one(doc! {})
                .await
                .unwrap()
                .expect("a SIGKILLed run leaves its lock behind");
        assert_eq!(lock.get_i64("pid").unwrap(), i64::from(pid));
    }

    // Without --resume the interrupted migration is not touched.
    let refused = migrate(&t, &base).await;
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(text(&refused).contains("--resume"), "{}", text(&refused));

    let out = migrate(&t, &resume).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the final resume succeeds (4 would mean the dead run's lock blocked it):\n{}",
        text(&out)
    );
    assert_same_users(&t.all("users").await, &reference.users);

    for name in [M001, M002, M003] {
        let record = t.record(name).await.unwrap();
        assert_eq!(record.get_str("status").unwrap(), "completed", "{name}");
        assert!(record.get("checkpoint").is_none(), "{name}: {record}");
        assert_eq!(history(&record).last().unwrap(), "completed", "{name}");
    }
    assert_eq!(count(&t, "migrations_lock").await, 0);

    // Counters. Batches written but not yet checkpointed when a SIGKILL lands (at most
    // `concurrency` = 4 batches of 500) are not in the saved counters, and their users are no
    // longer candidates afterwards, so they are missing from `scanned` and `modified`; users
    // needing no change and invalid ones stay candidates and are counted exactly once. The
    // killed run's last batches may still be executing on the server when the resumed run reads
    // their users: those writes are this migration's own, never conflicts.
    let lost_per_kill = 4 * 500;
    let m003 = result(&t.record(M003).await.unwrap()).clone();
    let expected = &reference.m003;
    assert_counters_add_up(&m003);
    for key in ["unchanged", "invalid", "conflicts"] {
        assert_eq!(n(&m003, key), n(expected, key), "003 {key}: {m003}");
    }
    assert_eq!(
        m003.get("invalidReasons"),
        expected.get("invalidReasons"),
        "{m003}"
    );
    assert_eq!(
        m003.get("invalidSamples"),
        expected.get("invalidSamples"),
        "{m003}"
    );
    let lost = n(expected, "modified") - n(&m003, "modified");
    assert!(
        (0..=2 * lost_per_kill).contains(&lost),
        "003 modified {} vs {} uninterrupted (two kills in 003)",
        n(&m003, "modified"),
        n(expected, "modified")
    );
    assert_eq!(n(&m003, "scanned"), n(expected, "scanned") - lost);

    let m001 = result(&t.record(M001).await.unwrap()).clone();
    let lost_users = n(&reference.m001, "usersUpdated") - n(&m001, "usersUpdated");
    assert!(
        (0..=lost_per_kill).contains(&lost_users),
        "001 {m001} vs {}",
        reference.m001
    );
    eprintln!("users whose write a SIGKILL cut out of the counters: 001 {lost_users}, 003 {lost}");
}

#[tokio::test]
async fn ctrl_c_stops_after_in_flight_batches_saves_checkpoint_and_exits_130() {
    let data = users(15_000, 2);
    let total = data.len() as i64;
    let reference = reference(&data, &[]).await;
    let t = fresh_db("ctrlc").await;
    load(&t, &data).await;

    // At most 5000 users/s: 001 alone takes at least 3 s.
    let mut run = spawn(&t, &["up", "--max-docs-per-sec", "5000", "--no-progress"]);
    run.wait_until("a checkpoint of 001", async || {
        scanned(&t, M001).await >= 2000
    })
    .await;
    run.interrupt();
    let out = run.output().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        stderr.contains("resume with: migrate up --max-docs-per-sec 5000 --no-progress --resume"),
        "{stderr}"
    );

    let record = t.record(M001).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "running");
    assert_eq!(history(&record), ["interrupted"]);
    let cp = record.get_document("checkpoint").unwrap();
    let done = n(cp, "scanned");
    assert!(
        2000 <= done && done < total,
        "checkpoint {done} of {total}: {cp}"
    );
    assert_eq!(
        done % 1000,
        0,
        "only whole batches are checkpointed (1000 candidates each, all of them drained): {cp}"
    );
    assert_eq!(n(cp, "batches"), done / 1000, "{cp}");
    assert!(cp.get_bool("hasLastId").unwrap(), "{cp}");
    assert!(
        t.record(M002).await.is_none() && t.record(M003).await.is_none(),
        "nothing after the interrupted migration ran"
    );
    assert_eq!(
        count(&t, "migrations_lock").await,
        0,
        "the lock is released"
    );

    let refused = migrate(&t, &["up", "--no-progress"]).await;
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(text(&refused).contains("--resume"), "{}", text(&refused));
    assert_eq!(
        t.record(M001)
            .await
            .unwrap()
            .get_document("checkpoint")
            .unwrap(),
        cp,
        "a refused run keeps the checkpoint"
    );

    let out = migrate(&t, &["up", "--resume", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("resuming backfill from checkpoint"),
        "{}",
        text(&out)
    );
    assert_same_users(&t.all("users").await, &reference.users);
    // A graceful stop loses nothing: the counters match the uninterrupted run exactly.
    let m001 = t.record(M001).await.unwrap();
    assert_eq!(result(&m001), &reference.m001);
    assert_eq!(history(&m001), ["interrupted", "completed"]);
    assert_eq!(result(&t.record(M003).await.unwrap()), &reference.m003);
}

#[tokio::test]
async fn restart_discards_the_checkpoint_and_still_ends_identical() {
    let data = users(8_000, 3);
    let reference = reference(&data, &["--batch-size", "500"]).await;
    let t = fresh_db("restart").await;
    load(&t, &data).await;

    let mut run = spawn(
        &t,
        &[
            "up",
            "--batch-size",
            "500",
            "--max-docs-per-sec",
            "3000",
            "--no-progress",
        ],
    );
    run.wait_until("a checkpoint of 003", async || {
        scanned(&t, M003).await >= 2000
    })
    .await;
    run.interrupt();
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let cp = checkpoint(&t, M003).await.expect("003 checkpoint");
    let modified_before = n(&cp, "modified");
    assert!(modified_before > 0, "{cp}");

    let restart = ["up", "--restart", "--batch-size", "500", "--no-progress"];
    let out = migrate(&t, &restart).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = text(&out);
    assert!(
        log.contains(&format!("migration started migration=\"{M003}\"")),
        "{log}"
    );
    assert!(!log.contains("resuming"), "--restart never resumes:\n{log}");
    assert!(
        !log.contains(M001) && !log.contains(M002),
        "only the interrupted migration runs again:\n{log}"
    );
    assert_same_users(&t.all("users").await, &reference.users);

    let record = t.record(M003).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    assert!(record.get("checkpoint").is_none());
    assert_eq!(history(&record), ["interrupted", "completed"]);
    // Started over from the first `_id` with fresh counters: it scanned every user still a
    // candidate (those the first run already migrated are not), i.e. the uninterrupted count
    // minus what the interrupted run modified, and modified the rest. A resume would have
    // carried the checkpoint's counters and skipped the users before its last `_id`.
    let m003 = result(&record);
    let expected = &reference.m003;
    assert_counters_add_up(m003);
    assert_eq!(
        n(m003, "modified"),
        n(expected, "modified") - modified_before
    );
    assert_eq!(n(m003, "scanned"), n(expected, "scanned") - modified_before);
    for key in ["unchanged", "invalid", "conflicts"] {
        assert_eq!(n(m003, key), n(expected, key), "003 {key}: {m003}");
    }
}

#[tokio::test]
async fn mixed_id_types_are_all_processed() {
    // Earnings with the balances 003 gives them (halved exactly, to the cent).
    let earnings = [
        (Some(Bson::Double(100.0)), Bson::Double(50.0)),
        (Some(Bson::Int32(7)), Bson::Double(3.5)),
        (Some(Bson::Int64(250)), Bson::Double(125.0)),
        (Some(dec("10.50")), dec("5.25")),
        (Some(Bson::Double(0.3)), Bson::Double(0.15)),
        (None, Bson::Int32(0)),
        (Some(Bson::Null), Bson::Int32(0)),
        (Some(Bson::Int32(0)), Bson::Int32(0)),
    ];
    let mut ids: Vec<Bson> = Vec::new();
    ids.extend((-3..9).map(Bson::Int32));
    ids.extend((0..5).map(|k| Bson::Int64(10_000_000_000 + k)));
    ids.extend((0..5).map(|k| Bson::Double(k as f64 + 0.5)));
    ids.push(dec("100.25"));
    ids.extend(["", "a", "user-17", "Z", "zz", "é"].map(|s| Bson::String(s.into())));
    ids.extend((0..6).map(|k| Bson::ObjectId(ObjectId::from_bytes([k as u8 + 1; 12]))));
    ids.extend([
        Bson::Document(doc! {}),
        Bson::Document(doc! { "tenant": "acme", "n": 1 }),
        Bson::Document(doc! { "tenant": "acme", "n": 2 }),
        Bson::Document(doc! { "a": 1 }),
    ]);
    ids.extend([Bson::Boolean(false), Bson::Boolean(true)]);
    ids.push(Bson::Null);
    ids.extend([
        Bson::DateTime(DateTime::from_millis(0)),
        Bson::DateTime(DateTime::from_millis(1_700_000_000_000)),
    ]);
    let mut rng = Rng(4);
    // (user, the balance 003 must give it)
    let mut people: Vec<(Document, Bson)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (earnings, balance) = earnings[i % earnings.len()].clone();
            let mut user = doc! { "_id": id.clone(), "email": format!("user{i}@example.com") };
            if let Some(e) = earnings {
                user.insert("affiliateEarnings", e);
            }
            (user, balance)
        })
        .collect();
    // Interleave the types in insertion order.
    for i in (1..people.len()).rev() {
        people.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let docs: Vec<Document> = people.iter().map(|(u, _)| u.clone()).collect();
    let expected: Vec<(Bson, Bson)> = people
        .iter()
        .map(|(u, b)| (u.get("_id").unwrap().clone(), b.clone()))
        .collect();
    let total = docs.len() as i64;
    let valid = expected
        .iter()
        .filter(|(_, b)| *b != Bson::Int32(0))
        .count() as i64;
    // Batches of 3 never cross a type bracket: 12+5+5+1 numbers, 6 strings, 4 objects,
    // 6 ObjectIds, 2 booleans, 1 null, 2 dates.
    let batches: i64 = [23, 6, 4, 6, 2, 1, 2].iter().map(|c| (c + 2) / 3).sum();

    let check = async |t: &TestDb| {
        let all = t.all("users").await;
        assert_eq!(all.len(), expected.len());
        for (id, balance) in &expected {
            let user = all
                .iter()
                .find(|u| u.get("_id") == Some(id))
                .unwrap_or_else(|| panic!("user {id} is gone"));
            assert_eq!(user.get("withdrawableBalance"), Some(balance), "{user}");
            assert_eq!(user.get("totalWithdrawn"), Some(&Bson::Int32(0)), "{user}");
            assert_eq!(
                user.get("pendingWithdrawals"),
                Some(&Bson::Int32(0)),
                "{user}"
            );
        }
    };

    // Uninterrupted: every bracket walked, in batches that stop at bracket ends.
    let t = fresh_db("mixedids").await;
    load(&t, &docs).await;
    let out = migrate(&t, &["up", "--batch-size", "3", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    check(&t).await;
    let m001 = t.record(M001).await.unwrap();
    assert_eq!(
        result(&m001),
        &doc! { "usersUpdated": total, "fieldsAdded": 3 * total, "batches": batches }
    );
    let m003 = result(&t.record(M003).await.unwrap()).clone();
    assert_eq!(n(&m003, "scanned"), total, "{m003}");
    assert_eq!(n(&m003, "modified"), valid, "{m003}");
    assert_eq!(n(&m003, "unchanged"), total - valid, "{m003}");
    assert_eq!(n(&m003, "batches"), batches, "{m003}");

    // Killed inside a later bracket of 003, then resumed from a checkpoint whose last `_id` is
    // not an ObjectId.
    let k = fresh_db("mixedkill").await;
    load(&k, &docs).await;
    let mut run = spawn(
        &k,
        &[
            "up",
            "--batch-size",
            "3",
            "--concurrency",
            "2",
            "--max-docs-per-sec",
            "40",
            "--no-progress",
        ],
    );
    run.wait_until("003 past the string bracket", async || {
        checkpoint(&k, M003)
            .await
            .is_some_and(|cp| cp.get_i32("bracket").unwrap() >= 5)
    })
    .await;
    run.kill().await;
    let cp = checkpoint(&k, M003).await.unwrap();
    assert_eq!(k.status(M003).await, "running");
    // The checkpoint names the bracket and a last `_id` of that bracket's type.
    let last_type_matches = matches!(
        (cp.get_i32("bracket").unwrap(), cp.get("lastId").unwrap()),
        (5, Bson::Document(_))
            | (7, Bson::ObjectId(_))
            | (8, Bson::Boolean(_))
            | (9, Bson::DateTime(_))
    );
    assert!(
        last_type_matches,
        "killed in a later bracket, before the end: {cp}"
    );
    let out = migrate(
        &k,
        &["up", "--resume", "--batch-size", "3", "--no-progress"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    check(&k).await;
}

/// Everything in the database: collections with their options, documents and indexes.
async fn snapshot(t: &TestDb) -> Vec<(String, Document, Vec<Document>, Vec<Document>)> {
    let first_batch = |reply: Document| -> Vec<Document> {
        reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|d| d.as_document().unwrap().clone())
            .collect()
    };
    let mut collections = first_batch(
        t.db.run_command(doc! { "listCollections": 1 })
            .await
            .unwrap(),
    );
    collections.sort_by_key(|c| c.get_str("name").unwrap().to_string());
    let mut out = Vec::new();
    for info in collections {
        let name = info.get_str("name").unwrap().to_string();
        let mut indexes = first_batch(
            t.db.run_command(doc! { "listIndexes": &name })
                .await
                .unwrap(),
        );
        indexes.sort_by_key(|i| i.get_str("name").unwrap().to_string());
        out.push((name.clone(), info, t.all(&name).await, indexes));
    }
    out
}

#[tokio::test]
async fn dry_run_writes_nothing_at_all() {
    let t = fresh_db("dryrun").await;
    let mut docs = Vec::new();
    let mut user = |i: usize, extra: Document| {
        let mut u = doc! { "_id": i as i32, "email": format!("u{i}@example.com") };
        u.extend(extra);
        docs.push(u);
    };
    let zeros = doc! { "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0 };
    // 100 lacking the fields, with earnings: 001 adds 3 fields, 003 sets a balance.
    for i in 0..100 {
        user(i, doc! { "affiliateEarnings": (i + 1) as f64 * 2.5 });
    }
    // 40 lacking the fields, without earnings: 001 adds 3, 003 sets the zeros.
    for i in 100..140 {
        user(i, doc! {});
    }
    // 20 with the fields at 0 and earnings: 003 sets a balance.
    for i in 140..160 {
        let mut u = zeros.clone();
        u.insert("affiliateEarnings", (i as i32 - 139) * 10);
        user(i, u);
    }
    // 20 with the fields at 0 and no earnings: nothing to do.
    for i in 160..180 {
        user(i, zeros.clone());
    }
    // 10 moved by the application, lacking pendingWithdrawals: 001 adds 1; 003 skips them.
    for i in 180..190 {
        user(
            i,
            doc! { "affiliateEarnings": 80.0, "withdrawableBalance": 300.0, "totalWithdrawn": 10 },
        );
    }
    // 10 lacking the fields with invalid earnings: 001 adds 3; 003 reports them.
    for i in 190..200 {
        user(i, doc! { "affiliateEarnings": "a lot" });
    }
    load(&t, &docs).await;
    t.db.collection::<Document>("withdrawals")
        .insert_many((0..5).map(|i| doc! { "userId": i, "amount": 10.0, "status": "pending" }))
        .await
        .unwrap();

    let before = snapshot(&t).await;
    let out = migrate(&t, &["up", "--dry-run", "--batch-size", "50"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = snapshot(&t).await;
    assert_eq!(
        after.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["users", "withdrawals"],
        "no migrations, migrations_lock or migrations_before_images collection"
    );
    assert!(before == after, "the dry run changed the database");

    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("would apply {M001} in "),
        "would add 460 missing field(s) to 160 user(s)".into(),
        format!("would apply {M002} in "),
        "would create 15 index(es), 0 already present".into(),
        format!("would apply {M003} in "),
        "would set withdrawal balances of 160 user(s); 20 already right, 10 invalid left untouched, 0 changed concurrently".into(),
        "dry run: nothing was written".into(),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
    // The JSON after 003's line: its counters and the first changes, before and after.
    let json = stdout
        .split(&format!("would apply {M003}"))
        .nth(1)
        .and_then(|rest| rest.split_once('\n'))
        .map(|(_, rest)| rest.split("dry run:").next().unwrap())
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(json).expect(json);
    assert_eq!(result["scanned"], 190);
    assert_eq!(result["modified"], 160);
    assert_eq!(result["unchanged"], 20);
    assert_eq!(result["invalid"], 10);
    assert_eq!(result["invalidReasons"]["string"], 10, "{result}");
    let samples = result["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 3, "{result}");
    for (i, sample) in samples.iter().enumerate() {
        let earnings = (i + 1) as f64 * 2.5;
        assert_eq!(sample["_id"], i, "{sample}");
        assert_eq!(sample["before"]["affiliateEarnings"], earnings, "{sample}");
        assert!(sample["before"].get("withdrawableBalance").is_none());
        assert_eq!(sample["after"]["withdrawableBalance"], earnings / 2.0);
        assert_eq!(sample["after"]["totalWithdrawn"], 0);
        assert_eq!(sample["after"]["pendingWithdrawals"], 0);
    }
}

#[tokio::test]
async fn concurrent_application_writes_are_preserved() {
    let data = users(10_000, 6);
    let reference = reference(&data, &[]).await;
    let t = fresh_db("concurrent").await;
    load(&t, &data).await;
    let mut order: Vec<ObjectId> = data
        .iter()
        .map(|u| u.get_object_id("_id").unwrap())
        .collect();
    order.sort();

    // At most 2500 users/s: each backfill takes 4 s or more.
    let mut run = spawn(
        &t,
        &[
            "up",
            "--batch-size",
            "200",
            "--max-docs-per-sec",
            "2500",
            "--no-progress",
        ],
    );
    let coll = t.db.collection::<Document>("users");
    let mut rng = Rng(60);
    let mut touched: HashSet<ObjectId> = HashSet::new();
    // Application writes while 001 runs and while 003 runs, 10 users every 25 ms, each time
    // among the 800 users just past the running backfill's checkpoint: the ones its batches in
    // flight have read or are about to read.
    let quota = [100, 200];
    let mut during = [0usize; 2];
    while during != quota && !run.has_exited() {
        let mut target = None;
        for (phase, name) in [(1, M003), (0, M001)] {
            if let Some(cp) = checkpoint(&t, name).await {
                if let Some(Bson::ObjectId(last)) = cp.get("lastId") {
                    target = Some((phase, order.partition_point(|id| id <= last)));
                }
                break;
            }
        }
        if let Some((phase, at)) = target.filter(|(p, _)| during[*p] < quota[*p]) {
            let mut wave = Vec::new();
            while wave.len() < 10 {
                let id = order[(at + rng.below(800) as usize) % order.len()];
                if touched.insert(id) {
                    wave.push(Bson::ObjectId(id));
                }
            }
            coll.update_many(
                doc! { "_id": { "$in": wave } },
                doc! { "$set": { "withdrawableBalance": 777, "totalWithdrawn": 5 } },
            )
            .await
            .unwrap();
            during[phase] += 10;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        during, quota,
        "the writes landed while the backfills ran (each takes 4 s or more)"
    );

    let all = t.all("users").await;
    let originals: HashMap<ObjectId, &Document> = data
        .iter()
        .map(|u| (u.get_object_id("_id").unwrap(), u))
        .collect();
    let mut migrated = Vec::new();
    let mut expected = Vec::new();
    for (i, user) in all.iter().enumerate() {
        let id = user.get_object_id("_id").unwrap();
        let original = originals[&id];
        if touched.contains(&id) {
            assert_eq!(
                user.get("withdrawableBalance"),
                Some(&Bson::Int32(777)),
                "{user}"
            );
            assert_eq!(user.get("totalWithdrawn"), Some(&Bson::Int32(5)), "{user}");
            assert_eq!(
                user.get("pendingWithdrawals"),
                Some(&Bson::Int32(0)),
                "{user}"
            );
            let mut rest = user.clone();
            let mut original_rest = original.clone();
            for f in FIELDS {
                rest.remove(f);
                original_rest.remove(f);
            }
            assert_eq!(rest, original_rest, "nothing else changed");
        } else {
            migrated.push(user.clone());
            expected.push(reference.users[i].clone());
        }
    }
    assert_eq!(migrated.len(), all.len() - touched.len());
    assert_same_users(&migrated, &expected);

    let record = t.record(M003).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    let m003 = result(&record);
    assert_counters_add_up(m003);
    eprintln!("003 result with concurrent writes: {m003}");
}

#[tokio::test]
async fn throttle_bounds_the_rate() {
    let t = fresh_db("throttle").await;
    load(&t, &plain_users(4_000)).await;
    let (rate, batch, total) = (1000.0, 200.0, 4000.0);
    let clock = Instant::now();
    let out = migrate(
        &t,
        &[
            "up",
            "--max-docs-per-sec",
            "1000",
            "--batch-size",
            "200",
            "--no-progress",
        ],
    )
    .await;
    let elapsed = clock.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Both backfills scan all 4000 users: the last batch of each may start only after
    // (total - batch) / rate = 3.8 s. Lower bounds only: a slow machine may take longer.
    let floor_ms = ((total - batch) / rate * 1000.0) as i64 - 50;
    for name in [M001, M003] {
        let record = t.record(name).await.unwrap();
        assert_eq!(n(result(&record), "batches"), 20, "{record}");
        let ms = record.get_i64("durationMs").unwrap();
        assert!(
            ms >= floor_ms,
            "{name} took {ms} ms, under the throttle's {floor_ms} ms"
        );
    }
    assert!(
        elapsed >= Duration::from_millis(2 * floor_ms as u64),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn log_file_follows_the_run() {
    let t = fresh_db("logfile").await;
    load(&t, &plain_users(1_200)).await;
    // 200 users/s: each backfill runs 6 s, past the 5 s between progress lines.
    let out = migrate(
        &t,
        &[
            "up",
            "--max-docs-per-sec",
            "200",
            "--batch-size",
            "100",
            "--no-progress",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = read(&t.log_file());
    let lines: Vec<&str> = log.lines().collect();
    let find = |what: &str, after: usize| -> usize {
        lines
            .iter()
            .enumerate()
            .skip(after)
            .find(|(_, l)| l.contains(what))
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {what:?} after line {after} of the log:\n{log}"))
    };
    let mut at = find("lock acquired", 0);
    for (name, label) in [(M001, "001 withdrawal fields"), (M003, "003 balances")] {
        at = find(&format!("migration started migration=\"{name}\""), at);
        let mid = find(&format!("{label}: "), at);
        assert!(
            !lines[mid].contains("1200/1200"),
            "a progress line while {name} runs: {}",
            lines[mid]
        );
        assert!(lines[mid].contains(" INFO "), "{}", lines[mid]);
        at = find(&format!("{label}: 1200/1200 (100.0%)"), mid);
        at = find("migration completed", at);
        assert!(lines[at].contains(name), "{}", lines[at]);
    }
    find("lock released", at);
    for line in [
        "migration completed: added 3600 missing field(s) to 1200 user(s)",
        "migration completed: set withdrawal balances of 1200 user(s); 0 already right",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
}
