//! What the tracking collection holds: the record of one migration, its status, how a run
//! ended, and who ran it.

use mongodb::bson::{Bson, DateTime, Document};
use serde::{Deserialize, Serialize};

/// A record's `status`, as stored. Kept as the seed's strings in the database; a status this
/// build does not know is kept verbatim, so `status` shows it and `up` refuses naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum RecordStatus {
    /// Applied.
    Completed,
    /// `up` failed; `migrate up` runs it again.
    Failed,
    /// In progress, or interrupted (then it carries a checkpoint).
    Running,
    /// `down` in progress, or interrupted.
    RollingBack,
    /// Reverted by `migrate rollback`; `migrate up` applies it again.
    RolledBack,
    /// Never stored: marks a record that could not be read (see [`super::store::Store::load_all`]).
    Malformed,
    /// A status this build does not know.
    Other(String),
}

impl RecordStatus {
    /// The stored string.
    pub fn as_str(&self) -> &str {
        match self {
            RecordStatus::Completed => "completed",
            RecordStatus::Failed => "failed",
            RecordStatus::Running => "running",
            RecordStatus::RollingBack => "rolling_back",
            RecordStatus::RolledBack => "rolled_back",
            RecordStatus::Malformed => "<malformed>",
            RecordStatus::Other(s) => s,
        }
    }
}

impl Default for RecordStatus {
    fn default() -> Self {
        RecordStatus::Other(String::new())
    }
}

impl From<String> for RecordStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "completed" => RecordStatus::Completed,
            "failed" => RecordStatus::Failed,
            "running" => RecordStatus::Running,
            "rolling_back" => RecordStatus::RollingBack,
            "rolled_back" => RecordStatus::RolledBack,
            "<malformed>" => RecordStatus::Malformed,
            _ => RecordStatus::Other(s),
        }
    }
}

impl From<RecordStatus> for String {
    fn from(s: RecordStatus) -> String {
        s.as_str().to_string()
    }
}

impl From<RecordStatus> for Bson {
    fn from(s: RecordStatus) -> Bson {
        Bson::String(s.as_str().to_string())
    }
}

/// How one `up` or `down` ended, as its history entry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `up` completed.
    Completed,
    /// `up` or `down` failed.
    Failed,
    /// Stopped by a signal or a lost lock, its checkpoint kept.
    Interrupted,
    /// `down` completed.
    RolledBack,
}

impl Ended {
    /// The history entry's `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Completed => "completed",
            Ended::Failed => "failed",
            Ended::Interrupted => "interrupted",
            Ended::RolledBack => "rolled_back",
        }
    }
}

/// Who is running: recorded on records, history entries and the lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Actor {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// OS user.
    pub user: String,
}

impl Actor {
    /// The current process. The user is `$USER` (`%USERNAME%`), else the name of the process's
    /// uid (services and containers often run without `$USER`), else the uid itself.
    pub fn current() -> Self {
        Actor {
            host: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            pid: std::process::id(),
            user: std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(os_user),
        }
    }
}

/// The name of the effective uid from the user database, or the uid as a number.
#[cfg(unix)]
fn os_user() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids).
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, `buf` for `buf.len()` bytes; on success
        // the strings of `entry` point into `buf`, which outlives their use below.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut entry, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || entry.pw_name.is_null() {
            return uid.to_string();
        }
        // SAFETY: pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        let name = name.to_string_lossy().into_owned();
        return if name.is_empty() {
            uid.to_string()
        } else {
            name
        };
    }
}

#[cfg(not(unix))]
fn os_user() -> String {
    "unknown".into()
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} pid {}", self.user, self.host, self.pid)
    }
}

/// A tracking record as read back.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Migration name (`NNN_snake_name`).
    pub name: String,
    /// Its state.
    pub status: RecordStatus,
    /// When it last completed (the seed's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_at: Option<DateTime>,
    /// When the last `up`/`down` started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime>,
    /// When the last `up`/`down` ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime>,
    /// Duration of the last `up`/`down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// SHA-256 of the source that last ran.
    #[serde(default)]
    pub checksum: String,
    /// The last outcome's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Document>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Resume point of an interrupted backfill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Document>,
    /// When the record was adopted from the JavaScript runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_at: Option<DateTime>,
    /// The name the JavaScript runner recorded it under, when that was another (`.js`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_from: Option<String>,
    /// When `migrate baseline` marked it applied without running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baselined_at: Option<DateTime>,
    /// A backfill's live progress, saved with each checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Document>,
    /// The token of the lock the run working on it holds (its fencing token).
    #[serde(default, skip_serializing)]
    pub lock_token: Option<mongodb::bson::oid::ObjectId>,
    /// Every `up` and `down`, oldest first.
    #[serde(default)]
    pub history: Vec<Document>,
}
