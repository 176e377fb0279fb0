//! Losing the database mid-run: the server is killed during a backfill and restarted a few
//! seconds later on the same port and data. The run retries through the outage and ends with
//! exactly the data of an uninterrupted run. This binary runs a server of its own, because
//! killing it would break other tests sharing one.

mod common;

use mongo_migrate::money::{classify, Earnings};
use mongo_migrate::sample::{self, SampleSpec};
use mongodb::bson::{doc, Document};
use mongodb::Client;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the server; a restart may find the port still held for a moment, so it retries.
fn start_server(port: u16, dir: &Path) -> Child {
    for _ in 0..40 {
        let mut child = Command::new(common::secantus_binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--cache-size",
                "1G",
                "--log-level",
                "WARNING",
                "--storage-path",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start secantusd-rs (scripts/install-test-server.sh installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        if lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("listening on"))
        {
            std::thread::spawn(move || for _ in lines {});
            return child;
        }
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("secantusd-rs did not start on port {port}");
}

async fn all_users(client: &Client, db: &str) -> Vec<Document> {
    common::sorted_by_id(&client.database(db).collection("users")).await
}

fn migrate(uri: &str, logs: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrate"));
    cmd.args(args)
        .env("MONGODB_URI", uri)
        .env("MIGRATE_LOG_DIR", logs)
        .env("MIGRATE_ENV_FILE", logs.join("no.env"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

#[tokio::test]
async fn run_survives_the_server_restarting_mid_backfill() {
    // External servers cannot be restarted from here.
    if std::env::var("MONGODB_URI").is_ok_and(|u| !u.is_empty()) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start_server(port, data.path());
    let base = format!("mongodb://127.0.0.1:{port}");
    let client = Client::with_uri_str(format!("{base}/?directConnection=true"))
        .await
        .unwrap();
    let spec = SampleSpec {
        users: 30_000,
        withdrawals: 0,
        seed: 11,
        invalid_earnings: 30,
        mixed_ids: false,
    };
    for db in ["outage", "reference"] {
        sample::load(&client.database(db), &spec).await.unwrap();
    }

    let uri = format!("{base}/outage?directConnection=true");
    let mut run = migrate(
        &uri,
        logs.path(),
        &["up", "--max-docs-per-sec", "5000", "--no-progress"],
    )
    .spawn()
    .unwrap();
    // Wait until 003 is well under way, then take the server away.
    let records = client
        .database("outage")
        .collection::<Document>("migrations");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scanned = records
            .find_one(doc! { "name": "003_migrate_existing_user_balances" })
            .await
            .unwrap()
            .and_then(|r| {
                r.get_document("checkpoint")
                    .ok()
                    .and_then(|c| c.get_i64("scanned").ok())
            })
            .unwrap_or(0);
        if scanned >= 8_000 {
            break;
        }
        assert!(Instant::now() < deadline, "003 never got going");
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut server = start_server(port, data.path());

    let status = run.wait().unwrap();
    let log = std::fs::read_to_string(logs.path().join("migration.log")).unwrap_or_default();
    assert!(
        status.success(),
        "the run did not survive the outage ({status}):\n{log}"
    );
    // The outage surfaces as a retried operation or a lost scan cursor reopened at the position.
    assert!(
        log.contains("retrying") || log.contains("reopening"),
        "the outage went unnoticed:\n{log}"
    );

    let reference = format!("{base}/reference?directConnection=true");
    assert!(migrate(&reference, logs.path(), &["up", "--no-progress"])
        .status()
        .unwrap()
        .success());
    let (got, want) = (
        all_users(&client, "outage").await,
        all_users(&client, "reference").await,
    );
    assert_eq!(got.len(), want.len());
    // Raw bytes: a NaN amount never equals itself as a Document value.
    let bytes = |d: &Document| mongodb::bson::to_vec(d).unwrap();
    let differing: Vec<(&Document, &Document)> = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| bytes(a) != bytes(b))
        .collect();
    assert!(
        differing.is_empty(),
        "{} users differ from an uninterrupted run, e.g. {:?}",
        differing.len(),
        differing.iter().take(3).collect::<Vec<_>>()
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The withdrawal fields of a user.
fn withdrawal_fields(user: &Document) -> Document {
    let mut fields = Document::new();
    for f in common::FIELDS {
        if let Some(v) = user.get(f) {
            fields.insert(f, v.clone());
        }
    }
    fields
}

#[tokio::test]
async fn a_server_restart_with_the_application_writing_ends_exact() {
    if std::env::var("MONGODB_URI").is_ok_and(|u| !u.is_empty()) {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut server = start_server(port, data.path());
    let base = format!("mongodb://127.0.0.1:{port}");
    let client = Client::with_uri_str(format!("{base}/?directConnection=true"))
        .await
        .unwrap();
    let spec = SampleSpec {
        users: 30_000,
        withdrawals: 0,
        seed: 12,
        invalid_earnings: 30,
        mixed_ids: false,
    };
    let db = client.database("restartlive");
    sample::load(&db, &spec).await.unwrap();
    let uri = format!("{base}/restartlive?directConnection=true");
    assert!(
        migrate(&uri, logs.path(), &["up", "--to", "2", "--no-progress"])
            .status()
            .unwrap()
            .success()
    );
    let before: Vec<Document> = all_users(&client, "restartlive").await;
    let ids: Vec<mongodb::bson::Bson> = before.iter().map(|u| u["_id"].clone()).collect();

    // The application changes earnings throughout, through the outage (its failed writes are
    // simply lost, as an application's would be), until the run is nearly done.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (stop, users) = (stop.clone(), db.collection::<Document>("users"));
        async move {
            let mut rng = common::Rng(0x07a6e);
            let mut written = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = ids[rng.below(ids.len() as u64) as usize].clone();
                let amount = (rng.next() % 5_000_000 + 100) as f64 / 100.0;
                let set = doc! { "$set": { "affiliateEarnings": amount } };
                if users.update_one(doc! { "_id": id }, set).await.is_ok() {
                    written += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            written
        }
    });
    let mut run = migrate(
        &uri,
        logs.path(),
        &["up", "--max-docs-per-sec", "4000", "--no-progress"],
    )
    .spawn()
    .unwrap();
    let records = db.collection::<Document>("migrations");
    let scanned = async || {
        records
            .find_one(doc! { "name": "003_migrate_existing_user_balances" })
            .await
            .ok()
            .flatten()
            .and_then(|r| {
                r.get_document("checkpoint")
                    .ok()
                    .and_then(|c| c.get_i64("scanned").ok())
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while scanned().await < 6_000 {
        assert!(Instant::now() < deadline, "003 never got going");
        assert!(run.try_wait().unwrap().is_none(), "the run ended early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut server = start_server(port, data.path());
    // Writes after the restart, then quiet before the scan ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scanned().await < 24_000 && run.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "003 did not go on after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    let status = run.wait().unwrap();
    let log = std::fs::read_to_string(logs.path().join("migration.log")).unwrap_or_default();
    assert!(status.success(), "the run failed ({status}):\n{log}");
    assert!(written > 100, "the application wrote only {written} times");
    // The stream went down with the server. The driver or the collector opens it again from
    // its token, or, where the restarted server kept no history (the test server sometimes),
    // the run catches up by passes instead of failing; a stream given up is said in the log.
    if log.contains("cannot resume stream") {
        assert!(
            log.contains("the change stream stopped and could not be opened again")
                && log.contains("mode=passes"),
            "the stream's loss did not switch the run to passes:\n{log}"
        );
    }

    // Every user untouched before 003 holds the rule's balance for its current earnings.
    let before: std::collections::HashMap<Vec<u8>, Document> = before
        .iter()
        .map(|u| {
            (
                common::bytes(&doc! { "id": u["_id"].clone() }),
                withdrawal_fields(u),
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for user in all_users(&client, "restartlive").await {
        let was = &before[&common::bytes(&doc! { "id": user["_id"].clone() })];
        let untouched = common::FIELDS
            .iter()
            .all(|f| matches!(was.get(f), Some(mongodb::bson::Bson::Int32(0))));
        let mut expected = was.clone();
        if untouched {
            if let Earnings::Half(half) = classify(user.get("affiliateEarnings")) {
                expected.insert("withdrawableBalance", half);
            }
        }
        if common::bytes(&withdrawal_fields(&user)) != common::bytes(&expected) {
            wrong.push(format!("{user} expected {expected}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} user(s) wrong after the restart, e.g. {}\n{log}",
        wrong.len(),
        wrong[0]
    );
    let _ = server.kill();
    let _ = server.wait();
}
