//! The `migrate` binary as an operator uses it: commands, help, exit codes, configuration
//! errors, lock and drift refusals, and the log file.

mod common;

use common::{fresh_db, read, text};
use mongodb::bson::{doc, DateTime, Document};
use std::time::{Duration, Instant};

async fn users(t: &common::TestDb, n: i32) {
    let docs: Vec<Document> = (0..n)
        .map(|i| match i % 3 {
            0 => doc! { "_id": i, "name": format!("u{i}"), "affiliateEarnings": 10.5 + i as f64 },
            1 => doc! { "_id": i, "name": format!("u{i}"), "affiliateEarnings": i },
            _ => doc! { "_id": i, "name": format!("u{i}") },
        })
        .collect();
    t.db.collection::<Document>("users")
        .insert_many(docs)
        .await
        .unwrap();
}

#[tokio::test]
async fn help_of_every_command_lists_its_flags() {
    let t = fresh_db("help").await;
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--help"],
            &[
                "up",
                "status",
                "rollback",
                "repair",
                "sample-data",
                "--uri",
                "--db",
                "--log-dir",
                "--env-file",
                "Exit codes",
            ],
        ),
        (
            &["up", "--help"],
            &[
                "--dry-run",
                "--resume",
                "--restart",
                "--batch-size",
                "--concurrency",
                "--max-docs-per-sec",
                "--fail-on-invalid",
                "--no-progress",
                "--to",
                "--wait",
                "--wait-timeout",
                "--lock-lease",
                "--allow-drift",
                "MONGODB_URI",
            ],
        ),
        (&["status", "--help"], &["--json"]),
        (
            &["rollback", "--help"],
            &["--yes", "--force", "--wait", "--allow-drift"],
        ),
        (
            &["repair", "--help"],
            &[
                "checksum",
                "--dry-run",
                "--yes",
                "--wait",
                "--wait-timeout",
                "--lock-lease",
            ],
        ),
        (
            &["sample-data", "--help"],
            &[
                "--users",
                "--withdrawals",
                "--invalid",
                "--mixed-ids",
                "--seed",
                "--drop",
            ],
        ),
    ];
    for (args, expected) in cases {
        let out = t.migrate(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let help = text(&out);
        for flag in expected {
            assert!(
                help.contains(flag),
                "`migrate {}` lacks {flag}:\n{help}",
                args.join(" ")
            );
        }
    }
}

#[tokio::test]
async fn help_lists_global_options_apart_and_offline_commands_without_them() {
    let t = fresh_db("helpheadings").await;
    let out = t.migrate(&["up", "--help"]);
    assert!(out.status.success(), "{}", text(&out));
    let help = text(&out);
    let heading = help.find("Global options:").expect("a heading of its own");
    // The command's own flags first, the global ones after the heading.
    assert!(help.find("--dry-run").unwrap() < heading, "{help}");
    for global in [
        "--uri",
        "--db",
        "--connect-timeout",
        "--log-dir",
        "--env-file",
    ] {
        assert!(help.find(global).unwrap() > heading, "{global}: {help}");
    }
    assert!(help.contains("[default: logs]"), "{help}");

    for offline in ["new", "completions", "build-script"] {
        let out = t.migrate(&[offline, "--help"]);
        assert!(out.status.success(), "{offline}: {}", text(&out));
        let help = text(&out);
        for ignored in [
            "--uri",
            "--db",
            "--connect-timeout",
            "--log-dir",
            "Global options",
        ] {
            assert!(
                !help.contains(ignored),
                "{offline} lists {ignored}:\n{help}"
            );
        }
    }
}

#[tokio::test]
async fn out_of_range_numbers_are_refused_with_the_range_in_words() {
    let t = fresh_db("ranges").await;
    for (args, range) in [
        (
            &["pause", "--timeout", "0"][..],
            "a whole number of seconds, 1 or more",
        ),
        (
            &["status", "--connect-timeout", "0"],
            "a whole number of seconds, 1 or more",
        ),
        (
            &["up", "--lock-lease", "2"],
            "a whole number of seconds from 5 to 3600",
        ),
        (&["up", "--concurrency", "65"], "from 1 to 64"),
    ] {
        let out = t.migrate(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let said = text(&out);
        assert!(said.contains(range), "{args:?}: {said}");
        assert!(!said.contains("18446744073709551615"), "{args:?}: {said}");
    }
}

#[tokio::test]
async fn fail_on_invalid_names_the_reasons_in_words() {
    let t = fresh_db("invalidreasons").await;
    let out = t.migrate(&["sample-data", "--users", "200", "--invalid", "20"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = t.migrate(&["up", "--no-progress", "--fail-on-invalid"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("--fail-on-invalid is set"), "{said}");
    // Each reason with its count, in words: `(string 4, negative 4, ...)`.
    let reasons = said
        .split_once("cannot be migrated (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(reasons, _)| reasons)
        .unwrap_or_default();
    assert!(reasons.contains("string"), "{said}");
    for reason in reasons.split(", ") {
        let (word, count) = reason.rsplit_once(' ').unwrap_or_default();
        assert!(
            !word.is_empty() && count.parse::<u64>().is_ok(),
            "{reason:?} in {said}"
        );
    }
    for debug_form in ["Document(", "Int64(", "Some("] {
        assert!(!said.contains(debug_form), "{debug_form}: {said}");
    }
}

#[tokio::test]
async fn up_status_and_rollback_work_end_to_end() {
    let t = fresh_db("e2e").await;
    users(&t, 30).await;
    let out = t.migrate(&["up", "--batch-size", "7"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "001_add_withdrawal_fields_to_users",
        "002_create_withdrawal_indexes",
        "003_migrate_existing_user_balances",
    ] {
        assert!(stdout.contains(&format!("applied {name}")), "{stdout}");
    }

    let status = t.migrate(&["status"]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert_eq!(table.matches("completed").count(), 3, "{table}");

    let json = t.migrate(&["status", "--json"]);
    let parsed: serde_json::Value =
        serde_json::from_slice(&json.stdout).expect("status --json is JSON");
    let states: Vec<&str> = parsed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["completed", "completed", "completed"]);
    assert!(parsed[2]["record"]["result"]["modified"].is_number());

    let again = t.migrate(&["up"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(text(&again).contains("nothing to migrate"));

    let unconfirmed = t.migrate(&["rollback"]);
    assert_eq!(unconfirmed.status.code(), Some(5), "{}", text(&unconfirmed));
    assert!(text(&unconfirmed).contains("--yes"));
    assert_eq!(
        t.status("003_migrate_existing_user_balances").await,
        "completed"
    );

    let rolled = t.migrate(&["rollback", "--yes"]);
    assert_eq!(rolled.status.code(), Some(0), "{}", text(&rolled));
    assert!(text(&rolled).contains("rolled back 003_migrate_existing_user_balances"));
    let after = t.migrate(&["status"]);
    assert!(String::from_utf8_lossy(&after.stdout).contains("rolled back"));
}

#[tokio::test]
async fn unreachable_server_fails_fast_with_exit_3() {
    let t = fresh_db("unreach").await;
    let started = Instant::now();
    let out = t
        .migrate_cmd(&["status", "--connect-timeout", "2"])
        .env("MONGODB_URI", "mongodb://127.0.0.1:1/lms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        text(&out).contains("cannot connect to mongodb://127.0.0.1:1/lms"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn password_in_the_uri_never_appears_in_output_or_log() {
    let t = fresh_db("secret").await;
    let out = t
        .migrate_cmd(&["up", "--connect-timeout", "1"])
        .env("MONGODB_URI", "mongodb://admin:s3cretPw@127.0.0.1:1/lms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let all = text(&out) + &read(&t.log_file());
    assert!(!all.contains("s3cretPw"), "{all}");
    assert!(all.contains("admin:***@"), "{all}");
}

#[tokio::test]
async fn missing_or_malformed_configuration_names_what_to_fix() {
    let t = fresh_db("config").await;
    let cases: [(Option<&str>, &str); 3] = [
        (None, "MONGODB_URI"),
        (Some("localhost:27017/lms"), "must start with mongodb://"),
        (Some("mongodb://127.0.0.1:1"), "MONGODB_DB"),
    ];
    for (uri, expected) in cases {
        let mut cmd = t.migrate_cmd(&["status"]);
        match uri {
            Some(uri) => cmd.env("MONGODB_URI", uri),
            None => cmd.env_remove("MONGODB_URI"),
        };
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{uri:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{uri:?}: {}", text(&out));
    }
}

#[tokio::test]
async fn dotenv_file_supplies_what_flags_and_environment_do_not() {
    let t = fresh_db("dotenv").await;
    let env = t.logs.path().join("test.env");
    std::fs::write(&env, format!("MONGODB_URI={}\n", t.uri)).unwrap();
    let out = t
        .migrate_cmd(&["status", "--env-file"])
        .arg(&env)
        .env_remove("MONGODB_URI")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("001_add_withdrawal_fields_to_users"));
}

#[tokio::test]
async fn lock_held_by_another_operator_exits_4_naming_the_holder() {
    let t = fresh_db("locked").await;
    users(&t, 5).await;
    let now = DateTime::now();
    let later = DateTime::from_millis(now.timestamp_millis() + 600_000);
    t.db.collection::<Document>("migrations_lock")
        .insert_one(doc! { "_id": "migrate", "token": "x", "host": "ops-2", "pid": 777_i64, "user": "bob", "command": "up", "acquiredAt": now, "expiresAt": later })
        .await
        .unwrap();
    let out = t.migrate(&["up"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("bob@ops-2 pid 777"), "{}", text(&out));
    let rollback = t.migrate(&["rollback", "--yes"]);
    assert_eq!(
        rollback.status.code(),
        Some(5),
        "nothing to roll back is checked before locking: {}",
        text(&rollback)
    );
    let waited = t.migrate(&["up", "--wait", "--wait-timeout", "1"]);
    assert_eq!(waited.status.code(), Some(4), "{}", text(&waited));
    assert!(
        text(&waited).contains("gave up waiting"),
        "{}",
        text(&waited)
    );
}

#[tokio::test]
async fn drift_shows_in_status_and_stops_up_with_exit_5() {
    let t = fresh_db("drift").await;
    users(&t, 5).await;
    assert!(t.migrate(&["up"]).status.success());
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": "002_create_withdrawal_indexes" },
            doc! { "$set": { "checksum": "0000" } },
        )
        .await
        .unwrap();
    let status = t.migrate(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("changed since applied"));
    // Register one more pending piece of work by rolling back 003: `up` must still refuse.
    let rolled = t.migrate(&["rollback", "--yes"]);
    assert!(rolled.status.success(), "{}", text(&rolled));
    let out = t.migrate(&["up"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("002_create_withdrawal_indexes changed since it was applied"),
        "{}",
        text(&out)
    );
    assert_eq!(
        t.status("003_migrate_existing_user_balances").await,
        "rolled_back"
    );
    let forced = t.migrate(&["up", "--allow-drift"]);
    assert!(forced.status.success(), "{}", text(&forced));
}

#[tokio::test]
async fn a_checksum_earlier_releases_took_over_the_bytes_of_todays_source_is_not_drift() {
    let t = fresh_db("byte_checksum").await;
    users(&t, 5).await;
    assert!(t.migrate(&["up"]).status.success());
    let source = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/002_create_withdrawal_indexes.rs"),
    )
    .unwrap();
    let bytes = mongo_migrate::engine::sources::byte_checksum(&source);
    assert_ne!(bytes, mongo_migrate::engine::sources::checksum(&source));
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": "002_create_withdrawal_indexes" },
            doc! { "$set": { "checksum": &bytes } },
        )
        .await
        .unwrap();
    let status = t.migrate(&["status"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        !text(&status).contains("changed since applied"),
        "{}",
        text(&status)
    );
    let rolled = t.migrate(&["rollback", "--yes"]);
    assert!(rolled.status.success(), "{}", text(&rolled));
    let out = t.migrate(&["up"]);
    assert!(out.status.success(), "{}", text(&out));
    // 002 did not run again: its record keeps the checksum it was applied under.
    let record = t.record("002_create_withdrawal_indexes").await.unwrap();
    assert_eq!(record.get_str("checksum").unwrap(), bytes);
}

#[tokio::test]
async fn databases_that_applied_the_migrations_before_they_were_reformatted_see_no_drift() {
    let t = fresh_db("reformatted").await;
    users(&t, 5).await;
    assert!(t.migrate(&["up"]).status.success());
    for (name, bytes, _) in mongo_migrate::engine::sources::REFORMATTED {
        let set =
            t.db.collection::<Document>("migrations")
                .update_one(
                    doc! { "name": name },
                    doc! { "$set": { "checksum": bytes } },
                )
                .await
                .unwrap();
        assert_eq!(set.matched_count, 1, "{name}");
    }
    let status = t.migrate(&["status"]);
    assert!(
        !text(&status).contains("changed since applied"),
        "{}",
        text(&status)
    );
    let up = t.migrate(&["up"]);
    assert!(up.status.success(), "{}", text(&up));
    let rollback = t.migrate(&["rollback", "--dry-run"]);
    assert!(rollback.status.success(), "{}", text(&rollback));
}

#[tokio::test]
async fn repair_lists_a_changed_migration_then_records_its_checksum_and_up_runs_again() {
    let t = fresh_db("repair").await;
    users(&t, 5).await;
    assert!(t.migrate(&["up"]).status.success());
    let name = "002_create_withdrawal_indexes";
    let source = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("migrations/{name}.rs")),
    )
    .unwrap();
    let today = mongo_migrate::engine::sources::checksum(&source);
    t.db.collection::<Document>("migrations")
        .update_one(
            doc! { "name": name },
            doc! { "$set": { "checksum": "0000aaaa" } },
        )
        .await
        .unwrap();
    // 003 rolled back gives `up` something to run; the drift of 002 stops it.
    assert!(t.migrate(&["rollback", "--yes"]).status.success());
    let refused = t.migrate(&["up"]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));

    let record = t.record(name).await.unwrap();
    let lock = t.all("migrations_lock").await;
    let dry = t.migrate(&["repair", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    let listed = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(
        listed.contains(&format!(
            "{name}: recorded 0000aaaa, source today {}",
            &today[..12]
        )),
        "{listed}"
    );
    assert_eq!(
        listed.lines().filter(|l| l.contains("recorded")).count(),
        1,
        "{listed}"
    );
    assert!(listed.contains("nothing was written"), "{listed}");
    assert_eq!(t.record(name).await.unwrap(), record);
    assert_eq!(t.all("migrations_lock").await, lock, "not even the lock");

    // Without a terminal, only --yes confirms.
    let unconfirmed = t.migrate(&["repair"]);
    assert_eq!(unconfirmed.status.code(), Some(5), "{}", text(&unconfirmed));
    assert!(
        text(&unconfirmed).contains("pass --yes"),
        "{}",
        text(&unconfirmed)
    );
    assert_eq!(t.record(name).await.unwrap(), record);

    let repaired = t.migrate(&["repair", "--yes"]);
    assert!(repaired.status.success(), "{}", text(&repaired));
    assert!(
        text(&repaired).contains(&format!("repaired {name}")),
        "{}",
        text(&repaired)
    );
    let record = t.record(name).await.unwrap();
    assert_eq!(record.get_str("checksum").unwrap(), today);
    assert_eq!(record.get_str("status").unwrap(), "completed");
    let history = record.get_array("history").unwrap();
    let entry = history.last().unwrap().as_document().unwrap();
    assert_eq!(entry.get_str("action").unwrap(), "repair", "{entry}");
    assert_eq!(entry.get_str("oldChecksum").unwrap(), "0000aaaa", "{entry}");
    assert_eq!(entry.get_str("checksum").unwrap(), today, "{entry}");
    assert!(entry.get_datetime("at").is_ok(), "{entry}");
    for who in ["user", "host"] {
        assert!(!entry.get_str(who).unwrap().is_empty(), "{entry}");
    }
    assert!(entry.get_i64("pid").unwrap() > 0, "{entry}");

    let up = t.migrate(&["up"]);
    assert!(up.status.success(), "{}", text(&up));
    assert_eq!(
        t.status("003_migrate_existing_user_balances").await,
        "completed"
    );
    let again = t.migrate(&["repair"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("nothing to repair"),
        "{}",
        text(&again)
    );
}

#[tokio::test]
async fn every_run_is_appended_to_the_log_file() {
    let t = fresh_db("logfile").await;
    users(&t, 10).await;
    assert!(t.migrate(&["up"]).status.success());
    assert!(t.migrate(&["status"]).status.success());
    let log = read(&t.log_file());
    for expected in [
        "migrate up",
        "lock acquired",
        "migration started",
        "001_add_withdrawal_fields_to_users",
        "migration completed",
        "003_migrate_existing_user_balances",
        "lock released",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    let first_len = log.len();
    let failed = t.migrate(&["up", "--batch-size", "0"]);
    assert_eq!(failed.status.code(), Some(2), "usage error");
    assert!(t.migrate(&["up"]).status.success());
    assert!(read(&t.log_file()).len() > first_len, "later runs append");
}

#[tokio::test]
async fn up_to_stops_after_the_named_migration() {
    let t = fresh_db("upto").await;
    users(&t, 5).await;
    let out = t.migrate(&["up", "--to", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(t
        .record("001_add_withdrawal_fields_to_users")
        .await
        .is_some());
    assert!(t.record("002_create_withdrawal_indexes").await.is_none());
    let unknown = t.migrate(&["up", "--to", "9"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(text(&unknown).contains("no migration is numbered 009"));
    assert!(t.migrate(&["up"]).status.success());
    assert_eq!(
        t.status("003_migrate_existing_user_balances").await,
        "completed"
    );
}
