//! `migrate throttle`, `--batch-size auto`, the lag probe, and the new commands with nothing
//! running.

use super::*;

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
    // A generous target, so even a slow machine's batches are well under it and grow. `-v`:
    // size changes are logged at debug level.
    let mut run = Running::start(
        &t,
        &[
            "up",
            "--batch-size",
            "auto",
            "--target-batch-ms",
            "3000",
            "--no-progress",
            "-v",
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

#[tokio::test]
async fn the_log_of_a_throttled_paused_and_resumed_run_shows_no_rust_debug_forms() {
    let t = fresh_db("logforms").await;
    sample_users(&t, 8_000).await;
    // Slow enough that the throttle and the pause land inside 001's scan (8 s) even on a
    // loaded machine, so the resumed run starts from a checkpoint.
    let mut run = Running::start(&t, &["up", "--max-docs-per-sec", "1000", "--no-progress"]);
    run.wait_until("a checkpoint", async || live_record(&t).await.is_some())
        .await;
    let throttled = migrate(&t, &["throttle", "--max-docs-per-sec", "900"]).await;
    assert_eq!(throttled.status.code(), Some(0), "{}", text(&throttled));
    let paused = migrate(&t, &["pause"]).await;
    assert_eq!(paused.status.code(), Some(0), "{}", text(&paused));
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let resumed = migrate(&t, &["up", "--resume", "--no-progress"]).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed));

    let log = common::read(&t.log_file());
    // The lines that used to print Options and BSON values in Rust's own notation.
    assert!(log.contains("limits changed"), "{log}");
    assert!(log.contains("max_docs_per_sec=900"), "{log}");
    assert!(log.contains("resuming backfill from checkpoint"), "{log}");
    for debug_form in ["Some(", "None", "ObjectId(", "Int64(", "Document("] {
        assert!(!log.contains(debug_form), "{debug_form} in the log:\n{log}");
    }
    // Auto batch-size changes go to debug level, not the log file at info.
    assert!(!log.contains("(auto)"), "{log}");
}
