//! The protobuf event types, generated from `proto/rekey/v1/events.proto` by the build
//! script. This is the only place generated code is included.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/rekey.v1.rs"));

/// The `Batch.schema_version` this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// PostgreSQL timestamps count from 2000-01-01; events carry Unix microseconds.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;
