//! Logging for the binary: stderr at a level set by `RUST_LOG` or `-v/-q`, and every run appended
//! to `<log dir>/migration.log` so `tail -f logs/migration.log` follows it.
//!
//! Only the binary calls [`init`]; the library just emits `tracing` events. The file is written
//! synchronously (no background buffer) so a `kill -9` loses no line already logged.
//!
//! Both writers pass every line through [`super::redact::redact`], and so do [`print_out`],
//! [`print_err`] and the panic hook: secrets are hidden where text leaves the process, so no
//! new log line or message can leak one by forgetting to hide it.

use crate::engine::error::{Error, Result};
use indicatif::ProgressBar;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Name of the log file inside the log directory.
pub const LOG_FILE: &str = "migration.log";

static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);
static BAR_SHOWN: AtomicBool = AtomicBool::new(false);

/// Registers the progress bar that stderr log lines must not tear (they print above it). While
/// it is shown, progress lines go to the log file only: the bar already says the same.
pub fn set_progress_bar(bar: Option<ProgressBar>) {
    BAR_SHOWN.store(bar.is_some(), Ordering::Relaxed);
    *ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Installs the global subscriber. `verbosity` is `-v` count minus `-q` count.
pub fn init(log_dir: &Path, verbosity: i8) -> Result<()> {
    std::fs::create_dir_all(log_dir).map_err(|e| {
        Error::Config(format!(
            "cannot create log directory {}: {e} (set --log-dir or MIGRATE_LOG_DIR)",
            log_dir.display()
        ))
    })?;
    let file_path = log_dir.join(LOG_FILE);
    // Fail here, clearly, rather than silently dropping every log line later. Appending makes
    // each line one write at the end of the file, even with several runs logging at once.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file_path)
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", file_path.display())))?;
    let file = RedactingFile(Mutex::new(file));

    let stderr_level = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let stderr_filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(format!("warn,mongo_migrate={stderr_level}")),
    };
    let file_level = if verbosity > 0 { "debug" } else { "info" };
    let file_filter = EnvFilter::new(format!("warn,mongo_migrate={file_level}"));

    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(SuspendingStderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(stderr_filter.and(filter_fn(|meta| {
            !(meta.target() == crate::engine::backfill::PROGRESS_TARGET
                && BAR_SHOWN.load(Ordering::Relaxed))
        })));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_writer(file)
        .with_ansi(false)
        .with_target(false)
        .with_filter(file_filter);
    tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init()
        .map_err(|e| Error::Config(format!("cannot install logging: {e}")))?;
    install_panic_hook();
    Ok(())
}

/// Prints a line on stdout with its secrets hidden.
pub fn print_out(text: impl AsRef<str>) {
    let mut out = super::redact::redact(text.as_ref());
    out.push('\n');
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}

/// Prints on stderr (above the progress bar, if any) with its secrets hidden; no newline added.
pub fn print_err(text: impl AsRef<str>) {
    drop(LineBuffer(text.as_ref().as_bytes().to_vec()));
}

thread_local! {
    static IN_PANIC_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Reports panics through the log (both writers, so also the file) instead of the default hook,
/// whose raw message could carry a secret. A panic inside logging itself falls back to stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let message = format!("thread '{}' {info}", thread.name().unwrap_or("<unnamed>"));
        if IN_PANIC_HOOK.with(|flag| flag.replace(true)) {
            print_err(format!("{message}\n"));
            return;
        }
        tracing::error!("{message}");
        IN_PANIC_HOOK.with(|flag| flag.set(false));
    }));
}

/// Writes each stderr line while the progress bar (if any) is hidden, so lines never mix with it.
struct SuspendingStderr;

/// The log file; each event is one redacted write.
struct RedactingFile(Mutex<File>);

/// One event's text for the log file, written (redacted) when the event is complete.
struct FileLine<'a> {
    buf: Vec<u8>,
    file: &'a Mutex<File>,
}

impl Write for FileLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for FileLine<'_> {
    fn drop(&mut self) {
        let text = super::redact::redact(&String::from_utf8_lossy(&self.buf));
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = file.write_all(text.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for RedactingFile {
    type Writer = FileLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        FileLine {
            buf: Vec::with_capacity(256),
            file: &self.0,
        }
    }
}

struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let bar = ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let text = super::redact::redact(&String::from_utf8_lossy(&self.0));
        let emit = || {
            let _ = std::io::stderr().write_all(text.as_bytes());
        };
        match bar {
            Some(bar) => bar.suspend(emit),
            None => emit(),
        }
    }
}

impl<'a> MakeWriter<'a> for SuspendingStderr {
    type Writer = LineBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer(Vec::with_capacity(128))
    }
}
