//! The subcommands: each turns its flags into [`RunOptions`], drives the runner and prints what
//! happened.

use super::args::{
    BaselineArgs, LockArgs, RepairArgs, RollbackArgs, RunLockArgs, SampleArgs, UpArgs,
};
use super::config::Config;
use super::logging::{print_err, print_out};
use super::progress::Bar;
use super::report::{print_report, print_report_json, print_rollback_preview, print_status};
use super::signals::{watch_signals, Kind};
use crate::engine::backfill::ProgressView;
use crate::engine::control::BatchSize;
use crate::engine::error::{Error, Result};
use crate::engine::migration::RunOptions;
use crate::engine::runner::{MigrationRunner, RunReport, State};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

pub(super) async fn status(
    db: mongodb::Database,
    runner: MigrationRunner,
    json: bool,
    watch: bool,
    check: bool,
) -> Result<()> {
    if watch {
        return super::live::watch(&runner, json).await;
    }
    let status = runner.status().await?;
    print_status(&status, json);
    for (name, chunks) in runner.orphaned_before_images().await? {
        print_err(format!(
            "warning: {chunks} chunk(s) of before-images of {name} in {} belong to no applied or partly applied migration; nothing will restore them\n",
            crate::engine::backfill::BEFORE_IMAGES
        ));
    }
    let unnamed = runner.unnamed_records().await?;
    if unnamed > 0 {
        print_err(format!(
            "warning: {unnamed} record(s) in `{}` have no name (null, missing or not a string); no migration run wrote them, so none is shown above, and more than one stops `up` (it needs a unique index on `name`). Remove them with `db.{}.deleteMany({{name: {{$not: {{$type: \"string\"}}}}}})` once sure they are junk\n",
            crate::engine::store::TRACKING_COLLECTION,
            crate::engine::store::TRACKING_COLLECTION,
        ));
    }
    if !check {
        return Ok(());
    }
    let attention = needing_attention(&db, &status).await?;
    if attention.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "status --check: {} migration(s) need an operator: {}",
        attention.len(),
        attention.join("; ")
    )))
}

/// What `status --check` fails on: every migration an operator has to act on, as `name (why)`.
/// A rollback in progress counts only once no live run holds the lock (it was interrupted).
async fn needing_attention(
    db: &mongodb::Database,
    status: &[crate::engine::runner::MigrationStatus],
) -> Result<Vec<String>> {
    let unknown: Vec<&str> = crate::engine::plan::unknown_applied(status)
        .map(|m| m.name.as_str())
        .collect();
    let rollback_live = match crate::engine::control::current_lock(db).await? {
        Some(lock) if status.iter().any(|m| m.state == State::RollingBack) => {
            let now = crate::engine::liveness::server_now(db).await;
            let me = crate::engine::store::Actor::current();
            crate::engine::liveness::holder_alive(&lock, now, &me)
        }
        _ => false,
    };
    Ok(status
        .iter()
        .filter_map(|m| {
            let why = match m.state {
                State::Unknown if unknown.contains(&m.name.as_str()) => {
                    "applied, unknown to this build"
                }
                State::Failed => "failed",
                State::Interrupted => "interrupted",
                State::RollingBack if !rollback_live => "rollback interrupted",
                State::Changed => "changed since applied",
                State::Malformed | State::UnknownStatus => "record unreadable",
                _ => return None,
            };
            Some(format!("{} ({why})", m.name))
        })
        .collect())
}

fn lock_options(options: &mut RunOptions, lock: &RunLockArgs) {
    wait_options(options, &lock.lock);
    options.allow_drift = lock.allow_drift;
    options.ignore_unknown = lock.ignore_unknown;
}

fn wait_options(options: &mut RunOptions, lock: &LockArgs) {
    options.wait_for_lock = lock
        .wait
        .then(|| lock.wait_timeout.map(Duration::from_secs));
    options.lock_lease = Duration::from_secs(lock.lock_lease);
}

pub(super) async fn up(runner: MigrationRunner, config: &Config, args: UpArgs) -> Result<()> {
    let mut options = RunOptions {
        batch_size: match args.batch_size {
            BatchSize::Fixed(n) => n,
            BatchSize::Auto => 1000,
        },
        auto_batch: args.batch_size == BatchSize::Auto,
        target_batch: Duration::from_millis(args.target_batch_ms),
        max_replication_lag: (args.max_replication_lag > 0)
            .then(|| Duration::from_secs(args.max_replication_lag)),
        concurrency: args.concurrency as usize,
        max_docs_per_sec: args.max_docs_per_sec,
        dry_run: args.dry_run,
        fail_on_invalid: args.fail_on_invalid,
        resume: args.resume,
        restart: args.restart,
        progress: !args.no_progress,
        // A bar only on a terminal: elsewhere the progress lines on stderr say the same.
        progress_view: std::io::stderr()
            .is_terminal()
            .then(|| Arc::new(Bar) as Arc<dyn ProgressView>),
        to: args.to,
        catch_up: args.catch_up,
        transactions: !args.no_transactions,
        ..RunOptions::default()
    };
    lock_options(&mut options, &args.lock);
    let runner = runner.with_options(options);
    let _signals = watch_signals(runner.stop_handle(), Kind::Up);
    tracing::info!(database = %config.database, uri = %config.redacted_uri(), dry_run = args.dry_run, "migrate up");
    let mut report = RunReport::default();
    let result = runner.run_pending_into(&mut report).await;
    if args.json {
        // One document whatever happened, so a script reads the outcome from stdout alone.
        print_report_json(&report, result.as_ref().err());
    } else if result.is_ok() {
        print_report(&report);
    }
    result
}

pub(super) async fn rollback(runner: MigrationRunner, args: RollbackArgs) -> Result<()> {
    let mut options = RunOptions {
        force: args.force,
        ..RunOptions::default()
    };
    lock_options(&mut options, &args.lock);
    let runner = runner.with_options(options);
    if args.dry_run {
        let previews = runner.rollback_preview(args.to).await?;
        print_rollback_preview(&previews, args.to);
        return Ok(());
    }
    let targets = runner.rollback_targets(args.to).await?;
    if targets.is_empty() {
        return Err(Error::Refused(crate::engine::plan::nothing_to_roll_back(
            args.to,
        )));
    }
    if !args.yes {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        if !std::io::stdin().is_terminal() {
            return Err(Error::Refused(format!(
                "rollback of {} needs confirmation: pass --yes to confirm without a terminal",
                names.join(", ")
            )));
        }
        let question = match targets.as_slice() {
            [target]
                if matches!(
                    target.state,
                    State::Failed | State::Running | State::Interrupted
                ) =>
            {
                format!(
                    "{} is {} part-way: undo its partial writes ({})?",
                    target.name, target.state, target.description
                )
            }
            [target] => format!("Roll back {} ({})?", target.name, target.description),
            _ => format!(
                "Roll back {} migrations, newest first: {}?",
                targets.len(),
                names.join(", ")
            ),
        };
        print_err(format!("{question} Type 'yes' to confirm: "));
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != "yes" {
            return Err(Error::Refused(
                "rollback not confirmed; nothing was changed".into(),
            ));
        }
    }
    let _signals = watch_signals(runner.stop_handle(), Kind::Rollback);
    for applied in runner.rollback_to(args.to).await? {
        print_out(format!(
            "rolled back {} in {:.1}s: {}",
            applied.name,
            applied.duration.as_secs_f64(),
            applied.outcome.message
        ));
    }
    Ok(())
}

pub(super) async fn baseline(runner: MigrationRunner, args: BaselineArgs) -> Result<()> {
    let mut options = RunOptions {
        dry_run: args.dry_run,
        ..RunOptions::default()
    };
    lock_options(&mut options, &args.lock);
    let runner = runner.with_options(options);
    let marked = runner.baseline(args.to).await?;
    let verb = if args.dry_run { "would mark" } else { "marked" };
    if marked.is_empty() {
        print_out(format!(
            "nothing to mark: every migration up to {:03} is applied",
            args.to
        ));
    }
    for name in &marked {
        print_out(format!("{verb} {name} applied without running it"));
    }
    if args.dry_run {
        print_out("dry run: nothing was written");
    }
    Ok(())
}

/// The first 12 hex digits of a checksum: enough to tell two apart.
fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

pub(super) async fn repair(runner: MigrationRunner, args: RepairArgs) -> Result<()> {
    let mut options = RunOptions::default();
    wait_options(&mut options, &args.lock);
    let runner = runner.with_options(options);
    let targets = runner.repair_targets().await?;
    if targets.is_empty() {
        print_out("nothing to repair: every applied migration's recorded checksum is its source's");
        return Ok(());
    }
    for t in &targets {
        print_out(format!(
            "{}: recorded {}, source today {}",
            t.name,
            short(&t.recorded),
            short(&t.checksum)
        ));
    }
    if args.dry_run {
        print_out("dry run: nothing was written");
        return Ok(());
    }
    if !args.yes {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        if !std::io::stdin().is_terminal() {
            return Err(Error::Refused(format!(
                "repair of {} needs confirmation: pass --yes to confirm without a terminal",
                names.join(", ")
            )));
        }
        print_err(format!(
            "Record today's checksum for {}, accepting its source as it is now? Type 'yes' to confirm: ",
            names.join(", ")
        ));
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != "yes" {
            return Err(Error::Refused(
                "repair not confirmed; nothing was changed".into(),
            ));
        }
    }
    let repaired = runner.repair(&targets).await?;
    for t in &repaired {
        print_out(format!(
            "repaired {}: recorded {} (was {})",
            t.name,
            short(&t.checksum),
            short(&t.recorded)
        ));
    }
    if repaired.len() < targets.len() {
        print_err(format!(
            "warning: {} record(s) changed since they were listed and were left as they are; run `migrate repair` again\n",
            targets.len() - repaired.len()
        ));
    }
    Ok(())
}

pub(super) async fn sample_data(db: mongodb::Database, args: SampleArgs) -> Result<()> {
    if args.drop {
        for name in [
            "users",
            "withdrawals",
            crate::engine::store::TRACKING_COLLECTION,
            crate::engine::lock::LOCK_COLLECTION,
            crate::engine::backfill::BEFORE_IMAGES,
            crate::engine::backfill::MARKS,
        ] {
            db.collection::<mongodb::bson::Document>(name)
                .drop()
                .await
                .map_err(Error::db(format!("dropping {name}")))?;
        }
    }
    let spec = crate::lms::sample::SampleSpec {
        users: args.users,
        withdrawals: args.withdrawals.unwrap_or(args.users / 2),
        seed: args.seed,
        invalid_earnings: args.invalid,
        mixed_ids: args.mixed_ids,
    };
    let report = crate::lms::sample::load(&db, &spec)
        .await
        .map_err(Error::db("loading sample data"))?;
    tracing::info!(
        users = report.users,
        withdrawals = report.withdrawals,
        "sample data loaded"
    );
    print_out(serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}
