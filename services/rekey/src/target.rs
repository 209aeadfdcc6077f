//! The target catalog: what the writer needs to know about each new-schema table.
//!
//! Read once at start: the columns and their types (values are cast from text to these),
//! the primary key (the upsert conflict target), whether deletes are soft (`deleted_at`
//! exists) and the `row_version` order guard, which every target table must have.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::config::{quote_qualified, Config};
use crate::error::Error;

#[derive(Debug, Clone)]
pub struct TargetTable {
    /// Quoted, schema-qualified name for SQL.
    pub sql_name: String,
    /// Column name → SQL type (as `format_type` prints it).
    pub columns: HashMap<String, String>,
    /// Primary-key columns, in key order.
    pub key: Vec<String>,
    /// Deletes set `deleted_at` instead of removing the row.
    pub soft_delete: bool,
}

/// Target tables by `schema.name`.
pub type Catalog = HashMap<String, TargetTable>;

pub async fn load(client: &Client, config: &Config) -> Result<Catalog, Error> {
    let mut catalog = Catalog::new();
    for t in &config.tables {
        let (schema, name) = t.target_parts();
        let rows = client
            .query(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod)
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
        catalog.insert(
            t.target_name(),
            TargetTable {
                sql_name: quote_qualified(schema, name),
                columns,
                key,
                soft_delete,
            },
        );
    }
    Ok(catalog)
}
