//! Sets `withdrawableBalance` to 50% of `affiliateEarnings` for users whose three withdrawal fields
//! are all still missing or 0 (users whose balances the application already moved are not touched).
//!
//! - **Rounding rule**: half of the earnings is computed exactly in decimal, then rounded to the
//!   cent with round-half-to-even (banker's rounding): 123.45 → 61.72, 123.47 → 61.74, 0.03 → 0.02,
//!   101 → 50.5. A double is taken at its shortest round-trip decimal value (123.45 is 123.45, not
//!   123.4499999…), so money does not drift.
//! - int32, int64 and double earnings give a double balance; Decimal128 earnings give a Decimal128
//!   balance with two decimals.
//! - Missing, null or 0 earnings give 0; every user ends with all three fields.
//! - A withdrawal field that is null, a string (`"0"`) or any other non-number makes the user
//!   neither "untouched" nor "moved": the user is left alone and reported as invalid
//!   (`withdrawableBalance is not a number`, ...), with its `_id`, like invalid earnings.
//! - Invalid earnings (a string, negative, NaN, infinite, boolean, object, array, or above 10^15)
//!   are never converted: the user is left untouched and the count, the reasons and sample `_id`s
//!   land in the result, the log and `migrate status`. The run still completes the valid users;
//!   `--fail-on-invalid` fails it instead.
//! - **Ownership**: a user 003 wrote stays 003's only while all three withdrawal fields hold what it
//!   wrote, type included. Once the application sets any of them (a withdrawal started, a balance
//!   reset to 0), the user is the application's: no batch, catch-up or later run of 003 writes it
//!   again, whatever its earnings do, and `down` leaves it as the application set it. Such users are
//!   counted in the result (`movedByApplication`, `movedSamples`).
//! - This release changed 003's code for that: a database that applied an earlier 003 reports it as
//!   changed since applied. What it already wrote is unaffected; accept the change with
//!   `migrate repair`.
//! - A second run modifies nothing. Post-condition: no eligible user is left unmigrated (users the
//!   application moved after 003 wrote them are its own, and not counted).
//! - Before each batch is written, the previous values of the fields it changes (and which of them
//!   did not exist) are saved as before-images in `migrations_before_images`. `down` restores every
//!   touched user exactly from them, guarded on what `up` wrote: a user the application changed
//!   since is reported (`rollbackResult.conflicts`, `conflictSamples`), not clobbered.

use crate::backfill::{self, Backfill, CatchUp, Change, FastPath, Transform};
use crate::error::{Error, Result};
use crate::migration::{Context, Migration, Outcome};
use crate::money::{classify, encode_decimal128, Dec, Earnings};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use std::sync::Arc;

const USERS: &str = "users";
const EARNINGS: &str = "affiliateEarnings";
const BALANCE: &str = "withdrawableBalance";
const FIELDS: [&str; 3] = [BALANCE, "totalWithdrawn", "pendingWithdrawals"];

/// The migration.
pub struct MigrateExistingUserBalances;

/// Constructor used by the registry.
pub fn migration() -> MigrateExistingUserBalances {
    MigrateExistingUserBalances
}

/// Users whose three withdrawal fields are all missing or 0: nothing has moved yet.
fn untouched_by_application() -> Document {
    doc! {
        "$and": FIELDS.iter().map(|f| doc! { "$or": [{ *f: { "$exists": false } }, { *f: 0 }] }).collect::<Vec<_>>()
    }
}

/// Users holding a withdrawal field that is not a number (null, a string such as "0", ...):
/// neither "nothing moved" nor "moved", so they are read and reported, never skipped silently.
fn non_numeric_field() -> Document {
    doc! {
        "$or": FIELDS.iter().map(|f| doc! { *f: { "$exists": true, "$not": { "$type": "number" } } }).collect::<Vec<_>>()
    }
}

/// Candidates: untouched users, and users whose withdrawal fields cannot be judged.
fn candidates() -> Document {
    doc! { "$or": [untouched_by_application(), non_numeric_field()] }
}

/// Why a user with a non-numeric withdrawal field is left untouched.
fn non_numeric_reason(field: &str) -> &'static str {
    match field {
        BALANCE => "withdrawableBalance is not a number",
        "totalWithdrawn" => "totalWithdrawn is not a number",
        _ => "pendingWithdrawals is not a number",
    }
}

/// The change for one user (pure: runs on rayon across a batch).
pub fn transform(user: &Document) -> Change {
    for f in FIELDS {
        let numeric = matches!(
            user.get(f),
            None | Some(Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_))
        );
        if !numeric {
            return Change::Invalid(non_numeric_reason(f));
        }
    }
    let mut set = Document::new();
    match classify(user.get(EARNINGS)) {
        Earnings::Invalid(reason) => return Change::Invalid(reason),
        Earnings::Half(half) => {
            set.insert(BALANCE, half);
        }
        Earnings::None => {}
    }
    for f in FIELDS {
        if !user.contains_key(f) && !set.contains_key(f) {
            set.insert(f, 0);
        }
    }
    if set.is_empty() {
        Change::Unchanged
    } else {
        Change::Update {
            set,
            unset: Vec::new(),
        }
    }
}

/// Whether the server pipeline computes exactly what [`transform`] computes for this user.
///
/// The server converts a double to decimal with 15 significant digits; that equals the shortest
/// round-trip decimal the Rust rule uses exactly when those 15 digits convert back to the same
/// double. Every other input (integers, Decimal128, none) converts exactly.
///
/// Tiny doubles (below 1e-9, subnormals among them) are left to the Rust rule: the server's
/// conversion of some of them to decimal fails ("Conversion would overflow target type"), and
/// their half rounds to 0 anyway.
pub fn exact_on_server(user: &Document) -> bool {
    match user.get(EARNINGS) {
        Some(Bson::Double(x)) => {
            x.is_finite()
                && (*x == 0.0 || x.abs() >= 1e-9)
                && format!("{x:.14e}").parse::<f64>() == Ok(*x)
        }
        _ => true,
    }
}

/// The server-side form of [`transform`], for the users [`exact_on_server`] accepts.
pub fn fast_path() -> FastPath {
    let half = Bson::Decimal128(
        encode_decimal128(&Dec {
            negative: false,
            coefficient: 5,
            exponent: -1,
        })
        .expect("0.5 encodes"),
    );
    let earnings = format!("${EARNINGS}");
    let halved = |value: Bson| doc! { "$round": [{ "$multiply": [value, half.clone()] }, 2] };
    let positive = |types: Bson| doc! { "$and": [{ "$in": [{ "$type": &earnings }, types] }, { "$gt": [&earnings, 0] }] };
    let balance = doc! { "$switch": {
        "branches": [
            { "case": positive(Bson::Array(vec!["decimal".into()])), "then": halved(Bson::String(earnings.clone())) },
            {
                "case": positive(Bson::Array(vec!["double".into(), "int".into(), "long".into()])),
                "then": { "$toDouble": halved(Bson::Document(doc! { "$toDecimal": &earnings })) },
            },
        ],
        "default": { "$ifNull": [format!("${BALANCE}"), 0] },
    } };
    FastPath {
        // Still valid when written (the transform validated it when read), and still exact.
        guard: doc! {
            "$or": [
                { EARNINGS: { "$exists": false } },
                { EARNINGS: Bson::Null },
                { EARNINGS: { "$type": ["int", "long", "double", "decimal"], "$gte": 0, "$lte": 1e15 } },
            ],
            "$expr": { "$or": [
                { "$ne": [{ "$type": &earnings }, "double"] },
                { "$eq": [{ "$toDouble": { "$toDecimal": &earnings } }, &earnings] },
            ] },
        },
        pipeline: vec![doc! { "$set": {
            BALANCE: balance,
            "totalWithdrawn": { "$ifNull": ["$totalWithdrawn", 0] },
            "pendingWithdrawals": { "$ifNull": ["$pendingWithdrawals", 0] },
        } }],
        exact_for: Arc::new(exact_on_server),
    }
}

/// Among untouched users, those that may still need the change: a field missing, or earnings
/// worth at least a cent of balance (half of 0.01 rounds to 0 by the rule).
fn left_unmigrated() -> Document {
    let missing = doc! { "$or": FIELDS.iter().map(|f| doc! { *f: { "$exists": false } }).collect::<Vec<_>>() };
    doc! { "$or": [missing, { EARNINGS: { "$gt": 0.01 } }] }
}

fn backfill_spec() -> Backfill {
    let mut spec = Backfill::new(USERS, candidates(), Transform::Client(Arc::new(transform)))
        .fields(&[EARNINGS, BALANCE, "totalWithdrawn", "pendingWithdrawals"])
        .owning(&FIELDS)
        .with_before_images()
        .with_fast_path(fast_path())
        // Earnings changed, or a withdrawal field removed, can make a user owed a balance again.
        // The balance fields this migration sets are not watched for updates: on a quiet
        // collection those are its own writes. The rounds after the scan look for the rest.
        .catching_up(CatchUp {
            updated: vec![EARNINGS.into()],
            removed: FIELDS.iter().map(|f| f.to_string()).collect(),
            pending: left_unmigrated(),
        });
    spec.label = "003 balances".into();
    spec
}

#[async_trait]
impl Migration for MigrateExistingUserBalances {
    fn description(&self) -> &'static str {
        "set withdrawableBalance to 50% of affiliateEarnings (exact to the cent)"
    }

    async fn up(&self, ctx: &Context) -> Result<Outcome> {
        let stats = backfill::run(ctx, &backfill_spec()).await?;
        if stats.invalid > 0 {
            tracing::warn!(
                migration = ctx.name(),
                invalid = stats.invalid,
                reasons = %stats.invalid_reasons,
                samples = %Bson::Array(stats.invalid_samples.clone()).into_relaxed_extjson(),
                "users with invalid affiliateEarnings were left untouched"
            );
        }
        let verb = if ctx.dry_run() { "would set" } else { "set" };
        let mut message = format!(
            "{verb} withdrawal balances of {} user(s); {} already right, {} invalid left untouched, {} changed concurrently",
            stats.modified, stats.unchanged, stats.invalid, stats.conflicts
        );
        if stats.moved > 0 {
            message.push_str(&format!(
                "; {} user(s) the application moved after this migration wrote them kept the application's values",
                stats.moved
            ));
        }
        let caught = &stats.catch_up;
        if caught.modified > 0 || caught.invalid > 0 {
            message.push_str(&format!(
                "; {} more caught up after the application changed them ({})",
                caught.modified, caught.mode
            ));
        }
        Ok(Outcome::ok(message, stats.to_document()))
    }

    fn reversible(&self) -> bool {
        true
    }

    async fn down(&self, ctx: &Context) -> Result<Outcome> {
        let report = backfill::restore(ctx.db(), ctx.name(), ctx.stop()).await?;
        let mut message = format!(
            "restored the previous withdrawal fields of {} user(s)",
            report.restored + report.already
        );
        if report.conflicts > 0 {
            message.push_str(&format!(
                "; {} user(s) changed since the migration and were left as they are (see rollbackResult.conflictSamples)",
                report.conflicts
            ));
        }
        Ok(Outcome::ok(message, report.to_document()))
    }

    /// No eligible user is left unmigrated: every candidate (balance not moved) lacking a field,
    /// or still at the defaults with earnings worth at least a cent of balance, must be one with
    /// invalid earnings, or one the application moved after this migration wrote it (a balance
    /// reset to 0), which is the application's. A user whose balance moved before this migration
    /// is never a candidate, even if it lacks a field. Judged as of the run's convergence point
    /// (see [`backfill::Convergence`]).
    async fn verify(&self, ctx: &Context) -> Result<()> {
        let filter = doc! { "$and": [untouched_by_application(), left_unmigrated()] };
        let users = ctx.db().collection::<Document>(USERS);
        let mut cursor = users
            .find(filter)
            .projection(
                doc! { EARNINGS: 1, BALANCE: 1, "totalWithdrawn": 1, "pendingWithdrawals": 1 },
            )
            .await
            .map_err(Error::db("checking that every eligible user was migrated"))?;
        let mut left = Vec::new();
        while let Some(user) = cursor
            .try_next()
            .await
            .map_err(Error::db("checking that every eligible user was migrated"))?
        {
            if !matches!(transform(&user), Change::Invalid(_) | Change::Unchanged) {
                left.push(user);
            }
        }
        let left = backfill::not_moved(ctx, &backfill_spec(), left).await?;
        // Judged as of the run's convergence point: a user the application wrote after it is the
        // application's, and does not fail the run.
        let (left, after_convergence) = backfill::judged_as_of_convergence(ctx, left).await?;
        if after_convergence > 0 {
            tracing::info!(
                migration = ctx.name(),
                users = after_convergence,
                "users the application changed after the convergence point are left to it"
            );
        }
        let unmigrated = left.len();
        let samples: Vec<Bson> = left
            .iter()
            .take(5)
            .map(|u| u.get("_id").cloned().unwrap_or(Bson::Null))
            .collect();
        if unmigrated > 0 {
            return Err(Error::migration(
                ctx.name(),
                format!(
                    "{unmigrated} eligible user(s) left unmigrated, e.g. {}",
                    Bson::Array(samples).into_relaxed_extjson()
                ),
            ));
        }
        Ok(())
    }
}
