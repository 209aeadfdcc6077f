//! The target catalog: what the writer needs to know about each new-schema table.
//!
//! Read once at start: the columns and their types (values are cast from text to these),
//! the primary key (the upsert conflict target), whether deletes are soft (`deleted_at`
//! exists) and the `row_version` order guard, which every target table must have; and
//! whether changes to different rows of a table may be applied out of source order.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::{quote_qualified, Config};
use crate::error::Error;

#[derive(Debug, Clone)]
pub struct TargetTable {
    /// Quoted, schema-qualified name for SQL.
    pub sql_name: String,
    /// Column name → SQL type without its modifier (`character varying`, not
    /// `character varying(8)`): the writer casts values to it, and the column's length
    /// or precision is then enforced as the value is assigned to the column. That
    /// refuses a value too long for the new schema, where an explicit cast to
    /// `varchar(8)` would silently cut it; numeric scales round either way.
    pub columns: HashMap<String, String>,
    /// Primary-key columns, in key order.
    pub key: Vec<String>,
    /// Deletes set `deleted_at` instead of removing the row.
    pub soft_delete: bool,
    /// How freely the writer may gather this table's changes (see [`Order`]).
    pub order: Order,
    /// The table maps a legacy `id` and has a unique index on `legacy_id` alone: the
    /// rows of a large run of new rows the table already has are found with one probe
    /// of that index, and the others loaded with `COPY` (see [`crate::apply`]).
    pub legacy_id_unique: bool,
}

/// What may be applied out of source order within one target transaction, where
/// gathering the rows of a table and kind into one statement moves changes past others.
/// A row's own changes always stay in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Changes to different rows commute. Nothing but the row itself can tell the order
    /// before the commit: no unique index or exclusion constraint beyond the primary key,
    /// `legacy_id` (one per key) and indexes containing the whole key; every foreign key
    /// from or to the table `DEFERRABLE INITIALLY DEFERRED` with no action (checked at
    /// the commit, against the final state); no user trigger.
    Rows,
    /// The table has a unique constraint beyond its key (two rows may swap a unique
    /// value): its changes stay in order among themselves; other tables' changes may
    /// still pass them, since a unique constraint spans one table.
    Table,
    /// An immediate foreign key or a user trigger can see other tables: nothing passes
    /// this table's changes, and they pass nothing. Also with `target.replication_role
    /// = replica`, where neither fires for the writer except `ENABLE ALWAYS`/`REPLICA`
    /// triggers: the catalog query does not tell those apart, and erring strict only
    /// costs statements.
    Strict,
}

/// Target tables by `schema.name`.
pub type Catalog = HashMap<String, TargetTable>;

pub async fn load(client: &Client, config: &Config) -> Result<Catalog, Error> {
    let mut catalog = Catalog::new();
    for t in &config.tables {
        let (schema, name) = t.target_parts();
        let rows = client
            .query(
                "SELECT a.attname, format_type(a.atttypid, NULL)
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&schema, &name],
            )
            .await
            .map_err(Error::target_db(format!(
                "reading the columns of {}",
                t.target_name()
            )))?;
        if rows.is_empty() {
            return Err(Error::Setup(format!(
                "target table {} does not exist: apply the new schema (e.g. deploy/promptstudio/target.sql) first",
                t.target_name()
            )));
        }
        let columns: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let key: Vec<String> = client
            .query(
                "SELECT a.attname FROM pg_index i
                   JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                  WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary ORDER BY k.ord",
                &[&schema, &name],
            )
            .await
            .map_err(Error::target_db(format!("reading the key of {}", t.target_name())))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if key.is_empty() {
            return Err(Error::Setup(format!(
                "target table {} has no primary key: add one",
                t.target_name()
            )));
        }
        if !columns.contains_key("row_version") {
            return Err(Error::Setup(format!(
                "target table {} has no row_version column: add `row_version bigint NOT NULL` (rekey's order guard)",
                t.target_name()
            )));
        }
        let soft_delete = columns.contains_key("deleted_at");
        let row = client
            .query_one(ORDER_SQL, &[&schema, &name, &t.id.is_some()])
            .await
            .map_err(Error::target_db(format!(
                "reading the constraints of {}",
                t.target_name()
            )))?;
        let legacy_id_unique: bool = row.get(2);
        let order = match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
            (false, _) => Order::Strict,
            (true, false) => Order::Table,
            (true, true) => Order::Rows,
        };
        catalog.insert(
            t.target_name(),
            TargetTable {
                sql_name: quote_qualified(schema, name),
                columns,
                key,
                soft_delete,
                order,
                legacy_id_unique,
            },
        );
    }
    let mut strict: Vec<&str> = catalog
        .iter()
        .filter(|(_, t)| t.order == Order::Strict)
        .map(|(name, _)| name.as_str())
        .collect();
    if !strict.is_empty() {
        strict.sort_unstable();
        tracing::info!(tables = %strict.join(", "), "these tables have an immediate foreign key or a trigger: their changes are applied strictly in source order, and nothing is gathered across them");
    }
    Ok(catalog)
}

/// See [`Order`]: (no immediate foreign key from or to the table and no user trigger,
/// no unique constraint beyond the key), then [`TargetTable::legacy_id_unique`]. `$3`:
/// the table maps a legacy `id`, so its `legacy_id` is one per key.
const ORDER_SQL: &str = "
WITH t AS (
    SELECT c.oid,
           (SELECT i.indkey::int2[] FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS pk,
           (SELECT a.attnum FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attname = 'legacy_id' AND NOT a.attisdropped) AS legacy_id
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relname = $2
)
SELECT NOT EXISTS (
           SELECT 1 FROM pg_constraint k
            WHERE k.contype = 'f' AND (k.conrelid = t.oid OR k.confrelid = t.oid)
              AND NOT (k.condeferred AND k.confdeltype = 'a' AND k.confupdtype = 'a'))
   AND NOT EXISTS (
           SELECT 1 FROM pg_trigger g WHERE g.tgrelid = t.oid AND NOT g.tgisinternal),
       NOT EXISTS (
           SELECT 1 FROM pg_index i
            WHERE i.indrelid = t.oid AND (i.indisunique OR i.indisexclusion) AND NOT i.indisprimary
              AND NOT (i.indisunique AND i.indexprs IS NULL AND i.indpred IS NULL
                       AND ((i.indkey::int2[])[0:i.indnkeyatts - 1] @> t.pk
                            OR ($3 AND i.indnkeyatts = 1 AND i.indkey[0] = t.legacy_id)))),
       $3 AND EXISTS (
           SELECT 1 FROM pg_index i
            WHERE i.indrelid = t.oid AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1
              AND i.indkey[0] = t.legacy_id AND i.indexprs IS NULL AND i.indpred IS NULL)
  FROM t";
