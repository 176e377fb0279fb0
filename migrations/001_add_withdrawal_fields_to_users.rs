//! Gives every user that lacks them `withdrawableBalance`, `totalWithdrawn` and
//! `pendingWithdrawals`, each 0, field by field: a value a user already has is kept, null included.
//! Runs on the batch pipeline with server-side updates (nothing travels to the client), so it
//! resumes like 003. The migration declares one statement per field; the engine reads which fields
//! each user of a batch lacks and writes each user once, with one statement per group of users
//! lacking the same fields (guarded on exactly those being missing), so `fieldsAdded` stays exact.
//! Post-condition: no user lacks any of the three. `down` removes the fields only from users where
//! all three still hold 0, and reports how many users it left alone because they hold real
//! balances; `rollback --force` removes them from every user, destroying those balances.

use crate::backfill::{self, Backfill, CatchUp, ServerUpdate, Transform};
use crate::error::{Error, Result};
use crate::migration::{Context, Migration, Outcome};
use async_trait::async_trait;
use mongodb::bson::{doc, Document};

/// The withdrawal fields and the collection they live in.
pub const FIELDS: [&str; 3] = [
    "withdrawableBalance",
    "totalWithdrawn",
    "pendingWithdrawals",
];
const USERS: &str = "users";

/// The migration.
pub struct AddWithdrawalFields;

/// Constructor used by the registry.
pub fn migration() -> AddWithdrawalFields {
    AddWithdrawalFields
}

fn missing_any() -> Document {
    doc! { "$or": FIELDS.iter().map(|f| doc! { *f: { "$exists": false } }).collect::<Vec<_>>() }
}

fn add_missing() -> Backfill {
    let updates = FIELDS
        .iter()
        .map(|f| {
            ServerUpdate::operators(
                doc! { *f: { "$exists": false } },
                doc! { "$set": { *f: 0 } },
            )
        })
        .collect();
    // Only a removed field or a new user can make a user lack a field again.
    let mut spec =
        Backfill::new(USERS, missing_any(), Transform::Server(updates)).catching_up(CatchUp {
            removed: FIELDS.iter().map(|f| f.to_string()).collect(),
            ..CatchUp::default()
        });
    spec.label = "001 withdrawal fields".into();
    spec
}

#[async_trait]
impl Migration for AddWithdrawalFields {
    fn description(&self) -> &'static str {
        "add withdrawableBalance, totalWithdrawn, pendingWithdrawals (0) to users lacking them"
    }

    async fn up(&self, ctx: &Context) -> Result<Outcome> {
        let stats = backfill::run(ctx, &add_missing()).await?;
        let result = doc! {
            "usersUpdated": stats.scanned as i64,
            "fieldsAdded": stats.modified as i64,
            "batches": stats.batches as i64,
        };
        let verb = if ctx.dry_run() { "would add" } else { "added" };
        Ok(Outcome::ok(
            format!(
                "{verb} {} missing field(s) to {} user(s)",
                stats.modified, stats.scanned
            ),
            result,
        ))
    }

    fn reversible(&self) -> bool {
        true
    }

    /// Removes the fields from users where all three still hold the default 0. Users holding a
    /// real balance are left alone and counted, unless `--force`.
    async fn down(&self, ctx: &Context) -> Result<Outcome> {
        let unset = doc! { "$unset": FIELDS.iter().map(|f| (f.to_string(), mongodb::bson::Bson::String(String::new()))).collect::<Document>() };
        let filter = if ctx.options().force {
            doc! { "$or": FIELDS.iter().map(|f| doc! { *f: { "$exists": true } }).collect::<Vec<_>>() }
        } else {
            FIELDS
                .iter()
                .map(|f| (f.to_string(), mongodb::bson::Bson::Int32(0)))
                .collect::<Document>()
        };
        let mut spec = Backfill::new(
            USERS,
            filter,
            Transform::Server(vec![ServerUpdate::operators(doc! {}, unset)]),
        )
        .without_checkpoints();
        spec.label = "001 rollback".into();
        let stats = backfill::run(ctx, &spec).await?;
        let real = doc! { "$or": FIELDS.iter().map(|f| doc! { *f: { "$exists": true, "$ne": 0 } }).collect::<Vec<_>>() };
        let left_alone = backfill::remaining(
            ctx,
            &Backfill::new(USERS, real, Transform::Server(vec![])),
            doc! {},
        )
        .await?;
        let mut message = format!(
            "removed the withdrawal fields from {} user(s)",
            stats.scanned
        );
        if left_alone > 0 {
            message.push_str(&format!(
                "; left {left_alone} user(s) alone because they hold real balances (rollback --force removes those too, destroying them)"
            ));
        }
        Ok(Outcome::ok(
            message,
            doc! { "usersReverted": stats.scanned as i64, "leftAlone": left_alone as i64 },
        ))
    }

    async fn verify(&self, ctx: &Context) -> Result<()> {
        let lacking = backfill::remaining(ctx, &add_missing(), doc! {}).await?;
        if lacking > 0 {
            let samples = backfill::sample_ids(ctx, &add_missing(), 5).await?;
            return Err(Error::migration(
                ctx.name(),
                format!(
                    "{lacking} user(s) still lack a withdrawal field, e.g. {}",
                    mongodb::bson::Bson::Array(samples).into_relaxed_extjson()
                ),
            ));
        }
        Ok(())
    }
}
