//! rekey: the library behind `rekey-reader`, `rekey-writer` and `rekeyctl`.
//!
//! ```text
//! legacy PostgreSQL ──pgoutput──▶ reader ──rekey──▶ Batch (protobuf) ──▶ Kafka ──▶ writer ──▶ new PostgreSQL
//!                    (slot)        │                                     (1 partition)  │
//!        confirm LSN ◀── broker ack┘                     checkpoint in the same target txn┘
//! ```
//!
//! Modules, in the order data flows through them:
//! - [`config`]: the TOML mapping config with `REKEY_` environment overrides.
//! - [`slot`]: source checks, publication and replication slot management.
//! - [`pgoutput`]: decoding of the logical replication messages.
//! - [`rekey`]: the pure `(secret, entity, legacy key) → UUID` function.
//! - [`mapping`]: turns a legacy row into the target row image (keys and foreign keys rekeyed).
//! - [`event`]: the protobuf types built from `proto/`.
//! - [`publish`]: the Kafka client settings, the broker probe and the producer.
//! - [`topic`]: the topic created with settings that keep every change, or checked.
//! - [`backfill`]: copies pre-existing rows in watermarked chunks beside the stream.
//! - [`watermark`]: the stream side of backfill: watermark windows, what the stream supersedes.
//! - [`reader`]: the streaming loop that ties the above together.
//! - [`target`]: the target catalog (columns, keys, soft delete).
//! - [`apply`]: idempotent, order-guarded batched writes into the target.
//! - [`checkpoint`]: the writer's position, kept in the target in the applying transaction.
//! - [`chunk_apply`]: backfill chunks applied on extra target connections, beside the stream.
//! - [`chunk_copy`]: a chunk's rows new to the target loaded with `COPY`, the rest upserted.
//! - [`copy_text`]: `COPY`'s text format, and the `COPY FROM STDIN` call.
//! - [`deferred_index`]: secondary indexes built after a table's backfill, not during it.
//! - [`writer`]: the consuming loop.
//! - [`telemetry`]: logging set-up and all metric names.
//! - [`verify`]: `rekeyctl verify`, the comparison of the legacy and the new store.

pub mod apply;
pub mod backfill;
pub mod checkpoint;
pub mod chunk_apply;
pub mod chunk_copy;
pub mod config;
pub mod copy_text;
pub mod cutover;
pub mod deferred_index;
pub mod error;
pub mod event;
pub mod fk_check;
pub mod health;
pub mod mapping;
pub mod pg_connect;
pub mod pgoutput;
pub mod publish;
pub mod reader;
pub mod rekey;
pub mod service;
pub mod slot;
pub mod status;
pub mod target;
pub mod telemetry;
pub mod topic;
pub mod verify;
pub mod watermark;
pub mod writer;

pub use error::Error;
