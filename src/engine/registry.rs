//! The compiled-in migrations, in number order, each with the checksum of its source pinned at
//! build time (`build.rs`), so drift is detected without the source files at run time.

use crate::engine::error::Result;
use crate::engine::migration::{Context, Migration, Outcome};
use async_trait::async_trait;
use std::sync::Arc;

/// A migration with its identity.
#[derive(Clone)]
pub struct Registered {
    /// The number from the file name (orders the run).
    pub number: u32,
    /// The file name without `.rs`, e.g. `001_add_withdrawal_fields_to_users`: the tracking key.
    pub name: &'static str,
    /// Hex SHA-256 of the source file's tokens
    /// ([`checksum`](crate::engine::sources::checksum)): what a run records.
    pub checksum: &'static str,
    /// The other checksums a record may carry for this very source without it being drift
    /// ([`legacy_checksums`](crate::engine::sources::legacy_checksums)): those earlier releases
    /// recorded over its bytes.
    pub legacy: &'static [&'static str],
    /// The source file's module documentation (its `//!` lines): what `migrate show` prints.
    pub doc: &'static str,
    /// The migration itself.
    pub migration: Arc<dyn Migration>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("number", &self.number)
            .field("name", &self.name)
            .field("checksum", &self.checksum)
            .field("legacy", &self.legacy)
            .finish()
    }
}

impl Registered {
    /// Whether a record carrying `recorded` applied this source: today's checksum or a legacy one.
    pub fn accepts(&self, recorded: &str) -> bool {
        recorded == self.checksum || self.legacy.contains(&recorded)
    }
}

/// `migration`, reversible because its source defines `down`.
///
/// The registry (`build.rs`, [`embed_migrations!`](crate::embed_migrations)) wraps every
/// migration whose source file defines `fn down` in this, so rollback runs that `down` even when
/// the migration does not also override [`Migration::reversible`]: a `down` that exists is never
/// reported missing.
pub fn with_down(migration: impl Migration + 'static) -> Arc<dyn Migration> {
    Arc::new(DefinesDown(migration))
}

struct DefinesDown<M>(M);

#[async_trait]
impl<M: Migration> Migration for DefinesDown<M> {
    fn description(&self) -> &'static str {
        self.0.description()
    }
    async fn up(&self, ctx: &Context) -> Result<Outcome> {
        self.0.up(ctx).await
    }
    fn reversible(&self) -> bool {
        true
    }
    async fn down(&self, ctx: &Context) -> Result<Outcome> {
        self.0.down(ctx).await
    }
    async fn verify(&self, ctx: &Context) -> Result<()> {
        self.0.verify(ctx).await
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
