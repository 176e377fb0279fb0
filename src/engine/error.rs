//! One error type for the library. Every message says what was being done and what the operator
//! can do next; the command line maps each kind to an exit code
//! (`cli::exit_codes::ProcessExitCode`).

use std::time::Duration;

/// Everything that can go wrong, with messages meant for an operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid or missing configuration.
    #[error("configuration: {0}")]
    Config(String),

    /// The server could not be reached or refused the credentials.
    #[error("cannot connect to {uri}: {reason}. Check that the server is running and MONGODB_URI (host, port, credentials) is right")]
    Connect { uri: String, reason: String },

    /// A database operation failed while doing `context`. The message holds the driver error's
    /// gist ([`driver_error_summary`]); the error itself stays in `source`.
    #[error("{context}: {}", driver_error_summary(source))]
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

    /// `migrate pause` gave up waiting for the holder to stop; the second field describes it.
    #[error("{1} did not stop within {0:?} of being asked to pause: check `migrate status` (a live heartbeat means it is still finishing its batches; run `migrate pause` again to keep waiting)")]
    PauseTimeout(Duration, String),

    /// The lease was lost mid-run (taken over after our heartbeat failed, or the heartbeat
    /// itself died). The command that continues the work is the caller's to print.
    #[error("lost the migration lock during the run ({0}); stopped so that two runners never write at once. Check `migrate status` before running again")]
    LockLost(String),

    /// An applied migration's source changed since it ran.
    #[error("migration {names} changed since it was applied (checksum differs). Restore its original source, or, if the change is intended and harmless, accept it with `migrate repair` (or pass --allow-drift to run this once without accepting it)")]
    Drift { names: String },

    /// A migration was interrupted and `up` was run without `--resume` / `--restart`.
    #[error("migration {name} was interrupted (status running, last checkpoint {checkpoint}). Run `migrate up --resume` to continue it, or `migrate up --restart` to start it over")]
    Interrupted { name: String, checkpoint: String },

    /// The run was stopped by a signal after saving its checkpoint. Which command continues it
    /// depends on what was interrupted (`up` or `rollback`): the caller prints it.
    #[error("interrupted: the work in flight was finished and the progress saved")]
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
}

/// A driver error in a line or two. A server-selection error carries the driver's whole topology
/// description (hundreds of characters); this keeps what was tried and what failed, e.g.
/// `no server answered (127.0.0.1:1: Connection refused (os error 111))`.
pub fn driver_error_summary(e: &mongodb::error::Error) -> String {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { message, .. } => server_selection_summary(message),
        ErrorKind::Authentication { message, .. } => format!("authentication failed ({message})"),
        ErrorKind::InvalidArgument { message, .. } => message.clone(),
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            match first.char_indices().nth(300) {
                Some((cut, _)) => format!("{}...", &first[..cut]),
                None => first.to_string(),
            }
        }
    }
}

/// What was tried and what failed, from the driver's topology description, whose servers read
/// `{ Address: h:p, Type: Unknown, ..., Error: Kind: I/O error: ..., labels: {} }`:
/// `no server answered (h:p: I/O error: ...)`, or, when servers answered but none suits the
/// read preference, `no server suits ReadPreference(Secondary ...) (h:p is RsPrimary)`. An
/// unexpected shape still gives the first sentence, never the dump.
fn server_selection_summary(message: &str) -> String {
    let mut failures = Vec::new();
    let mut answered = Vec::new();
    for server in message.split("{ Address: ").skip(1) {
        let address = server.split(',').next().unwrap_or("?").trim();
        let kind = server
            .split_once("Type: ")
            .and_then(|(_, rest)| rest.split([',', ' ']).next())
            .unwrap_or("Unknown");
        match server.split_once(", Error: ") {
            Some((_, error)) => {
                let error = error
                    .split(", labels:")
                    .next()
                    .unwrap_or(error)
                    .trim_start_matches("Kind: ")
                    .trim_end_matches(['}', ' ', ']']);
                failures.push(format!("{address}: {error}"));
            }
            None if kind == "Unknown" => failures.push(format!("{address}: no answer")),
            None => answered.push(format!("{address} is {kind}")),
        }
    }
    // `ReadPreference(Secondary { options: Some(...) })`: the mode is what matters; the
    // tags and staleness are in the URI the message names.
    let criteria = message
        .split_once("suitable for criteria ")
        .map(|(_, rest)| rest.split(". Topology").next().unwrap_or(rest))
        .map(|c| match c.strip_prefix("ReadPreference(") {
            Some(mode) => format!(
                "read preference {}",
                mode.split(|ch: char| !ch.is_ascii_alphanumeric())
                    .next()
                    .unwrap_or(mode)
            ),
            None => c.to_string(),
        });
    match criteria {
        Some(criteria) if failures.is_empty() => {
            format!("no server suits {criteria} ({})", answered.join(", "))
        }
        _ if !failures.is_empty() => format!("no server answered ({})", failures.join("; ")),
        _ => {
            // No server left in the topology: with a replica set name, every server that
            // answered belonged to another set and was dropped.
            let set = message
                .split_once("Set Name: ")
                .map(|(_, rest)| rest.split([',', ' ', '}']).next().unwrap_or(rest));
            match set {
                Some(set) => format!(
                    "no member of replica set {set} answered (check the replicaSet option, or use directConnection=true)"
                ),
                None => {
                    let first = message.split(". Topology").next().unwrap_or(message);
                    format!("no server answered ({})", first.trim_end_matches('.'))
                }
            }
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_selection_summary_names_each_server_and_its_failure_without_the_dump() {
        let dump = "Server selection timeout: No available servers. Topology: { Type: Unknown, Servers: [ { Address: 127.0.0.1:1, Type: Unknown, Error: Kind: I/O error: Connection refused (os error 111), labels: {} }, { Address: db2:27017, Type: Unknown, Error: Kind: I/O error: failed to lookup address information, labels: {} } ] }";
        assert_eq!(
            server_selection_summary(dump),
            "no server answered (127.0.0.1:1: I/O error: Connection refused (os error 111); db2:27017: I/O error: failed to lookup address information)"
        );
        let unsuitable = "Server selection timeout: None of the available servers suitable for criteria ReadPreference(Secondary { options: None }). Topology: { Type: ReplicaSetWithPrimary, Set Name: s, Servers: [ { Address: 127.0.0.1:47017, Type: RsPrimary, Average RTT: 3.8ms, Max Wire Version: 27 } ] }";
        assert_eq!(
            server_selection_summary(unsuitable),
            "no server suits read preference Secondary (127.0.0.1:47017 is RsPrimary)"
        );
        let other_set = "Server selection timeout: No available servers. Topology: { Type: ReplicaSetNoPrimary, Set Name: rs0 }";
        assert_eq!(
            server_selection_summary(other_set),
            "no member of replica set rs0 answered (check the replicaSet option, or use directConnection=true)"
        );
        let odd = "Server selection timeout: No available servers. Topology: something else";
        assert_eq!(
            server_selection_summary(odd),
            "no server answered (Server selection timeout: No available servers)"
        );
    }
}
