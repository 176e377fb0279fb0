//! A service that migrates its own database at start-up, with its own migrations
//! (`examples/app_migrations/`) compiled in by `embed_migrations!`.
//!
//! Start as many instances at once as you like: one takes the lock and applies what is pending,
//! the others wait for it (`wait_for_lock`, what `--wait` sets on the command line), then find
//! nothing left to do and go on starting.
//!
//! ```text
//! MONGODB_URI=mongodb://localhost:27017/app cargo run --example app_startup
//! MONGODB_URI=mongodb://localhost:27017/app cargo run --example app_startup -- rollback
//! ```
//!
//! An application doing the same needs, besides the dependency on `mongo-migrate`, a `build.rs`
//! line so that a new migration file (not only an edited one) rebuilds it:
//! `println!("cargo:rerun-if-changed=migrations");`.

use mongo_migrate::{MigrationRunner, RunOptions};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::var("MONGODB_URI").map_err(|_| "set MONGODB_URI (with the database)")?;
    let client = mongodb::Client::with_uri_str(&uri).await?;
    let db = client
        .default_database()
        .ok_or("MONGODB_URI names no database, e.g. mongodb://localhost:27017/app")?;

    let migrations = mongo_migrate::embed_migrations!("examples/app_migrations");
    let options = RunOptions {
        // Queue behind another instance's run for up to two minutes instead of failing.
        wait_for_lock: Some(Some(Duration::from_secs(120))),
        progress: false,
        ..RunOptions::default()
    };
    let runner = MigrationRunner::with_migrations(db, migrations).with_options(options);

    if std::env::args().nth(1).as_deref() == Some("rollback") {
        let rolled_back = runner.rollback_last().await?;
        println!(
            "rolled back {}: {}",
            rolled_back.name, rolled_back.outcome.message
        );
    } else {
        for applied in runner.run_pending().await?.applied {
            println!("applied {}: {}", applied.name, applied.outcome.message);
        }
    }
    for m in runner.status().await? {
        println!("{} {}", m.name, m.state);
    }
    client.shutdown().await;
    Ok(())
}
