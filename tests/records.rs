//! Tracking records this build cannot run from: unknown statuses and malformed records are shown
//! by `status` and refused by `up`, naming the record and the fix; a runner that lost the lock
//! while paused cannot write the records any more (fencing).

mod common;

use common::{fresh_db, text, M001, M002, M003};
use mongodb::bson::{doc, Document};
use std::process::Stdio;
use std::time::{Duration, Instant};

async fn insert_record(t: &common::TestDb, record: Document) {
    t.db.collection::<Document>("migrations")
        .insert_one(record)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_record_with_an_unknown_status_is_shown_and_refused_by_up() {
    for status in ["in_progress", "weird"] {
        let t = fresh_db("unknownstatus").await;
        insert_record(&t, doc! { "name": M002, "status": status }).await;
        let out = t.migrate(&["status"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let shown = text(&out);
        assert!(
            shown.contains(M002) && shown.contains("unknown status"),
            "{shown}"
        );
        assert!(shown.contains(M001), "{shown}");

        let out = t.migrate(&["up", "--no-progress"]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        let said = text(&out);
        assert!(said.contains(M002) && said.contains(status), "{said}");
        assert!(said.contains("set `status`"), "{said}");
        // Nothing ran: 001 has no record.
        assert!(t.record(M001).await.is_none());
    }
}

#[tokio::test]
async fn a_malformed_record_does_not_hide_the_others_and_is_refused_by_up() {
    for checkpoint in [
        mongodb::bson::Bson::String("oops".into()),
        mongodb::bson::Bson::Array(vec![1.into()]),
    ] {
        let t = fresh_db("malformed").await;
        insert_record(
            &t,
            doc! { "name": M003, "status": "running", "checkpoint": checkpoint },
        )
        .await;
        let out = t.migrate(&["status"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let shown = text(&out);
        assert!(shown.contains("malformed record"), "{shown}");
        assert!(shown.contains(M001) && shown.contains(M002), "{shown}");

        let out = t.migrate(&["up", "--no-progress"]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        assert!(
            text(&out).contains(M003) && text(&out).contains("malformed"),
            "{}",
            text(&out)
        );
    }
}

struct CheckFails;

#[async_trait::async_trait]
impl mongo_migrate::Migration for CheckFails {
    fn description(&self) -> &'static str {
        "a post-condition that never holds"
    }
    async fn up(
        &self,
        _ctx: &mongo_migrate::Context,
    ) -> mongo_migrate::Result<mongo_migrate::Outcome> {
        Ok(mongo_migrate::Outcome::ok("done", Document::new()))
    }
    async fn verify(&self, ctx: &mongo_migrate::Context) -> mongo_migrate::Result<()> {
        Err(mongo_migrate::Error::migration(
            ctx.name(),
            "2 user(s) still lack a field, e.g. [1, 2]",
        ))
    }
}

#[tokio::test]
async fn a_failed_post_condition_says_so_once() {
    let t = fresh_db("postcond").await;
    let registered = mongo_migrate::Registered {
        number: 1,
        name: "001_check_fails",
        checksum: "x",
        legacy: &[],
        doc: "",
        migration: std::sync::Arc::new(CheckFails),
    };
    let runner = mongo_migrate::MigrationRunner::with_migrations(t.db.clone(), vec![registered]);
    let err = runner.run_pending().await.unwrap_err().to_string();
    assert!(
        err.contains("post-condition not met after up: 2 user(s)"),
        "{err}"
    );
    assert_eq!(err.matches("failed").count(), 1, "{err}");
    assert_eq!(err.matches("001_check_fails").count(), 1, "{err}");
}

/// The lease of the paused runner in the fencing trial.
const LEASE: &str = "5";

#[tokio::test]
async fn a_runner_paused_past_its_lease_cannot_write_the_records_after_another_took_over() {
    let t = fresh_db("fencing").await;
    let out = t.migrate(&["sample-data", "--users", "30000"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = t
        .migrate_cmd(&[
            "up",
            "--lock-lease",
            LEASE,
            "--batch-size",
            "200",
            "--max-docs-per-sec",
            "3000",
            "--no-progress",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id() as libc::pid_t;
    // Pause it inside 003.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = t
            .record(M003)
            .await
            .is_some_and(|r| r.get_document("checkpoint").is_ok());
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "003 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    tokio::time::sleep(Duration::from_secs(7)).await;

    // A second runner takes the expired lease over and finishes everything.
    let second = t.migrate(&["up", "--resume", "--no-progress"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert_eq!(t.status(M003).await, "completed");
    let before = t.record(M003).await.unwrap();

    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    // Whichever notices first: its next record write (fenced) or its lease renewal.
    let said = text(&out);
    assert!(
        said.contains("took the lock over") || said.contains("took it over"),
        "{said}"
    );

    // Its records are as the second runner left them, and a plain `up` has nothing to do.
    let after = t.record(M003).await.unwrap();
    assert_eq!(after, before);
    let again = t.migrate(&["up", "--no-progress"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
}

/// A database with 50 sample users and every compiled-in migration applied.
async fn migrated(tag: &str) -> common::TestDb {
    let t = fresh_db(tag).await;
    let out = t.migrate(&["sample-data", "--users", "50"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = t.migrate(&["up", "--no-progress"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    t
}

/// The names of the indexes on `collection`, sorted.
async fn index_names(t: &common::TestDb, collection: &str) -> Vec<String> {
    let mut names =
        t.db.collection::<Document>(collection)
            .list_index_names()
            .await
            .unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn up_rollback_and_baseline_refuse_an_applied_migration_this_build_does_not_know() {
    let t = migrated("unknownapplied").await;
    // What a newer build leaves behind: 004 applied over 003.
    insert_record(
        &t,
        doc! { "name": "004_newer_build", "status": "completed", "checksum": "abc" },
    )
    .await;
    let stale = "this build is older than the database's migrations";
    for args in [
        &["up", "--no-progress"][..],
        &["up", "--dry-run"],
        &["rollback", "--yes"],
        &["rollback", "--dry-run"],
        &["baseline", "--to", "3"],
    ] {
        let out = t.migrate(args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", text(&out));
        let said = text(&out);
        assert!(
            said.contains("004_newer_build") && said.contains(stale),
            "{args:?}: {said}"
        );
        assert!(said.contains("--ignore-unknown"), "{args:?}: {said}");
    }
    assert_eq!(t.status(M003).await, "completed");

    let out = t.migrate(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let row = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("004_newer_build"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        row.contains("not in this build") && row.contains("applied (completed)"),
        "{}",
        text(&out)
    );
    let out = t.migrate(&["status", "--check"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("004_newer_build (applied, unknown to this build)"),
        "{}",
        text(&out)
    );

    // An operator who knows what 004 did goes on.
    let out = t.migrate(&["up", "--no-progress", "--ignore-unknown"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = t.migrate(&["rollback", "--yes", "--ignore-unknown"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(t.status(M003).await, "rolled_back");
    assert_eq!(t.status("004_newer_build").await, "completed");

    // A migration the newer build rolled back again holds nothing up.
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": "004_newer_build" },
            doc! { "$set": { "status": "rolled_back" } },
        )
        .await
        .unwrap();
    let out = t.migrate(&["up", "--no-progress"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(t.status(M003).await, "completed");
}

#[tokio::test]
async fn status_check_exits_5_on_failed_interrupted_or_drifted_migrations_and_0_otherwise() {
    let t = fresh_db("statuscheck").await;
    let out = t.migrate(&["status", "--check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "pending is fine: {}",
        text(&out)
    );
    let out = t.migrate(&["sample-data", "--users", "50"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = t.migrate(&["up", "--no-progress"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = t.migrate(&["status", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let records = t.db.collection::<Document>("migrations");
    let set = |name: &'static str, fields: Document| {
        let records = records.clone();
        async move {
            records
                .update_one(doc! { "name": name }, doc! { "$set": fields })
                .await
                .unwrap();
        }
    };
    let checksum = t
        .record(M001)
        .await
        .unwrap()
        .get_str("checksum")
        .unwrap()
        .to_string();
    set(M001, doc! { "checksum": "not today's source" }).await;
    set(M002, doc! { "status": "failed", "error": "boom" }).await;
    // Recorded running, and no run holds the lock: interrupted.
    set(M003, doc! { "status": "running" }).await;
    let out = t.migrate(&["status", "--check", "--json"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    for expected in [
        format!("{M001} (changed since applied)"),
        format!("{M002} (failed)"),
        format!("{M003} (interrupted)"),
    ] {
        assert!(said.contains(&expected), "{expected}: {said}");
    }
    // The JSON on stdout is whole whatever the verdict.
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(parsed.as_array().unwrap().len(), 3);

    // A rollback recorded in progress with no run holding the lock was interrupted.
    set(M001, doc! { "checksum": checksum }).await;
    set(M002, doc! { "status": "completed" }).await;
    set(M003, doc! { "status": "rolling_back" }).await;
    let out = t.migrate(&["status", "--check"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "1 migration(s) need an operator: {M003} (rollback interrupted)"
        )),
        "{said}"
    );
}

#[tokio::test]
async fn rollback_refuses_a_corrupted_record_with_exit_5() {
    let t = migrated("corruptrollback").await;
    let indexes = index_names(&t, "users").await;
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": M003 },
            doc! { "$set": { "status": 42, "history": "not an array" } },
        )
        .await
        .unwrap();
    let out = t.migrate(&["status"]);
    assert!(text(&out).contains("malformed record"), "{}", text(&out));
    for args in [&["rollback", "--yes"][..], &["rollback", "--dry-run"]] {
        let out = t.migrate(args);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", text(&out));
        let said = text(&out);
        assert!(
            said.contains(M003) && said.contains("malformed"),
            "{args:?}: {said}"
        );
    }
    // Nothing beneath it was reverted: 002's indexes and 001's record stand.
    assert_eq!(index_names(&t, "users").await, indexes);
    assert_eq!(t.status(M002).await, "completed");
    assert_eq!(t.status(M001).await, "completed");
}

#[tokio::test]
async fn junk_records_without_a_name_are_explained_by_up_and_counted_by_status() {
    let t = fresh_db("junknames").await;
    let out = t.migrate(&["sample-data", "--users", "50"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let junk: Vec<Document> = (0..10_000)
        .map(|i| match i % 2 {
            0 => doc! { "name": null, "note": i },
            _ => doc! { "note": i },
        })
        .collect();
    t.db.collection::<Document>("migrations")
        .insert_many(junk)
        .await
        .unwrap();

    let out = t.migrate(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("10000 record(s)") && shown.contains("have no name"),
        "{shown}"
    );
    // One row per migration, not one per junk record.
    assert!(shown.lines().count() < 10, "{shown}");

    let out = t.migrate(&["up", "--no-progress"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("10000 record(s) without a name") && said.contains("deleteMany"),
        "{said}"
    );
    assert!(
        !said.contains("DuplicateKey") && !said.contains("E11000"),
        "{said}"
    );
    assert!(t.record(M001).await.is_none(), "nothing ran");

    // Removed as the message says, `up` runs.
    t.db.collection::<Document>("migrations")
        .delete_many(doc! { "name": { "$not": { "$type": "string" } } })
        .await
        .unwrap();
    let out = t.migrate(&["up", "--no-progress"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
