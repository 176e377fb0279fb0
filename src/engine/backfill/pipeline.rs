//! The driver loop: scans batches in `_id` order, keeps up to `--concurrency` of them in flight,
//! and checkpoints strictly in scan order, so the checkpoint only ever covers fully written
//! ranges. A stop request ends scanning, drains the batches in flight, and saves the checkpoint.

use super::atomic::{self, Transactions};
use super::catch_up::{
    pipeline, pipeline_except, removals_cover, token_from_bson, token_to_bson, CatchUpMode, Taken,
    Unavailable, Watcher,
};
use super::checkpoint::{from_checkpoint, marked, to_checkpoint, Stats};
use super::governor::{Governor, Wait};
use super::missing::set_if_missing;
use super::progress::Progress;
use super::retry::{is_transient, with_retry};
use super::scan::{Bracket, Position, BRACKETS};
use super::server::{server_batch, Scope};
use super::settle::{process_ids, rounds};
use super::spec::{Backfill, CatchUp, Transform};
use super::window::{self, Windows};
use super::write::{and, client_batch, projection};
use crate::engine::error::{Error, Result};
use crate::engine::migration::Context;
use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// One scanned batch.
struct Batch {
    docs: Vec<Document>,
    end: Position,
}

/// A finished piece of work, in dispatch order.
enum Done {
    /// A scan batch of `docs` documents, written up to `end` in `took`.
    Scan(Position, Stats, usize, Duration),
    /// Catch-up of changed documents; `token` covers every event behind them.
    CatchUp(Option<Bson>, Stats),
}

/// Catch-up ids are taken from the stream at most this often while scanning (they pile up in
/// between, so each catch-up is one batch rather than many tiny ones).
const CATCH_UP_EVERY: Duration = Duration::from_millis(500);

/// Runs `spec` to completion (or to a stop), returning its counters.
pub async fn run(ctx: &Context, spec: &Backfill) -> Result<Stats> {
    let options = ctx.options();
    let dry_run = options.dry_run;
    let saved = ctx.checkpoint().filter(|_| spec.checkpoints);
    let resumed = saved.and_then(from_checkpoint);
    // A fresh backfill, or one whose interrupted stream reported everything it must.
    let covered_so_far = resumed
        .as_ref()
        .is_none_or(|r| r.stream_complete && r.token.is_some());
    let (mut position, mut stats, saved_token) = match resumed {
        Some(r) => {
            info!(migration = ctx.name(), scanned = r.stats.scanned, last_id = %crate::engine::bson_ext::show(r.position.last.as_ref()), "resuming backfill from checkpoint");
            (r.position, r.stats, r.token)
        }
        None => (Position::start(), Stats::default(), None),
    };
    let coll = ctx.db().collection::<Document>(&spec.collection);
    if spec.before_images && !dry_run {
        super::before_image::align_clock(ctx.db()).await;
        spec.run.start(super::before_image::chunk_time());
        // Entries left by an earlier attempt (failed, interrupted, or rolled back part-way) mean
        // the documents ahead may be this migration's already, or the application's since.
        let images = ctx.db().collection::<Document>(super::BEFORE_IMAGES);
        let earlier = with_retry("reading before-images", ctx.stop(), || {
            images
                .find_one(doc! { "migration": ctx.name() })
                .projection(doc! { "_id": 1 })
        })
        .await?;
        if earlier.is_some() {
            super::owned::settle_earlier(ctx.db(), spec, ctx.name(), ctx.stop()).await?;
            spec.run.owning_some();
            // Only a stream resumed from the earlier attempt's token reports what changed since.
            if saved_token.is_none() {
                spec.run
                    .revisit_owned
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
    }
    // Read before anything else: the change stream reports every write after it, and batch
    // transactions read no snapshot before it.
    let begun = super::catch_up::cluster_time(ctx.db()).await;
    let transactions = Transactions::default();
    // Batches written in transactions read their range's candidates themselves, so the scan
    // reads bare `_id`s of every document: such a cursor opens at a fraction of the cost of one
    // the server must filter first, and the filter is evaluated once, by the transaction.
    let ids_only = atomic::applies(spec, dry_run, options.transactions)
        && atomic::probe(ctx.db(), &transactions, options.concurrency, ctx.stop()).await;
    if let (true, Some(begun)) = (ids_only, begun) {
        transactions.read_after(begun).await;
    }
    // Opened before the scan reads anything, so no write after the scan's first read is missed.
    let catch_up = spec
        .catch_up
        .as_ref()
        .filter(|_| options.catch_up != CatchUpMode::Off);
    // With every batch in a transaction, the stream reports every write but the batches' own
    // (which run in the sessions made up front: without them, their writes cannot be told apart).
    let except = Some(transactions.session_ids())
        .filter(|own| ids_only && !own.is_empty())
        .map(|mut sessions| {
            sessions.extend(saved.map(atomic::sessions_in).unwrap_or_default());
            sessions
        });
    let mut watcher = match (catch_up, dry_run) {
        (Some(catch_up), false) => {
            open_watcher(
                ctx,
                spec,
                catch_up,
                saved_token.as_ref(),
                begun,
                except.clone(),
                &mut stats,
            )
            .await
        }
        _ => None,
    };
    // Whether the stream has reported, since the backfill began, every write that can make a
    // document a candidate: then nothing can be left behind the scan that the stream did not
    // name, and one look over the candidates checks that instead of rounds (see `rounds`).
    let mut stream_complete = covered_so_far
        && watcher.is_some()
        && catch_up.is_some_and(|c| except.is_some() || removals_cover(&spec.filter, &c.removed));
    let tagged = |checkpoint, complete| marked(transactions.tagged(checkpoint), complete);
    let mut token = watcher.as_ref().and(saved_token);
    if ids_only && spec.checkpoints {
        // The sessions are on record before any transaction opens, for a resume to end them.
        ctx.save_checkpoint(tagged(
            to_checkpoint(&position, &stats, token.as_ref()),
            stream_complete,
        ))
        .await?;
    }
    let total = coll.estimated_document_count().await.unwrap_or(0);
    let view = options
        .progress_view
        .as_deref()
        .filter(|_| options.progress);
    let mut progress = Progress::start(&spec.label, total, stats.scanned, view);
    let mut governor = Governor::new(ctx);
    let fields = match &spec.transform {
        // Fields set where missing are read, so each document is written once (see `missing`).
        Transform::Server(updates) => set_if_missing(updates)
            .map(|f| f.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default(),
        Transform::Client(_) => spec.fields.clone(),
    };
    let mut scanner = Scanner {
        coll: coll.clone(),
        candidates: if ids_only {
            Document::new()
        } else {
            spec.filter.clone()
        },
        projection: if ids_only {
            doc! { "_id": 1 }
        } else {
            projection(&fields)
        },
        batch_size: governor.batch_size(),
        ids_only,
        cursor: None,
        windows: None,
        ahead: VecDeque::new(),
        read_to: None,
        read_whole: false,
        windowless: false,
    };
    let mut written = position.clone();
    let mut inflight = FuturesOrdered::new();
    let mut failure: Option<Error> = None;
    let mut last_take = Instant::now();
    let mut catching_up = false;

    loop {
        while failure.is_none()
            && !position.done()
            && inflight.len() < options.concurrency.max(1)
            && !ctx.stop().is_stopped()
        {
            if let Some(why) = watcher.as_ref().and_then(|w| {
                (w.unusable().map(|why| (LOST_TOKEN, why)))
                    .or(w.failed().map(|why| (LOST_STREAM, why)))
            }) {
                lost_stream(
                    ctx,
                    why,
                    &mut stats,
                    &mut watcher,
                    &mut token,
                    &mut stream_complete,
                );
            }
            // One catch-up at a time: two writing the same document at once would each see the
            // other's write under way, and the ids taken in between pile up into one batch.
            if let Some(w) = watcher
                .as_ref()
                .filter(|_| !catching_up && last_take.elapsed() >= CATCH_UP_EVERY)
            {
                last_take = Instant::now();
                catching_up = true;
                match w.take() {
                    Ok(taken) => {
                        // Documents ahead of the scan are caught up too: the scan's cursor may
                        // already hold them as they were (some servers evaluate a cursor's whole
                        // result when it opens), and an unchanged document is not re-checked
                        // at write time. The guards make the second look harmless.
                        inflight.push_back(spawn_catch_up(ctx, spec, taken));
                        continue;
                    }
                    Err(e) => {
                        catching_up = false;
                        lost_stream(
                            ctx,
                            (LOST_STREAM, e.to_string()),
                            &mut stats,
                            &mut watcher,
                            &mut token,
                            &mut stream_complete,
                        );
                        continue;
                    }
                }
            }
            let wait = governor.before_dispatch(ctx, &mut progress).await;
            if governor.take_changed() && !dry_run {
                let live =
                    progress.record(&stats, governor.batch_size(), &governor.view(), ctx.actor());
                ctx.save_progress(None, live).await?;
            }
            match wait {
                Wait::Go => {}
                // Held by the cluster's health: write what is in flight meanwhile.
                Wait::Held(_) if !inflight.is_empty() => break,
                Wait::Held(delay) | Wait::Pace(delay) => {
                    let held = matches!(wait, Wait::Held(_));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = ctx.stop().stopped() => break,
                    }
                    if held {
                        continue;
                    }
                }
            }
            scanner.batch_size = governor.batch_size();
            let batch = match scanner.next(ctx, &mut position).await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            governor.dispatched(batch.docs.len());
            let live = watcher.as_ref().is_some_and(|w| w.live_within(LIVE_WINDOW));
            inflight.push_back(spawn_batch(
                ctx,
                spec,
                batch,
                live,
                ids_only.then_some(&transactions),
            ));
        }
        let Some(joined) = inflight.next().await else {
            break;
        };
        let done = match joined {
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
        match done {
            Done::Scan(end, batch_stats, docs, took) => {
                stats.absorb(batch_stats);
                written = end;
                governor.batch_done(ctx, docs, took);
            }
            Done::CatchUp(covered, batch_stats) => {
                catching_up = false;
                stats.absorb_catch_up(batch_stats);
                token = covered.or(token);
            }
        }
        if let Some(w) = &watcher {
            stats.catch_up.events = stats.catch_up.events.max(w.events());
        }
        if !dry_run {
            // The checkpoint and the live progress in one write.
            let checkpoint = spec.checkpoints.then(|| {
                tagged(
                    to_checkpoint(&written, &stats, token.as_ref()),
                    stream_complete,
                )
            });
            let live =
                progress.record(&stats, governor.batch_size(), &governor.view(), ctx.actor());
            ctx.save_progress(checkpoint, live).await?;
        }
        debug!(migration = ctx.name(), scanned = stats.scanned, modified = stats.modified, last_id = %crate::engine::bson_ext::show(written.last.as_ref()), "batch written");
        progress.update(&stats);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !position.done() {
        progress.finish(&stats);
        return Err(ctx.stop().error());
    }
    let unusable = match &watcher {
        Some(w) => match w.opened().await {
            Err(Unavailable(why)) => Some((LOST_TOKEN, why)),
            Ok(()) => w.failed().map(|why| (LOST_STREAM, why)),
        },
        None => None,
    };
    if let Some(why) = unusable {
        lost_stream(
            ctx,
            why,
            &mut stats,
            &mut watcher,
            &mut token,
            &mut stream_complete,
        );
    }
    if spec.checkpoints && !dry_run {
        ctx.save_checkpoint(tagged(
            to_checkpoint(&position, &stats, token.as_ref()),
            stream_complete,
        ))
        .await?;
    }
    if let (Some(catch_up), false) = (catch_up, dry_run) {
        info!(migration = ctx.name(), scanned = stats.scanned, mode = %stats.catch_up.mode, "scan finished; catching up with concurrent writes");
        // The stream is drained once, by the first round after its check over the candidates
        // (up to the cluster time after the check, so every event up to the scan's end is
        // included): a drain before the check as well would cost a second wait for the stream on
        // a quiet collection and find nothing the round does not.
        let result = rounds(
            ctx,
            spec,
            catch_up,
            watcher.as_ref().map(|w| (w, stream_complete)),
            &mut stats,
            &position,
            token.clone(),
        )
        .await;
        if ctx.stop().is_stopped() {
            progress.finish(&stats);
            return Err(ctx.stop().error());
        }
        result?;
        if let Some((cluster_time, wall_time)) = stats.converged {
            // The stream goes on reading for the post-condition, which is judged as of then.
            ctx.set_convergence(super::converge::Convergence {
                cluster_time,
                wall_time,
                watcher: watcher.take(),
            });
        }
        info!(
            migration = ctx.name(),
            mode = %stats.catch_up.mode,
            events = stats.catch_up.events,
            caught_up = stats.catch_up.modified,
            rounds = stats.catch_up.rounds,
            "caught up with concurrent writes"
        );
    }
    progress.finish(&stats);
    Ok(stats)
}

/// Opens the change stream, from the saved token when resuming; `None` (catch-up by passes)
/// when the deployment has none, the token has left the oplog, or passes were asked for.
async fn open_watcher(
    ctx: &Context,
    spec: &Backfill,
    catch_up: &CatchUp,
    saved: Option<&Bson>,
    begun: Option<mongodb::bson::Timestamp>,
    except: Option<Vec<Bson>>,
    stats: &mut Stats,
) -> Option<Watcher> {
    if ctx.options().catch_up == CatchUpMode::Passes {
        info!(
            migration = ctx.name(),
            "catch-up by passes over the candidates (as asked)"
        );
        stats.catch_up.mode = PASSES.into();
        return None;
    }
    let coll = ctx.db().collection::<Document>(&spec.collection);
    let token = saved.and_then(token_from_bson);
    let events = match except {
        Some(sessions) => pipeline_except(sessions),
        None => {
            let mut removed = catch_up.removed.clone();
            removed.extend(catch_up.updated.iter().cloned());
            pipeline(&catch_up.updated, &removed)
        }
    };
    if let Some(token) = token {
        // Whether the token can still be used is known once the stream is open; until then the
        // scan goes on (see `Watcher::resume`), and `lost_stream` switches to passes if not.
        stats.catch_up.mode = STREAM.into();
        return Some(Watcher::resume(
            &coll,
            events,
            token,
            ctx.name().to_string(),
        ));
    }
    match Watcher::open(&coll, events, begun).await {
        Ok(w) => {
            info!(migration = ctx.name(), "change stream opened for catch-up");
            stats.catch_up.mode = STREAM.into();
            Some(w)
        }
        Err(Unavailable(why)) => {
            warn!(migration = ctx.name(), reason = %why, "no change stream on this deployment; catching up by passes over the candidates after the scan");
            stats.catch_up.mode = PASSES.into();
            None
        }
    }
}

/// The stream cannot be used any more: a stream resumed in the background could not use the
/// saved token (it has left the oplog), or a running stream failed and could not be opened again
/// from its token (a restarted server that kept no history). Catch-up goes by passes over the
/// candidates and the documents written after the scan, as when the stream cannot be opened at
/// all, and checkpoints from now on carry no token and do not count on the stream (`run`'s
/// watcher, token and stream-complete flag). The run goes on: losing the stream costs passes,
/// never the migration.
fn lost_stream(
    ctx: &Context,
    (message, why): (&str, String),
    stats: &mut Stats,
    watcher: &mut Option<Watcher>,
    token: &mut Option<Bson>,
    stream_complete: &mut bool,
) {
    warn!(migration = ctx.name(), reason = %why, "{message}");
    stats.catch_up.mode = PASSES.into();
    (*watcher, *token, *stream_complete) = (None, None, false);
}

const LOST_TOKEN: &str =
    "the saved resume token cannot be used; catching up by passes over the candidates after the scan";
pub(super) const LOST_STREAM: &str = "the change stream stopped and could not be opened again from its token; catching up by passes over the candidates and the written documents after the scan";
const STREAM: &str = "change stream";
const PASSES: &str = "passes";

/// Reads candidates in `_id` order through a cursor that is reopened from the current position
/// every few minutes and after any error, so no cursor outlives the server's idle (10 min) or
/// session (30 min) timeouts, and a dropped connection costs one re-query. One cursor per stretch
/// rather than one query per batch: some servers evaluate an open-ended `_id > last` range in
/// full before applying the limit, which would make a query per batch quadratic.
///
/// ObjectId `_id`s are read in bounded windows instead (see `window`): a server that evaluates a
/// cursor's whole result when it opens would otherwise hold the first batch back for as long as
/// reading the whole collection takes.
struct Scanner {
    coll: mongodb::Collection<Document>,
    candidates: Document,
    projection: Document,
    batch_size: usize,
    /// Whether the scan reads bare `_id`s (windows then hold more of them).
    ids_only: bool,
    cursor: Option<(mongodb::Cursor<Document>, Instant)>,
    windows: Option<Windows>,
    /// Candidates the windows read that no batch has taken yet.
    ahead: VecDeque<Document>,
    /// Where the windows have read up to (inclusive); `None` before the first window.
    read_to: Option<u128>,
    /// Whether the windows have read the whole bracket.
    read_whole: bool,
    /// Whether the cursor reads the ObjectId bracket after all.
    windowless: bool,
}

/// A cursor is reopened after this long, well inside the server's timeouts.
const CURSOR_LIFETIME: Duration = Duration::from_secs(4 * 60);

impl Scanner {
    /// The next batch after `position`, moving through `_id` type brackets as each runs out.
    async fn next(&mut self, ctx: &Context, position: &mut Position) -> Result<Option<Batch>> {
        let mut failures = 0u32;
        while !position.done() {
            if BRACKETS[position.bracket] == Bracket::ObjectId && !self.windowless {
                match self.windowed(ctx, position).await? {
                    Some(batch) => return Ok(Some(batch)),
                    None => continue,
                }
            }
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
            // A bracket selected by type or equality is read whole (it holds at most two
            // documents), because the position moves past it after one batch.
            let whole = BRACKETS[position.bracket].single_batch();
            while whole || docs.len() < self.batch_size {
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

    /// The next batch of the ObjectId bracket, read in windows; `None` when the bracket is done
    /// (the position then stands at the next one). Batches are whole however the windows fall:
    /// a short one would mislead the batch-size tuner.
    async fn windowed(&mut self, ctx: &Context, position: &mut Position) -> Result<Option<Batch>> {
        if self.windows.is_none() {
            let last = match &position.last {
                None => None,
                Some(Bson::ObjectId(id)) => Some(window::to_int(id)),
                // Not an ObjectId (a checkpoint written otherwise): no window starts there, and
                // the cursor reads the bracket.
                Some(_) => {
                    self.windowless = true;
                    return Ok(None);
                }
            };
            let pivot = match last {
                None => pivot(ctx, &self.coll).await?,
                Some(_) => None,
            };
            self.windows = Some(Windows::new(pivot));
            self.read_to = last;
        }
        let batch_size = self.batch_size.max(1);
        while self.ahead.len() < batch_size && !self.read_whole {
            self.read_window(ctx, batch_size).await?;
        }
        if self.ahead.is_empty() {
            position.next_bracket();
            return Ok(None);
        }
        let take = batch_size.min(self.ahead.len());
        let docs: Vec<Document> = self.ahead.drain(..take).collect();
        let last = docs
            .last()
            .and_then(|d| d.get("_id"))
            .cloned()
            .expect("a window holds documents with ids");
        position.advance_to(last);
        if self.ahead.is_empty() {
            if self.read_whole {
                position.next_bracket();
            } else if let Some(read_to) = self.read_to {
                // Every candidate up to there was read, and is now handed out.
                position.last = Some(Bson::ObjectId(window::from_int(read_to)));
            }
        }
        Ok(Some(Batch {
            docs,
            end: position.clone(),
        }))
    }

    /// Reads the next window into `ahead`.
    async fn read_window(&mut self, ctx: &Context, batch_size: usize) -> Result<()> {
        let windows = self.windows.as_mut().expect("made before reading");
        let window = windows.next(self.read_to);
        // Bare `_id`s are small: a window holds two batches' worth and reads at most four. Whole
        // documents: at most one batch, so no more is held than a cursor's batch and the batch
        // being filled.
        let (target, limit) = if self.ids_only {
            (2 * batch_size, 4 * batch_size)
        } else {
            (batch_size.div_ceil(2), batch_size)
        };
        let filter = if self.candidates.is_empty() {
            window.filter.clone()
        } else {
            and(vec![window.filter.clone(), self.candidates.clone()])
        };
        let (coll, projection) = (&self.coll, &self.projection);
        let t0 = Instant::now();
        let docs: Vec<Document> =
            with_retry(&format!("scanning {}", coll.name()), ctx.stop(), || async {
                coll.find(filter.clone())
                    .sort(doc! { "_id": 1 })
                    .projection(projection.clone())
                    .limit(limit as i64)
                    .batch_size(limit.min(u32::MAX as usize) as u32)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        let truncated = docs.len() >= limit;
        let last_found = docs
            .last()
            .and_then(|d| d.get_object_id("_id").ok())
            .map(|id| window::to_int(&id));
        windows.observe(&window, docs.len(), last_found, truncated, target);
        tracing::trace!(found = docs.len(), truncated, hi = %window.hi.map_or("open".to_string(), |hi| hi.to_string()), ms = t0.elapsed().as_millis() as u64, "scan window read");
        match (truncated, window.hi) {
            (true, _) => self.read_to = last_found,
            (false, Some(hi)) => self.read_to = Some(hi),
            (false, None) => self.read_whole = true,
        }
        self.ahead.extend(docs);
        Ok(())
    }
}

/// Where the first window of a scan from the start ends: the `_id` of the first document in
/// natural order, when it is an ObjectId. Natural order is insertion order on most collections,
/// so few documents lie below it; where many do, the first window costs what one cursor over
/// them would.
async fn pivot(ctx: &Context, coll: &mongodb::Collection<Document>) -> Result<Option<u128>> {
    let first = with_retry(&format!("scanning {}", coll.name()), ctx.stop(), || {
        coll.find_one(doc! {}).projection(doc! { "_id": 1 })
    })
    .await?;
    Ok(first
        .and_then(|d| d.get_object_id("_id").ok())
        .map(|id| window::to_int(&id)))
}

/// CursorNotFound / CursorKilled: the server dropped the cursor (idle timeout, restart).
fn is_cursor_gone(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if matches!(c.code, 43 | 237))
}

type BatchResult = Result<Done>;

fn spawn_catch_up(
    ctx: &Context,
    spec: &Backfill,
    taken: Taken,
) -> tokio::task::JoinHandle<BatchResult> {
    let ctx = ctx.clone();
    let spec = spec.clone();
    tokio::spawn(async move {
        let token = taken.token.as_ref().and_then(token_to_bson);
        let stats = process_ids(&ctx, &spec, taken.ids).await?;
        Ok(Done::CatchUp(token, stats))
    })
}

/// While the application wrote within this window, batches are written document by document,
/// each guarded on every field read, instead of by the server-side fast path (which computes from
/// the document as it is at write time, and cannot be guarded on each document's inputs cheaply):
/// exact before-images then cost one statement per document.
const LIVE_WINDOW: Duration = Duration::from_secs(5);

fn spawn_batch(
    ctx: &Context,
    spec: &Backfill,
    batch: Batch,
    live: bool,
    transactions: Option<&Transactions>,
) -> tokio::task::JoinHandle<BatchResult> {
    let ctx = ctx.clone();
    // A transaction keeps the fast path exact while the application writes.
    let transactions = transactions.cloned();
    let spec = if live && transactions.is_none() {
        spec.while_live()
    } else {
        spec.clone()
    };
    tokio::spawn(async move {
        let options = ctx.options();
        let (docs, started) = (batch.docs.len(), Instant::now());
        let stats = match &spec.transform {
            Transform::Server(updates) => {
                server_batch(
                    ctx.db(),
                    &spec,
                    updates,
                    Scope::Range(&batch.docs),
                    options.dry_run,
                    ctx.stop(),
                )
                .await?
            }
            Transform::Client(transform) => {
                let written = match &transactions {
                    Some(transactions) => {
                        atomic::transaction_batch(
                            ctx.db(),
                            &spec,
                            transform,
                            &batch.docs,
                            transactions,
                            ctx.name(),
                            options.fail_on_invalid,
                            ctx.stop(),
                        )
                        .await?
                    }
                    None => None,
                };
                match written {
                    Some(stats) => stats,
                    None => {
                        let docs = match transactions {
                            // The scan read bare `_id`s: the guarded path needs the fields.
                            Some(_) => {
                                atomic::read_range(ctx.db(), &spec, &batch.docs, ctx.stop()).await?
                            }
                            None => batch.docs,
                        };
                        // Live: the guarded path writes document by document.
                        let spec = if live {
                            spec.while_live()
                        } else {
                            spec.clone()
                        };
                        client_batch(
                            ctx.db(),
                            &spec,
                            transform,
                            docs,
                            ctx.name(),
                            options.dry_run,
                            options.fail_on_invalid,
                            ctx.stop(),
                        )
                        .await?
                    }
                }
            }
        };
        Ok(Done::Scan(batch.end, stats, docs, started.elapsed()))
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

/// `_id`s of the first `n` candidates of `spec` (for messages naming documents).
pub async fn sample_ids(ctx: &Context, spec: &Backfill, n: i64) -> Result<Vec<Bson>> {
    let coll = ctx.db().collection::<Document>(&spec.collection);
    let found: Vec<Document> = with_retry("naming remaining candidates", ctx.stop(), || async {
        coll.find(spec.filter.clone())
            .projection(doc! { "_id": 1 })
            .limit(n)
            .await?
            .try_collect()
            .await
    })
    .await?;
    Ok(found
        .into_iter()
        .filter_map(|d| d.get("_id").cloned())
        .collect())
}
