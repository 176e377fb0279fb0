//! The batch pipeline every large-collection migration runs on:
//!
//! ```text
//! scan (_id ranges) -> transform (server pipeline or Rust per document) -> guarded write
//!      -> checkpoint (in order) -> progress / log
//! ```
//!
//! See [`Backfill`] for how a migration describes its work and [`run`] for the driver loop.

mod before_image;
mod checkpoint;
mod pipeline;
mod progress;
mod retry;
mod scan;
mod spec;
mod throttle;
mod write;

pub use before_image::{restore, RestoreReport, BEFORE_IMAGES};
pub use checkpoint::{Stats, INVALID_SAMPLES};
pub use pipeline::{remaining, run};
pub use progress::PROGRESS_TARGET;
pub use spec::{
    Backfill, Change, DocTransform, FastPath, ServerUpdate, ServerUpdateKind, Transform,
};
pub use write::and;
