//! The runner against a real server: ordering, idempotence, failure and retry, rollback,
//! history, lock, drift.

mod common;

use async_trait::async_trait;
use common::fresh_db;
use mongo_migrate::cli::exit_codes::ProcessExitCode;
use mongo_migrate::{
    Context, Error, Migration, MigrationRunner, Outcome, Registered, RunOptions, State,
};
use mongodb::bson::{doc, DateTime, Document};
use std::sync::Arc;
use std::time::Duration;

/// Appends its number to the `order` collection; `down` removes it.
struct Step(u32);

#[async_trait]
impl Migration for Step {
    fn description(&self) -> &'static str {
        "records its number"
    }
    async fn up(&self, ctx: &Context) -> mongo_migrate::Result<Outcome> {
        if !ctx.dry_run() {
            ctx.db()
                .collection::<Document>("order")
                .insert_one(doc! { "n": self.0 })
                .await
                .unwrap();
        }
        Ok(Outcome::ok(
            format!("step {}", self.0),
            doc! { "n": self.0 },
        ))
    }
    fn reversible(&self) -> bool {
        true
    }
    async fn down(&self, ctx: &Context) -> mongo_migrate::Result<Outcome> {
        ctx.db()
            .collection::<Document>("order")
            .delete_many(doc! { "n": self.0 })
            .await
            .unwrap();
        Ok(Outcome::ok("removed", doc! {}))
    }
}

/// Fails while the `switch` collection holds a document.
struct FailsWhileSwitched;

#[async_trait]
impl Migration for FailsWhileSwitched {
    fn description(&self) -> &'static str {
        "fails while switched"
    }
    async fn up(&self, ctx: &Context) -> mongo_migrate::Result<Outcome> {
        let on = ctx
            .db()
            .collection::<Document>("switch")
            .count_documents(doc! {})
            .await
            .unwrap();
        if on > 0 {
            return Err(Error::migration(ctx.name(), "switch is on"));
        }
        Ok(Outcome::ok("done", doc! {}))
    }
}

/// Takes a while, without `down`.
struct Slow(Duration);

#[async_trait]
impl Migration for Slow {
    fn description(&self) -> &'static str {
        "slow"
    }
    async fn up(&self, _ctx: &Context) -> mongo_migrate::Result<Outcome> {
        tokio::time::sleep(self.0).await;
        Ok(Outcome::ok("slept", doc! {}))
    }
}

fn reg(number: u32, name: &'static str, migration: impl Migration + 'static) -> Registered {
    Registered {
        number,
        name,
        checksum: "c0",
        legacy: &[],
        doc: "",
        migration: Arc::new(migration),
    }
}

fn steps() -> Vec<Registered> {
    vec![
        reg(3, "003_third", Step(3)),
        reg(1, "001_first", Step(1)),
        reg(2, "002_second", Step(2)),
    ]
}

async fn order(db: &mongodb::Database) -> Vec<i32> {
    let docs = common::sorted_by_id(&db.collection("order")).await;
    docs.iter()
        .map(|d| {
            d.get_i64("n")
                .map(|n| n as i32)
                .or_else(|_| d.get_i32("n"))
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn pending_migrations_run_in_number_order_and_are_recorded() {
    let t = fresh_db("order").await;
    let runner = MigrationRunner::with_migrations(t.db.clone(), steps());
    let report = runner.run_pending().await.unwrap();
    assert_eq!(
        report
            .applied
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["001_first", "002_second", "003_third"]
    );
    assert_eq!(order(&t.db).await, [1, 2, 3]);
    let record = t.record("002_second").await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    assert!(record.get_datetime("executedAt").is_ok());
    assert_eq!(record.get_document("result").unwrap(), &doc! { "n": 2 });
    assert_eq!(record.get_str("checksum").unwrap(), "c0");
    assert!(record.get_i64("durationMs").unwrap() >= 0);
    assert_eq!(record.get_array("history").unwrap().len(), 1);
    let status = runner.status().await.unwrap();
    assert!(status.iter().all(|s| s.state == State::Completed));
}

#[tokio::test]
async fn second_up_with_nothing_pending_does_nothing() {
    let t = fresh_db("noop").await;
    let runner = MigrationRunner::with_migrations(t.db.clone(), steps());
    runner.run_pending().await.unwrap();
    let again = runner.run_pending().await.unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(order(&t.db).await, [1, 2, 3]);
    assert_eq!(
        t.record("001_first")
            .await
            .unwrap()
            .get_array("history")
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn failed_migration_is_recorded_stops_the_run_and_reruns_after_a_fix() {
    let t = fresh_db("fail").await;
    t.db.collection::<Document>("switch")
        .insert_one(doc! { "on": true })
        .await
        .unwrap();
    let migrations = vec![
        reg(1, "001_first", Step(1)),
        reg(2, "002_flaky", FailsWhileSwitched),
        reg(3, "003_third", Step(3)),
    ];
    let runner = MigrationRunner::with_migrations(t.db.clone(), migrations.clone());
    let err = runner.run_pending().await.unwrap_err();
    assert!(
        matches!(&err, Error::Migration { name, reason } if name == "002_flaky" && reason.contains("switch is on")),
        "{err}"
    );
    assert_eq!(err.exit_code(), 1);
    let record = t.record("002_flaky").await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "failed");
    assert!(record.get_str("error").unwrap().contains("switch is on"));
    assert!(
        t.record("003_third").await.is_none(),
        "the run stops at the first failure"
    );
    let lock =
        t.db.collection::<Document>("migrations_lock")
            .count_documents(doc! {})
            .await
            .unwrap();
    assert_eq!(lock, 0, "the lock is released on the error path");

    t.db.collection::<Document>("switch")
        .delete_many(doc! {})
        .await
        .unwrap();
    let report = runner.run_pending().await.unwrap();
    assert_eq!(
        report
            .applied
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["002_flaky", "003_third"]
    );
    let record = t.record("002_flaky").await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "completed");
    assert!(record.get("error").is_none());
    let history = record.get_array("history").unwrap();
    let statuses: Vec<&str> = history
        .iter()
        .map(|h| h.as_document().unwrap().get_str("status").unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "completed"]);
}

#[tokio::test]
async fn rollback_runs_the_last_down_and_keeps_history() {
    let t = fresh_db("rollback").await;
    let runner = MigrationRunner::with_migrations(t.db.clone(), steps());
    runner.run_pending().await.unwrap();
    let applied = runner.rollback_last().await.unwrap();
    assert_eq!(applied.name, "003_third");
    assert_eq!(order(&t.db).await, [1, 2]);
    let record = t.record("003_third").await.unwrap();
    assert_eq!(record.get_str("status").unwrap(), "rolled_back");
    let history = record.get_array("history").unwrap();
    assert_eq!(history.len(), 2);
    let last = history[1].as_document().unwrap();
    assert_eq!(last.get_str("action").unwrap(), "down");
    assert!(last.get_str("host").is_ok() && last.get_i64("pid").is_ok());
    let states: Vec<State> = runner
        .status()
        .await
        .unwrap()
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(
        states,
        [State::Completed, State::Completed, State::RolledBack]
    );

    // A rolled-back migration is pending again, and its history grows.
    runner.run_pending().await.unwrap();
    assert_eq!(order(&t.db).await, [1, 2, 3]);
    assert_eq!(
        t.record("003_third")
            .await
            .unwrap()
            .get_array("history")
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn migration_without_down_refuses_rollback_and_changes_nothing() {
    let t = fresh_db("nodown").await;
    let runner = MigrationRunner::with_migrations(
        t.db.clone(),
        vec![
            reg(1, "001_first", Step(1)),
            reg(2, "002_slow", Slow(Duration::ZERO)),
        ],
    );
    runner.run_pending().await.unwrap();
    let before = t.record("002_slow").await.unwrap();
    let err = runner.rollback_last().await.unwrap_err();
    assert!(
        matches!(&err, Error::Refused(m) if m.contains("002_slow") && m.contains("no down")),
        "{err}"
    );
    assert_eq!(err.exit_code(), 5);
    assert_eq!(t.record("002_slow").await.unwrap(), before);
    assert_eq!(order(&t.db).await, [1]);
}

#[tokio::test]
async fn rollback_with_nothing_completed_is_refused() {
    let t = fresh_db("nothing").await;
    let runner = MigrationRunner::with_migrations(t.db.clone(), steps());
    assert!(
        matches!(runner.rollback_last().await, Err(Error::Refused(m)) if m.contains("nothing to roll back"))
    );
}

#[tokio::test]
async fn two_concurrent_runners_one_wins_the_other_is_told_who_holds_the_lock() {
    let t = fresh_db("race").await;
    let make = || {
        MigrationRunner::with_migrations(
            t.db.clone(),
            vec![reg(1, "001_slow", Slow(Duration::from_millis(1500)))],
        )
    };
    let (a, b) = (make(), make());
    let (ra, rb) = tokio::join!(a.run_pending(), b.run_pending());
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected exactly one winner: {other:?}"),
    };
    assert_eq!(won.applied.len(), 1);
    let message = lost.to_string();
    assert!(matches!(lost, Error::Locked { .. }), "{message}");
    assert_eq!(lost.exit_code(), 4);
    assert!(
        message.contains(&std::process::id().to_string()) && message.contains("migrate up"),
        "{message}"
    );
    assert_eq!(
        t.db.collection::<Document>("migrations_lock")
            .count_documents(doc! {})
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn waiting_runner_queues_behind_the_holder() {
    let t = fresh_db("wait").await;
    let make = |wait| {
        MigrationRunner::with_migrations(
            t.db.clone(),
            vec![reg(1, "001_slow", Slow(Duration::from_millis(800)))],
        )
        .with_options(RunOptions {
            wait_for_lock: wait,
            ..RunOptions::default()
        })
    };
    let (a, b) = (make(None), make(Some(Some(Duration::from_secs(30)))));
    let first = a.run_pending();
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.run_pending().await
    };
    let (ra, rb) = tokio::join!(first, second);
    assert_eq!(ra.unwrap().applied.len(), 1);
    assert!(
        rb.unwrap().applied.is_empty(),
        "the waiter finds nothing left to do"
    );
}

#[tokio::test]
async fn expired_lease_of_a_crashed_holder_is_taken_over() {
    let t = fresh_db("stale").await;
    let past = DateTime::from_millis(DateTime::now().timestamp_millis() - 60_000);
    t.db.collection::<Document>("migrations_lock")
        .insert_one(doc! { "_id": "migrate", "token": "old", "host": "elsewhere", "pid": 1_i64, "user": "op", "command": "up", "acquiredAt": past, "expiresAt": past })
        .await
        .unwrap();
    let runner = MigrationRunner::with_migrations(t.db.clone(), steps());
    runner.run_pending().await.unwrap();
    assert_eq!(order(&t.db).await, [1, 2, 3]);
}

#[tokio::test]
async fn live_lease_of_another_host_blocks_and_names_the_holder() {
    let t = fresh_db("held").await;
    let now = DateTime::now();
    let later = DateTime::from_millis(now.timestamp_millis() + 600_000);
    t.db.collection::<Document>("migrations_lock")
        .insert_one(doc! { "_id": "migrate", "token": "other", "host": "ops-box", "pid": 4242_i64, "user": "alice", "command": "up", "acquiredAt": now, "expiresAt": later })
        .await
        .unwrap();
    let runner = MigrationRunner::with_migrations(t.db.clone(), steps());
    let message = runner.run_pending().await.unwrap_err().to_string();
    assert!(message.contains("alice@ops-box pid 4242"), "{message}");
    assert!(t.record("001_first").await.is_none());
}

#[tokio::test]
async fn lease_of_a_dead_process_on_this_host_is_taken_over_at_once() {
    let t = fresh_db("deadpid").await;
    let now = DateTime::now();
    let later = DateTime::from_millis(now.timestamp_millis() + 600_000);
    let host = hostname::get().unwrap().to_string_lossy().into_owned();
    // A pid that cannot exist (above the kernel's pid_max).
    t.db.collection::<Document>("migrations_lock")
        .insert_one(doc! { "_id": "migrate", "token": "dead", "host": host, "pid": 99_999_999_i64, "user": "op", "command": "up", "acquiredAt": now, "expiresAt": later })
        .await
        .unwrap();
    MigrationRunner::with_migrations(t.db.clone(), steps())
        .run_pending()
        .await
        .unwrap();
    assert_eq!(order(&t.db).await, [1, 2, 3]);
}

#[tokio::test]
async fn changed_source_of_an_applied_migration_is_drift_and_stops_up() {
    let t = fresh_db("drift").await;
    let first_two = vec![reg(1, "001_first", Step(1)), reg(2, "002_second", Step(2))];
    MigrationRunner::with_migrations(t.db.clone(), first_two)
        .run_pending()
        .await
        .unwrap();
    // The applied 001 ran from other source than the one compiled now.
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": "001_first" },
            doc! { "$set": { "checksum": "different" } },
        )
        .await
        .unwrap();
    let mut all = steps();
    all.push(reg(4, "004_fourth", Step(4)));
    let runner = MigrationRunner::with_migrations(t.db.clone(), all.clone());
    let status = runner.status().await.unwrap();
    assert_eq!(
        status.iter().find(|s| s.name == "001_first").unwrap().state,
        State::Changed
    );
    let err = runner.run_pending().await.unwrap_err();
    assert!(
        matches!(&err, Error::Drift { names } if names == "001_first"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 5);
    assert!(
        t.record("004_fourth").await.is_none(),
        "nothing runs before the drift check"
    );

    let allowed = MigrationRunner::with_migrations(t.db.clone(), all).with_options(RunOptions {
        allow_drift: true,
        ..RunOptions::default()
    });
    let names: Vec<String> = allowed
        .run_pending()
        .await
        .unwrap()
        .applied
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["003_third", "004_fourth"]);
}

#[tokio::test]
async fn records_not_in_this_build_show_as_unknown() {
    let t = fresh_db("unknown").await;
    MigrationRunner::with_migrations(t.db.clone(), steps())
        .run_pending()
        .await
        .unwrap();
    let only_first =
        MigrationRunner::with_migrations(t.db.clone(), vec![reg(1, "001_first", Step(1))]);
    let unknown: Vec<String> = only_first
        .status()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.state == State::Unknown)
        .map(|s| s.name)
        .collect();
    assert_eq!(unknown, ["002_second", "003_third"]);
}
