//! Backfill chunk rows loaded with `COPY`, where the new store has none of them yet.
//!
//! A chunk's rows are full images positioned at its high watermark, and nearly all of
//! them are new to the new store. The upsert every other change takes ([`crate::apply`])
//! costs the target, per row, a conflict probe of the primary key, a speculative
//! insertion, and the parsing of the `unnest` text arrays before the casts. `COPY`
//! inserts many rows per heap page and WAL record, and parses each value once.
//! Measured on the server alone, 150k `prompt_executions`-like rows into a table with
//! its primary key and unique `legacy_id`: 225–233 CPU ticks as upserts from 5,000-row
//! text arrays, 156–162 as one `COPY`. In the backfill benchmark (3 A/B pairs): target
//! CPU per row 23–25 → 19–21 µs, rows/s +12 %.
//!
//! The load itself is the writer's own for large runs of new rows
//! ([`Applier::apply_all`]): one probe of the unique `legacy_id` index finds the rows
//! the new store has already, which take the upsert with its order guard, and the rest
//! are copied, in the chunk's transaction. Those rows can only be ones the stream wrote
//! before the chunk: a chunk's key range is copied once, the writer commits what it
//! applied before it hands a chunk over, and later changes to the table wait for the
//! chunk ([`crate::chunk_apply`]). A part that is not a plain run of backfill rows with
//! integer keys is upserted throughout ([`Applier::upsert_all`]).
//!
//! One case needs more: a chunk published again by a restarted reader (it resumes after
//! the last chunk the new store recorded) can be in flight beside its first copy, on
//! another connection. Rows the other transaction has not committed are invisible to the
//! probe, and `COPY` would then wait for them and fail on the key; so would the first
//! copy's `COPY` if the second wrote its rows in between. So the chunks in flight
//! [`Claims`] the key ranges they write, until their transaction ends: a part whose
//! range overlaps another chunk's claim waits for that chunk to commit or roll back,
//! then probes. Only a later chunk waits for an earlier one, never the reverse, so they
//! cannot deadlock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio_postgres::Client;

use crate::apply::Applier;
use crate::copy_text;
use crate::error::Error;
use crate::event::{self, Op};
use crate::mapping::LEGACY_ID;
use crate::target::{Catalog, TargetTable};

/// Applies backfill chunk parts on one connection, under its claims.
pub struct ChunkCopy {
    catalog: Catalog,
    claims: Claims,
    /// This connection, as the owner of its claims.
    owner: usize,
}

/// The legacy key ranges the chunks in flight write, by target table (see the module
/// doc); shared by a pool's connections.
#[derive(Clone, Default)]
pub struct Claims(Arc<ClaimsInner>);

#[derive(Default)]
struct ClaimsInner {
    ranges: Mutex<HashMap<String, Vec<Claim>>>,
    /// Signalled whenever an owner's claims are released.
    released: tokio::sync::Notify,
}

/// A chunk connection (its owner) writes `lo..=hi`.
#[derive(Clone, Copy)]
struct Claim {
    owner: usize,
    lo: i64,
    hi: i64,
}

impl Claims {
    /// Records that `owner` writes `lo..=hi` of `table`, once no other owner claims an
    /// overlapping range: waits for those owners' transactions to end.
    async fn claim(&self, owner: usize, table: &str, lo: i64, hi: i64) {
        loop {
            let released = self.0.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.try_claim(owner, table, lo, hi) {
                return;
            }
            tracing::debug!(
                table,
                lo,
                hi,
                "a backfill chunk waits for another copy of its key range to end"
            );
            released.await;
        }
    }

    /// Records the claim and returns true, unless another owner claims an overlapping
    /// range.
    fn try_claim(&self, owner: usize, table: &str, lo: i64, hi: i64) -> bool {
        let mut claims = self.0.ranges.lock().unwrap_or_else(|e| e.into_inner());
        let ranges = claims.entry(table.to_string()).or_default();
        let alone = ranges
            .iter()
            .all(|c| c.owner == owner || c.hi < lo || hi < c.lo);
        if alone {
            ranges.push(Claim { owner, lo, hi });
        }
        alone
    }

    /// Drops `owner`'s claims: its transaction has ended.
    fn release(&self, owner: usize) {
        {
            let mut claims = self.0.ranges.lock().unwrap_or_else(|e| e.into_inner());
            for ranges in claims.values_mut() {
                ranges.retain(|c| c.owner != owner);
            }
        }
        self.0.released.notify_waiters();
    }
}

/// A part that `COPY` can load: one table, backfill rows only, integer legacy keys.
struct Copyable {
    /// The table's index in the part's tables.
    at: u32,
    keys: Vec<i64>,
}

impl ChunkCopy {
    /// `owner` must be unique among the connections sharing `claims`.
    pub fn new(catalog: Catalog, claims: Claims, owner: usize) -> Self {
        Self {
            catalog,
            claims,
            owner,
        }
    }

    /// Ends this connection's claims: call when its chunk transaction has ended,
    /// committed or not.
    pub fn release(&self) {
        self.claims.release(self.owner);
    }

    /// Applies one part of a chunk in the connection's open transaction, once its key
    /// range is this chunk's alone (see the module doc). Returns the number of rows
    /// applied.
    ///
    /// The part's `COPY` lines ([`event::CopyRows`]) are loaded as they are, each with
    /// the chunk's `row_version` appended, except those of rows the new store has
    /// already, which are decoded and upserted with the part's changes (the rows the
    /// stream overlaid).
    pub async fn apply(
        &mut self,
        client: &Client,
        applier: &mut Applier,
        mut part: event::Transaction,
    ) -> Result<u64, Error> {
        let lines = part
            .copy
            .take()
            .and_then(|copy| match loadable(&self.catalog, &part, &copy) {
                Some((keys, target)) => Some((copy, keys, target)),
                None => {
                    part.copy = Some(copy);
                    copy_text::expand(&mut part);
                    None
                }
            });
        let changes = match (&lines, part.changes.first()) {
            (_, None) => lines.as_ref().map(|(copy, ..)| (copy.table, Vec::new())),
            (Some((copy, ..)), Some(c)) if c.table != copy.table => None,
            _ => copyable(&self.catalog, &part).map(|c| (c.at, c.keys)),
        };
        let Some((at, mut keys)) = changes else {
            if let Some((copy, ..)) = lines {
                part.copy = Some(copy);
                copy_text::expand(&mut part);
            }
            return applier.upsert_all(client, &[&part], &[]).await;
        };
        let table = &part.tables[at as usize];
        if let Some((_, line_keys, _)) = &lines {
            keys.extend_from_slice(line_keys);
        }
        let (Some(&lo), Some(&hi)) = (keys.iter().min(), keys.iter().max()) else {
            return Ok(0);
        };
        self.claims
            .claim(self.owner, &table.target_table, lo, hi)
            .await;
        let mut applied = 0;
        if let Some((copy, keys, target)) = lines {
            let present = present(client, &target.sql_name, table, &keys).await?;
            let mut skip = Vec::new();
            let mut ranges = Vec::new();
            for (i, line) in copy_text::lines(&copy.lines).enumerate() {
                if present.contains(&keys[i]) {
                    skip.push(i);
                    part.changes
                        .push(copy_text::backfill_change(copy.table, line, &mut ranges));
                }
            }
            let version = part.position.map_or(0, |p| p.commit_lsn) as i64;
            applied += copy_text::load_lines(
                client,
                table,
                &target.sql_name,
                target.soft_delete,
                version,
                &copy.lines,
                &skip,
            )
            .await?;
        }
        if !part.changes.is_empty() {
            applied += applier.apply_all(client, &[&part], &[]).await?;
        }
        Ok(applied)
    }
}

/// Which of `keys` (legacy ids) the target table `sql_name` has already.
async fn present(
    client: &Client,
    sql_name: &str,
    table: &event::Table,
    keys: &[i64],
) -> Result<HashSet<i64>, Error> {
    Ok(client
        .query(&copy_text::probe_sql(sql_name), &[&keys])
        .await
        .map_err(Error::target_db(format!(
            "finding which of {} backfill rows {} has already",
            keys.len(),
            table.target_table
        )))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The legacy ids of `copy`'s lines, in order, and their target, where they can be
/// loaded with `COPY`: the target keeps a unique `legacy_id`, and every key is an
/// integer; `None` where every row must take the upsert.
fn loadable<'a>(
    catalog: &'a Catalog,
    part: &event::Transaction,
    copy: &event::CopyRows,
) -> Option<(Vec<i64>, &'a TargetTable)> {
    let (at, target) = legacy_id_column(catalog, part, copy.table)?;
    let keys = copy_text::field_ids(&copy.lines, at)?;
    (keys.len() == copy.rows as usize).then_some((keys, target))
}

/// What `COPY` needs to load `part`'s changes, or `None` where every row must take the
/// upsert.
fn copyable(catalog: &Catalog, part: &event::Transaction) -> Option<Copyable> {
    let at = part.changes.first()?.table;
    let (column, _) = legacy_id_column(catalog, part, at)?;
    if part
        .changes
        .iter()
        .any(|c| c.op != Op::Backfill as i32 || c.table != at)
    {
        return None;
    }
    let keys = copy_text::legacy_ids(part.changes.iter().map(|c| &c.row[..]), column)?;
    Some(Copyable { at, keys })
}

/// The index of `legacy_id` among the columns of the part's table `at`, and that
/// table's target, where the target keeps `legacy_id` unique.
fn legacy_id_column<'a>(
    catalog: &'a Catalog,
    part: &event::Transaction,
    at: u32,
) -> Option<(usize, &'a TargetTable)> {
    let table = part.tables.get(at as usize)?;
    let target = catalog.get(&table.target_table)?;
    if !target.legacy_id_unique {
        return None;
    }
    let column = table.columns.iter().position(|c| c.name == LEGACY_ID)?;
    Some((column, target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::value::Kind;

    fn column(name: &str) -> event::Column {
        event::Column {
            name: name.into(),
            type_name: "text".into(),
            is_key: name == "id",
        }
    }

    fn text(s: &str) -> event::Value {
        event::Value {
            kind: Some(Kind::Text(s.into())),
        }
    }

    fn null() -> event::Value {
        event::Value {
            kind: Some(Kind::Null(true)),
        }
    }

    fn table() -> event::Table {
        event::Table {
            entity: "t".into(),
            source_table: "public.t".into(),
            target_table: "public.t".into(),
            columns: vec![column("id"), column("legacy_id"), column("note")],
        }
    }

    fn part(ops: &[(Op, &str)]) -> event::Transaction {
        event::Transaction {
            tables: vec![table()],
            changes: ops
                .iter()
                .map(|&(op, key)| event::Change {
                    op: op as i32,
                    row: vec![text("u"), text(key), null()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn catalog(legacy_id_unique: bool) -> Catalog {
        let target = crate::target::TargetTable {
            sql_name: "\"public\".\"t\"".into(),
            columns: HashMap::new(),
            key: vec!["id".into()],
            soft_delete: true,
            order: crate::target::Order::Rows,
            legacy_id_unique,
        };
        [("public.t".to_string(), target)].into_iter().collect()
    }

    #[test]
    fn a_range_is_claimed_only_while_no_other_chunk_claims_an_overlap() {
        let claims = Claims::default();
        assert!(claims.try_claim(1, "t", 1, 100));
        assert!(
            claims.try_claim(1, "t", 101, 200),
            "its own ranges never overlap"
        );
        assert!(claims.try_claim(2, "t", 201, 300));
        assert!(claims.try_claim(3, "other", 1, 100), "another table");
        assert!(
            !claims.try_claim(4, "t", 50, 60),
            "inside a range in flight"
        );
        assert!(!claims.try_claim(5, "t", 300, 400), "touching one end");
        claims.release(1);
        assert!(
            claims.try_claim(6, "t", 1, 200),
            "released with its transaction"
        );
        assert!(
            !claims.try_claim(7, "t", 150, 250),
            "still claimed: 6, and 2"
        );
    }

    #[tokio::test]
    async fn an_overlapping_chunk_waits_until_the_other_transaction_ends() {
        let claims = Claims::default();
        claims.claim(1, "t", 1, 100).await;
        let waiting = {
            let claims = claims.clone();
            tokio::spawn(async move { claims.claim(2, "t", 50, 150).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the second copy waits for the first"
        );
        claims.release(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("claimed once the first copy's transaction ended")
            .unwrap();
        assert!(
            !claims.try_claim(3, "t", 120, 130),
            "now the second holds it"
        );
    }

    #[test]
    fn only_plain_backfill_runs_of_indexed_integer_keys_are_copied() {
        let c = catalog(true);
        let ok = part(&[(Op::Backfill, "3"), (Op::Backfill, "9")]);
        assert_eq!(copyable(&c, &ok).map(|c| c.keys), Some(vec![3, 9]));
        for refused in [
            part(&[(Op::Backfill, "3"), (Op::Update, "4")]),
            part(&[(Op::Backfill, "3/1")]),
        ] {
            assert!(copyable(&c, &refused).is_none());
        }
        assert!(copyable(&catalog(false), &ok).is_none());
        let mut no_legacy_id = ok.clone();
        no_legacy_id.tables[0].columns[1].name = "other".into();
        assert!(copyable(&c, &no_legacy_id).is_none());
    }
}
