//! What `rekeyctl status` shows: the phase and cutover state, backfill progress, the slot
//! on the source, the writer's consistent position in the target, and the lag between
//! them. Read-only on both databases.

use std::fmt;

use crate::checkpoint;
use crate::config::Config;
use crate::error::Error;
use crate::pg_connect::{self, Side};
use crate::slot::{self, SlotPosition};
use crate::writer::lsn_text;

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub slot: String,
    /// The phase asked for in the config file.
    pub phase: String,
    pub source: Option<SlotPosition>,
    pub checkpoint: Option<checkpoint::Checkpoint>,
    /// The recorded cutover state (`rekey.status`).
    pub cutover: Option<crate::cutover::Status>,
    /// Per table: (target table, rows copied, done, indexes deferred until it is done).
    pub backfill: Vec<(String, i64, bool, i64)>,
}

impl Status {
    /// Source WAL not yet applied to the target, in bytes.
    pub fn lag_bytes(&self) -> Option<u64> {
        let (s, c) = (self.source?, self.checkpoint?);
        Some(s.current_lsn.saturating_sub(c.end_lsn))
    }

    /// The recorded state, else "replicating".
    pub fn state(&self) -> &str {
        self.cutover
            .as_ref()
            .map_or("replicating", |c| c.state.as_str())
    }

    pub fn to_json(&self) -> String {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "null".to_string());
        let lsn = |v: Option<u64>| opt(v.map(|l| format!("\"{}\"", lsn_text(l))));
        let cutover = self.cutover.as_ref();
        let backfill: Vec<String> = self
            .backfill
            .iter()
            .map(|(t, rows, done, deferred)| {
                format!("{{\"table\":\"{t}\",\"rows_copied\":{rows},\"done\":{done},\"indexes_deferred\":{deferred}}}")
            })
            .collect();
        let fields = [
            ("phase", format!("\"{}\"", self.phase)),
            ("state", format!("\"{}\"", self.state())),
            (
                "cutover_lsn",
                lsn(cutover.and_then(|c| c.cutover_lsn).map(|l| l as u64)),
            ),
            (
                "drain_seconds",
                opt(cutover
                    .and_then(|c| c.drain_seconds)
                    .map(|d| format!("{d:.3}"))),
            ),
            (
                "legacy_writes_after_cutover",
                cutover
                    .map_or(0, |c| c.legacy_writes_after_cutover)
                    .to_string(),
            ),
            (
                "detail",
                opt(cutover
                    .and_then(|c| c.detail.clone())
                    .map(|d| format!("{d:?}"))),
            ),
            ("backfill", format!("[{}]", backfill.join(","))),
            ("slot", format!("\"{}\"", self.slot)),
            ("source_lsn", lsn(self.source.map(|s| s.current_lsn))),
            (
                "slot_confirmed_lsn",
                lsn(self.source.map(|s| s.confirmed_flush_lsn)),
            ),
            (
                "slot_retained_wal_bytes",
                opt(self.source.map(|s| s.retained_bytes.to_string())),
            ),
            ("consistent_lsn", lsn(self.checkpoint.map(|c| c.commit_lsn))),
            (
                "next_offset",
                opt(self.checkpoint.map(|c| c.next_offset.to_string())),
            ),
            ("lag_bytes", opt(self.lag_bytes().map(|b| b.to_string()))),
        ];
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "phase:    {} (state {})", self.phase, self.state())?;
        if let Some(c) = &self.cutover {
            if let Some(lsn) = c.cutover_lsn {
                write!(f, "          cutover point {}", lsn_text(lsn as u64))?;
                if let Some(d) = c.drain_seconds {
                    write!(f, ", drained in {d:.1}s")?;
                }
                writeln!(
                    f,
                    ", legacy writes after it: {}",
                    c.legacy_writes_after_cutover
                )?;
            }
            if let Some(d) = &c.detail {
                writeln!(f, "          {d}")?;
            }
        }
        match self.source {
            Some(s) => writeln!(
                f,
                "source:   wal {}  slot {} confirmed {}  retained {} bytes",
                lsn_text(s.current_lsn),
                self.slot,
                lsn_text(s.confirmed_flush_lsn),
                s.retained_bytes
            )?,
            None => writeln!(
                f,
                "source:   slot {} not found (or source.url not set)",
                self.slot
            )?,
        }
        match self.checkpoint {
            Some(c) => writeln!(
                f,
                "target:   consistent at {}  next offset {}",
                lsn_text(c.commit_lsn),
                c.next_offset
            )?,
            None => writeln!(f, "target:   nothing applied yet (or target.url not set)")?,
        }
        if let Some(lag) = self.lag_bytes() {
            writeln!(f, "lag:      {lag} bytes of source WAL")?;
        }
        for (table, rows, done, deferred) in &self.backfill {
            writeln!(
                f,
                "backfill: {table} {rows} rows copied{}{}",
                if *done { ", done" } else { "" },
                if *deferred > 0 {
                    format!(", {deferred} indexes deferred until done")
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    }
}

pub async fn read(config: &Config) -> Result<Status, Error> {
    let mut status = Status {
        slot: config.source.slot.clone(),
        phase: config.phase.label().to_string(),
        ..Default::default()
    };
    if !config.source.url.expose().is_empty() {
        let c = pg_connect::connect(config, Side::Source, "connecting").await?;
        status.source = slot::slot_position(&c, &config.source.slot).await?;
    }
    if !config.target.url.expose().is_empty() {
        let c = pg_connect::connect(config, Side::Target, "connecting").await?;
        let exists: bool = c
            .query_one("SELECT to_regclass('rekey.checkpoint') IS NOT NULL", &[])
            .await
            .map_err(Error::target_db("reading the checkpoint"))?
            .get(0);
        if exists {
            status.checkpoint =
                checkpoint::load(&c, &config.kafka.topic, crate::publish::PARTITION).await?;
        }
        status.cutover = crate::cutover::load(&c, &config.source.slot).await?;
        for t in &config.tables {
            let p = crate::backfill::load_progress(&c, &t.target_name()).await?;
            let deferred = crate::deferred_index::count(&c, Some(&t.target_name())).await?;
            status
                .backfill
                .push((t.target_name(), p.rows, p.done, deferred));
        }
    }
    Ok(status)
}

/// The target table and legacy key of a UUID.
pub async fn resolve_uuid(
    config: &Config,
    id: uuid::Uuid,
) -> Result<Option<(String, String)>, Error> {
    if config.target.url.expose().is_empty() {
        return Err(Error::Config(
            "target.url: missing: set REKEY_TARGET_URL to resolve UUIDs".into(),
        ));
    }
    let c = pg_connect::connect(config, Side::Target, "connecting").await?;
    for t in config.tables.iter().filter(|t| t.id.is_some()) {
        let (s, n) = t.target_parts();
        let sql = format!(
            "SELECT legacy_id::text FROM {} WHERE id = $1::text::uuid",
            crate::config::quote_qualified(s, n)
        );
        let row = c
            .query_opt(&sql, &[&id.to_string()])
            .await
            .map_err(Error::target_db(format!("looking up {}", t.target_name())))?;
        if let Some(r) = row {
            return Ok(Some((t.target_name(), r.get(0))));
        }
    }
    Ok(None)
}
