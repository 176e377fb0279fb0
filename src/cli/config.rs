//! Where to connect and where to log: flags, then the environment, then a `.env` file.
//!
//! Flags and environment variables are merged by clap (`env = ...`); this module adds the `.env`
//! file as the last source, checks the result's shape (a URI is given and starts with
//! `mongodb://` or `mongodb+srv://`, a database is named and its name is allowed), and connects
//! with short timeouts so a wrong target fails in seconds rather than hanging. Whether the server
//! is there and accepts the credentials is only known by connecting.

use super::redact::{redact, register_secrets};
use crate::engine::error::{driver_error_summary, Error, Result};
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

/// A resolved configuration: a `mongodb` URI and an allowed database name.
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
    /// Fills what flags and the environment left unset from the `.env` file, once: afterwards
    /// `env_file` is `None`. `required` (the file was named with `--env-file`) makes a missing or
    /// unreadable file an error; otherwise it is ignored. Returns what was wrong with the file's
    /// content (malformed lines, invalid UTF-8), for the caller to report.
    pub fn apply_env_file(&mut self, required: bool) -> Result<Vec<String>> {
        let Some(path) = self.env_file.take() else {
            return Ok(Vec::new());
        };
        let mut file = EnvFile::read(&path, required)?;
        if self.uri.as_deref().is_none_or(|u| u.trim().is_empty()) {
            self.uri = file.values.remove("MONGODB_URI");
        }
        if self.database.as_deref().is_none_or(str::is_empty) {
            self.database = file.values.remove("MONGODB_DB");
        }
        if self.log_dir.is_none() {
            self.log_dir = file.values.remove("MIGRATE_LOG_DIR").map(PathBuf::from);
        }
        Ok(file.warnings)
    }

    /// Directory of `migration.log`, from the settings or else the `.env` file.
    pub fn log_dir(&self) -> PathBuf {
        let mut settings = self.clone();
        // Problems with the file are reported by whoever applies it for the run.
        let _ = settings.apply_env_file(false);
        settings
            .log_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR))
    }

    /// Resolves the full configuration: flags > environment > `.env` file.
    pub fn resolve(&self) -> Result<Config> {
        let mut settings = self.clone();
        for warning in settings.apply_env_file(false)? {
            tracing::warn!("{warning}");
        }
        let uri = settings
            .uri
            .clone()
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "no MongoDB connection string: set MONGODB_URI (e.g. mongodb://localhost:27017/lms), pass --uri, or put MONGODB_URI in .env"
                        .into(),
                )
            })?;
        // Before anything can echo it, so that every output hides its secrets whatever its shape.
        register_secrets(&uri);
        if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
            return Err(Error::Config(format!(
                "MONGODB_URI {} must start with mongodb:// or mongodb+srv://",
                redact(&uri)
            )));
        }
        let database = settings
            .database
            .clone()
            .filter(|d| !d.is_empty())
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
            log_dir: settings
                .log_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR)),
            connect_timeout: self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
    }
}

/// The `KEY=value` pairs of a `.env` file, read without touching the process environment.
#[derive(Debug, Default)]
pub struct EnvFile {
    /// The pairs; a key given twice keeps its last value.
    pub values: HashMap<String, String>,
    /// Lines that were skipped and why, by line number. They never quote the line: it may hold
    /// a password.
    pub warnings: Vec<String>,
}

impl EnvFile {
    /// Reads `path`. A missing or unreadable file is an error when `required`, else empty (with a
    /// warning when it exists but cannot be read).
    pub fn read(path: &Path, required: bool) -> Result<EnvFile> {
        let shown = path.display();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(EnvFile::default())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Config(format!(
                    "env file {shown} (named by --env-file) does not exist: fix the path or drop the flag"
                )))
            }
            Err(e) if required => {
                return Err(Error::Config(format!(
                    "cannot read env file {shown} (named by --env-file): {e}"
                )))
            }
            Err(e) => {
                return Ok(EnvFile {
                    warnings: vec![format!("cannot read env file {shown} ({e}); ignoring it")],
                    ..EnvFile::default()
                })
            }
        };
        Ok(EnvFile::parse(&bytes, &shown.to_string()))
    }

    /// Parses the content of a `.env` file named `shown` (dotenv syntax: comments, quotes,
    /// `export`, `${VAR}`), keeping every good line and a warning for every bad one.
    fn parse(bytes: &[u8], shown: &str) -> EnvFile {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let mut warnings = Vec::new();
        // Lines that are not UTF-8 are blanked, not dropped, so later line numbers stay right.
        let lines: Vec<&str> = bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .map(|(i, line)| {
                std::str::from_utf8(line).unwrap_or_else(|_| {
                    warnings.push(format!(
                        "env file {shown} line {} is not valid UTF-8; ignored",
                        i + 1
                    ));
                    ""
                })
            })
            .collect();
        let text = lines.join("\n");
        let mut values = HashMap::new();
        // dotenvy reports a bad entry by its text; find it from where the last one was found.
        let mut cursor = 0;
        for item in dotenvy::from_read_iter(text.as_bytes()) {
            match item {
                Ok((key, value)) => {
                    values.insert(key, value);
                }
                Err(e) => {
                    let at = match &e {
                        dotenvy::Error::LineParse(entry, _) => {
                            let entry = entry.trim_end_matches(['\n', '\r']);
                            let first = entry.lines().next().unwrap_or(entry);
                            text[cursor..].find(first).map(|i| cursor + i)
                        }
                        _ => None,
                    };
                    let line = match at {
                        Some(at) => {
                            cursor = at + 1;
                            format!("line {}", text[..at].matches('\n').count() + 1)
                        }
                        None => "a line".to_string(),
                    };
                    warnings.push(format!(
                        "env file {shown} {line} is malformed (expected KEY=value); ignored"
                    ));
                }
            }
        }
        EnvFile { values, warnings }
    }
}

/// The database in a URI's path (`mongodb://host/db?opts` -> `db`).
fn database_from_uri(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    // Read as the driver reads it: options after the first `?`, user-info up to the last `@`
    // (so a password holding `/` is never taken for the path).
    let rest = rest.split('?').next()?;
    let rest = rest.rsplit('@').next()?;
    let (_, path) = rest.split_once('/')?;
    let db = path.trim_matches('/');
    (!db.is_empty()).then(|| db.to_string())
}

impl Config {
    /// The connection string with its password hidden.
    pub fn redacted_uri(&self) -> String {
        redact(&self.uri)
    }

    /// Connects and pings, failing within the connect timeout with a message naming what to fix.
    /// The driver's full error goes to the log at debug level; the message keeps its gist.
    pub async fn connect(&self) -> Result<(Client, Database)> {
        let mut options = ClientOptions::parse(&self.uri).await.map_err(|e| {
            tracing::debug!(error = %e, "parsing the connection string failed");
            Error::Config(format!(
                "MONGODB_URI {} is malformed: {}",
                self.redacted_uri(),
                driver_error_summary(&e)
            ))
        })?;
        options.server_selection_timeout = Some(self.connect_timeout);
        options.connect_timeout = Some(self.connect_timeout);
        options
            .app_name
            .get_or_insert_with(|| "mongo-migrate".to_string());
        let client = Client::with_options(options).map_err(|e| self.connect_error(&e))?;
        let db = client.database(&self.database);
        // Ping the servers the reads will go to: a read preference no server suits then fails
        // here, as a connection error, rather than at the first read.
        let mut ping = db.run_command(doc! { "ping": 1 });
        if let Some(criteria) = client.selection_criteria() {
            ping = ping.selection_criteria(criteria.clone());
        }
        if let Err(e) = ping.await {
            // Stop the driver's background monitors now rather than at runtime teardown.
            client.shutdown().immediate(true).await;
            return Err(self.connect_error(&e));
        }
        Ok((client, db))
    }

    fn connect_error(&self, e: &mongodb::error::Error) -> Error {
        tracing::debug!(error = %e, "connecting failed");
        let mut reason = driver_error_summary(e);
        if matches!(
            e.kind.as_ref(),
            mongodb::error::ErrorKind::ServerSelection { .. }
        ) {
            reason.push_str(&format!(", waited {}s", self.connect_timeout.as_secs()));
        }
        Error::Connect {
            uri: self.redacted_uri(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn env_file_problems_are_reported_by_line_without_quoting_it() {
        let file = EnvFile::parse(
            b"# comment\nMONGODB_DB=lms\nthis line has no equals pw15\nMIGRATE_LOG_DIR=\xff\xfe\n\nMONGODB_URI=mongodb://h/db\n",
            ".env",
        );
        assert_eq!(
            file.warnings,
            [
                ".env line 4 is not valid UTF-8; ignored",
                ".env line 3 is malformed (expected KEY=value); ignored",
            ]
            .map(|w| format!("env file {w}"))
        );
        assert_eq!(
            file.values.get("MONGODB_DB").map(String::as_str),
            Some("lms")
        );
        assert_eq!(
            file.values.get("MONGODB_URI").map(String::as_str),
            Some("mongodb://h/db")
        );
        assert!(!file.values.contains_key("MIGRATE_LOG_DIR"));
    }

    #[test]
    fn named_env_file_must_exist_but_the_default_may_not() {
        let missing = Path::new("/nonexistent/dir/.env");
        assert!(EnvFile::read(missing, false).unwrap().values.is_empty());
        let err = EnvFile::read(missing, true).unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("does not exist")),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let unreadable = EnvFile::read(dir.path(), false).unwrap();
        assert_eq!(unreadable.warnings.len(), 1, "{:?}", unreadable.warnings);
        assert!(EnvFile::read(dir.path(), true).is_err());
    }

    #[test]
    fn database_comes_from_uri_path() {
        assert_eq!(
            database_from_uri("mongodb://h:1/lms?retryWrites=false").as_deref(),
            Some("lms")
        );
        assert_eq!(database_from_uri("mongodb://h:1/?x=1"), None);
        assert_eq!(
            database_from_uri("mongodb://u:p/w@h:1/lms").as_deref(),
            Some("lms")
        );
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
