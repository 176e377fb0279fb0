//! The driver loop: scans batches in `_id` order, keeps up to `--concurrency` of them in flight,
//! and checkpoints strictly in scan order, so the checkpoint only ever covers fully written
//! ranges. A stop request ends scanning, drains the batches in flight, and saves the checkpoint.

use super::checkpoint::{from_checkpoint, to_checkpoint, Stats};
use super::progress::Progress;
use super::retry::{is_transient, with_retry};
use super::scan::Position;
use super::spec::{Backfill, Transform};
use super::throttle::Throttle;
use super::write::{and, client_batch, projection, server_batch};
use crate::error::{Error, Result};
use crate::migration::Context;
use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// One scanned batch.
struct Batch {
    docs: Vec<Document>,
    end: Position,
}

/// Runs `spec` to completion (or to a stop), returning its counters.
pub async fn run(ctx: &Context, spec: &Backfill) -> Result<Stats> {
    let options = ctx.options();
    let dry_run = options.dry_run;
    let resumed = if spec.checkpoints {
        ctx.checkpoint().and_then(from_checkpoint)
    } else {
        None
    };
    let (mut position, mut stats) = resumed
        .clone()
        .unwrap_or_else(|| (Position::start(), Stats::default()));
    if resumed.is_some() {
        info!(migration = ctx.name(), scanned = stats.scanned, last_id = ?position.last, "resuming backfill from checkpoint");
    }
    let coll = ctx.db().collection::<Document>(&spec.collection);
    let total = coll.estimated_document_count().await.unwrap_or(0);
    let mut progress = Progress::start(&spec.label, total, stats.scanned, options.progress);
    let mut throttle = Throttle::new(options.max_docs_per_sec);
    let fields = match &spec.transform {
        Transform::Server(_) => Vec::new(),
        Transform::Client(_) => spec.fields.clone(),
    };
    let mut scanner = Scanner {
        coll: coll.clone(),
        candidates: spec.filter.clone(),
        projection: projection(&fields),
        batch_size: options.batch_size.max(1),
        cursor: None,
    };
    let mut inflight = FuturesOrdered::new();
    let mut failure: Option<Error> = None;

    loop {
        while failure.is_none()
            && !position.done()
            && inflight.len() < options.concurrency.max(1)
            && !ctx.stop().is_stopped()
        {
            let delay = throttle.delay();
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.stop().stopped() => break,
                }
            }
            let batch = match scanner.next(ctx, &mut position).await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            throttle.dispatched(batch.docs.len() as u64);
            inflight.push_back(spawn_batch(ctx, spec, batch));
        }
        let Some(joined) = inflight.next().await else {
            break;
        };
        let (end, batch_stats) = match joined {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                // Drain what is in flight (their ranges are redone safely later) and fail.
                failure.get_or_insert(e);
                continue;
            }
            Err(join) => {
                failure.get_or_insert(Error::migration(
                    ctx.name(),
                    format!("a batch task panicked: {join}"),
                ));
                continue;
            }
        };
        if failure.is_some() {
            continue;
        }
        stats.absorb(batch_stats);
        if spec.checkpoints && !dry_run {
            let cp = to_checkpoint(&end, &stats);
            ctx.save_checkpoint(cp).await?;
        }
        debug!(migration = ctx.name(), scanned = stats.scanned, modified = stats.modified, last_id = ?end.last, "batch written");
        progress.update(&stats);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !position.done() {
        progress.finish(&stats);
        return Err(ctx.stop().error());
    }
    progress.finish(&stats);
    Ok(stats)
}

/// Reads candidates in `_id` order through a cursor that is reopened from the current position
/// every few minutes and after any error, so no cursor outlives the server's idle (10 min) or
/// session (30 min) timeouts, and a dropped connection costs one re-query. One cursor per stretch
/// rather than one query per batch: some servers evaluate an open-ended `_id > last` range in
/// full before applying the limit, which would make a query per batch quadratic.
struct Scanner {
    coll: mongodb::Collection<Document>,
    candidates: Document,
    projection: Document,
    batch_size: usize,
    cursor: Option<(mongodb::Cursor<Document>, Instant)>,
}

/// A cursor is reopened after this long, well inside the server's timeouts.
const CURSOR_LIFETIME: Duration = Duration::from_secs(4 * 60);

impl Scanner {
    /// The next batch after `position`, moving through `_id` type brackets as each runs out.
    async fn next(&mut self, ctx: &Context, position: &mut Position) -> Result<Option<Batch>> {
        let mut failures = 0u32;
        while !position.done() {
            if self
                .cursor
                .as_ref()
                .is_none_or(|(_, opened)| opened.elapsed() > CURSOR_LIFETIME)
            {
                let filter = position.filter(&self.candidates);
                let (coll, projection, batch) = (
                    &self.coll,
                    &self.projection,
                    self.batch_size.min(u32::MAX as usize) as u32,
                );
                let cursor = with_retry(&format!("scanning {}", coll.name()), ctx.stop(), || {
                    coll.find(filter.clone())
                        .sort(doc! { "_id": 1 })
                        .projection(projection.clone())
                        .batch_size(batch)
                })
                .await?;
                self.cursor = Some((cursor, Instant::now()));
            }
            let (cursor, _) = self.cursor.as_mut().expect("opened above");
            let mut docs = Vec::with_capacity(self.batch_size);
            let mut exhausted = false;
            while docs.len() < self.batch_size {
                match cursor.try_next().await {
                    Ok(Some(doc)) => docs.push(doc),
                    Ok(None) => {
                        exhausted = true;
                        break;
                    }
                    Err(e) => {
                        // Reopen from the last document handed out; what was read stays valid.
                        self.cursor = None;
                        failures += 1;
                        if !is_transient(&e) && !is_cursor_gone(&e) || failures > 6 {
                            return Err(Error::db(format!("scanning {}", self.coll.name()))(e));
                        }
                        warn!(error = %e, "scan cursor failed; reopening from the last position");
                        tokio::time::sleep(Duration::from_millis(250 * u64::from(failures))).await;
                        break;
                    }
                }
            }
            if exhausted {
                self.cursor = None;
            }
            match docs.last().and_then(|d| d.get("_id")).cloned() {
                Some(last) => {
                    position.advance_to(last);
                    return Ok(Some(Batch {
                        docs,
                        end: position.clone(),
                    }));
                }
                None if exhausted => position.next_bracket(),
                None => {}
            }
        }
        Ok(None)
    }
}

/// CursorNotFound / CursorKilled: the server dropped the cursor (idle timeout, restart).
fn is_cursor_gone(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if matches!(c.code, 43 | 237))
}

type BatchResult = Result<(Position, Stats)>;

fn spawn_batch(
    ctx: &Context,
    spec: &Backfill,
    batch: Batch,
) -> tokio::task::JoinHandle<BatchResult> {
    let ctx = ctx.clone();
    let spec = spec.clone();
    tokio::spawn(async move {
        let options = ctx.options();
        let stats = match &spec.transform {
            Transform::Server(updates) => {
                let ids: Vec<Bson> = batch
                    .docs
                    .iter()
                    .filter_map(|d| d.get("_id").cloned())
                    .collect();
                server_batch(ctx.db(), &spec, updates, &ids, options.dry_run, ctx.stop()).await?
            }
            Transform::Client(transform) => {
                client_batch(
                    ctx.db(),
                    &spec,
                    transform,
                    batch.docs,
                    ctx.name(),
                    options.dry_run,
                    options.fail_on_invalid,
                    ctx.stop(),
                )
                .await?
            }
        };
        Ok((batch.end, stats))
    })
}

/// Candidates of `spec` left in the collection (for post-conditions and dry-run totals).
pub async fn remaining(ctx: &Context, spec: &Backfill, extra: Document) -> Result<u64> {
    let coll = ctx.db().collection::<Document>(&spec.collection);
    let filter = and(vec![spec.filter.clone(), extra]);
    with_retry("counting remaining candidates", ctx.stop(), || {
        coll.count_documents(filter.clone())
    })
    .await
}
