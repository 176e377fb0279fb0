//! ObjectId `_id`s are scanned in bounded windows, each sized from what the windows before it
//! held: every user is reached once whatever the spacing of the ids and the insertion order,
//! with and without transactions, after a kill between windows, and with the application
//! inserting users in the gaps the windows have passed and in those still ahead.

use super::*;

/// `users(n)` re-keyed so the ids fall in dense runs years apart, with scattered ids between
/// them and at both ends of the ObjectId space, inserted from the largest `_id` down: the first
/// document in natural order is the largest, so the scan's first window spans every user.
fn clustered_users(seed: u64) -> Vec<Document> {
    let mut rng = Rng(seed);
    let oid = |secs: u32, tail: u64| {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&secs.to_be_bytes());
        b[4..].copy_from_slice(&tail.to_be_bytes());
        ObjectId::from_bytes(b)
    };
    let mut ids: Vec<ObjectId> = Vec::new();
    // 2015: 300 ids from one process, one apart.
    ids.extend((0..300).map(|k| oid(1_420_070_400, 0x00aa_bbcc_dd00_0000 + k)));
    // 2024: 400 ids from many processes within a few seconds (random middle bytes).
    ids.extend((0..400).map(|k| oid(1_704_067_200 + (k % 3) as u32, rng.next())));
    // Scattered over the years between, and the two ends of the space.
    ids.extend((0..50).map(|_| oid(1_420_070_400 + rng.below(280_000_000) as u32, rng.next())));
    ids.push(ObjectId::from_bytes([0; 12]));
    ids.push(ObjectId::from_bytes([0xff; 12]));
    ids.sort();
    ids.dedup();
    ids.reverse();
    let mut data = users(ids.len(), seed);
    for (user, id) in data.iter_mut().zip(&ids) {
        user.insert("_id", *id);
    }
    data
}

/// `migrate up` in batches of 30 at 300 users/s: 003 takes about 2.5 s over these users.
fn slow_run(t: &TestDb) -> crate::common::Running {
    spawn(
        t,
        &[
            "up",
            "--batch-size",
            "30",
            "--max-docs-per-sec",
            "300",
            "--no-progress",
        ],
    )
}

#[tokio::test]
async fn windows_reach_every_user_across_gaps_and_dense_runs() {
    let data = clustered_users(31);
    // The reference writes batches of 1000: one window, truncated, then a handful.
    let reference = reference(&data, &[]).await;
    for extra in [&[][..], &["--no-transactions"][..]] {
        let t = fresh_db("windows").await;
        load(&t, &data).await;
        let mut args = vec!["up", "--batch-size", "40", "--no-progress"];
        args.extend_from_slice(extra);
        let out = migrate(&t, &args).await;
        // 003's own check after the run finds no eligible user left unmigrated.
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {}", text(&out));
        assert_same_users(&t.all("users").await, &reference.users);
        let m001 = result(&t.record(M001).await.unwrap()).clone();
        for key in ["usersUpdated", "fieldsAdded"] {
            assert_eq!(n(&m001, key), n(&reference.m001, key), "{extra:?}: {m001}");
        }
        let m003 = result(&t.record(M003).await.unwrap()).clone();
        assert_eq!(n(&m003, "scanned"), n(&reference.m003, "scanned"), "{m003}");
        assert_eq!(
            n(&m003, "modified"),
            n(&reference.m003, "modified"),
            "{m003}"
        );
        assert_counters_add_up(&m003);
        t.db.drop().await.unwrap();
    }
}

#[tokio::test]
async fn a_scan_killed_between_windows_resumes_and_ends_identical() {
    let data = clustered_users(32);
    let reference = reference(&data, &[]).await;
    let t = fresh_db("windowkill").await;
    load(&t, &data).await;
    let mut run = slow_run(&t);
    run.wait_until("003 a third through", async || {
        scanned(&t, M003).await >= data.len() as i64 / 3
    })
    .await;
    run.kill().await;
    assert_eq!(t.status(M003).await, "running");
    let out = migrate(&t, &["up", "--resume", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_same_users(&t.all("users").await, &reference.users);
}

#[tokio::test]
async fn users_inserted_behind_and_ahead_of_the_windows_are_all_migrated() {
    let data = clustered_users(33);
    let t = fresh_db("windowinserts").await;
    load(&t, &data).await;
    let mut run = slow_run(&t);
    run.wait_until("003 under way", async || scanned(&t, M003).await > 0)
        .await;
    let coll = t.db.collection::<Document>("users");
    let mut rng = Rng(34);
    let mut inserted: Vec<ObjectId> = Vec::new();
    // Until 003 is nine tenths through: new ids now (above every user but the largest), ids in
    // the gaps between the old ones (behind the scan or ahead of it), and below every user. Every
    // insert is acknowledged before the scan ends, so the look over the candidates after the
    // scan finds any the stream did not report (an insert after that look comes after the
    // run's convergence point, and is the application's).
    while scanned(&t, M003).await < data.len() as i64 * 9 / 10 && !run.has_exited() {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&(1_420_070_400 + rng.below(300_000_000) as u32).to_be_bytes());
        bytes[4..].copy_from_slice(&rng.next().to_be_bytes());
        let mut low = [0u8; 12];
        low[10..].copy_from_slice(&(1 + inserted.len() as u16).to_be_bytes());
        for id in [
            ObjectId::new(),
            ObjectId::from_bytes(bytes),
            ObjectId::from_bytes(low),
        ] {
            coll.insert_one(doc! {
                "_id": id,
                "email": format!("new{}@example.com", inserted.len()),
                "affiliateEarnings": 20.0,
            })
            .await
            .unwrap();
            inserted.push(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = run.output().await;
    // 003's own check after the run finds no eligible user left unmigrated.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} inserted: {}",
        text(&out),
        inserted.len()
    );
    assert!(inserted.len() >= 9, "users were inserted while 003 ran");
    for id in &inserted {
        let user = coll.find_one(doc! { "_id": id }).await.unwrap().unwrap();
        assert_eq!(
            user.get("withdrawableBalance"),
            Some(&Bson::Double(10.0)),
            "{user}"
        );
        assert_eq!(user.get("totalWithdrawn"), Some(&Bson::Int32(0)), "{user}");
        assert_eq!(
            user.get("pendingWithdrawals"),
            Some(&Bson::Int32(0)),
            "{user}"
        );
    }
}
