//! What `rekeyctl status` shows: the slot on the source, the writer's consistent
//! position in the target, and the lag between them. Read-only on both databases.

use std::fmt;

use crate::checkpoint;
use crate::config::Config;
use crate::error::Error;
use crate::slot::{self, SlotPosition};
use crate::writer::lsn_text;

#[derive(Debug, Clone, Default)]
pub struct Status {
    pub slot: String,
    pub source: Option<SlotPosition>,
    pub checkpoint: Option<checkpoint::Checkpoint>,
}

impl Status {
    /// Source WAL not yet applied to the target, in bytes.
    pub fn lag_bytes(&self) -> Option<u64> {
        let (s, c) = (self.source?, self.checkpoint?);
        Some(s.current_lsn.saturating_sub(c.end_lsn))
    }

    pub fn to_json(&self) -> String {
        let opt = |v: Option<String>| v.map_or("null".to_string(), |s| s);
        format!(
            "{{\"slot\":\"{}\",\"source_lsn\":{},\"slot_confirmed_lsn\":{},\"slot_retained_wal_bytes\":{},\"consistent_lsn\":{},\"next_offset\":{},\"lag_bytes\":{}}}",
            self.slot,
            opt(self.source.map(|s| format!("\"{}\"", lsn_text(s.current_lsn)))),
            opt(self.source.map(|s| format!("\"{}\"", lsn_text(s.confirmed_flush_lsn)))),
            opt(self.source.map(|s| s.retained_bytes.to_string())),
            opt(self.checkpoint.map(|c| format!("\"{}\"", lsn_text(c.commit_lsn)))),
            opt(self.checkpoint.map(|c| c.next_offset.to_string())),
            opt(self.lag_bytes().map(|b| b.to_string())),
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            Some(s) => writeln!(
                f,
                "source: wal {}  slot {} confirmed {}  retained {} bytes",
                lsn_text(s.current_lsn),
                self.slot,
                lsn_text(s.confirmed_flush_lsn),
                s.retained_bytes
            )?,
            None => writeln!(
                f,
                "source: slot {} not found (or source.url not set)",
                self.slot
            )?,
        }
        match self.checkpoint {
            Some(c) => writeln!(
                f,
                "target: consistent at {}  next offset {}",
                lsn_text(c.commit_lsn),
                c.next_offset
            )?,
            None => writeln!(f, "target: nothing applied yet (or target.url not set)")?,
        }
        if let Some(lag) = self.lag_bytes() {
            writeln!(f, "lag:    {lag} bytes of source WAL")?;
        }
        Ok(())
    }
}

pub async fn read(config: &Config) -> Result<Status, Error> {
    let mut status = Status {
        slot: config.source.slot.clone(),
        ..Default::default()
    };
    if !config.source.url.expose().is_empty() {
        let c = slot::connect(config.source.url.expose(), "source")
            .await
            .map_err(Error::source_db("connecting"))?;
        status.source = slot::slot_position(&c, &config.source.slot).await?;
    }
    if !config.target.url.expose().is_empty() {
        let c = slot::connect(config.target.url.expose(), "target")
            .await
            .map_err(Error::target_db("connecting"))?;
        let exists: bool = c
            .query_one("SELECT to_regclass('rekey.checkpoint') IS NOT NULL", &[])
            .await
            .map_err(Error::target_db("reading the checkpoint"))?
            .get(0);
        if exists {
            status.checkpoint =
                checkpoint::load(&c, &config.kafka.topic, crate::publish::PARTITION).await?;
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
    let c = slot::connect(config.target.url.expose(), "target")
        .await
        .map_err(Error::target_db("connecting"))?;
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
