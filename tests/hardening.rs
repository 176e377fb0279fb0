//! The `migrate` binary and library under bad input and faults, against the real server.

mod common;

use common::{fresh_db, read, text, TestDb};
use mongodb::bson::{doc, Bson, DateTime, Document};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Nothing listens here: a command that reaches the connection step fails with exit 3.
const UNREACHABLE: &str = "mongodb://127.0.0.1:1/lms";

async fn users(t: &TestDb, n: i32) {
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! { "_id": i, "name": format!("u{i}"), "affiliateEarnings": 10.5 + i as f64 })
        .collect();
    t.db.collection::<Document>("users")
        .insert_many(docs)
        .await
        .unwrap();
}

/// `migrate ARGS` to completion, off the async workers.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run migrate"))
        .await
        .unwrap()
}

/// Holds the lock as another operator would have left it.
async fn foreign_lock(t: &TestDb, pid: Bson, expires_in_ms: i64) {
    let now = DateTime::now();
    t.db.collection::<Document>("migrations_lock")
        .insert_one(doc! {
            "_id": "migrate", "token": "x", "host": "ops-2", "pid": pid, "user": "bob",
            "command": "up", "acquiredAt": now, "heartbeatAt": now,
            "expiresAt": DateTime::from_millis(now.timestamp_millis() + expires_in_ms),
        })
        .await
        .unwrap();
}

async fn lock_doc(t: &TestDb) -> Option<Document> {
    t.db.collection::<Document>("migrations_lock")
        .find_one(doc! { "_id": "migrate" })
        .await
        .unwrap()
}

/// A `migrate` process in the background; killed if the test fails first.
struct Running(Option<Child>);

impl Running {
    fn has_exited(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_some()
    }

    async fn output(mut self) -> Output {
        let child = self.0.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lease

#[tokio::test]
async fn lock_lease_outside_5s_to_1h_is_a_usage_error_before_connecting() {
    let t = fresh_db("lease_bounds").await;
    for lease in ["18446744073709551615", "3601", "4", "0"] {
        for command in ["up", "rollback"] {
            let started = Instant::now();
            let out = t
                .migrate_cmd(&[command, "--lock-lease", lease])
                .env("MONGODB_URI", UNREACHABLE)
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} --lock-lease {lease}: {}",
                text(&out)
            );
            assert!(text(&out).contains("--lock-lease"), "{}", text(&out));
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "checked before connecting"
            );
        }
    }
    for lease in ["5", "3600"] {
        let out = t
            .migrate_cmd(&["up", "--lock-lease", lease, "--connect-timeout", "1"])
            .env("MONGODB_URI", UNREACHABLE)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{lease} is accepted: {}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn library_refuses_a_lease_it_cannot_keep_instead_of_running_with_a_dead_heartbeat() {
    let t = fresh_db("lease_lib").await;
    users(&t, 5).await;
    let options = mongo_migrate::RunOptions {
        lock_lease: Duration::from_secs(u64::MAX),
        progress: false,
        ..mongo_migrate::RunOptions::default()
    };
    let runner = mongo_migrate::MigrationRunner::new(t.db.clone()).with_options(options);
    let err = runner
        .run_pending()
        .await
        .expect_err("an unkeepable lease is refused");
    assert!(
        matches!(&err, mongo_migrate::Error::Config(m) if m.contains("lease")),
        "{err}"
    );
    assert!(t
        .record("001_add_withdrawal_fields_to_users")
        .await
        .is_none());
    assert!(lock_doc(&t).await.is_none(), "no lock left behind");
}

// ---------------------------------------------------------------------------------------------
// The server's clock

/// `migrate` with its wall clock moved by `offset` (e.g. "+2h") through libfaketime, as on a
/// host whose clock is wrong; its monotonic clock stays true. `None` without `faketime`.
fn skewed(t: &TestDb, offset: &str, args: &[&str]) -> Option<Command> {
    let available = Command::new("faketime")
        .args(["-f", "+0", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // scripts/test.sh installs it; a test that silently skipped would prove nothing.
    assert!(
        available,
        "`faketime` is not installed (apt-get install faketime, or run scripts/test.sh)"
    );
    let plain = t.migrate_cmd(args);
    let mut cmd = Command::new("faketime");
    cmd.args(["-f", offset])
        .arg(plain.get_program())
        .args(plain.get_args())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(Stdio::null());
    for (key, value) in plain.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    Some(cmd)
}

#[tokio::test]
async fn a_live_lease_holds_against_a_client_whose_clock_runs_ahead() {
    let t = fresh_db("clock_ahead").await;
    users(&t, 5).await;
    foreign_lock(&t, Bson::Int64(777), 10 * 60_000).await;
    let Some(cmd) = skewed(&t, "+2h", &["up"]) else {
        return;
    };
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "the lease has 10 minutes left on the server's clock: {}",
        text(&out)
    );
    assert_eq!(lock_doc(&t).await.unwrap().get_str("token").unwrap(), "x");
    assert!(t
        .record("001_add_withdrawal_fields_to_users")
        .await
        .is_none());
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_by_a_client_whose_clock_lags() {
    let t = fresh_db("clock_behind").await;
    users(&t, 5).await;
    foreign_lock(&t, Bson::Int64(777), -60_000).await;
    let Some(cmd) = skewed(&t, "-2h", &["up"]) else {
        return;
    };
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the lease ended a minute ago on the server's clock: {}",
        text(&out)
    );
    assert!(text(&out).contains("its lease expired"), "{}", text(&out));
    assert_eq!(
        t.status("003_migrate_existing_user_balances").await,
        "completed"
    );
}

#[tokio::test]
async fn lock_times_are_written_by_the_server_clock() {
    let t = fresh_db("clock_write").await;
    users(&t, 3000).await;
    // About 3 s in 001 at 1000 users/s: long enough to read the lock while it is held, and a
    // 6 s lease is renewed every 2 s.
    let Some(mut cmd) = skewed(
        &t,
        "-2h",
        &[
            "up",
            "--lock-lease",
            "6",
            "--max-docs-per-sec",
            "1000",
            "--no-progress",
        ],
    ) else {
        return;
    };
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first: Option<Document> = None;
    let mut renewed: Option<Document> = None;
    while renewed.is_none() && Instant::now() < deadline && !child.has_exited() {
        if let Some(lock) = lock_doc(&t).await {
            match &first {
                None => first = Some(lock),
                Some(f) if lock.get("heartbeatAt") != f.get("heartbeatAt") => renewed = Some(lock),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.output().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let first = first.expect("the lock was seen while held");
    let renewed = renewed.expect("the lease was renewed while held");
    let real_now = DateTime::now().timestamp_millis();
    let at = |lock: &Document, key: &str| lock.get_datetime(key).unwrap().timestamp_millis();
    for (lock, key) in [
        (&first, "acquiredAt"),
        (&first, "heartbeatAt"),
        (&renewed, "heartbeatAt"),
    ] {
        let drift = (real_now - at(lock, key)).abs();
        assert!(
            drift < 5 * 60_000,
            "{key} is {drift} ms from the true time: written by the 2 h slow client clock\n{lock}"
        );
    }
    assert_eq!(at(&first, "expiresAt") - at(&first, "acquiredAt"), 6000);
    assert_eq!(
        at(&renewed, "expiresAt") - at(&renewed, "heartbeatAt"),
        6000
    );
}

// ---------------------------------------------------------------------------------------------
// Lock messages

#[tokio::test]
async fn wait_timeout_names_the_holder_in_one_sentence_whatever_its_pid_type() {
    let t = fresh_db("lock_msg").await;
    users(&t, 5).await;
    foreign_lock(&t, Bson::Int32(777), 10 * 60_000).await;
    let held = t.migrate(&["up"]);
    assert_eq!(held.status.code(), Some(4), "{}", text(&held));
    assert!(text(&held).contains("bob@ops-2 pid 777"), "{}", text(&held));

    let waited = t.migrate(&["up", "--wait", "--wait-timeout", "1"]);
    let message = text(&waited);
    assert_eq!(waited.status.code(), Some(4), "{message}");
    assert!(
        message.contains("gave up waiting 1s for the migration lock, still held by `migrate up` by bob@ops-2 pid 777 (since "),
        "{message}"
    );
    assert!(!message.contains("holds the lock"), "{message}");
    assert!(!message.contains("pid ?"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// Who ran it

fn os_user_name() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn without_user_in_the_environment_the_uid_name_is_recorded() {
    let t = fresh_db("actor").await;
    users(&t, 5).await;
    let out = t
        .migrate_cmd(&["up", "--to", "1"])
        .env_remove("USER")
        .env_remove("USERNAME")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let record = t
        .record("001_add_withdrawal_fields_to_users")
        .await
        .unwrap();
    let expected = os_user_name();
    assert!(!expected.is_empty());
    assert_eq!(record.get_str("user").unwrap(), expected, "{record}");
}

// ---------------------------------------------------------------------------------------------
// `--to`

#[tokio::test]
async fn up_to_a_number_no_migration_has_is_a_usage_error_before_connecting() {
    let t = fresh_db("to_usage").await;
    for number in ["0", "9", "009", "x"] {
        let started = Instant::now();
        let out = t
            .migrate_cmd(&["up", "--to", number])
            .env("MONGODB_URI", UNREACHABLE)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--to {number}: {}", text(&out));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "checked before connecting"
        );
        assert!(text(&out).contains("--to"), "{}", text(&out));
    }
    let nine = t
        .migrate_cmd(&["up", "--to", "9"])
        .env("MONGODB_URI", UNREACHABLE)
        .output()
        .unwrap();
    assert!(
        text(&nine).contains("no migration is numbered 009; this build has 001, 002, 003"),
        "{}",
        text(&nine)
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args` and fails if `secrets` appear in stdout, stderr, the log file or any tracking
/// collection.
async fn assert_hidden(t: &TestDb, mut cmd: Command, secrets: &[&str], what: &str) -> Output {
    let out = run({
        cmd.env("MIGRATE_LOG_DIR", t.logs.path());
        cmd
    })
    .await;
    let log = read(&t.log_file());
    for secret in secrets {
        for (place, content) in [
            ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
            ("stderr", stderr(&out)),
            ("migration.log", log.clone()),
        ] {
            assert!(
                !content.contains(secret),
                "{what}: {secret:?} leaked to {place}:\n{content}"
            );
        }
    }
    for coll in ["migrations", "migrations_lock", "migrations_before_images"] {
        let docs = common::sorted_by_id(&t.db.collection::<Document>(coll)).await;
        let dump = format!("{docs:?}");
        for secret in secrets {
            assert!(
                !dump.contains(secret),
                "{what}: {secret:?} leaked to {coll}"
            );
        }
    }
    out
}

#[tokio::test]
async fn the_password_never_leaks_whatever_the_uri_shape() {
    let t = fresh_db("secrets").await;
    let host = t
        .uri
        .split_once("://")
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let db = &t.name;
    let cases: Vec<(String, Vec<&str>)> = vec![
        // A scheme typo: one slash.
        (
            format!("mongodb:/u:Typo5ecret@{host}/{db}"),
            vec!["Typo5ecret"],
        ),
        // A sensitive option in the query.
        (
            format!("{}&tlsCertificateKeyFilePassword=Opt5ecret", t.uri),
            vec!["Opt5ecret"],
        ),
        (
            format!(
                "{}&authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:Tok5ecret",
                t.uri
            ),
            vec!["Tok5ecret"],
        ),
        // A password holding `/`: neither half may show.
        (
            format!("mongodb://admin:se/Sl4shSecret@{host}/{db}"),
            vec!["Sl4shSecret", "se/Sl4sh"],
        ),
        // Credentials the server refuses.
        (
            format!("mongodb://admin:Auth5ecret@{host}/{db}"),
            vec!["Auth5ecret"],
        ),
        // An unreachable host.
        (
            "mongodb://admin:Unre4chSecret@127.0.0.1:1/lms".to_string(),
            vec!["Unre4chSecret"],
        ),
    ];
    for (uri, secrets) in &cases {
        // From the environment, with debug logging (the driver's full errors) in both outputs.
        let mut from_env = t.migrate_cmd(&["-v", "up", "--connect-timeout", "1"]);
        from_env.env("MONGODB_URI", uri);
        let out = assert_hidden(&t, from_env, secrets, uri).await;
        assert_eq!(out.status.code(), Some(3), "{uri}: {}", text(&out));
        assert!(text(&out).contains("***"), "{uri}: {}", text(&out));

        // On the command line, with `status`.
        let mut from_flag = t.migrate_cmd(&["-v", "status", "--connect-timeout", "1", "--uri"]);
        from_flag.arg(uri);
        assert_hidden(&t, from_flag, secrets, uri).await;

        // From a `.env` file.
        let env = t.logs.path().join("secret.env");
        std::fs::write(&env, format!("MONGODB_URI={uri}\n")).unwrap();
        let mut from_file =
            t.migrate_cmd(&["-v", "status", "--connect-timeout", "1", "--env-file"]);
        from_file.arg(&env).env_remove("MONGODB_URI");
        assert_hidden(&t, from_file, secrets, uri).await;
    }
}

// ---------------------------------------------------------------------------------------------
// `.env` problems

#[tokio::test]
async fn malformed_lines_and_invalid_utf8_in_env_file_are_reported_by_line_number() {
    let t = fresh_db("dotenv_bad").await;
    let env = t.logs.path().join("bad.env");
    let mut content = format!("MONGODB_URI={}\n", t.uri).into_bytes();
    content.extend_from_slice(b"this line lacks an equals sign Hidd3nValue\n");
    content.extend_from_slice(b"MONGODB_DB=\xff\xfe\n");
    std::fs::write(&env, content).unwrap();
    let out = t
        .migrate_cmd(&["status"])
        .env("MIGRATE_ENV_FILE", &env)
        .env_remove("MONGODB_URI")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "good lines still count: {}",
        text(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("line 2 is malformed"), "{err}");
    assert!(err.contains("line 3 is not valid UTF-8"), "{err}");
    assert!(
        !err.contains("Hidd3nValue"),
        "a bad line is never quoted: {err}"
    );
    assert!(read(&t.log_file()).contains("line 2 is malformed"));
}

#[tokio::test]
async fn an_unreadable_env_file_is_reported_and_a_missing_default_one_is_not() {
    let t = fresh_db("dotenv_unreadable").await;
    // A directory cannot be read as a file, even by root.
    let dir = t.logs.path().join("a-directory.env");
    std::fs::create_dir(&dir).unwrap();
    let out = t
        .migrate_cmd(&["status"])
        .env("MIGRATE_ENV_FILE", &dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot read env file"),
        "{}",
        text(&out)
    );

    // The default `.env` (or MIGRATE_ENV_FILE) may simply not exist.
    let quiet = t.migrate(&["status"]);
    assert_eq!(quiet.status.code(), Some(0), "{}", text(&quiet));
    assert!(!stderr(&quiet).contains("env file"), "{}", text(&quiet));
}

#[tokio::test]
async fn a_missing_env_file_named_with_the_flag_is_exit_3() {
    let t = fresh_db("dotenv_missing").await;
    let missing = t.logs.path().join("no-such.env");
    let out = t
        .migrate_cmd(&["status", "--env-file"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!(
            "env file {} (named by --env-file) does not exist",
            missing.display()
        )),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Connection errors

#[tokio::test]
async fn server_selection_failure_says_what_was_tried_and_what_failed_in_two_lines_at_most() {
    let t = fresh_db("selection").await;
    let base = t.uri.split('?').next().unwrap();
    // The server answers, but no server suits this read preference: the driver's error is a
    // whole topology description.
    let unsuitable = format!("{base}?readPreference=secondary&readPreferenceTags=dc:nowhere");
    let refused = UNREACHABLE.to_string();
    for (uri, failed) in [(&unsuitable, "no server suits"), (&refused, "refused")] {
        let out = t
            .migrate_cmd(&["-v", "status", "--connect-timeout", "2"])
            .env("MONGODB_URI", uri)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{uri}: {}", text(&out));
        let errors: Vec<String> = stderr(&out)
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("DEBUG"))
            .map(str::to_string)
            .collect();
        let message = errors.join("\n");
        assert!(errors.len() <= 2, "{message}");
        assert!(
            message.len() < 400,
            "{} characters: {message}",
            message.len()
        );
        assert!(!message.contains("Topology"), "{message}");
        assert!(message.contains("cannot connect to"), "{message}");
        assert!(
            message.contains("127.0.0.1"),
            "names the host tried: {message}"
        );
        assert!(
            message.to_lowercase().contains(failed),
            "says what failed: {message}"
        );
        assert!(message.contains("Check"), "says what to check: {message}");
    }
    let log = read(&t.log_file());
    assert!(
        log.contains("DEBUG") && log.contains("Topology"),
        "the full driver error is in the log at debug level:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[tokio::test]
async fn commands_never_print_a_panic_at_shutdown() {
    let t = fresh_db("shutdown").await;
    users(&t, 5).await;
    assert!(t.migrate(&["up"]).status.success());
    // The driver's panic at teardown was a race (about one run in a thousand, more under load):
    // many short runs side by side make it show.
    let base = t.uri.split('?').next().unwrap().to_string();
    for round in 0..25 {
        let children: Vec<Child> = (0..8)
            .map(|i| {
                // One `up` at a time: side by side they would meet the lock.
                let mut cmd = match i {
                    0 => t.migrate_cmd(&["up"]),
                    1 | 5 => t.migrate_cmd(&["status", "--json"]),
                    2 | 6 => t.migrate_cmd(&["up", "--dry-run"]),
                    _ => t.migrate_cmd(&["status"]),
                };
                // Without directConnection the driver discovers the set: more background tasks.
                if i % 2 == 1 {
                    cmd.env("MONGODB_URI", &base);
                }
                cmd.stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                !stderr(&out).contains("panicked"),
                "round {round}: {}",
                text(&out)
            );
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resuming an interrupted rollback

impl Running {
    /// Ctrl-C.
    fn interrupt(&self) {
        let pid = self.0.as_ref().unwrap().id() as libc::pid_t;
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGINT) },
            0,
            "sending SIGINT"
        );
    }
}

async fn before_images(t: &TestDb) -> u64 {
    t.db.collection::<Document>("migrations_before_images")
        .count_documents(doc! { "migration": "003_migrate_existing_user_balances" })
        .await
        .unwrap()
}

#[tokio::test]
async fn an_interrupted_rollback_prints_the_one_command_that_finishes_it() {
    let t = fresh_db("rollback_int").await;
    let loaded = t.migrate(&["sample-data", "--users", "6000", "--withdrawals", "0"]);
    assert_eq!(loaded.status.code(), Some(0), "{}", text(&loaded));
    let first = t.migrate(&["up", "--to", "2"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let before = t.all("users").await;
    // Small batches: one before-image chunk each, so the restore takes many steps.
    let applied = t.migrate(&["up", "--batch-size", "25", "--no-progress"]);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied));
    let chunks = before_images(&t).await;
    assert!(chunks > 100, "{chunks} chunks");

    let child = t
        .migrate_cmd(&["rollback", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rollback = Running(Some(child));
    let deadline = Instant::now() + Duration::from_secs(60);
    while before_images(&t).await >= chunks {
        assert!(
            !rollback.has_exited(),
            "the rollback ended before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "the rollback never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rollback.interrupt();
    let out = rollback.output().await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(
        before_images(&t).await > 0,
        "interrupted part-way: {}",
        text(&out)
    );
    assert_eq!(
        t.status("003_migrate_existing_user_balances").await,
        "rolling_back"
    );
    assert!(
        !err.contains("--resume"),
        "no resume flag works for a rollback:\n{err}"
    );
    let hints: Vec<&str> = err.lines().filter(|l| l.contains("migrate ")).collect();
    assert_eq!(
        hints,
        ["finish the rollback with: migrate rollback --yes"],
        "{err}"
    );

    // The printed command is the one that works.
    let command = hints[0].split_once("migrate ").unwrap().1;
    let args: Vec<&str> = command.split_whitespace().collect();
    let finished = t.migrate(&args);
    assert_eq!(finished.status.code(), Some(0), "{}", text(&finished));
    assert_eq!(
        t.status("003_migrate_existing_user_balances").await,
        "rolled_back"
    );
    assert_eq!(before_images(&t).await, 0);
    assert_eq!(
        t.all("users").await,
        before,
        "every user is back as before 003"
    );
}
