//! 003 on a collection the application never stops writing, side by side with 003 on a quiet
//! one, on the same server in one run, reported as ratios.
//!
//! `cargo bench --bench live -- --users N` (default 100,000). Under `cargo test` the same harness
//! runs as a smoke test on a few thousand users. The writer is the application's mix: 55%
//! earnings changes, 12% inserts, 5% deletes, 5% withdrawals started, 3% balance resets, 20% a
//! field 003 does not read, at a steady rate from before `migrate up` starts until after it
//! exits. Measured:
//! - 003's throughput with the writer at about 300 and about 1,000 writes a second, against its
//!   quiet throughput (run twice in turn with the quiet one: the machine's speed drifts);
//! - how long `migrate pause` takes to answer under the faster writer;
//! - before-image entries per written user after each run.
//!
//! The table is printed and written to `target/bench-live.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{fresh_db, TestDb};
use futures::TryStreamExt;
use mongo_migrate::sample::{self, SampleSpec};
use mongodb::bson::{doc, Bson, Document};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const M003: &str = "003_migrate_existing_user_balances";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let users = args
        .iter()
        .position(|a| a == "--users")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 100_000 } else { 3_000 });
    if std::env::var_os("SECANTUS_CACHE_SIZE").is_none() {
        std::env::set_var("SECANTUS_CACHE_SIZE", if bench { "4G" } else { "1G" });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let failures = runtime.block_on(run(users, bench));
    if failures > 0 {
        std::process::exit(1);
    }
}

/// Sample data with 001 and 002 applied: the state 003 starts from.
async fn before_003(tag: &str, users: u64) -> TestDb {
    let t = fresh_db(tag).await;
    let spec = SampleSpec {
        users,
        withdrawals: users / 10,
        seed: 7,
        invalid_earnings: 0,
        mixed_ids: false,
    };
    sample::load(&t.db, &spec).await.expect("load sample data");
    let out = t.migrate(&["up", "--to", "2", "--catch-up", "off", "--no-progress"]);
    assert!(out.status.success(), "{}", common::text(&out));
    t
}

/// The application, writing at `rate` a second until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writer {
    async fn start(t: &TestDb, rate: u64) -> Writer {
        let coll = t.db.collection::<Document>("users");
        let ids: Vec<Bson> = coll
            .find(doc! {})
            .projection(doc! { "_id": 1 })
            .await
            .unwrap()
            .try_collect::<Vec<Document>>()
            .await
            .unwrap()
            .into_iter()
            .filter_map(|d| d.get("_id").cloned())
            .collect();
        let ids = Arc::new(ids);
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        // Several writers, each paced to its share, so a slow write does not lower the rate.
        let lanes = 4u64;
        let tasks = (0..lanes)
            .map(|lane| {
                let (coll, ids, stop, writes) =
                    (coll.clone(), ids.clone(), stop.clone(), writes.clone());
                let every = Duration::from_secs_f64(lanes as f64 / rate as f64);
                tokio::spawn(async move {
                    let mut rng = common::Rng(0xA11 + lane);
                    let mut next = Instant::now();
                    let mut inserted = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = ids[rng.below(ids.len() as u64) as usize].clone();
                        let roll = rng.below(100);
                        let _ = match roll {
                            0..55 => {
                                let amount = (rng.below(5_000_000) + 100) as f64 / 100.0;
                                coll.update_one(
                                    doc! { "_id": id },
                                    doc! { "$set": { "affiliateEarnings": amount } },
                                )
                                .await
                                .map(|_| ())
                            }
                            55..67 => {
                                inserted += 1;
                                let amount = (rng.below(5_000_000) + 100) as f64 / 100.0;
                                coll.insert_one(doc! {
                                    "name": format!("new user {lane}-{inserted}"),
                                    "affiliateEarnings": amount,
                                    "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0,
                                })
                                .await
                                .map(|_| ())
                            }
                            67..72 => coll.delete_one(doc! { "_id": id }).await.map(|_| ()),
                            72..77 => coll
                                .update_one(
                                    doc! { "_id": id, "withdrawableBalance": { "$gt": 25 } },
                                    doc! { "$set": { "pendingWithdrawals": 25 } },
                                )
                                .await
                                .map(|_| ()),
                            77..80 => coll
                                .update_one(
                                    doc! { "_id": id, "totalWithdrawn": 0, "pendingWithdrawals": 0 },
                                    doc! { "$set": { "withdrawableBalance": 0 } },
                                )
                                .await
                                .map(|_| ()),
                            _ => coll
                                .update_one(
                                    doc! { "_id": id },
                                    doc! { "$set": { "lastSeen": mongodb::bson::DateTime::now() } },
                                )
                                .await
                                .map(|_| ()),
                        };
                        writes.fetch_add(1, Ordering::Relaxed);
                        next += every;
                        let now = Instant::now();
                        if next > now {
                            tokio::time::sleep(next - now).await;
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Writer {
            stop,
            writes,
            tasks,
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.writes.load(Ordering::Relaxed)
    }
}

/// How long one run may take before it is stopped and reported as not finished.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// `migrate up` to completion, or stopped (`migrate pause`) after [`RUN_LIMIT`]: its time, 003's
/// counters, and, when it did not finish, the share of users it had scanned.
async fn up(t: &TestDb) -> (Duration, Document, Option<f64>) {
    let started = Instant::now();
    let mut child = t
        .migrate_cmd(&["up", "--no-progress"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut unfinished = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success() || unfinished.is_some(),
                "migrate up failed"
            );
            break;
        }
        if unfinished.is_none() && started.elapsed() > RUN_LIMIT {
            let record = t.record(M003).await.unwrap_or_default();
            let progress = record.get_document("progress").ok();
            let scanned = progress
                .and_then(|p| p.get_i64("scanned").ok())
                .unwrap_or(0);
            let total = progress.and_then(|p| p.get_i64("total").ok()).unwrap_or(1);
            unfinished = Some(scanned as f64 / total.max(1) as f64);
            let _ = common::migrate(t, &["pause", "--timeout", "120"]).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let result = t
        .record(M003)
        .await
        .and_then(|r| r.get_document("result").ok().cloned())
        .unwrap_or_default();
    (took, result, unfinished)
}

/// Before-image entries of 003, and the distinct users they name.
async fn entries_per_user(t: &TestDb) -> (u64, u64) {
    let chunks = t.db.collection::<Document>("migrations_before_images");
    let count = |pipeline: Vec<Document>| {
        let chunks = chunks.clone();
        async move {
            chunks
                .aggregate(pipeline)
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
                .first()
                .and_then(|d| d.get_i32("n").ok())
                .unwrap_or(0) as u64
        }
    };
    let entries = count(vec![
        doc! { "$match": { "migration": M003 } },
        doc! { "$unwind": "$entries" },
        doc! { "$count": "n" },
    ])
    .await;
    let users = count(vec![
        doc! { "$match": { "migration": M003 } },
        doc! { "$unwind": "$entries" },
        doc! { "$group": { "_id": "$entries._id" } },
        doc! { "$count": "n" },
    ])
    .await;
    (entries, users)
}

/// `migrate pause` sent once 003 is under way with the writer on: how long until it answered,
/// then `up --resume` to the end.
async fn pause_under(t: &TestDb) -> Option<Duration> {
    let mut child = t
        .migrate_cmd(&["up", "--no-progress"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            return None;
        }
        let scanned = t
            .record(M003)
            .await
            .and_then(|r| r.get_document("progress").ok().cloned())
            .and_then(|p| p.get_i64("scanned").ok())
            .unwrap_or(0);
        if scanned > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    let out = common::migrate(t, &["pause", "--timeout", "60"]).await;
    let answered = asked.elapsed();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    assert!(out.status.success(), "{}", common::text(&out));
    let out = common::migrate(t, &["up", "--resume", "--no-progress"]).await;
    assert!(out.status.success(), "{}", common::text(&out));
    Some(answered)
}

fn caught(result: &Document, key: &str) -> i64 {
    result
        .get_document("caughtUp")
        .ok()
        .and_then(|c| c.get_i64(key).ok())
        .unwrap_or(0)
}

async fn run(users: u64, bench: bool) -> usize {
    let mut failures = 0;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# 003 under a writer that never pauses ({users} users)\n"
    );
    let _ = writeln!(
        report,
        "| run | writes/s | time | docs/s | vs quiet | caught up | moved | entries/user |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let rates: &[u64] = if bench { &[300, 1000] } else { &[300] };
    let mut quiet = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        // The quiet run next to each writer run: the ratio's two sides share the machine's mood.
        let t = before_003(&format!("livequiet{i}"), users).await;
        let (took, _, _) = up(&t).await;
        quiet.push(took);
        let (entries, written) = entries_per_user(&t).await;
        let _ = writeln!(
            report,
            "| quiet | 0 | {:.2} s | {:.0} | 1.00 | 0 | 0 | {:.3} |",
            took.as_secs_f64(),
            users as f64 / took.as_secs_f64(),
            entries as f64 / written.max(1) as f64
        );
        t.db.drop().await.unwrap();

        let t = before_003(&format!("livewriter{i}"), users).await;
        let writer = Writer::start(&t, rate).await;
        let began = Instant::now();
        let (took, result, unfinished) = up(&t).await;
        let writes = writer.stop().await;
        if let Some(share) = unfinished {
            let _ = writeln!(
                report,
                "| writer | {:.0} | not finished in {} s ({:.0}% scanned) | - | - | - | - | - |",
                writes as f64 / began.elapsed().as_secs_f64(),
                RUN_LIMIT.as_secs(),
                share * 100.0
            );
            t.db.drop().await.unwrap();
            continue;
        }
        let achieved = writes as f64 / began.elapsed().as_secs_f64();
        let (entries, written) = entries_per_user(&t).await;
        let per_user = entries as f64 / written.max(1) as f64;
        let ratio = took_ratio(quiet[i], took);
        let _ = writeln!(
            report,
            "| writer | {achieved:.0} | {:.2} s | {:.0} | {ratio:.2} | {} | {} | {per_user:.3} |",
            took.as_secs_f64(),
            users as f64 / took.as_secs_f64(),
            caught(&result, "modified"),
            result.get_i64("movedByApplication").unwrap_or(0),
        );
        if result.get_document("convergedAt").is_err() {
            eprintln!("MISSING: no convergence point recorded under the writer: {result}");
            failures += 1;
        }
        t.db.drop().await.unwrap();
    }
    let rate = *rates.last().unwrap();
    let t = before_003("livepause", users).await;
    let writer = Writer::start(&t, rate).await;
    let paused = pause_under(&t).await;
    writer.stop().await;
    t.db.drop().await.unwrap();
    let _ = writeln!(
        report,
        "\n`migrate pause` under {rate} writes/s answered in {}",
        paused
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or_else(|| "- (the run ended first)".into())
    );
    print!("{report}");
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/bench-live.md", &report);
    failures
}

/// Throughput with the writer over throughput without: time quiet over time with.
fn took_ratio(quiet: Duration, with: Duration) -> f64 {
    quiet.as_secs_f64() / with.as_secs_f64()
}
