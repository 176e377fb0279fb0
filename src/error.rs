//! One error type for the library. Every message says what was being done and what the operator
//! can do next; the binary maps each kind to an exit code (see [`Error::exit_code`]).

use std::time::Duration;

/// Exit codes of the `migrate` binary, as documented in the README.
pub mod exit {
    /// Everything asked for was done (or there was nothing to do).
    pub const SUCCESS: i32 = 0;
    /// A migration (or its rollback) failed; it is recorded as failed.
    pub const MIGRATION_FAILED: i32 = 1;
    /// Bad command-line usage (clap's own code).
    pub const USAGE: i32 = 2;
    /// Configuration or connection problem: nothing was run.
    pub const CONFIG: i32 = 3;
    /// Another runner holds the lock.
    pub const LOCKED: i32 = 4;
    /// Refused to act on the current state (drift, interrupted run needing `--resume`, no `down`,
    /// unconfirmed rollback): nothing was changed.
    pub const REFUSED: i32 = 5;
    /// Interrupted by Ctrl-C / SIGTERM; the checkpoint is saved.
    pub const INTERRUPTED: i32 = 130;
}

/// Everything that can go wrong, with messages meant for an operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid or missing configuration.
    #[error("configuration: {0}")]
    Config(String),

    /// The server could not be reached or refused the credentials.
    #[error("cannot connect to {uri}: {reason}. Check that the server is running and MONGODB_URI (host, port, credentials) is right")]
    Connect { uri: String, reason: String },

    /// A database operation failed while doing `context`.
    #[error("{context}: {source}")]
    Db {
        context: String,
        #[source]
        source: mongodb::error::Error,
    },

    /// Another runner holds the lock.
    #[error("another migration run holds the lock: {holder} (since {since}, lease until {expires}). Wait for it to finish, pass --wait to queue behind it, or if that process is gone, retry after the lease expires")]
    Locked {
        holder: String,
        since: String,
        expires: String,
    },

    /// `--wait` gave up; the second field describes the holder.
    #[error("gave up waiting {0:?} for the migration lock, still held by {1}. Try again later, or wait longer with a larger --wait-timeout")]
    LockTimeout(Duration, String),

    /// The lease was lost mid-run (another runner took it over after our heartbeat failed).
    #[error("lost the migration lock during the run ({0}); stopped so that two runners never write at once. Check `migrate status`, then `migrate up --resume`")]
    LockLost(String),

    /// An applied migration's source changed since it ran.
    #[error("migration {names} changed since it was applied (checksum differs). Restore its original source, or pass --allow-drift if the change is intended and harmless")]
    Drift { names: String },

    /// A migration was interrupted and `up` was run without `--resume` / `--restart`.
    #[error("migration {name} was interrupted (status running, last checkpoint {checkpoint}). Run `migrate up --resume` to continue it, or `migrate up --restart` to start it over")]
    Interrupted { name: String, checkpoint: String },

    /// The run was stopped by a signal after saving its checkpoint.
    #[error("interrupted: checkpoint saved. Resume with `migrate up --resume`")]
    Cancelled,

    /// A migration's `up` or `down` failed.
    #[error("migration {name} failed: {reason}")]
    Migration { name: String, reason: String },

    /// Rollback refused (no `down`, nothing to roll back, not confirmed).
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// Wraps a driver error with what was being done.
    pub fn db(context: impl Into<String>) -> impl FnOnce(mongodb::error::Error) -> Error {
        let context = context.into();
        move |source| Error::Db { context, source }
    }

    /// A migration failure with a reason.
    pub fn migration(name: impl Into<String>, reason: impl std::fmt::Display) -> Error {
        Error::Migration {
            name: name.into(),
            reason: reason.to_string(),
        }
    }

    /// The binary's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Connect { .. } => exit::CONFIG,
            Error::Locked { .. } | Error::LockTimeout(..) => exit::LOCKED,
            Error::Drift { .. } | Error::Interrupted { .. } | Error::Refused(_) => exit::REFUSED,
            Error::Cancelled => exit::INTERRUPTED,
            Error::Db { .. } | Error::Migration { .. } | Error::LockLost(_) => {
                exit::MIGRATION_FAILED
            }
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
