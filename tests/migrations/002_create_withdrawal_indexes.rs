//! Tests of migrations/002_create_withdrawal_indexes.rs.
