//! Resuming: after SIGKILL without double-applying or skipping, and `--restart` from scratch.

use super::*;

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
async fn a_resume_whose_token_the_server_refuses_catches_up_by_passes_and_ends_identical() {
    let data = users(4_000, 12);
    let reference = reference(&data, &[]).await;
    let t = fresh_db("badtoken").await;
    load(&t, &data).await;
    let mut run = spawn(
        &t,
        &[
            "up",
            "--batch-size",
            "200",
            "--max-docs-per-sec",
            "2000",
            "--no-progress",
        ],
    );
    run.wait_until("003 a quarter through", async || {
        scanned(&t, M003).await >= 1_000
    })
    .await;
    run.kill().await;
    // A token no server can resume from: the stream, reopened beside the first batches, fails,
    // and the run goes on catching up by passes instead.
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": M003 },
            doc! { "$set": { "checkpoint.resumeToken": { "_data": "00" } } },
        )
        .await
        .unwrap();
    let out = migrate(&t, &["up", "--resume", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = text(&out);
    assert!(
        log.contains("the saved resume token cannot be used; catching up by passes"),
        "{log}"
    );
    assert_same_users(&t.all("users").await, &reference.users);
    let m003 = result(&t.record(M003).await.unwrap()).clone();
    assert_eq!(
        m003.get_document("caughtUp")
            .unwrap()
            .get_str("mode")
            .unwrap(),
        "passes",
        "{m003}"
    );
    assert_counters_add_up(&m003);
}
