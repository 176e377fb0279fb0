//! Taking over a database the JavaScript runner migrated, marking migrations applied without
//! running them (`baseline`), and the operator conveniences around them: `rollback --to`,
//! `rollback --dry-run`, the `down` alias, `up --json`, `status --json` and `completions`.

mod common;

use common::{bytes, fresh_db, migrate, text, TestDb, FIELDS, M001, M002, M003};
use mongo_migrate::sample::{load, SampleSpec};
use mongodb::bson::{doc, DateTime, Document};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const USERS: u64 = 3_000;

async fn sample(t: &TestDb) {
    let spec = SampleSpec {
        users: USERS,
        withdrawals: 100,
        seed: 7,
        invalid_earnings: 0,
        mixed_ids: false,
    };
    load(&t.db, &spec).await.unwrap();
}

/// Records as the JavaScript runner writes them: `{name, executedAt, status, result}`, no
/// checksum, names with or without `.js`.
async fn javascript_records(t: &TestDb, records: &[(&str, &str)]) {
    let docs: Vec<Document> = records
        .iter()
        .map(|(name, status)| {
            doc! {
                "name": *name,
                "executedAt": DateTime::now(),
                "status": *status,
                "result": { "success": *status == "completed", "modifiedCount": 12 },
            }
        })
        .collect();
    t.db.collection::<Document>("migrations")
        .insert_many(docs)
        .await
        .unwrap();
}

/// What the JavaScript runner's 001 left: every user has the three fields.
async fn fields_added_by_hand(t: &TestDb) {
    let set: Document = FIELDS.iter().map(|f| (f.to_string(), 0.into())).collect();
    t.db.collection::<Document>("users")
        .update_many(doc! {}, doc! { "$set": set })
        .await
        .unwrap();
}

async fn names(t: &TestDb) -> Vec<String> {
    let mut names: Vec<String> = t
        .all("migrations")
        .await
        .iter()
        .map(|r| r.get_str("name").unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn history_actions(record: &Document) -> Vec<String> {
    record
        .get_array("history")
        .map(|h| {
            h.iter()
                .filter_map(|e| e.as_document()?.get_str("action").ok().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", text(out)))
}

#[tokio::test]
async fn javascript_runner_records_are_adopted_and_only_the_failed_one_runs() {
    let t = fresh_db("adopt_js").await;
    sample(&t).await;
    fields_added_by_hand(&t).await;
    javascript_records(
        &t,
        &[
            ("001_add_withdrawal_fields_to_users.js", "completed"),
            ("002_create_withdrawal_indexes", "completed"),
            ("003_migrate_existing_user_balances.js", "failed"),
        ],
    )
    .await;

    let status = t.migrate(&["status"]);
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    for name in [M001, M002] {
        let line = shown.lines().find(|l| l.contains(name)).unwrap();
        assert!(
            line.contains("applied (adopted from the JavaScript runner)"),
            "{line}"
        );
    }
    assert!(!shown.contains("unknown"), "{shown}");
    assert!(!shown.contains("changed since applied"), "{shown}");
    let line = shown.lines().find(|l| l.contains(M003)).unwrap();
    assert!(line.contains("failed"), "{line}");

    let up = t.migrate(&["up", "--json", "--no-progress"]);
    assert_eq!(up.status.code(), Some(0), "{}", text(&up));
    let report = json(&up);
    assert_eq!(report["ok"], true);
    let applied: Vec<&str> = report["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(applied, [M003], "only 003 runs");
    let adopted: Vec<&str> = report["adopted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(adopted, [M001, M002, M003]);

    // One record per migration, under its plain name, each with a checksum and the adoption in
    // its history.
    assert_eq!(names(&t).await, [M001, M002, M003]);
    for name in [M001, M002] {
        let record = t.record(name).await.unwrap();
        assert_eq!(record.get_str("status").unwrap(), "completed");
        assert_eq!(record.get_str("checksum").unwrap().len(), 64, "{record}");
        assert!(record.get_datetime("adoptedAt").is_ok(), "{record}");
        assert_eq!(history_actions(&record), ["adopt"], "{record}");
    }
    let m001 = t.record(M001).await.unwrap();
    assert_eq!(
        m001.get_str("adoptedFrom").unwrap(),
        "001_add_withdrawal_fields_to_users.js"
    );
    let m003 = t.record(M003).await.unwrap();
    assert_eq!(m003.get_str("status").unwrap(), "completed");
    assert_eq!(history_actions(&m003), ["adopt", "up"], "{m003}");

    let again = t.migrate(&["up", "--json", "--no-progress"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let report = json(&again);
    assert_eq!(report["applied"].as_array().unwrap().len(), 0);
    assert_eq!(report["adopted"].as_array().unwrap().len(), 0);
    let status = text(&t.migrate(&["status"]));
    assert!(
        status.contains("adopted from the JavaScript runner's"),
        "{status}"
    );
}

#[tokio::test]
async fn a_plain_and_a_js_record_of_one_migration_merge_into_one() {
    let t = fresh_db("adopt_both").await;
    sample(&t).await;
    fields_added_by_hand(&t).await;
    javascript_records(
        &t,
        &[
            ("001_add_withdrawal_fields_to_users.js", "failed"),
            ("001_add_withdrawal_fields_to_users", "completed"),
        ],
    )
    .await;
    let status = text(&t.migrate(&["status"]));
    assert!(!status.contains("unknown"), "{status}");

    let out = t.migrate(&["up", "--to", "1", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(names(&t).await, [M001]);
    let record = t.record(M001).await.unwrap();
    let history = record.get_array("history").unwrap();
    let merged = history[0].as_document().unwrap();
    assert_eq!(merged.get_str("status").unwrap(), "merged");
    assert_eq!(
        merged.get_str("from").unwrap(),
        "001_add_withdrawal_fields_to_users.js"
    );
    assert_eq!(
        merged
            .get_document("record")
            .unwrap()
            .get_str("status")
            .unwrap(),
        "failed",
        "the .js record is kept whole in the history"
    );
    assert_eq!(record.get_str("checksum").unwrap().len(), 64);
}

#[tokio::test]
async fn a_completed_record_without_checksum_is_never_drift() {
    let t = fresh_db("no_checksum").await;
    javascript_records(&t, &[(M001, "completed"), (M002, "completed")]).await;
    // Dry run and rollback dry run read it as applied; neither says "checksum differs".
    for args in [
        &["up", "--dry-run", "--no-progress"][..],
        &["rollback", "--dry-run"][..],
    ] {
        let out = t.migrate(args);
        let shown = text(&out);
        assert!(out.status.success(), "{args:?}: {shown}");
        assert!(!shown.contains("checksum differs"), "{shown}");
        assert!(!shown.contains("drift"), "{shown}");
    }
    let records = t.all("migrations").await;
    assert!(records.iter().all(|r| !r.contains_key("checksum")));
}

#[tokio::test]
async fn baseline_marks_migrations_applied_without_touching_a_user() {
    let t = fresh_db("baseline").await;
    sample(&t).await;
    let users_before: Vec<Vec<u8>> = t.all("users").await.iter().map(bytes).collect();

    let dry = t.migrate(&["baseline", "--to", "2", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains(&format!("would mark {M001}")));
    assert!(
        t.all("migrations").await.is_empty(),
        "a dry run writes no record"
    );

    let out = t.migrate(&["baseline", "--to", "002"]);
    assert!(out.status.success(), "{}", text(&out));
    for name in [M001, M002] {
        let record = t.record(name).await.unwrap();
        assert_eq!(record.get_str("status").unwrap(), "completed");
        assert_eq!(history_actions(&record), ["baseline"]);
        let entry = record.get_array("history").unwrap()[0]
            .as_document()
            .unwrap()
            .clone();
        assert!(entry.get_str("note").unwrap().contains("without running"));
        assert!(entry.get_str("user").is_ok());
    }
    assert!(t.record(M003).await.is_none());
    let users_after: Vec<Vec<u8>> = t.all("users").await.iter().map(bytes).collect();
    assert_eq!(users_before, users_after, "no user gained a field");
    let indexes =
        t.db.collection::<Document>("withdrawals")
            .list_index_names()
            .await
            .unwrap();
    assert_eq!(indexes, ["_id_"], "no index was built");

    let status = text(&t.migrate(&["status"]));
    assert!(
        status.contains("marked applied by `migrate baseline`"),
        "{status}"
    );
    let again = t.migrate(&["baseline", "--to", "2"]);
    assert!(text(&again).contains("nothing to mark"), "{}", text(&again));
}

#[tokio::test]
async fn baseline_refuses_an_interrupted_migration() {
    let t = fresh_db("baseline_interrupted").await;
    t.db.collection::<Document>("migrations")
        .insert_one(doc! { "name": M001, "status": "running", "checksum": "x" })
        .await
        .unwrap();
    let out = t.migrate(&["baseline", "--to", "2"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("nothing was marked"), "{}", text(&out));
    assert!(t.record(M002).await.is_none());
}

/// Sets `name` of random users until stopped: writes the rollback must not mistake for
/// changes to the withdrawal fields.
fn renamer(t: &TestDb) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let coll = t.db.collection::<Document>("users");
    let (s, w) = (stop.clone(), writes.clone());
    let ids: Vec<mongodb::bson::Bson> = Vec::new();
    let task = tokio::spawn(async move {
        let mut ids = ids;
        if ids.is_empty() {
            use futures::TryStreamExt;
            ids = coll
                .find(doc! {})
                .projection(doc! { "_id": 1 })
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.get("_id").unwrap().clone())
                .collect();
        }
        let mut rng = common::Rng(99);
        while !s.load(Ordering::Relaxed) {
            let id = ids[rng.below(ids.len() as u64) as usize].clone();
            coll.update_one(
                doc! { "_id": id },
                doc! { "$set": { "name": format!("renamed {}", rng.next()) } },
            )
            .await
            .unwrap();
            w.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (stop, writes, task)
}

async fn withdrawal_fields(t: &TestDb) -> Vec<Vec<u8>> {
    t.all("users")
        .await
        .iter()
        .map(|u| {
            let mut kept = doc! { "_id": u.get("_id").unwrap().clone() };
            for f in FIELDS {
                if let Some(v) = u.get(f) {
                    kept.insert(f, v.clone());
                }
            }
            bytes(&kept)
        })
        .collect()
}

#[tokio::test]
async fn rollback_to_reverts_every_newer_migration_newest_first_under_writes() {
    let t = fresh_db("rollback_to").await;
    sample(&t).await;
    let out = t.migrate(&["up", "--to", "1", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let after_001 = withdrawal_fields(&t).await;
    let out = t.migrate(&["up", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        withdrawal_fields(&t).await,
        after_001,
        "003 changed balances"
    );

    // The dry run names both, says what it would restore, and writes nothing.
    let records_before: Vec<Vec<u8>> = t.all("migrations").await.iter().map(bytes).collect();
    let images_before = t.all("migrations_before_images").await.len();
    let dry = t.migrate(&["rollback", "--to", "1", "--dry-run"]);
    let shown = text(&dry);
    assert!(dry.status.success(), "{shown}");
    let m003 = shown.find(M003).expect("003 listed");
    let m002 = shown.find(M002).expect("002 listed");
    assert!(m003 < m002, "newest first: {shown}");
    assert!(!shown.contains(M001), "{shown}");
    assert!(shown.contains("from its before-images"), "{shown}");
    let records_after: Vec<Vec<u8>> = t.all("migrations").await.iter().map(bytes).collect();
    assert_eq!(records_before, records_after);
    assert_eq!(t.all("migrations_before_images").await.len(), images_before);

    // Without a terminal, confirmation is --yes.
    let refused = t.migrate(&["rollback", "--to", "1"]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));

    let (stop, writes, task) = renamer(&t);
    // Let the writer get going, so it overlaps the whole rollback.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = migrate(&t, &["down", "--to", "1", "--yes"]).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(writes.load(Ordering::Relaxed) > 20, "the writer ran");
    assert!(
        shown.find(&format!("rolled back {M003}")).unwrap()
            < shown.find(&format!("rolled back {M002}")).unwrap(),
        "{shown}"
    );
    assert_eq!(t.status(M003).await, "rolled_back");
    assert_eq!(t.status(M002).await, "rolled_back");
    assert_eq!(t.status(M001).await, "completed");
    assert_eq!(
        withdrawal_fields(&t).await,
        after_001,
        "every withdrawal field is as 001 left it"
    );
}

#[tokio::test]
async fn rollback_to_refuses_everything_when_one_target_cannot_be_rolled_back() {
    let t = fresh_db("rollback_to_drift").await;
    t.db.collection::<Document>("migrations")
        .insert_many([
            doc! { "name": M001, "status": "completed", "checksum": "0".repeat(64) },
            doc! { "name": M002, "status": "completed", "checksum": "1".repeat(64) },
        ])
        .await
        .unwrap();
    let before: Vec<Vec<u8>> = t.all("migrations").await.iter().map(bytes).collect();
    let out = t.migrate(&["rollback", "--to", "0", "--yes"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains(M001) && text(&out).contains(M002));
    let after: Vec<Vec<u8>> = t.all("migrations").await.iter().map(bytes).collect();
    assert_eq!(before, after, "a refusal changes nothing");
}

#[tokio::test]
async fn status_json_shows_dates_as_iso_strings() {
    let t = fresh_db("status_json").await;
    sample(&t).await;
    let out = t.migrate(&["up", "--to", "1", "--no-progress"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = json(&t.migrate(&["status", "--json"]));
    let record = &status[0]["record"];
    let executed = record["executedAt"]["$date"]
        .as_str()
        .unwrap_or_else(|| panic!("{record}"));
    assert!(
        chrono::DateTime::parse_from_rfc3339(executed).is_ok(),
        "{executed}"
    );
    assert!(record["durationMs"].is_u64(), "{record}");
}

#[tokio::test]
async fn up_json_reports_a_failure_as_one_document() {
    let t = fresh_db("up_json_fail").await;
    t.db.collection::<Document>("migrations")
        .insert_one(doc! { "name": M001, "status": "completed", "checksum": "f".repeat(64) })
        .await
        .unwrap();
    let out = t.migrate(&["up", "--json", "--no-progress"]);
    assert_eq!(out.status.code(), Some(5));
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["exitCode"], 5);
    assert!(report["error"].as_str().unwrap().contains(M001));
}

#[test]
fn completions_are_printed_without_a_database() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_migrate"))
            .args(["completions", shell])
            .env("MONGODB_URI", "mongodb://nowhere.invalid:1/x")
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["rollback", "baseline", "resume"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
}
