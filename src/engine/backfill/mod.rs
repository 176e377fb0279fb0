//! The batch pipeline every large-collection migration runs on:
//!
//! ```text
//! open change stream -> scan (_id ranges) -> transform (server pipeline or Rust per document)
//!      -> guarded write -> checkpoint {position, resume token} (in order) -> progress / log
//!   \-> changed documents behind the scan -> same transform and write
//! end of scan -> drain the stream -> rounds over the candidates until none is left
//! ```
//!
//! See [`Backfill`] for how a migration describes its work and [`run`] for the driver loop.
//! [`FieldBackfill`] (missing fields set on the server) and [`PerDocument`] (a Rust transform
//! per document) are the common cases written once: each is a whole [`crate::Migration`].

mod add_fields;
mod atomic;
mod before_image;
mod catch_up;
mod checkpoint;
mod converge;
mod each;
mod governor;
mod health;
mod missing;
mod owned;
mod per_document;
mod pipeline;
mod progress;
mod readback;
mod restore_atomic;
mod retry;
mod scan;
mod server;
mod settle;
mod spec;
mod throttle;
mod tuning;
mod window;
mod write;

pub(crate) use atomic::end_abandoned;
pub use before_image::{images_summary, restore, ImagesSummary, RestoreReport, BEFORE_IMAGES};
pub use catch_up::{CatchUpMode, MARKS};
pub use checkpoint::{int, CatchUpStats, Stats, INVALID_SAMPLES};
pub use converge::{judged_as_of_convergence, Convergence};
pub use owned::not_moved;
pub use pipeline::{remaining, run, sample_ids};
pub use progress::{ProgressShown, ProgressView, PROGRESS_TARGET};
pub(crate) use retry::is_transient;
pub use spec::{
    Backfill, CatchUp, Change, DocTransform, FastPath, ServerUpdate, ServerUpdateKind, Transform,
};
pub use tuning::{AUTO_BATCH_MAX, AUTO_BATCH_MIN};
pub use write::and;

// The common migrations, each written once on the pipeline.
pub use add_fields::FieldBackfill;
pub use per_document::PerDocument;
