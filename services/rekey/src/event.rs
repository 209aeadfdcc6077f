//! The protobuf event types, generated from `proto/rekey/v1/events.proto` by the build
//! script. This is the only place generated code is included.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/rekey.v1.rs"));

/// The `Batch.schema_version` this build writes.
pub const SCHEMA_VERSION: u32 = 3;
/// The oldest `Batch.schema_version` this build understands (1: no shared tables; 2: no
/// `Transaction.copy`).
pub const MIN_SCHEMA_VERSION: u32 = 1;

impl Transaction {
    /// The tables this transaction's changes refer to: its own, or else its batch's.
    pub fn tables_in<'a>(&'a self, batch_tables: &'a [Table]) -> &'a [Table] {
        if self.tables.is_empty() {
            batch_tables
        } else {
            &self.tables
        }
    }

    /// The rows this transaction changes: its changes and its `COPY` lines.
    pub fn rows(&self) -> u64 {
        self.changes.len() as u64 + self.copy.as_ref().map_or(0, |c| u64::from(c.rows))
    }
}

/// PostgreSQL timestamps count from 2000-01-01; events carry Unix microseconds.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
