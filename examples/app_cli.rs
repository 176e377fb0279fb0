//! An application's own operator CLI: every command, flag, exit code and log of `migrate`, over
//! the application's migrations (`examples/app_migrations/`, compiled in by `embed_migrations!`).
//!
//! ```text
//! cargo run --example app_cli -- --uri mongodb://localhost:27017/app status
//! cargo run --example app_cli -- --uri mongodb://localhost:27017/app up
//! cargo run --example app_cli -- --uri mongodb://localhost:27017/app rollback --yes
//! ```
//!
//! In an application this is its `src/bin/migrate.rs` (or any binary), with the migrations
//! folder named relative to the application's `Cargo.toml`, and the `build.rs` that
//! `migrate build-script` writes, so that a new migration file rebuilds it.

fn main() {
    let migrations = mongo_migrate::embed_migrations!("examples/app_migrations");
    std::process::exit(mongo_migrate::cli::run(migrations));
}
