//! Concurrent application writes are preserved, the throttle bounds the rate, and the log
//! file follows the run.

use super::*;

#[tokio::test]
async fn concurrent_application_writes_are_preserved() {
    let data = users(10_000, 6);
    let reference = reference(&data, &[]).await;
    let t = fresh_db("concurrent").await;
    load(&t, &data).await;
    let mut order: Vec<ObjectId> = data
        .iter()
        .map(|u| u.get_object_id("_id").unwrap())
        .collect();
    order.sort();

    // At most 2500 users/s: each backfill takes 4 s or more.
    let mut run = spawn(
        &t,
        &[
            "up",
            "--batch-size",
            "200",
            "--max-docs-per-sec",
            "2500",
            "--no-progress",
        ],
    );
    let coll = t.db.collection::<Document>("users");
    let mut rng = Rng(60);
    let mut touched: HashSet<ObjectId> = HashSet::new();
    // Application writes while 001 runs and while 003 runs, 10 users every 25 ms, each time
    // among the 800 users just past the running backfill's checkpoint: the ones its batches in
    // flight have read or are about to read.
    let quota = [100, 200];
    let mut during = [0usize; 2];
    while during != quota && !run.has_exited() {
        let mut target = None;
        for (phase, name) in [(1, M003), (0, M001)] {
            if let Some(cp) = checkpoint(&t, name).await {
                if let Some(Bson::ObjectId(last)) = cp.get("lastId") {
                    target = Some((phase, order.partition_point(|id| id <= last)));
                }
                break;
            }
        }
        if let Some((phase, at)) = target.filter(|(p, _)| during[*p] < quota[*p]) {
            let mut wave = Vec::new();
            while wave.len() < 10 {
                let id = order[(at + rng.below(800) as usize) % order.len()];
                if touched.insert(id) {
                    wave.push(Bson::ObjectId(id));
                }
            }
            coll.update_many(
                doc! { "_id": { "$in": wave } },
                doc! { "$set": { "withdrawableBalance": 777, "totalWithdrawn": 5 } },
            )
            .await
            .unwrap();
            during[phase] += 10;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let out = run.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        during, quota,
        "the writes landed while the backfills ran (each takes 4 s or more)"
    );

    let all = t.all("users").await;
    let originals: HashMap<ObjectId, &Document> = data
        .iter()
        .map(|u| (u.get_object_id("_id").unwrap(), u))
        .collect();
    let mut migrated = Vec::new();
    let mut expected = Vec::new();
    for (i, user) in all.iter().enumerate() {
        let id = user.get_object_id("_id").unwrap();
        let original = originals[&id];
        if touched.contains(&id) {
            assert_eq!(
                user.get("withdrawableBalance"),
                Some(&Bson::Int32(777)),
                "{user}"
            );
            assert_eq!(user.get("totalWithdrawn"), Some(&Bson::Int32(5)), "{user}");
            assert_eq!(
                user.get("pendingWithdrawals"),
                Some(&Bson::Int32(0)),
                "{user}"
            );
            let mut rest = user.clone();
            let mut original_rest = original.clone();
            for f in FIELDS {
                rest.remove(f);
                original_rest.remove(f);
            }
            assert_eq!(rest, original_rest, "nothing else changed");
        } else {
            migrated.push(user.clone());
            expected.push(reference.users[i].clone());
        }
    }
    assert_eq!(migrated.len(), all.len() - touched.len());
    assert_same_users(&migrated, &expected);

    let record = t.record(M003).await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    let m003 = result(&record);
    assert_counters_add_up(m003);
    eprintln!("003 result with concurrent writes: {m003}");
}

#[tokio::test]
async fn throttle_bounds_the_rate() {
    let t = fresh_db("throttle").await;
    load(&t, &plain_users(4_000)).await;
    let (rate, batch, total) = (1000.0, 200.0, 4000.0);
    let clock = Instant::now();
    let out = migrate(
        &t,
        &[
            "up",
            "--max-docs-per-sec",
            "1000",
            "--batch-size",
            "200",
            "--no-progress",
        ],
    )
    .await;
    let elapsed = clock.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Both backfills scan all 4000 users: the last batch of each may start only after
    // (total - batch) / rate = 3.8 s. Lower bounds only: a slow machine may take longer.
    let floor_ms = ((total - batch) / rate * 1000.0) as i64 - 50;
    for name in [M001, M003] {
        let record = t.record(name).await.unwrap();
        assert_eq!(n(result(&record), "batches"), 20, "{record}");
        let ms = record.get_i64("durationMs").unwrap();
        assert!(
            ms >= floor_ms,
            "{name} took {ms} ms, under the throttle's {floor_ms} ms"
        );
    }
    assert!(
        elapsed >= Duration::from_millis(2 * floor_ms as u64),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn log_file_follows_the_run() {
    let t = fresh_db("logfile").await;
    load(&t, &plain_users(1_200)).await;
    // 200 users/s: each backfill runs 6 s, past the 5 s between progress lines.
    let out = migrate(
        &t,
        &[
            "up",
            "--max-docs-per-sec",
            "200",
            "--batch-size",
            "100",
            "--no-progress",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = read(&t.log_file());
    let lines: Vec<&str> = log.lines().collect();
    let find = |what: &str, after: usize| -> usize {
        lines
            .iter()
            .enumerate()
            .skip(after)
            .find(|(_, l)| l.contains(what))
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {what:?} after line {after} of the log:\n{log}"))
    };
    let mut at = find("lock acquired", 0);
    for (name, label) in [(M001, "001 withdrawal fields"), (M003, "003 balances")] {
        at = find(&format!("migration started migration=\"{name}\""), at);
        let mid = find(&format!("{label}: "), at);
        assert!(
            !lines[mid].contains("1200/1200"),
            "a progress line while {name} runs: {}",
            lines[mid]
        );
        assert!(lines[mid].contains(" INFO "), "{}", lines[mid]);
        at = find(&format!("{label}: 1200/1200 (100.0%)"), mid);
        at = find("migration completed", at);
        assert!(lines[at].contains(name), "{}", lines[at]);
    }
    find("lock released", at);
    for line in [
        "migration completed: added 3600 missing field(s) to 1200 user(s)",
        "migration completed: set withdrawal balances of 1200 user(s); 0 already right",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
}

#[tokio::test]
async fn batches_in_flight_on_a_quiet_collection_conflict_with_nothing() {
    // A first run: the before-images index is new, and the first chunk inserted makes it
    // multikey. Batches in flight together must not abort one another on that.
    let t = fresh_db("quietconflicts").await;
    load(&t, &users(6_000, 8)).await;
    let out = migrate(
        &t,
        &[
            "up",
            "--batch-size",
            "300",
            "--concurrency",
            "4",
            "--no-progress",
            "-vv",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let log = read(&t.log_file());
    let record = t.record(M003).await.unwrap();
    let batches = result(&record)
        .get_i64("batchesInTransactions")
        .unwrap_or(0);
    if batches == 0 {
        // No transactions on this deployment: nothing here to conflict.
        assert!(log.contains("has no transactions"), "{log}");
        return;
    }
    for sign in ["batch transaction aborted", "a transient error was retried"] {
        assert!(
            !log.contains(sign),
            "a quiet run conflicted with itself ({sign}):\n{log}"
        );
    }
}
