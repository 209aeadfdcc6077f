//! The legacy side's set-up: checks, the publication and the replication slot.
//!
//! Before streaming, the reader proves the source can be migrated, and says exactly
//! what to fix when it cannot: `wal_level` must be `logical`; every configured table
//! must exist and have a primary key (it is the replica identity the stream sends for
//! updates and deletes). Then it creates the publication over the configured tables (or
//! adds missing ones to an existing one) and the pgoutput slot if it does not exist.
//!
//! The slot is the reader's lock: only one walsender can stream it, so a second reader
//! replica gets "replication slot is active" (SQLSTATE 55006), which is retryable: it
//! waits and takes over when the first one goes away.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::{quote_qualified, Config};
use crate::error::Error;

/// A legacy column as the stream sends it (attnum order, no dropped or generated columns).
#[derive(Debug, Clone)]
pub struct SourceColumn {
    pub name: String,
    pub type_name: String,
    pub is_key: bool,
}

/// The configured legacy tables' columns, by `schema.table`.
#[derive(Debug, Clone, Default)]
pub struct SourceCatalog {
    pub tables: HashMap<String, Vec<SourceColumn>>,
}

impl SourceCatalog {
    pub fn type_of(&self, table: &str, column: &str) -> Option<&str> {
        self.tables
            .get(table)?
            .iter()
            .find(|c| c.name == column)
            .map(|c| c.type_name.as_str())
    }
}

/// Checks the source and returns the legacy columns of the configured tables.
pub async fn check_source(client: &Client, config: &Config) -> Result<SourceCatalog, Error> {
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(Error::source_db("reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(Error::Setup(format!(
            "source database has wal_level = {wal_level}: set wal_level = logical in postgresql.conf and restart PostgreSQL"
        )));
    }
    let mut catalog = SourceCatalog::default();
    for t in &config.tables {
        let (schema, name) = t.source_parts();
        let rows = client
            .query(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod),
                        coalesce(a.attnum = ANY(i.indkey), false) AS is_key,
                        i.indrelid IS NOT NULL AS has_pk
                   FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                                      AND a.attgenerated = ''
                   LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                  ORDER BY a.attnum",
                &[&schema, &name],
            )
            .await
            .map_err(Error::source_db(format!(
                "reading the columns of {}",
                t.source_name()
            )))?;
        if rows.is_empty() {
            return Err(Error::Setup(format!(
                "source table {} does not exist: create it or remove it from [[tables]]",
                t.source_name()
            )));
        }
        if !rows[0].get::<_, bool>(3) {
            return Err(Error::Setup(format!(
                "source table {} has no primary key: add one (ALTER TABLE {} ADD PRIMARY KEY (...)) or remove it from [[tables]]",
                t.source_name(),
                t.source_name()
            )));
        }
        let columns: HashMap<String, (String, bool)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, String>(1), r.get::<_, bool>(2)),
                )
            })
            .collect();
        let mut named: Vec<&str> = t.references.keys().map(String::as_str).collect();
        named.extend(t.derive.iter().map(|d| d.from.as_str()));
        named.extend(t.id.as_deref());
        for col in named {
            if !columns.contains_key(col) {
                return Err(Error::Setup(format!(
                    "source table {} has no column {col:?} (named in its [[tables]] config)",
                    t.source_name()
                )));
            }
        }
        if let Some(id) = &t.id {
            let keys: Vec<&String> = columns
                .iter()
                .filter(|(_, (_, k))| *k)
                .map(|(n, _)| n)
                .collect();
            if keys != [id] {
                return Err(Error::Setup(format!(
                    "source table {}: `id = {id:?}` must be its whole primary key (it is {keys:?})",
                    t.source_name()
                )));
            }
            let ty = &columns[id].0;
            if !matches!(ty.as_str(), "integer" | "bigint" | "smallint") {
                return Err(Error::Setup(format!(
                    "source table {}: key column {id:?} is {ty}, rekey maps integer keys",
                    t.source_name()
                )));
            }
        }
        let ordered = rows
            .iter()
            .map(|r| SourceColumn {
                name: r.get(0),
                type_name: r.get(1),
                is_key: r.get(2),
            })
            .collect();
        catalog.tables.insert(t.source_name(), ordered);
    }
    Ok(catalog)
}

/// Creates the publication over the configured tables, or adds the ones it lacks.
pub async fn ensure_publication(client: &Client, config: &Config) -> Result<(), Error> {
    let publication = &config.source.publication;
    let tables: Vec<String> = config
        .tables
        .iter()
        .map(|t| {
            let (s, n) = t.source_parts();
            quote_qualified(s, n)
        })
        .collect();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await
        .map_err(Error::source_db("reading publications"))?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {publication} FOR TABLE {}",
                tables.join(", ")
            ))
            .await
            .map_err(Error::source_db(format!(
                "creating publication {publication}"
            )))?;
        tracing::info!(publication, tables = tables.len(), "created publication");
        return Ok(());
    }
    let published: Vec<String> = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[publication],
        )
        .await
        .map_err(Error::source_db("reading publication tables"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in &config.tables {
        if !published.contains(&t.source_name()) {
            let (s, n) = t.source_parts();
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {publication} ADD TABLE {}",
                    quote_qualified(s, n)
                ))
                .await
                .map_err(Error::source_db(format!(
                    "adding {} to publication {publication}",
                    t.source_name()
                )))?;
            tracing::info!(publication, table = %t.source_name(), "added table to publication");
        }
    }
    Ok(())
}

/// Creates the logical slot (pgoutput) if missing; returns whether it was created. A
/// slot the server has invalidated is a fatal error ([`lost_slot`]).
pub async fn ensure_slot(client: &Client, config: &Config) -> Result<bool, Error> {
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT plugin, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(Error::source_db("reading replication slots"))?;
    match row {
        Some(r) => {
            let plugin: Option<String> = r.get(0);
            if plugin.as_deref() != Some("pgoutput") {
                return Err(Error::Setup(format!(
                    "replication slot {slot} exists but uses plugin {plugin:?}: drop it or configure another source.slot"
                )));
            }
            let wal_status: Option<String> = r.get(1);
            if wal_status.as_deref() == Some("lost") {
                return Err(lost_slot(slot));
            }
            Ok(false)
        }
        None => {
            client
                .query_one(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                )
                .await
                .map_err(Error::source_db(format!(
                    "creating replication slot {slot}"
                )))?;
            tracing::info!(slot, "created replication slot");
            Ok(true)
        }
    }
}

/// The error for a slot the server invalidated: it removed WAL the slot still needed
/// (`max_slot_wal_keep_size`), so changes the new store never received are gone for
/// good. Fatal: retrying cannot bring them back, and streaming on from a new slot would
/// leave the new store silently incomplete.
pub fn lost_slot(slot: &str) -> Error {
    Error::Setup(format!(
        "replication slot {slot} was invalidated by the legacy server (it fell more than \
         max_slot_wal_keep_size behind): the WAL it needed is gone and the new store is \
         missing changes. Drop the slot and migrate again into an empty new store; raise \
         max_slot_wal_keep_size (or set it to -1) and watch the slot's retained WAL"
    ))
}

/// Whether a replication error is the server refusing an invalidated slot: PostgreSQL 15
/// says "cannot read from logical replication slot" (SQLSTATE 55000; the detail that it
/// was invalidated does not reach us), 16 and later "can no longer get changes from
/// replication slot".
pub fn is_lost_slot(e: &pgwire_replication::PgWireError) -> bool {
    let text = e.to_string();
    text.contains("cannot read from logical replication slot")
        || text.contains("can no longer get changes from replication slot")
}

/// Writes a transactional heartbeat into the WAL: the stream carries it to the writer,
/// so an idle database still advances the slot and the consistent position.
pub async fn emit_heartbeat(client: &Client) -> Result<(), Error> {
    client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, now()::text)",
            &[&HEARTBEAT_PREFIX],
        )
        .await
        .map_err(Error::source_db("emitting heartbeat"))?;
    Ok(())
}

/// The prefix of the reader's heartbeat messages.
pub const HEARTBEAT_PREFIX: &str = "rekey.heartbeat";

/// Where the source is and what the slot holds back.
#[derive(Debug, Clone, Copy)]
pub struct SlotPosition {
    pub current_lsn: u64,
    pub confirmed_flush_lsn: u64,
    pub retained_bytes: i64,
}

pub async fn slot_position(client: &Client, slot: &str) -> Result<Option<SlotPosition>, Error> {
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint,
                    (coalesce(confirmed_flush_lsn, '0/0') - '0/0'::pg_lsn)::bigint,
                    (pg_current_wal_insert_lsn() - restart_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::source_db("reading the slot position"))?;
    Ok(row.map(|r| SlotPosition {
        current_lsn: r.get::<_, i64>(0) as u64,
        confirmed_flush_lsn: r.get::<_, i64>(1) as u64,
        retained_bytes: r.get::<_, Option<i64>>(2).unwrap_or(0),
    }))
}
