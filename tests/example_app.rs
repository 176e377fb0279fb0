//! `examples/app_startup.rs`, a service migrating its database at start-up with its own
//! migrations compiled in by `embed_migrations!`: built and run as a program, several instances
//! at once, the way a deployment starts them; and `examples/app_cli.rs`, the operator CLI over
//! those migrations, driven as an operator drives `migrate`.

mod common;

use common::{fresh_db, text, TestDb};
use mongodb::bson::{doc, Document};
use std::path::PathBuf;
use std::process::{Command, Output};

/// Builds the example `name` (a no-op when `cargo test --all-targets` already did) and returns
/// it.
fn example(name: &str) -> PathBuf {
    // This test's binary is target/<profile>/deps/example_app-<hash>.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let mut cargo = Command::new(env!("CARGO"));
    // What cargo sets for this test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, OUT_DIR, ...) would reach
    // the build scripts of dependencies that watch those names (ring's), which would then rebuild
    // them here and again in the next plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_for_tests = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_BIN_",
            "CARGO_CRATE_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || [
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref());
        if set_for_tests {
            cargo.env_remove(key.as_ref());
        }
    }
    let status = cargo
        .args(["build", "--quiet", "--example", name])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build --example");
    assert!(status.success(), "cargo build --example {name} failed");
    profile_dir.join("examples").join(name)
}

fn start(program: &PathBuf, t: &TestDb, args: &[&str]) -> std::process::Child {
    Command::new(program)
        .args(args)
        .env("MONGODB_URI", &t.uri)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the example")
}

fn finish(child: std::process::Child) -> Output {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the example failed:\n{}", text(&out));
    out
}

async fn accounts(t: &TestDb) -> Vec<Document> {
    t.all("accounts").await
}

#[tokio::test]
async fn instances_starting_together_apply_the_apps_migrations_once_and_roll_back_its_last() {
    let program = tokio::task::spawn_blocking(|| example("app_startup"))
        .await
        .unwrap();
    let t = fresh_db("example_app").await;
    t.db.collection::<Document>("accounts")
        .insert_many(vec![
            doc! { "_id": 1, "email": "Ada@Example.com", "name": "Ada" },
            doc! { "_id": 2, "email": "bob@example.com", "tier": "pro" },
        ])
        .await
        .unwrap();

    // Three instances at once: one migrates, the others wait on the lock, then find nothing.
    let children: Vec<_> = (0..3).map(|_| start(&program, &t, &[])).collect();
    let outputs: Vec<Output> =
        tokio::task::spawn_blocking(move || children.into_iter().map(finish).collect())
            .await
            .unwrap();
    let all: String = outputs.iter().map(text).collect();
    assert_eq!(
        all.matches("applied 001_add_account_tiers").count(),
        1,
        "{all}"
    );
    assert_eq!(
        all.matches("applied 002_lowercase_emails").count(),
        1,
        "{all}"
    );
    for out in &outputs {
        let shown = text(out);
        assert!(shown.contains("001_add_account_tiers completed"), "{shown}");
        assert!(shown.contains("002_lowercase_emails completed"), "{shown}");
    }
    assert_eq!(
        accounts(&t).await,
        vec![
            doc! { "_id": 1, "email": "ada@example.com", "name": "Ada", "tier": "free", "displayName": "Ada" },
            doc! { "_id": 2, "email": "bob@example.com", "tier": "pro", "displayName": "bob@example.com" },
        ]
    );
    // The records hold the checksums embed_migrations! took: those of the files' tokens.
    let record = t.record("002_lowercase_emails").await.unwrap();
    let source = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples/app_migrations/002_lowercase_emails.rs"),
    )
    .unwrap();
    assert_eq!(
        record.get_str("checksum").unwrap(),
        mongo_migrate::engine::sources::checksum(&source)
    );

    // 002 defines `down` without overriding `reversible()`: it is rolled back all the same.
    let out = tokio::task::spawn_blocking({
        let child = start(&program, &t, &["rollback"]);
        move || finish(child)
    })
    .await
    .unwrap();
    assert!(
        text(&out).contains("rolled back 002_lowercase_emails: restored 1 email(s)"),
        "{}",
        text(&out)
    );
    assert_eq!(
        accounts(&t).await[0].get_str("email").unwrap(),
        "Ada@Example.com"
    );
}

/// Runs the application's CLI (`examples/app_cli`) on `t` with `args`, to its end.
async fn app_cli(program: &PathBuf, t: &TestDb, args: &[&str]) -> Output {
    let child = app_cli_start(program, t, args);
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

fn app_cli_start(program: &PathBuf, t: &TestDb, args: &[&str]) -> std::process::Child {
    let logs = t.log_file();
    Command::new(program)
        .args(["--uri", &t.uri, "--log-dir"])
        .arg(logs.parent().unwrap())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the example")
}

#[tokio::test]
async fn an_application_gets_the_whole_operator_cli_over_its_own_migrations() {
    let program = tokio::task::spawn_blocking(|| example("app_cli"))
        .await
        .unwrap();
    let t = fresh_db("app_cli").await;
    let accounts: Vec<Document> = (0..6000)
        .map(|i| doc! { "_id": i, "email": format!("User{i}@Example.com") })
        .collect();
    t.db.collection::<Document>("accounts")
        .insert_many(accounts)
        .await
        .unwrap();

    // Its migrations, not this repository's.
    let out = app_cli(&program, &t, &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("001_add_account_tiers"), "{shown}");
    assert!(shown.contains("002_lowercase_emails"), "{shown}");
    assert!(!shown.contains("withdrawal"), "{shown}");
    let out = app_cli(&program, &t, &["up", "--to", "3"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("this build has 001, 002"),
        "{}",
        text(&out)
    );

    // A throttled run, paused from a second process, then resumed.
    let up = app_cli_start(
        &program,
        &t,
        &["up", "--max-docs-per-sec", "1500", "--no-progress"],
    );
    let started = std::time::Instant::now();
    while t.checkpoint("002_lowercase_emails").await.is_none() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "002 never checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = app_cli(&program, &t, &["pause"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("paused"), "{}", text(&out));
    let up = tokio::task::spawn_blocking(move || up.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(up.status.code(), Some(130), "{}", text(&up));
    let lowered =
        t.db.collection::<Document>("accounts")
            .count_documents(doc! { "email": { "$regex": "^user" } })
            .await
            .unwrap();
    assert!(lowered < 6000, "the pause came after the run's end");
    let out = app_cli(&program, &t, &["up", "--resume", "--no-progress"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(t.status("002_lowercase_emails").await, "completed");
    let all = t.all("accounts").await;
    assert!(all
        .iter()
        .all(|a| a.get_str("email").unwrap().starts_with("user")));

    // Rolled back through the same binary: every email as it was.
    let out = app_cli(&program, &t, &["rollback", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = t.all("accounts").await;
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, a)| a.get_str("email").unwrap() == format!("User{i}@Example.com")),
        "{:?}",
        all.first()
    );
    assert_eq!(t.status("002_lowercase_emails").await, "rolled_back");
    t.db.drop().await.unwrap();
}
