//! The LMS domain the migrations serve: the money rule of the balance backfill and realistic
//! sample data of users and withdrawals.

pub mod money;
pub mod sample;
