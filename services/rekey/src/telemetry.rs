//! Logging set-up and every metric name, described once.
//!
//! Names follow `rekey_<component>_<thing>_<unit>`; counters end in `_total`; units are
//! base units. Labels are bounded: `table`, `op`, `kind` — never ids or keys.

use crate::error::Error;

pub const READER_EVENTS_READ: &str = "rekey_reader_events_read_total";
pub const READER_TRANSACTIONS: &str = "rekey_reader_transactions_total";
pub const READER_MESSAGES_PUBLISHED: &str = "rekey_reader_messages_published_total";
pub const READER_EVENTS_PUBLISHED: &str = "rekey_reader_events_published_total";
pub const READER_BYTES_PUBLISHED: &str = "rekey_reader_published_bytes_total";
pub const READER_CONFIRMED_LSN: &str = "rekey_reader_confirmed_lsn";
pub const SOURCE_LAG_BYTES: &str = "rekey_source_lag_bytes";
pub const SOURCE_SLOT_RETAINED_WAL_BYTES: &str = "rekey_source_slot_retained_wal_bytes";
pub const WRITER_EVENTS_APPLIED: &str = "rekey_writer_events_applied_total";
pub const WRITER_TRANSACTIONS_APPLIED: &str = "rekey_writer_transactions_applied_total";
pub const WRITER_DUPLICATES_SKIPPED: &str = "rekey_writer_duplicates_skipped_total";
pub const WRITER_CONSISTENT_LSN: &str = "rekey_writer_consistent_lsn";
pub const WRITER_LAG_SECONDS: &str = "rekey_writer_lag_seconds";
pub const WRITER_BATCH_CHANGES: &str = "rekey_writer_batch_changes";
pub const WRITER_STATEMENTS: &str = "rekey_writer_statements_total";
pub const WRITER_END_TO_END_LATENCY: &str = "rekey_writer_end_to_end_latency_seconds";
pub const ERRORS: &str = "rekey_errors_total";
pub const WRITER_DEAD_LETTERS: &str = "rekey_writer_dead_letters_total";
pub const WRITER_BACKFILL_CHUNKS_IN_FLIGHT: &str = "rekey_writer_backfill_chunks_in_flight";
pub const WRITER_CONSUMER_LAG_MESSAGES: &str = "rekey_writer_consumer_lag_messages";
pub const BACKFILL_ROWS: &str = "rekey_backfill_rows_total";
pub const BACKFILL_ROWS_ESTIMATED: &str = "rekey_backfill_rows_estimated";
pub const BACKFILL_ROWS_SUPERSEDED: &str = "rekey_backfill_rows_superseded_total";
pub const BACKFILL_CHUNKS: &str = "rekey_backfill_chunks_total";
pub const BACKFILL_TABLE_DONE: &str = "rekey_backfill_table_done";
pub const CUTOVER_PHASE: &str = "rekey_cutover_phase";
pub const CUTOVER_LEGACY_WRITES_AFTER_CUTOVER: &str =
    "rekey_cutover_legacy_writes_after_cutover_total";
pub const UP: &str = "rekey_up";

/// Registers descriptions so `/metrics` documents itself.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        READER_EVENTS_READ,
        "Row changes decoded from the replication stream, by table and op"
    );
    describe_counter!(
        READER_TRANSACTIONS,
        "Source transactions read from the replication stream"
    );
    describe_counter!(
        READER_MESSAGES_PUBLISHED,
        "Kafka messages acknowledged by the broker"
    );
    describe_counter!(
        READER_EVENTS_PUBLISHED,
        "Row changes acknowledged by the broker"
    );
    describe_counter!(
        READER_BYTES_PUBLISHED,
        Unit::Bytes,
        "Message payload bytes acknowledged by the broker"
    );
    describe_gauge!(
        READER_CONFIRMED_LSN,
        "Last LSN confirmed to the slot (everything at or below is in Kafka)"
    );
    describe_gauge!(
        SOURCE_LAG_BYTES,
        Unit::Bytes,
        "Source WAL position minus the slot's confirmed position"
    );
    describe_gauge!(
        SOURCE_SLOT_RETAINED_WAL_BYTES,
        Unit::Bytes,
        "WAL the slot keeps on the source (current minus restart LSN)"
    );
    describe_counter!(
        WRITER_EVENTS_APPLIED,
        "Row changes applied to the target, by table and op"
    );
    describe_counter!(
        WRITER_TRANSACTIONS_APPLIED,
        "Source transactions applied to the target"
    );
    describe_counter!(
        WRITER_DUPLICATES_SKIPPED,
        "Source transactions skipped because the target already has them"
    );
    describe_gauge!(WRITER_CONSISTENT_LSN, "Commit LSN of the last source transaction applied: the target is a consistent image of the source at this LSN");
    describe_gauge!(
        WRITER_LAG_SECONDS,
        Unit::Seconds,
        "Now minus the commit time of the last applied source transaction (heartbeats included); 0 once everything published is applied"
    );
    describe_histogram!(WRITER_BATCH_CHANGES, "Row changes per target transaction");
    describe_counter!(
        WRITER_STATEMENTS,
        "Multi-row statements the writer sent to the target (several row changes each where rows of a table are gathered)"
    );
    describe_histogram!(
        WRITER_END_TO_END_LATENCY,
        Unit::Seconds,
        "Source commit to target commit, per source transaction"
    );
    describe_counter!(ERRORS, "Errors by component and kind");
    describe_counter!(
        WRITER_DEAD_LETTERS,
        "Events the writer could not apply, by kind (the writer stops on them)"
    );
    describe_gauge!(
        WRITER_BACKFILL_CHUNKS_IN_FLIGHT,
        "Backfill chunks being applied on the writer's extra target connections"
    );
    describe_gauge!(
        WRITER_CONSUMER_LAG_MESSAGES,
        "Messages in the topic not yet applied (high watermark minus next offset)"
    );
    describe_counter!(
        BACKFILL_ROWS,
        "Pre-existing rows copied by backfill, by table"
    );
    describe_gauge!(
        BACKFILL_ROWS_ESTIMATED,
        "Estimated rows to backfill, by table (pg_class.reltuples at start)"
    );
    describe_counter!(
        BACKFILL_ROWS_SUPERSEDED,
        "Backfill rows dropped because the stream changed them during their chunk's window"
    );
    describe_counter!(BACKFILL_CHUNKS, "Backfill chunks copied, by table");
    describe_gauge!(
        BACKFILL_TABLE_DONE,
        "1 when the table's backfill is complete, by table"
    );
    describe_gauge!(
        CUTOVER_PHASE,
        "1 for the current phase label (replicate, cutover, cutover_ready, reverse)"
    );
    describe_counter!(
        CUTOVER_LEGACY_WRITES_AFTER_CUTOVER,
        "Legacy transactions that arrived after the cutover point (an alarm)"
    );
    describe_gauge!(UP, "1 while the service runs, by component");
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// Installs the tracing subscriber (`RUST_LOG` filter, default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Installs the Prometheus recorder and returns the handle that renders `/metrics`.
pub fn init_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, Error> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let batch = [1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 20000.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(WRITER_BATCH_CHANGES.into()), &batch))
        .map_err(|e| Error::Config(format!("telemetry: {e}")))?
        .install_recorder()
        .map_err(|e| Error::Config(format!("telemetry: {e}")))?;
    describe();
    Ok(handle)
}
