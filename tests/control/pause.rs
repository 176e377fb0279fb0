//! `migrate pause` from another process, without and with a concurrent writer.

use super::*;

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
            // Slow enough that the scan is still running when the pause arrives: with batches in
            // transactions the writer no longer slows the run down.
            "--max-docs-per-sec",
            "1000",
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
async fn pause_of_a_holder_that_does_not_stop_in_time_exits_4_and_the_request_stands() {
    let t = fresh_db("pausetimeout").await;
    sample_users(&t, 4_000).await;
    let mut run = Running::start(&t, &["up", "--max-docs-per-sec", "1000", "--no-progress"]);
    run.wait_until("a checkpoint", async || live_record(&t).await.is_some())
        .await;
    // Frozen (a long GC pause, a stopped VM): it cannot see the request.
    assert_eq!(unsafe { libc::kill(run.pid() as i32, libc::SIGSTOP) }, 0);
    let out = migrate(&t, &["pause", "--timeout", "2"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("did not stop within 2s of being asked to pause"),
        "{}",
        text(&out)
    );
    // Thawed, it finds the request still in the lock and stops as asked.
    assert_eq!(unsafe { libc::kill(run.pid() as i32, libc::SIGCONT) }, 0);
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
}
