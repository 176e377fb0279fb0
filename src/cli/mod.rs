//! The operator's command line: clap types ([`args`]), settings ([`config`]), logging
//! ([`logging`]), the progress bar ([`progress`]), the subcommands, the tables they print, and
//! the exit codes every outcome maps to ([`exit_codes`]). The binary's `main` only calls [`main`].

pub mod args;
mod commands;
pub mod config;
mod control;
pub mod exit_codes;
mod live;
pub mod logging;
mod new;
pub mod progress;
/// Redaction lives in the engine (records are written with it too); re-exported for the CLI.
pub use crate::engine::redact;
mod report;
mod show;
mod signals;

pub use args::Cli;

use crate::engine::error::{Error, Result};
use args::Command;
use clap::parser::ValueSource;
use clap::FromArgMatches;
use config::Settings;
use exit_codes::{exit, ProcessExitCode};
use logging::print_err;
use signals::{continue_hint, Kind};
use std::time::Duration;

/// Entry point of the `migrate` binary: the operator CLI over the migrations compiled into this
/// build (`migrations/`). Returns the process exit code.
pub fn main() -> i32 {
    run(crate::engine::registry::compiled())
}

/// The whole operator CLI (every command, flag, exit code and log of `migrate`) over
/// `migrations`: what an application's own binary calls with the migrations it embeds.
///
/// ```no_run
/// fn main() {
///     // The application's folder of migrations, relative to its Cargo.toml.
///     let migrations = mongo_migrate::embed_migrations!("examples/app_migrations");
///     std::process::exit(mongo_migrate::cli::run(migrations));
/// }
/// ```
///
/// `--to NNN` accepts the numbers of `migrations`. Returns the process exit code.
// The example is an application's whole `main`.
#[allow(clippy::needless_doctest_main)]
pub fn run(migrations: Vec<crate::engine::registry::Registered>) -> i32 {
    args::set_known(&migrations);
    let parsed = args::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        // `new` writes files in the repository: no database, settings or log file.
        Ok((
            Cli {
                command: Command::New(args),
                ..
            },
            _,
        )) => return new::main(&args),
        Ok((
            Cli {
                command: Command::BuildScript(args),
                ..
            },
            _,
        )) => return new::build_script(&args),
        Ok((
            Cli {
                command: Command::Show(args),
                ..
            },
            _,
        )) => return show::main(&args, &migrations),
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
    // Needs no database, settings or log file.
    if let Command::Completions { shell } = cli.command {
        // Into a buffer first: the generator panics on a closed pipe (`| head`).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut args::command(), "migrate", &mut script);
        return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                print_err(format!("error: cannot write the completion script: {e}\n"));
                exit::CONFIG
            }
            _ => exit::SUCCESS,
        };
    }
    let settings = match settings_and_logging(&cli, &matches) {
        Ok(settings) => settings,
        Err(e) => {
            print_err(format!("error: {e}\n"));
            return e.exit_code();
        }
    };
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
    let code = match runtime.block_on(dispatch(cli, settings, migrations)) {
        Ok(()) => exit::SUCCESS,
        Err(e) => report_error(&e, kind),
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

/// Settings from the flags and the env file, then logging: the env file is read first, since it
/// may name the log directory, and its warnings are logged once logging is up.
fn settings_and_logging(cli: &Cli, matches: &clap::ArgMatches) -> Result<Settings> {
    let mut settings = Settings {
        uri: cli.global.uri.clone(),
        database: cli.global.database.clone(),
        env_file: Some(cli.global.env_file.clone()),
        // The default stands only when neither the environment nor the env file names one.
        log_dir: (matches.value_source("log_dir") != Some(ValueSource::DefaultValue))
            .then(|| cli.global.log_dir.clone()),
        connect_timeout: Some(Duration::from_secs(cli.global.connect_timeout)),
    };
    // A file named with --env-file must be there; the default `.env` (or MIGRATE_ENV_FILE) may
    // be absent.
    let named = matches.value_source("env_file") == Some(ValueSource::CommandLine);
    let applied = settings.apply_env_file(named);
    // From here on, every output hides this URI's secrets, whatever its shape.
    if let Some(uri) = &settings.uri {
        redact::register_secrets(uri);
    }
    let env_warnings = applied?;
    let verbosity = cli.global.verbose as i8 - cli.global.quiet as i8;
    logging::init(&settings.log_dir(), verbosity)?;
    for warning in env_warnings {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// Logs a failed command, prints how to continue an interrupted one, and picks the exit code.
fn report_error(e: &Error, kind: Kind) -> i32 {
    if let Error::Db { source, .. } = e {
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

async fn dispatch(
    cli: Cli,
    settings: Settings,
    migrations: Vec<crate::engine::registry::Registered>,
) -> Result<()> {
    let config = settings.resolve()?;
    let (client, db) = config.connect().await?;
    tracing::debug!(uri = %config.redacted_uri(), database = %config.database, "connected");
    let runner = || crate::engine::runner::MigrationRunner::with_migrations(db.clone(), migrations);
    let result = match cli.command {
        Command::Status { json, watch, check } => {
            commands::status(db.clone(), runner(), json, watch, check).await
        }
        Command::Pause(args) => control::pause(db, args).await,
        Command::Throttle(args) => control::throttle(db, args).await,
        Command::Up(args) => commands::up(runner(), &config, args).await,
        Command::New(_) => unreachable!("`new` returns before connecting"),
        Command::BuildScript(_) => unreachable!("`build-script` returns before connecting"),
        Command::Show(_) => unreachable!("`show` returns before connecting"),
        Command::Rollback(args) => commands::rollback(runner(), args).await,
        Command::Baseline(args) => commands::baseline(runner(), args).await,
        Command::Repair(args) => commands::repair(runner(), args).await,
        Command::Completions { .. } => unreachable!("answered before connecting"),
        Command::SampleData(args) => commands::sample_data(db, args).await,
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
