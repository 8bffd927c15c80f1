//! Shared helpers for integration tests.
#![allow(dead_code)]

pub mod r#gen; // `gen` is a reserved keyword in edition 2024
pub mod native32;
pub mod run;
