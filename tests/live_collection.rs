//! Backfills on a live collection: the application keeps writing while `migrate up` runs.
//!
//! A writer task changes `affiliateEarnings` of random users (many from 0 to positive, the case
//! the scan alone misses), and in some trials also resets balances 003 already wrote and writes a
//! field 003 does not read, while the `migrate` binary runs 003. Afterwards every user with valid
//! earnings must hold exactly the balance the rounding rule gives for their current earnings, and
//! `rollback` must put every user's withdrawal fields back to what they were before 003. Also:
//! SIGKILL during the scan and during the drain, the catch-up by passes, rollback of a failed
//! 003, every `_id` type, and values the server cannot compute.

mod common;

use common::{
    bytes, fresh_db, load, migrate, read, text, Rng, Running, TestDb, FIELDS, M001, M002, M003,
};
use mongo_migrate::money::{classify, Earnings};
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Bson, Document};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Users of the live trials: enough for a scan of several seconds at the throttle below.
const USERS: i64 = 8_000;
/// The throttle that keeps the scan running long enough for the writer to overlap it.
const RATE: &str = "4000";

/// Users with integer `_id`s: 40% without earnings (0, missing or null), the rest with amounts
/// of several numeric types, 5% whose balance the application already moved.
fn users(n: i64, seed: u64) -> Vec<Document> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let mut d = doc! { "_id": i, "name": format!("user {i}") };
            match rng.next() % 10 {
                0..=2 => {
                    d.insert("affiliateEarnings", 0.0);
                }
                3 => {}
                4 => {
                    d.insert("affiliateEarnings", (rng.next() % 100_000) as i32 + 100);
                }
                _ => {
                    d.insert(
                        "affiliateEarnings",
                        (rng.next() % 10_000_000 + 100) as f64 / 100.0,
                    );
                }
            }
            if rng.next() % 20 == 0 {
                d.insert("withdrawableBalance", 12.5);
                d.insert("totalWithdrawn", 3);
                d.insert("pendingWithdrawals", 0);
            }
            d
        })
        .collect()
}

/// The withdrawal fields of every user, by `_id` (extended JSON, type-exact).
async fn withdrawal_fields(t: &TestDb) -> HashMap<String, Document> {
    t.all("users")
        .await
        .into_iter()
        .map(|u| {
            let mut fields = Document::new();
            for f in FIELDS {
                if let Some(v) = u.get(f) {
                    fields.insert(f, v.clone());
                }
            }
            (id_key(u.get("_id").unwrap()), fields)
        })
        .collect()
}

fn id_key(id: &Bson) -> String {
    bytes(&doc! { "id": id.clone() })
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the application did to users, as its writer logged it: the checks below compute what
/// each user must hold from this log and the data as loaded, never from anything 003 recorded.
#[derive(Default)]
struct AppLog {
    /// Users whose withdrawal fields the application set (a withdrawal started, a balance reset
    /// that changed it): the three fields as its last such write left them. Such a user is the
    /// application's, and no migration may change them again.
    moved: HashMap<String, Document>,
    /// Users it inserted, with the withdrawal fields they were inserted with.
    inserted: HashMap<String, Document>,
    /// Users it deleted.
    deleted: std::collections::HashSet<String>,
    /// When each user was last written, as acknowledged (milliseconds since the epoch).
    last_write: HashMap<String, i64>,
}

impl AppLog {
    /// Users whose last write was acknowledged at or after `at`: the application's as of a
    /// convergence point at `at` (an acknowledgement comes after the commit, so every user left
    /// out here was written before it).
    fn written_since(&self, at: mongodb::bson::DateTime) -> std::collections::HashSet<String> {
        self.last_write
            .iter()
            .filter(|(_, ms)| **ms >= at.timestamp_millis())
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The withdrawal fields of `user`.
fn fields_of(user: &Document) -> Document {
    let mut fields = Document::new();
    for f in FIELDS {
        if let Some(v) = user.get(f) {
            fields.insert(f, v.clone());
        }
    }
    fields
}

/// Every user holds, type-exact: what the application last set, if it set a withdrawal field;
/// else, if untouched before 003 (all three fields 0), the rule's balance for its current
/// earnings (or, invalid, what it had); else what it had. Deleted users are gone.
async fn assert_balances_follow_current_earnings(
    t: &TestDb,
    before: &HashMap<String, Document>,
    app: &AppLog,
) {
    assert_balances_as_of(t, before, app, &Default::default()).await;
}

/// As [`assert_balances_follow_current_earnings`], leaving out the users in `theirs` (written
/// by the application after the run's convergence point) but for those it moved, which must
/// hold what it set whenever that was.
async fn assert_balances_as_of(
    t: &TestDb,
    before: &HashMap<String, Document>,
    app: &AppLog,
    theirs: &std::collections::HashSet<String>,
) {
    let mut wrong = Vec::new();
    let mut moved_kept = 0;
    for user in t.all("users").await {
        let id = user.get("_id").unwrap().clone();
        let key = id_key(&id);
        let actual = fields_of(&user);
        if theirs.contains(&key) && !app.moved.contains_key(&key) {
            continue;
        }
        if app.deleted.contains(&key) {
            wrong.push(format!("{user} was deleted by the application"));
            continue;
        }
        if let Some(set) = app.moved.get(&key) {
            moved_kept += 1;
            if bytes(&actual) != bytes(set) {
                wrong.push(format!(
                    "{user} was moved by the application, which left {set}"
                ));
            }
            continue;
        }
        let was = before
            .get(&key)
            .or_else(|| app.inserted.get(&key))
            .unwrap_or_else(|| panic!("{user} was neither loaded nor inserted"));
        let untouched = FIELDS.iter().all(|f| {
            matches!(was.get(f), Some(Bson::Int32(0)) | Some(Bson::Int64(0)))
                || was.get(f) == Some(&Bson::Double(0.0))
        });
        let mut expected = was.clone();
        if untouched {
            if let Earnings::Half(half) = classify(user.get("affiliateEarnings")) {
                expected.insert("withdrawableBalance", half);
            }
        }
        if bytes(&actual) != bytes(&expected) {
            wrong.push(format!("{user} expected {expected}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} user(s) do not hold the balance of their current earnings ({moved_kept} moved by the application); first: {}",
        wrong.len(),
        wrong[0]
    );
}

/// Rollback put every user's withdrawal fields back exactly, but for those the application
/// moved, which keep what it set, and those it deleted; only those may be reported as changed
/// since the migration.
async fn assert_fields_restored(t: &TestDb, before: &HashMap<String, Document>, app: &AppLog) {
    if let Some(report) = t
        .record(M003)
        .await
        .and_then(|r| r.get_document("rollbackResult").ok().cloned())
    {
        // A deleted user is reported as changed since too: there is nothing left to restore.
        let conflicts = report.get_i64("conflicts").unwrap();
        assert!(
            conflicts <= (app.moved.len() + app.deleted.len()) as i64,
            "{report}"
        );
    }
    let now = withdrawal_fields(t).await;
    let mut expected: HashMap<&String, &Document> = before.iter().collect();
    expected.extend(app.inserted.iter());
    expected.extend(app.moved.iter());
    for deleted in &app.deleted {
        expected.remove(deleted);
    }
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(id, fields)| now.get(**id).map(bytes) != Some(bytes(fields)))
        .map(|(id, fields)| format!("{id}: {fields} now {:?}", now.get(*id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} user(s) not restored; first: {}",
        wrong.len(),
        wrong[0]
    );
    assert_eq!(now.len(), expected.len(), "users appeared or vanished");
}

/// Writes to random users until stopped, logging what it did (see [`AppLog`]).
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<AppLog>,
}

/// What a [`Writer`] changes.
#[derive(Clone, Copy)]
enum Writes {
    /// `affiliateEarnings`, to positive amounts.
    Earnings,
    /// A third each: earnings as above; resets to 0 of balances 003 wrote (users whose other
    /// withdrawal fields are 0), which makes such a user a candidate again, and the
    /// application's; and a field 003 does not read.
    Mixed,
    /// The application in production: 55% earnings changes, 12% inserts of new users, 5%
    /// deletes, 5% withdrawals started (`pendingWithdrawals` set on a user with a balance), 3%
    /// balance resets as in `Mixed`, 20% a field 003 does not read.
    Production,
}

/// `_id`s of the users the application inserts start here.
const INSERTED_FROM: i64 = 1_000_000;

impl Writer {
    fn start(t: &TestDb, seed: u64) -> Writer {
        Writer::writing(t, seed, Writes::Earnings)
    }

    fn writing(t: &TestDb, seed: u64, writes_what: Writes) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let coll = t.db.collection::<Document>("users");
        let (s, w) = (stop.clone(), writes.clone());
        let task = tokio::spawn(async move {
            let mut rng = Rng(seed);
            let mut log = AppLog::default();
            let mut inserted = 0i64;
            while !s.load(Ordering::Relaxed) {
                let id = match rng.next() % (USERS as u64 + inserted as u64) {
                    n if n < USERS as u64 => n as i64,
                    n => INSERTED_FROM + (n - USERS as u64) as i64,
                };
                let roll = rng.next() % 100;
                let op = match writes_what {
                    Writes::Earnings => Op::Earnings,
                    Writes::Mixed => match roll % 3 {
                        0 => Op::Earnings,
                        1 => Op::Reset,
                        _ => Op::Unrelated,
                    },
                    Writes::Production => match roll {
                        0..55 => Op::Earnings,
                        55..67 => Op::Insert,
                        67..72 => Op::Delete,
                        72..77 => Op::Withdrawal,
                        77..80 => Op::Reset,
                        _ => Op::Unrelated,
                    },
                };
                let after = mongodb::options::ReturnDocument::After;
                // Withdrawals and resets go to the users the scan reaches first (`_id` order),
                // so that many of them land on users 003 has written already.
                let early = (rng.next() % (USERS as u64 / 4)) as i64;
                let moved = match op {
                    Op::Earnings => {
                        let amount = (rng.next() % 5_000_000 + 100) as f64 / 100.0;
                        coll.update_one(
                            doc! { "_id": id },
                            doc! { "$set": { "affiliateEarnings": amount } },
                        )
                        .await
                        .unwrap();
                        None
                    }
                    Op::Unrelated => {
                        coll.update_one(
                            doc! { "_id": id },
                            doc! { "$set": { "lastSeen": mongodb::bson::DateTime::now() } },
                        )
                        .await
                        .unwrap();
                        None
                    }
                    Op::Insert => {
                        let id = INSERTED_FROM + inserted;
                        inserted += 1;
                        let amount = (rng.next() % 5_000_000 + 100) as f64 / 100.0;
                        let user = doc! {
                            "_id": id, "name": format!("new user {id}"), "affiliateEarnings": amount,
                            "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0,
                        };
                        coll.insert_one(user.clone()).await.unwrap();
                        log.inserted
                            .insert(id_key(&Bson::Int64(id)), fields_of(&user));
                        None
                    }
                    Op::Delete => {
                        let gone = coll.delete_one(doc! { "_id": id }).await.unwrap();
                        if gone.deleted_count == 1 {
                            log.deleted.insert(id_key(&Bson::Int64(id)));
                        }
                        None
                    }
                    Op::Withdrawal => coll
                        .find_one_and_update(
                            doc! { "_id": early, "withdrawableBalance": { "$gt": 25 } },
                            doc! { "$set": { "pendingWithdrawals": 25 } },
                        )
                        .return_document(after)
                        .await
                        .unwrap(),
                    Op::Reset => coll
                        .find_one_and_update(
                            doc! {
                                "_id": early, "withdrawableBalance": { "$ne": 0 },
                                "totalWithdrawn": 0, "pendingWithdrawals": 0,
                            },
                            doc! { "$set": { "withdrawableBalance": 0 } },
                        )
                        .return_document(after)
                        .await
                        .unwrap(),
                };
                if let Some(user) = moved {
                    log.moved
                        .insert(id_key(user.get("_id").unwrap()), fields_of(&user));
                }
                let now = mongodb::bson::DateTime::now().timestamp_millis();
                let touched = match op {
                    Op::Insert => INSERTED_FROM + inserted - 1,
                    Op::Withdrawal | Op::Reset => early,
                    _ => id,
                };
                log.last_write.insert(id_key(&Bson::Int64(touched)), now);
                w.fetch_add(1, Ordering::Relaxed);
                // About 300 to 500 writes a second: every user changes every few seconds.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            log
        });
        Writer { stop, writes, task }
    }

    /// Stops the writer: how many writes it made, and its log.
    async fn stop(self) -> (u64, AppLog) {
        self.stop.store(true, Ordering::Relaxed);
        let log = self.task.await.unwrap();
        (self.writes.load(Ordering::Relaxed), log)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Earnings,
    Unrelated,
    Insert,
    Delete,
    Withdrawal,
    Reset,
}

async fn checkpoint(t: &TestDb) -> Option<Document> {
    t.checkpoint(M003).await
}

async fn scanned(t: &TestDb) -> i64 {
    checkpoint(t)
        .await
        .and_then(|cp| cp.get_i64("scanned").ok())
        .unwrap_or(0)
}

/// The scan has finished (its checkpoint is past the last bracket).
async fn scan_finished(t: &TestDb) -> bool {
    checkpoint(t)
        .await
        .is_some_and(|cp| cp.get_i32("bracket").unwrap_or(0) >= 12)
}

fn caught_up(t: &Document) -> Document {
    t.get_document("result")
        .unwrap()
        .get_document("caughtUp")
        .unwrap()
        .clone()
}

/// A database with the users loaded and 001 and 002 applied; returns the withdrawal fields as
/// 003 finds them.
async fn prepared(tag: &str, seed: u64) -> (TestDb, HashMap<String, Document>) {
    let t = fresh_db(tag).await;
    load(&t, &users(USERS, seed)).await;
    let out = migrate(&t, &["up", "--to", "2", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = withdrawal_fields(&t).await;
    (t, before)
}

/// When the writer stops.
#[derive(Clone, Copy)]
enum StopWriter {
    /// Half-way through the scan.
    MidScan,
    /// Just before the scan's end (90% scanned, about 0.2 s of scan left at the throttle).
    /// Not at its end: the guarantee covers writes before the run's last check, and the rounds
    /// after a short scan can end before a writer told "the scan is over" has stopped, leaving
    /// a write the run was never going to see.
    NearScanEnd,
    /// Only after `migrate up` has exited: the application never pauses.
    AfterExit,
}

/// 003 with the writer running, then rollback; both exact.
async fn trial(
    tag: &str,
    seed: u64,
    batch: &str,
    concurrency: &str,
    until: StopWriter,
    writes_what: Writes,
    extra: &[&str],
) {
    let (t, before) = prepared(tag, seed).await;
    let writer = Writer::writing(&t, seed ^ 0xABCD, writes_what);
    let mut args = vec![
        "up",
        "--batch-size",
        batch,
        "--concurrency",
        concurrency,
        "--max-docs-per-sec",
        RATE,
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    let mut run = Running::start(&t, &args);
    match until {
        StopWriter::MidScan => {
            run.wait_for(async || scanned(&t).await >= USERS / 2).await;
        }
        StopWriter::NearScanEnd => {
            run.wait_for(async || scanned(&t).await >= USERS * 9 / 10)
                .await;
        }
        StopWriter::AfterExit => {}
    }
    let (out, (writes, app)) = match until {
        StopWriter::AfterExit => {
            let out = run.output().await;
            (out, writer.stop().await)
        }
        _ => {
            let stopped = writer.stop().await;
            (run.output().await, stopped)
        }
    };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(writes > 100, "the writer wrote only {writes} times");
    if !matches!(writes_what, Writes::Earnings) {
        assert!(!app.moved.is_empty(), "the writer moved no user");
    }
    let record = t.record(M003).await.unwrap();
    let converged = record
        .get_document("result")
        .unwrap()
        .get_document("convergedAt")
        .unwrap_or_else(|_| panic!("no convergence point recorded: {record}"))
        .get_datetime("wallTime")
        .unwrap()
        .to_owned();
    assert_balances_as_of(&t, &before, &app, &app.written_since(converged)).await;
    let caught = caught_up(&record);
    assert!(
        caught.get_i64("modified").unwrap() > 0,
        "nothing was caught up: {caught}"
    );
    assert_batches_went(&t, &record, !extra.contains(&"--no-transactions"));
    if result_batches_in_transactions(&record) > 0 && caught.get_str("mode") == Ok("change stream")
    {
        // The stream reported every write but the batches' own, so no round over the
        // candidates was needed to find what the writer changed.
        assert_eq!(caught.get_i64("rounds").unwrap(), 0, "{caught}");
        let log = read(&t.log_file());
        assert!(log.contains("no round over the candidates needed"), "{log}");
    }

    let out = migrate(&t, &["rollback", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_fields_restored(&t, &before, &app).await;
    t.db.drop().await.unwrap();
}

fn result_batches_in_transactions(record: &Document) -> i64 {
    record
        .get_document("result")
        .unwrap()
        .get_i64("batchesInTransactions")
        .unwrap_or(0)
}

/// Scan batches went in transactions (where the deployment has them), or all guarded.
fn assert_batches_went(t: &TestDb, record: &Document, in_transactions: bool) {
    let result = record.get_document("result").unwrap();
    let transacted = result.get_i64("batchesInTransactions").unwrap_or(0);
    if in_transactions {
        let standalone = read(&t.log_file()).contains("this deployment has no transactions");
        assert!(
            transacted > 0 || standalone,
            "no batch went in a transaction: {result}"
        );
    } else {
        assert_eq!(transacted, 0, "{result}");
    }
}

#[tokio::test]
async fn a_writer_during_the_scan_ends_exact_and_rollback_restores_it() {
    trial(
        "live1",
        1,
        "200",
        "1",
        StopWriter::MidScan,
        Writes::Earnings,
        &[],
    )
    .await;
    trial(
        "live2",
        2,
        "500",
        "4",
        StopWriter::MidScan,
        Writes::Earnings,
        &[],
    )
    .await;
}

#[tokio::test]
async fn a_writer_during_guarded_batches_ends_exact_and_rollback_restores_it() {
    // Without transactions every batch is guarded per document while the application writes,
    // and read back while it is quiet.
    trial(
        "live3",
        3,
        "1000",
        "2",
        StopWriter::MidScan,
        Writes::Earnings,
        &["--no-transactions"],
    )
    .await;
}

#[tokio::test]
async fn balances_the_application_resets_after_003_wrote_them_stay_reset_and_roll_back_exactly() {
    // A reset makes the user a candidate again; it is the application's value all the same,
    // and the run must leave it, whatever the user's earnings do afterwards.
    trial(
        "livereset",
        10,
        "400",
        "3",
        StopWriter::NearScanEnd,
        Writes::Mixed,
        &[],
    )
    .await;
}

#[tokio::test]
async fn users_the_application_moves_while_003_runs_keep_every_field_it_set() {
    // Withdrawals started and balances reset on users 003 already wrote, then their earnings
    // changed again: not one of their withdrawal fields may change after the application's
    // write, in the scan's transactions, the catch-up or the rounds after the scan.
    trial(
        "liveprod",
        14,
        "300",
        "3",
        StopWriter::NearScanEnd,
        Writes::Production,
        &[],
    )
    .await;
}

#[tokio::test]
async fn an_application_that_never_pauses_gets_an_exact_run_as_of_the_convergence_point() {
    // The writer starts before `up` and stops only after it exits: every user it last wrote
    // before the convergence point holds the rule's balance for its earnings, every user it
    // moved keeps what it set, and the run ends completed.
    trial(
        "livenever",
        17,
        "300",
        "3",
        StopWriter::AfterExit,
        Writes::Production,
        &[],
    )
    .await;
}

#[tokio::test]
async fn an_application_that_never_pauses_during_guarded_batches_gets_an_exact_run() {
    trial(
        "livenevergu",
        18,
        "400",
        "2",
        StopWriter::AfterExit,
        Writes::Production,
        &["--no-transactions"],
    )
    .await;
}

#[tokio::test]
async fn a_failed_003_run_again_recomputes_the_users_it_wrote_whose_earnings_changed() {
    let t = fresh_db("failrerun").await;
    let mut docs = users(3000, 16);
    docs[2900].insert("affiliateEarnings", "lots");
    load(&t, &docs).await;
    let out = migrate(&t, &["up", "--to", "2", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = withdrawal_fields(&t).await;
    let args = [
        "up",
        "--batch-size",
        "200",
        "--concurrency",
        "1",
        "--no-progress",
    ];
    let mut failing = args.to_vec();
    failing.push("--fail-on-invalid");
    let out = migrate(&t, &failing).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(t.status(M003).await, "failed");
    // The application changes earnings of users the failed attempt wrote, then the invalid
    // user is fixed.
    let users = t.db.collection::<Document>("users");
    let mut changed = 0;
    for i in (0..2500i64).step_by(5) {
        let written = users
            .find_one(doc! { "_id": i, "withdrawableBalance": { "$gt": 0 } })
            .await
            .unwrap()
            .is_some();
        if written {
            let amount = 100.0 + i as f64 * 3.25;
            users
                .update_one(
                    doc! { "_id": i },
                    doc! { "$set": { "affiliateEarnings": amount } },
                )
                .await
                .unwrap();
            changed += 1;
        }
    }
    assert!(
        changed > 50,
        "the failed attempt wrote only {changed} of them"
    );
    users
        .update_one(
            doc! { "_id": 2900 },
            doc! { "$set": { "affiliateEarnings": 1234.5 } },
        )
        .await
        .unwrap();
    let out = migrate(&t, &args).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_balances_follow_current_earnings(&t, &before, &AppLog::default()).await;
    t.db.drop().await.unwrap();
}

#[tokio::test]
async fn users_the_application_moves_during_guarded_batches_keep_every_field_it_set() {
    trial(
        "liveprodguarded",
        15,
        "500",
        "2",
        StopWriter::NearScanEnd,
        Writes::Production,
        &["--no-transactions"],
    )
    .await;
}

#[tokio::test]
async fn a_writer_until_just_before_the_scan_ends_ends_exact_and_rollback_restores_it() {
    trial(
        "liveend",
        4,
        "300",
        "3",
        StopWriter::NearScanEnd,
        Writes::Earnings,
        &[],
    )
    .await;
}

#[tokio::test]
async fn catch_up_by_passes_reaches_the_same_state() {
    trial(
        "passes",
        5,
        "400",
        "2",
        StopWriter::NearScanEnd,
        Writes::Earnings,
        &["--catch-up", "passes"],
    )
    .await;
}

/// Killed at `kill_when`, resumed with the writer still running until the scan's end.
async fn killed_trial(tag: &str, seed: u64, during_drain: bool) {
    let (t, before) = prepared(tag, seed).await;
    let writer = Writer::writing(&t, seed ^ 0x1234, Writes::Mixed);
    let args = [
        "up",
        "--batch-size",
        "250",
        "--concurrency",
        "3",
        "--max-docs-per-sec",
        RATE,
        "--no-progress",
    ];
    let mut run = Running::start(&t, &args);
    let log = t.log_file();
    let reached = if during_drain {
        run.wait_for(async || {
            read(&log).contains(&format!(
                "scan finished; catching up with concurrent writes migration=\"{M003}\""
            ))
        })
        .await
    } else {
        run.wait_for(async || scanned(&t).await >= USERS / 3).await
    };
    assert!(reached, "migrate ended before it could be killed");
    run.kill().await;
    assert_eq!(t.status(M003).await, "running");
    let token_saved = checkpoint(&t)
        .await
        .is_some_and(|cp| cp.contains_key("resumeToken"));
    assert!(token_saved, "{:?}", checkpoint(&t).await);

    let mut resume = args.to_vec();
    resume.push("--resume");
    let mut run = Running::start(&t, &resume);
    run.wait_for(async || scan_finished(&t).await).await;
    let (_, app) = writer.stop().await;
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        read(&log).contains("change stream resumed from the saved resume token"),
        "{}",
        read(&log)
    );
    let record = t.record(M003).await.unwrap();
    if result_batches_in_transactions(&record) > 0 {
        // The killed run's checkpoint says its stream reported everything it must, and the
        // resumed one goes on from its token: no round over the candidates either.
        assert_eq!(caught_up(&record).get_i64("rounds").unwrap(), 0, "{record}");
    }
    assert_balances_follow_current_earnings(&t, &before, &app).await;
    let out = migrate(&t, &["rollback", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_fields_restored(&t, &before, &app).await;
    t.db.drop().await.unwrap();
}

#[tokio::test]
async fn sigkill_during_the_scan_with_a_writer_resumes_from_the_token_and_ends_exact() {
    killed_trial("killscan", 6, false).await;
}

#[tokio::test]
async fn sigkill_during_the_drain_with_a_writer_resumes_from_the_token_and_ends_exact() {
    killed_trial("killdrain", 7, true).await;
}

#[tokio::test]
async fn rollback_after_sigkill_ends_the_open_batch_transactions_and_restores_exactly() {
    let (t, before) = prepared("killrollback", 9).await;
    let writer = Writer::start(&t, 0x9999);
    let mut run = Running::start(
        &t,
        &[
            "up",
            "--batch-size",
            "500",
            "--concurrency",
            "3",
            "--max-docs-per-sec",
            RATE,
            "--no-progress",
        ],
    );
    let reached = run.wait_for(async || scanned(&t).await >= USERS / 3).await;
    assert!(reached, "migrate ended before it could be killed");
    run.kill().await;
    let (_, app) = writer.stop().await;
    let sessions_named = checkpoint(&t)
        .await
        .is_some_and(|cp| cp.contains_key("transactionSessions"));
    let out = migrate(&t, &["rollback", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    if sessions_named {
        // The killed run's transactions are ended before the rollback restores anything, so
        // it never waits for the server to end them.
        assert!(
            read(&t.log_file()).contains("ended the transactions the interrupted run left open"),
            "{}",
            read(&t.log_file())
        );
    } else {
        assert!(
            read(&t.log_file()).contains("this deployment has no transactions"),
            "the checkpoint names no sessions: {:?}",
            checkpoint(&t).await
        );
    }
    assert_fields_restored(&t, &before, &app).await;
    t.db.drop().await.unwrap();
}

#[tokio::test]
async fn a_writer_during_rollback_keeps_every_balance_it_set_and_every_other_user_is_restored() {
    let (t, before) = prepared("rollwrite", 12).await;
    let out = migrate(&t, &["up", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The application sets balances while the rollback restores them: each value is new, so
    // the last one each user got is known.
    let stop = Arc::new(AtomicBool::new(false));
    let coll = t.db.collection::<Document>("users");
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut rng = Rng(0x5eed);
            let mut last: HashMap<i64, f64> = HashMap::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let id = (rng.next() % USERS as u64) as i64;
                n += 1;
                let balance = 100_000.0 + f64::from(n);
                coll.update_one(
                    doc! { "_id": id },
                    doc! { "$set": { "withdrawableBalance": balance } },
                )
                .await
                .unwrap();
                last.insert(id, balance);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            last
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = migrate(&t, &["rollback", "--yes"]).await;
    stop.store(true, Ordering::Relaxed);
    let last = writer.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(last.len() > 50, "the writer set {} balances", last.len());
    let now = withdrawal_fields(&t).await;
    let last: HashMap<String, f64> = last
        .into_iter()
        .map(|(id, balance)| (id_key(&Bson::Int64(id)), balance))
        .collect();
    let mut wrong = Vec::new();
    for (id, fields) in &before {
        let user = &now[id];
        let expected = match last.get(id) {
            // Never overwritten by the rollback, whenever the application wrote it.
            Some(balance) => {
                let mut f = fields.clone();
                f.insert("withdrawableBalance", *balance);
                f
            }
            None => fields.clone(),
        };
        if bytes(user) != bytes(&expected) {
            wrong.push(format!("{id}: {user} expected {expected}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} user(s) wrong after the rollback; first: {}",
        wrong.len(),
        wrong[0]
    );
    let report = t
        .record(M003)
        .await
        .and_then(|r| r.get_document("rollbackResult").ok().cloned())
        .unwrap();
    // Those the application changed before their turn came are reported, never restored.
    let conflicts = report.get_i64("conflicts").unwrap();
    assert!(conflicts <= last.len() as i64, "{report}");
    t.db.drop().await.unwrap();
}

#[tokio::test]
async fn a_rollback_killed_mid_way_is_finished_by_the_next_without_waiting_on_its_transaction() {
    let (t, before) = prepared("killrestore", 13).await;
    let out = migrate(&t, &["up", "--batch-size", "100", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let images = t.db.collection::<Document>("migrations_before_images");
    let chunks = async || {
        images
            .count_documents(doc! { "migration": M003 })
            .await
            .unwrap()
    };
    let saved = chunks().await;
    let mut run = Running::start(&t, &["rollback", "--yes"]);
    run.wait_until("the rollback's first batch", async || {
        chunks().await < saved
    })
    .await;
    run.kill().await;
    assert_eq!(t.status(M003).await, "rolling_back");
    let out = migrate(&t, &["rollback", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The killed rollback's transaction is ended first: it would otherwise hold its users
    // until the server ends it.
    assert!(
        read(&t.log_file()).contains("ended the transaction the interrupted rollback left open"),
        "{}",
        read(&t.log_file())
    );
    assert_fields_restored(&t, &before, &AppLog::default()).await;
    assert_eq!(chunks().await, 0);
    t.db.drop().await.unwrap();
}

#[tokio::test]
async fn a_failed_003_is_rolled_back_and_001_002_stay_applied() {
    let t = fresh_db("failroll").await;
    let mut docs = users(3000, 8);
    for d in docs.iter_mut().skip(2500).step_by(50) {
        d.insert("affiliateEarnings", "lots");
    }
    load(&t, &docs).await;
    let out = migrate(&t, &["up", "--to", "2", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let before = withdrawal_fields(&t).await;
    let out = migrate(
        &t,
        &[
            "up",
            "--fail-on-invalid",
            "--batch-size",
            "200",
            "--concurrency",
            "1",
            "--no-progress",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(t.status(M003).await, "failed");
    let changed = withdrawal_fields(&t).await;
    assert!(
        changed.iter().any(|(id, f)| bytes(f) != bytes(&before[id])),
        "003 wrote nothing before failing"
    );

    let out = migrate(&t, &["rollback", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains(M003), "{}", text(&out));
    assert_fields_restored(&t, &before, &AppLog::default()).await;
    assert_eq!(t.status(M003).await, "rolled_back");
    assert_eq!(t.status(M002).await, "completed");
    assert_eq!(t.status(M001).await, "completed");
    let history = t.record(M003).await.unwrap();
    let last = history
        .get_array("history")
        .unwrap()
        .last()
        .unwrap()
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(last.get_str("action").unwrap(), "down");
    let images =
        t.db.collection::<Document>("migrations_before_images")
            .count_documents(doc! { "migration": M003 })
            .await
            .unwrap();
    assert_eq!(images, 0, "before-images left behind");
}

fn bin(subtype: u8, bytes: &[u8]) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::from(subtype),
        bytes: bytes.to_vec(),
    })
}

#[tokio::test]
async fn every_id_type_is_reached() {
    let t = fresh_db("exoticids").await;
    let mut ids = vec![
        Bson::MinKey,
        Bson::MaxKey,
        Bson::Double(f64::NAN),
        bin(0, &[1, 2, 3]),
        bin(0, &[9; 16]),
        bin(3, &[0; 16]),
        bin(4, &[1; 16]),
        bin(4, &[2; 16]),
        Bson::String("alice".into()),
        Bson::Int32(7),
        Bson::Int64(1 << 40),
        Bson::Double(2.5),
        Bson::Null,
        Bson::Boolean(true),
    ];
    for i in 0..20u8 {
        ids.push(Bson::ObjectId(mongodb::bson::oid::ObjectId::from_bytes(
            [i; 12],
        )));
    }
    let docs: Vec<Document> = ids
        .iter()
        .map(|id| doc! { "_id": id.clone(), "affiliateEarnings": 10.0 })
        .collect();
    load(&t, &docs).await;
    let out = migrate(&t, &["up", "--batch-size", "3", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for user in t.all("users").await {
        assert_eq!(
            user.get("withdrawableBalance"),
            Some(&Bson::Double(5.0)),
            "{user}"
        );
        assert_eq!(user.get("totalWithdrawn"), Some(&Bson::Int32(0)), "{user}");
        assert_eq!(
            user.get("pendingWithdrawals"),
            Some(&Bson::Int32(0)),
            "{user}"
        );
    }
    assert_eq!(t.all("users").await.len(), ids.len());
}

#[tokio::test]
async fn tiny_earnings_and_non_numeric_balances_never_block_a_run() {
    let t = fresh_db("oddvalues").await;
    let docs = vec![
        doc! { "_id": 1, "affiliateEarnings": 5e-324 },
        doc! { "_id": 2, "affiliateEarnings": 2e-308 },
        doc! { "_id": 3, "affiliateEarnings": 1e-300 },
        doc! { "_id": 4, "affiliateEarnings": -0.0 },
        doc! { "_id": 5, "affiliateEarnings": 42.0 },
        doc! { "_id": 6, "affiliateEarnings": 42.0, "withdrawableBalance": Bson::Null, "totalWithdrawn": 0, "pendingWithdrawals": 0 },
        doc! { "_id": 7, "affiliateEarnings": 42.0, "withdrawableBalance": "0", "totalWithdrawn": 0, "pendingWithdrawals": 0 },
    ];
    load(&t, &docs).await;
    let out = migrate(&t, &["up", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let users = t.all("users").await;
    let result = t
        .record(M003)
        .await
        .unwrap()
        .get_document("result")
        .unwrap()
        .clone();
    let invalid: Vec<Bson> = result
        .get_array("invalidSamples")
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_document()?.get("_id").cloned())
                .collect()
        })
        .unwrap_or_default();
    for user in &users[..5] {
        let id = user.get("_id").unwrap();
        match classify(user.get("affiliateEarnings")) {
            Earnings::Half(half) => {
                assert_eq!(user.get("withdrawableBalance"), Some(&half), "{user}")
            }
            Earnings::None => assert_eq!(
                user.get("withdrawableBalance"),
                Some(&Bson::Int32(0)),
                "{user}"
            ),
            Earnings::Invalid(_) => assert!(invalid.contains(id), "{user} not reported: {result}"),
        }
    }
    // Null and "0" balances are neither migrated nor silently skipped: reported by `_id`.
    assert_eq!(users[5].get("withdrawableBalance"), Some(&Bson::Null));
    assert_eq!(
        users[6].get("withdrawableBalance"),
        Some(&Bson::String("0".into()))
    );
    assert!(invalid.contains(&Bson::Int32(6)), "{result}");
    assert!(invalid.contains(&Bson::Int32(7)), "{result}");
    let reasons = result.get_document("invalidReasons").unwrap();
    assert!(
        reasons.contains_key("withdrawableBalance is not a number"),
        "{reasons}"
    );
    let status = migrate(&t, &["status"]).await;
    assert!(
        text(&status).contains("invalid e.g. _id"),
        "{}",
        text(&status)
    );
}

#[tokio::test]
async fn a_change_stream_held_back_by_an_open_transaction_still_reports_every_write_before_the_end()
{
    // Some servers deliver no change event while any transaction is open, anywhere: empty
    // batches then say nothing about what is still to come. The run must wait for its stream
    // to deliver what was written before its end, not take a quiet stream for a drained one.
    let (t, before) = prepared("heldback", 21).await;
    let writer = Writer::start(&t, 21 ^ 0xABCD);
    let client = t.db.client();
    let mut holder = client.start_session().await.unwrap();
    holder.start_transaction().await.unwrap();
    t.db.collection::<Document>("elsewhere")
        .insert_one(doc! { "held": true })
        .session(&mut holder)
        .await
        .unwrap();
    let mut run = Running::start(
        &t,
        &[
            "up",
            "--batch-size",
            "300",
            "--concurrency",
            "2",
            "--max-docs-per-sec",
            RATE,
            "--no-progress",
        ],
    );
    run.wait_for(async || scanned(&t).await >= USERS * 9 / 10)
        .await;
    let (writes, app) = writer.stop().await;
    assert!(writes > 100, "the writer wrote only {writes} times");
    // The run reaches its end while the transaction is still open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    holder.abort_transaction().await.unwrap();
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_balances_follow_current_earnings(&t, &before, &app).await;
    t.db.drop().await.unwrap();
}
