//! Test support for migrations, in this repository and in any application that embeds its own:
//! a database of its own per test, on the server `MONGODB_URI` names or on a local
//! `secantusd-rs` the test process starts, and the migrations run against it.
//!
//! ```no_run
//! use mongo_migrate::testing::{fresh_db, small_batches};
//!
//! # async fn example() {
//! let t = fresh_db("lowercase_emails").await;
//! // ... insert documents into t.db ...
//! let migrations = mongo_migrate::embed_migrations!("examples/app_migrations");
//! t.runner(migrations, small_batches()).run_pending().await.unwrap();
//! assert_eq!(t.status("002_lowercase_emails").await, "completed");
//! # }
//! ```
//!
//! `MONGODB_URI` points the tests at any MongoDB 6+ server (each test gets a database named after
//! it, dropped first). Without it, the first test of a process starts one `secantusd-rs` (a
//! MongoDB-wire-compatible server; `SECANTUSD` names the binary, else cargo's bin directory or
//! `PATH`) on a free port with a temporary directory, killed when the process ends.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::{Client, Database};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::engine::registry::Registered;
use crate::{MigrationRunner, RunOptions};

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
    let hosts = rest.split('/').next().unwrap_or_default();
    Server {
        base: format!("{scheme}://{hosts}"),
        query,
    }
}

/// The test server binary: `SECANTUSD`, else the one `cargo install` put in cargo's bin, else
/// `secantusd-rs` on `PATH`.
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
        // SAFETY: prctl only asks the kernel to kill the child when this thread's process ends.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start secantusd-rs ({e}); install it (cargo install secantus-mdb) or set MONGODB_URI")
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("secantusd-rs exited before listening")
                .expect("secantusd-rs output");
            if let Some(addr) = line.strip_prefix("secantusd-rs listening on ") {
                break addr
                    .rsplit(':')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
            }
        };
        let _ = tx.send(port);
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
pub fn small_batches() -> RunOptions {
    RunOptions {
        batch_size: 7,
        progress: false,
        ..RunOptions::default()
    }
}

/// A database of its own for one test.
pub struct TestDb {
    pub client: Client,
    pub db: Database,
    pub name: String,
    /// Connection string naming this database (what a CLI gets as `MONGODB_URI` or `--uri`).
    pub uri: String,
}

/// Every client [`fresh_db`] made, so a program that ends its runtime itself (a benchmark) can
/// shut them down first: the driver panics in its background tasks if the runtime goes first.
static CLIENTS: std::sync::Mutex<Vec<Client>> = std::sync::Mutex::new(Vec::new());

/// Shuts down every client made by [`fresh_db`].
pub async fn shutdown_clients() {
    let clients = std::mem::take(&mut *CLIENTS.lock().unwrap_or_else(|e| e.into_inner()));
    for client in clients {
        client.shutdown().await;
    }
}

/// A fresh, empty database named after `tag` (and this process, and a counter).
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
    }
}

impl TestDb {
    /// A runner over `migrations` on this database.
    pub fn runner(&self, migrations: Vec<Registered>, options: RunOptions) -> MigrationRunner {
        MigrationRunner::with_migrations(self.db.clone(), migrations).with_options(options)
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

    /// The checkpoint on `name`'s tracking record, if any.
    pub async fn checkpoint(&self, name: &str) -> Option<Document> {
        self.record(name)
            .await
            .and_then(|r| r.get_document("checkpoint").ok().cloned())
    }

    /// The tracking record of `name`.
    pub async fn record(&self, name: &str) -> Option<Document> {
        self.db
            .collection::<Document>(crate::engine::store::TRACKING_COLLECTION)
            .find_one(doc! { "name": name })
            .await
            .expect("read the tracking collection")
    }
}

/// Every document of `coll`, sorted by `_id`.
pub async fn sorted_by_id(coll: &mongodb::Collection<Document>) -> Vec<Document> {
    coll.find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .expect("read the collection")
        .try_collect()
        .await
        .expect("read the collection")
}

/// The BSON bytes of each document: comparing them compares values and types exactly (`1`,
/// `1.0` and `1i64` differ), and field order.
pub fn all_bytes(docs: &[Document]) -> Vec<Vec<u8>> {
    docs.iter()
        .map(|d| mongodb::bson::to_vec(d).expect("a document encodes"))
        .collect()
}
