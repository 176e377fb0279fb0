//! The test server and a database of its own per test: [`mongo_migrate::testing`], which
//! applications' tests use too, with a log directory per test and this build's `migrate`.
//!
//! `MONGODB_URI` points the tests at any MongoDB 6+ server. Without it, each test binary starts
//! one `secantusd-rs` (installed by `scripts/install-test-server.sh`) on a free port with a
//! temporary directory; the server is killed when the test process ends.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub use mongo_migrate::testing::{secantus_binary, shutdown_clients, small_batches};

/// A runner over the compiled migrations whose numbers `keep` accepts.
pub fn runner_for(
    t: &TestDb,
    keep: impl Fn(u32) -> bool,
    options: mongo_migrate::RunOptions,
) -> mongo_migrate::MigrationRunner {
    let chosen = mongo_migrate::registry::compiled()
        .into_iter()
        .filter(|m| keep(m.number))
        .collect();
    mongo_migrate::MigrationRunner::with_migrations(t.db.clone(), chosen).with_options(options)
}

/// A database of its own for one test (its fields and readers are
/// [`mongo_migrate::testing::TestDb`]'s), with a log directory of its own.
pub struct TestDb {
    inner: mongo_migrate::testing::TestDb,
    /// A log directory of its own.
    pub logs: tempfile::TempDir,
}

impl std::ops::Deref for TestDb {
    type Target = mongo_migrate::testing::TestDb;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// A fresh, empty database named after `tag`.
pub async fn fresh_db(tag: &str) -> TestDb {
    TestDb {
        inner: mongo_migrate::testing::fresh_db(tag).await,
        logs: tempfile::tempdir().unwrap(),
    }
}

impl TestDb {
    /// Runs the `migrate` binary against this database and waits for it.
    pub fn migrate(&self, args: &[&str]) -> Output {
        self.migrate_cmd(args).output().expect("run migrate")
    }

    /// The `migrate` command, configured for this database, not yet started.
    pub fn migrate_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrate"));
        cmd.args(args)
            .env("MONGODB_URI", &self.uri)
            .env("MIGRATE_LOG_DIR", self.logs.path())
            .env("MIGRATE_ENV_FILE", self.logs.path().join("no.env"))
            .env_remove("MONGODB_DB")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// The log file of CLI runs.
    pub fn log_file(&self) -> PathBuf {
        self.logs.path().join("migration.log")
    }

    /// Asserts that `err` is the failure of migration `name`, its reason naming every one of
    /// `reason_has`, and that `name`'s record is `failed` with an error naming `error_has`.
    pub async fn assert_failed(
        &self,
        err: &mongo_migrate::Error,
        name: &str,
        reason_has: &[&str],
        error_has: &str,
    ) {
        let mongo_migrate::Error::Migration {
            name: failed,
            reason,
        } = err
        else {
            panic!("expected a migration failure, got {err}");
        };
        assert_eq!(failed, name);
        assert!(reason_has.iter().all(|r| reason.contains(r)), "{reason}");
        let record = self.record(name).await.expect("a tracking record");
        assert_eq!(record.get_str("status").unwrap(), "failed");
        assert!(
            record.get_str("error").unwrap().contains(error_has),
            "{record}"
        );
    }
}
