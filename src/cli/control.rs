//! `migrate pause` and `migrate throttle`: requests to the run holding the lock, wherever it
//! runs, through the lock document (see [`crate::engine::control`]).

use super::args::{PauseArgs, ThrottleArgs};
use super::logging::print_out;
use crate::engine::control::{self, Overrides, Request};
use crate::engine::error::{Error, Result};
use crate::engine::store::Actor;
use mongodb::bson::{Bson, Document};
use mongodb::Database;
use std::time::Duration;

/// Who holds the lock, as the messages name it.
fn holder(lock: &Document) -> String {
    format!(
        "`migrate {}` by {}@{} pid {}",
        lock.get_str("command").unwrap_or("?"),
        lock.get_str("user").unwrap_or("?"),
        lock.get_str("host").unwrap_or("?"),
        crate::engine::bson_ext::int_field(lock, "pid")
    )
}

pub(super) async fn pause(db: Database, args: PauseArgs) -> Result<()> {
    let me = Actor::current();
    let Some(lock) = control::send(&db, &Request::Pause, &me).await? else {
        print_out("no migration run holds the lock: nothing to pause");
        return Ok(());
    };
    let who = holder(&lock);
    print_out(format!(
        "asked {who} to pause; waiting for it to finish its batches in flight and save its checkpoint"
    ));
    let timeout = Duration::from_secs(args.timeout);
    if !control::wait_released(&db, &lock, timeout).await? {
        return Err(Error::PauseTimeout(timeout, who));
    }
    // A paused rollback is finished by running it again; `up --resume` refuses it.
    let again = match lock.get_str("command") {
        Ok("rollback") => "migrate rollback",
        _ => "migrate up --resume",
    };
    print_out(format!(
        "paused: {who} stopped and released the lock; continue with: {again}"
    ));
    Ok(())
}

pub(super) async fn throttle(db: Database, args: ThrottleArgs) -> Result<()> {
    let me = Actor::current();
    let request = if args.clear {
        Request::Clear
    } else {
        Request::Throttle(Overrides {
            max_docs_per_sec: args.max_docs_per_sec,
            batch_size: args.batch_size,
        })
    };
    let Some(lock) = control::send(&db, &request, &me).await? else {
        print_out("no migration run holds the lock: nothing to throttle");
        return Ok(());
    };
    let who = holder(&lock);
    let what = match &request {
        Request::Clear => "back to the limits it started with".to_string(),
        Request::Throttle(o) => o.to_string(),
        Request::Pause => unreachable!("built above"),
    };
    let token = lock.get("token").cloned().unwrap_or(Bson::Null);
    // The holder looks every second; a few seconds covers a busy server.
    if control::wait_applied(&db, &token, Duration::from_secs(10)).await? {
        print_out(format!("{who} now runs with {what}"));
    } else {
        print_out(format!(
            "asked {who} to run with {what}; it has not acknowledged yet (it looks every second while it holds the lock)"
        ));
    }
    Ok(())
}
