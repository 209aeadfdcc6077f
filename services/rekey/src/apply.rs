//! Applying source transactions to the target: batched, pipelined, idempotent,
//! order-guarded.
//!
//! The changes of a group of transactions (what one Kafka message carries) are applied
//! as *runs*: changes of the same kind to the same table, applied with one multi-row
//! statement over `unnest($n::text[])` (values travel as text and are cast to the target
//! column's type, which is lossless). A change joins the run before it, or an earlier
//! run of its table and kind where the target cannot tell the difference before the
//! commit (see [`plan`] and [`crate::target::Order`]): every row's changes stay in
//! source order, a table with a unique constraint beyond its key keeps its own changes
//! in order, and nothing passes a table with an immediate foreign key or a trigger. A
//! stream of small transactions interleaving a few tables thus costs a statement per
//! table and kind, not one per change. Within a run of a table whose rows commute, only
//! the last change to a key is kept (the statement cannot touch a row twice, and the
//! last image wins anyway); elsewhere a row's second change starts a new run. The
//! statements are *pipelined*: sent on the one connection without waiting for each
//! reply, so the target executes them back to back, in order, and a small transaction
//! costs no round trip.
//!
//! A run of at least [`COPY_MIN_ROWS`] new rows (inserts) of a table with a unique
//! `legacy_id` is loaded with `COPY` instead ([`crate::copy_text`]), after the
//! statements before it have finished: one probe of `legacy_id` finds the rows the
//! target has already (a replay, a key inserted again after a delete), which take the
//! upsert; the target spends about a third less per row on the others. Smaller runs
//! (live streaming) stay pipelined upserts: the probe's round trip would cost more.
//!
//! Every write carries its source commit LSN as `row_version` and only takes effect where
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

// foldhash, not std's SipHash: `plan` hashes every row's key a few times, and SipHash
// was 6 % of the writer's samples in a backfill. The keys are our own stream's.
use foldhash::{HashMap, HashMapExt, HashSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::config::quote_ident;
use crate::error::Error;
use crate::event::{self, value::Kind, Op};
use crate::fk_check::Written;
use crate::target::{Catalog, Order, TargetTable};
use crate::telemetry;

/// What a run does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind2 {
    /// Full row images: insert or update everything.
    Upsert,
    /// Update only these columns (indices into the event table's columns); the rest are
    /// unchanged TOAST values.
    Partial(Vec<usize>),
    Delete,
    Truncate,
}

/// One row of a run: its key (for de-duplication), its values and its source position.
struct Row<'a> {
    key: Vec<&'a str>,
    values: &'a [event::Value],
    /// `row_version`: the commit LSN of the source transaction.
    version: i64,
    /// The source commit time (Unix µs), for soft deletes.
    time: i64,
    /// A new row (an insert or a backfill copy), not an update.
    insert: bool,
}

struct Run<'a> {
    table: &'a event::Table,
    kind: Kind2,
    rows: Vec<Row<'a>>,
}

impl Run<'_> {
    /// Whether a change of `kind` to `table` can join this run (it comes right after).
    fn continues(&self, table: &event::Table, kind: &Kind2) -> bool {
        self.kind == *kind
            && self.kind != Kind2::Truncate
            && (std::ptr::eq(self.table, table) || self.table == table)
    }

    /// Keeps only the last change per key, in order.
    fn dedupe(&mut self) {
        if self.kind == Kind2::Truncate || self.rows.len() < 2 {
            return;
        }
        let mut last: HashMap<&[&str], usize> = HashMap::with_capacity(self.rows.len());
        for (i, r) in self.rows.iter().enumerate() {
            last.insert(&r.key, i);
        }
        if last.len() == self.rows.len() {
            return;
        }
        let keep: Vec<bool> = (0..self.rows.len())
            .map(|i| last.get(&self.rows[i].key[..]) == Some(&i))
            .collect();
        let mut i = 0;
        self.rows.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
}

/// A run ready to send: its prepared statement and its parameters.
struct Built<'a> {
    stmt: Statement,
    table: &'a str,
    kind: Kind2,
    soft_delete: bool,
    arrays: Vec<Vec<Option<&'a str>>>,
    versions: Vec<i64>,
    times: Vec<i64>,
    /// Set on a run of new rows large enough to load with `COPY` (see
    /// [`Applier::copy_or_upsert`]).
    copy: Option<CopyRun<'a>>,
}

/// The rows of an upsert run of new rows, for `COPY`.
struct CopyRun<'a> {
    table: &'a event::Table,
    sql_name: String,
    /// The index of `legacy_id` among the run's columns.
    legacy_id: usize,
    rows: Vec<&'a [event::Value]>,
}

/// The fewest new rows in a run that are loaded with `COPY` rather than upserted: below
/// it, the extra round trip of the `legacy_id` probe costs more than `COPY` saves.
const COPY_MIN_ROWS: usize = 100;

impl<'a> Built<'a> {
    /// The same statement for the rows at `rows` only.
    fn subset(&self, rows: &[usize]) -> Built<'a> {
        Built {
            stmt: self.stmt.clone(),
            table: self.table,
            kind: self.kind.clone(),
            soft_delete: self.soft_delete,
            arrays: self
                .arrays
                .iter()
                .map(|a| rows.iter().map(|&i| a[i]).collect())
                .collect(),
            versions: rows.iter().map(|&i| self.versions[i]).collect(),
            times: rows.iter().map(|&i| self.times[i]).collect(),
            copy: None,
        }
    }

    async fn execute(&self, client: &Client) -> Result<u64, Error> {
        let mut params: Vec<&(dyn ToSql + Sync)> = self
            .arrays
            .iter()
            .map(|a| a as &(dyn ToSql + Sync))
            .collect();
        match self.kind {
            Kind2::Truncate => {
                params.push(&self.versions[0]);
                if self.soft_delete {
                    params.push(&self.times[0]);
                }
            }
            Kind2::Delete if self.soft_delete => {
                params.push(&self.versions);
                params.push(&self.times);
            }
            _ => params.push(&self.versions),
        }
        client
            .execute(&self.stmt, &params)
            .await
            .map_err(Error::target_db(format!(
                "writing {} rows to {}",
                self.versions.len(),
                self.table
            )))
    }
}

pub struct Applier {
    catalog: Catalog,
    statements: HashMap<String, Statement>,
    /// What the open transaction wrote, for the writer's own foreign-key check
    /// ([`crate::fk_check`]); `None` when it does not check them.
    written: Option<Written>,
}

impl Applier {
    pub fn new(catalog: Catalog) -> Self {
        Self {
            catalog,
            statements: HashMap::new(),
            written: None,
        }
    }

    /// Records the keys written from now on into `written` (`None`: stops recording).
    pub fn record(&mut self, written: Option<Written>) {
        self.written = written;
    }

    /// What was recorded since [`Applier::record`]; recording stops until it is called
    /// again.
    pub fn take_written(&mut self) -> Option<Written> {
        self.written.take()
    }

    /// Applies the changes of consecutive transactions (or one chunk of a large one) in
    /// order, their statements pipelined. Returns the number of changes applied.
    /// `shared`: the tables of the batch the transactions came in (see
    /// [`event::Transaction::tables_in`]).
    pub async fn apply_all(
        &mut self,
        client: &Client,
        txns: &[&event::Transaction],
        shared: &[event::Table],
    ) -> Result<u64, Error> {
        self.apply(client, txns, shared, true).await
    }

    /// As [`Self::apply_all`], but every run of new rows is upserted, none loaded with
    /// `COPY`: for rows another open transaction may be writing too, which the
    /// `legacy_id` probe cannot see (see [`crate::chunk_copy`]).
    pub async fn upsert_all(
        &mut self,
        client: &Client,
        txns: &[&event::Transaction],
        shared: &[event::Table],
    ) -> Result<u64, Error> {
        self.apply(client, txns, shared, false).await
    }

    async fn apply(
        &mut self,
        client: &Client,
        txns: &[&event::Transaction],
        shared: &[event::Table],
        may_copy: bool,
    ) -> Result<u64, Error> {
        let catalog = &self.catalog;
        let runs = plan(txns, shared, &|t: &str| {
            catalog.get(t).map_or(Order::Strict, |t| t.order)
        })?;
        self.pipeline(client, runs, may_copy).await?;
        Ok(txns.iter().map(|t| t.changes.len() as u64).sum())
    }

    fn target(&self, table: &event::Table) -> Result<&TargetTable, Error> {
        let target = self.catalog.get(&table.target_table).ok_or_else(|| {
            Error::Setup(format!(
                "events name target table {} which is not in [[tables]]",
                table.target_table
            ))
        })?;
        for c in &table.columns {
            if !target.columns.contains_key(&c.name) {
                return Err(Error::MissingColumn(format!(
                    "target table {} has no column {:?}, which the legacy table has: add it to the new schema (nullable or with the legacy default); the writer applies nothing until then and goes on once it is there",
                    table.target_table, c.name
                )));
            }
        }
        Ok(target)
    }

    async fn prepared(
        &mut self,
        client: &Client,
        sql: String,
        table: &str,
    ) -> Result<Statement, Error> {
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let s = client
            .prepare(&sql)
            .await
            .map_err(Error::target_db(format!("preparing a write to {table}")))?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    async fn build<'a>(
        &mut self,
        client: &Client,
        mut run: Run<'a>,
        may_copy: bool,
    ) -> Result<Built<'a>, Error> {
        let target = self.target(run.table)?;
        let soft_delete = target.soft_delete;
        run.dedupe();
        let columns: Vec<usize> = match &run.kind {
            Kind2::Upsert => (0..run.table.columns.len()).collect(),
            Kind2::Partial(carried) => carried.clone(),
            Kind2::Delete => key_indices(run.table),
            Kind2::Truncate => Vec::new(),
        };
        let sql = statement_sql(run.table, target, &run.kind, &columns);
        let copy = (may_copy
            && run.kind == Kind2::Upsert
            && target.legacy_id_unique
            && run.rows.len() >= COPY_MIN_ROWS
            && run.rows.iter().all(|r| r.insert))
        .then(|| {
            run.table
                .columns
                .iter()
                .position(|c| c.name == crate::mapping::LEGACY_ID)
        })
        .flatten()
        .map(|legacy_id| CopyRun {
            table: run.table,
            sql_name: target.sql_name.clone(),
            legacy_id,
            rows: run.rows.iter().map(|r| r.values).collect(),
        });
        let stmt = self.prepared(client, sql, &run.table.target_table).await?;
        if let Some(w) = &mut self.written {
            let table = &run.table.target_table;
            match run.kind {
                Kind2::Upsert | Kind2::Partial(_) => {
                    w.rows(run.table, run.rows.iter().map(|r| r.values))
                }
                Kind2::Delete if !soft_delete => {
                    let key_columns: Vec<&str> = key_indices(run.table)
                        .into_iter()
                        .map(|i| run.table.columns[i].name.as_str())
                        .collect();
                    w.deleted(table, &key_columns, run.rows.iter().map(|r| &r.key[..]))
                }
                Kind2::Truncate if !soft_delete => w.truncated(table),
                Kind2::Delete | Kind2::Truncate => {}
            }
        }
        let mut arrays: Vec<Vec<Option<&str>>> =
            vec![Vec::with_capacity(run.rows.len()); columns.len()];
        for r in &run.rows {
            for (a, &c) in arrays.iter_mut().zip(&columns) {
                a.push(text_of(run.table, c, r.values)?);
            }
        }
        Ok(Built {
            stmt,
            table: &run.table.target_table,
            kind: run.kind,
            soft_delete,
            arrays,
            versions: run.rows.iter().map(|r| r.version).collect(),
            times: run.rows.iter().map(|r| r.time).collect(),
            copy,
        })
    }

    /// Sends the runs' statements back to back and waits for all the replies; a run
    /// to load with `COPY` waits for the statements before it.
    async fn pipeline(
        &mut self,
        client: &Client,
        runs: Vec<Run<'_>>,
        may_copy: bool,
    ) -> Result<(), Error> {
        let mut built = Vec::with_capacity(runs.len());
        for run in runs {
            built.push(self.build(client, run, may_copy).await?);
        }
        metrics::counter!(telemetry::WRITER_STATEMENTS).increment(built.len() as u64);
        let mut rest = &built[..];
        while let Some(at) = rest.iter().position(|b| b.copy.is_some()) {
            send_all(client, &rest[..at]).await?;
            self.copy_or_upsert(client, &rest[at]).await?;
            rest = &rest[at + 1..];
        }
        send_all(client, rest).await
    }

    /// An upsert run of new rows: the rows the target has already (a replay after a
    /// restart, a key deleted and inserted again) are found by their `legacy_id`
    /// (one probe of its unique index, where new keys are the largest) and upserted;
    /// the others, nearly always all of them, are loaded with `COPY` (see
    /// [`crate::copy_text`]). The writer is the target's only writer and has applied
    /// everything before this run, so nothing it has not seen can appear in between
    /// (a backfill chunk on a side connection first claims its key range, see
    /// [`crate::chunk_copy`]).
    async fn copy_or_upsert(&mut self, client: &Client, b: &Built<'_>) -> Result<(), Error> {
        let c = b.copy.as_ref().expect("a run to copy");
        let Some(keys) = crate::copy_text::legacy_ids(c.rows.iter().copied(), c.legacy_id) else {
            return b.execute(client).await.map(|_| ());
        };
        let probe = self
            .prepared(
                client,
                crate::copy_text::probe_sql(&c.sql_name),
                &c.table.target_table,
            )
            .await?;
        let present: HashSet<i64> = client
            .query(&probe, &[&keys])
            .await
            .map_err(Error::target_db(format!(
                "finding which of {} new rows {} has already",
                keys.len(),
                c.table.target_table
            )))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (old, new): (Vec<usize>, Vec<usize>) =
            (0..keys.len()).partition(|&i| present.contains(&keys[i]));
        if !old.is_empty() {
            b.subset(&old).execute(client).await?;
        }
        if new.is_empty() {
            return Ok(());
        }
        let rows: Vec<&[event::Value]> = new.iter().map(|&i| c.rows[i]).collect();
        let versions: Vec<i64> = new.iter().map(|&i| b.versions[i]).collect();
        crate::copy_text::load(
            client,
            c.table,
            &c.sql_name,
            b.soft_delete,
            &versions,
            &rows,
        )
        .await
        .map(|_| ())
    }
}

/// Sends `built`'s statements back to back and waits for all the replies.
async fn send_all(client: &Client, built: &[Built<'_>]) -> Result<(), Error> {
    if let [one] = built {
        return one.execute(client).await.map(|_| ());
    }
    // Poll each statement once, in order, so that it is sent in order; then wait
    // for every reply. After a failure the target rejects the rest of the
    // transaction, so the first error in order is the one that explains it.
    let mut futures = Vec::with_capacity(built.len());
    for b in built {
        let mut f = Box::pin(b.execute(client));
        let first = futures::poll!(f.as_mut());
        futures.push((f, first));
    }
    for (f, first) in futures {
        match first {
            std::task::Poll::Ready(r) => r?,
            std::task::Poll::Pending => f.await?,
        };
    }
    Ok(())
}

/// The runs of consecutive transactions.
///
/// A change joins the run before it when that run is of its table and kind (source
/// order). Where the table's [`Order`] allows, it may also join an *earlier* run of its
/// table and kind, moving past the runs after it:
/// - [`Order::Rows`]: when none of them touches the same row;
/// - [`Order::Table`]: when none of them is of the same table;
/// - never past a run of an [`Order::Strict`] table or a truncate.
///
/// So every row's changes stay in source order, and so does whatever the target could
/// tell apart before the commit (see [`Order`]). A stream of small transactions
/// interleaving a few tables then costs a statement per table and kind instead of one
/// per change.
fn plan<'a>(
    txns: &[&'a event::Transaction],
    shared: &'a [event::Table],
    order: &dyn Fn(&str) -> Order,
) -> Result<Vec<Run<'a>>, Error> {
    let mut runs: Vec<Run<'a>> = Vec::new();
    let mut applied: HashMap<(&str, Op), u64> = HashMap::new();
    // The newest run of each (table, kind), of each table and touching each row; the
    // newest run no change may move before.
    let mut newest: HashMap<(&'a str, Kind2), usize> = HashMap::new();
    let mut newest_of_table: HashMap<&'a str, usize> = HashMap::new();
    let mut touched: HashMap<(&'a str, Vec<&'a str>), usize> = HashMap::new();
    let mut barrier: Option<usize> = None;
    for txn in txns {
        let position = txn.position.unwrap_or_default();
        let (version, time) = (position.commit_lsn as i64, position.commit_time_micros);
        for change in &txn.changes {
            let table = txn
                .tables_in(shared)
                .get(change.table as usize)
                .ok_or_else(|| {
                    Error::Invariant(format!(
                        "change refers to table #{} not in its chunk",
                        change.table
                    ))
                })?;
            let op = Op::try_from(change.op).unwrap_or(Op::Unspecified);
            *applied.entry((&table.target_table, op)).or_default() += 1;
            // (what, the values, whether a new row)
            let mut steps: Vec<(Kind2, &[event::Value], bool)> = Vec::with_capacity(2);
            match op {
                Op::Insert | Op::Backfill => steps.push((Kind2::Upsert, &change.row, true)),

                Op::Update => {
                    if !change.old_key.is_empty() {
                        steps.push((Kind2::Delete, &change.old_key, false));
                    }
                    let carried: Vec<usize> = change
                        .row
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| !matches!(v.kind, Some(Kind::Unchanged(_))))
                        .map(|(i, _)| i)
                        .collect();
                    if carried.len() < change.row.len() {
                        steps.push((Kind2::Partial(carried), &change.row, false));
                    } else {
                        steps.push((Kind2::Upsert, &change.row, false));
                    }
                }
                Op::Delete => steps.push((Kind2::Delete, &change.row, false)),
                Op::Truncate => steps.push((Kind2::Truncate, &change.row, false)),
                Op::Unspecified => {
                    return Err(Error::Invariant(format!(
                        "change with unknown op {}",
                        change.op
                    )))
                }
            }
            let name = table.target_table.as_str();
            let order = order(name);
            for (kind, values, insert) in steps {
                let row = Row {
                    key: key_of(table, values)?,
                    values,
                    version,
                    time,
                    insert,
                };
                let strict = order == Order::Strict || kind == Kind2::Truncate;
                let slot = (name, row.key.clone());
                let last_touch = touched.get(&slot).copied();
                let join = if strict {
                    runs.len().checked_sub(1)
                } else {
                    newest.get(&(name, kind.clone())).copied().filter(|&r| {
                        barrier.is_none_or(|b| r > b)
                            && (order == Order::Rows || newest_of_table.get(name) == Some(&r))
                    })
                }
                .filter(|&r| {
                    runs[r].continues(table, &kind)
                        && match order {
                            // A run keeps a row's last change only: fine where no other
                            // row can tell (see `Run::dedupe`).
                            Order::Rows => last_touch.is_none_or(|t| t <= r),
                            // Elsewhere a row's second change starts a new run: kept in
                            // place, its first one may free a unique value taken between.
                            _ => last_touch.is_none_or(|t| t < r),
                        }
                });
                let i = match join {
                    Some(r) => r,
                    None => {
                        runs.push(Run {
                            table,
                            kind: kind.clone(),
                            rows: Vec::new(),
                        });
                        runs.len() - 1
                    }
                };
                touched.insert(slot, i);
                if strict {
                    barrier = Some(i);
                } else {
                    let newest_run = newest_of_table.entry(name).or_insert(i);
                    *newest_run = (*newest_run).max(i);
                    newest.insert((name, kind), i);
                }
                runs[i].rows.push(row);
            }
        }
    }
    for ((table, op), n) in applied {
        metrics::counter!(telemetry::WRITER_EVENTS_APPLIED, "table" => table.to_string(), "op" => crate::reader::op_label(op)).increment(n);
    }
    Ok(runs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str) -> event::Table {
        event::Table {
            entity: name.into(),
            source_table: format!("public.{name}"),
            target_table: format!("public.{name}"),
            columns: vec![
                event::Column {
                    name: "id".into(),
                    type_name: "uuid".into(),
                    is_key: true,
                },
                event::Column {
                    name: "v".into(),
                    type_name: "text".into(),
                    is_key: false,
                },
            ],
        }
    }

    fn text(s: &str) -> event::Value {
        event::Value {
            kind: Some(Kind::Text(s.into())),
        }
    }

    /// One source transaction at `lsn` writing (table index, op, key, value) changes.
    fn txn(lsn: u64, tables: &[&str], changes: &[(u32, Op, &str, &str)]) -> event::Transaction {
        event::Transaction {
            position: Some(event::SourcePosition {
                commit_lsn: lsn,
                end_lsn: lsn + 1,
                xid: 1,
                commit_time_micros: lsn as i64 * 10,
            }),
            last: true,
            tables: tables.iter().map(|t| table(t)).collect(),
            changes: changes
                .iter()
                .map(|&(t, op, k, v)| event::Change {
                    table: t,
                    op: op as i32,
                    row: vec![text(k), text(v)],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn shape<'a>(runs: &'a [Run<'a>]) -> Vec<(&'a str, Vec<(&'a str, i64)>)> {
        runs.iter()
            .map(|r| {
                (
                    r.table.entity.as_str(),
                    r.rows.iter().map(|w| (w.key[0], w.version)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn adjacent_changes_of_consecutive_transactions_share_a_run_with_their_own_versions() {
        let a = txn(100, &["t"], &[(0, Op::Insert, "k1", "a")]);
        let b = txn(
            200,
            &["t", "u"],
            &[(0, Op::Insert, "k2", "b"), (1, Op::Insert, "k9", "x")],
        );
        let c = txn(300, &["t"], &[(0, Op::Update, "k3", "c")]);
        let mut runs = plan(&[&a, &b, &c], &[], &|_: &str| Order::Strict).unwrap();
        for r in &mut runs {
            r.dedupe();
        }
        assert_eq!(
            shape(&runs),
            vec![
                ("t", vec![("k1", 100), ("k2", 200)]),
                ("u", vec![("k9", 200)]),
                ("t", vec![("k3", 300)])
            ],
            "order is kept: only adjacent changes of the same kind and table merge"
        );
    }

    #[test]
    fn a_merged_run_keeps_the_last_change_to_a_key_with_its_version() {
        let a = txn(
            100,
            &["t"],
            &[(0, Op::Insert, "k1", "old"), (0, Op::Insert, "k2", "b")],
        );
        let b = txn(200, &["t"], &[(0, Op::Update, "k1", "new")]);
        let mut runs = plan(&[&a, &b], &[], &free).unwrap();
        assert_eq!(runs.len(), 1);
        runs[0].dedupe();
        assert_eq!(shape(&runs), vec![("t", vec![("k2", 100), ("k1", 200)])]);
        let kept = runs[0].rows.iter().find(|r| r.key[0] == "k1").unwrap();
        assert_eq!(kept.values[1], text("new"));
    }

    #[test]
    fn a_second_change_to_a_row_of_a_table_with_a_unique_constraint_starts_a_new_run() {
        // Names are unique in s. A frees "p", B takes it, A takes B's "q": kept as one
        // run and reduced to each row's last change, B would take "p" while A holds it.
        let a = txn(100, &["s"], &[(0, Op::Update, "A", "tmp")]);
        let b = txn(200, &["s"], &[(0, Op::Update, "B", "p")]);
        let c = txn(300, &["s"], &[(0, Op::Update, "A", "q")]);
        for order in [Order::Table, Order::Strict] {
            let mut runs = plan(&[&a, &b, &c], &[], &|_: &str| order).unwrap();
            for r in &mut runs {
                r.dedupe();
            }
            assert_eq!(
                shape(&runs),
                vec![("s", vec![("A", 100), ("B", 200)]), ("s", vec![("A", 300)])],
                "{order:?}"
            );
        }
    }

    #[test]
    fn a_delete_between_two_upserts_splits_the_runs() {
        let a = txn(100, &["t"], &[(0, Op::Insert, "k1", "a")]);
        let b = txn(200, &["t"], &[(0, Op::Delete, "k1", "a")]);
        let c = txn(300, &["t"], &[(0, Op::Insert, "k1", "again")]);
        let runs = plan(&[&a, &b, &c], &[], &|_: &str| Order::Strict).unwrap();
        let kinds: Vec<Kind2> = runs.iter().map(|r| r.kind.clone()).collect();
        assert_eq!(kinds, vec![Kind2::Upsert, Kind2::Delete, Kind2::Upsert]);
    }

    #[test]
    fn truncates_never_merge() {
        let a = txn(100, &["t"], &[]);
        let mut a = a;
        a.changes.push(event::Change {
            table: 0,
            op: Op::Truncate as i32,
            ..Default::default()
        });
        let mut b = txn(200, &["t"], &[]);
        b.changes.push(event::Change {
            table: 0,
            op: Op::Truncate as i32,
            ..Default::default()
        });
        let runs = plan(&[&a, &b], &[], &|_: &str| Order::Strict).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].rows[0].version, runs[1].rows[0].version),
            (100, 200)
        );
    }

    /// The tables' [`Order`] in these tests: `s` has a unique constraint beyond its
    /// key, `v` a trigger, the others nothing.
    fn free(t: &str) -> Order {
        match t {
            "public.s" => Order::Table,
            "public.v" => Order::Strict,
            _ => Order::Rows,
        }
    }

    #[test]
    fn rows_of_reorderable_tables_gather_into_one_run_per_table_and_kind() {
        // The streaming mix: inserts into t, updates of u, deletes of t, interleaved.
        let a = txn(
            100,
            &["t", "u"],
            &[(0, Op::Insert, "k1", "a"), (1, Op::Update, "x1", "a")],
        );
        let b = txn(200, &["t"], &[(0, Op::Delete, "k7", "-")]);
        let c = txn(
            300,
            &["u", "t"],
            &[(0, Op::Update, "x2", "b"), (1, Op::Insert, "k2", "b")],
        );
        let d = txn(
            400,
            &["t"],
            &[(0, Op::Delete, "k8", "-"), (0, Op::Insert, "k3", "c")],
        );
        let runs = plan(&[&a, &b, &c, &d], &[], &free).unwrap();
        let kinds: Vec<Kind2> = runs.iter().map(|r| r.kind.clone()).collect();
        assert_eq!(kinds, vec![Kind2::Upsert, Kind2::Upsert, Kind2::Delete]);
        assert_eq!(
            shape(&runs),
            vec![
                ("t", vec![("k1", 100), ("k2", 300), ("k3", 400)]),
                ("u", vec![("x1", 100), ("x2", 300)]),
                ("t", vec![("k7", 200), ("k8", 400)]),
            ]
        );
    }

    #[test]
    fn a_row_changed_in_between_is_not_moved_past_that_change() {
        // k1: insert, delete, insert again: three runs, in order, although the last
        // insert could otherwise join the first run.
        let a = txn(
            100,
            &["t"],
            &[(0, Op::Insert, "k1", "a"), (0, Op::Insert, "k2", "a")],
        );
        let b = txn(200, &["t"], &[(0, Op::Delete, "k1", "-")]);
        let c = txn(
            300,
            &["t"],
            &[(0, Op::Insert, "k1", "again"), (0, Op::Insert, "k3", "c")],
        );
        let runs = plan(&[&a, &b, &c], &[], &free).unwrap();
        assert_eq!(
            shape(&runs),
            vec![
                ("t", vec![("k1", 100), ("k2", 100)]),
                ("t", vec![("k1", 200)]),
                ("t", vec![("k1", 300), ("k3", 300)]),
            ]
        );
    }

    #[test]
    fn nothing_moves_past_a_strict_table_or_a_truncate_and_a_table_ordered_one_keeps_its_order() {
        // v has a trigger: t does not cross it.
        let a = txn(100, &["t"], &[(0, Op::Insert, "k1", "a")]);
        let b = txn(200, &["v"], &[(0, Op::Insert, "n1", "a")]);
        let c = txn(300, &["t"], &[(0, Op::Insert, "k2", "b")]);
        let runs = plan(&[&a, &b, &c], &[], &free).unwrap();
        assert_eq!(
            shape(&runs),
            vec![
                ("t", vec![("k1", 100)]),
                ("v", vec![("n1", 200)]),
                ("t", vec![("k2", 300)]),
            ]
        );
        // s has a unique constraint beyond its key: its insert after its delete stays
        // after it (the delete may free the unique value the insert takes); t crosses s.
        let a = txn(
            100,
            &["s", "t"],
            &[(0, Op::Insert, "n1", "a"), (1, Op::Insert, "k1", "a")],
        );
        let b = txn(200, &["s"], &[(0, Op::Delete, "n0", "-")]);
        let c = txn(
            300,
            &["t", "s"],
            &[(0, Op::Insert, "k2", "b"), (1, Op::Insert, "n2", "b")],
        );
        let runs = plan(&[&a, &b, &c], &[], &free).unwrap();
        assert_eq!(
            shape(&runs),
            vec![
                ("s", vec![("n1", 100)]),
                ("t", vec![("k1", 100), ("k2", 300)]),
                ("s", vec![("n0", 200)]),
                ("s", vec![("n2", 300)]),
            ]
        );
        let a = txn(100, &["t"], &[(0, Op::Insert, "k1", "a")]);
        let mut e = txn(500, &["u"], &[]);
        e.changes.push(event::Change {
            table: 0,
            op: Op::Truncate as i32,
            ..Default::default()
        });
        let f = txn(600, &["t"], &[(0, Op::Insert, "k3", "d")]);
        let runs = plan(&[&a, &e, &f], &[], &free).unwrap();
        assert_eq!(runs.len(), 3, "t does not cross a truncate");
    }

    /// The target as the statements leave it: (table, key) → (value, row_version, live).
    type Model = std::collections::BTreeMap<(String, String), (String, i64, bool)>;

    /// Applies one statement's rows as the SQL of [`statement_sql`] does (soft deletes).
    fn model_apply(m: &mut Model, table: &str, kind: &Kind2, rows: &[(String, String, i64)]) {
        for (key, value, version) in rows {
            let slot = (table.to_string(), key.clone());
            match kind {
                Kind2::Upsert => match m.get_mut(&slot) {
                    Some(row) if row.1 <= *version => *row = (value.clone(), *version, true),
                    Some(_) => {}
                    None => {
                        m.insert(slot, (value.clone(), *version, true));
                    }
                },
                Kind2::Delete => {
                    if let Some(row) = m.get_mut(&slot).filter(|r| r.1 <= *version && r.2) {
                        row.1 = *version;
                        row.2 = false;
                    }
                }
                Kind2::Truncate => {
                    for ((t, _), row) in m.iter_mut() {
                        if t == table && row.1 <= *version && row.2 {
                            row.1 = *version;
                            row.2 = false;
                        }
                    }
                }
                Kind2::Partial(_) => unreachable!("no TOAST markers here"),
            }
        }
    }

    fn model_rows(run: &Run<'_>) -> Vec<(String, String, i64)> {
        run.rows
            .iter()
            .map(|r| {
                let value = match r.values.get(1).and_then(|v| v.kind.as_ref()) {
                    Some(Kind::Text(s)) => s.clone(),
                    _ => String::new(),
                };
                (
                    r.key.first().map_or(String::new(), |k| k.to_string()),
                    value,
                    r.version,
                )
            })
            .collect()
    }

    #[test]
    fn reordered_runs_leave_the_target_as_source_order_does() {
        // Random streams over four tables (see `free`) and a few keys, with
        // re-inserts, deletes, truncates and several changes to a key in one
        // transaction: applying the planned runs gives the same rows as applying every
        // change on its own, in source order.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = ["t", "u", "s", "v"];
        for trial in 0..300 {
            // The source's live rows: a stream only deletes or updates a row that exists
            // and only inserts one that does not.
            let mut live = std::collections::BTreeSet::new();
            let mut txns = Vec::new();
            for x in 0..(2 + next(30)) {
                let lsn = 100 * (x + 1);
                let mut t = txn(lsn, &names, &[]);
                for _ in 0..(1 + next(3)) {
                    let table = next(4) as u32;
                    let key = format!("k{}", next(5));
                    let exists = live.contains(&(table, key.clone()));
                    let op = match (next(20), exists) {
                        (0, _) => Op::Truncate,
                        (1..=8, true) => Op::Delete,
                        (_, true) => Op::Update,
                        (_, false) => Op::Insert,
                    };
                    match op {
                        Op::Truncate => live.retain(|(t, _)| *t != table),
                        Op::Delete => {
                            live.remove(&(table, key.clone()));
                        }
                        _ => {
                            live.insert((table, key.clone()));
                        }
                    }
                    let value = format!("v{trial}.{lsn}.{}", next(1000));
                    t.changes.push(event::Change {
                        table,
                        op: op as i32,
                        row: if op == Op::Truncate {
                            vec![]
                        } else {
                            vec![text(&key), text(&value)]
                        },
                        ..Default::default()
                    });
                }
                txns.push(t);
            }
            let refs: Vec<&event::Transaction> = txns.iter().collect();

            let mut in_order = Model::new();
            for t in &txns {
                for c in &t.changes {
                    let one = event::Transaction {
                        changes: vec![c.clone()],
                        ..t.clone()
                    };
                    let run = plan(&[&one], &[], &|_: &str| Order::Strict).unwrap();
                    for r in &run {
                        model_apply(
                            &mut in_order,
                            &r.table.target_table,
                            &r.kind,
                            &model_rows(r),
                        );
                    }
                }
            }
            let mut planned = Model::new();
            let mut runs = plan(&refs, &[], &free).unwrap();
            for r in &mut runs {
                r.dedupe();
                model_apply(&mut planned, &r.table.target_table, &r.kind, &model_rows(r));
            }
            assert_eq!(planned, in_order, "trial {trial}: {} runs", runs.len());
        }
    }
}
