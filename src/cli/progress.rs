//! The progress bar: an indicatif bar on stderr, drawn for the engine's [`ProgressView`] when
//! stderr is a terminal. While it is shown, log lines print above it (see [`super::logging`]).

use crate::engine::backfill::{ProgressShown, ProgressView};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// Draws each backfill as a bar on stderr.
#[derive(Debug, Default)]
pub struct Bar;

impl ProgressView for Bar {
    fn start(&self, label: &str, total: u64, done: u64) -> Box<dyn ProgressShown> {
        let bar = ProgressBar::new(total.max(done));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40.cyan/blue}] {human_pos}/{human_len} ({rate}, ETA {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} docs/s", state.per_sec());
                },
            )
            .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        bar.set_position(done);
        bar.enable_steady_tick(Duration::from_millis(200));
        super::logging::set_progress_bar(Some(bar.clone()));
        Box::new(Shown(Some(bar), label.to_string()))
    }
}

/// The bar of one backfill and its label; abandoned (left as it is) when dropped before it
/// finished.
struct Shown(Option<ProgressBar>, String);

impl ProgressShown for Shown {
    fn update(&mut self, scanned: u64) {
        if let Some(bar) = &self.0 {
            if scanned > bar.length().unwrap_or(0) {
                bar.set_length(scanned);
            }
            bar.set_position(scanned);
        }
    }

    fn message(&mut self, message: &str) {
        if let Some(bar) = &self.0 {
            if message.is_empty() {
                bar.set_message(self.1.clone());
            } else {
                bar.set_message(format!("{} ({message})", self.1));
            }
        }
    }

    fn finish(mut self: Box<Self>) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
            super::logging::set_progress_bar(None);
        }
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.abandon();
            super::logging::set_progress_bar(None);
        }
    }
}
