//! Migration 001 (137 lines) written with `FieldBackfill`: the same up, down and post-condition.

use mongo_migrate::backfill::FieldBackfill;

pub fn migration() -> FieldBackfill {
    FieldBackfill::new(
        "users",
        "add withdrawableBalance, totalWithdrawn, pendingWithdrawals (0) to users lacking them",
    )
    .set("withdrawableBalance", 0)
    .set("totalWithdrawn", 0)
    .set("pendingWithdrawals", 0)
}
