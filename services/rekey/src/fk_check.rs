//! Foreign keys checked a batch at a time, at the commit of each target transaction.
//!
//! With `target.replication_role = origin` the writer's rows must satisfy the new
//! store's foreign keys at every commit, so that a bad row stops the writer at once.
//! PostgreSQL does that with one deferred trigger per written row: at the commit, one
//! RI query (executor start, an index probe, a `FOR KEY SHARE` lock on the parent) per
//! row, about a fifth of the target's CPU in a catch-up (`perf`:
//! `AfterTriggerFireDeferred`). Where every foreign key allows it, the writer instead
//! applies in `session_replication_role = replica`, as it does during backfill, and
//! checks what the transaction wrote with one query per foreign key and side just
//! before it commits, against the transaction's final state, as a deferred constraint
//! is checked:
//!
//! - **Child side.** Every foreign-key value the transaction wrote (a row written whole
//!   or in part, its foreign-key columns all set: `MATCH SIMPLE`) must be a parent's
//!   key. The distinct values of a transaction are looked up in the parent at once, so
//!   a thousand executions of two hundred templates cost two hundred index probes, and a
//!   row updated without changing its references costs only its share of those. A
//!   value not found is then confirmed against the final state (a row that still holds
//!   it at the commit, as a deferred constraint sees it): within a transaction a row
//!   may point at a parent that is created, or be re-pointed, before the commit.
//! - **Parent side.** A row deleted for good (a table without `deleted_at`) must not be
//!   referenced any more, unless a row with the same key exists again; a table emptied
//!   for good by a truncate is checked whole. Soft deletes keep the row, and the
//!   writer never changes a primary key (a legacy key change is a delete and an
//!   insert), so nothing else can leave a child without its parent.
//! - **Bounded memory.** A transaction's values are kept up to [`MAX_KEYS_PER_TABLE`]
//!   per foreign key, and its deleted keys per table; past that, the foreign key is
//!   checked over the whole child table at the commit, as the cutover does.
//!
//! The first violation stops the writer with one line naming the constraint and the
//! row, before the transaction commits; nothing of it is applied, and a restart resumes
//! at the transaction, as with PostgreSQL's own check.
//!
//! **When PostgreSQL checks them instead** (the writer stays in `origin`): a foreign key
//! from or to a migrated table that references something other than its parent's
//! primary key, or has an action (`CASCADE`, `SET NULL`, `SET DEFAULT`: replica role
//! would skip it), or spans several columns with `MATCH FULL` or `MATCH PARTIAL`; a
//! user trigger on a migrated table (replica role would skip it); or a writer's user
//! that may not set `session_replication_role`.
//! The reason is logged at start.
//!
//! What it does not do that PostgreSQL's check does: lock the parent rows until the
//! commit. The writer is the only writer of the new store before cutover; a row deleted
//! by someone else between the check and the commit would be found by the cutover's
//! validating step and by `rekeyctl verify`, which check every foreign key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::config::{quote_ident, quote_qualified, Config};
use crate::error::Error;
use crate::event::{self, value::Kind};
use crate::target::Catalog;

/// Past this many values of one foreign key (or deleted keys of one parent table) in
/// one target transaction, the foreign key is checked over the whole child table at the
/// commit instead of value by value.
pub const MAX_KEYS_PER_TABLE: usize = 200_000;

/// A foreign key the writer checks itself, as read from the catalog.
#[derive(Debug)]
struct ForeignKey {
    name: String,
    /// The referencing table: its catalog name (`schema.name`) and SQL name.
    child: String,
    child_sql: String,
    columns: Vec<String>,
    parent: String,
    parent_sql: String,
    /// The referenced columns (the parent's primary key) and their types.
    parent_columns: Vec<String>,
    parent_types: Vec<String>,
}

/// The SQL of one foreign key's checks, built once at start.
#[derive(Debug)]
struct Checks {
    name: String,
    child: String,
    parent: String,
    columns: Vec<String>,
    parent_columns: Vec<String>,
    /// Of the values `$1…` (text, in the foreign key's column order), those with no
    /// parent row.
    missing: String,
    /// Child rows holding one of the values `$1…` that reference no parent row: the
    /// child's key as text, then the foreign-key values.
    referencing: String,
    /// Every child row that references no parent row, likewise.
    whole: String,
}

impl ForeignKey {
    /// `c.<fk columns> reference no parent row`, for a row `c` of the child.
    fn dangling(&self) -> String {
        let all_set = self
            .columns
            .iter()
            .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let matches = self
            .columns
            .iter()
            .zip(&self.parent_columns)
            .map(|(c, p)| format!("p.{} = c.{}", quote_ident(p), quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "({all_set} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {matches}))",
            self.parent_sql
        )
    }

    /// The checks' SQL; `shown_key` is the child's key as text (see [`child_key`]).
    fn checks(self, shown_key: &str) -> Checks {
        let rows = |filter: String| {
            format!(
                "SELECT {shown_key}, {} FROM {} c WHERE {filter} LIMIT 3",
                self.shown(),
                self.child_sql
            )
        };
        Checks {
            missing: self.missing_values(),
            referencing: rows(format!(
                "{} AND {}",
                keyed(&self.columns, &self.parent_types, "c"),
                self.dangling()
            )),
            whole: rows(self.dangling()),
            name: self.name,
            child: self.child,
            parent: self.parent,
            columns: self.columns,
            parent_columns: self.parent_columns,
        }
    }

    /// The values (text parameters `$1…`) with no parent row, up to 100.
    fn missing_values(&self) -> String {
        let n = self.columns.len();
        let aliases: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
        let args: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
        let typed: Vec<String> = self
            .parent_types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("v{i}::{t}"))
            .collect();
        let matches = self
            .parent_columns
            .iter()
            .zip(&typed)
            .map(|(p, v)| format!("p.{} = u.{v}", quote_ident(p)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!(
            "SELECT {} FROM unnest({}) AS u({}) WHERE NOT EXISTS (SELECT 1 FROM {} p WHERE {matches}) LIMIT 100",
            aliases.iter().map(|a| format!("u.{a}")).collect::<Vec<_>>().join(", "),
            args.join(", "),
            aliases.join(", "),
            self.parent_sql
        )
    }

    /// The foreign-key columns of `c`, as text.
    fn shown(&self) -> String {
        self.columns
            .iter()
            .map(|c| format!("c.{}::text", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `(c.k1, …) IN (the keys in $1…$n)`, with each text parameter cast to its type.
fn keyed(columns: &[String], types: &[String], of: &str) -> String {
    let cols: Vec<String> = columns
        .iter()
        .map(|c| format!("{of}.{}", quote_ident(c)))
        .collect();
    let args: Vec<String> = (1..=columns.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let casts: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("u.k{i}::{t}"))
        .collect();
    let aliases: Vec<String> = (0..columns.len()).map(|i| format!("k{i}")).collect();
    format!(
        "({}) IN (SELECT {} FROM unnest({}) AS u({}))",
        cols.join(", "),
        casts.join(", "),
        args.join(", "),
        aliases.join(", ")
    )
}

/// Keys of one table, column by column (`values[i]` holds column `i` of every key).
#[derive(Debug, Default)]
struct Keys {
    columns: Vec<String>,
    values: Vec<Vec<String>>,
    /// More than [`MAX_KEYS_PER_TABLE`]: check the whole table.
    overflow: bool,
}

impl Keys {
    fn add(&mut self, columns: &[&str], key: &[&str]) {
        if self.overflow {
            return;
        }
        if self.columns.is_empty() {
            self.columns = columns.iter().map(|c| c.to_string()).collect();
            self.values = vec![Vec::new(); columns.len()];
        }
        if self.values[0].len() >= MAX_KEYS_PER_TABLE {
            self.overflow = true;
            self.values = Vec::new();
            return;
        }
        for (v, k) in self.values.iter_mut().zip(key) {
            v.push(k.to_string());
        }
    }
}

/// The distinct values written to one foreign key's columns.
#[derive(Debug, Default)]
struct Values {
    set: HashSet<Vec<String>>,
    /// More than [`MAX_KEYS_PER_TABLE`]: check the whole child table.
    overflow: bool,
}

/// The tables the checked foreign keys need recorded: built once, shared by every
/// transaction's [`Written`].
#[derive(Debug, Default)]
struct Watched {
    /// The foreign keys of each child table: (index in [`ForeignKeys`], its columns).
    children: HashMap<String, Vec<(usize, Vec<String>)>>,
    /// Tables referenced by a checked foreign key: their rows deleted for good count.
    parents: HashSet<String>,
}

/// What the open target transaction wrote that the checked foreign keys care about.
#[derive(Debug, Default)]
pub struct Written {
    watched: Arc<Watched>,
    values: HashMap<usize, Values>,
    deleted: HashMap<String, Keys>,
    truncated: HashSet<String>,
}

impl Written {
    /// Rows written whole or in part to `table`: the values of its foreign keys, where
    /// a row carries all of a key's columns set (null and unchanged-TOAST values carry
    /// no reference).
    pub fn rows<'r>(
        &mut self,
        table: &event::Table,
        rows: impl Iterator<Item = &'r [event::Value]> + Clone,
    ) {
        let Some(fks) = self.watched.children.get(&table.target_table) else {
            return;
        };
        for (fk, columns) in fks {
            let at: Option<Vec<usize>> = columns
                .iter()
                .map(|c| table.columns.iter().position(|t| t.name == *c))
                .collect();
            let Some(at) = at else {
                continue; // a column the writer never writes
            };
            let values = self.values.entry(*fk).or_default();
            for row in rows.clone() {
                if values.overflow {
                    break;
                }
                let tuple: Option<Vec<String>> = at
                    .iter()
                    .map(|&i| match row.get(i).and_then(|v| v.kind.as_ref()) {
                        Some(Kind::Text(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                if let Some(tuple) = tuple {
                    if values.set.len() >= MAX_KEYS_PER_TABLE {
                        values.overflow = true;
                        values.set = HashSet::new();
                    } else {
                        values.set.insert(tuple);
                    }
                }
            }
        }
    }

    /// Rows of `table` deleted for good.
    pub fn deleted<'k, 's: 'k>(
        &mut self,
        table: &str,
        columns: &[&str],
        keys: impl IntoIterator<Item = &'k [&'s str]>,
    ) {
        if self.watched.parents.contains(table) {
            let k = self.deleted.entry(table.to_string()).or_default();
            keys.into_iter().for_each(|key| k.add(columns, key));
        }
    }

    /// Every row of `table` deleted for good.
    pub fn truncated(&mut self, table: &str) {
        if self.watched.parents.contains(table) {
            self.truncated.insert(table.to_string());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.deleted.is_empty() && self.truncated.is_empty()
    }

    /// The same tables watched, nothing written yet.
    fn fresh(&self) -> Self {
        Self {
            watched: self.watched.clone(),
            ..Self::default()
        }
    }
}

/// The foreign keys of the migrated tables, checked by the writer (see the module doc).
pub struct ForeignKeys {
    fks: Vec<Checks>,
    statements: HashMap<String, Statement>,
}

/// Reads the foreign keys from or to the migrated tables. `Ok(None)` (with the reason
/// logged) when PostgreSQL must check them instead.
pub async fn load(
    client: &Client,
    config: &Config,
    catalog: &Catalog,
) -> Result<Option<ForeignKeys>, Error> {
    let tables: Vec<String> = config
        .tables
        .iter()
        .map(|t| {
            let (s, n) = t.target_parts();
            quote_qualified(s, n)
        })
        .collect();
    let triggers: Vec<String> = client
        .query(
            "SELECT g.tgrelid::regclass::text || '.' || g.tgname FROM pg_trigger g
              WHERE g.tgrelid = ANY($1::text[]::regclass[]) AND NOT g.tgisinternal AND g.tgenabled <> 'D'",
            &[&tables],
        )
        .await
        .map_err(Error::target_db("reading the triggers of the new store"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !triggers.is_empty() {
        tracing::info!(triggers = %triggers.join(", "), "the new store has triggers of its own: PostgreSQL checks foreign keys row by row (replica role would skip the triggers)");
        return Ok(None);
    }
    let rows = client
        .query(FK_SQL, &[&tables])
        .await
        .map_err(Error::target_db(
            "reading the foreign keys of the new store",
        ))?;
    let mut fks = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.get("name");
        let (child_schema, child_name): (String, String) =
            (r.get("child_schema"), r.get("child_name"));
        let (parent_schema, parent_name): (String, String) =
            (r.get("parent_schema"), r.get("parent_name"));
        let to_pk: bool = r.get("to_pk");
        let plain = matches!(r.get::<_, &str>("del"), "a" | "r")
            && matches!(r.get::<_, &str>("upd"), "a" | "r");
        let match_type: &str = r.get("match");
        let columns: Vec<String> = r.get("columns");
        let simple = match_type == "s" || (match_type == "f" && columns.len() == 1);
        if !to_pk || !plain || !simple {
            tracing::info!(constraint = %name, table = %format!("{child_schema}.{child_name}"), "a foreign key references more than its parent's primary key, or has an action or MATCH PARTIAL: PostgreSQL checks foreign keys row by row");
            return Ok(None);
        }
        let child = format!("{child_schema}.{child_name}");
        let shown_key = child_key(catalog, &child);
        fks.push(
            ForeignKey {
                name,
                child,
                child_sql: quote_qualified(&child_schema, &child_name),
                columns,
                parent: format!("{parent_schema}.{parent_name}"),
                parent_sql: quote_qualified(&parent_schema, &parent_name),
                parent_columns: r.get("parent_columns"),
                parent_types: r.get("parent_types"),
            }
            .checks(&shown_key),
        );
    }
    Ok(Some(ForeignKeys {
        fks,
        statements: HashMap::new(),
    }))
}

/// Every foreign key from or to one of `$1` (quoted qualified names): names, columns in
/// order, the parent's key types, and whether it references the parent's primary key.
const FK_SQL: &str = "
SELECT k.conname::text AS name,
       cn.nspname::text AS child_schema, c.relname::text AS child_name,
       pn.nspname::text AS parent_schema, p.relname::text AS parent_name,
       ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
               JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o) AS columns,
       ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, o)
               JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o) AS parent_columns,
       ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM unnest(k.confkey) WITH ORDINALITY u(n, o)
               JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o) AS parent_types,
       k.confmatchtype::text AS match, k.confdeltype::text AS del, k.confupdtype::text AS upd,
       COALESCE((SELECT ARRAY(SELECT unnest(i.indkey::int2[]))
                   FROM pg_index i WHERE i.indrelid = k.confrelid AND i.indisprimary) = k.confkey::int2[], false) AS to_pk
  FROM pg_constraint k
  JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
  JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
 WHERE k.contype = 'f'
   AND (k.conrelid = ANY($1::text[]::regclass[]) OR k.confrelid = ANY($1::text[]::regclass[]))
 ORDER BY 1";

impl ForeignKeys {
    /// An empty record of writes, watching the tables these foreign keys need.
    pub fn watch(&self) -> Written {
        let mut children: HashMap<String, Vec<(usize, Vec<String>)>> = HashMap::new();
        for (i, f) in self.fks.iter().enumerate() {
            children
                .entry(f.child.clone())
                .or_default()
                .push((i, f.columns.clone()));
        }
        Written {
            watched: Arc::new(Watched {
                children,
                parents: self.fks.iter().map(|f| f.parent.clone()).collect(),
            }),
            ..Written::default()
        }
    }

    /// Checks what the open transaction wrote; returns an empty record for the next.
    pub async fn check(&mut self, client: &Client, written: Written) -> Result<Written, Error> {
        let next = written.fresh();
        if written.is_empty() {
            return Ok(next);
        }
        let Self { fks, statements } = self;
        for (i, fk) in fks.iter().enumerate() {
            if let Some(values) = written.values.get(&i) {
                if values.overflow {
                    violations(client, statements, fk, &fk.whole, &[], true).await?;
                } else if !values.set.is_empty() {
                    let columns: Vec<Vec<String>> = (0..fk.columns.len())
                        .map(|c| values.set.iter().map(|t| t[c].clone()).collect())
                        .collect();
                    let params: Vec<&Vec<String>> = columns.iter().collect();
                    let missing = query(client, statements, fk, &fk.missing, &params).await?;
                    if !missing.is_empty() {
                        // Confirmed against the rows as they are now.
                        let columns: Vec<Vec<String>> = (0..fk.columns.len())
                            .map(|c| missing.iter().map(|r| r.get::<_, String>(c)).collect())
                            .collect();
                        let params: Vec<&Vec<String>> = columns.iter().collect();
                        violations(client, statements, fk, &fk.referencing, &params, true).await?;
                    }
                }
            }
            let parent_gone = written.truncated.contains(&fk.parent);
            if let Some(keys) = written.deleted.get(&fk.parent).filter(|_| !parent_gone) {
                if keys.overflow {
                    violations(client, statements, fk, &fk.whole, &[], false).await?;
                } else {
                    // The deleted keys, in the order of the columns the foreign key
                    // references.
                    let mut params: Vec<&Vec<String>> = Vec::new();
                    for pc in &fk.parent_columns {
                        let i = keys.columns.iter().position(|c| c == pc).ok_or_else(|| {
                            Error::Invariant(format!(
                                "foreign key {} references {}.{pc}, not in the deleted rows' key",
                                fk.name, fk.parent
                            ))
                        })?;
                        params.push(&keys.values[i]);
                    }
                    violations(client, statements, fk, &fk.referencing, &params, false).await?;
                }
            }
            if parent_gone {
                violations(client, statements, fk, &fk.whole, &[], false).await?;
            }
        }
        Ok(next)
    }
}

async fn query(
    client: &Client,
    statements: &mut HashMap<String, Statement>,
    fk: &Checks,
    sql: &str,
    params: &[&Vec<String>],
) -> Result<Vec<tokio_postgres::Row>, Error> {
    let stmt = match statements.get(sql) {
        Some(s) => s.clone(),
        None => {
            let s = client.prepare(sql).await.map_err(Error::target_db(format!(
                "preparing the check of foreign key {}",
                fk.name
            )))?;
            statements.insert(sql.to_string(), s.clone());
            s
        }
    };
    let params: Vec<&(dyn ToSql + Sync)> =
        params.iter().map(|v| *v as &(dyn ToSql + Sync)).collect();
    client
        .query(&stmt, &params)
        .await
        .map_err(Error::target_db(format!(
            "checking foreign key {}",
            fk.name
        )))
}

/// Runs a query for dangling rows (the child's key, then its foreign-key values); the
/// first one found is the error.
async fn violations(
    client: &Client,
    statements: &mut HashMap<String, Statement>,
    fk: &Checks,
    sql: &str,
    params: &[&Vec<String>],
    child_side: bool,
) -> Result<(), Error> {
    let rows = query(client, statements, fk, sql, params).await?;
    let Some(row) = rows.first() else {
        return Ok(());
    };
    let values: Vec<String> = (1..row.len())
        .map(|i| {
            row.get::<_, Option<String>>(i)
                .unwrap_or_else(|| "NULL".into())
        })
        .collect();
    let row_key: Option<String> = row.get(0);
    let what = match row_key {
        Some(k) => format!("{} row {k}", fk.child),
        None => format!("a row of {}", fk.child),
    };
    Err(Error::ForeignKey(format!(
        "{what} violates foreign key {}: ({}) = ({}) is not present in {}{}; the legacy database lacks this constraint or the row's parent — fix the row there, or drop or relax the constraint in the new schema (target.replication_role = replica leaves it to the cutover's check)",
        fk.name,
        fk.columns.join(", "),
        values.join(", "),
        fk.parent,
        if child_side { "" } else { " (deleted)" },
    )))
}

/// The child's primary key as one text (`a/b` for composite keys), or NULL for a table
/// the writer does not migrate.
fn child_key(catalog: &Catalog, child: &str) -> String {
    match catalog.get(child) {
        Some(t) => t
            .key
            .iter()
            .map(|k| format!("c.{}::text", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" || '/' || "),
        None => "NULL::text".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fk(columns: &[&str], parent_columns: &[&str]) -> ForeignKey {
        ForeignKey {
            name: "steps_flow_fkey".into(),
            child: "public.steps".into(),
            child_sql: "\"public\".\"steps\"".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            parent: "public.flows".into(),
            parent_sql: "\"public\".\"flows\"".into(),
            parent_columns: parent_columns.iter().map(|c| c.to_string()).collect(),
            parent_types: parent_columns.iter().map(|_| "uuid".to_string()).collect(),
        }
    }

    #[test]
    fn a_dangling_reference_is_a_set_key_without_its_parent() {
        assert_eq!(
            fk(&["flow_id"], &["id"]).dangling(),
            "(c.\"flow_id\" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM \"public\".\"flows\" p WHERE p.\"id\" = c.\"flow_id\"))"
        );
        let composite = fk(&["a", "b"], &["x", "y"]).dangling();
        assert!(
            composite.contains("c.\"a\" IS NOT NULL AND c.\"b\" IS NOT NULL"),
            "{composite}"
        );
        assert!(
            composite.contains("p.\"x\" = c.\"a\" AND p.\"y\" = c.\"b\""),
            "{composite}"
        );
    }

    #[test]
    fn written_values_are_looked_up_in_the_parent_typed_and_in_column_order() {
        assert_eq!(
            fk(&["a", "b"], &["x", "y"]).missing_values(),
            "SELECT u.v0, u.v1 FROM unnest($1::text[], $2::text[]) AS u(v0, v1) \
             WHERE NOT EXISTS (SELECT 1 FROM \"public\".\"flows\" p WHERE p.\"x\" = u.v0::uuid AND p.\"y\" = u.v1::uuid) LIMIT 100"
        );
    }

    #[test]
    fn keys_are_matched_as_rows_of_typed_columns() {
        let sql = keyed(
            &["flow".into(), "pos".into()],
            &["uuid".into(), "integer".into()],
            "c",
        );
        assert_eq!(
            sql,
            "(c.\"flow\", c.\"pos\") IN (SELECT u.k0::uuid, u.k1::integer FROM unnest($1::text[], $2::text[]) AS u(k0, k1))"
        );
    }

    #[test]
    fn past_the_bound_a_table_is_checked_whole_and_its_keys_dropped() {
        let mut k = Keys::default();
        for i in 0..MAX_KEYS_PER_TABLE {
            k.add(&["id"], &[&i.to_string()]);
        }
        assert!(!k.overflow);
        assert_eq!(k.values[0].len(), MAX_KEYS_PER_TABLE);
        k.add(&["id"], &["one more"]);
        assert!(k.overflow);
        assert!(k.values.is_empty());
    }

    fn value(s: Option<&str>) -> event::Value {
        event::Value {
            kind: Some(match s {
                Some(s) => Kind::Text(s.into()),
                None => Kind::Null(true),
            }),
        }
    }

    #[test]
    fn the_distinct_set_references_of_watched_tables_are_recorded() {
        let keys = ForeignKeys {
            fks: vec![fk(&["flow_id"], &["id"]).checks("c.id::text")],
            statements: HashMap::new(),
        };
        let mut w = keys.watch();
        let steps = event::Table {
            target_table: "public.steps".into(),
            columns: ["id", "flow_id"]
                .iter()
                .map(|n| event::Column {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let rows = [
            vec![value(Some("1")), value(Some("f1"))],
            vec![value(Some("2")), value(Some("f1"))],
            vec![value(Some("3")), value(None)],
            vec![value(Some("4")), value(Some("f2"))],
        ];
        w.rows(&steps, rows.iter().map(|r| &r[..]));
        let mut got: Vec<&Vec<String>> = w.values[&0].set.iter().collect();
        got.sort();
        assert_eq!(got, [&vec!["f1".to_string()], &vec!["f2".to_string()]]);
        // Not a parent, not a child: nothing.
        let flows = event::Table {
            target_table: "public.flows".into(),
            ..steps.clone()
        };
        let mut other = keys.watch();
        other.rows(&flows, rows.iter().map(|r| &r[..]));
        other.deleted("public.steps", &["id"], [&["1"][..]]);
        other.truncated("public.steps");
        assert!(other.is_empty());
        other.truncated("public.flows");
        assert!(other.truncated.contains("public.flows"));
        let next = other.fresh();
        assert!(next.is_empty() && next.watched.parents.contains("public.flows"));
    }
}
