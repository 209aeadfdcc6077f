//! Backfill: copying the rows that existed before streaming began, consistently with the
//! stream, in resumable chunks (the Netflix DBLog / Debezium incremental-snapshot
//! watermark algorithm).
//!
//! ```text
//!  backfill task (this module)                 stream loop (crate::reader)
//!  ──────────────────────────                  ───────────────────────────
//!  send Open(chunk)  ─────────channel────────▶ (taken when L is seen)
//!  COMMIT  L = emit_message('rekey.backfill.low', chunk)  ──WAL──▶ open the window
//!  COPY (SELECT … WHERE key > last ORDER BY key LIMIT n) TO STDOUT
//!                                                         changes to the table in the
//!  send Rows(chunk)  ─────────channel────────▶            window: remember their keys
//!  COMMIT  H = emit_message('rekey.backfill.high', chunk) ──WAL──▶ close the window; publish
//!                                                           the chunk rows the stream did
//!                                                           not touch, at H's position
//! ```
//!
//! Guarantees:
//! - **No long transaction** on the legacy database: each chunk is one SELECT (its own
//!   snapshot) between two tiny watermark transactions. It is read with `COPY … TO
//!   STDOUT`: the rows stay lines of `COPY`'s text format all the way to the new store,
//!   only their rekeyed fields rewritten (see [`crate::mapping::TableMap::copy_line`]).
//! - **Never older over newer**: a row the stream changed between L and H is dropped from
//!   the chunk — the stream carries its newer value, applied in order. A row the stream
//!   did not change in the window has the same value at the SELECT as at H, so it is
//!   published as an upsert positioned at H (its `row_version` is H's commit LSN); the
//!   writer's order guard makes later stream changes win and earlier ones lose.
//! - **No resurrection**: a row deleted before L is not selected; deleted in the window,
//!   it is dropped; deleted after H, its delete comes later in the stream.
//! - **TOAST**: a row whose only changes in the window are updates with unchanged TOAST
//!   values is not dropped (the stream lacks those values, and the target may not have
//!   the row yet): its chunk image is overlaid with the newer columns the updates carry.
//! - **Resumable**: H's transaction carries the chunk's last key; the writer records it
//!   in `rekey.backfill` in the target transaction that applies the chunk. A restarted
//!   reader resumes each table after its last recorded key (a chunk published but not yet
//!   applied is copied again, harmlessly).
//! - **Order**: tables are copied in config order, parents before children, one at a
//!   time, so a child's chunk never arrives before its parents' rows. Foreign keys in
//!   the target are deferred and every chunk commits with the rows it references.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::{quote_ident, quote_qualified, Config, TableConfig};
use crate::copy_text;
use crate::error::Error;
use crate::mapping::TableMap;
use crate::pgoutput::{Relation, RelationColumn};
use crate::slot::SourceCatalog;
use crate::telemetry;

pub const LOW_WATERMARK: &str = "rekey.backfill.low";
pub const HIGH_WATERMARK: &str = "rekey.backfill.high";

/// What the backfill task tells the stream loop, in order.
#[derive(Debug)]
pub enum ChunkMsg {
    /// A chunk is about to start: its low watermark follows in the WAL.
    Open {
        chunk: String,
        table: Arc<BackfillTable>,
    },
    /// The chunk's rows, lines of `COPY`'s text format (see [`select_chunk`]); its high
    /// watermark follows in the WAL.
    Rows {
        chunk: String,
        rows: Vec<Bytes>,
        last_key: Vec<String>,
        done: bool,
    },
}

/// One table to copy: the mapping of its rows and how to page through it.
#[derive(Debug)]
pub struct BackfillTable {
    pub config: TableConfig,
    pub map: TableMap,
    /// Legacy columns in stream order.
    columns: Vec<String>,
    /// Indices of the key columns within `columns`, in key order.
    key: Vec<usize>,
}

impl BackfillTable {
    pub fn source_name(&self) -> String {
        self.config.source_name()
    }
}

/// Where each table's backfill stands, as the writer recorded it in the target.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub last_key: Option<Vec<String>>,
    pub rows: i64,
    pub done: bool,
}

pub const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS rekey;
CREATE TABLE IF NOT EXISTS rekey.backfill (
    target_table  text        PRIMARY KEY,
    source_table  text        NOT NULL,
    last_key      text[],
    rows_copied   bigint      NOT NULL DEFAULT 0,
    rows_superseded bigint    NOT NULL DEFAULT 0,
    chunks        bigint      NOT NULL DEFAULT 0,
    done          boolean     NOT NULL DEFAULT false,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Chunks the writer applied beside the stream whose position its checkpoint has not
-- passed yet (see chunk_apply): a chunk replayed after a crash is not applied twice.
CREATE TABLE IF NOT EXISTS rekey.backfill_applied (
    commit_lsn    bigint      PRIMARY KEY
);";

/// Records that the chunk at `commit_lsn` is applied by the open transaction; false if an
/// earlier transaction already did.
pub async fn claim_chunk(target: &Client, commit_lsn: u64) -> Result<bool, Error> {
    let n = target
        .execute(
            "INSERT INTO rekey.backfill_applied (commit_lsn) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&(commit_lsn as i64)],
        )
        .await
        .map_err(Error::target_db("recording a backfill chunk"))?;
    Ok(n == 1)
}

/// Forgets the chunk records the checkpoint has passed (they can no longer be replayed).
pub async fn forget_chunks(target: &Client, upto_commit_lsn: u64) -> Result<(), Error> {
    target
        .execute(
            "DELETE FROM rekey.backfill_applied WHERE commit_lsn <= $1",
            &[&(upto_commit_lsn as i64)],
        )
        .await
        .map_err(Error::target_db("forgetting applied backfill chunks"))?;
    Ok(())
}

/// Reads the recorded progress of `table` (target name); none before the first chunk.
pub async fn load_progress(target: &Client, table: &str) -> Result<Progress, Error> {
    let exists: bool = target
        .query_one("SELECT to_regclass('rekey.backfill') IS NOT NULL", &[])
        .await
        .map_err(Error::target_db("reading backfill progress"))?
        .get(0);
    if !exists {
        return Ok(Progress::default());
    }
    let row = target
        .query_opt(
            "SELECT last_key, rows_copied, done FROM rekey.backfill WHERE target_table = $1",
            &[&table],
        )
        .await
        .map_err(Error::target_db("reading backfill progress"))?;
    Ok(row.map_or_else(Progress::default, |r| Progress {
        last_key: r.get(0),
        rows: r.get(1),
        done: r.get(2),
    }))
}

/// Records a chunk's progress; call in the target transaction that applies its rows.
/// Chunks of a table may commit in any order (see [`crate::chunk_apply`]): the counts
/// add up, `done` once set stays set, and `last_key` is the last committed chunk's (an
/// older one only makes a restarted reader copy some rows again).
pub async fn save_progress(
    target: &Client,
    p: &crate::event::BackfillProgress,
) -> Result<(), Error> {
    target
        .execute(
            "INSERT INTO rekey.backfill AS b (target_table, source_table, last_key, rows_copied, rows_superseded, chunks, done)
             VALUES ($1, $2, $3, $4, $5, 1, $6)
             ON CONFLICT (target_table) DO UPDATE SET last_key = EXCLUDED.last_key,
                 rows_copied = b.rows_copied + EXCLUDED.rows_copied,
                 rows_superseded = b.rows_superseded + EXCLUDED.rows_superseded,
                 chunks = b.chunks + 1, done = b.done OR EXCLUDED.done, updated_at = now()",
            &[&p.target_table, &p.source_table, &p.last_key, &(p.rows as i64), &(p.superseded as i64), &p.done],
        )
        .await
        .map_err(Error::target_db("recording backfill progress"))?;
    Ok(())
}

/// Whether every configured table's backfill is recorded as done.
pub async fn all_done(target: &Client, config: &Config) -> Result<bool, Error> {
    let tables: Vec<String> = config.tables.iter().map(|t| t.target_name()).collect();
    let done: i64 = target
        .query_one(
            "SELECT CASE WHEN to_regclass('rekey.backfill') IS NULL THEN 0
                    ELSE (SELECT count(*) FROM rekey.backfill WHERE done AND target_table = ANY($1)) END",
            &[&tables],
        )
        .await
        .map_err(Error::target_db("reading backfill progress"))?
        .get(0);
    Ok(done as usize == tables.len())
}

/// Removes soft-deleted rows whose parent never reached the new store.
///
/// While backfill runs, the stream can carry a row whose parent is not copied yet (a
/// template forked from a seeded one). If the parent is then deleted in legacy before its
/// chunk is read, it never arrives, and the child (deleted too, by the cascade) is left
/// soft-deleted with a foreign key that points at nothing. Such rows carry no data
/// anyone can reach and would fail foreign-key validation, so when backfill completes
/// they are removed, children first, until none is left. Live rows are never touched:
/// a live row with a dangling foreign key is a divergence for `rekeyctl verify` to report.
/// Runs in the writer's transaction that records the last table as done.
pub async fn purge_orphans(target: &Client, config: &Config) -> Result<u64, Error> {
    let mut total = 0u64;
    loop {
        let mut pass = 0u64;
        for child in config.tables.iter().rev() {
            let (cs, cn) = child.target_parts();
            let soft: bool = target
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 AND column_name = 'deleted_at')",
                    &[&cs, &cn],
                )
                .await
                .map_err(Error::target_db("reading the target catalog"))?
                .get(0);
            if !soft {
                continue;
            }
            for (column, parent) in config.references(child) {
                let (ps, pn) = parent.target_parts();
                let sql = format!(
                    "DELETE FROM {} c WHERE c.deleted_at IS NOT NULL AND c.{col} IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM {} p WHERE p.id = c.{col})",
                    quote_qualified(cs, cn),
                    quote_qualified(ps, pn),
                    col = quote_ident(column)
                );
                pass += target
                    .execute(&sql, &[])
                    .await
                    .map_err(Error::target_db(format!(
                        "purging orphans of {}",
                        child.target_name()
                    )))?;
            }
        }
        total += pass;
        if pass == 0 {
            break;
        }
    }
    if total > 0 {
        tracing::info!(rows = total, "removed soft-deleted rows whose parents were deleted in legacy before backfill copied them");
    }
    Ok(total)
}

/// Builds the tables to copy, from the source catalog and the config.
pub fn tables(config: &Config, catalog: &SourceCatalog) -> Result<Vec<Arc<BackfillTable>>, Error> {
    let mut out = Vec::new();
    for t in &config.tables {
        let source = t.source_name();
        let cols = catalog
            .tables
            .get(&source)
            .ok_or_else(|| Error::Invariant(format!("{source} missing from the source catalog")))?;
        let (schema, name) = t.source_parts();
        let relation = Relation {
            oid: 0,
            namespace: schema.to_string(),
            name: name.to_string(),
            replica_identity: b'd',
            columns: cols
                .iter()
                .map(|c| RelationColumn {
                    is_key: c.is_key,
                    name: c.name.clone(),
                    type_oid: 0,
                    type_modifier: -1,
                })
                .collect(),
        };
        let map = TableMap::new(&relation, t, |col| {
            catalog.type_of(&source, col).unwrap_or("text").to_string()
        })?;
        out.push(Arc::new(BackfillTable {
            config: t.clone(),
            map,
            columns: cols.iter().map(|c| c.name.clone()).collect(),
            key: cols
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key)
                .map(|(i, _)| i)
                .collect(),
        }));
    }
    Ok(out)
}

/// A one-table [`BackfillTable`] of text columns, the first the key: for unit tests.
#[cfg(test)]
pub(crate) fn test_table(name: &str, columns: &[&str]) -> Arc<BackfillTable> {
    let config = Config::parse(&format!(
        "[kafka]\nbrokers = \"x\"\n[[tables]]\nname = \"{name}\"\nid = \"{}\"\n",
        columns[0]
    ))
    .expect("test config");
    let mut catalog = SourceCatalog::default();
    catalog.tables.insert(
        config.tables[0].source_name(),
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| crate::slot::SourceColumn {
                name: (*c).into(),
                type_name: "text".into(),
                is_key: i == 0,
            })
            .collect(),
    );
    tables(&config, &catalog).expect("test table").remove(0)
}

/// Copies every table not yet done, chunk by chunk, handing rows to the stream loop.
/// Returns when all tables are done (or the stream loop went away).
pub async fn run(
    config: Config,
    tables: Vec<Arc<BackfillTable>>,
    source: Client,
    target: Client,
    run_id: String,
    tx: mpsc::Sender<ChunkMsg>,
) -> Result<(), Error> {
    // Watermarks commit with a WAL flush: a walsender decodes only flushed WAL, so under
    // `synchronous_commit = off` each window would wait for the WAL writer (up to
    // `wal_writer_delay`, 200 ms by default) before the stream saw its watermark.
    source
        .batch_execute("SET datestyle = 'ISO, YMD'; SET intervalstyle = 'postgres'; SET extra_float_digits = 3; SET timezone = 'UTC'; SET synchronous_commit = on")
        .await
        .map_err(Error::source_db("configuring the backfill session"))?;
    let mut chunk_no = 0u64;
    for table in tables {
        let target_name = table.config.target_name();
        let progress = load_progress(&target, &target_name).await?;
        let labels = [("table", target_name.clone())];
        if progress.done {
            metrics::gauge!(telemetry::BACKFILL_TABLE_DONE, &labels).set(1.0);
            continue;
        }
        let estimate = estimate_rows(&source, &table.config).await?;
        metrics::gauge!(telemetry::BACKFILL_ROWS_ESTIMATED, &labels).set(estimate as f64);
        metrics::gauge!(telemetry::BACKFILL_TABLE_DONE, &labels).set(0.0);
        match &progress.last_key {
            Some(k) => {
                tracing::info!(table = %target_name, after_key = %k.join("/"), rows_done = progress.rows, estimate, "resuming backfill")
            }
            None => tracing::info!(table = %target_name, estimate, "starting backfill"),
        }
        // Rows inserted after this point arrive through the stream: stop at today's
        // largest key instead of chasing new inserts.
        let upper = max_key(&source, &table).await?;
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut copied = progress.rows.max(0) as u64;
        let mut copied_here = 0u64;
        let mut last_key = progress.last_key.clone();
        loop {
            chunk_no += 1;
            let chunk = format!("{run_id}:{chunk_no}");
            if tx
                .send(ChunkMsg::Open {
                    chunk: chunk.clone(),
                    table: table.clone(),
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            emit(&source, LOW_WATERMARK, &chunk).await?;
            let rows = match &upper {
                Some(upper) => {
                    select_chunk(
                        &source,
                        &table,
                        last_key.as_deref(),
                        upper,
                        config.backfill.chunk_rows,
                    )
                    .await?
                }
                None => Vec::new(),
            };
            if config.backfill.window_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(config.backfill.window_delay_ms)).await;
            }
            if let Some(last) = rows.last() {
                last_key = Some(key_of(&table, last));
            }
            let done =
                rows.len() < config.backfill.chunk_rows || last_key.is_some() && last_key == upper;
            let n = rows.len() as u64;
            let msg = ChunkMsg::Rows {
                chunk: chunk.clone(),
                rows,
                last_key: last_key.clone().unwrap_or_default(),
                done,
            };
            if tx.send(msg).await.is_err() {
                return Ok(());
            }
            emit(&source, HIGH_WATERMARK, &chunk).await?;
            copied += n;
            copied_here += n;
            if done || last_log.elapsed() >= Duration::from_secs(5) {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                tracing::info!(
                    table = %target_name,
                    rows_done = copied,
                    estimate,
                    rows_per_sec = (copied_here as f64 / secs) as u64,
                    "{}",
                    if done { "backfill of table done" } else { "backfill progress" }
                );
                last_log = Instant::now();
            }
            if done {
                break;
            }
            if config.backfill.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(config.backfill.pause_ms)).await;
            }
        }
    }
    Ok(())
}

/// The largest key of the table now (`None` when it is empty).
async fn max_key(source: &Client, table: &BackfillTable) -> Result<Option<Vec<String>>, Error> {
    let (s, n) = table.config.source_parts();
    let key: Vec<String> = table
        .key
        .iter()
        .map(|&i| quote_ident(&table.columns[i]))
        .collect();
    let desc: Vec<String> = key.iter().map(|k| format!("{k} DESC")).collect();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {} LIMIT 1",
        key.join(", "),
        quote_qualified(s, n),
        desc.join(", ")
    );
    let messages = source
        .simple_query(&sql)
        .await
        .map_err(Error::source_db(format!(
            "reading the largest key of {}",
            table.source_name()
        )))?;
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(Some(
                (0..key.len())
                    .map(|i| r.get(i).unwrap_or_default().to_string())
                    .collect(),
            ));
        }
    }
    Ok(None)
}

fn literals(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("'{}'", v.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn emit(source: &Client, prefix: &str, chunk: &str) -> Result<(), Error> {
    source
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&prefix, &chunk],
        )
        .await
        .map_err(Error::source_db("writing a backfill watermark"))?;
    Ok(())
}

async fn estimate_rows(source: &Client, t: &TableConfig) -> Result<i64, Error> {
    let (s, n) = t.source_parts();
    let name = quote_qualified(s, n);
    let reltuples: f32 = source
        .query_one(
            &format!(
                "SELECT reltuples FROM pg_class WHERE oid = '{}'::regclass",
                name.replace('\'', "''")
            ),
            &[],
        )
        .await
        .map_err(Error::source_db("estimating rows"))?
        .get(0);
    if reltuples > 0.0 {
        return Ok(reltuples as i64);
    }
    // Never analysed: count (only small or new tables are never analysed).
    let n: i64 = source
        .query_one(&format!("SELECT count(*) FROM {name}"), &[])
        .await
        .map_err(Error::source_db("counting rows"))?
        .get(0);
    Ok(n)
}

/// One keyset page, read with `COPY (SELECT …) TO STDOUT`: one line of the text format
/// per row, without its newline (the rows are rewritten as lines, see
/// [`crate::mapping::TableMap::copy_line`]).
async fn select_chunk(
    source: &Client,
    table: &BackfillTable,
    after: Option<&[String]>,
    upper: &[String],
    limit: usize,
) -> Result<Vec<Bytes>, Error> {
    let (s, n) = table.config.source_parts();
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(c)).collect();
    let key: Vec<String> = table
        .key
        .iter()
        .map(|&i| quote_ident(&table.columns[i]))
        .collect();
    let keys = key.join(", ");
    let mut filter = format!("WHERE ({keys}) <= ({})", literals(upper));
    if let Some(k) = after.filter(|k| k.len() == key.len()) {
        filter.push_str(&format!(" AND ({keys}) > ({})", literals(k)));
    }
    let sql = format!(
        "COPY (SELECT {} FROM {} {filter} ORDER BY {} LIMIT {limit}) TO STDOUT",
        cols.join(", "),
        quote_qualified(s, n),
        key.join(", ")
    );
    let context = || format!("reading a backfill chunk of {}", table.source_name());
    let stream = source.copy_out(&sql).await.map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) {
            // The table lost a column since the reader read its description: the
            // reader reads it again and resumes (see `reader::run`).
            Error::MissingColumn(format!(
                "legacy table {} no longer has a column the backfill reads ({}): reading its columns again",
                table.source_name(),
                e.as_db_error().map_or("", |d| d.message())
            ))
        } else {
            Error::source_db(context())(e)
        }
    })?;
    futures::pin_mut!(stream);
    let mut rows = Vec::with_capacity(limit);
    // PostgreSQL sends one row per message; a message of several rows, or a row over
    // several messages, is split and joined all the same.
    let mut partial = BytesMut::new();
    while let Some(data) = stream.next().await {
        let mut data = data.map_err(Error::source_db(context()))?;
        if partial.is_empty()
            && data.last() == Some(&b'\n')
            && !data[..data.len() - 1].contains(&b'\n')
        {
            data.truncate(data.len() - 1);
            rows.push(data);
            continue;
        }
        partial.extend_from_slice(&data);
        while let Some(end) = partial.iter().position(|&b| b == b'\n') {
            let line = partial.split_to(end + 1);
            rows.push(line.freeze().slice(..end));
        }
    }
    if !partial.is_empty() {
        return Err(Error::Invariant(format!(
            "{}: a backfill chunk ended inside a row",
            table.source_name()
        )));
    }
    Ok(rows)
}

/// The key of a chunk row (see [`select_chunk`]), one string per key column.
fn key_of(table: &BackfillTable, line: &[u8]) -> Vec<String> {
    let mut ranges = Vec::new();
    copy_text::fields(line, &mut ranges);
    table
        .key
        .iter()
        .map(|&i| {
            ranges
                .get(i)
                .and_then(|r| copy_text::unescape(&line[r.clone()]))
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default()
        })
        .collect()
}
