//! The plan on plain data: no server.

use super::*;
use crate::engine::migration::{Context, Migration, Outcome};
use async_trait::async_trait;
use mongodb::bson::doc;
use std::sync::Arc;

struct Noop;

#[async_trait]
impl Migration for Noop {
    fn description(&self) -> &'static str {
        "does nothing"
    }
    async fn up(&self, _ctx: &Context) -> Result<Outcome> {
        Ok(Outcome::ok("nothing", Document::new()))
    }
}

fn registered(number: u32, name: &'static str) -> Registered {
    Registered {
        number,
        name,
        checksum: "sum",
        legacy: &[],
        doc: "",
        migration: Arc::new(Noop),
    }
}

fn three() -> Vec<Registered> {
    vec![
        registered(1, "001_a"),
        registered(2, "002_b"),
        registered(3, "003_c"),
    ]
}

fn record(name: &str, status: &str) -> Record {
    Record {
        name: name.into(),
        status: RecordStatus::from(status.to_string()),
        checksum: "sum".into(),
        ..Record::default()
    }
}

fn states(plan: &[MigrationStatus]) -> Vec<(&str, State)> {
    plan.iter().map(|m| (m.name.as_str(), m.state)).collect()
}

#[test]
fn states_come_from_records_and_checksums() {
    let mut changed = record("002_b", "completed");
    changed.checksum = "other".into();
    let planned = plan(
        &three(),
        vec![
            record("001_a", "completed"),
            changed,
            record("003_c", "rolling_back"),
            record("000_gone", "completed"),
        ],
    );
    assert_eq!(
        states(&planned),
        [
            ("001_a", State::Completed),
            ("002_b", State::Changed),
            ("003_c", State::RollingBack),
            ("000_gone", State::Unknown),
        ]
    );
    assert_eq!(planned[3].number, 0);
}

#[test]
fn unknown_and_malformed_records_are_flagged_and_refused_by_name() {
    let unknown = plan(&three(), vec![record("002_b", "paused")]);
    assert_eq!(unknown[1].state, State::UnknownStatus);
    let err = check_runnable(&three(), &unknown, &RunOptions::default()).unwrap_err();
    assert!(err.to_string().contains("002_b"), "{err}");
    assert!(err.to_string().contains("\"paused\""), "{err}");

    let mut malformed = record("001_a", "<malformed>");
    malformed.error = Some("invalid type".into());
    let malformed = plan(&three(), vec![malformed]);
    assert_eq!(malformed[0].state, State::Malformed);
    let err = check_runnable(&three(), &malformed, &RunOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("malformed (invalid type)"),
        "{err}"
    );
}

#[test]
fn pending_runs_failed_rolled_back_and_interrupted_up_to_to() {
    let records = vec![
        record("001_a", "failed"),
        record("002_b", "rolled_back"),
        record("003_c", "running"),
    ];
    let planned = plan(&three(), records);
    let all = RunOptions {
        resume: true,
        ..RunOptions::default()
    };
    let names: Vec<_> = pending(&planned, &all).map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["001_a", "002_b", "003_c"]);
    let to = RunOptions { to: Some(2), ..all };
    let names: Vec<_> = pending(&planned, &to).map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["001_a", "002_b"]);
}

#[test]
fn drift_and_interruptions_are_refused_unless_allowed() {
    let mut changed = record("001_a", "completed");
    changed.checksum = "other".into();
    let plan_changed = plan(&three(), vec![changed]);
    let err = check_runnable(&three(), &plan_changed, &RunOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Drift { ref names } if names == "001_a"));
    let allowed = RunOptions {
        allow_drift: true,
        ..RunOptions::default()
    };
    assert!(check_runnable(&three(), &plan_changed, &allowed).is_ok());

    let mut running = record("002_b", "running");
    running.checkpoint = Some(doc! { "lastId": 7, "scanned": 10_i64, "modified": 9 });
    let plan_running = plan(&three(), vec![running]);
    let err = check_runnable(&three(), &plan_running, &RunOptions::default()).unwrap_err();
    match err {
        Error::Interrupted { name, checkpoint } => {
            assert_eq!(name, "002_b");
            assert_eq!(checkpoint, "last _id 7 (10 scanned, 9 modified)");
        }
        other => panic!("{other}"),
    }
    let resume = RunOptions {
        resume: true,
        ..RunOptions::default()
    };
    assert!(check_runnable(&three(), &plan_running, &resume).is_ok());
    let checkpoint = resume_point(&plan_running[1], &resume).unwrap();
    assert_eq!(checkpoint.get_i32("lastId").unwrap(), 7);
    let restart = RunOptions {
        restart: true,
        ..RunOptions::default()
    };
    assert!(resume_point(&plan_running[1], &restart).is_none());

    let plan_rolling = plan(&three(), vec![record("003_c", "rolling_back")]);
    let err = check_runnable(&three(), &plan_rolling, &resume).unwrap_err();
    assert!(
        err.to_string()
            .contains("rollback of 003_c was interrupted"),
        "{err}"
    );
}

#[test]
fn to_must_name_a_migration() {
    let empty = plan(&three(), vec![]);
    let options = RunOptions {
        to: Some(9),
        ..RunOptions::default()
    };
    let err = check_runnable(&three(), &empty, &options).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[test]
fn rollback_takes_the_last_migration_touched() {
    let records = vec![
        record("001_a", "completed"),
        record("002_b", "failed"),
        record("003_c", "rolled_back"),
    ];
    let target = rollback_target(plan(&three(), records)).unwrap();
    assert_eq!(target.name, "002_b");
    assert!(rollback_target(plan(&three(), vec![])).is_none());
}

#[test]
fn before_images_belong_to_touched_migrations_only() {
    let touched = plan(
        &three(),
        vec![record("001_a", "running"), record("002_b", "rolled_back")],
    );
    assert!(owns_before_images(&touched, "001_a"));
    assert!(!owns_before_images(&touched, "002_b"));
    assert!(!owns_before_images(&touched, "009_elsewhere"));
}

fn unchecked(name: &str, status: &str) -> Record {
    Record {
        checksum: String::new(),
        ..record(name, status)
    }
}

#[test]
fn javascript_runner_records_are_matched_by_name_with_or_without_js() {
    let planned = plan(
        &three(),
        vec![
            unchecked("001_a.js", "completed"),
            unchecked("002_b", "completed"),
            unchecked("003_c.js", "failed"),
        ],
    );
    assert_eq!(
        states(&planned),
        [
            ("001_a", State::Adopted),
            ("002_b", State::Adopted),
            ("003_c", State::Failed)
        ]
    );
    let to_adopt: Vec<(&str, Vec<String>)> = adoptions(&planned)
        .map(|m| (m.name.as_str(), m.to_adopt.clone()))
        .collect();
    assert_eq!(
        to_adopt,
        [
            ("001_a", vec!["001_a.js".to_string()]),
            ("002_b", vec!["002_b".to_string()]),
            ("003_c", vec!["003_c.js".to_string()]),
        ]
    );
    // Adopted ones are applied: `up` runs only the failed one, and nothing is drift.
    let options = RunOptions::default();
    let pending: Vec<&str> = pending(&planned, &options)
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(pending, ["003_c"]);
    assert!(check_runnable(&three(), &planned, &options).is_ok());
}

#[test]
fn a_recorded_checksum_that_differs_is_drift_and_a_missing_one_is_not() {
    let mut differs = record("001_a", "completed");
    differs.checksum = "other".into();
    let planned = plan(&three(), vec![differs, unchecked("002_b", "completed")]);
    assert_eq!(planned[0].state, State::Changed);
    assert_eq!(planned[1].state, State::Adopted);
    assert!(planned[0].to_adopt.is_empty());
}

#[test]
fn a_checksum_recorded_by_an_earlier_release_for_the_same_source_is_not_drift() {
    let mut migrations = three();
    migrations[0].legacy = &["bytes"];
    let mut earlier = record("001_a", "completed");
    earlier.checksum = "bytes".into();
    // The alias is 001's: on another migration it is a checksum like any other.
    let mut elsewhere = record("002_b", "completed");
    elsewhere.checksum = "bytes".into();
    let planned = plan(&migrations, vec![earlier, elsewhere]);
    assert_eq!(planned[0].state, State::Completed);
    assert_eq!(planned[1].state, State::Changed);
}

#[test]
fn repair_lists_each_drifted_migration_with_both_checksums_and_nothing_else() {
    let mut changed = record("002_b", "completed");
    changed.checksum = "other".into();
    let mut failed = record("003_c", "failed");
    failed.checksum = "older".into();
    let planned = plan(
        &three(),
        vec![unchecked("001_a", "completed"), changed, failed],
    );
    assert_eq!(
        repair_targets(&planned),
        [ChecksumRepair {
            name: "002_b".into(),
            record: "002_b".into(),
            recorded: "other".into(),
            checksum: "sum".into(),
        }]
    );
    let mut same = record("002_b", "completed");
    same.checksum = "sum".into();
    assert!(repair_targets(&plan(&three(), vec![same])).is_empty());
}

#[test]
fn a_plain_record_wins_over_a_js_one_which_is_merged() {
    let planned = plan(
        &three(),
        vec![
            record("001_a", "completed"),
            unchecked("001_a.js", "failed"),
        ],
    );
    assert_eq!(planned[0].state, State::Completed);
    assert_eq!(planned[0].to_adopt, ["001_a.js"]);
    assert!(planned.iter().all(|m| m.state != State::Unknown));
}

#[test]
fn rollback_to_takes_every_touched_migration_above_newest_first() {
    let records = vec![
        record("001_a", "completed"),
        record("002_b", "rolled_back"),
        record("003_c", "failed"),
    ];
    let names = |to| -> Vec<String> {
        rollback_targets(plan(&three(), records.clone()), to)
            .into_iter()
            .map(|m| m.name)
            .collect()
    };
    assert_eq!(names(Some(0)), ["003_c", "001_a"]);
    assert_eq!(names(Some(1)), ["003_c"]);
    assert_eq!(names(Some(3)), Vec::<String>::new());
    assert_eq!(names(None), ["003_c"]);
}

#[test]
fn baseline_marks_what_is_not_applied_and_refuses_interrupted_ones() {
    let planned = plan(
        &three(),
        vec![record("001_a", "completed"), record("002_b", "rolled_back")],
    );
    let marked: Vec<&str> = baseline_targets(&planned, 3)
        .unwrap()
        .into_iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(marked, ["002_b", "003_c"]);
    let interrupted = plan(&three(), vec![record("002_b", "running")]);
    let err = baseline_targets(&interrupted, 3).unwrap_err().to_string();
    assert!(
        err.contains("002_b") && err.contains("nothing was marked"),
        "{err}"
    );
    assert!(baseline_targets(&interrupted, 1).is_ok());
}

#[test]
fn applied_migrations_this_build_does_not_know_are_refused_unless_ignored() {
    let mut applied = record("004_newer", "completed");
    applied.checksum = "other".into();
    let planned = plan(&three(), vec![applied.clone()]);
    let err = check_runnable(&three(), &planned, &RunOptions::default()).unwrap_err();
    assert!(err.to_string().contains("004_newer (completed)"), "{err}");
    assert!(
        err.to_string()
            .contains("this build is older than the database's migrations"),
        "{err}"
    );
    let err = check_rollback(&planned, &RunOptions::default()).unwrap_err();
    assert!(err.to_string().contains("004_newer"), "{err}");
    let ignoring = RunOptions {
        ignore_unknown: true,
        ..RunOptions::default()
    };
    assert!(check_runnable(&three(), &planned, &ignoring).is_ok());
    assert!(check_rollback(&planned, &ignoring).is_ok());

    // Rolled back by the newer build: nothing of it is applied.
    let planned = plan(&three(), vec![record("004_newer", "rolled_back")]);
    assert!(check_runnable(&three(), &planned, &RunOptions::default()).is_ok());
}

#[test]
fn a_rollback_over_an_unreadable_record_is_refused_even_when_ignoring_unknown_ones() {
    let mut malformed = record("003_c", "<malformed>");
    malformed.error = Some("invalid type: integer `42`".into());
    let planned = plan(&three(), vec![record("002_b", "completed"), malformed]);
    let ignoring = RunOptions {
        ignore_unknown: true,
        ..RunOptions::default()
    };
    let err = check_rollback(&planned, &ignoring).unwrap_err();
    assert!(err.to_string().contains("003_c"), "{err}");
    assert!(err.to_string().contains("malformed"), "{err}");
}
