//! Every `_id` type in one collection is reached, bracket by bracket.

use super::*;

#[tokio::test]
async fn mixed_id_types_are_all_processed() {
    // Earnings with the balances 003 gives them (halved exactly, to the cent).
    let earnings = [
        (Some(Bson::Double(100.0)), Bson::Double(50.0)),
        (Some(Bson::Int32(7)), Bson::Double(3.5)),
        (Some(Bson::Int64(250)), Bson::Double(125.0)),
        (Some(dec("10.50")), dec("5.25")),
        (Some(Bson::Double(0.3)), Bson::Double(0.15)),
        (None, Bson::Int32(0)),
        (Some(Bson::Null), Bson::Int32(0)),
        (Some(Bson::Int32(0)), Bson::Int32(0)),
    ];
    let mut ids: Vec<Bson> = Vec::new();
    ids.extend((-3..9).map(Bson::Int32));
    ids.extend((0..5).map(|k| Bson::Int64(10_000_000_000 + k)));
    ids.extend((0..5).map(|k| Bson::Double(k as f64 + 0.5)));
    ids.push(dec("100.25"));
    ids.extend(["", "a", "user-17", "Z", "zz", "é"].map(|s| Bson::String(s.into())));
    ids.extend((0..6).map(|k| Bson::ObjectId(ObjectId::from_bytes([k as u8 + 1; 12]))));
    ids.extend([
        Bson::Document(doc! {}),
        Bson::Document(doc! { "tenant": "acme", "n": 1 }),
        Bson::Document(doc! { "tenant": "acme", "n": 2 }),
        Bson::Document(doc! { "a": 1 }),
    ]);
    ids.extend([Bson::Boolean(false), Bson::Boolean(true)]);
    ids.push(Bson::Null);
    ids.extend([
        Bson::DateTime(DateTime::from_millis(0)),
        Bson::DateTime(DateTime::from_millis(1_700_000_000_000)),
    ]);
    let mut rng = Rng(4);
    // (user, the balance 003 must give it)
    let mut people: Vec<(Document, Bson)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (earnings, balance) = earnings[i % earnings.len()].clone();
            let mut user = doc! { "_id": id.clone(), "email": format!("user{i}@example.com") };
            if let Some(e) = earnings {
                user.insert("affiliateEarnings", e);
            }
            (user, balance)
        })
        .collect();
    // Interleave the types in insertion order.
    for i in (1..people.len()).rev() {
        people.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let docs: Vec<Document> = people.iter().map(|(u, _)| u.clone()).collect();
    let expected: Vec<(Bson, Bson)> = people
        .iter()
        .map(|(u, b)| (u.get("_id").unwrap().clone(), b.clone()))
        .collect();
    let total = docs.len() as i64;
    let valid = expected
        .iter()
        .filter(|(_, b)| *b != Bson::Int32(0))
        .count() as i64;
    // Batches of 3 never cross a type bracket: 12+5+5+1 numbers, 6 strings, 4 objects,
    // 6 ObjectIds, 2 booleans, 1 null, 2 dates.
    let batches: i64 = [23, 6, 4, 6, 2, 1, 2].iter().map(|c| (c + 2) / 3).sum();

    let check = async |t: &TestDb| {
        let all = t.all("users").await;
        assert_eq!(all.len(), expected.len());
        for (id, balance) in &expected {
            let user = all
                .iter()
                .find(|u| u.get("_id") == Some(id))
                .unwrap_or_else(|| panic!("user {id} is gone"));
            assert_eq!(user.get("withdrawableBalance"), Some(balance), "{user}");
            assert_eq!(user.get("totalWithdrawn"), Some(&Bson::Int32(0)), "{user}");
            assert_eq!(
                user.get("pendingWithdrawals"),
                Some(&Bson::Int32(0)),
                "{user}"
            );
        }
    };

    // Uninterrupted: every bracket walked, in batches that stop at bracket ends.
    let t = fresh_db("mixedids").await;
    load(&t, &docs).await;
    let out = migrate(&t, &["up", "--batch-size", "3", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    check(&t).await;
    let m001 = t.record(M001).await.unwrap();
    assert_eq!(
        result(&m001),
        &doc! { "usersUpdated": total, "fieldsAdded": 3 * total, "batches": batches }
    );
    let m003 = result(&t.record(M003).await.unwrap()).clone();
    assert_eq!(n(&m003, "scanned"), total, "{m003}");
    assert_eq!(n(&m003, "modified"), valid, "{m003}");
    assert_eq!(n(&m003, "unchanged"), total - valid, "{m003}");
    assert_eq!(n(&m003, "batches"), batches, "{m003}");

    // Killed inside a later bracket of 003, then resumed from a checkpoint whose last `_id` is
    // not an ObjectId.
    let k = fresh_db("mixedkill").await;
    load(&k, &docs).await;
    let mut run = spawn(
        &k,
        &[
            "up",
            "--batch-size",
            "3",
            "--concurrency",
            "2",
            "--max-docs-per-sec",
            "40",
            "--no-progress",
        ],
    );
    run.wait_until("003 past the string bracket", async || {
        checkpoint(&k, M003)
            .await
            .is_some_and(|cp| cp.get_i32("bracket").unwrap() >= 5)
    })
    .await;
    run.kill().await;
    let cp = checkpoint(&k, M003).await.unwrap();
    assert_eq!(k.status(M003).await, "running");
    // The checkpoint names the bracket and a last `_id` of that bracket's type.
    let last_type_matches = matches!(
        (cp.get_i32("bracket").unwrap(), cp.get("lastId").unwrap()),
        (5, Bson::Document(_))
            | (7, Bson::ObjectId(_))
            | (8, Bson::Boolean(_))
            | (9, Bson::DateTime(_))
    );
    assert!(
        last_type_matches,
        "killed in a later bracket, before the end: {cp}"
    );
    let out = migrate(
        &k,
        &["up", "--resume", "--batch-size", "3", "--no-progress"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    check(&k).await;
}
