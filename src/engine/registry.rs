//! The compiled-in migrations, in number order, each with the SHA-256 of its source pinned at
//! build time (`build.rs`), so drift is detected without the source files at run time.

use crate::engine::migration::Migration;
use std::sync::Arc;

/// A migration with its identity.
#[derive(Clone)]
pub struct Registered {
    /// The number from the file name (orders the run).
    pub number: u32,
    /// The file name without `.rs`, e.g. `001_add_withdrawal_fields_to_users`: the tracking key.
    pub name: &'static str,
    /// Hex SHA-256 of the source file.
    pub checksum: &'static str,
    /// The migration itself.
    pub migration: Arc<dyn Migration>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("number", &self.number)
            .field("name", &self.name)
            .field("checksum", &self.checksum)
            .finish()
    }
}

#[doc(hidden)]
pub mod generated {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// Every migration in `migrations/`, ordered by number.
pub fn compiled() -> Vec<Registered> {
    generated::compiled()
}
