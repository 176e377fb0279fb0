//! Reading results back for assertions: documents in `_id` order, a run's output, files.

use mongodb::bson::{doc, Document};
use std::path::Path;
use std::process::Output;

pub use mongo_migrate::testing::sorted_by_id;

/// stdout and stderr of a CLI run, for assertions and failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads a whole file, or "" if it does not exist.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The `result` of a tracking record (which must have one).
pub fn result_of(record: &Document) -> &Document {
    record.get_document("result").expect("record has a result")
}

/// A result without its convergence point (`convergedAt`, a moment that differs from run to
/// run), for comparing two runs' counters; the point itself must be there.
pub fn counters_of(result: &Document) -> Document {
    let mut counters = result.clone();
    assert!(
        counters.remove("convergedAt").is_some(),
        "no convergence point in {result}"
    );
    counters
}
