//! Creates, with MongoDB's default names (`status_1_createdAt_1`, ...):
//!
//! - `withdrawals`: `userId`, `status`, `createdAt`, `processedAt`, `transactionReference`,
//!   `{userId, status}`, `{status, createdAt}`, `{status, processedAt}`, `{status, amount}`,
//!   `{status, method, createdAt}`;
//! - `users`: `withdrawableBalance`, `totalWithdrawn`, `pendingWithdrawals`,
//!   `{affiliateEarnings, withdrawableBalance}`, `{pendingWithdrawals, withdrawableBalance}`.
//!
//! Re-running is a no-op. The list of indexes it creates is saved before it builds any, so after a
//! failure (or a kill) part-way, the re-run still counts the indexes the first attempt built as its
//! own, and `down` drops them. An existing index with the same name but other keys or options, or the
//! same keys under another name, stops it with a message naming the index and the command to drop
//! it. Post-condition: every index exists with its keys. `down` drops exactly the indexes `up`
//! created; an identical index that was there before stays.

use crate::error::{Error, Result};
use crate::migration::{Context, Migration, Outcome};
use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Database, IndexModel};

/// The migration.
pub struct CreateWithdrawalIndexes;

/// Constructor used by the registry.
pub fn migration() -> CreateWithdrawalIndexes {
    CreateWithdrawalIndexes
}

/// `(collection, keys)` of every index, as the LMS specifies them.
pub const INDEXES: &[(&str, &[&str])] = &[
    ("withdrawals", &["userId"]),
    ("withdrawals", &["status"]),
    ("withdrawals", &["createdAt"]),
    ("withdrawals", &["processedAt"]),
    ("withdrawals", &["transactionReference"]),
    ("withdrawals", &["userId", "status"]),
    ("withdrawals", &["status", "createdAt"]),
    ("withdrawals", &["status", "processedAt"]),
    ("withdrawals", &["status", "amount"]),
    ("withdrawals", &["status", "method", "createdAt"]),
    ("users", &["withdrawableBalance"]),
    ("users", &["totalWithdrawn"]),
    ("users", &["pendingWithdrawals"]),
    ("users", &["affiliateEarnings", "withdrawableBalance"]),
    ("users", &["pendingWithdrawals", "withdrawableBalance"]),
];

/// The index's key document and its default name (`status_1_createdAt_1`).
pub fn spec(fields: &[&str]) -> (Document, String) {
    let keys: Document = fields
        .iter()
        .map(|f| (f.to_string(), Bson::Int32(1)))
        .collect();
    let name = fields
        .iter()
        .map(|f| format!("{f}_1"))
        .collect::<Vec<_>>()
        .join("_");
    (keys, name)
}

async fn existing(db: &Database, collection: &str) -> Result<Vec<Document>> {
    let coll = db.collection::<Document>(collection);
    match coll.list_indexes().await {
        Ok(cursor) => {
            let models: Vec<IndexModel> = cursor
                .try_collect()
                .await
                .map_err(Error::db(format!("listing indexes of {collection}")))?;
            Ok(models
                .into_iter()
                .map(|m| {
                    let opts = m.options.unwrap_or_default();
                    doc! {
                        "name": opts.name.clone().unwrap_or_default(),
                        "key": m.keys,
                        "unique": opts.unique.unwrap_or(false),
                        "sparse": opts.sparse.unwrap_or(false),
                        "partial": opts.partial_filter_expression.is_some(),
                    }
                })
                .collect())
        }
        // A collection that does not exist yet has no indexes.
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 26) => {
            Ok(Vec::new())
        }
        Err(e) => Err(Error::db(format!("listing indexes of {collection}"))(e)),
    }
}

/// Same fields, same order, same directions (numbers compared by value).
fn same_keys(a: &Document, b: &Document) -> bool {
    let num = |v: &Bson| {
        v.as_i32()
            .map(f64::from)
            .or_else(|| v.as_i64().map(|n| n as f64))
            .or_else(|| v.as_f64())
    };
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && num(va).is_some() && num(va) == num(vb))
}

/// What `up` has to do: indexes to create, indexes already there, or the first conflict.
struct Plan {
    create: Vec<(&'static str, Document, String)>,
    present: Vec<String>,
}

async fn plan(db: &Database) -> Result<Plan> {
    let mut plan = Plan {
        create: Vec::new(),
        present: Vec::new(),
    };
    let mut cache: Vec<(&str, Vec<Document>)> = Vec::new();
    for (collection, fields) in INDEXES {
        if !cache.iter().any(|(c, _)| c == collection) {
            cache.push((collection, existing(db, collection).await?));
        }
        let current = &cache
            .iter()
            .find(|(c, _)| c == collection)
            .expect("cached")
            .1;
        let (keys, name) = spec(fields);
        let by_name = current
            .iter()
            .find(|i| i.get_str("name").ok() == Some(name.as_str()));
        let by_keys = current
            .iter()
            .find(|i| i.get_document("key").is_ok_and(|k| same_keys(k, &keys)));
        match (by_name, by_keys) {
            (Some(i), _) => {
                let plain = !i.get_bool("unique").unwrap_or(false)
                    && !i.get_bool("sparse").unwrap_or(false)
                    && !i.get_bool("partial").unwrap_or(false);
                if !i.get_document("key").is_ok_and(|k| same_keys(k, &keys)) || !plain {
                    return Err(Error::migration(
                        "002_create_withdrawal_indexes",
                        format!(
                            "index {collection}.{name} already exists with other keys or options ({i}); drop it (db.{collection}.dropIndex(\"{name}\")) or rename it, then run migrate up again"
                        ),
                    ));
                }
                plan.present.push(format!("{collection}.{name}"));
            }
            (None, Some(other)) => {
                let other = other.get_str("name").unwrap_or("?");
                return Err(Error::migration(
                    "002_create_withdrawal_indexes",
                    format!(
                        "index {collection}.{other} already has the keys of {name} under another name; drop it (db.{collection}.dropIndex(\"{other}\")) so {name} can be created, then run migrate up again"
                    ),
                ));
            }
            (None, None) => plan.create.push((collection, keys, name)),
        }
    }
    Ok(plan)
}

#[async_trait]
impl Migration for CreateWithdrawalIndexes {
    fn description(&self) -> &'static str {
        "create the withdrawal query indexes on withdrawals and users"
    }

    async fn up(&self, ctx: &Context) -> Result<Outcome> {
        let mut plan = plan(ctx.db()).await?;
        // Indexes an earlier attempt created before it failed or was killed are this
        // migration's own, though they are present now: `down` must drop them too.
        let earlier: Vec<String> = ctx
            .failed_attempt()
            .or(ctx.checkpoint())
            .and_then(|cp| cp.get_array("created").ok())
            .map(|list| {
                list.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        plan.present.retain(|p| !earlier.contains(p));
        let mut created = earlier;
        for (c, _, n) in &plan.create {
            let qualified = format!("{c}.{n}");
            if !created.contains(&qualified) {
                created.push(qualified);
            }
        }
        if !ctx.dry_run() {
            // Saved before anything is built, so a failure part-way still knows what is ours.
            ctx.save_checkpoint(doc! { "created": created.clone() })
                .await?;
            for collection in ["withdrawals", "users"] {
                let models: Vec<IndexModel> = plan
                    .create
                    .iter()
                    .filter(|(c, _, _)| *c == collection)
                    .map(|(_, keys, name)| {
                        IndexModel::builder()
                            .keys(keys.clone())
                            .options(
                                mongodb::options::IndexOptions::builder()
                                    .name(name.clone())
                                    .build(),
                            )
                            .build()
                    })
                    .collect();
                if !models.is_empty() {
                    ctx.db()
                        .collection::<Document>(collection)
                        .create_indexes(models)
                        .await
                        .map_err(Error::db(format!("creating indexes on {collection}")))?;
                }
            }
        }
        let verb = if ctx.dry_run() {
            "would create"
        } else {
            "created"
        };
        let message = format!(
            "{verb} {} index(es), {} already present",
            created.len(),
            plan.present.len()
        );
        Ok(Outcome::ok(
            message,
            doc! { "created": created, "present": plan.present },
        ))
    }

    fn reversible(&self) -> bool {
        true
    }

    async fn down(&self, ctx: &Context) -> Result<Outcome> {
        // Only what `up` created: an identical index that was there before stays.
        let created: Vec<String> = match ctx
            .applied_result()
            .and_then(|r| r.get_array("created").ok())
        {
            Some(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            None => INDEXES
                .iter()
                .map(|(c, f)| format!("{c}.{}", spec(f).1))
                .collect(),
        };
        let mut dropped = Vec::new();
        for qualified in &created {
            let Some((collection, name)) = qualified.split_once('.') else {
                continue;
            };
            let present = existing(ctx.db(), collection)
                .await?
                .iter()
                .any(|i| i.get_str("name").ok() == Some(name));
            if present {
                ctx.db()
                    .collection::<Document>(collection)
                    .drop_index(name)
                    .await
                    .map_err(Error::db(format!("dropping index {qualified}")))?;
                dropped.push(qualified.clone());
            }
        }
        Ok(Outcome::ok(
            format!("dropped {} index(es)", dropped.len()),
            doc! { "dropped": dropped },
        ))
    }

    async fn verify(&self, ctx: &Context) -> Result<()> {
        for (collection, fields) in INDEXES {
            let (keys, name) = spec(fields);
            let ok = existing(ctx.db(), collection).await?.iter().any(|i| {
                i.get_str("name").ok() == Some(name.as_str())
                    && i.get_document("key").is_ok_and(|k| same_keys(k, &keys))
            });
            if !ok {
                return Err(Error::migration(
                    ctx.name(),
                    format!("index {collection}.{name} is missing after creation"),
                ));
            }
        }
        Ok(())
    }
}
