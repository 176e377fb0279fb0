//! Tests of migrations/003_migrate_existing_user_balances.rs.
