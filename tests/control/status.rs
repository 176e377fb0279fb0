//! `status` of a running backfill, of one whose holder was killed, and `status --watch`.

use super::*;

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
