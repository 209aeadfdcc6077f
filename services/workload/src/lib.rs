//! rekey-workload: the PromptStudio legacy database as the reference migration sees
//! it — its schemas, a bulk history ([`seed`]) and a live transactional workload
//! ([`Workload`]) — for the demo, the tests and the benchmarks.
//!
//! Guarantees: everything is driven by a `u64` seed through the crate's own PRNG
//! ([`rng`]), so a seed reproduces the same data; all writes go through ordinary SQL
//! on a `tokio_postgres::Client` (no COPY, no triggers, no replication settings),
//! exactly as the product's application would write.

pub mod entity;
mod error;
pub mod insert;
pub mod rng;
pub mod schema;
mod seed;
pub mod text;
mod workload;

pub use error::Error;
pub use schema::{apply as apply_schema, Schema, LEGACY_SQL, TABLES, TARGET_SQL};
pub use seed::{seed, SeedStats};
pub use workload::{KindStats, Outcome, RunOptions, RunStats, StepStats, TxnKind, Workload};
