//! Tests of migrations/001_add_withdrawal_fields_to_users.rs.
