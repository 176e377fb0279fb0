//! Writing migrations: the short forms (`FieldBackfill`, `PerDocument`) do what the long ones do,
//! a migration whose source defines `down` can be rolled back, and `migrate new` writes the next
//! migration and refuses what it must.
//!
//! `tests/authoring/` holds 001 and 003's core rewritten with the short forms; each test runs the
//! original and the rewrite on identical data and compares the documents byte for byte.

mod common;

#[path = "authoring/user_balances.rs"]
mod user_balances;
#[path = "authoring/withdrawal_fields.rs"]
mod withdrawal_fields;

use async_trait::async_trait;
use common::{all_bytes, fresh_db, text, TestDb, M001, M003};
use mongo_migrate::backfill::{CatchUpMode, FieldBackfill};
use mongo_migrate::sample::{self, SampleSpec};
use mongo_migrate::{
    registry, Context, Migration, MigrationRunner, Outcome, Registered, RunOptions,
};
use mongodb::bson::{doc, Document};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn one(name: &'static str, migration: Arc<dyn Migration>) -> Vec<Registered> {
    vec![Registered {
        number: 1,
        name,
        checksum: "rewrite",
        legacy: &[],
        doc: "",
        migration,
    }]
}

fn compiled(name: &str) -> Vec<Registered> {
    registry::compiled()
        .into_iter()
        .filter(|m| m.name == name)
        .collect()
}

/// Two databases holding the same users: sample data with invalid earnings and mixed `_id`s, plus
/// users that already hold some withdrawal fields, some of them not numbers.
async fn twin_databases(tag: &str) -> (TestDb, TestDb) {
    let spec = SampleSpec {
        users: 400,
        withdrawals: 0,
        seed: 7,
        invalid_earnings: 20,
        mixed_ids: true,
    };
    let extra = vec![
        doc! { "_id": "held", "affiliateEarnings": 10, "withdrawableBalance": 3.5 },
        doc! { "_id": "zeroes", "affiliateEarnings": 12.34, "totalWithdrawn": 0, "pendingWithdrawals": 0 },
        doc! { "_id": "string", "affiliateEarnings": 8, "totalWithdrawn": "0" },
    ];
    let a = fresh_db(&format!("{tag}_original")).await;
    let b = fresh_db(&format!("{tag}_rewrite")).await;
    for t in [&a, &b] {
        sample::load(&t.db, &spec).await.unwrap();
        t.db.collection::<Document>("users")
            .insert_many(extra.clone())
            .await
            .unwrap();
    }
    (a, b)
}

fn runner(t: &TestDb, migrations: Vec<Registered>) -> MigrationRunner {
    MigrationRunner::with_migrations(t.db.clone(), migrations).with_options(RunOptions {
        batch_size: 50,
        progress: false,
        ..RunOptions::default()
    })
}

/// Runs `original` on `a` and `rewrite` on `b`, up then rollback, comparing the users after each.
async fn same_up_and_down(
    a: &TestDb,
    original: Vec<Registered>,
    b: &TestDb,
    rewrite: Vec<Registered>,
) {
    let before = all_bytes(&a.all("users").await);
    let (original, rewrite) = (runner(a, original), runner(b, rewrite));
    original.run_pending().await.unwrap();
    rewrite.run_pending().await.unwrap();
    let after = all_bytes(&a.all("users").await);
    assert_ne!(after, before, "the migration changed users");
    assert_eq!(
        all_bytes(&b.all("users").await),
        after,
        "same users after up"
    );

    original.rollback_last().await.unwrap();
    rewrite.rollback_last().await.unwrap();
    let restored = all_bytes(&a.all("users").await);
    assert_eq!(
        all_bytes(&b.all("users").await),
        restored,
        "same users after down"
    );
}

#[tokio::test]
async fn a_field_backfill_written_with_the_builder_does_what_001_does() {
    let (a, b) = twin_databases("fields").await;
    let rewrite = one("001_rewrite", Arc::new(withdrawal_fields::migration()));
    same_up_and_down(&a, compiled(M001), &b, rewrite).await;
}

#[tokio::test]
async fn a_per_document_transform_written_with_the_builder_does_what_003_does() {
    let (a, b) = twin_databases("balances").await;
    let rewrite = one("003_rewrite", Arc::new(user_balances::migration()));
    let before = all_bytes(&b.all("users").await);
    same_up_and_down(&a, compiled(M003), &b, rewrite).await;
    // Both restore from before-images: the users are back exactly as they were.
    assert_eq!(all_bytes(&b.all("users").await), before);
}

#[tokio::test]
async fn a_field_backfill_only_touches_its_filter_and_down_keeps_values_changed_since() {
    let t = fresh_db("fields_only").await;
    let users = t.db.collection::<Document>("users");
    users
        .insert_many(vec![
            doc! { "_id": 1, "kind": "student", "name": "Ada" },
            doc! { "_id": 2, "kind": "student", "name": "Bob" },
            doc! { "_id": 3, "kind": "student" },
            doc! { "_id": 4, "kind": "staff", "name": "Cy" },
        ])
        .await
        .unwrap();
    let migration = FieldBackfill::new("users", "display names and tiers of students")
        .only(doc! { "kind": "student" })
        .compute("displayName", doc! { "$ifNull": ["$name", "anonymous"] })
        .set("tier", "$free"); // a constant, even one that looks like a field path
    let runner = runner(&t, one("001_names", Arc::new(migration)));

    runner.run_pending().await.unwrap();
    assert_eq!(
        t.all("users").await,
        vec![
            doc! { "_id": 1, "kind": "student", "name": "Ada", "displayName": "Ada", "tier": "$free" },
            doc! { "_id": 2, "kind": "student", "name": "Bob", "displayName": "Bob", "tier": "$free" },
            doc! { "_id": 3, "kind": "student", "displayName": "anonymous", "tier": "$free" },
            doc! { "_id": 4, "kind": "staff", "name": "Cy" },
        ]
    );

    // Bob renames himself: his displayName no longer holds what `up` computes, so it is his.
    users
        .update_one(doc! { "_id": 2 }, doc! { "$set": { "name": "Robert" } })
        .await
        .unwrap();
    let down = runner.rollback_last().await.unwrap();
    assert_eq!(
        down.outcome.result,
        doc! { "reverted": 2_i64, "leftAlone": 1_i64 }
    );
    assert!(
        down.outcome.message.contains("--force"),
        "{}",
        down.outcome.message
    );
    assert_eq!(
        t.all("users").await,
        vec![
            doc! { "_id": 1, "kind": "student", "name": "Ada" },
            doc! { "_id": 2, "kind": "student", "name": "Robert", "displayName": "Bob", "tier": "$free" },
            doc! { "_id": 3, "kind": "student" },
            doc! { "_id": 4, "kind": "staff", "name": "Cy" },
        ]
    );
}

#[tokio::test]
async fn a_field_backfill_fails_its_post_condition_when_a_document_still_lacks_a_field() {
    // An expression that evaluates to $$REMOVE sets nothing: `up` completes, the document still
    // lacks the field, and the post-condition must refuse to record the migration completed.
    let t = fresh_db("fields_verify").await;
    t.db.collection::<Document>("users")
        .insert_many(vec![doc! { "_id": 1, "name": "Ada" }])
        .await
        .unwrap();
    let migration = FieldBackfill::new("users", "a field the server cannot set")
        .compute("score", doc! { "$ifNull": ["$missing", "$$REMOVE"] });
    let options = RunOptions {
        catch_up: CatchUpMode::Off, // no rounds after the scan: the post-condition sees it first
        progress: false,
        ..RunOptions::default()
    };
    let err =
        MigrationRunner::with_migrations(t.db.clone(), one("001_unsettable", Arc::new(migration)))
            .with_options(options)
            .run_pending()
            .await
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("post-condition not met")
            && err.contains("1 document(s) of users still lack a field"),
        "{err}"
    );
}

#[tokio::test]
async fn a_field_backfill_whose_expression_fails_names_the_first_failing_id_and_the_field() {
    let t = fresh_db("fields_failing").await;
    let users: Vec<Document> = (1..=300)
        .map(|i| match i {
            // Two documents the expression cannot compute for: a string fee.
            120 | 250 => doc! { "_id": i, "amount": 500, "fee": "1.50" },
            _ => doc! { "_id": i, "amount": 500, "fee": i % 7 },
        })
        .collect();
    t.db.collection::<Document>("users")
        .insert_many(users)
        .await
        .unwrap();
    let migration = FieldBackfill::new("users", "net amounts")
        .compute("net", doc! { "$subtract": ["$amount", "$fee"] });
    let err = runner(&t, one("001_net_amounts", Arc::new(migration)))
        .run_pending()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("001_net_amounts"), "{err}");
    assert!(err.contains("field net"), "{err}");
    assert!(err.contains("_id 120"), "{err}");
    assert!(err.contains(".only("), "{err}");
    assert!(err.contains("type"), "{err}");
    assert!(!err.contains("statement"), "{err}");
}

/// A hand-written migration with a `down` and no `reversible()` override.
struct DownOnly;

#[async_trait]
impl Migration for DownOnly {
    fn description(&self) -> &'static str {
        "marks a document"
    }
    async fn up(&self, ctx: &Context) -> mongo_migrate::Result<Outcome> {
        let marks = ctx.db().collection::<Document>("marks");
        marks.insert_one(doc! { "_id": 1 }).await.unwrap();
        Ok(Outcome::ok("marked", doc! {}))
    }
    async fn down(&self, ctx: &Context) -> mongo_migrate::Result<Outcome> {
        let marks = ctx.db().collection::<Document>("marks");
        marks.delete_one(doc! { "_id": 1 }).await.unwrap();
        Ok(Outcome::ok("unmarked", doc! {}))
    }
}

#[tokio::test]
async fn a_migration_registered_as_defining_down_is_rolled_back_without_saying_it_is_reversible() {
    let t = fresh_db("down_only").await;
    // What build.rs and embed_migrations! register for a source that defines `fn down`.
    let runner = runner(&t, one("001_down_only", registry::with_down(DownOnly)));
    runner.run_pending().await.unwrap();
    assert_eq!(t.all("marks").await.len(), 1);

    let down = runner.rollback_last().await.unwrap();

    assert_eq!(down.outcome.message, "unmarked");
    assert!(t.all("marks").await.is_empty());
    assert_eq!(t.status("001_down_only").await, "rolled_back");
}

/// A repository root with migrations 001 and 003 (002 free) and no tests directory yet.
fn scratch_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    for name in ["001_first", "003_third"] {
        std::fs::write(dir.path().join(format!("migrations/{name}.rs")), "").unwrap();
    }
    dir
}

fn migrate_new(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_migrate"))
        .arg("new")
        .args(args)
        .arg("--dir")
        .arg(dir)
        // `new` needs no database: a URI that would fail to connect proves it never tries.
        .env("MONGODB_URI", "mongodb://127.0.0.1:1/none")
        .output()
        .unwrap()
}

#[test]
fn migrate_new_takes_the_next_number_and_says_what_to_edit() {
    let repo = scratch_repo();
    let out = migrate_new(repo.path(), &["backfill_display_names"]);
    assert!(out.status.success(), "{}", text(&out));

    let migration = repo.path().join("migrations/004_backfill_display_names.rs");
    let test = repo
        .path()
        .join("tests/migrations/004_backfill_display_names.rs");
    let shown = text(&out);
    for expected in [
        format!("created {}", migration.display()),
        format!("created {}", test.display()),
        "cargo test backfill_display_names".to_string(),
        "migrate up".to_string(),
    ] {
        assert!(shown.contains(&expected), "{expected:?} in {shown}");
    }
    let source = std::fs::read_to_string(&migration).unwrap();
    assert!(
        source.contains("FieldBackfill::new(COLLECTION, DESCRIPTION)"),
        "{source}"
    );
    assert!(source.contains("pub const FIELD: &str = \"backfillDisplayNames\";"));
    let tests = std::fs::read_to_string(&test).unwrap();
    assert!(tests.contains("use mongo_migrate::registry::generated::m004::{COLLECTION, FIELD};"));
    // Every generated test is selected by `cargo test backfill_display_names`.
    let lines: Vec<&str> = tests.lines().collect();
    let names: Vec<&str> = lines
        .windows(2)
        .filter(|w| w[0] == "#[tokio::test]")
        .filter_map(|w| w[1].strip_prefix("async fn "))
        .collect();
    assert_eq!(names.len(), 3, "{tests}");
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("backfill_display_names_")),
        "{names:?}"
    );
}

#[test]
fn migrate_new_takes_a_free_number_when_asked_and_refuses_a_taken_one() {
    let repo = scratch_repo();
    let out = migrate_new(repo.path(), &["second", "--number", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(repo.path().join("migrations/002_second.rs").is_file());

    let out = migrate_new(repo.path(), &["another", "--number", "3"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("number 003 is taken by 003_third"),
        "{}",
        text(&out)
    );
    assert!(!repo.path().join("migrations/003_another.rs").exists());
}

#[test]
fn migrate_new_refuses_a_name_that_is_not_snake_case_or_already_used() {
    let repo = scratch_repo();
    for bad in [
        "BackfillNames",
        "backfill-names",
        "2fa_codes",
        "004_names",
        "a__b",
    ] {
        let out = migrate_new(repo.path(), &[bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(text(&out).contains("snake_case"), "{bad}: {}", text(&out));
    }
    let out = migrate_new(repo.path(), &["first"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("a migration named first already exists"));
    // Nothing was written by any refused call.
    let written: Vec<_> = std::fs::read_dir(repo.path().join("migrations"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    assert!(!repo.path().join("tests").exists());
}

#[test]
fn migrate_new_without_a_migrations_directory_says_where_to_run_it() {
    let empty = tempfile::tempdir().unwrap();
    let out = migrate_new(empty.path(), &["names"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("run `migrate new` from the repository root, or pass --dir"));
}
