//! Applying source transactions to the target: batched, idempotent, order-guarded.
//!
//! Changes are applied in source order. Consecutive changes of the same kind to the same
//! table form a *run*, applied with one multi-row statement over `unnest($n::text[])`
//! (values travel as text and are cast to the target column's type, which is lossless).
//! Within a run, only the last change to a key is kept (the statement cannot touch a row
//! twice, and the last image wins anyway).
//!
//! Every write carries the source commit LSN as `row_version` and only takes effect where
//! the target row's `row_version` is not newer (`x.row_version <= new`), so:
//! - replaying any event any number of times leaves the same result;
//! - an older version never overwrites a newer one;
//! - a soft-deleted row is never resurrected by a late or replayed older event.
//!
//! Updates that carry unchanged-TOAST markers update only the columns they carry; the
//! target keeps its value for the others. Deletes set `deleted_at` (the source commit
//! time) where the table has it, else delete. An update that changes the legacy key ends
//! the old identity (a delete of the old key) and begins the new one (an upsert).
//! Foreign keys in the target are `DEFERRABLE INITIALLY DEFERRED`: they are checked at
//! the commit of the target transaction, which holds whole source transactions only.

use std::collections::HashMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::config::quote_ident;
use crate::error::Error;
use crate::event::{self, value::Kind, Op};
use crate::target::{Catalog, TargetTable};
use crate::telemetry;

/// What a run does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind2 {
    /// Full row images: insert or update everything.
    Upsert,
    /// Update only these columns (indices into the event table's columns); the rest are
    /// unchanged TOAST values.
    Partial(Vec<usize>),
    Delete,
    Truncate,
}

/// One row of a run: its key (for de-duplication) and its values.
struct Row<'a> {
    key: Vec<&'a str>,
    values: &'a [event::Value],
}

struct Run<'a> {
    table: &'a event::Table,
    kind: Kind2,
    rows: Vec<Row<'a>>,
}

pub struct Applier {
    catalog: Catalog,
    statements: HashMap<String, Statement>,
}

impl Applier {
    pub fn new(catalog: Catalog) -> Self {
        Self {
            catalog,
            statements: HashMap::new(),
        }
    }

    /// Applies the changes of one transaction chunk in order. Returns the number applied.
    pub async fn apply(&mut self, client: &Client, txn: &event::Transaction) -> Result<u64, Error> {
        let position = txn.position.unwrap_or_default();
        let row_version = position.commit_lsn as i64;
        let mut run: Option<Run> = None;
        for change in &txn.changes {
            let table = txn.tables.get(change.table as usize).ok_or_else(|| {
                Error::Invariant(format!(
                    "change refers to table #{} not in its chunk",
                    change.table
                ))
            })?;
            let op = Op::try_from(change.op).unwrap_or(Op::Unspecified);
            metrics::counter!(telemetry::WRITER_EVENTS_APPLIED, "table" => table.target_table.clone(), "op" => crate::reader::op_label(op)).increment(1);
            let mut steps: Vec<(Kind2, &[event::Value])> = Vec::with_capacity(2);
            match op {
                Op::Insert | Op::Backfill => steps.push((Kind2::Upsert, &change.row)),
                Op::Update => {
                    if !change.old_key.is_empty() {
                        steps.push((Kind2::Delete, &change.old_key));
                    }
                    let unchanged: Vec<bool> = change
                        .row
                        .iter()
                        .map(|v| matches!(v.kind, Some(Kind::Unchanged(_))))
                        .collect();
                    if unchanged.iter().any(|u| *u) {
                        let carried = unchanged
                            .iter()
                            .enumerate()
                            .filter(|(_, u)| !**u)
                            .map(|(i, _)| i)
                            .collect();
                        steps.push((Kind2::Partial(carried), &change.row));
                    } else {
                        steps.push((Kind2::Upsert, &change.row));
                    }
                }
                Op::Delete => steps.push((Kind2::Delete, &change.row)),
                Op::Truncate => steps.push((Kind2::Truncate, &change.row)),
                Op::Unspecified => {
                    return Err(Error::Invariant(format!(
                        "change with unknown op {}",
                        change.op
                    )))
                }
            }
            for (kind, values) in steps {
                let key = key_of(table, values)?;
                let same = run
                    .as_ref()
                    .is_some_and(|r| std::ptr::eq(r.table, table) && r.kind == kind);
                if !same {
                    if let Some(r) = run.take() {
                        self.execute(client, r, row_version, position.commit_time_micros)
                            .await?;
                    }
                    run = Some(Run {
                        table,
                        kind,
                        rows: Vec::new(),
                    });
                }
                run.as_mut().expect("run").rows.push(Row { key, values });
            }
        }
        if let Some(r) = run.take() {
            self.execute(client, r, row_version, position.commit_time_micros)
                .await?;
        }
        Ok(txn.changes.len() as u64)
    }

    async fn execute(
        &mut self,
        client: &Client,
        mut run: Run<'_>,
        row_version: i64,
        commit_micros: i64,
    ) -> Result<(), Error> {
        let target = self.catalog.get(&run.table.target_table).ok_or_else(|| {
            Error::Setup(format!(
                "events name target table {} which is not in [[tables]]",
                run.table.target_table
            ))
        })?;
        for c in &run.table.columns {
            if !target.columns.contains_key(&c.name) {
                return Err(Error::Setup(format!(
                    "target table {} has no column {:?}: the new schema must have every mapped column",
                    run.table.target_table, c.name
                )));
            }
        }
        // Keep the last change per key, in order.
        if run.kind != Kind2::Truncate && run.rows.len() > 1 {
            let mut last: HashMap<&[&str], usize> = HashMap::with_capacity(run.rows.len());
            for (i, r) in run.rows.iter().enumerate() {
                last.insert(&r.key, i);
            }
            if last.len() < run.rows.len() {
                let keep: Vec<bool> = (0..run.rows.len())
                    .map(|i| last.get(&run.rows[i].key[..]) == Some(&i))
                    .collect();
                let mut i = 0;
                run.rows.retain(|_| {
                    i += 1;
                    keep[i - 1]
                });
            }
        }
        let columns: Vec<usize> = match &run.kind {
            Kind2::Upsert => (0..run.table.columns.len()).collect(),
            Kind2::Partial(carried) => carried.clone(),
            Kind2::Delete => key_indices(run.table),
            Kind2::Truncate => Vec::new(),
        };
        let sql = statement_sql(run.table, target, &run.kind, &columns);
        let stmt = match self.statements.get(&sql) {
            Some(s) => s.clone(),
            None => {
                let s = client
                    .prepare(&sql)
                    .await
                    .map_err(Error::target_db(format!(
                        "preparing a write to {}",
                        run.table.target_table
                    )))?;
                self.statements.insert(sql.clone(), s.clone());
                s
            }
        };
        let mut arrays: Vec<Vec<Option<&str>>> =
            vec![Vec::with_capacity(run.rows.len()); columns.len()];
        for r in &run.rows {
            for (a, &c) in arrays.iter_mut().zip(&columns) {
                a.push(text_of(run.table, c, r.values)?);
            }
        }
        let versions = vec![row_version; run.rows.len()];
        let times = vec![commit_micros; run.rows.len()];
        let mut params: Vec<&(dyn ToSql + Sync)> =
            arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        match run.kind {
            Kind2::Truncate => {
                params.push(&row_version);
                if target.soft_delete {
                    params.push(&commit_micros);
                }
            }
            Kind2::Delete if target.soft_delete => {
                params.push(&versions);
                params.push(&times);
            }
            _ => params.push(&versions),
        }
        client
            .execute(&stmt, &params)
            .await
            .map_err(Error::target_db(format!(
                "writing {} rows to {}",
                run.rows.len(),
                run.table.target_table
            )))?;
        Ok(())
    }
}

fn key_indices(table: &event::Table) -> Vec<usize> {
    table
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| i)
        .collect()
}

fn key_of<'a>(table: &event::Table, values: &'a [event::Value]) -> Result<Vec<&'a str>, Error> {
    let mut key = Vec::with_capacity(1);
    for (i, c) in table.columns.iter().enumerate() {
        if c.is_key {
            match values.get(i).map(|v| &v.kind) {
                Some(Some(Kind::Text(s))) => key.push(s.as_str()),
                None if values.is_empty() => {} // truncate
                _ => {
                    return Err(Error::Invariant(format!(
                        "{}: key column {} without a value",
                        table.target_table, c.name
                    )))
                }
            }
        }
    }
    Ok(key)
}

fn text_of<'a>(
    table: &event::Table,
    column: usize,
    values: &'a [event::Value],
) -> Result<Option<&'a str>, Error> {
    match values.get(column).and_then(|v| v.kind.as_ref()) {
        Some(Kind::Text(s)) => Ok(Some(s)),
        Some(Kind::Null(_)) => Ok(None),
        Some(Kind::Unchanged(_)) => Err(Error::Invariant(format!(
            "{}.{}: an unchanged-TOAST marker reached a write",
            table.target_table, table.columns[column].name
        ))),
        Some(Kind::Binary(_)) => Err(Error::Invariant(format!(
            "{}.{}: binary values are not supported (the stream is in text format)",
            table.target_table, table.columns[column].name
        ))),
        None => Err(Error::Invariant(format!(
            "{}: row image shorter than its table",
            table.target_table
        ))),
    }
}

/// The SQL of one run. Parameters: one `text[]` per column in `columns`, then the
/// row versions (`int8[]`), then for soft deletes the commit times (`int8[]`, Unix µs).
fn statement_sql(
    table: &event::Table,
    target: &TargetTable,
    kind: &Kind2,
    columns: &[usize],
) -> String {
    let t = &target.sql_name;
    let name = |i: usize| quote_ident(&table.columns[i].name);
    let cast = |i: usize| format!("u.c{i}::{}", target.columns[&table.columns[i].name]);
    let unnest = |extra: &[&str]| {
        let mut args: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(p, _)| format!("${}::text[]", p + 1))
            .collect();
        let mut aliases: Vec<String> = columns.iter().map(|i| format!("c{i}")).collect();
        for (n, e) in extra.iter().enumerate() {
            args.push(format!("${}::int8[]", columns.len() + n + 1));
            aliases.push((*e).to_string());
        }
        format!("unnest({}) AS u({})", args.join(", "), aliases.join(", "))
    };
    let key_match = || {
        key_indices(table)
            .into_iter()
            .map(|i| format!("x.{} = {}", name(i), cast(i)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let undelete = if target.soft_delete {
        ", deleted_at = NULL"
    } else {
        ""
    };
    match kind {
        Kind2::Upsert => {
            let names: Vec<String> = columns.iter().map(|&i| name(i)).collect();
            let casts: Vec<String> = columns.iter().map(|&i| cast(i)).collect();
            let conflict: Vec<String> = target.key.iter().map(|k| quote_ident(k)).collect();
            let sets: Vec<String> = columns
                .iter()
                .filter(|&&i| !target.key.contains(&table.columns[i].name))
                .map(|&i| format!("{n} = EXCLUDED.{n}", n = name(i)))
                .collect();
            let (dcol, dval) = if target.soft_delete { (", deleted_at", ", NULL::timestamptz") } else { ("", "") };
            let mut set = sets.join(", ");
            if !set.is_empty() {
                set.push_str(", ");
            }
            format!(
                "INSERT INTO {t} AS x ({}, row_version{dcol}) SELECT {}, u.rv{dval} FROM {} \
                 ON CONFLICT ({}) DO UPDATE SET {set}row_version = EXCLUDED.row_version{undelete} \
                 WHERE x.row_version <= EXCLUDED.row_version",
                names.join(", "),
                casts.join(", "),
                unnest(&["rv"]),
                conflict.join(", "),
            )
        }
        Kind2::Partial(_) => {
            let sets: Vec<String> = columns
                .iter()
                .filter(|&&i| !table.columns[i].is_key)
                .map(|&i| format!("{} = {}", name(i), cast(i)))
                .collect();
            let mut set = sets.join(", ");
            if !set.is_empty() {
                set.push_str(", ");
            }
            format!(
                "UPDATE {t} AS x SET {set}row_version = u.rv{undelete} FROM {} WHERE {} AND x.row_version <= u.rv",
                unnest(&["rv"]),
                key_match()
            )
        }
        Kind2::Delete if target.soft_delete => format!(
            "UPDATE {t} AS x SET deleted_at = 'epoch'::timestamptz + u.ts * interval '1 microsecond', row_version = u.rv \
             FROM {} WHERE {} AND x.row_version <= u.rv AND x.deleted_at IS NULL",
            unnest(&["rv", "ts"]),
            key_match()
        ),
        Kind2::Delete => format!(
            "DELETE FROM {t} AS x USING {} WHERE {} AND x.row_version <= u.rv",
            unnest(&["rv"]),
            key_match()
        ),
        Kind2::Truncate if target.soft_delete => format!(
            "UPDATE {t} SET deleted_at = 'epoch'::timestamptz + $2::int8 * interval '1 microsecond', row_version = $1::int8 \
             WHERE deleted_at IS NULL AND row_version <= $1::int8"
        ),
        Kind2::Truncate => format!("DELETE FROM {t} WHERE row_version <= $1::int8"),
    }
}
