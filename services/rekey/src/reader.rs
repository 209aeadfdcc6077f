//! The reader: legacy slot → rekeyed batches → Kafka, confirming only what Kafka holds.
//!
//! ```text
//!  pgwire worker ──events──▶ stream loop ──Batch──▶ producer.send ──DeliveryFuture──▶ acker
//!        ▲                    (decode, rekey,                        (bounded queue,   │
//!        └── update_applied_lsn ◀── confirmed LSN (watch) ◀───────────  in order) ──────┘
//! ```
//!
//! Guarantees:
//! - **Order.** Transactions arrive from pgoutput in commit order and are published, in
//!   that order, to one partition by an idempotent producer.
//! - **At least once.** The confirmed (flush) LSN given to PostgreSQL is the end LSN of a
//!   transaction only once the broker acknowledged every message of it and of every
//!   transaction before it. A crash re-streams from the confirmed LSN: downstream sees
//!   duplicates of whole transactions, which the writer skips by commit LSN.
//! - **Bounded memory.** A transaction is cut into chunks of at most
//!   `source.chunk_max_changes` changes / `chunk_max_bytes` bytes; at most
//!   `source.max_in_flight` messages or `max_in_flight_bytes` bytes wait for
//!   acknowledgement before reading pauses. The byte bound also keeps librdkafka's own
//!   queue short: the idempotent producer sends at most 5 requests at a time, and while
//!   messages wait behind them its broker thread polls in a busy loop.
//! - **Heartbeats.** Every `heartbeat_interval_secs` the reader writes a transactional
//!   logical message; it travels the whole pipeline, so an idle source still advances
//!   the slot and the writer's consistent position.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backfill::{self, ChunkMsg};
use crate::config::Config;
use crate::error::Error;
use crate::event::{self, Op, PG_EPOCH_OFFSET_MICROS};
use crate::mapping::{value_size, CopyLine, TableMap};
use crate::pg_connect::{self, Side};
use crate::pgoutput::{self, Message};
use crate::rekey::Rekeyer;
use crate::watermark::{ChunkRows, Fate, Watermarks, Window};
use crate::{publish, slot, telemetry};

const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(15);
/// How often the replication client reports the confirmed LSN to the server.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How often slot position and retained WAL are sampled for metrics.
const SLOT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Replication events handled in a row once one arrives, before the stream loop looks
/// at its other inputs again (cancellation, confirmations, the pack's deadline, …):
/// a bound on how long those wait, far below the pack's linger.
const EVENTS_PER_ROUND: usize = 256;

/// Runs the reader until `cancel` fires (then flushes, confirms and returns `Ok`) or a
/// fatal error. Retryable failures (source or broker down, slot held by another reader)
/// are retried with backoff, resuming from the slot's confirmed position.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), Error> {
    publish::check_settings(&config.kafka)?;
    let control = pg_connect::connect(&config, Side::Source, "connecting to the source").await?;
    let types = slot::check_source(&control, &config).await?;
    slot::ensure_publication(&control, &config).await?;
    slot::ensure_slot(&control, &config).await?;
    drop(control);
    publish::wait_for_broker(&config.kafka, &cancel).await?;
    crate::topic::ensure(&config.kafka).await?;
    let producer = publish::producer(&config.kafka)?;
    publish::warm_up(&producer, &config.kafka.topic);
    let mut types = Arc::new(types);
    let mut backfill_tables = backfill_tables(&config, &types)?;

    let (phase_tx, phase_rx) = watch::channel(config.phase);
    if let Some(path) = config.path.clone() {
        tokio::spawn(crate::config::watch_phase(
            path,
            crate::config::Role::Reader,
            config.loaded,
            phase_tx,
            cancel.clone(),
        ));
    }

    let mut backoff = RETRY_START;
    let mut describe_again = false;
    loop {
        let result = async {
            if describe_again {
                // A legacy table lost a column the backfill reads: read the tables again.
                let control =
                    pg_connect::connect(&config, Side::Source, "connecting to the source").await?;
                types = Arc::new(slot::check_source(&control, &config).await?);
                backfill_tables = self::backfill_tables(&config, &types)?;
                describe_again = false;
            }
            stream(
                &config,
                &producer,
                &types,
                &backfill_tables,
                phase_rx.clone(),
                &cancel,
            )
            .await
        }
        .await;
        describe_again |= matches!(result, Err(Error::MissingColumn(_)));
        crate::health::set_not_ready(match &result {
            Ok(()) => "stopping".to_string(),
            Err(e) => format!("not streaming: {}", e.one_line()),
        });
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && !cancel.is_cancelled() => {
                metrics::counter!(telemetry::ERRORS, "component" => "reader", "kind" => "retryable").increment(1);
                tracing::warn!(error = %e.one_line(), retry_in_ms = backoff.as_millis() as u64, "streaming failed, resuming from the confirmed position");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            Err(e) => {
                metrics::counter!(telemetry::ERRORS, "component" => "reader", "kind" => "fatal")
                    .increment(1);
                return Err(e);
            }
        }
    }
}

/// The tables to copy, as the legacy database describes them now.
fn backfill_tables(
    config: &Config,
    types: &slot::SourceCatalog,
) -> Result<Vec<Arc<backfill::BackfillTable>>, Error> {
    if config.backfill.enabled {
        backfill::tables(config, types)
    } else {
        Ok(Vec::new())
    }
}

/// One replication session: from the slot's confirmed position until cancel or error.
async fn stream(
    config: &Config,
    producer: &FutureProducer,
    types: &Arc<slot::SourceCatalog>,
    backfill_tables: &[Arc<backfill::BackfillTable>],
    mut phase: watch::Receiver<crate::cutover::Phase>,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let url = pg_connect::PgUrl::parse(config.source.url.expose())
        .map_err(|e| Error::Config(format!("source.url: {e}")))?;
    let pg = &url.config;
    let host = url.host();
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let db = pg.get_dbname().unwrap_or(&user).to_string();
    let repl_config = ReplicationConfig::new(
        host,
        user,
        password,
        db,
        &config.source.slot,
        config.source.publication.as_str(),
    )
    .with_port(port)
    .with_tls(url.replication_tls())
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(Duration::from_secs(5))
    .with_options(
        "-c datestyle=ISO,YMD -c intervalstyle=postgres -c extra_float_digits=3 -c timezone=UTC",
    )
    .with_application_name(format!("rekey-reader:{}", config.source.slot));
    // Every replication error passes here: an invalidated slot, refused at the start or
    // in the middle of the stream, is fatal with its cause, whatever else is retried.
    let lost = |e: pgwire_replication::PgWireError| {
        if slot::is_lost_slot(&e) {
            slot::lost_slot(&config.source.slot)
        } else {
            Error::Replication(e)
        }
    };
    let mut repl = ReplicationClient::connect(repl_config)
        .await
        .map_err(lost)?;
    repl.wait_started().await.map_err(lost)?;
    crate::health::set_ready();
    tracing::info!(slot = %config.source.slot, publication = %config.source.publication, topic = %config.kafka.topic, "streaming");

    let control =
        Arc::new(pg_connect::connect(config, Side::Source, "connecting to the source").await?);
    let (ack_tx, ack_rx) = mpsc::channel::<InFlight>(config.source.max_in_flight.max(1));
    let (confirmed_tx, mut confirmed_rx) = watch::channel(0u64);
    let (failed_tx, mut failed_rx) = mpsc::channel::<Error>(1);
    let acker = tokio::spawn(acker(ack_rx, confirmed_tx, failed_tx));

    // Backfill runs beside the stream for as long as this session lives; a new session
    // resumes it from the progress the writer recorded.
    let (chunk_tx, chunk_rx) = mpsc::channel::<ChunkMsg>(config.backfill.parallelism.max(1) * 2);
    // Names this session's chunks; watermarks of an earlier session, re-streamed after a
    // restart, are told apart by it.
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let mut backfill_task = if backfill_tables.is_empty() {
        None
    } else {
        let source = pg_connect::connect(
            config,
            Side::Source,
            "connecting to the source for backfill",
        )
        .await?;
        let target = pg_connect::connect(
            config,
            Side::Target,
            "connecting to the target to read backfill progress",
        )
        .await?;
        let task = backfill::run(
            config.clone(),
            backfill_tables.to_vec(),
            source,
            target,
            run_id.clone(),
            chunk_tx,
        );
        Some(tokio::spawn(task))
    };

    // The cutover state machine (crate::cutover) runs beside the stream when asked for.
    let status_client = pg_connect::connect(
        config,
        Side::Target,
        "connecting to the target for the cutover state",
    )
    .await?;
    let (cutover_lsn_tx, cutover_lsn) = watch::channel(None::<u64>);
    let mut cutover_task: Option<tokio::task::JoinHandle<Result<(), Error>>> = None;
    let recorded = crate::cutover::load(&status_client, &config.source.slot).await?;
    let wanted = *phase.borrow_and_update();
    match (&recorded, wanted) {
        (Some(st), crate::cutover::Phase::Cutover)
            if st.phase == "cutover" && (st.state == "cutover_ready" || st.state == "failed") =>
        {
            cutover_lsn_tx.send_replace(st.cutover_lsn.map(|l| l as u64));
            crate::cutover::export(if st.state == "failed" {
                crate::cutover::State::Failed
            } else {
                crate::cutover::State::CutoverReady
            });
        }
        (_, crate::cutover::Phase::Cutover) => {
            cutover_task = Some(spawn_cutover(config, cutover_lsn_tx.clone()))
        }
        (Some(st), crate::cutover::Phase::Replicate) if st.state != "replicating" => {
            crate::cutover::record(
                &status_client,
                &config.source.slot,
                wanted,
                crate::cutover::State::Replicating,
                None,
                None,
                None,
            )
            .await?;
        }
        _ => crate::cutover::export(crate::cutover::State::Replicating),
    }

    let mut state = StreamState {
        rekeyer: config.rekeyer(),
        config,
        types: types.clone(),
        relations: HashMap::new(),
        open: None,
        producer,
        ack: ack_tx,
        unacked_bytes: Arc::new(tokio::sync::Semaphore::new(
            config.source.max_in_flight_bytes,
        )),
        watermarks: Watermarks::new(chunk_rx, &run_id),
        cutover_lsn,
        status_client: Arc::new(status_client),
        pack: Pack::default(),
        encoder: event::Encoder::default(),
        spare_lines: Vec::new(),
    };
    let mut heartbeat = tokio::time::interval(Duration::from_secs(
        config.source.heartbeat_interval_secs.max(1),
    ));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sample = tokio::time::interval(SLOT_SAMPLE_INTERVAL);

    let outcome: Result<(), Error> = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ok(()),
            Some(e) = failed_rx.recv() => break Err(e),
            Ok(()) = phase.changed() => {
                let wanted = *phase.borrow_and_update();
                if let Some(task) = cutover_task.take() {
                    task.abort();
                }
                match wanted {
                    crate::cutover::Phase::Cutover => cutover_task = Some(spawn_cutover(config, cutover_lsn_tx.clone())),
                    crate::cutover::Phase::Replicate => {
                        cutover_lsn_tx.send_replace(None);
                        if let Err(e) = crate::cutover::record(&state.status_client, &config.source.slot, wanted, crate::cutover::State::Replicating, None, None, None).await {
                            break Err(e);
                        }
                    }
                }
            }
            result = async { cutover_task.as_mut().expect("guarded").await }, if cutover_task.is_some() => {
                cutover_task = None;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e.one_line(), "cutover procedure failed; set phase = replicate, then cutover again to retry"),
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => tracing::error!(error = %e, "cutover procedure panicked"),
                }
            }
            result = async { backfill_task.as_mut().expect("guarded").await }, if backfill_task.is_some() => {
                backfill_task = None;
                match result {
                    Ok(Ok(())) => tracing::info!("backfill finished"),
                    Ok(Err(e)) => break Err(e),
                    Err(e) => break Err(Error::Invariant(format!("backfill task failed: {e}"))),
                }
            }
            Ok(()) = confirmed_rx.changed() => {
                let lsn = *confirmed_rx.borrow_and_update();
                repl.update_applied_lsn(Lsn::from_u64(lsn));
                metrics::gauge!(telemetry::READER_CONFIRMED_LSN).set(lsn as f64);
            }
            _ = async { tokio::time::sleep_until(state.pack.deadline(state.config).expect("guarded")).await }, if state.pack.since.is_some() => {
                if let Err(e) = state.flush_pack().await {
                    break Err(e);
                }
            }
            _ = heartbeat.tick() => {
                let c = control.clone();
                tokio::spawn(async move {
                    if let Err(e) = slot::emit_heartbeat(&c).await {
                        tracing::warn!(error = %e.one_line(), "heartbeat failed");
                    }
                });
            }
            _ = sample.tick() => {
                if let Ok(Some(p)) = slot::slot_position(&control, &config.source.slot).await {
                    metrics::gauge!(telemetry::SOURCE_LAG_BYTES).set(p.current_lsn.saturating_sub(p.confirmed_flush_lsn) as f64);
                    metrics::gauge!(telemetry::SOURCE_SLOT_RETAINED_WAL_BYTES).set(p.retained_bytes as f64);
                }
            }
            event = repl.recv() => {
                // Then the events already received, up to a bound, without going round
                // the select: each round registers and drops a waker per branch and a
                // timer for the pack, which cost more than handling a small event.
                let mut event = event;
                let mut handled = 0;
                let failed = loop {
                    match event {
                        Ok(Some(ev)) => if let Err(e) = state.handle(ev).await { break Some(e) },
                        Ok(None) => break Some(Error::Replication(pgwire_replication::PgWireError::Task("replication stream ended".into()))),
                        Err(e) => break Some(lost(e)),
                    }
                    handled += 1;
                    match (handled < EVENTS_PER_ROUND).then(|| repl.recv().now_or_never()).flatten() {
                        Some(next) => event = next,
                        None => break None,
                    }
                };
                if let Some(e) = failed {
                    break Err(e);
                }
            }
        }
    };

    // Stop reading; let everything published be acknowledged and confirmed.
    if let Some(task) = backfill_task.take() {
        task.abort();
    }
    if let Some(task) = cutover_task.take() {
        task.abort();
    }
    if outcome.is_ok() {
        if let Err(e) = state.flush_pack().await {
            tracing::warn!(error = %e.one_line(), "could not publish the last packed transactions; they are re-sent on restart");
        }
    }
    let StreamState { ack, .. } = state;
    drop(ack);
    if outcome.is_ok() {
        let _ = tokio::task::block_in_place(|| producer.flush(Duration::from_secs(10)));
    }
    match tokio::time::timeout(Duration::from_secs(15), acker).await {
        Ok(Ok(())) => {}
        _ => tracing::warn!("acknowledgements did not drain in time; the next start re-sends from the confirmed position"),
    }
    let lsn = *confirmed_rx.borrow();
    if lsn > 0 {
        repl.update_applied_lsn(Lsn::from_u64(lsn));
        metrics::gauge!(telemetry::READER_CONFIRMED_LSN).set(lsn as f64);
    }
    if outcome.is_ok() {
        // The worker sends the confirmed position within STATUS_INTERVAL; give it that.
        tokio::time::sleep(STATUS_INTERVAL + Duration::from_millis(300)).await;
        tracing::info!(confirmed_lsn = %Lsn::from_u64(lsn), "stopped streaming");
    }
    repl.stop();
    let _ = tokio::time::timeout(Duration::from_secs(5), repl.shutdown()).await;
    outcome
}

/// Starts the cutover procedure with its own connections.
fn spawn_cutover(
    config: &Config,
    lsn: watch::Sender<Option<u64>>,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    let config = config.clone();
    tokio::spawn(async move {
        let source = pg_connect::connect(
            &config,
            Side::Source,
            "connecting to the source for cutover",
        )
        .await?;
        let target = pg_connect::connect(
            &config,
            Side::Target,
            "connecting to the target for cutover",
        )
        .await?;
        crate::cutover::run(&config, &source, &target, &lsn).await
    })
}

/// A published message (or a transaction with nothing to publish) waiting for its turn
/// to be confirmed.
struct InFlight {
    delivery: Option<DeliveryFuture>,
    /// The message's share of `source.max_in_flight_bytes`, returned once it is acknowledged.
    _bytes: Option<tokio::sync::OwnedSemaphorePermit>,
    changes: u64,
    /// Payload bytes of the message.
    bytes: u64,
    /// Set on the last message of a transaction: the LSN that may then be confirmed.
    confirm: Option<u64>,
}

/// Awaits deliveries in publish order and raises the confirmed LSN.
async fn acker(
    mut rx: mpsc::Receiver<InFlight>,
    confirmed: watch::Sender<u64>,
    failed: mpsc::Sender<Error>,
) {
    while let Some(item) = rx.recv().await {
        if let Some(delivery) = item.delivery {
            match delivery.await {
                Ok(Ok(_)) => {
                    metrics::counter!(telemetry::READER_MESSAGES_PUBLISHED).increment(1);
                    metrics::counter!(telemetry::READER_EVENTS_PUBLISHED).increment(item.changes);
                    metrics::counter!(telemetry::READER_BYTES_PUBLISHED).increment(item.bytes);
                }
                Ok(Err((e, _))) => {
                    let _ = failed.send(Error::kafka("delivering a batch")(e)).await;
                    return;
                }
                Err(_) => {
                    let _ = failed
                        .send(Error::Invariant("producer dropped a delivery".into()))
                        .await;
                    return;
                }
            }
        }
        if let Some(lsn) = item.confirm {
            confirmed.send_replace(lsn);
        }
    }
}

/// The transaction being read.
struct OpenTxn {
    position: event::SourcePosition,
    chunk_seq: u32,
    ordinal: u32,
    heartbeat: bool,
    /// The tables the changes refer to by index (each table's shared descriptor).
    tables: Vec<Arc<event::Table>>,
    changes: Vec<event::Change>,
    bytes: usize,
    /// Set when this is a backfill high-watermark transaction.
    backfill: Option<event::BackfillProgress>,
    /// Backfill rows as lines of `COPY` text, besides `changes` (see
    /// [`event::CopyRows`]).
    copy: Option<event::CopyRows>,
}

struct StreamState<'a> {
    config: &'a Config,
    rekeyer: Rekeyer,
    types: Arc<slot::SourceCatalog>,
    /// Relation oid → mapping (None: a relation outside the config).
    relations: HashMap<u32, Option<Arc<TableMap>>>,
    open: Option<OpenTxn>,
    producer: &'a FutureProducer,
    ack: mpsc::Sender<InFlight>,
    /// Bytes published and not acknowledged yet (`source.max_in_flight_bytes`).
    unacked_bytes: Arc<tokio::sync::Semaphore>,
    /// Backfill chunks: their announcements and rows, matched with their watermarks.
    watermarks: Watermarks,
    /// The cutover point, once one is recorded: later legacy writes raise the alarm.
    cutover_lsn: watch::Receiver<Option<u64>>,
    status_client: Arc<tokio_postgres::Client>,
    /// Small transactions waiting to share one message.
    pack: Pack,
    /// Encodes messages in buffers it reuses.
    encoder: event::Encoder,
    /// Emptied `CopyRows.lines` of published messages, reused.
    spare_lines: Vec<Vec<u8>>,
}

/// The index of `table` in `tables`, added if absent. Tables are told apart by
/// identity: a relation described again (its columns changed) is a new descriptor.
fn index_of(tables: &mut Vec<Arc<event::Table>>, table: &Arc<event::Table>) -> u32 {
    let i = match tables.iter().position(|t| Arc::ptr_eq(t, table)) {
        Some(i) => i,
        None => {
            tables.push(table.clone());
            tables.len() - 1
        }
    };
    i as u32
}

/// Whole small transactions packed into one message: fewer, larger messages for the
/// broker and the writer. The confirm LSN is the last packed (or skipped) transaction's.
#[derive(Default)]
struct Pack {
    transactions: Vec<event::Transaction>,
    /// The tables of every packed transaction, once each: the batch's `tables`.
    tables: Vec<Arc<event::Table>>,
    bytes: usize,
    changes: usize,
    confirm: Option<u64>,
    since: Option<tokio::time::Instant>,
}

impl Pack {
    /// Packs `txn`, whose changes refer to `tables`, re-pointing them at the batch's.
    fn add(
        &mut self,
        mut txn: event::Transaction,
        tables: &[Arc<event::Table>],
        bytes: usize,
        end_lsn: u64,
    ) {
        let shared: Vec<u32> = tables
            .iter()
            .map(|t| index_of(&mut self.tables, t))
            .collect();
        for c in &mut txn.changes {
            c.table = shared[c.table as usize];
        }
        if let Some(copy) = &mut txn.copy {
            copy.table = shared[copy.table as usize];
            self.changes += copy.rows as usize;
        }
        self.changes += txn.changes.len();
        self.bytes += bytes;
        self.transactions.push(txn);
        self.confirm = Some(end_lsn);
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    fn full(&self, config: &Config) -> bool {
        self.changes >= config.source.chunk_max_changes
            || self.bytes >= config.source.chunk_max_bytes
    }

    /// When the pack is published (`source.publish_linger_ms` after its first
    /// transaction) unless it fills first.
    fn deadline(&self, config: &Config) -> Option<tokio::time::Instant> {
        self.since
            .map(|t| t + Duration::from_millis(config.source.publish_linger_ms))
    }
}

impl StreamState<'_> {
    async fn handle(&mut self, ev: ReplicationEvent) -> Result<(), Error> {
        match ev {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.open = Some(OpenTxn {
                    position: event::SourcePosition {
                        commit_lsn: final_lsn.as_u64(),
                        end_lsn: 0,
                        xid,
                        commit_time_micros: commit_time_micros + PG_EPOCH_OFFSET_MICROS,
                    },
                    chunk_seq: 0,
                    ordinal: 0,
                    heartbeat: false,
                    tables: Vec::new(),
                    changes: Vec::new(),
                    bytes: 0,
                    backfill: None,
                    copy: None,
                });
            }
            ReplicationEvent::XLogData { data, .. } => {
                let msg = pgoutput::decode(&data)?;
                self.handle_message(msg).await?;
            }
            ReplicationEvent::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                self.on_message(transactional, &prefix, &content).await?;
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                let Some(mut open) = self.open.take() else {
                    return Err(Error::Invariant(
                        "commit without begin in the replication stream".into(),
                    ));
                };
                metrics::counter!(telemetry::READER_TRANSACTIONS).increment(1);
                open.position.end_lsn = end_lsn.as_u64();
                let wrote = !open.changes.is_empty() || open.chunk_seq > 0;
                if let Some(point) = *self.cutover_lsn.borrow() {
                    if wrote && open.backfill.is_none() && open.position.commit_lsn > point {
                        metrics::counter!(telemetry::CUTOVER_LEGACY_WRITES_AFTER_CUTOVER)
                            .increment(1);
                        tracing::error!(
                            commit_lsn = %crate::writer::lsn_text(open.position.commit_lsn),
                            cutover_lsn = %crate::writer::lsn_text(point),
                            "legacy write after the cutover point: the application still writes to the legacy store (applied anyway)"
                        );
                        let (client, slot) =
                            (self.status_client.clone(), self.config.source.slot.clone());
                        tokio::spawn(async move {
                            if let Err(e) = crate::cutover::record_late_write(&client, &slot).await
                            {
                                tracing::warn!(error = %e.one_line(), "could not count the late write in rekey.status");
                            }
                        });
                    }
                }
                if open.changes.is_empty()
                    && open.chunk_seq == 0
                    && !open.heartbeat
                    && open.backfill.is_none()
                {
                    // Nothing of ours: confirm it in turn, publish nothing.
                    if self.pack.transactions.is_empty() {
                        self.enqueue(InFlight {
                            delivery: None,
                            _bytes: None,
                            changes: 0,
                            bytes: 0,
                            confirm: Some(end_lsn.as_u64()),
                        })
                        .await?;
                    } else {
                        self.pack.confirm = Some(end_lsn.as_u64());
                    }
                } else if open.chunk_seq == 0 {
                    // A whole small transaction: packed with its neighbours into one message.
                    let bytes = open.bytes;
                    let (txn, tables) = Self::transaction(&mut open, true);
                    self.pack.add(txn, &tables, bytes, end_lsn.as_u64());
                    if self.pack.full(self.config) {
                        self.flush_pack().await?;
                    }
                } else {
                    self.publish(&mut open, true).await?;
                }
            }
            ReplicationEvent::KeepAlive { .. } | ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    async fn handle_message(&mut self, msg: Message) -> Result<(), Error> {
        match msg {
            Message::Relation(rel) => {
                let map = match self.config.table(&rel.namespace, &rel.name) {
                    Some(table) => {
                        let source = table.source_name();
                        let types = &self.types;
                        let map = TableMap::new(&rel, table, |col| {
                            types.type_of(&source, col).unwrap_or("text").to_string()
                        })?;
                        Some(Arc::new(map))
                    }
                    None => {
                        tracing::warn!(table = %format!("{}.{}", rel.namespace, rel.name), "relation in the publication is not in [[tables]]; its changes are not migrated");
                        None
                    }
                };
                self.relations.insert(rel.oid, map);
            }
            Message::Insert { relation, new } => {
                let Some(map) = self.mapping(relation)? else {
                    return Ok(());
                };
                let img = map.image(&self.rekeyer, &new)?;
                self.watermarks
                    .touch(&map.source_table, &img.legacy_key, None);
                self.push(&map, Op::Insert, img, None).await?;
            }
            Message::Update {
                relation,
                key,
                old,
                new,
            } => {
                let Some(map) = self.mapping(relation)? else {
                    return Ok(());
                };
                let img = map.image(&self.rekeyer, &new)?;
                let old_key = match key.as_ref().or(old.as_ref()) {
                    Some(old) => {
                        let old_img = map.key_image(&self.rekeyer, old)?;
                        if old_img.legacy_key != img.legacy_key {
                            self.watermarks
                                .touch(&map.source_table, &old_img.legacy_key, None);
                            Some(old_img.values)
                        } else {
                            None
                        }
                    }
                    None => None,
                };
                self.watermarks
                    .touch(&map.source_table, &img.legacy_key, Some(&img.values));
                self.push(&map, Op::Update, img, old_key).await?;
            }
            Message::Delete { relation, key, old } => {
                let Some(map) = self.mapping(relation)? else {
                    return Ok(());
                };
                let Some(old) = key.as_ref().or(old.as_ref()) else {
                    return Err(Error::Invariant(format!(
                        "{}: delete without a key",
                        map.source_table
                    )));
                };
                let img = map.key_image(&self.rekeyer, old)?;
                self.watermarks
                    .touch(&map.source_table, &img.legacy_key, None);
                self.push(&map, Op::Delete, img, None).await?;
            }
            Message::Truncate { relations, .. } => {
                for relation in relations {
                    let Some(map) = self.mapping(relation)? else {
                        continue;
                    };
                    let img = crate::mapping::Image {
                        id: None,
                        legacy_key: String::new(),
                        values: Vec::new(),
                    };
                    self.watermarks.truncate(&map.source_table);
                    self.push(&map, Op::Truncate, img, None).await?;
                }
            }
            Message::Begin { .. } | Message::Commit { .. } => {
                return Err(Error::Invariant(
                    "unexpected raw begin/commit in the replication stream".into(),
                ));
            }
            Message::Message {
                transactional,
                prefix,
                content,
                ..
            } => {
                self.on_message(transactional, &prefix, &content).await?;
            }
            Message::Type { .. } | Message::Origin { .. } => {}
        }
        Ok(())
    }

    fn mapping(&self, relation: u32) -> Result<Option<Arc<TableMap>>, Error> {
        match self.relations.get(&relation) {
            Some(m) => Ok(m.clone()),
            None => Err(Error::Invariant(format!(
                "change for relation {relation} before its Relation message"
            ))),
        }
    }

    /// Handles a transactional logical message: heartbeats and backfill watermarks.
    async fn on_message(
        &mut self,
        transactional: bool,
        prefix: &str,
        content: &[u8],
    ) -> Result<(), Error> {
        if !transactional {
            return Ok(());
        }
        match prefix {
            slot::HEARTBEAT_PREFIX => {
                if let Some(open) = &mut self.open {
                    open.heartbeat = true;
                }
            }
            backfill::LOW_WATERMARK => self.watermarks.low(content),
            backfill::HIGH_WATERMARK => {
                if let Some((window, rows)) = self.watermarks.high(content)? {
                    self.emit_chunk(window, rows).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Publishes the chunk rows the stream did not supersede, inside the high
    /// watermark's transaction (so at its position), with the chunk's progress. Rows
    /// published as selected travel as lines of `COPY` text ([`event::CopyRows`]);
    /// overlaid ones as changes.
    async fn emit_chunk(&mut self, window: Window, chunk: ChunkRows) -> Result<(), Error> {
        let ChunkRows {
            rows,
            last_key,
            done,
        } = chunk;
        let table = window.table.clone();
        let map = &table.map;
        let (mut copied, mut superseded, mut lines) = (0u64, 0u64, 0u64);
        let mut fields = Vec::with_capacity(16);
        for line in &rows {
            crate::copy_text::fields(line, &mut fields);
            let row = CopyLine {
                line,
                fields: &fields,
            };
            let key = map.copy_key(&row)?;
            match window.fate(&key) {
                Fate::Superseded => {
                    superseded += 1;
                    continue;
                }
                Fate::Overlay(newer) => {
                    let mut img = map.image(&self.rekeyer, &row.tuple())?;
                    for (v, n) in img.values.iter_mut().zip(newer) {
                        if let Some(n) = n {
                            *v = n.clone();
                        }
                    }
                    self.push(map, Op::Backfill, img, None).await?;
                }
                Fate::Copy => {
                    self.push_line(map, &row, &key).await?;
                    lines += 1;
                }
            }
            copied += 1;
        }
        metrics::counter!(telemetry::READER_EVENTS_READ, "table" => map.target_table.clone(), "op" => op_label(Op::Backfill)).increment(lines);
        let labels = [("table", map.target_table.clone())];
        metrics::counter!(telemetry::BACKFILL_ROWS, &labels).increment(copied);
        metrics::counter!(telemetry::BACKFILL_ROWS_SUPERSEDED, &labels).increment(superseded);
        metrics::counter!(telemetry::BACKFILL_CHUNKS, &labels).increment(1);
        if done {
            metrics::gauge!(telemetry::BACKFILL_TABLE_DONE, &labels).set(1.0);
        }
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| Error::Invariant("backfill watermark outside a transaction".into()))?;
        open.backfill = Some(event::BackfillProgress {
            source_table: map.source_table.clone(),
            target_table: map.target_table.clone(),
            last_key,
            rows: copied,
            superseded,
            done,
        });
        Ok(())
    }

    async fn push(
        &mut self,
        map: &TableMap,
        op: Op,
        img: crate::mapping::Image,
        old_key: Option<Vec<event::Value>>,
    ) -> Result<(), Error> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| Error::Invariant("row change outside a transaction".into()))?;
        metrics::counter!(telemetry::READER_EVENTS_READ, "table" => map.target_table.clone(), "op" => op_label(op)).increment(1);
        let table = index_of(&mut open.tables, map.shared_descriptor());
        let bytes = img.values.iter().map(value_size).sum::<usize>()
            + old_key
                .as_ref()
                .map_or(0, |v| v.iter().map(value_size).sum())
            + img.legacy_key.len()
            + 24;
        open.changes.push(event::Change {
            table,
            op: op as i32,
            ordinal: open.ordinal,
            id: img.id.map(|u| u.as_bytes().to_vec()).unwrap_or_default(),
            legacy_key: img.legacy_key,
            row: img.values,
            old_key: old_key.unwrap_or_default(),
        });
        open.ordinal += 1;
        open.bytes += bytes;
        self.publish_if_full().await
    }

    /// Publishes what the open transaction holds as a part of its own once it reaches
    /// `source.chunk_max_changes` rows or `source.chunk_max_bytes`.
    async fn publish_if_full(&mut self) -> Result<(), Error> {
        let Some(open) = &self.open else {
            return Ok(());
        };
        let rows = open.changes.len() + open.copy.as_ref().map_or(0, |c| c.rows as usize);
        if rows >= self.config.source.chunk_max_changes
            || open.bytes >= self.config.source.chunk_max_bytes
        {
            let mut open = self.open.take().expect("open");
            self.publish(&mut open, false).await?;
            self.open = Some(open);
        }
        Ok(())
    }

    /// Appends a backfill row to the open transaction's `COPY` lines (see
    /// [`event::CopyRows`]), publishing a part when it is full, as [`Self::push`] does.
    async fn push_line(
        &mut self,
        map: &TableMap,
        row: &CopyLine<'_>,
        legacy_key: &str,
    ) -> Result<(), Error> {
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| Error::Invariant("row change outside a transaction".into()))?;
        let copy = match &mut open.copy {
            Some(copy) => copy,
            None => {
                let table = index_of(&mut open.tables, map.shared_descriptor());
                let lines = self.spare_lines.pop().unwrap_or_else(|| {
                    Vec::with_capacity(self.config.source.chunk_max_bytes.min(1 << 20))
                });
                open.copy.insert(event::CopyRows {
                    table,
                    lines,
                    rows: 0,
                })
            }
        };
        let before = copy.lines.len();
        map.copy_line(&self.rekeyer, row, legacy_key, &mut copy.lines)?;
        copy.rows += 1;
        open.bytes += copy.lines.len() - before;
        self.publish_if_full().await
    }

    /// Takes the open transaction's pending changes as one (chunk of a) transaction,
    /// without its tables, and the tables its changes refer to.
    fn transaction(open: &mut OpenTxn, last: bool) -> (event::Transaction, Vec<Arc<event::Table>>) {
        let txn = event::Transaction {
            position: Some(open.position),
            chunk_seq: open.chunk_seq,
            last,
            heartbeat: open.heartbeat,
            tables: Vec::new(),
            changes: std::mem::take(&mut open.changes),
            backfill: if last { open.backfill.take() } else { None },
            copy: open.copy.take(),
        };
        open.bytes = 0;
        open.chunk_seq += 1;
        (txn, std::mem::take(&mut open.tables))
    }

    /// Publishes the packed small transactions, if any, as one message.
    async fn flush_pack(&mut self) -> Result<(), Error> {
        if self.pack.transactions.is_empty() {
            return Ok(());
        }
        let pack = std::mem::take(&mut self.pack);
        let changes = pack.transactions.iter().map(event::Transaction::rows).sum();
        let tables = pack.tables.iter().map(|t| (**t).clone()).collect();
        self.send(pack.transactions, tables, changes, pack.confirm)
            .await
    }

    /// Publishes one chunk of a transaction too large to pack, in a message of its own
    /// (after whatever is packed, to keep the order).
    async fn publish(&mut self, open: &mut OpenTxn, last: bool) -> Result<(), Error> {
        self.flush_pack().await?;
        let (mut txn, tables) = Self::transaction(open, last);
        txn.tables = tables.iter().map(|t| (**t).clone()).collect();
        let changes = txn.rows();
        let confirm = last.then_some(open.position.end_lsn);
        self.send(vec![txn], Vec::new(), changes, confirm).await
    }

    async fn send(
        &mut self,
        transactions: Vec<event::Transaction>,
        tables: Vec<event::Table>,
        changes: u64,
        confirm: Option<u64>,
    ) -> Result<(), Error> {
        let first_lsn = transactions
            .first()
            .and_then(|t| t.position)
            .map_or(0, |p| p.commit_lsn);
        let batch = event::Batch {
            schema_version: event::SCHEMA_VERSION,
            transactions,
            tables,
            lz4: Vec::new(),
        };
        // Buffers are reused, the encoder's and the lines' (see `event::Encoder`).
        let compress = self
            .config
            .source
            .compresses(batch.transactions.iter().any(|t| t.copy.is_some()));
        let payload = self.encoder.encode(&batch, compress);
        for t in batch.transactions {
            if let Some(mut c) = t.copy.map(|c| c.lines) {
                if self.spare_lines.len() < 2 {
                    c.clear();
                    self.spare_lines.push(c);
                }
            }
        }
        let share = payload.len().min(self.config.source.max_in_flight_bytes);
        let bytes = self
            .unacked_bytes
            .clone()
            .acquire_many_owned(u32::try_from(share).unwrap_or(u32::MAX))
            .await
            .map_err(|_| Error::Invariant("the in-flight byte window closed".into()))?;
        let key = first_lsn.to_be_bytes();
        let delivery = loop {
            let record = FutureRecord::to(&self.config.kafka.topic)
                .partition(publish::PARTITION)
                .key(&key[..])
                .payload(payload);
            match self.producer.send_result(record) {
                Ok(d) => break d,
                Err((e, _))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(Error::kafka("queueing a batch")(e)),
            }
        };
        let len = payload.len() as u64;
        self.enqueue(InFlight {
            delivery: Some(delivery),
            _bytes: Some(bytes),
            changes,
            bytes: len,
            confirm,
        })
        .await
    }

    async fn enqueue(&mut self, item: InFlight) -> Result<(), Error> {
        self.ack
            .send(item)
            .await
            .map_err(|_| Error::Invariant("the acknowledgement task stopped".into()))
    }
}

pub fn op_label(op: Op) -> &'static str {
    match op {
        Op::Insert => "insert",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Truncate => "truncate",
        Op::Backfill => "backfill",
        Op::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> Arc<event::Table> {
        Arc::new(event::Table {
            target_table: name.into(),
            ..Default::default()
        })
    }

    fn txn(lsn: u64, tables: &[usize]) -> event::Transaction {
        event::Transaction {
            position: Some(event::SourcePosition {
                commit_lsn: lsn,
                ..Default::default()
            }),
            last: true,
            changes: tables
                .iter()
                .map(|&t| event::Change {
                    table: t as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pack_describes_each_table_once_and_repoints_the_changes() {
        let (a, b, c) = (table("a"), table("b"), table("c"));
        let mut pack = Pack::default();
        // Changes to a, b, a; then to c, b.
        pack.add(txn(1, &[0, 1, 0]), &[a.clone(), b.clone()], 10, 2);
        pack.add(txn(3, &[0, 1]), &[c.clone(), b.clone()], 10, 4);
        let names: Vec<&str> = pack
            .tables
            .iter()
            .map(|t| t.target_table.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let refs: Vec<Vec<&str>> = pack
            .transactions
            .iter()
            .map(|t| {
                t.changes
                    .iter()
                    .map(|c| pack.tables[c.table as usize].target_table.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(refs, [vec!["a", "b", "a"], vec!["c", "b"]]);
        assert!(pack.transactions.iter().all(|t| t.tables.is_empty()));
        assert_eq!((pack.changes, pack.bytes, pack.confirm), (5, 20, Some(4)));
        // A relation described again is a table of its own, even under the same name.
        pack.add(txn(5, &[0]), &[table("a")], 1, 6);
        assert_eq!(pack.tables.len(), 4);
    }
}
