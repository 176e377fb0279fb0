//! Production control of a running backfill, from other processes: live progress in `status`
//! (and its JSON), an interrupted run told from a live one, `pause`, `throttle`, the batch size
//! tuned to the target batch time, and the lag read from the server.

mod common;

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

#[tokio::test]
async fn status_of_a_throttled_run_on_100k_users_shows_percentage_rate_eta_and_holder() {
    let t = fresh_db("status100k").await;
    sample_users(&t, 100_000).await;
    let mut run = Running::start(&t, &["up", "--max-docs-per-sec", "10000", "--no-progress"]);
    // A few batches in, so the rate over the last minute has something to measure.
    run.wait_until("a few batches", async || {
        live_record(&t)
            .await
            .is_some_and(|r| num(progress(&r), "scanned") >= 15_000.0)
    })
    .await;

    let out = migrate(&t, &["status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.contains("running on"))
        .unwrap_or_else(|| panic!("no running line in:\n{table}"));
    let holder = format!("running on {} pid {}", hostname(), run.pid());
    assert!(line.contains(&holder), "{line}");
    for part in [
        "% (",
        " / 100,000)",
        " docs/s",
        "ETA ",
        "heartbeat ",
        "s ago",
    ] {
        assert!(line.contains(part), "no {part:?} in {line}");
    }
    assert!(
        line.contains("throttled: rate limit 10000 docs/s"),
        "{line}"
    );

    let out = migrate(&t, &["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let running = json
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["state"] == "running")
        .unwrap_or_else(|| panic!("nothing running in {json}"));
    let p = &running["progress"];
    assert!(p["scanned"].as_i64().unwrap() >= 15_000, "{p}");
    assert!(p["total"].as_i64().unwrap() >= 100_000, "{p}");
    let rate = p["docsPerSec"].as_f64().unwrap();
    assert!(
        rate > 1000.0 && rate < 13_000.0,
        "throttled to 10000/s: {p}"
    );
    assert!(p["etaSeconds"].as_i64().unwrap() > 0, "{p}");
    assert!(p["batchSize"].as_i64().unwrap() > 0, "{p}");
    assert_eq!(p["throttle"]["state"], "throttled", "{p}");
    assert_eq!(p["throttle"]["maxDocsPerSec"], 10000.0, "{p}");
    assert_eq!(p["holder"]["host"], hostname().as_str(), "{p}");
    assert_eq!(p["holder"]["pid"], run.pid() as i64, "{p}");
    assert!(
        p["holder"]["user"].as_str().is_some_and(|u| !u.is_empty()),
        "{p}"
    );
    assert!(p["heartbeatAt"].is_object(), "{p}");
    assert!(p["heartbeatAgeSeconds"].as_f64().unwrap() < 5.0, "{p}");

    run.interrupt();
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
}

#[tokio::test]
async fn after_kill_9_status_shows_interrupted_with_the_checkpoint_and_the_resume_command() {
    let t = fresh_db("kill9status").await;
    sample_users(&t, 6_000).await;
    let mut run = Running::start(&t, &["up", "--max-docs-per-sec", "2000", "--no-progress"]);
    run.wait_until("a checkpoint", async || live_record(&t).await.is_some())
        .await;
    let alive = migrate(&t, &["status"]).await;
    assert!(text(&alive).contains("running on"), "{}", text(&alive));
    run.kill().await;

    let out = migrate(&t, &["status"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    let line = table
        .lines()
        .find(|l| l.contains("interrupted"))
        .unwrap_or_else(|| panic!("no interrupted line in:\n{table}"));
    assert!(line.contains("checkpoint: "), "{line}");
    assert!(line.contains("resume with: migrate up --resume"), "{line}");
    assert!(!table.contains("running on"), "{table}");
    let out = migrate(&t, &["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json.as_array()
            .unwrap()
            .iter()
            .any(|m| m["state"] == "interrupted" && m["progress"]["scanned"].as_i64() > Some(0)),
        "{json}"
    );

    let resumed = migrate(&t, &["up", "--resume", "--no-progress"]).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let after = migrate(&t, &["status"]).await;
    assert!(!text(&after).contains("interrupted"), "{}", text(&after));
}

#[tokio::test]
async fn pause_from_another_process_stops_up_with_130_and_resume_matches_an_uninterrupted_run() {
    let reference = fresh_db("pauseref").await;
    sample_users(&reference, 8_000).await;
    let plain = migrate(&reference, &["up", "--no-progress"]).await;
    assert!(plain.status.success(), "{}", text(&plain));

    let t = fresh_db("pause").await;
    sample_users(&t, 8_000).await;
    let mut run = Running::start(&t, &["up", "--max-docs-per-sec", "3000", "--no-progress"]);
    run.wait_until("a checkpoint", async || live_record(&t).await.is_some())
        .await;
    let paused = migrate(&t, &["pause"]).await;
    assert_eq!(paused.status.code(), Some(0), "{}", text(&paused));
    assert!(
        text(&paused).contains("paused: `migrate up` by"),
        "{}",
        text(&paused)
    );
    // `pause` returned only once the holder let go: it has exited.
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("pause requested"), "{}", text(&out));
    assert!(text(&out).contains("--resume"), "{}", text(&out));
    let interrupted =
        t.db.collection::<Document>("migrations")
            .find_one(doc! { "history.action": "pause" })
            .await
            .unwrap()
            .expect("the pause is in a migration's history");
    let entry = interrupted
        .get_array("history")
        .unwrap()
        .iter()
        .filter_map(|h| h.as_document())
        .find(|h| h.get_str("action") == Ok("pause"))
        .unwrap();
    assert_eq!(entry.get_str("host").unwrap(), hostname(), "{entry}");
    assert!(
        entry.get_str("user").is_ok_and(|u| !u.is_empty()),
        "{entry}"
    );
    assert_eq!(interrupted.get_str("status").unwrap(), "running");
    assert_eq!(
        t.db.collection::<Document>("migrations_lock")
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );

    let resumed = migrate(&t, &["up", "--resume", "--no-progress"]).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let (a, b) = (users_of(&reference).await, users_of(&t).await);
    assert_eq!(a.len(), b.len());
    assert!(a == b, "users differ from an uninterrupted run");
}

#[tokio::test]
async fn throttle_changes_the_running_limits_live_and_is_recorded_with_who_sent_it() {
    let t = fresh_db("throttlecmd").await;
    sample_users(&t, 8_000).await;
    let mut run = Running::start(&t, &["up", "--max-docs-per-sec", "800", "--no-progress"]);
    run.wait_until("a checkpoint", async || live_record(&t).await.is_some())
        .await;

    let out = migrate(
        &t,
        &[
            "throttle",
            "--max-docs-per-sec",
            "2000",
            "--batch-size",
            "300",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("now runs with max docs/s 2000 docs/s, batch size 300"),
        "{}",
        text(&out)
    );
    run.wait_until("the new limits in the live progress", async || {
        live_record(&t).await.is_some_and(|r| {
            let p = progress(&r);
            let throttle = p.get_document("throttle").unwrap();
            num(throttle, "maxDocsPerSec") == 2000.0 && num(p, "batchSize") == 300.0
        })
    })
    .await;

    let out = migrate(&t, &["throttle", "--clear"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    run.wait_until("the run's own limits back", async || {
        live_record(&t).await.is_some_and(|r| {
            let throttle = progress(&r).get_document("throttle").unwrap().clone();
            num(&throttle, "maxDocsPerSec") == 800.0
                && throttle.get_str("batchSizeMode") == Ok("auto")
        })
    })
    .await;
    let record = live_record(&t).await.unwrap();
    let throttles: Vec<&Document> = record
        .get_array("history")
        .unwrap()
        .iter()
        .filter_map(|h| h.as_document())
        .filter(|h| h.get_str("action") == Ok("throttle"))
        .collect();
    assert!(!throttles.is_empty(), "{record}");
    assert!(
        throttles
            .iter()
            .all(|h| h.get_str("host") == Ok(hostname().as_str()) && h.get_str("user").is_ok()),
        "{throttles:?}"
    );
    run.interrupt();
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let log = common::read(&t.log_file());
    assert!(
        log.contains("throttle changed by `migrate throttle`"),
        "{log}"
    );
}

#[tokio::test]
async fn auto_batch_size_grows_on_a_quiet_server_and_ends_with_the_same_data_as_a_fixed_size() {
    let fixed = fresh_db("fixedbatch").await;
    sample_users(&fixed, 20_000).await;
    let out = migrate(&fixed, &["up", "--batch-size", "1000", "--no-progress"]).await;
    assert!(out.status.success(), "{}", text(&out));

    let t = fresh_db("autobatch").await;
    sample_users(&t, 20_000).await;
    // A generous target, so even a slow machine's batches are well under it and grow.
    let mut run = Running::start(
        &t,
        &[
            "up",
            "--batch-size",
            "auto",
            "--target-batch-ms",
            "3000",
            "--no-progress",
        ],
    );
    run.wait_until("a batch larger than the first", async || {
        live_record(&t)
            .await
            .is_some_and(|r| num(progress(&r), "batchSize") > 1000.0)
    })
    .await;
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = common::read(&t.log_file());
    assert!(log.contains("batch size 1000 -> 1500 (auto)"), "{log}");
    assert!(
        users_of(&fixed).await == users_of(&t).await,
        "users differ from a fixed-size run"
    );
    for name in [M001, M003] {
        let record = t.record(name).await.unwrap();
        assert_eq!(record.get_str("status").unwrap(), "completed");
        assert!(
            record.get("progress").is_none(),
            "progress is dropped when done: {record}"
        );
    }
}

#[tokio::test]
async fn the_run_reads_replication_lag_from_the_server_and_proceeds() {
    let t = fresh_db("lag").await;
    sample_users(&t, 500).await;
    let out = migrate(&t, &["up", "--max-replication-lag", "10", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = common::read(&t.log_file());
    assert!(
        log.contains("lag throttling on: replication lag 0 s, read from replSetGetStatus"),
        "{log}"
    );
    assert!(!log.contains("throttled: replication lag"), "{log}");
    assert_eq!(t.status(M003).await, "completed");
}

#[tokio::test]
async fn resume_pause_and_throttle_with_nothing_running_are_harmless() {
    let t = fresh_db("nothingrunning").await;
    sample_users(&t, 300).await;
    for args in [&["pause"][..], &["throttle", "--max-docs-per-sec", "10"]] {
        let out = migrate(&t, args).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("no migration run holds the lock"),
            "{}",
            text(&out)
        );
    }
    // --resume with nothing interrupted runs what is pending, then does nothing.
    for _ in 0..2 {
        let out = migrate(&t, &["up", "--resume", "--no-progress"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    assert_eq!(t.status(M003).await, "completed");
    let out = migrate(&t, &["throttle"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a throttle without a limit is a usage error"
    );
}

#[tokio::test]
async fn help_of_pause_throttle_and_the_new_flags_lists_them() {
    let t = fresh_db("controlhelp").await;
    let cases: [(&[&str], &[&str]); 5] = [
        (&["--help"], &["pause", "throttle"]),
        (
            &["up", "--help"],
            &[
                "--batch-size <N|auto>",
                "--target-batch-ms",
                "--max-replication-lag",
            ],
        ),
        (&["status", "--help"], &["--json", "--watch"]),
        (&["pause", "--help"], &["--timeout", "exit 130"]),
        (
            &["throttle", "--help"],
            &["--max-docs-per-sec", "--batch-size", "--clear"],
        ),
    ];
    for (args, expected) in cases {
        let out = migrate(&t, args).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        let help = String::from_utf8_lossy(&out.stdout);
        for flag in expected {
            assert!(help.contains(flag), "{args:?} lacks {flag}:\n{help}");
        }
    }
}

/// Users with integer `_id`s and no withdrawal fields: 40% without earnings, the rest with
/// amounts in cents.
fn plain_users(n: i64) -> Vec<Document> {
    let mut rng = common::Rng(5);
    (0..n)
        .map(|i| match rng.below(10) {
            0..=3 => doc! { "_id": i, "name": format!("user {i}"), "affiliateEarnings": 0.0 },
            _ => doc! {
                "_id": i,
                "name": format!("user {i}"),
                "affiliateEarnings": (rng.below(10_000_000) + 100) as f64 / 100.0,
            },
        })
        .collect()
}

/// Sets `affiliateEarnings` of random users (about 500 a second) until the flag is set.
fn writer(
    t: &TestDb,
    users: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let coll = t.db.collection::<Document>("users");
    tokio::spawn(async move {
        let (mut rng, mut writes) = (common::Rng(99), 0);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let id = rng.below(users as u64) as i64;
            let amount = (rng.below(5_000_000) + 100) as f64 / 100.0;
            coll.update_one(
                doc! { "_id": id },
                doc! { "$set": { "affiliateEarnings": amount } },
            )
            .await
            .unwrap();
            writes += 1;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        writes
    })
}

#[tokio::test]
async fn pause_and_live_limits_under_a_concurrent_writer_still_end_with_balances_of_current_earnings(
) {
    const USERS: i64 = 8_000;
    let t = fresh_db("pausewriter").await;
    common::load(&t, &plain_users(USERS)).await;
    let out = migrate(&t, &["up", "--to", "2", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writes = writer(&t, USERS, stop.clone());
    // Auto batch sizes with a short target, so the size moves while the writer writes.
    let mut run = Running::start(
        &t,
        &[
            "up",
            "--max-docs-per-sec",
            "3000",
            "--target-batch-ms",
            "100",
            "--no-progress",
        ],
    );
    run.wait_until("003 part-way", async || {
        live_record(&t)
            .await
            .is_some_and(|r| num(progress(&r), "scanned") >= 1500.0)
    })
    .await;
    let out = migrate(&t, &["throttle", "--batch-size", "250"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let paused = migrate(&t, &["pause"]).await;
    assert_eq!(paused.status.code(), Some(0), "{}", text(&paused));
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    // The application goes on writing while the run is paused: the resumed run replays those
    // writes from the saved resume token.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writes.await.unwrap();
    assert!(writes > 100, "the writer wrote only {writes} times");

    let resumed = migrate(&t, &["up", "--resume", "--no-progress"]).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));
    let mut wrong = Vec::new();
    for user in t.all("users").await {
        let expected = match mongo_migrate::money::classify(user.get("affiliateEarnings")) {
            mongo_migrate::money::Earnings::Half(half) => half,
            _ => mongodb::bson::Bson::Int32(0),
        };
        let actual = user.get("withdrawableBalance").cloned();
        let zero = matches!(
            (&expected, &actual),
            (mongodb::bson::Bson::Int32(0), Some(v)) if mongo_migrate::engine::bson_ext::as_int(v) == Some(0) || v.as_f64() == Some(0.0)
        );
        if actual.as_ref() != Some(&expected) && !zero {
            wrong.push(format!("{user}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} user(s) without the balance of their current earnings; first: {}",
        wrong.len(),
        wrong[0]
    );
}

#[tokio::test]
async fn status_watch_refreshes_until_the_run_ends() {
    let t = fresh_db("watch").await;
    sample_users(&t, 3_000).await;
    let mut run = Running::start(&t, &["up", "--max-docs-per-sec", "2000", "--no-progress"]);
    run.wait_until("a checkpoint", async || live_record(&t).await.is_some())
        .await;
    let watched = migrate(&t, &["status", "--watch"]).await;
    assert_eq!(watched.status.code(), Some(0), "{}", text(&watched));
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&watched.stdout);
    assert!(
        shown.matches("MIGRATION").count() >= 2,
        "refreshed at least once:\n{shown}"
    );
    assert!(shown.contains("running on"), "{shown}");
    let last = shown.rsplit("MIGRATION").next().unwrap();
    assert!(
        !last.contains("running on") && last.contains("completed"),
        "the last refresh shows the run ended:\n{last}"
    );
}
