//! Shared helpers for the integration tests (from tersor-testkit).
#![allow(unused_imports)]

pub use tersor_testkit::{assets, Rng, DEFAULT_GGUF};
