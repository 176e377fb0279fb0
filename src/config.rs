//! Where to connect and where to log: flags, then the environment, then a `.env` file.
//!
//! Flags and environment variables are merged by clap (`env = ...`); this module adds the `.env`
//! file as the last source, validates the result and connects with short timeouts so a wrong
//! target fails in seconds rather than hanging.

use crate::error::{driver_error_summary, Error, Result};
use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
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

/// Secrets of the connection string in use, hidden wherever they appear, even out of a URI.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Secrets shorter than this are only hidden where their shape shows them (a URI's user-info, a
/// sensitive option): hiding every occurrence of two letters would garble all output.
const MIN_LOOSE_SECRET: usize = 3;

/// Remembers the password and sensitive option values of `uri`, so [`redact`] hides them
/// anywhere in a text, even where a driver message quotes them out of their URI.
pub fn register_secrets(uri: &str) {
    let mut found = Vec::new();
    for span in secret_spans(uri) {
        found.push(uri[span].to_string());
    }
    // Without a scheme the URI-shape scan finds nothing; its user-info is still a secret.
    if let Some(at) = uri.rfind('@') {
        let userinfo = uri[..at].rsplit("//").next().unwrap_or(&uri[..at]);
        if let Some((_, password)) = userinfo.split_once(':') {
            found.push(password.to_string());
        }
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for secret in found {
        for form in [percent_decode(&secret), secret] {
            if form.len() >= MIN_LOOSE_SECRET && form != "***" && !secrets.contains(&form) {
                secrets.push(form);
            }
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every secret replaced by `***`: the password (user-info) of anything that looks
/// like a URI (`scheme://`, `scheme:/`, `mongodb:`), the value of every sensitive option
/// (`tlsCertificateKeyFilePassword=`, `authMechanismProperties=`, any `...password=`,
/// `...secret=`, `...token=`), and every secret registered by [`register_secrets`]. The user
/// name stays, so `mongodb://admin:pw@h/db` reads `mongodb://admin:***@h/db`. Output and log
/// writers pass everything through it.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for span in secret_spans(text) {
        out.push_str(&text[last..span.start]);
        out.push_str("***");
        last = span.end;
    }
    out.push_str(&text[last..]);
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// Where a token of free text ends: a URI or an option value never spans these.
fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')
}

/// Byte ranges of the secrets in `text`, in order and disjoint.
fn secret_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = user_info_spans(text);
    spans.extend(option_value_spans(text));
    spans.sort_by_key(|s| s.start);
    let mut merged: Vec<std::ops::Range<usize>> = Vec::new();
    for span in spans {
        match merged.last_mut() {
            Some(prev) if span.start <= prev.end => prev.end = prev.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

/// The password part of the user-info of every URI-like token. The user-info runs to the
/// token's last `@`, so a password holding `/`, `?` or `@` is still hidden whole (at worst a
/// query value holding `@` hides a little more than needed).
fn user_info_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(colon) = text[from..].find(':').map(|i| from + i) {
        from = colon + 1;
        let scheme_start = text[..colon]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_scheme_char(*c))
            .last()
            .map(|(i, _)| i)
            .unwrap_or(colon);
        let scheme = &text[scheme_start..colon];
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let after = &text[colon + 1..];
        let slashes = after.len() - after.trim_start_matches('/').len();
        if slashes == 0 && !scheme.to_ascii_lowercase().starts_with("mongodb") {
            continue;
        }
        let start = colon + 1 + slashes;
        let end = text[start..]
            .find(ends_token)
            .map_or(text.len(), |i| start + i);
        from = end.max(from);
        let token = &text[start..end];
        let Some(at) = token.rfind('@') else {
            continue;
        };
        let Some(sep) = token[..at].find(':') else {
            continue; // a user name alone, no password
        };
        if &token[sep + 1..at] != "***" {
            spans.push(start + sep + 1..start + at);
        }
    }
    spans
}

/// An option whose value is a secret (URI options are case-insensitive).
fn is_sensitive_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "authmechanismproperties"
        || key == "pwd"
        || ["password", "passwd", "secret", "token", "credential"]
            .iter()
            .any(|s| key.contains(s))
}

/// The values of `key=value` pairs whose key is sensitive, up to `&` or the token's end.
fn option_value_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    for (eq, _) in text.match_indices('=') {
        let key_start = text[..eq]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
            .last()
            .map_or(eq, |(i, _)| i);
        if !is_sensitive_option(&text[key_start..eq]) {
            continue;
        }
        let start = eq + 1;
        let end = text[start..]
            .find(|c: char| c == '&' || ends_token(c))
            .map_or(text.len(), |i| start + i);
        if start < end && &text[start..end] != "***" {
            spans.push(start..end);
        }
    }
    spans
}

/// `%XX` escapes decoded, as the driver sees a URI's password (invalid escapes kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn redact_hides_passwords_of_every_uri_shape_inside_any_text() {
        let cases = [
            // A scheme typo: one slash.
            (
                "MONGODB_URI mongodb:/u:pw1@127.0.0.1:27017/db is bad",
                "MONGODB_URI mongodb:/u:***@127.0.0.1:27017/db is bad",
            ),
            // No slash at all.
            ("uri=mongodb:u:pw2@h/db", "uri=mongodb:u:***@h/db"),
            // A password holding `/`, `?` and `@`.
            (
                "cannot connect to mongodb://admin:se/c?r@t@host/db: refused",
                "cannot connect to mongodb://admin:***@host/db: refused",
            ),
            // Another scheme, quoted, two URIs in one line.
            (
                r#"a "http://x:pw3@h/" and 'mongodb://y:pw4@h2'"#,
                r#"a "http://x:***@h/" and 'mongodb://y:***@h2'"#,
            ),
            // A user name alone has no password to hide.
            ("mongodb://x509user@h/db", "mongodb://x509user@h/db"),
            // Host and port are not user-info.
            ("mongodb://h:27017/db", "mongodb://h:27017/db"),
            (
                "at 127.0.0.1:27017 and localhost:1",
                "at 127.0.0.1:27017 and localhost:1",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn redact_hides_sensitive_options_in_and_out_of_uris() {
        assert_eq!(
            redact("mongodb://h/db?tls=true&tlsCertificateKeyFilePassword=pw5&appName=x"),
            "mongodb://h/db?tls=true&tlsCertificateKeyFilePassword=***&appName=x"
        );
        assert_eq!(
            redact("mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok6,SERVICE_NAME:s"),
            "mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=***"
        );
        assert_eq!(
            redact("TLSCERTIFICATEKEYFILEPASSWORD=pw7 proxyPassword=pw8 sslPEMKeyPassword=pw9"),
            "TLSCERTIFICATEKEYFILEPASSWORD=*** proxyPassword=*** sslPEMKeyPassword=***"
        );
        assert_eq!(redact("batchSize=7 tls=true"), "batchSize=7 tls=true");
    }

    #[test]
    fn redact_is_idempotent() {
        let once = redact("mongodb://u:pw10@h/db?tlsCertificateKeyFilePassword=pw11");
        assert_eq!(redact(&once), once);
        assert_eq!(
            once,
            "mongodb://u:***@h/db?tlsCertificateKeyFilePassword=***"
        );
    }

    #[test]
    fn registered_secrets_are_hidden_wherever_they_appear() {
        register_secrets("mongodb://u:Reg%2FPw12@h/db?tlsCertificateKeyFilePassword=RegPw13");
        assert_eq!(
            redact("auth failed for Reg/Pw12 and Reg%2FPw12; key RegPw13"),
            "auth failed for *** and ***; key ***"
        );
        // Without a scheme the user-info is still known to be a secret.
        register_secrets("u:RegPw14@h/db");
        assert_eq!(redact("got u:RegPw14@h/db"), "got u:***@h/db");
    }

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
