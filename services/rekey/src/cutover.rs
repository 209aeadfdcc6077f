//! The cutover flag and the phase machine.
//!
//! `phase` in the config file is what the operator wants; the reader re-reads the file
//! when it changes (a ConfigMap update) or on SIGHUP, and drives the migration's state:
//!
//! ```text
//!  phase = replicate            phase = cutover
//!  ─────────────────            ─────────────────────────────────────────────────────────
//!  replicating ──────────────▶  draining ──▶ validating ──▶ verifying ──▶ cutover_ready
//!       ▲                          │              │              │             │
//!       └──── phase = replicate ───┴──────────────┴──── failed ◀─┘             │
//!       └──────────────────────────────── phase = replicate ───────────────────┘
//! ```
//!
//! - **draining**: the reader records the legacy's current WAL position (the cutover
//!   point) and writes a heartbeat after it; the state advances once backfill is done and
//!   the writer's consistent position (its checkpoint in the target) has passed the point.
//! - **validating**: every foreign key of the new store points at an existing row.
//! - **verifying**: [`crate::verify`] compares both stores; any difference is `failed`.
//! - **cutover_ready**: the application may switch to the new store. A legacy write that
//!   still arrives after the cutover point raises an alarm (metric and ERROR log) and is
//!   still applied.
//!
//! The state is a gauge (`rekey_cutover_phase{phase}`), a row in `rekey.status` in the
//! new store, and what `rekeyctl status` shows.
//!
//! A later `reverse` phase (new → legacy streaming for rollback) fits as a third value
//! of [`Phase`] whose states start from `cutover_ready`: a reader on the new store's slot,
//! rekeyed back through `legacy_id`, with the same watermark, checkpoint and verify
//! machinery pointed the other way. It is not accepted in the config until it exists.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_postgres::Client;

use crate::config::{quote_qualified, Config};
use crate::error::Error;
use crate::telemetry;

/// What the operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Replicate,
    Cutover,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Replicate => "replicate",
            Phase::Cutover => "cutover",
        }
    }
}

/// Where the migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Replicating,
    Draining,
    Validating,
    Verifying,
    CutoverReady,
    Failed,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Replicating,
        State::Draining,
        State::Validating,
        State::Verifying,
        State::CutoverReady,
        State::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            State::Replicating => "replicating",
            State::Draining => "draining",
            State::Validating => "validating",
            State::Verifying => "verifying",
            State::CutoverReady => "cutover_ready",
            State::Failed => "failed",
        }
    }
}

pub const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS rekey;
CREATE TABLE IF NOT EXISTS rekey.status (
    slot            text        PRIMARY KEY,
    phase           text        NOT NULL,
    state           text        NOT NULL,
    cutover_lsn     bigint,
    drain_seconds   double precision,
    detail          text,
    legacy_writes_after_cutover bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);";

/// Publishes `state` as the gauge (1 for the current label, 0 for the others).
pub fn export(state: State) {
    for s in State::ALL {
        metrics::gauge!(telemetry::CUTOVER_PHASE, "phase" => s.label()).set(if s == state {
            1.0
        } else {
            0.0
        });
    }
}

/// The recorded status, if any.
#[derive(Debug, Clone)]
pub struct Status {
    pub phase: String,
    pub state: String,
    pub cutover_lsn: Option<i64>,
    pub drain_seconds: Option<f64>,
    pub detail: Option<String>,
    pub legacy_writes_after_cutover: i64,
}

pub async fn load(target: &Client, slot: &str) -> Result<Option<Status>, Error> {
    let exists: bool = target
        .query_one("SELECT to_regclass('rekey.status') IS NOT NULL", &[])
        .await
        .map_err(Error::target_db("reading rekey.status"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = target
        .query_opt(
            "SELECT phase, state, cutover_lsn, drain_seconds, detail, legacy_writes_after_cutover FROM rekey.status WHERE slot = $1",
            &[&slot],
        )
        .await
        .map_err(Error::target_db("reading rekey.status"))?;
    Ok(row.map(|r| Status {
        phase: r.get(0),
        state: r.get(1),
        cutover_lsn: r.get(2),
        drain_seconds: r.get(3),
        detail: r.get(4),
        legacy_writes_after_cutover: r.get(5),
    }))
}

/// Records the state (and the cutover point / drain time / detail when given).
pub async fn record(
    target: &Client,
    slot: &str,
    phase: Phase,
    state: State,
    cutover_lsn: Option<u64>,
    drain_seconds: Option<f64>,
    detail: Option<&str>,
) -> Result<(), Error> {
    target
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(Error::target_db("creating rekey.status"))?;
    target
        .execute(
            "INSERT INTO rekey.status AS s (slot, phase, state, cutover_lsn, drain_seconds, detail)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (slot) DO UPDATE SET phase = EXCLUDED.phase, state = EXCLUDED.state,
                 cutover_lsn = EXCLUDED.cutover_lsn, drain_seconds = EXCLUDED.drain_seconds,
                 detail = EXCLUDED.detail, updated_at = now(),
                 legacy_writes_after_cutover = CASE WHEN EXCLUDED.cutover_lsn IS DISTINCT FROM s.cutover_lsn
                                                    THEN 0 ELSE s.legacy_writes_after_cutover END",
            &[&slot, &phase.label(), &state.label(), &cutover_lsn.map(|l| l as i64), &drain_seconds, &detail],
        )
        .await
        .map_err(Error::target_db("recording the cutover state"))?;
    export(state);
    tracing::info!(
        state = state.label(),
        detail = detail.unwrap_or(""),
        "cutover state"
    );
    Ok(())
}

/// Counts a legacy write that arrived after the cutover point.
pub async fn record_late_write(target: &Client, slot: &str) -> Result<(), Error> {
    target
        .execute(
            "UPDATE rekey.status SET legacy_writes_after_cutover = legacy_writes_after_cutover + 1, updated_at = now() WHERE slot = $1",
            &[&slot],
        )
        .await
        .map_err(Error::target_db("counting a legacy write after cutover"))?;
    Ok(())
}

/// Runs the cutover from `draining` to `cutover_ready` (or `failed`). Returns the
/// cutover point. Cancel it (drop the future) to go back to replicating.
pub async fn run(
    config: &Config,
    source: &Client,
    target: &Client,
    cutover_lsn: &tokio::sync::watch::Sender<Option<u64>>,
) -> Result<(), Error> {
    let slot = &config.source.slot;
    let point: i64 = source
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .map_err(Error::source_db("reading the cutover point"))?
        .get(0);
    let point = point as u64;
    cutover_lsn.send_replace(Some(point));
    record(
        target,
        slot,
        Phase::Cutover,
        State::Draining,
        Some(point),
        None,
        None,
    )
    .await?;
    // A heartbeat after the point carries the consistent position past it even when the
    // legacy database is idle.
    crate::slot::emit_heartbeat(source).await?;
    let started = Instant::now();
    loop {
        let applied: i64 = target
            .query_one(
                "SELECT coalesce(max(end_lsn), 0) FROM rekey.checkpoint",
                &[],
            )
            .await
            .map_err(Error::target_db("reading the consistent position"))?
            .get(0);
        // Backfill is over once every table is copied and its deferred indexes are
        // built again (the writer does that in the transaction after the last chunk).
        let backfilling = config.backfill.enabled
            && (!crate::backfill::all_done(target, config).await?
                || crate::deferred_index::any(target).await?);
        if applied as u64 >= point && !backfilling {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain = started.elapsed().as_secs_f64();
    tracing::info!(drain_seconds = drain, "drained to the cutover point");
    let at = |state: State, detail: Option<String>| async move {
        record(
            target,
            slot,
            Phase::Cutover,
            state,
            Some(point),
            Some(drain),
            detail.as_deref(),
        )
        .await
    };
    at(State::Validating, None).await?;
    let dangling = dangling_foreign_keys(target, config).await?;
    if !dangling.is_empty() {
        let detail = format!("foreign keys pointing at no row: {}", dangling.join(", "));
        tracing::error!(%detail, "cutover validation failed");
        return at(State::Failed, Some(detail)).await;
    }
    at(State::Verifying, None).await?;
    let opts = crate::verify::Options::default();
    let report = crate::verify::run(config, &opts, &mut |p| tracing::info!("{p}")).await?;
    if !report.is_clean() {
        let tables: Vec<String> = report
            .tables
            .iter()
            .filter(|t| !t.is_clean())
            .map(|t| format!("{} ({})", t.table, t.differences()))
            .collect();
        let detail = format!("verify found differences in {}", tables.join(", "));
        tracing::error!(%detail, "cutover verification failed");
        return at(State::Failed, Some(detail)).await;
    }
    at(State::CutoverReady, None).await
}

/// `child.column → parent` references whose value matches no parent row.
async fn dangling_foreign_keys(target: &Client, config: &Config) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for t in &config.tables {
        let (cs, cn) = t.target_parts();
        for (column, parent) in config.references(t) {
            let (ps, pn) = parent.target_parts();
            let sql = format!(
                "SELECT count(*) FROM {} c WHERE c.{col} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {} p WHERE p.id = c.{col})",
                quote_qualified(cs, cn),
                quote_qualified(ps, pn),
                col = crate::config::quote_ident(column)
            );
            let n: i64 = target
                .query_one(&sql, &[])
                .await
                .map_err(Error::target_db(format!(
                    "validating {}.{column}",
                    t.target_name()
                )))?
                .get(0);
            if n > 0 {
                out.push(format!("{}.{column} ({n} rows)", t.target_name()));
            }
        }
    }
    Ok(out)
}
