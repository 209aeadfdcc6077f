//! `rekeyctl verify`: compares the legacy and the new store, keys translated, and
//! reports every difference that persists.
//!
//! What is checked, per configured table:
//! - every legacy row has a live target row with `id` = F(entity, key), `legacy_id` = key,
//!   each reference = F(parent, value) and each derived column = F(namespace, value)
//!   (NULL stays NULL), and the same copied columns (one md5 per row on each server,
//!   columns cast to text in legacy order; names on re-check);
//! - soft-deleted target rows are exactly the rows gone from legacy: a legacy row with a
//!   soft-deleted target row is `wrongly_deleted`, a live target row without a legacy
//!   row is `extra`;
//! - every foreign key of the target points at an existing row, and no live row points
//!   at a soft-deleted parent (legacy would have cascaded).
//!
//! Target bookkeeping (`row_version`, `deleted_at`, an `organization_id` that is not
//! derived) is not compared.
//!
//! How, without disturbing the legacy database:
//!
//! ```text
//!  legacy   SELECT … WHERE id > $last ORDER BY id LIMIT n ──┐
//!                                                           ├─ merge by key ─▶ findings
//!  target   SELECT … WHERE legacy_id > $last                │   (≤ 1 page per side
//!           ORDER BY legacy_id LIMIT n ─────────────────────┘    in memory)
//!
//!  pass 1 (all tables) ─▶ legacy WAL position L ─▶ wait until rekey.checkpoint ≥ L
//!                                                   (--settle-timeout)
//!                      ─▶ re-check each differing key (≤ 1000 per table), whole rows
//!                      ─▶ report what persists
//! ```
//!
//! - Bounded memory: keyset pages of `--chunk-rows` on each side (at most three buffered
//!   per side: the next page is read while the others are merged); the differing keys kept
//!   for the re-check are capped per table (past the cap they are counted as found).
//!   Composite-key tables are paged in legacy key order and their target rows looked up
//!   by translated key (`unnest`); their extra rows are named by a second pass over the
//!   target only when the counts say there are some.
//! - Not blocking legacy: only single `SELECT`s in autocommit (no transaction is held
//!   open across pages), each bounded by a key range and `LIMIT` or a key list and served
//!   by the primary key; sessions are read-only and the legacy session has a statement
//!   timeout, so no statement holds its `ACCESS SHARE` lock for long (a long one would
//!   make a waiting DDL queue everyone behind it). A hot standby of legacy works too.
//! - Live replication: both stores may move while pages are read, so a first-pass
//!   difference may just be lag. Differences are re-checked once after the target's
//!   consistent position (`max(end_lsn)` of `rekey.checkpoint`) has passed the legacy WAL
//!   position taken at the end of the first pass; only those that persist are reported.
//!   A key changed again during the re-check itself can still show up: run verify when
//!   the source is quiet for an exact answer (e.g. at cutover).

mod merge;
mod plan;
mod report;
mod scan;

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::Error;
use crate::pg_connect::Side;
use crate::writer::lsn_text;

pub use merge::{Counts, Finding, RowKey};
pub use plan::TablePlan;
pub use report::{Report, TableReport};

/// Rows per page and statement.
pub const DEFAULT_CHUNK_ROWS: usize = 10_000;
/// How long to wait for the target to catch up before the re-check.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Differing keys kept per table for the re-check (and memory bound of the findings).
pub const RECHECK_LIMIT: usize = 1_000;
/// Differences listed per table in the report.
pub const FIRST_DIFFERENCES: usize = 10;
/// Longest statement allowed on the legacy database.
pub const LEGACY_STATEMENT_TIMEOUT: &str = "60s";
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Identical output formats on both servers, so the md5 of a row's text is comparable;
/// read-only sessions.
const SESSION_SQL: &str = "SET application_name = 'rekeyctl verify';
    SET default_transaction_read_only = on;
    SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';
    SET extra_float_digits = 1; SET bytea_output = 'hex';";

#[derive(Debug, Clone)]
pub struct Options {
    pub chunk_rows: usize,
    pub settle_timeout: Duration,
    pub recheck_limit: usize,
    pub progress_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            chunk_rows: DEFAULT_CHUNK_ROWS,
            settle_timeout: DEFAULT_SETTLE_TIMEOUT,
            recheck_limit: RECHECK_LIMIT,
            progress_interval: PROGRESS_INTERVAL,
        }
    }
}

/// How the wait before the re-check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Reached {
        target_lsn: u64,
    },
    TimedOut {
        target_lsn: Option<u64>,
    },
    /// The target has no `rekey.checkpoint` (nothing ever applied by a writer).
    NoCheckpoint,
}

/// What verification reports while it runs (one line each; `rekeyctl` prints them to
/// stderr).
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Table {
        table: String,
        rows: u64,
        /// The planner's row estimate of the legacy table.
        estimated: Option<u64>,
        chunks: u64,
        elapsed: Duration,
        done: bool,
    },
    Settling {
        legacy_lsn: u64,
        timeout: Duration,
    },
    Settled {
        legacy_lsn: u64,
        outcome: Settle,
    },
    Rechecking {
        table: String,
        keys: usize,
    },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Table {
                table,
                rows,
                estimated,
                chunks,
                elapsed,
                done,
            } => {
                let rate = *rows as f64 / elapsed.as_secs_f64().max(1e-3);
                if *done {
                    write!(
                        f,
                        "verify {table}: done, {rows} rows compared in {chunks} chunks, {:.1}s, {rate:.0} rows/s",
                        elapsed.as_secs_f64()
                    )
                } else {
                    let est = estimated.map_or("?".to_string(), |e| format!("~{e}"));
                    write!(
                        f,
                        "verify {table}: {rows}/{est} rows compared, {chunks} chunks, {rate:.0} rows/s"
                    )
                }
            }
            Progress::Settling {
                legacy_lsn,
                timeout,
            } => write!(
                f,
                "verify: differences found; waiting up to {}s for the target to reach legacy WAL {} before re-checking them",
                timeout.as_secs(),
                lsn_text(*legacy_lsn)
            ),
            Progress::Settled {
                legacy_lsn,
                outcome,
            } => match outcome {
                Settle::Reached { target_lsn } => write!(
                    f,
                    "verify: target consistent at {} (legacy was at {})",
                    lsn_text(*target_lsn),
                    lsn_text(*legacy_lsn)
                ),
                Settle::TimedOut { target_lsn } => write!(
                    f,
                    "verify: target did not reach legacy WAL {} in time (it is at {}); re-checking anyway",
                    lsn_text(*legacy_lsn),
                    target_lsn.map_or("no position".to_string(), lsn_text)
                ),
                Settle::NoCheckpoint => write!(
                    f,
                    "verify: the target has no rekey.checkpoint; re-checking without waiting"
                ),
            },
            Progress::Rechecking { table, keys } => {
                write!(f, "verify {table}: re-checking {keys} differing keys")
            }
        }
    }
}

/// Compares the stores of `config`; `on_progress` gets a line now and then.
pub async fn run(
    config: &Config,
    opts: &Options,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Report, Error> {
    for (url, field, var) in [
        (&config.source.url, "source.url", "REKEY_SOURCE_URL"),
        (&config.target.url, "target.url", "REKEY_TARGET_URL"),
    ] {
        if url.expose().is_empty() {
            return Err(Error::Config(format!(
                "{field}: missing: set it in the file or {var}"
            )));
        }
    }
    if config.rekey.secret.expose().len() < crate::rekey::MIN_SECRET_BYTES {
        return Err(Error::Config(
            "rekey.secret: missing or too short: set REKEY_ID_SECRET (verify computes the UUIDs)"
                .into(),
        ));
    }
    if opts.chunk_rows == 0 {
        return Err(Error::Config("--chunk-rows: must be at least 1".into()));
    }
    let started = Instant::now();
    let legacy = connect(config, Side::Source).await?;
    let target = connect(config, Side::Target).await?;
    let rk = config.rekeyer();
    let ctx = scan::Ctx {
        legacy: &legacy,
        target: &target,
        rk: &rk,
        opts,
    };

    let mut plans = Vec::new();
    let mut soft_delete = HashMap::new();
    for t in &config.tables {
        let (ls, ln) = t.source_parts();
        let (ts, tn) = t.target_parts();
        let l = plan::read_catalog(&legacy, ls, ln)
            .await
            .map_err(Error::source_db(format!(
                "reading the catalog of {}",
                t.source_name()
            )))?;
        let c = plan::read_catalog(&target, ts, tn)
            .await
            .map_err(Error::target_db(format!(
                "reading the catalog of {}",
                t.target_name()
            )))?;
        let p = TablePlan::new(config, t, &l, &c)?;
        soft_delete.insert(p.name.clone(), p.soft_delete);
        plans.push(p);
    }

    // Pass 1.
    let mut first = Vec::new();
    for p in &plans {
        let scanned = if p.has_id() {
            scan::scan_id_table(&ctx, p, on_progress).await?
        } else {
            scan::scan_composite_table(&ctx, p, on_progress).await?
        };
        let fks = p.foreign_keys(config, |name| {
            soft_delete.get(name).copied().unwrap_or(false)
        });
        let dangling = scan::check_foreign_keys(&ctx, p, &fks).await?;
        first.push((scanned, fks, dangling));
    }

    // Settle, then re-check what differed.
    let differs = first
        .iter()
        .any(|(s, _, (dangling, _))| !s.tally.is_empty() || *dangling > 0);
    if differs {
        let legacy_lsn = wal_position(&legacy).await?;
        on_progress(&Progress::Settling {
            legacy_lsn,
            timeout: opts.settle_timeout,
        });
        let outcome = settle(&target, legacy_lsn, opts.settle_timeout).await?;
        on_progress(&Progress::Settled {
            legacy_lsn,
            outcome,
        });
    }
    let mut tables = Vec::new();
    for (p, (scanned, fks, (dangling, dangling_labels))) in plans.iter().zip(first) {
        let tally = scanned.tally;
        let mut counts = tally.overflow.plus(tally.fixed);
        // Row counts are the first pass's, corrected by what the re-check saw for each
        // re-checked key, so they agree with the differences reported.
        let mut rows = [
            scanned.legacy_rows,
            scanned.target_live_rows,
            scanned.target_deleted_rows,
        ];
        let mut labels = Vec::new();
        if !tally.suspects.is_empty() {
            on_progress(&Progress::Rechecking {
                table: p.name.clone(),
                keys: tally.suspects.len(),
            });
            let rechecked = scan::recheck(&ctx, p, &tally.suspects).await?;
            for (suspect, now) in tally.suspects.iter().zip(rechecked) {
                for ((n, before), after) in rows
                    .iter_mut()
                    .zip(suspect.seen.counts())
                    .zip(now.seen.counts())
                {
                    *n = (*n + after).saturating_sub(before);
                }
                if let Some((finding, label)) = now.finding {
                    counts.add(&finding);
                    labels.push(label);
                }
            }
        }
        labels.extend(tally.fixed_labels);
        let (dangling, dangling_labels) = if dangling > 0 {
            scan::check_foreign_keys(&ctx, p, &fks).await?
        } else {
            (dangling, dangling_labels)
        };
        labels.extend(dangling_labels);
        labels.truncate(FIRST_DIFFERENCES);
        let unchecked = tally.overflow.total();
        if unchecked > 0 {
            labels.push(format!(
                "… and {unchecked} more differences past the first {} (not re-checked)",
                opts.recheck_limit
            ));
        }
        tables.push(TableReport {
            table: p.name.clone(),
            legacy_rows: rows[0],
            target_live_rows: rows[1],
            target_deleted_rows: rows[2],
            missing: counts.missing,
            extra: counts.extra,
            mismatched: counts.mismatched,
            wrongly_deleted: counts.wrongly_deleted,
            dangling_fks: dangling,
            first_differences: labels,
        });
    }
    Ok(Report {
        tables,
        elapsed: started.elapsed(),
    })
}

async fn connect(config: &Config, side: Side) -> Result<Client, Error> {
    let legacy = matches!(side, Side::Source);
    let client = crate::pg_connect::connect(config, side, "connecting").await?;
    let mut session = SESSION_SQL.to_string();
    if legacy {
        session.push_str(&format!(
            " SET statement_timeout = '{LEGACY_STATEMENT_TIMEOUT}';"
        ));
    }
    client
        .batch_execute(&session)
        .await
        .map_err(side.error("setting up the session"))?;
    Ok(client)
}

/// The legacy WAL position now (the replay position on a standby), as an integer.
async fn wal_position(legacy: &Client) -> Result<u64, Error> {
    let lsn: i64 = legacy
        .query_one(
            "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                     ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .map_err(Error::source_db("reading the WAL position"))?
        .get(0);
    Ok(lsn as u64)
}

/// Waits until the target's consistent position passes `lsn`, at most `timeout`.
async fn settle(target: &Client, lsn: u64, timeout: Duration) -> Result<Settle, Error> {
    let err = || Error::target_db("reading rekey.checkpoint");
    let exists: bool = target
        .query_one("SELECT to_regclass('rekey.checkpoint') IS NOT NULL", &[])
        .await
        .map_err(err())?
        .get(0);
    if !exists {
        return Ok(Settle::NoCheckpoint);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let applied: Option<i64> = target
            .query_one("SELECT max(end_lsn) FROM rekey.checkpoint", &[])
            .await
            .map_err(err())?
            .get(0);
        let applied = applied.map(|a| a as u64);
        if let Some(a) = applied.filter(|a| *a >= lsn) {
            return Ok(Settle::Reached { target_lsn: a });
        }
        if Instant::now() >= deadline {
            return Ok(Settle::TimedOut {
                target_lsn: applied,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
