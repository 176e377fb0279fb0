//! Ctrl-C: the batches in flight finish, the checkpoint is saved, exit 130.

use super::*;

#[tokio::test]
async fn ctrl_c_stops_after_in_flight_batches_saves_checkpoint_and_exits_130() {
    let data = users(15_000, 2);
    let total = data.len() as i64;
    // Fixed batches on both sides: `batches` is one of the counters compared at the end.
    let reference = reference(&data, &["--batch-size", "1000"]).await;
    let t = fresh_db("ctrlc").await;
    load(&t, &data).await;

    // At most 5000 users/s: 001 alone takes at least 3 s. A fixed batch size, so the
    // checkpoint's counters are whole batches of 1000.
    let mut run = spawn(
        &t,
        &[
            "up",
            "--max-docs-per-sec",
            "5000",
            "--batch-size",
            "1000",
            "--no-progress",
        ],
    );
    run.wait_until("a checkpoint of 001", async || {
        scanned(&t, M001).await >= 2000
    })
    .await;
    run.interrupt();
    let out = run.output().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        stderr.contains(
            "resume with: migrate up --max-docs-per-sec 5000 --batch-size 1000 --no-progress --resume"
        ),
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

    let out = migrate(
        &t,
        &["up", "--resume", "--batch-size", "1000", "--no-progress"],
    )
    .await;
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
    assert_eq!(
        counters_of(result(&t.record(M003).await.unwrap())),
        counters_of(&reference.m003)
    );
}
