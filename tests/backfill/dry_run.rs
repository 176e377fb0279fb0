//! `--dry-run` writes nothing at all: no documents, records, checkpoints or lock.

use super::*;

/// Everything in the database: collections with their options, documents and indexes.
async fn snapshot(t: &TestDb) -> Vec<(String, Document, Vec<Document>, Vec<Document>)> {
    let first_batch = |reply: Document| -> Vec<Document> {
        reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|d| d.as_document().unwrap().clone())
            .collect()
    };
    let mut collections = first_batch(
        t.db.run_command(doc! { "listCollections": 1 })
            .await
            .unwrap(),
    );
    collections.sort_by_key(|c| c.get_str("name").unwrap().to_string());
    let mut out = Vec::new();
    for info in collections {
        let name = info.get_str("name").unwrap().to_string();
        let mut indexes = first_batch(
            t.db.run_command(doc! { "listIndexes": &name })
                .await
                .unwrap(),
        );
        indexes.sort_by_key(|i| i.get_str("name").unwrap().to_string());
        out.push((name.clone(), info, t.all(&name).await, indexes));
    }
    out
}

#[tokio::test]
async fn dry_run_writes_nothing_at_all() {
    let t = fresh_db("dryrun").await;
    let mut docs = Vec::new();
    let mut user = |i: usize, extra: Document| {
        let mut u = doc! { "_id": i as i32, "email": format!("u{i}@example.com") };
        u.extend(extra);
        docs.push(u);
    };
    let zeros = doc! { "withdrawableBalance": 0, "totalWithdrawn": 0, "pendingWithdrawals": 0 };
    // 100 lacking the fields, with earnings: 001 adds 3 fields, 003 sets a balance.
    for i in 0..100 {
        user(i, doc! { "affiliateEarnings": (i + 1) as f64 * 2.5 });
    }
    // 40 lacking the fields, without earnings: 001 adds 3, 003 sets the zeros.
    for i in 100..140 {
        user(i, doc! {});
    }
    // 20 with the fields at 0 and earnings: 003 sets a balance.
    for i in 140..160 {
        let mut u = zeros.clone();
        u.insert("affiliateEarnings", (i as i32 - 139) * 10);
        user(i, u);
    }
    // 20 with the fields at 0 and no earnings: nothing to do.
    for i in 160..180 {
        user(i, zeros.clone());
    }
    // 10 moved by the application, lacking pendingWithdrawals: 001 adds 1; 003 skips them.
    for i in 180..190 {
        user(
            i,
            doc! { "affiliateEarnings": 80.0, "withdrawableBalance": 300.0, "totalWithdrawn": 10 },
        );
    }
    // 10 lacking the fields with invalid earnings: 001 adds 3; 003 reports them.
    for i in 190..200 {
        user(i, doc! { "affiliateEarnings": "a lot" });
    }
    load(&t, &docs).await;
    t.db.collection::<Document>("withdrawals")
        .insert_many((0..5).map(|i| doc! { "userId": i, "amount": 10.0, "status": "pending" }))
        .await
        .unwrap();

    let before = snapshot(&t).await;
    let out = migrate(&t, &["up", "--dry-run", "--batch-size", "50"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after = snapshot(&t).await;
    assert_eq!(
        after.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["users", "withdrawals"],
        "no migrations, migrations_lock or migrations_before_images collection"
    );
    assert!(before == after, "the dry run changed the database");

    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("would apply {M001} in "),
        "would add 460 missing field(s) to 160 user(s)".into(),
        format!("would apply {M002} in "),
        "would create 15 index(es), 0 already present".into(),
        format!("would apply {M003} in "),
        "would set withdrawal balances of 160 user(s); 20 already right, 10 invalid left untouched, 0 changed concurrently".into(),
        "dry run: nothing was written".into(),
    ] {
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
    // The JSON after 003's line: its counters and the first changes, before and after.
    let json = stdout
        .split(&format!("would apply {M003}"))
        .nth(1)
        .and_then(|rest| rest.split_once('\n'))
        .map(|(_, rest)| rest.split("dry run:").next().unwrap())
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(json).expect(json);
    assert_eq!(result["scanned"], 190);
    assert_eq!(result["modified"], 160);
    assert_eq!(result["unchanged"], 20);
    assert_eq!(result["invalid"], 10);
    assert_eq!(result["invalidReasons"]["string"], 10, "{result}");
    let samples = result["samples"].as_array().expect("samples");
    assert_eq!(samples.len(), 3, "{result}");
    for (i, sample) in samples.iter().enumerate() {
        let earnings = (i + 1) as f64 * 2.5;
        assert_eq!(sample["_id"], i, "{sample}");
        assert_eq!(sample["before"]["affiliateEarnings"], earnings, "{sample}");
        assert!(sample["before"].get("withdrawableBalance").is_none());
        assert_eq!(sample["after"]["withdrawableBalance"], earnings / 2.0);
        assert_eq!(sample["after"]["totalWithdrawn"], 0);
        assert_eq!(sample["after"]["pendingWithdrawals"], 0);
    }
}
