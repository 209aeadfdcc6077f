//! Backfill chunks applied beside the stream, on connections of their own.
//!
//! One target connection executes one statement at a time, and a backfill chunk is
//! thousands of rows: applied in line, chunks keep the target busy on a single core
//! while the stream waits behind them. The writer instead hands each chunk to a
//! [`ChunkPool`] of up to `backfill.parallelism` extra connections: its parts (a chunk
//! spans Kafka messages) are applied there as they arrive, and committed with the
//! chunk's backfill progress in a transaction of its own, while the writer goes on.
//! What keeps that correct:
//!
//! - **No lock waits on the writer.** The writer commits its open transaction before it
//!   hands a chunk over, and applies nothing to a table while a chunk of that table is in
//!   flight (it waits for those chunks first, [`ChunkPool::wait_for_tables`]). So a chunk
//!   never waits for a row the writer holds, and the writer never waits for a chunk while
//!   holding a row the chunk needs: no deadlock.
//! - **Order where order matters.** A chunk is positioned at its high watermark; stream
//!   changes after it in the log can be partial TOAST updates or hard deletes, which must
//!   find the chunk's rows. They touch the chunk's table, so they wait for it. Chunks of
//!   one table may commit in any order: their rows are disjoint, and the order guard
//!   (`row_version`) settles a chunk against any stream change before it.
//! - **The checkpoint never passes a chunk that has not committed.** While chunks are in
//!   flight the writer saves, instead of its own position, the position it had when the
//!   oldest of them began ([`ChunkPool::floor`]). After a crash it resumes there and
//!   applies everything after it again, which is idempotent (see [`crate::apply`]);
//!   a chunk that did commit is recorded by commit LSN in `rekey.backfill_applied` in
//!   its own transaction and is not applied (or counted in the progress) twice.
//! - **Rows new to the new store are loaded with `COPY`**, the others upserted, in the
//!   chunk's transaction (see [`crate::chunk_copy`]).
//! - **Foreign keys** are not checked during backfill (the connections use
//!   `session_replication_role = replica`, like the writer's own; see the writer's
//!   `fk_mode`). At a table's last chunk the writer waits for every chunk in flight
//!   before it records the end of backfill, so that is only recorded once every row is
//!   in; a table's `done` flag, once set, stays set whatever order its chunks commit in.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::apply::Applier;
use crate::checkpoint::Checkpoint;
use crate::chunk_copy::{ChunkCopy, Claims};
use crate::config::Config;
use crate::error::Error;
use crate::event;
use crate::target::Catalog;
use crate::telemetry;

/// A target connection that applies chunks.
struct Side {
    client: Client,
    applier: Applier,
    copy: ChunkCopy,
}

/// A chunk being applied.
struct InFlight {
    table: String,
    /// Where the writer must resume if this chunk never commits.
    floor: Checkpoint,
    task: JoinHandle<(Side, Result<u64, Error>)>,
}

pub struct ChunkPool {
    catalog: Catalog,
    claims: Claims,
    max: usize,
    opened: usize,
    idle: Vec<Side>,
    in_flight: VecDeque<InFlight>,
    /// The parts of the newest chunk, until its last one is sent. Unbounded, so that
    /// the writer can go on to the next chunk while this one is still being applied:
    /// memory is bounded by the chunks in flight (`parallelism` × `chunk_rows` rows).
    parts: Option<mpsc::UnboundedSender<event::Transaction>>,
}

impl ChunkPool {
    pub fn new(catalog: Catalog, max: usize) -> Self {
        Self {
            catalog,
            claims: Claims::default(),
            max: max.max(1),
            opened: 0,
            idle: Vec::new(),
            in_flight: VecDeque::new(),
            parts: None,
        }
    }

    /// Where the writer may say it is: the start of the oldest chunk not committed yet.
    pub fn floor(&self) -> Option<Checkpoint> {
        self.in_flight.front().map(|c| c.floor)
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Starts applying a chunk of `table` on a connection of its own (waiting for the
    /// oldest chunk when every connection is busy); send its parts with [`Self::send`].
    /// `floor` is the writer's position before the chunk. The caller must hold no open
    /// target transaction (see the module doc).
    pub async fn begin(
        &mut self,
        config: &Config,
        table: &str,
        floor: Checkpoint,
    ) -> Result<(), Error> {
        self.abandon();
        self.reap().await?;
        let side = match self.idle.pop() {
            Some(side) => side,
            None if self.opened < self.max => {
                let side = open(config, &self.catalog, &self.claims, self.opened).await?;
                self.opened += 1;
                side
            }
            None => {
                self.finish_oldest().await?;
                self.idle.pop().ok_or_else(|| {
                    Error::Invariant("a finished chunk returned no connection".into())
                })?
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(apply(side, rx));
        self.parts = Some(tx);
        self.in_flight.push_back(InFlight {
            table: table.to_string(),
            floor,
            task,
        });
        metrics::gauge!(telemetry::WRITER_BACKFILL_CHUNKS_IN_FLIGHT)
            .set(self.in_flight.len() as f64);
        Ok(())
    }

    /// Sends the next part of the chunk begun last; the last part ends it.
    pub async fn send(&mut self, part: event::Transaction) -> Result<(), Error> {
        let last = part.last;
        let tx = self
            .parts
            .as_ref()
            .ok_or_else(|| Error::Invariant("a chunk part without its chunk".into()))?;
        if tx.send(part).is_err() {
            // The connection gave up: its task has the reason.
            self.parts = None;
            let chunk = self.in_flight.pop_back().expect("the chunk being sent");
            return self.finish(chunk).await;
        }
        if last {
            self.parts = None;
        }
        Ok(())
    }

    /// Drops the chunk being sent, if any (it restarts: the reader re-sends it whole).
    /// Its connection rolls back; its floor stays until then.
    pub fn abandon(&mut self) {
        self.parts = None;
    }

    /// Waits for every chunk in flight on one of `tables`.
    pub async fn wait_for_tables(&mut self, tables: &[&str]) -> Result<(), Error> {
        while let Some(i) = self
            .in_flight
            .iter()
            .position(|c| tables.contains(&c.table.as_str()))
        {
            if i + 1 == self.in_flight.len() && self.parts.is_some() {
                return Err(Error::Invariant(
                    "a change to a table in the middle of one of its backfill chunks".into(),
                ));
            }
            let chunk = self.in_flight.remove(i).expect("index from position");
            self.finish(chunk).await?;
        }
        Ok(())
    }

    /// Waits for every chunk in flight (one being sent is abandoned first).
    pub async fn drain(&mut self) -> Result<(), Error> {
        self.abandon();
        while !self.in_flight.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }

    /// Collects the chunks that have finished, in any order; reports the first failure.
    pub async fn reap(&mut self) -> Result<(), Error> {
        while let Some(i) = self.in_flight.iter().position(|c| c.task.is_finished()) {
            let chunk = self.in_flight.remove(i).expect("index from position");
            self.finish(chunk).await?;
        }
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<(), Error> {
        match self.in_flight.pop_front() {
            Some(chunk) => self.finish(chunk).await,
            None => Ok(()),
        }
    }

    async fn finish(&mut self, chunk: InFlight) -> Result<(), Error> {
        let (side, result) = chunk
            .task
            .await
            .map_err(|e| Error::Invariant(format!("a backfill chunk task failed: {e}")))?;
        metrics::gauge!(telemetry::WRITER_BACKFILL_CHUNKS_IN_FLIGHT)
            .set(self.in_flight.len() as f64);
        result?;
        self.idle.push(side);
        Ok(())
    }
}

impl Drop for ChunkPool {
    fn drop(&mut self) {
        // A session that ends with chunks in flight (an error) abandons them: their
        // transactions roll back with their connections, the checkpoint is behind them.
        for c in &self.in_flight {
            c.task.abort();
        }
    }
}

async fn open(
    config: &Config,
    catalog: &Catalog,
    claims: &Claims,
    owner: usize,
) -> Result<Side, Error> {
    let client = crate::writer::connect_target(config).await?;
    crate::writer::set_replication_role(&client, config, "replica").await?;
    Ok(Side {
        client,
        applier: Applier::new(catalog.clone()),
        copy: ChunkCopy::new(catalog.clone(), claims.clone(), owner),
    })
}

/// One chunk, one target transaction: its rows and its backfill progress.
async fn apply(
    mut side: Side,
    parts: mpsc::UnboundedReceiver<event::Transaction>,
) -> (Side, Result<u64, Error>) {
    let result = apply_in_transaction(&mut side, parts).await;
    side.copy.release();
    (side, result)
}

async fn apply_in_transaction(
    side: &mut Side,
    mut parts: mpsc::UnboundedReceiver<event::Transaction>,
) -> Result<u64, Error> {
    let client = &side.client;
    client
        .batch_execute("BEGIN")
        .await
        .map_err(Error::target_db("beginning a backfill chunk"))?;
    let mut claimed = None;
    let mut applied = 0;
    while let Some(part) = parts.recv().await {
        let claimed = match claimed {
            Some(c) => c,
            None => {
                let commit_lsn = part.position.map_or(0, |p| p.commit_lsn);
                // False: applied before a crash that left the checkpoint behind it.
                *claimed.insert(crate::backfill::claim_chunk(client, commit_lsn).await?)
            }
        };
        let (last, commit_lsn, progress) = (
            part.last,
            part.position.map_or(0, |p| p.commit_lsn),
            part.backfill.clone(),
        );
        if claimed {
            applied += side.copy.apply(client, &mut side.applier, part).await?;
        }
        if last {
            if !claimed {
                tracing::info!(commit_lsn = %crate::writer::lsn_text(commit_lsn), "backfill chunk applied before a restart; skipped");
                break;
            }
            if let Some(progress) = &progress {
                crate::backfill::save_progress(client, progress).await?;
            }
            client
                .batch_execute("COMMIT")
                .await
                .map_err(Error::target_db("committing a backfill chunk"))?;
            return Ok(applied);
        }
    }
    // Abandoned before its last part, or applied already.
    client
        .batch_execute("ROLLBACK")
        .await
        .map_err(Error::target_db("rolling back a backfill chunk"))?;
    Ok(0)
}
