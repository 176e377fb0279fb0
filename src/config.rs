//! Where to connect and where to log: flags, then the environment, then a `.env` file.
//!
//! Flags and environment variables are merged by clap (`env = ...`); this module adds the `.env`
//! file as the last source, validates the result and connects with short timeouts so a wrong
//! target fails in seconds rather than hanging.

use crate::error::{Error, Result};
use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the operator asked for, before the `.env` file fills the gaps.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--uri` / `MONGODB_URI`.
    pub uri: Option<String>,
    /// `--db` / `MONGODB_DB`; overrides the database named in the URI path.
    pub database: Option<String>,
    /// `.env` file to read missing values from (absent file is fine).
    pub env_file: Option<PathBuf>,
    /// `--log-dir` / `MIGRATE_LOG_DIR`.
    pub log_dir: Option<PathBuf>,
    /// How long to wait for the server before giving up.
    pub connect_timeout: Option<Duration>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Full connection string (may hold a password: print [`Config::redacted_uri`] instead).
    pub uri: String,
    /// Target database.
    pub database: String,
    /// Directory for `migration.log`.
    pub log_dir: PathBuf,
    /// Server selection and connect timeout.
    pub connect_timeout: Duration,
}

/// Default directory of `migration.log`.
pub const DEFAULT_LOG_DIR: &str = "logs";
/// Default time to wait for the server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Settings {
    /// Fills missing values from the `.env` file and validates what is needed to log.
    pub fn log_dir(&self) -> PathBuf {
        self.log_dir
            .clone()
            .or_else(|| self.dotenv().remove("MIGRATE_LOG_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR))
    }

    /// Resolves the full configuration: flags > environment > `.env` file.
    pub fn resolve(&self) -> Result<Config> {
        let mut dotenv = self.dotenv();
        let uri = self
            .uri
            .clone()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| dotenv.remove("MONGODB_URI"))
            .ok_or_else(|| {
                Error::Config(
                    "no MongoDB connection string: set MONGODB_URI (e.g. mongodb://localhost:27017/lms), pass --uri, or put MONGODB_URI in .env"
                        .into(),
                )
            })?;
        if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
            return Err(Error::Config(format!(
                "MONGODB_URI {} must start with mongodb:// or mongodb+srv://",
                redact(&uri)
            )));
        }
        let database = self
            .database
            .clone()
            .filter(|d| !d.is_empty())
            .or_else(|| dotenv.remove("MONGODB_DB"))
            .or_else(|| database_from_uri(&uri))
            .ok_or_else(|| {
                Error::Config(format!(
                    "no database named: add it to the URI path ({}/<database>) or set MONGODB_DB / --db",
                    redact(uri.split('?').next().unwrap_or(&uri)).trim_end_matches('/')
                ))
            })?;
        if database.contains(['/', '\\', '.', ' ', '"', '$']) {
            return Err(Error::Config(format!(
                "database name {database:?} contains a character MongoDB does not allow (/\\. \"$)"
            )));
        }
        Ok(Config {
            uri,
            database,
            log_dir: self.log_dir(),
            connect_timeout: self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
    }

    fn dotenv(&self) -> HashMap<String, String> {
        let path = self
            .env_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(".env"));
        read_dotenv(&path)
    }
}

/// Reads `KEY=value` pairs without touching the process environment; a missing file is empty.
fn read_dotenv(path: &Path) -> HashMap<String, String> {
    match dotenvy::from_path_iter(path) {
        Ok(iter) => iter.filter_map(|item| item.ok()).collect(),
        Err(_) => HashMap::new(),
    }
}

/// The database in a URI's path (`mongodb://host/db?opts` -> `db`).
fn database_from_uri(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    let rest = rest.split('?').next()?;
    let (_, path) = rest.split_once('/')?;
    let db = path.trim_matches('/');
    (!db.is_empty()).then(|| db.to_string())
}

/// The URI with its password replaced by `***`, safe for output and logs.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let creds = &rest[..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}

impl Config {
    /// The connection string with its password hidden.
    pub fn redacted_uri(&self) -> String {
        redact(&self.uri)
    }

    /// Connects and pings, failing within the connect timeout with a message naming what to fix.
    pub async fn connect(&self) -> Result<(Client, Database)> {
        let connect_err = |reason: String| Error::Connect {
            uri: self.redacted_uri(),
            reason: scrub(&reason, &self.uri),
        };
        let mut options = ClientOptions::parse(&self.uri).await.map_err(|e| {
            Error::Config(format!(
                "MONGODB_URI {} is malformed: {}",
                self.redacted_uri(),
                scrub(&short(&e), &self.uri)
            ))
        })?;
        options.server_selection_timeout = Some(self.connect_timeout);
        options.connect_timeout = Some(self.connect_timeout);
        options
            .app_name
            .get_or_insert_with(|| "mongo-migrate".to_string());
        let client = Client::with_options(options).map_err(|e| connect_err(short(&e)))?;
        let db = client.database(&self.database);
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| connect_err(short(&e)))?;
        Ok((client, db))
    }
}

/// A driver error's gist: server selection errors carry a whole topology dump.
fn short(e: &mongodb::error::Error) -> String {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. } => {
            "no server answered within the connect timeout".to_string()
        }
        ErrorKind::Authentication { message, .. } => format!("authentication failed ({message})"),
        ErrorKind::InvalidArgument { message, .. } => message.clone(),
        _ => e.to_string().lines().next().unwrap_or_default().to_string(),
    }
}

/// Removes the password if a driver message echoes the URI or its parts.
fn scrub(message: &str, uri: &str) -> String {
    let mut out = message.replace(uri, &redact(uri));
    if let Some(rest) = uri.split_once("://").map(|(_, r)| r) {
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            if let Some((_, password)) = rest[..at].split_once(':') {
                if !password.is_empty() {
                    out = out.replace(password, "***");
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_password_only() {
        assert_eq!(
            redact("mongodb://u:secret@h:1/db?x=1"),
            "mongodb://u:***@h:1/db?x=1"
        );
        assert_eq!(redact("mongodb://h:1/db"), "mongodb://h:1/db");
        assert_eq!(
            redact("mongodb+srv://u:p%40ss@c.example/db"),
            "mongodb+srv://u:***@c.example/db"
        );
    }

    #[test]
    fn database_comes_from_uri_path() {
        assert_eq!(
            database_from_uri("mongodb://h:1/lms?retryWrites=false").as_deref(),
            Some("lms")
        );
        assert_eq!(database_from_uri("mongodb://h:1/?x=1"), None);
        assert_eq!(database_from_uri("mongodb://h:1"), None);
    }

    #[test]
    fn flag_beats_dotenv_and_dotenv_fills_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join(".env");
        std::fs::write(
            &env,
            "MONGODB_URI=mongodb://fromfile:1/filedb\nMONGODB_DB=other\n",
        )
        .unwrap();
        let from_file = Settings {
            env_file: Some(env.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(from_file.uri, "mongodb://fromfile:1/filedb");
        assert_eq!(from_file.database, "other");
        let flagged = Settings {
            uri: Some("mongodb://flag:2/flagdb".into()),
            database: Some("flagdb".into()),
            env_file: Some(env),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(flagged.uri, "mongodb://flag:2/flagdb");
        assert_eq!(flagged.database, "flagdb");
    }

    #[test]
    fn missing_uri_and_bad_scheme_are_config_errors() {
        let none = Settings {
            env_file: Some("/nonexistent/.env".into()),
            ..Default::default()
        };
        assert!(matches!(none.resolve(), Err(Error::Config(m)) if m.contains("MONGODB_URI")));
        let bad = Settings {
            uri: Some("http://u:pw@h/db".into()),
            ..none.clone()
        };
        let msg = bad.resolve().unwrap_err().to_string();
        assert!(msg.contains("mongodb://") && !msg.contains("pw"), "{msg}");
        let nodb = Settings {
            uri: Some("mongodb://h:1".into()),
            ..none
        };
        assert!(nodb
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("MONGODB_DB"));
    }
}
