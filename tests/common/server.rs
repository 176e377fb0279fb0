//! The test server and a database of its own per test.
//!
//! `MONGODB_URI` points the tests at any MongoDB 6+ server. Without it, each test binary starts
//! one `secantusd-rs` (installed by `scripts/install-test-server.sh`) on a free port with a
//! temporary directory; the server is killed when the test process ends.

use mongodb::bson::{doc, Document};
use mongodb::{Client, Database};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::assert::sorted_by_id;

/// `scheme://hosts` and `?options` of the server, without a database.
struct Server {
    base: String,
    query: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => split_uri(&uri),
        _ => start_secantus(),
    })
}

fn split_uri(uri: &str) -> Server {
    let (scheme, rest) = uri.split_once("://").expect("MONGODB_URI has a scheme");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let hosts = rest.split('/').next().unwrap();
    Server {
        base: format!("{scheme}://{hosts}"),
        query,
    }
}

/// The test server binary: `SECANTUSD`, else the one the install script put in cargo's bin.
pub fn secantus_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SECANTUSD") {
        return PathBuf::from(path);
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    let installed = home.join("bin/secantusd-rs");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("secantusd-rs")
    }
}

/// The data directory of this process's server: `<tmp>/mongo-migrate-test-servers/<pid>`.
///
/// The server outlives every destructor (it dies with the process), so its directory cannot be
/// removed by its owner; each test process removes those of processes that are gone instead,
/// so the directories of earlier runs do not pile up on disk.
fn server_dir() -> PathBuf {
    let root = std::env::temp_dir().join("mongo-migrate-test-servers");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let gone = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                // SAFETY: signal 0 only checks that the process exists.
                .is_some_and(|pid| {
                    let rc = unsafe { libc::kill(pid, 0) };
                    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
                });
            if gone {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a data directory for the test server");
    dir
}

/// Starts the server from a thread that never ends, so the kernel's parent-death signal (tied
/// to the spawning thread) fires only when the whole test process exits.
fn start_secantus() -> Server {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let dir = server_dir();
        // A small cache makes one large transaction (an index build over ~100k documents) roll
        // back and retry forever; SECANTUS_CACHE_SIZE raises it for the benchmarks.
        let cache = std::env::var("SECANTUS_CACHE_SIZE").unwrap_or_else(|_| "1G".into());
        let mut cmd = Command::new(secantus_binary());
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--cache-size",
            &cache,
            "--log-level",
            "WARNING",
            "--storage-path",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start secantusd-rs ({e}); run scripts/install-test-server.sh or set MONGODB_URI")
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("secantusd-rs exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("secantusd-rs listening on ") {
                break addr.rsplit(':').next().unwrap().trim().to_string();
            }
        };
        tx.send(port).unwrap();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        // This thread outlives every test: it waits on the server until the process exits.
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("secantusd-rs did not start within 60s");
    Server {
        base: format!("mongodb://127.0.0.1:{port}"),
        query: "?directConnection=true".into(),
    }
}

/// Small batches, so a handful of documents spans several batches and `_id` type brackets.
pub fn small_batches() -> mongo_migrate::RunOptions {
    mongo_migrate::RunOptions {
        batch_size: 7,
        progress: false,
        ..mongo_migrate::RunOptions::default()
    }
}

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

/// A database of its own for one test.
pub struct TestDb {
    pub client: Client,
    pub db: Database,
    pub name: String,
    /// Connection string naming this database (what the CLI gets as MONGODB_URI).
    pub uri: String,
    /// A log directory of its own.
    pub logs: tempfile::TempDir,
}

/// Every client `fresh_db` made, so a program that ends its runtime itself (the benchmark) can
/// shut them down first: the driver panics in its background tasks if the runtime goes first.
static CLIENTS: std::sync::Mutex<Vec<Client>> = std::sync::Mutex::new(Vec::new());

/// Shuts down every client made by [`fresh_db`].
pub async fn shutdown_clients() {
    let clients = std::mem::take(&mut *CLIENTS.lock().unwrap_or_else(|e| e.into_inner()));
    for client in clients {
        client.shutdown().await;
    }
}

/// A fresh, empty database named after `tag`.
pub async fn fresh_db(tag: &str) -> TestDb {
    let server = server();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(30)
        .collect();
    let name = format!("t{}_{n}_{tag}", std::process::id());
    let uri = format!("{}/{}{}", server.base, name, server.query);
    let client = Client::with_uri_str(&uri)
        .await
        .expect("connect to the test server");
    let db = client.database(&name);
    db.drop().await.expect("drop the test database");
    CLIENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(client.clone());
    TestDb {
        client,
        db,
        name,
        uri,
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

    /// Every document of `collection`, sorted by `_id`.
    pub async fn all(&self, collection: &str) -> Vec<Document> {
        sorted_by_id(&self.db.collection(collection)).await
    }

    /// The `status` of `name`'s tracking record (which must exist).
    pub async fn status(&self, name: &str) -> String {
        let record = self.record(name).await.expect("a tracking record");
        record.get_str("status").expect("a status").to_string()
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

    /// The checkpoint on `name`'s tracking record, if any.
    pub async fn checkpoint(&self, name: &str) -> Option<Document> {
        self.record(name)
            .await
            .and_then(|r| r.get_document("checkpoint").ok().cloned())
    }

    /// The tracking record of `name`.
    pub async fn record(&self, name: &str) -> Option<Document> {
        self.db
            .collection::<Document>("migrations")
            .find_one(doc! { "name": name })
            .await
            .unwrap()
    }
}
