//! The `migrate` command line: parses flags, sets up logging and signals, drives the runner and
//! maps every outcome to an exit code.

use crate::config::{Config, Settings};
use crate::error::{exit, Error, Result};
use crate::logging::{print_err, print_out};
use crate::migration::{RunOptions, Stop, StopReason};
use crate::runner::{MigrationRunner, MigrationStatus, RunReport, State};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Runs numbered MongoDB migrations and resumable backfills, tracked in the `migrations`
/// collection.
#[derive(Debug, Parser)]
#[command(name = "migrate", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// `println!` with the line's secrets hidden (see [`print_out`]).
macro_rules! out {
    ($($arg:tt)*) => {
        print_out(format!($($arg)*))
    };
}

const EXIT_CODES: &str = "Exit codes: 0 success, 1 migration failed, 2 usage error, 3 configuration or connection error, 4 lock held by another run, 5 refused (drift, interrupted migration, no down, not confirmed), 130 interrupted (checkpoint saved).";

#[derive(Debug, Args)]
struct GlobalArgs {
    /// MongoDB connection string; the database may be its path (mongodb://host:27017/lms)
    #[arg(long, env = "MONGODB_URI", global = true, hide_env_values = true)]
    uri: Option<String>,
    /// Database name (overrides the URI's path)
    #[arg(long = "db", env = "MONGODB_DB", global = true)]
    database: Option<String>,
    /// File of KEY=value defaults read after flags and the environment (must exist when named
    /// with this flag)
    #[arg(long, env = "MIGRATE_ENV_FILE", global = true, default_value = ".env")]
    env_file: PathBuf,
    /// Directory of migration.log
    #[arg(long, env = "MIGRATE_LOG_DIR", global = true)]
    log_dir: Option<PathBuf>,
    /// Seconds to wait for the server before failing
    #[arg(long, global = true, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout: u64,
    /// More output on stderr (repeat for more); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less output on stderr (repeat for less)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every pending migration in order
    Up(UpArgs),
    /// Show every migration's state, when it ran and how long it took
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Revert the last migration touched: the last completed one with its `down`, or the partial
    /// writes of one that failed or was interrupted
    Rollback(RollbackArgs),
    /// Load realistic LMS sample data (users and withdrawals) into the database
    SampleData(SampleArgs),
}

#[derive(Debug, Args)]
struct LockArgs {
    /// Wait for a lock held by another run instead of failing
    #[arg(long)]
    wait: bool,
    /// With --wait, give up after this many seconds
    #[arg(long, requires = "wait", value_name = "SECS")]
    wait_timeout: Option<u64>,
    /// Lock lease in seconds (5 to 3600): a run that stops renewing it loses the lock after this
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(crate::lock::MIN_LEASE.as_secs()..=crate::lock::MAX_LEASE.as_secs()))]
    lock_lease: u64,
    /// Run even though an applied migration's source changed since it ran
    #[arg(long)]
    allow_drift: bool,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Scan and transform, report what would change, write nothing (no documents, records or lock)
    #[arg(long)]
    dry_run: bool,
    /// Continue interrupted migrations from their saved checkpoints
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Start interrupted migrations over, discarding their checkpoints
    #[arg(long)]
    restart: bool,
    /// Documents per batch
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch_size: u64,
    /// Batches in flight at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    concurrency: u64,
    /// Throttle: at most this many documents per second (default: unthrottled)
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    max_docs_per_sec: Option<f64>,
    /// Fail the migration on invalid source data instead of skipping and reporting it
    #[arg(long)]
    fail_on_invalid: bool,
    /// No progress bar, even on a terminal (progress still goes to the log)
    #[arg(long)]
    no_progress: bool,
    /// Run pending migrations only up to and including this number (e.g. --to 2)
    #[arg(long, value_name = "NNN", value_parser = parse_migration_number)]
    to: Option<u32>,
    /// How backfills catch up with documents the application changes meanwhile: `auto` follows
    /// the change stream (resumable from the token saved with each checkpoint) where the
    /// deployment has one; `passes` re-reads the candidates after the scan until none is left;
    /// `off` skips catch-up, only for a collection nothing else writes during the run
    #[arg(
        long,
        value_name = "MODE",
        default_value = "auto",
        env = "MIGRATE_CATCH_UP"
    )]
    catch_up: crate::backfill::CatchUpMode,
    #[command(flatten)]
    lock: LockArgs,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    /// Do not ask for confirmation
    #[arg(short, long)]
    yes: bool,
    /// Allow the rollback to destroy data that is not the migration's own (see each migration)
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    lock: LockArgs,
}

#[derive(Debug, Args)]
struct SampleArgs {
    /// Number of users
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Number of withdrawals (default: half the users)
    #[arg(long)]
    withdrawals: Option<u64>,
    /// Extra users with invalid affiliateEarnings (strings, negatives, NaN, ...)
    #[arg(long, default_value_t = 0)]
    invalid: u64,
    /// Mix integer and string _ids with ObjectIds
    #[arg(long)]
    mixed_ids: bool,
    /// Seed of the deterministic generator
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Drop users, withdrawals and the tracking collections first
    #[arg(long)]
    drop: bool,
}

fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a positive number of documents per second"
        )),
    }
}

/// `--to NNN`: a number of a migration compiled into this build, checked before connecting.
fn parse_migration_number(s: &str) -> std::result::Result<u32, String> {
    let number: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a migration number (e.g. 2 or 002)"))?;
    let known: Vec<String> = crate::registry::compiled()
        .iter()
        .map(|m| format!("{:03}", m.number))
        .collect();
    if known.contains(&format!("{number:03}")) {
        Ok(number)
    } else {
        Err(format!(
            "no migration is numbered {number:03}; this build has {}",
            known.join(", ")
        ))
    }
}

/// The command being run, for the hint that continues it after an interruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Up,
    Rollback,
    Other,
}

/// Entry point of the binary: returns the process exit code.
pub fn main() -> i32 {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if e.use_stderr() => {
            // Clap's message may quote any argument, `--uri` included.
            print_err(e.render().to_string());
            return exit::USAGE;
        }
        Err(e) => {
            let _ = e.print();
            return exit::SUCCESS;
        }
    };
    let mut settings = Settings {
        uri: cli.global.uri.clone(),
        database: cli.global.database.clone(),
        env_file: Some(cli.global.env_file.clone()),
        log_dir: cli.global.log_dir.clone(),
        connect_timeout: Some(Duration::from_secs(cli.global.connect_timeout)),
    };
    // A file named with --env-file must be there; the default `.env` (or MIGRATE_ENV_FILE) may
    // be absent. Read before logging starts, since it may name the log directory.
    let named = matches.value_source("env_file") == Some(ValueSource::CommandLine);
    let applied = settings.apply_env_file(named);
    // From here on, every output hides this URI's secrets, whatever its shape.
    if let Some(uri) = &settings.uri {
        crate::config::register_secrets(uri);
    }
    let env_warnings = match applied {
        Ok(warnings) => warnings,
        Err(e) => {
            print_err(format!("error: {e}\n"));
            return e.exit_code();
        }
    };
    let verbosity = cli.global.verbose as i8 - cli.global.quiet as i8;
    if let Err(e) = crate::logging::init(&settings.log_dir(), verbosity) {
        print_err(format!("error: {e}\n"));
        return e.exit_code();
    }
    for warning in env_warnings {
        tracing::warn!("{warning}");
    }
    let kind = match cli.command {
        Command::Up(_) => Kind::Up,
        Command::Rollback(_) => Kind::Rollback,
        _ => Kind::Other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            print_err(format!("error: cannot start the async runtime: {e}\n"));
            return exit::CONFIG;
        }
    };
    let code = match runtime.block_on(run(cli, settings)) {
        Ok(()) => exit::SUCCESS,
        Err(e) => {
            if let Error::Db { source, .. } = &e {
                tracing::debug!("driver error in full: {source}");
            }
            tracing::error!("{e}");
            if matches!(e, Error::Cancelled | Error::LockLost(_)) {
                if let Some(hint) = continue_hint(kind) {
                    print_err(format!("{hint}\n"));
                }
            }
            e.exit_code()
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

async fn run(cli: Cli, settings: Settings) -> Result<()> {
    let config = settings.resolve()?;
    let (client, db) = config.connect().await?;
    tracing::debug!(uri = %config.redacted_uri(), database = %config.database, "connected");
    let result = match cli.command {
        Command::Status { json } => status(db, json).await,
        Command::Up(args) => up(db, &config, args).await,
        Command::Rollback(args) => rollback(db, args).await,
        Command::SampleData(args) => sample_data(db, args).await,
    };
    // Shut the driver down while the runtime still runs: left to the runtime's teardown, its
    // background tasks can panic on channels already closed.
    if tokio::time::timeout(Duration::from_secs(5), client.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("the driver did not shut down within 5s");
    }
    result
}

async fn status(db: mongodb::Database, json: bool) -> Result<()> {
    let runner = MigrationRunner::new(db);
    let status = runner.status().await?;
    print_status(&status, json);
    for (name, chunks) in runner.orphaned_before_images().await? {
        print_err(format!(
            "warning: {chunks} chunk(s) of before-images of {name} in {} belong to no applied or partly applied migration; nothing will restore them\n",
            crate::backfill::BEFORE_IMAGES
        ));
    }
    Ok(())
}

fn lock_options(options: &mut RunOptions, lock: &LockArgs) {
    options.wait_for_lock = lock
        .wait
        .then(|| lock.wait_timeout.map(Duration::from_secs));
    options.lock_lease = Duration::from_secs(lock.lock_lease);
    options.allow_drift = lock.allow_drift;
}

async fn up(db: mongodb::Database, config: &Config, args: UpArgs) -> Result<()> {
    let mut options = RunOptions {
        batch_size: args.batch_size as usize,
        concurrency: args.concurrency as usize,
        max_docs_per_sec: args.max_docs_per_sec,
        dry_run: args.dry_run,
        fail_on_invalid: args.fail_on_invalid,
        resume: args.resume,
        restart: args.restart,
        progress: !args.no_progress,
        to: args.to,
        catch_up: args.catch_up,
        ..RunOptions::default()
    };
    lock_options(&mut options, &args.lock);
    let runner = MigrationRunner::new(db).with_options(options);
    let _signals = watch_signals(runner.stop_handle(), Kind::Up);
    tracing::info!(database = %config.database, uri = %config.redacted_uri(), dry_run = args.dry_run, "migrate up");
    let report = runner.run_pending().await?;
    print_report(&report);
    Ok(())
}

async fn rollback(db: mongodb::Database, args: RollbackArgs) -> Result<()> {
    let mut options = RunOptions {
        force: args.force,
        ..RunOptions::default()
    };
    lock_options(&mut options, &args.lock);
    let runner = MigrationRunner::new(db).with_options(options);
    let Some(target) = runner.rollback_target().await? else {
        return Err(Error::Refused(
            "nothing to roll back: no migration is completed".into(),
        ));
    };
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::Refused(format!(
                "rollback of {} needs confirmation: pass --yes to confirm without a terminal",
                target.name
            )));
        }
        if matches!(target.state, State::Failed | State::Running) {
            print_err(format!(
                "{} is {} part-way: undo its partial writes ({})? Type 'yes' to confirm: ",
                target.name, target.state, target.description
            ));
        } else {
            print_err(format!(
                "Roll back {} ({})? Type 'yes' to confirm: ",
                target.name, target.description
            ));
        }
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
    let applied = runner.rollback_last().await?;
    print_out(format!(
        "rolled back {} in {:.1}s: {}",
        applied.name,
        applied.duration.as_secs_f64(),
        applied.outcome.message
    ));
    Ok(())
}

async fn sample_data(db: mongodb::Database, args: SampleArgs) -> Result<()> {
    if args.drop {
        for name in [
            "users",
            "withdrawals",
            crate::store::TRACKING_COLLECTION,
            crate::lock::LOCK_COLLECTION,
            crate::backfill::BEFORE_IMAGES,
        ] {
            db.collection::<mongodb::bson::Document>(name)
                .drop()
                .await
                .map_err(Error::db(format!("dropping {name}")))?;
        }
    }
    let spec = crate::sample::SampleSpec {
        users: args.users,
        withdrawals: args.withdrawals.unwrap_or(args.users / 2),
        seed: args.seed,
        invalid_earnings: args.invalid,
        mixed_ids: args.mixed_ids,
    };
    let report = crate::sample::load(&db, &spec)
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

/// First Ctrl-C / SIGTERM: stop after the batches in flight. Second: exit at once.
fn watch_signals(stop: Stop, kind: Kind) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            wait_for_signal().await;
            count += 1;
            if count == 1 {
                tracing::warn!("stop requested: finishing the batches in flight and saving the checkpoint (Ctrl-C again to abort at once)");
                stop.trigger(StopReason::Signal);
            } else {
                let again = match kind {
                    Kind::Rollback => rerun_command(),
                    _ => resume_command(),
                };
                print_err(format!(
                    "aborted; the work in flight is redone safely by: {again}\n"
                ));
                std::process::exit(exit::INTERRUPTED);
            }
        }
    })
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// The one command that continues an interrupted `up` or `rollback`. An interrupted rollback
/// leaves its migration `rolling back`, and `migrate rollback` run again picks that migration
/// and finishes it (`up --resume` refuses it, and `rollback` has no `--resume`).
fn continue_hint(kind: Kind) -> Option<String> {
    match kind {
        Kind::Up => Some(format!("resume with: {}", resume_command())),
        Kind::Rollback => Some(format!("finish the rollback with: {}", rerun_command())),
        Kind::Other => None,
    }
}

/// The command line that was run, as it was (password hidden).
fn rerun_command() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|arg| crate::config::redact(&arg))
        .collect();
    format!("migrate {}", args.join(" "))
}

/// The command line that was run, with `--resume` instead of `--restart`, password hidden.
fn resume_command() -> String {
    let mut args: Vec<String> = Vec::new();
    let mut redact_next = false;
    for arg in std::env::args().skip(1) {
        if redact_next {
            args.push(crate::config::redact(&arg));
            redact_next = false;
            continue;
        }
        if arg == "--restart" || arg == "--resume" || arg == "--dry-run" {
            continue;
        }
        if arg == "--uri" {
            redact_next = true;
        }
        if let Some(uri) = arg.strip_prefix("--uri=") {
            args.push(format!("--uri={}", crate::config::redact(uri)));
            continue;
        }
        args.push(arg);
    }
    args.push("--resume".into());
    format!("migrate {}", args.join(" "))
}

fn print_report(report: &RunReport) {
    if report.applied.is_empty() {
        out!("nothing to migrate: every migration is applied");
        return;
    }
    for applied in &report.applied {
        let verb = if report.dry_run {
            "would apply"
        } else {
            "applied"
        };
        out!(
            "{verb} {} in {:.1}s: {}",
            applied.name,
            applied.duration.as_secs_f64(),
            applied.outcome.message
        );
        if report.dry_run && !applied.outcome.result.is_empty() {
            let json = mongodb::bson::Bson::Document(applied.outcome.result.clone())
                .into_relaxed_extjson();
            out!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
    }
    if report.dry_run {
        out!("dry run: nothing was written");
    }
}

fn print_status(status: &[MigrationStatus], json: bool) {
    if json {
        let value = serde_json::to_value(status).unwrap_or_default();
        out!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return;
    }
    out!(
        "{:<4} {:<42} {:<22} {:<20} {:>9}  NOTE",
        "#",
        "MIGRATION",
        "STATE",
        "EXECUTED AT (UTC)",
        "DURATION"
    );
    for m in status {
        let record = m.record.as_ref();
        // A migration in progress (or interrupted) shows when this attempt started, not when an
        // earlier one completed.
        let in_progress = matches!(m.state, State::Running | State::RollingBack);
        let when = record
            .and_then(|r| {
                if in_progress {
                    r.started_at
                } else {
                    r.executed_at.or(r.started_at)
                }
            })
            .map(|t| t.to_chrono().format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        let duration = record
            .and_then(|r| r.duration_ms)
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let note = match m.state {
            State::Running => record
                .and_then(|r| r.checkpoint.as_ref())
                .map(|cp| format!("checkpoint: {}", crate::runner::describe_checkpoint(cp)))
                .unwrap_or_else(|| "no checkpoint yet".into()),
            State::Failed => record.and_then(|r| r.error.clone()).unwrap_or_default(),
            State::Changed => {
                "source changed since applied: `up` refuses until restored or --allow-drift".into()
            }
            State::Pending => m.description.clone(),
            State::UnknownStatus => format!(
                "status {:?} is not one this build knows: `up` refuses until the record is fixed or removed",
                record.map(|r| r.status.as_str()).unwrap_or("?")
            ),
            State::Malformed => format!(
                "cannot be read ({}): `up` refuses until the record is fixed or removed",
                record.and_then(|r| r.error.clone()).unwrap_or_default()
            ),
            _ => record
                .and_then(|r| r.result.as_ref())
                .map(summarize_result)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| m.description.clone()),
        };
        let number = if m.number == 0 {
            "?".into()
        } else {
            format!("{:03}", m.number)
        };
        out!(
            "{number:<4} {:<42} {:<22} {when:<20} {duration:>9}  {note}",
            m.name,
            m.state.to_string()
        );
    }
}

/// `modified=10 invalid=2 (e.g. _id 7, "u9")` from a result's top-level counters and samples.
fn summarize_result(result: &mongodb::bson::Document) -> String {
    let mut summary = result
        .iter()
        .filter_map(|(k, v)| {
            v.as_i64()
                .or_else(|| v.as_i32().map(i64::from))
                .map(|n| format!("{k}={n}"))
        })
        .collect::<Vec<_>>()
        .join(" ");
    if let Ok(caught) = result.get_document("caughtUp") {
        summary.push_str(&format!(
            " caughtUp={} ({}, {} events)",
            crate::backfill::int(caught, "modified"),
            caught.get_str("mode").unwrap_or("?"),
            crate::backfill::int(caught, "events")
        ));
    }
    if let Ok(samples) = result.get_array("invalidSamples") {
        let ids: Vec<String> = samples
            .iter()
            .filter_map(|s| {
                s.as_document()?
                    .get("_id")
                    .map(|id| id.clone().into_relaxed_extjson().to_string())
            })
            .take(5)
            .collect();
        if !ids.is_empty() {
            summary.push_str(&format!(" (invalid e.g. _id {})", ids.join(", ")));
        }
    }
    summary
}
