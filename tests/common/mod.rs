//! Test harness, by concern: the server and a fresh database per test ([`server`]), running the
//! binary ([`process`]), test data ([`data`]), and reading results back ([`assert`]).

// Each test binary uses part of the harness.
#![allow(dead_code, unused_imports)]

pub mod assert;
pub mod data;
pub mod process;
pub mod server;

pub use assert::*;
pub use data::*;
pub use process::*;
pub use server::*;
