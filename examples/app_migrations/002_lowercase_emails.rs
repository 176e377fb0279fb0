//! Lower-cases every account's email, written out against the `Migration` trait: a Rust transform
//! per document on the backfill pipeline, with before-images so `down` restores each email.
//!
//! It defines `down` and does not override `reversible()`: `embed_migrations!` sees the `down`
//! and registers it as reversible.

use async_trait::async_trait;
use mongo_migrate::backfill::{self, Backfill, Change, Transform};
use mongo_migrate::{Context, Migration, Outcome, Result};
use mongodb::bson::doc;
use std::sync::Arc;

pub struct LowercaseEmails;

pub fn migration() -> LowercaseEmails {
    LowercaseEmails
}

fn spec() -> Backfill {
    let transform = Transform::Client(Arc::new(|account| match account.get_str("email") {
        Ok(email) => Change::Update {
            set: doc! { "email": email.to_lowercase() },
            unset: vec![],
        },
        Err(_) => Change::Invalid("email is not a string"),
    }));
    Backfill::new(
        "accounts",
        doc! { "email": { "$regex": "[A-Z]" } },
        transform,
    )
    .fields(&["email"])
    .with_before_images()
}

#[async_trait]
impl Migration for LowercaseEmails {
    fn description(&self) -> &'static str {
        "lower-case every account's email"
    }

    async fn up(&self, ctx: &Context) -> Result<Outcome> {
        let stats = backfill::run(ctx, &spec()).await?;
        let message = format!("lower-cased {} email(s)", stats.modified);
        Ok(Outcome::ok(message, stats.to_document()))
    }

    async fn down(&self, ctx: &Context) -> Result<Outcome> {
        let report = backfill::restore(ctx.db(), ctx.name(), ctx.stop()).await?;
        let message = format!("restored {} email(s)", report.restored + report.already);
        Ok(Outcome::ok(message, report.to_document()))
    }
}
