//! The command line's shape: every subcommand, flag and environment variable, as clap types.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Runs numbered MongoDB migrations and resumable backfills, tracked in the `migrations`
/// collection.
#[derive(Debug, Parser)]
#[command(name = "migrate", version, about, long_about = None, after_help = super::exit_codes::SUMMARY)]
pub struct Cli {
    #[command(flatten)]
    pub(super) global: GlobalArgs,
    #[command(subcommand)]
    pub(super) command: Command,
}

/// The options every command takes, listed under their own heading so that each command's help
/// starts with what is its own.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub(super) struct GlobalArgs {
    /// MongoDB connection string; the database may be its path (mongodb://host:27017/lms)
    #[arg(long, env = "MONGODB_URI", global = true, hide_env_values = true)]
    pub(super) uri: Option<String>,
    /// Database name (overrides the URI's path)
    #[arg(long = "db", env = "MONGODB_DB", global = true)]
    pub(super) database: Option<String>,
    /// File of KEY=value defaults read after flags and the environment (must exist when named
    /// with this flag)
    #[arg(
        long,
        env = "MIGRATE_ENV_FILE",
        global = true,
        value_name = "FILE",
        default_value = ".env"
    )]
    pub(super) env_file: PathBuf,
    /// Directory of migration.log (also MIGRATE_LOG_DIR in the --env-file)
    #[arg(long, env = "MIGRATE_LOG_DIR", global = true, value_name = "DIR", default_value = super::config::DEFAULT_LOG_DIR)]
    pub(super) log_dir: PathBuf,
    /// Seconds to wait for the server before failing
    #[arg(long, global = true, value_name = "SECS", default_value_t = 5, value_parser = whole(1, None, "seconds"))]
    pub(super) connect_timeout: u64,
    /// More output on stderr (repeat for more); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(super) verbose: u8,
    /// Less output on stderr (repeat for less)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(super) quiet: u8,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Run every pending migration in order
    Up(UpArgs),
    /// Show every migration's state, when it ran and how long it took; a running backfill with
    /// its holder, percentage, rate, ETA and heartbeat, an interrupted one with its checkpoint
    Status {
        /// Print JSON instead of a table (dates as ISO-8601, relaxed extended JSON; a running or
        /// interrupted backfill has `progress`)
        #[arg(long)]
        json: bool,
        /// Refresh every 2 s until no migration is running
        #[arg(long)]
        watch: bool,
        /// For scripts and health checks: exit 5 when a migration needs an operator (applied
        /// but unknown to this build, failed, interrupted, changed since applied, or its record
        /// unreadable), naming each on stderr; 0 otherwise (pending ones are fine)
        #[arg(long, conflicts_with = "watch")]
        check: bool,
    },
    /// Ask the run holding the lock, on any host, to stop as Ctrl-C does (finish the batches in
    /// flight, save the checkpoint, release the lock, exit 130), and wait until it has
    Pause(PauseArgs),
    /// Change the limits of the running backfill, on any host, without restarting it
    Throttle(ThrottleArgs),
    /// Revert the last migration touched: the last completed one with its `down`, or the partial
    /// writes of one that failed or was interrupted; with --to, every migration above a number
    #[command(visible_alias = "down")]
    Rollback(RollbackArgs),
    /// Mark every migration up to NNN as applied without running it, for a database brought to
    /// that state by other means (each record's history says so)
    Baseline(BaselineArgs),
    /// Accept the changed source of applied migrations: list each whose recorded checksum is not
    /// its source's, then, once confirmed, record today's checksum on each, with a history entry
    /// naming the old checksum and who accepted it. Comments and formatting are never a change
    Repair(RepairArgs),
    /// Print a shell completion script (e.g. `migrate completions bash > /etc/bash_completion.d/migrate`)
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Load realistic LMS sample data (users and withdrawals) into the database
    SampleData(SampleArgs),
    /// Write the next migration and its tests from templates, then say what to edit
    #[command(long_about = super::new::LONG_HELP)]
    New(super::new::NewArgs),
    /// Write build.rs for an application that embeds its migrations: it rebuilds the application
    /// when a migration is added, edited or removed
    BuildScript(super::new::BuildScriptArgs),
    /// Show what a migration does, from its source's documentation (needs no database)
    Show(super::show::ShowArgs),
}

/// The lock's flags, and `--allow-drift`, for the commands that run migrations.
#[derive(Debug, Args)]
pub(super) struct RunLockArgs {
    #[command(flatten)]
    pub(super) lock: LockArgs,
    /// Run even though an applied migration's source changed since it ran (`migrate repair`
    /// accepts the change for good)
    #[arg(long)]
    pub(super) allow_drift: bool,
    /// Go on although the database holds applied migrations this build does not know (by
    /// default refused: this build is older than the database's migrations)
    #[arg(long)]
    pub(super) ignore_unknown: bool,
}

/// The lock's flags.
#[derive(Debug, Args)]
pub(super) struct LockArgs {
    /// Wait for a lock held by another run instead of failing
    #[arg(long)]
    pub(super) wait: bool,
    /// With --wait, give up after this many seconds
    #[arg(long, requires = "wait", value_name = "SECS")]
    pub(super) wait_timeout: Option<u64>,
    /// Lock lease in seconds (5 to 3600): a run that stops renewing it loses the lock after this
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = whole(crate::engine::lock::MIN_LEASE.as_secs(), Some(crate::engine::lock::MAX_LEASE.as_secs()), "seconds"))]
    pub(super) lock_lease: u64,
}

#[derive(Debug, Args)]
pub(super) struct PauseArgs {
    /// Give up waiting for the holder to stop after this many seconds (exit 4)
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = whole(1, None, "seconds"))]
    pub(super) timeout: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("limit").required(true).multiple(true).args(["max_docs_per_sec", "batch_size", "clear"])))]
pub(super) struct ThrottleArgs {
    /// At most this many documents per second from now on
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub(super) max_docs_per_sec: Option<f64>,
    /// Documents per batch from now on: `auto` or 1 to 100000
    #[arg(long, value_name = "N|auto")]
    pub(super) batch_size: Option<crate::engine::control::BatchSize>,
    /// Drop the limits set with `migrate throttle`: back to those the run started with
    #[arg(long, conflicts_with_all = ["max_docs_per_sec", "batch_size"])]
    pub(super) clear: bool,
}

#[derive(Debug, Args)]
pub(super) struct UpArgs {
    /// Scan and transform, report what would change, write nothing (no documents, records or lock)
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Continue interrupted migrations from their saved checkpoints
    #[arg(long, conflicts_with = "restart")]
    pub(super) resume: bool,
    /// Start interrupted migrations over, discarding their checkpoints
    #[arg(long)]
    pub(super) restart: bool,
    /// Documents per batch: `auto` sizes each batch so its write takes about --target-batch-ms
    /// (from 1000, between 100 and 6000 / --concurrency; halved on transient errors and latency spikes), or a
    /// fixed number from 1 to 100000
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    pub(super) batch_size: crate::engine::control::BatchSize,
    /// With --batch-size auto, how long each batch's write should take, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = whole(10, Some(60_000), "milliseconds"))]
    pub(super) target_batch_ms: u64,
    /// Hold dispatch while a secondary lags the primary by more than this many seconds
    /// (replSetGetStatus), or while flow control reports the majority lagging; 0 turns it off.
    /// Read at most once a second; a server without replSetGetStatus runs without it
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(super) max_replication_lag: u64,
    /// Batches in flight at once
    #[arg(long, default_value_t = 4, value_parser = whole(1, Some(64), "batches"))]
    pub(super) concurrency: u64,
    /// Throttle: at most this many documents per second (default: unthrottled)
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub(super) max_docs_per_sec: Option<f64>,
    /// Fail the migration on invalid source data instead of skipping and reporting it
    #[arg(long)]
    pub(super) fail_on_invalid: bool,
    /// No progress bar, even on a terminal (progress still goes to the log)
    #[arg(long)]
    pub(super) no_progress: bool,
    /// Run pending migrations only up to and including this number (e.g. --to 2)
    #[arg(long, value_name = "NNN", value_parser = parse_migration_number)]
    pub(super) to: Option<u32>,
    /// Print one JSON document of results on stdout (progress and logs stay on stderr)
    #[arg(long)]
    pub(super) json: bool,
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
    pub(super) catch_up: crate::engine::backfill::CatchUpMode,
    /// Write each backfill batch guarded per document and read back, never in a transaction.
    /// By default a batch is read, imaged and written in one transaction where the deployment
    /// has them (replica sets, sharded clusters): exact and fast even while the application
    /// writes, but each batch holds its documents until it commits
    #[arg(long, env = "MIGRATE_NO_TRANSACTIONS")]
    pub(super) no_transactions: bool,
    #[command(flatten)]
    pub(super) lock: RunLockArgs,
}

#[derive(Debug, Args)]
pub(super) struct RollbackArgs {
    /// Do not ask for confirmation
    #[arg(short, long)]
    pub(super) yes: bool,
    /// Allow the rollback to destroy data that is not the migration's own (see each migration)
    #[arg(long)]
    pub(super) force: bool,
    /// Roll back every applied (or partly applied) migration numbered above NNN, newest first,
    /// after one confirmation (0 rolls back all of them)
    #[arg(long, value_name = "NNN", value_parser = parse_rollback_number)]
    pub(super) to: Option<u32>,
    /// Report what would be reverted and restored; write nothing (no documents, records or lock)
    #[arg(long)]
    pub(super) dry_run: bool,
    #[command(flatten)]
    pub(super) lock: RunLockArgs,
}

#[derive(Debug, Args)]
pub(super) struct BaselineArgs {
    /// The last migration to mark applied
    #[arg(long, value_name = "NNN", required = true, value_parser = parse_migration_number)]
    pub(super) to: u32,
    /// Show what would be marked; write nothing
    #[arg(long)]
    pub(super) dry_run: bool,
    #[command(flatten)]
    pub(super) lock: RunLockArgs,
}

#[derive(Debug, Args)]
pub(super) struct RepairArgs {
    /// Do not ask for confirmation (required without a terminal)
    #[arg(short, long)]
    pub(super) yes: bool,
    /// List what differs; write nothing (no records, not even the lock)
    #[arg(long)]
    pub(super) dry_run: bool,
    #[command(flatten)]
    pub(super) lock: LockArgs,
}

#[derive(Debug, Args)]
pub(super) struct SampleArgs {
    /// Number of users
    #[arg(long, default_value_t = 10_000)]
    pub(super) users: u64,
    /// Number of withdrawals (default: half the users)
    #[arg(long)]
    pub(super) withdrawals: Option<u64>,
    /// Extra users with invalid affiliateEarnings (strings, negatives, NaN, ...)
    #[arg(long, default_value_t = 0)]
    pub(super) invalid: u64,
    /// Mix integer and string _ids with ObjectIds
    #[arg(long)]
    pub(super) mixed_ids: bool,
    /// Seed of the deterministic generator
    #[arg(long, default_value_t = 42)]
    pub(super) seed: u64,
    /// Drop users, withdrawals and the tracking collections first
    #[arg(long)]
    pub(super) drop: bool,
}

/// A whole number from `min` to `max` (or `min` and up) of `unit`, its range said in words when
/// refused: clap's own ranges read `0 is not in 1..18446744073709551615`.
fn whole(
    min: u64,
    max: Option<u64>,
    unit: &'static str,
) -> impl Fn(&str) -> std::result::Result<u64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let range = match max {
            Some(max) => format!("a whole number of {unit} from {min} to {max}"),
            None => format!("a whole number of {unit}, {min} or more"),
        };
        match s.trim().parse::<u64>() {
            Ok(n) if n >= min && max.is_none_or(|max| n <= max) => Ok(n),
            _ => Err(format!("expected {range}")),
        }
    }
}

/// The command line, built, with the options `new` and `completions` ignore hidden from their
/// help and completions: neither connects, reads settings or logs.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    // clap copies each global option into every subcommand that has none of that id when it
    // builds the command: a hidden copy placed there first is kept instead.
    let hidden: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.clone().hide(true))
        .collect();
    for offline in ["new", "completions", "build-script", "show"] {
        cmd = cmd.mut_subcommand(offline, |sub| sub.args(hidden.clone()));
    }
    cmd
}

fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a positive number of documents per second"
        )),
    }
}

/// `rollback --to NNN`: a migration's number, or 0 for "all of them".
fn parse_rollback_number(s: &str) -> std::result::Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Ok(0),
        _ => parse_migration_number(s),
    }
}

/// The numbers of the migrations the CLI runs over (see [`set_known`]).
static KNOWN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Names the migrations whose numbers `--to` accepts: those [`crate::cli::run`] was given. Set
/// before the arguments are parsed, which is when clap checks them.
pub(super) fn set_known(migrations: &[crate::engine::registry::Registered]) {
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    *known = migrations.iter().map(|m| m.number).collect();
    known.sort_unstable();
}

/// `--to NNN`: a number of a migration this CLI runs over, checked before connecting.
fn parse_migration_number(s: &str) -> std::result::Result<u32, String> {
    let number: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a migration number (e.g. 2 or 002)"))?;
    let known: Vec<String> = KNOWN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|n| format!("{n:03}"))
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
