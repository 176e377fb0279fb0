//! `examples/app_startup.rs`, a service migrating its database at start-up with its own
//! migrations compiled in by `embed_migrations!`: built and run as a program, several instances
//! at once, the way a deployment starts them.

mod common;

use common::{fresh_db, text, TestDb};
use mongodb::bson::{doc, Document};
use std::path::PathBuf;
use std::process::{Command, Output};

/// Builds the example (a no-op when `cargo test --all-targets` already did) and returns it.
fn example() -> PathBuf {
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
        .args(["build", "--quiet", "--example", "app_startup"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build --example app_startup");
    assert!(status.success(), "cargo build --example app_startup failed");
    profile_dir.join("examples/app_startup")
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
    let program = tokio::task::spawn_blocking(example).await.unwrap();
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
