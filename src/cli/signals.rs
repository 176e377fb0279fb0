//! Ctrl-C and SIGTERM: the first stops the run after the work in flight, the second exits at
//! once; either way the operator is told the one command that continues.

use super::exit_codes::exit;
use super::logging::print_err;
use super::redact::redact;
use crate::engine::migration::{Stop, StopReason};

/// The command being run, for the hint that continues it after an interruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Up,
    Rollback,
    Other,
}

/// First Ctrl-C / SIGTERM: stop after the batches in flight. Second: exit at once.
pub(super) fn watch_signals(stop: Stop, kind: Kind) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            wait_for_signal().await;
            count += 1;
            if count == 1 {
                tracing::warn!("stop requested: finishing the batches in flight and saving the checkpoint (Ctrl-C again to abort at once)");
                stop.trigger(StopReason::Signal);
            } else {
                let again = match kind {
                    Kind::Rollback => rerun_command(),
                    _ => resume_command(),
                };
                print_err(format!(
                    "aborted; the work in flight is redone safely by: {again}\n"
                ));
                std::process::exit(exit::INTERRUPTED);
            }
        }
    })
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// The one command that continues an interrupted `up` or `rollback`. An interrupted rollback
/// leaves its migration `rolling back`, and `migrate rollback` run again picks that migration
/// and finishes it (`up --resume` refuses it, and `rollback` has no `--resume`).
pub(super) fn continue_hint(kind: Kind) -> Option<String> {
    match kind {
        Kind::Up => Some(format!("resume with: {}", resume_command())),
        Kind::Rollback => Some(format!("finish the rollback with: {}", rerun_command())),
        Kind::Other => None,
    }
}

/// The command line that was run, as it was (password hidden).
fn rerun_command() -> String {
    let args: Vec<String> = std::env::args().skip(1).map(|arg| redact(&arg)).collect();
    format!("migrate {}", args.join(" "))
}

/// The command line that was run, with `--resume` instead of `--restart`, password hidden.
fn resume_command() -> String {
    let mut args: Vec<String> = Vec::new();
    let mut redact_next = false;
    for arg in std::env::args().skip(1) {
        if redact_next {
            args.push(redact(&arg));
            redact_next = false;
            continue;
        }
        if arg == "--restart" || arg == "--resume" || arg == "--dry-run" {
            continue;
        }
        if arg == "--uri" {
            redact_next = true;
        }
        if let Some(uri) = arg.strip_prefix("--uri=") {
            args.push(format!("--uri={}", redact(uri)));
            continue;
        }
        args.push(arg);
    }
    args.push("--resume".into());
    format!("migrate {}", args.join(" "))
}
