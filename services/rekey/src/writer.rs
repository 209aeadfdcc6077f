//! The writer: Kafka → target, exactly-once in effect.
//!
//! ```text
//!  consumer (assigned at checkpoint.next_offset)
//!     │  Batch … Batch            one target transaction:
//!     ▼                           ┌───────────────────────────────────────────────┐
//!  skip commit_lsn <= consistent  │ apply txn 1 … txn n (whole source txns, order) │
//!  apply chunks in order ───────▶ │ save checkpoint(next_offset, commit_lsn)       │
//!                                 └────────────────────────── COMMIT ─────────────┘
//! ```
//!
//! Guarantees:
//! - **Exactly-once effect.** The consumer position and the source position are saved in
//!   `rekey.checkpoint` by the same target transaction that applied the events; on start
//!   the writer seeks to that position (Kafka's committed offsets are informational).
//! - **Consistency.** A target transaction only ever holds whole source transactions, in
//!   commit order, so the target is always the source's image at the consistent LSN.
//!   While backfill runs, its chunks are applied beside the stream on connections of
//!   their own (see [`crate::chunk_apply`]); the saved position never passes a chunk
//!   that has not committed.
//! - **Duplicates** (a reader restart re-sends from its confirmed LSN) are skipped: their
//!   commit LSN is at or below the consistent LSN. Writes are idempotent and order-guarded
//!   anyway (see [`crate::apply`]).
//! - **Large transactions** arrive in chunks; the writer applies them as they come (memory
//!   stays bounded) inside a target transaction of their own, and commits at the last
//!   chunk. If a transaction restarts before its last chunk (the reader crashed while
//!   publishing it and re-sent it), the partial one is rolled back and the complete one
//!   applied.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::checkpoint::{self, Checkpoint};
use crate::chunk_apply::ChunkPool;
use crate::config::Config;
use crate::error::Error;
use crate::event;
use crate::fk_check::ForeignKeys;
use crate::pg_connect::{self, Side};
use crate::{publish, target, telemetry};

const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(15);

/// Runs the writer until `cancel` fires (it finishes the open batch first) or a fatal
/// error. Retryable failures are retried with backoff from the saved checkpoint.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), Error> {
    publish::check_settings(&config.kafka)?;
    publish::wait_for_broker(&config.kafka, &cancel).await?;
    crate::topic::ensure(&config.kafka).await?;
    let mut backoff = RETRY_START;
    loop {
        let result = session(&config, &cancel).await;
        crate::health::set_not_ready(match &result {
            Ok(()) => "stopping".to_string(),
            Err(e) => format!("not applying: {}", e.one_line()),
        });
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && !cancel.is_cancelled() => {
                metrics::counter!(telemetry::ERRORS, "component" => "writer", "kind" => "retryable").increment(1);
                tracing::warn!(error = %e.one_line(), retry_in_ms = backoff.as_millis() as u64, "applying failed, resuming from the checkpoint");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            Err(e) => {
                metrics::counter!(telemetry::ERRORS, "component" => "writer", "kind" => "fatal")
                    .increment(1);
                return Err(e);
            }
        }
    }
}

/// A large transaction being applied chunk by chunk.
struct Large {
    commit_lsn: u64,
    next_seq: u32,
}

struct Session<'a> {
    config: &'a Config,
    client: Client,
    applier: Applier,
    /// The foreign keys the writer checks itself at each commit, when it does (see
    /// [`fk_mode`]).
    fks: Option<ForeignKeys>,
    /// Position as of the last commit plus what the open target transaction applied.
    position: Checkpoint,
    /// Whether a target transaction is open.
    open: bool,
    changes_in_batch: u64,
    txns_in_batch: Vec<i64>,
    large: Option<Large>,
    /// A table's backfill completed in the open transaction: re-check the FK mode.
    backfill_table_done: bool,
    /// Backfill chunks applied on connections of their own: `Some` exactly while backfill
    /// runs, and foreign keys are not checked (see [`fk_mode`]).
    chunks: Option<ChunkPool>,
    /// The backfill chunk being sent to the pool, part by part.
    chunk_head: Option<ChunkHead>,
    /// The informational Kafka offset commit and the consumer-lag gauge: periodic.
    offset_commit: Every,
    lag_export: Every,
    /// The offset the next message must have: the partition is read without gaps.
    expected_offset: i64,
}

/// The backfill chunk whose parts are arriving (it spans messages).
struct ChunkHead {
    commit_lsn: u64,
    next_seq: u32,
    /// The writer's position before the chunk's first part.
    floor: Checkpoint,
}

/// Whether `txn` is (a part of) a backfill chunk: copied rows only, or only progress.
fn is_backfill(txn: &event::Transaction) -> bool {
    (txn.rows() > 0 || txn.backfill.is_some())
        && txn
            .changes
            .iter()
            .all(|c| c.op == event::Op::Backfill as i32)
}

/// Something done at most once per interval.
struct Every {
    interval: Duration,
    last: Option<std::time::Instant>,
}

impl Every {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
        }
    }

    /// Whether it is time (or `force`d); if so, counts it as done now.
    fn due(&mut self, force: bool) -> bool {
        if !force && self.last.is_some_and(|t| t.elapsed() < self.interval) {
            return false;
        }
        self.last = Some(std::time::Instant::now());
        true
    }
}

/// Foreign keys during backfill, and after it; returns whether backfill is complete.
///
/// While backfill runs, the stream carries changes of rows whose parents are not copied
/// yet (a new execution of a template whose chunk has not been read). Like PostgreSQL's
/// own logical replication apply workers, the writer then applies with
/// `session_replication_role = replica`, which skips foreign-key triggers; once every
/// table's backfill is recorded as done, all parents exist and it switches to
/// `target.replication_role`: `origin` (the default), so foreign keys are enforced at
/// each commit from then on, or `replica`, which stays as it was. Under `origin` the
/// writer checks them itself, a batch at a time, where it can ([`crate::fk_check`]:
/// it stays in replica role and records what it writes), else PostgreSQL does, row by
/// row. `rekeyctl verify` and the cutover's validating step check the foreign keys of
/// the rows written without.
async fn fk_mode(
    client: &Client,
    config: &Config,
    applier: &mut Applier,
    fks: &mut Option<ForeignKeys>,
) -> Result<bool, Error> {
    let complete = !config.backfill.enabled || crate::backfill::all_done(client, config).await?;
    let origin = complete && !config.target.applies_as_replica();
    if let Some(checks) = fks.as_ref().filter(|_| origin) {
        match client
            .batch_execute("SET session_replication_role = replica")
            .await
        {
            Ok(()) => {
                tracing::info!(
                    "foreign keys are checked by the writer at each commit, a batch at a time"
                );
                applier.record(Some(checks.watch()));
                return Ok(complete);
            }
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                tracing::info!("the writer's user may not set session_replication_role: PostgreSQL checks foreign keys row by row");
                *fks = None;
            }
            Err(e) => return Err(Error::target_db("setting session_replication_role")(e)),
        }
    }
    applier.record(None);
    set_replication_role(client, config, if origin { "origin" } else { "replica" }).await?;
    Ok(complete)
}

/// `SET session_replication_role`; `replica` skips foreign-key triggers (see [`fk_mode`]).
/// Setting it takes a privilege whatever the value, so a session already in `role` (a
/// new one is in `origin`) is left as it is.
pub(crate) async fn set_replication_role(
    client: &Client,
    config: &Config,
    role: &str,
) -> Result<(), Error> {
    let now: String = client
        .query_one("SELECT current_setting('session_replication_role')", &[])
        .await
        .map_err(Error::target_db("reading session_replication_role"))?
        .get(0);
    if now == role {
        return Ok(());
    }
    client.batch_execute(&format!("SET session_replication_role = {role}")).await.map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
            let (after, otherwise) = if config.target.applies_as_replica() {
                (" and after it (target.replication_role = replica)", "target.replication_role = origin and backfill.enabled = false")
            } else {
                ("", "backfill.enabled = false")
            };
            Error::Setup(format!(
                "the writer must skip foreign-key checks while backfill runs{after}: GRANT SET ON PARAMETER session_replication_role TO <the writer's user> (PostgreSQL 15+), or set {otherwise}"
            ))
        } else {
            Error::target_db("setting session_replication_role")(e)
        }
    })
}

/// Sets how this session compresses large values (see `target.toast_compression`).
async fn toast_compression(client: &Client, config: &Config) -> Result<(), Error> {
    let wanted = config.target.toast_compression.as_deref();
    let method = match wanted {
        Some("server") => return Ok(()),
        Some(m) => m,
        None => "lz4",
    };
    match client
        .batch_execute(&format!("SET default_toast_compression = {method}"))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if wanted.is_none() => {
            tracing::info!(error = %e, "the target does not support lz4 TOAST compression; using its default");
            Ok(())
        }
        Err(e) => Err(Error::Setup(format!(
            "target.toast_compression = {method:?}: the target refuses it ({}); use pglz or server",
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string())
        ))),
    }
}

/// A target connection configured for applying.
pub(crate) async fn connect_target(config: &Config) -> Result<Client, Error> {
    let client = pg_connect::connect(config, Side::Target, "connecting to the target").await?;
    client
        .batch_execute("SET synchronous_commit = on; SET timezone = 'UTC'")
        .await
        .map_err(Error::target_db("configuring the session"))?;
    toast_compression(&client, config).await?;
    Ok(client)
}

async fn session(config: &Config, cancel: &CancellationToken) -> Result<(), Error> {
    let client = connect_target(config).await?;
    let catalog = target::load(&client, config).await?;
    checkpoint::ensure_schema(&client).await?;
    client
        .batch_execute(crate::backfill::SCHEMA_SQL)
        .await
        .map_err(Error::target_db("creating the rekey.backfill table"))?;
    crate::deferred_index::reconcile(&client, config).await?;
    let topic = &config.kafka.topic;
    let saved = checkpoint::load(&client, topic, publish::PARTITION).await?;
    let mut fks = crate::fk_check::load(&client, config, &catalog).await?;
    let mut applier = Applier::new(catalog.clone());
    let backfill_complete = fk_mode(&client, config, &mut applier, &mut fks).await?;
    if !backfill_complete {
        tracing::info!("backfill in progress: foreign keys are checked once it completes");
    } else if config.target.applies_as_replica() {
        tracing::info!("target.replication_role = replica: foreign keys are checked at cutover, ordinary triggers do not fire");
    }

    let mut cc = publish::client_config(&config.kafka, publish::Client::Consumer);
    cc.set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    publish::set_default(&mut cc, "fetch.wait.max.ms", "10");
    // Prefetch at most 32 MiB (librdkafka's default is 64 MiB per partition).
    publish::set_default(&mut cc, "queued.max.messages.kbytes", "32768");
    publish::set_default(&mut cc, "auto.offset.reset", "earliest");
    let consumer: StreamConsumer = cc.create().map_err(Error::kafka("creating the consumer"))?;
    let mut tpl = TopicPartitionList::new();
    // Without a checkpoint: offset 0, not `Offset::Beginning`. A logical offset needs a
    // ListOffsets query, which librdkafka retries on a 500 ms timer when the partition's
    // leader is not known yet (always, right after `assign`): the first fetch came 0.5 s
    // after the start (traced with `debug=consumer`). A topic trimmed past 0 answers out
    // of range, and `auto.offset.reset = earliest` then starts at its beginning.
    let offset = Offset::Offset(saved.map_or(0, |cp| cp.next_offset));
    tpl.add_partition_offset(topic, publish::PARTITION, offset)
        .map_err(Error::kafka("assigning the partition"))?;
    consumer
        .assign(&tpl)
        .map_err(Error::kafka("assigning the partition"))?;
    let position = saved.unwrap_or_default();
    crate::health::set_ready();
    tracing::info!(topic = %topic, next_offset = position.next_offset, consistent_lsn = %lsn_text(position.commit_lsn), "applying");
    metrics::gauge!(telemetry::WRITER_CONSISTENT_LSN).set(position.commit_lsn as f64);

    let chunks =
        (!backfill_complete).then(|| ChunkPool::new(catalog.clone(), config.backfill.parallelism));
    let mut s = Session {
        config,
        client,
        applier,
        fks,
        position,
        open: false,
        changes_in_batch: 0,
        txns_in_batch: Vec::new(),
        large: None,
        backfill_table_done: false,
        chunks,
        chunk_head: None,
        offset_commit: Every::new(OFFSET_COMMIT_INTERVAL),
        lag_export: Every::new(CONSUMER_LAG_INTERVAL),
        expected_offset: position.next_offset,
    };
    let linger = Duration::from_millis(config.target.batch_linger_ms);
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            m = tokio::time::timeout(Duration::from_secs(1), consumer.recv()) => m,
        };
        let msg = match first {
            Ok(m) => m.map_err(Error::kafka("consuming"))?,
            Err(_) => {
                // Idle: everything in Kafka is applied.
                if s.large.is_none() {
                    metrics::gauge!(telemetry::WRITER_LAG_SECONDS).set(0.0);
                }
                s.export_consumer_lag(&consumer);
                continue;
            }
        };
        s.process(&consumer, &msg).await?;
        // A batch closes after `batch_linger_ms` from its first message or at
        // `batch_max_changes`, whichever comes first: bounded latency under steady load.
        let deadline = tokio::time::Instant::now() + linger;
        // Whether the batch ended waiting for a message that was not there: the writer
        // has applied everything fetched so far.
        let mut drained = false;
        while s.changes_in_batch < config.target.batch_max_changes as u64 && !cancel.is_cancelled()
        {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(m) => {
                    let m = m.map_err(Error::kafka("consuming"))?;
                    s.process(&consumer, &m).await?;
                }
                Err(_) => {
                    drained = true;
                    break;
                }
            }
        }
        if s.large.is_none() {
            s.commit(&consumer).await?;
            if drained {
                metrics::gauge!(telemetry::WRITER_LAG_SECONDS).set(0.0);
            }
        }
    }
    if let Some(pool) = &mut s.chunks {
        pool.drain().await?;
    }
    if s.large.is_none() {
        s.begin().await?;
        s.commit(&consumer).await?;
    }
    s.commit_offset(&consumer, true);
    tracing::info!(consistent_lsn = %lsn_text(s.position.commit_lsn), next_offset = s.position.next_offset, "stopped applying");
    Ok(())
}

impl Session<'_> {
    async fn begin(&mut self) -> Result<(), Error> {
        if !self.open {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(Error::target_db("beginning a transaction"))?;
            self.open = true;
        }
        Ok(())
    }

    async fn commit(&mut self, consumer: &StreamConsumer) -> Result<(), Error> {
        if !self.open {
            return Ok(());
        }
        if let Some(pool) = &mut self.chunks {
            pool.reap().await?;
        }
        if let Some(written) = self.applier.take_written() {
            let fks = self.fks.as_mut().ok_or_else(|| {
                Error::Invariant("writes recorded without foreign keys to check".into())
            })?;
            let next = fks.check(&self.client, written).await?;
            self.applier.record(Some(next));
        }
        let saved = self.resumable();
        let topic = &self.config.kafka.topic;
        checkpoint::save(&self.client, topic, publish::PARTITION, &saved).await?;
        if self.chunks.is_some() {
            crate::backfill::forget_chunks(&self.client, saved.commit_lsn).await?;
        }
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(Error::target_db("committing"))?;
        self.open = false;
        if std::mem::take(&mut self.backfill_table_done)
            && self.chunks.is_some()
            && fk_mode(&self.client, self.config, &mut self.applier, &mut self.fks).await?
        {
            if self.config.target.applies_as_replica() {
                tracing::info!("backfill complete: foreign keys are checked at cutover (target.replication_role = replica)");
            } else {
                tracing::info!("backfill complete: foreign keys are enforced from now on");
            }
            if let Some(mut pool) = self.chunks.take() {
                pool.drain().await?;
            }
        }
        let now = now_micros();
        for commit_time in self.txns_in_batch.drain(..) {
            metrics::histogram!(telemetry::WRITER_END_TO_END_LATENCY)
                .record((now - commit_time).max(0) as f64 / 1e6);
        }
        metrics::histogram!(telemetry::WRITER_BATCH_CHANGES).record(self.changes_in_batch as f64);
        self.changes_in_batch = 0;
        metrics::gauge!(telemetry::WRITER_CONSISTENT_LSN).set(saved.commit_lsn as f64);
        if self.position.commit_time_micros > 0 {
            metrics::gauge!(telemetry::WRITER_LAG_SECONDS)
                .set((now - self.position.commit_time_micros).max(0) as f64 / 1e6);
        }
        self.commit_offset(consumer, false);
        self.export_consumer_lag(consumer);
        Ok(())
    }

    /// The position to save: never past a backfill chunk that has not committed (see
    /// [`crate::chunk_apply`]).
    fn resumable(&self) -> Checkpoint {
        self.chunks
            .as_ref()
            .and_then(ChunkPool::floor)
            .or(self.chunk_head.as_ref().map(|h| h.floor))
            .unwrap_or(self.position)
    }

    /// Tells Kafka how far the writer got: informational only (consumer-lag tooling),
    /// the checkpoint in the target is the truth. At most once a second unless `force`d:
    /// each commit is a broker write.
    fn commit_offset(&mut self, consumer: &StreamConsumer, force: bool) {
        if !self.offset_commit.due(force) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(
                &self.config.kafka.topic,
                publish::PARTITION,
                Offset::Offset(self.position.next_offset),
            )
            .is_ok()
        {
            let _ = consumer.commit(&tpl, CommitMode::Async);
        }
    }

    /// Messages in the partition not yet applied (asks the broker for the high
    /// watermark, at most once every [`CONSUMER_LAG_INTERVAL`]).
    fn export_consumer_lag(&mut self, consumer: &StreamConsumer) {
        if !self.lag_export.due(false) {
            return;
        }
        let topic = &self.config.kafka.topic;
        let high = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, publish::PARTITION, Duration::from_millis(500))
        });
        if let Ok((_, high)) = high {
            metrics::gauge!(telemetry::WRITER_CONSUMER_LAG_MESSAGES)
                .set((high - self.position.next_offset).max(0) as f64);
        }
    }

    async fn rollback(&mut self) -> Result<(), Error> {
        if self.open {
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(Error::target_db("rolling back"))?;
            self.open = false;
            self.backfill_table_done = false;
        }
        Ok(())
    }

    /// Applies `group` (consecutive transactions, in order) and empties it.
    /// `shared`: the batch's tables.
    async fn apply_group(
        &mut self,
        group: &mut Vec<&event::Transaction>,
        shared: &[event::Table],
        poison: &impl Fn(String) -> Error,
    ) -> Result<(), Error> {
        if group.is_empty() {
            return Ok(());
        }
        if let Some(pool) = self.chunks.as_mut().filter(|p| !p.is_empty()) {
            let mut tables: Vec<&str> = group
                .iter()
                .flat_map(|t| t.tables_in(shared).iter().map(|x| x.target_table.as_str()))
                .collect();
            tables.sort_unstable();
            tables.dedup();
            pool.wait_for_tables(&tables).await?;
        }
        self.begin().await?;
        let applied = self
            .applier
            .apply_all(&self.client, group, shared)
            .await
            .map_err(|e| match e {
                Error::Invariant(reason) | Error::Setup(reason) => poison(reason),
                other => other,
            })?;
        self.changes_in_batch += applied;
        group.clear();
        Ok(())
    }

    /// Moves the position past a whole source transaction (applied, or about to be in
    /// this target transaction).
    fn applied(&mut self, pos: event::SourcePosition) {
        self.position.commit_lsn = pos.commit_lsn;
        self.position.end_lsn = pos.end_lsn;
        self.position.commit_time_micros = pos.commit_time_micros;
        self.txns_in_batch.push(pos.commit_time_micros);
        metrics::counter!(telemetry::WRITER_TRANSACTIONS_APPLIED).increment(1);
    }

    /// Records a backfill chunk's progress in the open transaction, and the end of
    /// backfill when it is the last table's last chunk.
    async fn backfill_progress(&mut self, progress: &event::BackfillProgress) -> Result<(), Error> {
        crate::backfill::save_progress(&self.client, progress).await?;
        if progress.done {
            crate::deferred_index::restore(&self.client, &progress.target_table).await?;
            self.end_of_backfill().await?;
        }
        Ok(())
    }

    /// Once every table's backfill is recorded as done: in the open transaction, removes
    /// what can never be valid (see purge_orphans) and has foreign keys enforced from its
    /// commit on.
    async fn end_of_backfill(&mut self) -> Result<(), Error> {
        if self.chunks.is_some() && crate::backfill::all_done(&self.client, self.config).await? {
            self.begin().await?;
            crate::backfill::purge_orphans(&self.client, self.config).await?;
            self.backfill_table_done = true;
        }
        Ok(())
    }

    /// A part of a backfill chunk, while backfill runs: applied by the chunk pool. At a
    /// table's last chunk, every chunk in flight is waited for, so the end of backfill is
    /// recorded (and orphans purged) only once every row is in.
    /// `shared`: the batch's tables. The part is moved to the pool, not copied.
    async fn backfill_part(
        &mut self,
        consumer: &StreamConsumer,
        txn: event::Transaction,
        shared: &[event::Table],
        offset: i64,
        poison: &impl Fn(String) -> Error,
    ) -> Result<(), Error> {
        let pos = txn
            .position
            .ok_or_else(|| poison("transaction without a source position".into()))?;
        if let Some(head) = &self.chunk_head {
            if head.commit_lsn != pos.commit_lsn || head.next_seq != txn.chunk_seq {
                tracing::warn!(commit_lsn = %lsn_text(head.commit_lsn), "backfill chunk restarted before its last part (reader restart); discarding the partial copy");
                self.chunk_head = None;
                if let Some(pool) = &mut self.chunks {
                    pool.abandon();
                }
            }
        }
        if self.chunk_head.is_none() {
            if txn.chunk_seq != 0 {
                // A tail whose head was discarded above: the full copy follows.
                return Ok(());
            }
            // Nothing of the writer's may be uncommitted while the chunk is applied.
            self.commit(consumer).await?;
            let floor = Checkpoint {
                next_offset: offset,
                ..self.position
            };
            // Kept until the last part is sent: stopped in the middle, the writer must
            // read the chunk again from its first part.
            let table = chunk_table(&txn, shared);
            let pool = self
                .chunks
                .as_mut()
                .ok_or_else(|| Error::Invariant("backfill chunk without a chunk pool".into()))?;
            pool.begin(self.config, table, floor).await?;
            self.chunk_head = Some(ChunkHead {
                commit_lsn: pos.commit_lsn,
                next_seq: 0,
                floor,
            });
        }
        let pool = self
            .chunks
            .as_mut()
            .ok_or_else(|| Error::Invariant("backfill chunk without a chunk pool".into()))?;
        let last = txn.last;
        let done = txn
            .backfill
            .as_ref()
            .filter(|p| p.done)
            .map(|p| p.target_table.clone());
        // Self-contained on its connection: with its tables, if it shared the batch's.
        let mut part = txn;
        if part.tables.is_empty() {
            part.tables = shared.to_vec();
        }
        pool.send(part).await?;
        if let Some(head) = &mut self.chunk_head {
            head.next_seq += 1;
        }
        if !last {
            return Ok(());
        }
        self.chunk_head = None;
        if let Some(table) = done {
            pool.drain().await?;
            // The table is in: its deferred indexes are built in the writer's next
            // transaction (after a crash before it commits, at the writer's start).
            self.begin().await?;
            crate::deferred_index::restore(&self.client, &table).await?;
            self.end_of_backfill().await?;
            tracing::debug!(table = %table, "table backfilled");
        }
        self.applied(pos);
        Ok(())
    }

    async fn process(
        &mut self,
        consumer: &StreamConsumer,
        msg: &rdkafka::message::BorrowedMessage<'_>,
    ) -> Result<(), Error> {
        let offset = msg.offset();
        check_contiguous(msg.topic(), self.expected_offset, offset)?;
        self.expected_offset = offset + 1;
        let poison = |reason: String| Error::Poison {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset,
            reason,
        };
        let mut batch = event::decode_batch(msg.payload().unwrap_or_default()).map_err(poison)?;
        if !(event::MIN_SCHEMA_VERSION..=event::SCHEMA_VERSION).contains(&batch.schema_version) {
            return Err(poison(format!(
                "schema version {} (this writer understands {} to {}): upgrade the writer",
                batch.schema_version,
                event::MIN_SCHEMA_VERSION,
                event::SCHEMA_VERSION
            )));
        }
        let shared = &batch.tables[..];
        // Whole small transactions in a row are applied together, their statements
        // pipelined; anything else (chunks of a large one, backfill chunks) on its own.
        let mut group: Vec<&event::Transaction> = Vec::new();
        for txn in batch.transactions.iter_mut() {
            let pos = txn
                .position
                .ok_or_else(|| poison("transaction without a source position".into()))?;
            if pos.commit_lsn <= self.position.commit_lsn {
                if txn.last {
                    metrics::counter!(telemetry::WRITER_DUPLICATES_SKIPPED).increment(1);
                }
                continue;
            }
            if self.large.is_none() && self.chunks.is_some() && is_backfill(txn) {
                self.apply_group(&mut group, shared, &poison).await?;
                self.backfill_part(consumer, std::mem::take(txn), shared, offset, &poison)
                    .await?;
                continue;
            }
            // Backfill rows not applied by the chunk pool are applied one by one.
            crate::copy_text::expand(txn);
            if self.large.is_none() && txn.chunk_seq == 0 && txn.last && txn.backfill.is_none() {
                group.push(txn);
                self.applied(pos);
                continue;
            }
            self.apply_group(&mut group, shared, &poison).await?;
            if let Some(large) = &self.large {
                if large.commit_lsn != pos.commit_lsn || large.next_seq != txn.chunk_seq {
                    tracing::warn!(commit_lsn = %lsn_text(large.commit_lsn), "transaction restarted before its last chunk (reader restart); discarding the partial copy");
                    self.rollback().await?;
                    self.large = None;
                }
            }
            if self.large.is_none() && txn.chunk_seq != 0 {
                // A tail whose head was discarded above: the full copy follows.
                continue;
            }
            if txn.chunk_seq == 0 && !txn.last {
                // A large transaction gets a target transaction of its own, so that a
                // rollback only ever discards it. Checkpoint up to this message.
                if self.open {
                    self.position.next_offset = offset;
                    self.commit(consumer).await?;
                }
                self.large = Some(Large {
                    commit_lsn: pos.commit_lsn,
                    next_seq: 0,
                });
            }
            group.push(txn);
            self.apply_group(&mut group, shared, &poison).await?;
            if txn.last {
                if let Some(progress) = &txn.backfill {
                    self.backfill_progress(progress).await?;
                }
                self.large = None;
                self.applied(pos);
            } else if let Some(large) = &mut self.large {
                large.next_seq += 1;
            }
        }
        self.apply_group(&mut group, shared, &poison).await?;
        self.begin().await?;
        self.position.next_offset = offset + 1;
        Ok(())
    }
}

/// The writer reads its partition without gaps: rekey's producer neither skips offsets
/// nor writes transaction markers, so a message at another offset than the one after the
/// last means the broker no longer holds changes the new store has not applied. Kafka
/// deletes them when the topic's retention (`retention.ms`, `retention.bytes`) or
/// compaction (`cleanup.policy = compact`) passes them; a topic deleted and created again
/// starts over below the checkpoint. librdkafka then resets to the earliest offset left
/// (`auto.offset.reset`) and would go on as if nothing were missing: the writer stops
/// instead, naming the cause (fatal: waiting cannot bring the changes back).
fn check_contiguous(topic: &str, expected: i64, got: i64) -> Result<(), Error> {
    if got == expected {
        return Ok(());
    }
    let what = if got > expected {
        format!(
            "offsets {expected} to {} are gone: the broker deleted changes this writer never \
             applied (the topic's retention.ms / retention.bytes, or cleanup.policy = compact)",
            got - 1
        )
    } else {
        format!(
            "it starts over at {got}, below the writer's checkpoint {expected}: the topic was \
             deleted and created again, with changes this writer never applied"
        )
    };
    Err(Error::Setup(format!(
        "kafka: {topic}[{}] {what}. The new store is missing them and cannot be repaired in \
         place: give the topic unlimited retention (retention.ms = -1, not compacted) and \
         migrate again into an empty new store with a new slot",
        publish::PARTITION
    )))
}

const CONSUMER_LAG_INTERVAL: Duration = Duration::from_secs(2);
const OFFSET_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The target table of a backfill chunk part: the table of its rows (a small chunk may
/// share its batch's tables with other transactions, so not simply the first of them),
/// or, when the stream superseded every row, the one its progress names.
fn chunk_table<'a>(txn: &'a event::Transaction, shared: &'a [event::Table]) -> &'a str {
    let tables = txn.tables_in(shared);
    txn.changes
        .first()
        .map(|c| c.table)
        .or(txn.copy.as_ref().map(|c| c.table))
        .and_then(|t| tables.get(t as usize))
        .map(|t| t.target_table.as_str())
        .or_else(|| txn.backfill.as_ref().map(|b| b.target_table.as_str()))
        .unwrap_or("")
}

/// `X/Y` form of an LSN.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> event::Table {
        event::Table {
            target_table: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_gap_or_a_restart_in_the_partition_stops_the_writer_with_the_cause() {
        assert!(check_contiguous("t", 7, 7).is_ok());
        let gone = check_contiguous("rekey.changes", 7, 12).unwrap_err();
        assert!(!gone.is_retryable());
        let text = gone.to_string();
        assert!(
            text.contains("rekey.changes[0] offsets 7 to 11 are gone")
                && text.contains("retention.ms"),
            "{text}"
        );
        let recreated = check_contiguous("t", 7, 0).unwrap_err().to_string();
        assert!(
            recreated.contains("deleted and created again"),
            "{recreated}"
        );
    }

    #[test]
    fn a_packed_chunk_part_is_of_the_table_of_its_rows() {
        // Packed after a stream transaction on another table, the chunk's rows refer to
        // the batch's second table.
        let shared = [
            table("public.prompt_executions"),
            table("public.prompt_labs"),
        ];
        let part = event::Transaction {
            changes: vec![event::Change {
                table: 1,
                op: event::Op::Backfill as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(chunk_table(&part, &shared), "public.prompt_labs");
        // Every row superseded: the progress names the table.
        let empty = event::Transaction {
            backfill: Some(event::BackfillProgress {
                target_table: "public.prompt_flows".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(chunk_table(&empty, &shared), "public.prompt_flows");
        // Unpacked: its own tables.
        let own = event::Transaction {
            tables: vec![
                table("public.prompt_flows"),
                table("public.flow_executions"),
            ],
            ..part.clone()
        };
        assert_eq!(chunk_table(&own, &shared), "public.flow_executions");
    }
}
