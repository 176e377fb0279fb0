//! Exit codes of the `migrate` binary, as documented in the README, and the one place that maps
//! the library's errors to them: the engine reports what went wrong, the command line decides
//! what the shell sees.

use crate::engine::error::Error;

/// The codes themselves.
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
    /// Refused to act on the current state (drift, interrupted run needing `--resume`, applied
    /// migrations this build does not know, an unreadable record, no `down`, unconfirmed
    /// rollback): nothing was changed. Also `status --check` finding something to act on.
    pub const REFUSED: i32 = 5;
    /// Interrupted by Ctrl-C / SIGTERM; the checkpoint is saved.
    pub const INTERRUPTED: i32 = 130;
}

/// The codes in one line, for `--help`.
pub(super) const SUMMARY: &str = "Exit codes: 0 success, 1 migration failed, 2 usage error, 3 configuration or connection error, 4 lock held by another run (or a paused run not stopped in time), 5 refused (drift, interrupted migration, applied migrations unknown to this build, unreadable record, no down, not confirmed) or, for `status --check`, a migration needs an operator, 130 interrupted or paused (checkpoint saved).";

/// The process exit code an error ends the binary with.
pub trait ProcessExitCode {
    /// The code, one of [`exit`].
    fn exit_code(&self) -> i32;
}

impl ProcessExitCode for Error {
    fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Connect { .. } => exit::CONFIG,
            Error::Locked { .. } | Error::LockTimeout(..) | Error::PauseTimeout(..) => exit::LOCKED,
            Error::Drift { .. } | Error::Interrupted { .. } | Error::Refused(_) => exit::REFUSED,
            Error::Cancelled => exit::INTERRUPTED,
            Error::Db { .. } | Error::Migration { .. } | Error::LockLost(_) => {
                exit::MIGRATION_FAILED
            }
        }
    }
}
