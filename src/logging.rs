//! Logging for the binary: stderr at a level set by `RUST_LOG` or `-v/-q`, and every run appended
//! to `<log dir>/migration.log` so `tail -f logs/migration.log` follows it.
//!
//! Only the binary calls [`init`]; the library just emits `tracing` events. The file is written
//! synchronously (no background buffer) so a `kill -9` loses no line already logged.

use crate::error::{Error, Result};
use indicatif::ProgressBar;
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
    // Fail here, clearly, rather than silently dropping every log line later.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file_path)
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", file_path.display())))?;
    let file = tracing_appender::rolling::never(log_dir, LOG_FILE);

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
            !(meta.target() == crate::backfill::PROGRESS_TARGET
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
        .map_err(|e| Error::Config(format!("cannot install logging: {e}")))
}

/// Writes each stderr line while the progress bar (if any) is hidden, so lines never mix with it.
struct SuspendingStderr;

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
        let emit = || {
            let _ = std::io::stderr().write_all(&self.0);
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
