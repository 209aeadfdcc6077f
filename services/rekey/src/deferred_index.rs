//! Secondary indexes built once a table's backfill is in, not row by row during it.
//!
//! Backfill writes every row of a table in random key order (UUIDs are uniformly spread),
//! and each row costs one B-tree insertion per index. A non-unique secondary index (the
//! foreign-key indexes of the PromptStudio schema) is cheaper to build in one sorted pass
//! afterwards, as `pg_restore` does. So, while a table's backfill runs, its non-unique
//! indexes that back no constraint are dropped, their definitions kept in
//! `rekey.deferred_index`, and they are built again from those definitions in the
//! writer's transaction that follows the table's last chunk.
//!
//! What stays: the primary key and every unique index (the writer's conflict targets
//! and the schema's rules), and any index behind a constraint. Nothing rekey reads or
//! writes during backfill goes through a dropped index: the writer finds rows by key.
//!
//! Dropping and building an index needs the table's owner: where the writer's user does
//! not own a table, its indexes stay (a warning says so).
//!
//! Crash safety: dropping and recording happen in one transaction, and so do building
//! and forgetting. The writer reconciles at every start ([`reconcile`]): a table whose
//! backfill is recorded as done, or every table when backfill or deferral is turned off,
//! gets its recorded indexes back; a table still being copied has its indexes deferred.
//! The cutover waits until no index is deferred any more (see [`any`]), so the new store
//! is never cut over without its indexes.
//!
//! Locks: dropping an index locks its table exclusively, and while that lock is awaited
//! every later query on the table queues behind it. The new store runs beside the old
//! one and applications may read it, so [`reconcile`] waits at most
//! [`LOCK_TIMEOUT`] for a table's lock; past that it gives up and rolls back, and the
//! writer retries its start with backoff, saying which step waited.

use std::time::Instant;

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::Error;

pub const SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS rekey;
CREATE TABLE IF NOT EXISTS rekey.deferred_index (
    target_table  text        NOT NULL,
    index_name    text        NOT NULL,
    definition    text        NOT NULL,
    deferred_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target_table, index_name)
);";

/// The longest [`reconcile`] waits for a table's lock before it gives up (and the writer
/// retries): how long queries on that table may queue behind it.
pub const LOCK_TIMEOUT: &str = "5s";

/// At the writer's start: defers the indexes of tables still being backfilled, builds
/// those of tables that are done (see the module doc). One transaction; a lock not
/// granted within [`LOCK_TIMEOUT`] fails it with a retryable error.
pub async fn reconcile(client: &Client, config: &Config) -> Result<(), Error> {
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .map_err(Error::target_db("creating the rekey.deferred_index table"))?;
    client
        .batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .await
        .map_err(Error::target_db("beginning to reconcile deferred indexes"))?;
    let result = reconcile_tables(client, config).await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    result
}

async fn reconcile_tables(client: &Client, config: &Config) -> Result<(), Error> {
    let deferring = config.backfill.enabled && config.backfill.defer_indexes;
    for t in &config.tables {
        let table = t.target_name();
        let done = crate::backfill::load_progress(client, &table).await?.done;
        if deferring && !done {
            defer(client, &table).await?;
        } else {
            restore(client, &table).await?;
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(Error::target_db("committing deferred indexes"))?;
    Ok(())
}

/// Drops the deferrable indexes of `table` (target name), recording their definitions;
/// in the caller's transaction. Returns how many.
pub async fn defer(client: &Client, table: &str) -> Result<usize, Error> {
    let owner: Option<bool> = client
        .query_opt(
            "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass($1)",
            &[&table],
        )
        .await
        .map_err(Error::target_db(format!("reading the owner of {table}")))?
        .map(|r| r.get(0));
    if owner != Some(true) {
        tracing::warn!(table, "the writer's user does not own the table, so its secondary indexes stay during backfill (slower); grant ownership or set backfill.defer_indexes = false");
        return Ok(0);
    }
    let rows = client
        .query(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
               FROM pg_index i
              WHERE i.indrelid = to_regclass($1) AND NOT i.indisunique AND NOT i.indisprimary
                AND i.indisvalid
                AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
              ORDER BY 1",
            &[&table],
        )
        .await
        .map_err(Error::target_db(format!("reading the indexes of {table}")))?;
    for r in &rows {
        let (name, definition): (String, String) = (r.get(0), r.get(1));
        client
            .execute(
                "INSERT INTO rekey.deferred_index (target_table, index_name, definition)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&table, &name, &definition],
            )
            .await
            .map_err(Error::target_db(format!("recording index {name}")))?;
        client
            .batch_execute(&format!("DROP INDEX {name}"))
            .await
            .map_err(Error::target_db(format!(
                "dropping index {name} until backfill is in"
            )))?;
    }
    if !rows.is_empty() {
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        tracing::info!(table, indexes = %names.join(", "), "secondary indexes deferred: built once the table's backfill is in");
    }
    Ok(rows.len())
}

/// Builds the recorded indexes of `table` (target name) again and forgets them; in the
/// caller's transaction. An index that exists again (made by someone else) is kept.
pub async fn restore(client: &Client, table: &str) -> Result<usize, Error> {
    let rows = client
        .query(
            "DELETE FROM rekey.deferred_index WHERE target_table = $1
             RETURNING index_name, definition, to_regclass(index_name) IS NOT NULL",
            &[&table],
        )
        .await
        .map_err(Error::target_db(format!(
            "reading the deferred indexes of {table}"
        )))?;
    for r in &rows {
        let (name, definition, exists): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        if exists {
            continue;
        }
        let began = Instant::now();
        client
            .batch_execute(&definition)
            .await
            .map_err(Error::target_db(format!(
                "building index {name} after backfill"
            )))?;
        tracing::info!(table, index = %name, secs = format!("{:.2}", began.elapsed().as_secs_f64()), "deferred index built");
    }
    Ok(rows.len())
}

/// How many indexes of `table` (target name, or every table for `None`) are deferred now.
pub async fn count(client: &Client, table: Option<&str>) -> Result<i64, Error> {
    client
        .query_one(
            "SELECT CASE WHEN to_regclass('rekey.deferred_index') IS NULL THEN 0
                    ELSE (SELECT count(*) FROM rekey.deferred_index
                           WHERE $1::text IS NULL OR target_table = $1) END",
            &[&table],
        )
        .await
        .map(|r| r.get(0))
        .map_err(Error::target_db("reading the deferred indexes"))
}

/// Whether any index is still deferred.
pub async fn any(client: &Client) -> Result<bool, Error> {
    Ok(count(client, None).await? > 0)
}
