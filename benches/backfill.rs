//! Backfill throughput, resume cost and memory of `migrate up`, side by side with its peers on the
//! same server in one run, reported as ratios.
//!
//! `cargo bench --bench backfill -- --users N` (default 1,000,000), or `-- --quick` (100,000 users,
//! only the variants the key ratios need: a few minutes instead of over an hour). Under `cargo test` the same
//! harness runs as a smoke test on a few thousand users, so it keeps compiling and working.
//! Each variant starts from the same freshly loaded sample data. The table is printed and written
//! to `target/bench-report.md`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{fresh_db, TestDb};
use futures::TryStreamExt;
use mongo_migrate::backfill::{self, Backfill, Change, Transform};
use mongo_migrate::sample::{self, SampleSpec};
use mongo_migrate::{Context, Migration, MigrationRunner, Outcome, Registered, RunOptions};
use mongodb::bson::{doc, Document};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

const USERS: &str = "users";
const FIELDS: [&str; 3] = [
    "withdrawableBalance",
    "totalWithdrawn",
    "pendingWithdrawals",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    let users = args
        .iter()
        .position(|a| a == "--users")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(match (bench, quick) {
            (true, true) => 100_000,
            (true, false) => 1_000_000,
            (false, _) => 3_000,
        });
    if std::env::var_os("SECANTUS_CACHE_SIZE").is_none() {
        // Index builds over millions of users need the transaction to fit in the cache.
        std::env::set_var("SECANTUS_CACHE_SIZE", if bench { "8G" } else { "1G" });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let failures = runtime.block_on(run(users, bench, quick));
    if !bench && failures > 0 {
        // The smoke run checks that every variant produced 003's result, not the speed targets.
        std::process::exit(1);
    }
}

async fn load(tag: &str, users: u64) -> TestDb {
    let t = fresh_db(tag).await;
    let spec = SampleSpec {
        users,
        withdrawals: users / 10,
        seed: 7,
        invalid_earnings: 0,
        mixed_ids: false,
    };
    sample::load(&t.db, &spec).await.expect("load sample data");
    t
}

/// Sample data with 001 and 002 applied: the state 003 starts from.
async fn before_003(tag: &str, users: u64) -> TestDb {
    let t = load(tag, users).await;
    // Nothing else writes during the setup, so catch-up would find nothing; without its change
    // stream (which this server feeds an event per write) 001 takes about half as long.
    let out = t.migrate(&["up", "--to", "2", "--catch-up", "off", "--no-progress"]);
    assert!(out.status.success(), "{}", common::text(&out));
    t
}

/// 003's candidates: withdrawal fields all missing or 0.
fn candidates() -> Document {
    doc! { "$and": FIELDS.iter().map(|f| doc! { "$or": [{ *f: { "$exists": false } }, { *f: 0 }] }).collect::<Vec<_>>() }
}

/// 003's result as one server-side pipeline (the very pipeline 003 uses for exact inputs).
fn floor_pipeline() -> Vec<Document> {
    mongo_migrate::registry::generated::m003::fast_path().pipeline
}

async fn timed<F: std::future::Future<Output = ()>>(f: F) -> Duration {
    let started = Instant::now();
    f.await;
    started.elapsed()
}

/// The 003 transform, for the peers that compute in Rust like the naive and batched loops do.
fn transform(user: &Document) -> Option<Document> {
    match mongo_migrate::registry::generated::m003::transform(user) {
        Change::Update { set, .. } => Some(set),
        _ => None,
    }
}

async fn naive_peer(t: &TestDb) {
    let users = t.db.collection::<Document>(USERS);
    let mut cursor = users.find(candidates()).await.unwrap();
    while let Some(user) = cursor.try_next().await.unwrap() {
        if let Some(set) = transform(&user) {
            users
                .update_one(
                    doc! { "_id": user.get("_id").unwrap().clone() },
                    doc! { "$set": set },
                )
                .await
                .unwrap();
        }
    }
}

async fn batched_peer(t: &TestDb) {
    // One cursor, read 1000 at a time, one bulk update per batch: a competent hand-written loop
    // (a query per batch with `_id > last` is quadratic on servers that evaluate it in full).
    let users = t.db.collection::<Document>(USERS);
    let mut cursor = users
        .find(candidates())
        .sort(doc! { "_id": 1 })
        .batch_size(1000)
        .await
        .unwrap();
    let mut updates = Vec::with_capacity(1000);
    loop {
        let next = cursor.try_next().await.unwrap();
        if let Some(user) = &next {
            if let Some(set) = transform(user) {
                updates.push(
                    doc! { "q": { "_id": user.get("_id").unwrap().clone() }, "u": { "$set": set } },
                );
            }
        }
        if updates.len() == 1000 || (next.is_none() && !updates.is_empty()) {
            let batch = std::mem::take(&mut updates);
            t.db.run_command(doc! { "update": USERS, "updates": batch, "ordered": false })
                .await
                .unwrap();
        }
        if next.is_none() {
            break;
        }
    }
}

/// 003's transform driven by the pipeline from Rust, per document (the client-side path).
struct ClientPath;

#[async_trait::async_trait]
impl Migration for ClientPath {
    fn description(&self) -> &'static str {
        "003 per document in Rust"
    }
    async fn up(&self, ctx: &Context) -> mongo_migrate::Result<Outcome> {
        let spec = Backfill::new(
            USERS,
            candidates(),
            Transform::Client(Arc::new(
                mongo_migrate::registry::generated::m003::transform,
            )),
        )
        .fields(&[
            "affiliateEarnings",
            "withdrawableBalance",
            "totalWithdrawn",
            "pendingWithdrawals",
        ])
        .with_before_images();
        let stats = backfill::run(ctx, &spec).await?;
        Ok(Outcome::ok("client path", stats.to_document()))
    }
}

/// Runs the `migrate` binary to completion; returns (elapsed, peak RSS in KiB).
///
/// The peak is the child's own `VmHWM`, sampled until it exits: `wait4`'s `ru_maxrss` would
/// also count this (much larger) process's high-water mark, which Linux carries across `exec`.
// The child is reaped by `wait4`, which std's `Child` does not know about.
#[allow(clippy::zombie_processes)]
fn migrate_measured(t: &TestDb, args: &[&str]) -> (Duration, u64) {
    let started = Instant::now();
    let child = t
        .migrate_cmd(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let status_file = format!("/proc/{pid}/status");
    let mut peak_kib = 0;
    let code = loop {
        if let Some(hwm) = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        }) {
            peak_kib = peak_kib.max(hwm);
        }
        let mut status = 0;
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, 0, "migrate {args:?} failed");
    (started.elapsed(), peak_kib)
}

/// Every user, streamed and compared with another database's, sorted by `_id`.
async fn same_users(a: &TestDb, b: &TestDb) -> bool {
    let open = |t: &TestDb| {
        let coll = t.db.collection::<Document>(USERS);
        async move {
            coll.find(doc! {}).sort(doc! { "_id": 1 }).projection(doc! { "_id": 1, "affiliateEarnings": 1, "withdrawableBalance": 1, "totalWithdrawn": 1, "pendingWithdrawals": 1 }).await.unwrap()
        }
    };
    let (mut x, mut y) = (open(a).await, open(b).await);
    loop {
        match (x.try_next().await.unwrap(), y.try_next().await.unwrap()) {
            (None, None) => return true,
            (Some(p), Some(q)) if p == q => continue,
            (p, q) => {
                eprintln!("first difference: {p:?} vs {q:?}");
                return false;
            }
        }
    }
}

/// Checks that `other` holds the same users as `reference`, then drops `other`'s database: a
/// server holding every variant's data until the end would run the later variants (the 4N one
/// above all) under more cache pressure than the earlier ones.
async fn check_and_drop(reference: &TestDb, other: TestDb, name: &str, failures: &mut usize) {
    if !same_users(reference, &other).await {
        eprintln!("MISMATCH: {name} differs from migrate up");
        *failures += 1;
    }
    other.db.drop().await.unwrap();
}

/// `progress.scanned` of 003's record and when it was read, once it changed since `after`.
async fn next_scanned(
    t: &TestDb,
    after: i64,
    child: &mut std::process::Child,
) -> Option<(Instant, i64)> {
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        let scanned = t
            .record("003_migrate_existing_user_balances")
            .await
            .and_then(|r| r.get_document("progress").ok().cloned())
            .and_then(|p| p.get_i64("scanned").ok());
        if let Some(s) = scanned.filter(|s| *s > after) {
            return Some((Instant::now(), s));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The rate of 003 over at least `window`, from the record's counters: from the first change of
/// `progress.scanned` to the first change after `window`.
async fn measured_rate(
    t: &TestDb,
    window: Duration,
    child: &mut std::process::Child,
) -> Option<f64> {
    let (t0, s0) = next_scanned(t, 0, child).await?;
    tokio::time::sleep(window).await;
    let (t1, s1) = next_scanned(t, s0, child).await?;
    Some((s1 - s0) as f64 / (t1 - t0).as_secs_f64())
}

/// Starts 003 unthrottled, throttles it to 2000 docs/s with `migrate throttle` once it is
/// running, measures the rate over 5 s, clears the throttle and measures again over 2 s.
async fn throttle_check(t: &TestDb) -> (Option<f64>, Option<f64>) {
    let mut child = t
        .migrate_cmd(&["up", "--no-progress"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut limited = None;
    let mut cleared = None;
    if next_scanned(t, 0, &mut child).await.is_some() {
        let out = common::migrate(t, &["throttle", "--max-docs-per-sec", "2000"]).await;
        assert!(out.status.success(), "{}", common::text(&out));
        // Let the batches dispatched before the change drain out of the window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        limited = measured_rate(t, Duration::from_secs(5), &mut child).await;
        let out = common::migrate(t, &["throttle", "--clear"]).await;
        assert!(out.status.success(), "{}", common::text(&out));
        tokio::time::sleep(Duration::from_millis(500)).await;
        cleared = measured_rate(t, Duration::from_secs(2), &mut child).await;
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the throttled run failed");
    (limited, cleared)
}

struct Row {
    name: &'static str,
    time: Duration,
    users: u64,
}

async fn run(users: u64, bench: bool, quick: bool) -> usize {
    let mut rows: Vec<Row> = Vec::new();
    let mut failures = 0;
    eprintln!(
        "bench: {users} users per variant{}",
        if quick {
            " (quick: key ratios only)"
        } else {
            ""
        }
    );

    // (1) floor: one server-side pipeline updateMany, and (4) 003 via `migrate up`, default
    // flags, process start to exit: the key pair, run twice in turn (floor, up, floor, up), each
    // side's best time kept. Noise on this shared machine only ever adds time, and single runs
    // of the same build have differed by a fifth.
    // Each ratio's two sides run next to each other: this machine's speed drifts by about a
    // third over tens of minutes, and a floor measured minutes before its `migrate up` would
    // carry that drift into the ratio.
    let mut floor_times = Vec::new();
    let mut up_times = Vec::new();
    let mut rss_n = 0;
    let mut ups = Vec::new();
    for round in 1..=2 {
        let floor = before_003(&format!("floor{round}"), users).await;
        floor_times.push(
            timed(async {
                floor.db.run_command(doc! { "update": USERS, "updates": [{ "q": candidates(), "u": floor_pipeline(), "multi": true }] }).await.unwrap();
            })
            .await,
        );
        let up = before_003(&format!("migrate{round}"), users).await;
        let (time, rss) = migrate_measured(&up, &["up"]);
        up_times.push(time);
        rss_n = rss_n.max(rss);
        // Every variant must produce 003's result; each is checked against (4), then dropped.
        check_and_drop(&up, floor, "floor", &mut failures).await;
        ups.push(up);
    }
    let second = ups.pop().expect("two rounds ran");
    let migrate = ups.pop().expect("two rounds ran");
    check_and_drop(&migrate, second, "the second migrate up", &mut failures).await;
    let best = |times: &[Duration]| times.iter().copied().min().expect("two rounds ran");
    rows.push(Row {
        name: "(1) floor: one pipeline updateMany (best of 2)",
        time: best(&floor_times),
        users,
    });
    let time_4 = best(&up_times);
    rows.push(Row {
        name: "(4) migrate up (003) (best of 2)",
        time: time_4,
        users,
    });
    eprintln!(
        "bench: floor {:.2} s and {:.2} s, migrate up {:.2} s and {:.2} s",
        floor_times[0].as_secs_f64(),
        floor_times[1].as_secs_f64(),
        up_times[0].as_secs_f64(),
        up_times[1].as_secs_f64()
    );

    // (4f) the same with a fixed batch size of 1000, the default before `--batch-size auto`:
    // (4) over (4f) is what tuning the batch size gains or costs.
    let fixed = before_003("fixed1000", users).await;
    let (time, _) = migrate_measured(&fixed, &["up", "--batch-size", "1000"]);
    rows.push(Row {
        name: "(4f) migrate up (003), --batch-size 1000",
        time,
        users,
    });
    check_and_drop(&migrate, fixed, "fixed batch size 1000", &mut failures).await;

    // (4c) 003 via `migrate up` without catch-up (no change stream, no rounds after the scan):
    // what catch-up costs on a quiet collection is (4) over (4c).
    let quiet = before_003("nocatchup", users).await;
    let (time, _) = migrate_measured(&quiet, &["up", "--catch-up", "off"]);
    rows.push(Row {
        name: "(4c) migrate up (003), catch-up off",
        time,
        users,
    });
    check_and_drop(&migrate, quiet, "catch-up off", &mut failures).await;

    // (6) resume: SIGKILL at about half-way, then `migrate up --resume`. The kill comes at half
    // of (4)'s time rather than from watching the checkpoint, so nothing but the two runs
    // touches the server while they are timed.
    let resumed = before_003("resume", users).await;
    let started = Instant::now();
    let mut child = resumed
        .migrate_cmd(&["up"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let half = started + time_4 / 2;
    while Instant::now() < half && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed_mid_run = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let killed_at = resumed
        .record("003_migrate_existing_user_balances")
        .await
        .and_then(|r| r.get_document("checkpoint").ok().cloned())
        .and_then(|c| c.get_i64("scanned").ok())
        .unwrap_or(0);
    let (_, _) = migrate_measured(&resumed, &["up", "--resume"]);
    let time = started.elapsed();
    eprintln!("bench: (6) killed with {killed_at} of {users} users checkpointed");
    rows.push(Row {
        name: "(6) 003 killed at half + --resume",
        time,
        users,
    });
    check_and_drop(&migrate, resumed, "resume", &mut failures).await;

    // (1b) whole-run floor: 001, 002, 003 with the plainest server-side commands.
    let whole_floor = load("wholefloor", users).await;
    let time = timed(async {
        let coll = whole_floor.db.collection::<Document>(USERS);
        for f in FIELDS {
            coll.update_many(doc! { f: { "$exists": false } }, doc! { "$set": { f: 0 } }).await.unwrap();
        }
        for (collection, fields) in mongo_migrate::registry::generated::m002::INDEXES.iter().fold(Vec::<(&str, Vec<&[&str]>)>::new(), |mut acc, (c, f)| {
            match acc.iter_mut().find(|(x, _)| x == c) {
                Some((_, list)) => list.push(f),
                None => acc.push((c, vec![*f])),
            }
            acc
        }) {
            let models: Vec<mongodb::IndexModel> = fields
                .iter()
                .map(|f| {
                    let (keys, name) = mongo_migrate::registry::generated::m002::spec(f);
                    mongodb::IndexModel::builder().keys(keys).options(mongodb::options::IndexOptions::builder().name(name).build()).build()
                })
                .collect();
            whole_floor.db.collection::<Document>(collection).create_indexes(models).await.unwrap();
        }
        whole_floor.db.run_command(doc! { "update": USERS, "updates": [{ "q": candidates(), "u": floor_pipeline(), "multi": true }] }).await.unwrap();
    })
    .await;
    rows.push(Row {
        name: "(1b) whole-run floor: 001+002+003 plain",
        time,
        users,
    });

    // (4b) the whole `migrate up`: 001 + 002 + 003.
    let whole = load("whole", users).await;
    let (time, _) = migrate_measured(&whole, &["up"]);
    rows.push(Row {
        name: "(4b) migrate up (001+002+003)",
        time,
        users,
    });
    if !same_users(&whole, &whole_floor).await {
        eprintln!("MISMATCH: whole-run floor differs from the whole migrate up");
        failures += 1;
    }
    whole.db.drop().await.unwrap();
    whole_floor.db.drop().await.unwrap();

    // (2) naive peer and (3) batched peer: left out of a quick run (no key ratio needs them, and
    // the naive loop alone takes longer than the rest).
    if !quick {
        // (2) naive peer: one cursor, one updateOne per document.
        let t = before_003("naive", users).await;
        let time = timed(naive_peer(&t)).await;
        rows.push(Row {
            name: "(2) naive peer: cursor + updateOne each",
            time,
            users,
        });
        check_and_drop(&migrate, t, "naive", &mut failures).await;

        // (3) batched peer: bulk update per batch, no checkpoints or guards.
        let t = before_003("batched", users).await;
        let time = timed(batched_peer(&t)).await;
        rows.push(Row {
            name: "(3) batched peer: bulk update per batch",
            time,
            users,
        });
        check_and_drop(&migrate, t, "batched", &mut failures).await;
    }

    // (5) the pipeline with 003's per-document Rust transform (not in a quick run).
    if !quick {
        let t = before_003("client", users).await;
        let registered = Registered {
            number: 3,
            name: "003_migrate_existing_user_balances",
            checksum: "bench",
            legacy: &[],
            doc: "",
            migration: Arc::new(ClientPath),
        };
        let time = timed(async {
            MigrationRunner::with_migrations(t.db.clone(), vec![registered])
                .with_options(RunOptions {
                    progress: false,
                    // 001 and 002 are applied, and this runner knows only 003.
                    ignore_unknown: true,
                    ..RunOptions::default()
                })
                .run_pending()
                .await
                .unwrap();
        })
        .await;
        rows.push(Row {
            name: "(5) pipeline, Rust transform per doc",
            time,
            users,
        });
        check_and_drop(&migrate, t, "client", &mut failures).await;
    }

    // (8) `migrate throttle --max-docs-per-sec 2000` sent to a running 003: the rate measured
    // from the record's counters over the next 5 s, then after `--clear`.
    let throttled = before_003("throttle2000", users).await;
    let (limited, cleared) = throttle_check(&throttled).await;
    check_and_drop(&migrate, throttled, "throttled", &mut failures).await;

    // (7) memory: peak RSS of (4) at 4N.
    let big = before_003("memory4n", users * 4).await;
    let (time4, rss_4n) = migrate_measured(&big, &["up"]);
    rows.push(Row {
        name: "(7) migrate up (003) at 4N",
        time: time4,
        users: users * 4,
    });

    big.db.drop().await.unwrap();
    migrate.db.drop().await.unwrap();
    if !killed_mid_run {
        eprintln!("note: the resume run finished before it could be killed (too few users)");
    }

    let rate = |r: &Row| r.users as f64 / r.time.as_secs_f64().max(1e-9);
    let get = |prefix: &str| rows.iter().find(|r| r.name.starts_with(prefix)).map(rate);
    let t_of = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(|r| r.time.as_secs_f64())
    };
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# Backfill benchmark: {users} users, one run, same server{}\n",
        if quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        report,
        "| variant | seconds | docs/s | ms per 1000 |\n|---|---:|---:|---:|"
    );
    for r in &rows {
        let _ = writeln!(
            report,
            "| {} | {:.2} | {:.0} | {:.1} |",
            r.name,
            r.time.as_secs_f64(),
            rate(r),
            r.time.as_secs_f64() * 1e6 / r.users as f64
        );
    }
    // (name, measured, at least (true) or at most (false), bound); a ratio whose variants did not
    // run (quick mode) is left out.
    let checks = [
        (
            "(4) / (1) throughput",
            ratio(get("(4) "), get("(1) ")),
            true,
            0.85,
        ),
        (
            "(4b) / (1b) throughput",
            ratio(get("(4b)"), get("(1b)")),
            true,
            1.0,
        ),
        (
            "(4) / (2) throughput",
            ratio(get("(4) "), get("(2) ")),
            true,
            15.0,
        ),
        (
            "(4) / (3) throughput",
            ratio(get("(4) "), get("(3) ")),
            true,
            2.0,
        ),
        (
            "(5) / (3) throughput",
            ratio(get("(5) "), get("(3) ")),
            true,
            1.0,
        ),
        (
            "(6) / (4) time",
            ratio(t_of("(6) "), t_of("(4) ")),
            false,
            1.1,
        ),
        (
            "(4) auto / (4f) 1000 throughput: batch size",
            ratio(get("(4) "), get("(4f)")),
            true,
            0.95,
        ),
        (
            "(4) / (4c) time: catch-up",
            ratio(t_of("(4) "), t_of("(4c)")),
            false,
            1.05,
        ),
        (
            "(7) peak RSS 4N / N",
            Some(rss_4n as f64 / rss_n.max(1) as f64),
            false,
            1.2,
        ),
        (
            "(7) peak RSS at N, MiB",
            Some(rss_n as f64 / 1024.0),
            false,
            64.0,
        ),
        (
            "(7) peak RSS at 4N, MiB",
            Some(rss_4n as f64 / 1024.0),
            false,
            200.0,
        ),
    ];
    let _ = writeln!(
        report,
        "\n| ratio | measured | target | met |\n|---|---:|---|---|"
    );
    for (name, value, at_least, bound) in checks {
        let Some(value) = value else { continue };
        let (target, met) = if at_least {
            (">=", value >= bound)
        } else {
            ("<=", value <= bound)
        };
        let _ = writeln!(
            report,
            "| {name} | {value:.2} | {target} {bound} | {} |",
            if met { "yes" } else { "NO" }
        );
    }
    let shown = |r: Option<f64>| {
        r.map_or_else(
            || "not measured (the run ended first)".into(),
            |r| format!("{r:.0} docs/s"),
        )
    };
    let _ = writeln!(
        report,
        "\n(8) throttle 2000 docs/s sent to a running 003: {} over the next 5 s (target <= ~2000); after --clear: {}",
        shown(limited),
        shown(cleared)
    );
    if limited.is_some_and(|r| r > 2000.0 * 1.15) {
        eprintln!("THROTTLE: {limited:?} docs/s is over the 2000 docs/s asked for");
        failures += 1;
    }
    let _ = writeln!(
        report,
        "\npeak RSS: {:.1} MiB at N, {:.1} MiB at 4N",
        rss_n as f64 / 1024.0,
        rss_4n as f64 / 1024.0
    );
    let _ = writeln!(
        report,
        "results identical across variants: {}",
        if failures == 0 { "yes" } else { "NO" }
    );
    println!("{report}");
    if bench {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-report.md");
        let _ = std::fs::write(&path, &report);
        println!("written to {}", path.display());
    }
    common::shutdown_clients().await;
    failures
}
