//! The reading side of verification: paged scans of both stores, the re-check of single
//! keys, and the foreign-key checks of the target. Each function issues bounded
//! statements only (a key range with `LIMIT`, or a list of keys); see the parent module.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use crate::error::Error;
use crate::rekey::Rekeyer;

use super::merge::{
    classify, finding_label, key_label, pop_pair, translate, Finding, LegacyRow, Presence, RowKey,
    Stream, Suspect, Tally, TargetRow, Uuids,
};
use super::plan::{ForeignKey, KeyPlan, TablePlan};
use super::{Options, Progress};

/// Keys per statement when re-checking (rows are read whole, TOASTed values included).
const RECHECK_BATCH: usize = 100;
/// Rows named per foreign-key problem.
const FK_SAMPLES: i64 = 3;

/// Both connections and the settings of a run.
pub(super) struct Ctx<'a> {
    pub legacy: &'a Client,
    pub target: &'a Client,
    pub rk: &'a Rekeyer,
    pub opts: &'a Options,
}

/// The first pass over one table.
#[derive(Debug, Default)]
pub(super) struct Scanned {
    pub legacy_rows: u64,
    pub target_live_rows: u64,
    pub target_deleted_rows: u64,
    pub tally: Tally,
}

/// Counts rows and emits a progress line now and then.
struct Meter<'p> {
    table: String,
    estimated: Option<u64>,
    started: Instant,
    last: Instant,
    rows: u64,
    chunks: u64,
    on_progress: &'p mut (dyn FnMut(&Progress) + Send),
    every: std::time::Duration,
}

impl Meter<'_> {
    fn chunk(&mut self, rows: usize) {
        self.rows += rows as u64;
        self.chunks += 1;
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            self.emit(false);
        }
    }

    fn emit(&mut self, done: bool) {
        let p = Progress::Table {
            table: self.table.clone(),
            rows: self.rows,
            estimated: self.estimated,
            chunks: self.chunks,
            elapsed: self.started.elapsed(),
            done,
        };
        (self.on_progress)(&p);
    }
}

fn legacy_err(plan: &TablePlan) -> impl FnOnce(tokio_postgres::Error) -> Error {
    Error::source_db(format!("verifying {}", plan.name))
}

fn target_err(plan: &TablePlan) -> impl FnOnce(tokio_postgres::Error) -> Error {
    Error::target_db(format!("verifying {}", plan.name))
}

fn legacy_row(plan: &TablePlan, row: &Row, values: bool) -> LegacyRow {
    let (key, mut i) = match &plan.key {
        KeyPlan::Id { .. } => (RowKey::Id(row.get(0)), 1),
        KeyPlan::Composite(parts) => (
            RowKey::Parts((0..parts.len()).map(|j| row.get(j)).collect()),
            parts.len(),
        ),
    };
    let rekeyed = (0..plan.rekeyed.len()).map(|j| row.get(i + j)).collect();
    i += plan.rekeyed.len();
    let digest = row.get(i);
    i += 1;
    let values = values.then(|| (0..plan.copied.len()).map(|j| row.get(i + j)).collect());
    LegacyRow {
        key,
        rekeyed,
        digest,
        values,
    }
}

fn target_row(plan: &TablePlan, row: &Row, values: bool) -> TargetRow {
    let (key, id, mut i) = match &plan.key {
        KeyPlan::Id { .. } => (RowKey::Id(row.get(0)), Some(row.get(1)), 2),
        KeyPlan::Composite(parts) => (
            RowKey::Parts((0..parts.len()).map(|j| row.get(j)).collect()),
            None,
            parts.len(),
        ),
    };
    let deleted = row.get(i);
    i += 1;
    let rekeyed = (0..plan.rekeyed.len()).map(|j| row.get(i + j)).collect();
    i += plan.rekeyed.len();
    let digest = row.get(i);
    i += 1;
    let values = values.then(|| (0..plan.copied.len()).map(|j| row.get(i + j)).collect());
    TargetRow {
        key,
        id,
        deleted,
        rekeyed,
        digest,
        values,
    }
}

/// `reltuples` of the legacy table: the planner's estimate, no scan.
async fn estimate(ctx: &Ctx<'_>, plan: &TablePlan) -> Result<Option<u64>, Error> {
    let n: Option<f32> = ctx
        .legacy
        .query_one(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass($1)",
            &[&plan.legacy_table],
        )
        .await
        .map_err(legacy_err(plan))?
        .get(0);
    Ok(n.filter(|n| *n > 0.0).map(|n| n as u64))
}

async fn meter<'p>(
    ctx: &Ctx<'_>,
    plan: &TablePlan,
    on_progress: &'p mut (dyn FnMut(&Progress) + Send),
) -> Result<Meter<'p>, Error> {
    Ok(Meter {
        table: plan.name.clone(),
        estimated: estimate(ctx, plan).await?,
        started: Instant::now(),
        last: Instant::now(),
        rows: 0,
        chunks: 0,
        on_progress,
        every: ctx.opts.progress_interval,
    })
}

/// A table with an integer key: both stores paged in key order (`id`, `legacy_id`) and
/// merged. The next page of each side is read while the buffered ones are merged (on a
/// multi-thread runtime the connections read while this task merges), so a side holds
/// at most three pages.
pub(super) async fn scan_id_table(
    ctx: &Ctx<'_>,
    plan: &TablePlan,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Scanned, Error> {
    let mut meter = meter(ctx, plan, on_progress).await?;
    let mut uuids = Uuids::new(ctx.rk);
    let lq = ctx
        .legacy
        .prepare(&plan.legacy_page_sql())
        .await
        .map_err(legacy_err(plan))?;
    let tq = ctx
        .target
        .prepare(&plan.target_page_sql())
        .await
        .map_err(target_err(plan))?;
    let limit = ctx.opts.chunk_rows;
    let mut out = Scanned {
        tally: Tally::new(ctx.opts.recheck_limit),
        ..Default::default()
    };
    let (mut legacy, mut target) = (Stream::default(), Stream::default());
    let (mut legacy_last, mut target_last) = (i64::MIN, i64::MIN);
    loop {
        // Read a page for each side with less than two pages buffered (and more to
        // come), and meanwhile merge what is buffered.
        let read_legacy = !legacy.exhausted && legacy.rows.len() < limit * 2;
        let read_target = !target.exhausted && target.rows.len() < limit * 2;
        let (pages, ()) = tokio::join!(
            async {
                tokio::try_join!(
                    async {
                        page_after(ctx.legacy, &lq, read_legacy, legacy_last, limit)
                            .await
                            .map_err(legacy_err(plan))
                    },
                    async {
                        page_after(ctx.target, &tq, read_target, target_last, limit)
                            .await
                            .map_err(target_err(plan))
                    },
                )
            },
            async {
                while let Some((l, t)) = pop_pair(&mut legacy, &mut target) {
                    out.legacy_rows += u64::from(l.is_some());
                    if let Some(t) = &t {
                        if t.deleted {
                            out.target_deleted_rows += 1;
                        } else {
                            out.target_live_rows += 1;
                        }
                    }
                    if let Some(f) = classify(plan, &mut uuids, l.as_ref(), t.as_ref()) {
                        let seen = Presence::of(l.as_ref(), t.as_ref());
                        let key = l.map(|r| r.key).or(t.map(|r| r.key)).expect("a row");
                        out.tally.record(key, seen, &f);
                    }
                }
            }
        );
        let (lp, tp) = pages?;
        if let Some(rows) = lp {
            let page: Vec<LegacyRow> = rows.iter().map(|r| legacy_row(plan, r, false)).collect();
            if let Some(RowKey::Id(k)) = page.last().map(|r| &r.key) {
                legacy_last = *k;
            }
            meter.chunk(page.len());
            legacy.push_page(page, limit);
        }
        if let Some(rows) = tp {
            let page: Vec<TargetRow> = rows.iter().map(|r| target_row(plan, r, false)).collect();
            if let Some(RowKey::Id(k)) = page.last().map(|r| &r.key) {
                target_last = *k;
            }
            target.push_page(page, limit);
        }
        if legacy.done() && target.done() {
            break;
        }
    }
    meter.emit(true);
    Ok(out)
}

/// One page after `last`, when `wanted`.
async fn page_after(
    client: &Client,
    statement: &Statement,
    wanted: bool,
    last: i64,
    limit: usize,
) -> Result<Option<Vec<Row>>, tokio_postgres::Error> {
    if !wanted {
        return Ok(None);
    }
    client
        .query(statement, &[&last, &(limit as i64)])
        .await
        .map(Some)
}

fn params<'a>(strings: &'a [String], extra: &'a (dyn ToSql + Sync)) -> Vec<&'a (dyn ToSql + Sync)> {
    let mut p: Vec<&(dyn ToSql + Sync)> =
        strings.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
    p.push(extra);
    p
}

/// Columns of `keys` as one array per key part, for `unnest`.
fn columns_of(keys: &[Vec<String>], width: usize) -> Vec<Vec<String>> {
    (0..width)
        .map(|j| keys.iter().map(|k| k[j].clone()).collect())
        .collect()
}

fn array_params(arrays: &[Vec<String>]) -> Vec<&(dyn ToSql + Sync)> {
    arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

/// A table with a composite key: legacy paged in key order, the target rows of each page
/// looked up by their translated keys. Extra target rows are found by count, then named
/// by a pass over the target in its key order (when the key can be translated back).
pub(super) async fn scan_composite_table(
    ctx: &Ctx<'_>,
    plan: &TablePlan,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Scanned, Error> {
    let width = plan.key_names().len();
    let mut meter = meter(ctx, plan, on_progress).await?;
    let mut uuids = Uuids::new(ctx.rk);
    let first = ctx
        .legacy
        .prepare(&plan.legacy_first_page_sql())
        .await
        .map_err(legacy_err(plan))?;
    let next = ctx
        .legacy
        .prepare(&plan.legacy_page_sql())
        .await
        .map_err(legacy_err(plan))?;
    let by_keys = ctx
        .target
        .prepare(&plan.target_by_keys_sql(false))
        .await
        .map_err(target_err(plan))?;
    let limit = ctx.opts.chunk_rows as i64;
    let mut out = Scanned {
        tally: Tally::new(ctx.opts.recheck_limit),
        ..Default::default()
    };
    let mut matched_live = 0u64;
    let mut last: Option<Vec<String>> = None;
    loop {
        let rows = match &last {
            None => ctx.legacy.query(&first, &[&limit]).await,
            Some(k) => ctx.legacy.query(&next, &params(k, &limit)).await,
        }
        .map_err(legacy_err(plan))?;
        let page: Vec<LegacyRow> = rows.iter().map(|r| legacy_row(plan, r, false)).collect();
        if page.is_empty() {
            break;
        }
        let translated: Vec<Vec<String>> = page
            .iter()
            .map(|r| match &r.key {
                RowKey::Parts(p) => translate(plan, &mut uuids, p),
                RowKey::Id(_) => unreachable!("composite key"),
            })
            .collect();
        let arrays = columns_of(&translated, width);
        let found: HashMap<RowKey, TargetRow> = ctx
            .target
            .query(&by_keys, &array_params(&arrays))
            .await
            .map_err(target_err(plan))?
            .iter()
            .map(|r| {
                let t = target_row(plan, r, false);
                (t.key.clone(), t)
            })
            .collect();
        for (l, k) in page.iter().zip(translated) {
            let t = found.get(&RowKey::Parts(k));
            matched_live += u64::from(t.is_some_and(|t| !t.deleted));
            if let Some(f) = classify(plan, &mut uuids, Some(l), t) {
                out.tally
                    .record(l.key.clone(), Presence::of(Some(l), t), &f);
            }
        }
        out.legacy_rows += page.len() as u64;
        meter.chunk(page.len());
        let short = (page.len() as i64) < limit;
        last = page.into_iter().last().map(|r| match r.key {
            RowKey::Parts(p) => p,
            RowKey::Id(_) => unreachable!("composite key"),
        });
        if short {
            break;
        }
    }
    let counts = ctx
        .target
        .query_one(&plan.target_counts_sql(), &[])
        .await
        .map_err(target_err(plan))?;
    // Counted per key, like the merge of integer-key tables: the rows matched, plus the
    // extra rows found below.
    out.target_live_rows = matched_live;
    out.target_deleted_rows = counts.get::<_, i64>(1) as u64;
    let extra = (counts.get::<_, i64>(0) as u64).saturating_sub(matched_live);
    if extra > 0 {
        if plan.reversible() {
            out.target_live_rows += name_extras(ctx, plan, &mut out.tally).await?;
        } else {
            out.target_live_rows += extra;
            out.tally.fixed.extra += extra;
            out.tally.fixed_labels.push(format!(
                "extra: {extra} live rows whose key is not in legacy (keys cannot be translated back)"
            ));
        }
    }
    meter.emit(true);
    Ok(out)
}

/// Pages through the live target rows of a composite-key table in target key order,
/// translates each key back to legacy values and records the ones legacy lacks; returns
/// how many.
async fn name_extras(ctx: &Ctx<'_>, plan: &TablePlan, tally: &mut Tally) -> Result<u64, Error> {
    let width = plan.key_names().len();
    let first = ctx
        .target
        .prepare(&plan.reverse_page_sql(true))
        .await
        .map_err(target_err(plan))?;
    let next = ctx
        .target
        .prepare(&plan.reverse_page_sql(false))
        .await
        .map_err(target_err(plan))?;
    let exists = ctx
        .legacy
        .prepare(&plan.legacy_by_keys_sql(false))
        .await
        .map_err(legacy_err(plan))?;
    let limit = ctx.opts.chunk_rows as i64;
    let mut last: Option<Vec<String>> = None;
    let mut extras = 0;
    loop {
        let rows = match &last {
            None => ctx.target.query(&first, &[&limit]).await,
            Some(k) => ctx.target.query(&next, &params(k, &limit)).await,
        }
        .map_err(target_err(plan))?;
        if rows.is_empty() {
            break;
        }
        // (target key, legacy key if every parent was found)
        let page: Vec<(Vec<String>, Option<Vec<String>>)> = rows
            .iter()
            .map(|r| {
                let target: Vec<String> = (0..width).map(|j| r.get(j)).collect();
                let legacy: Option<Vec<String>> = (0..width)
                    .map(|j| r.get::<_, Option<String>>(width + j))
                    .collect();
                (target, legacy)
            })
            .collect();
        let keys: Vec<Vec<String>> = page.iter().filter_map(|(_, l)| l.clone()).collect();
        let arrays = columns_of(&keys, width);
        let present: HashSet<RowKey> = ctx
            .legacy
            .query(&exists, &array_params(&arrays))
            .await
            .map_err(legacy_err(plan))?
            .iter()
            .map(|r| legacy_row(plan, r, false).key)
            .collect();
        for (target, legacy) in &page {
            match legacy {
                Some(l) => {
                    let key = RowKey::Parts(l.clone());
                    if !present.contains(&key) {
                        let seen = Presence {
                            legacy: false,
                            target: Some(false),
                        };
                        tally.record(key, seen, &Finding::Extra(None));
                        extras += 1;
                    }
                }
                None => {
                    let label = format!(
                        "extra {} (its parent is not in the target)",
                        key_label(plan, &RowKey::Parts(target.clone()))
                    );
                    tally.record_fixed(label, &Finding::Extra(None));
                    extras += 1;
                }
            }
        }
        let short = (rows.len() as i64) < limit;
        last = page.into_iter().last().map(|(t, _)| t);
        if short {
            break;
        }
    }
    Ok(extras)
}

/// What the re-check of one key found: the rows there now, and the finding (with its
/// label) if it persists.
pub(super) struct Rechecked {
    pub seen: Presence,
    pub finding: Option<(Finding, String)>,
}

/// Reads the rows of `suspects` again from both stores, whole, and classifies them; one
/// result per suspect, in order.
pub(super) async fn recheck(
    ctx: &Ctx<'_>,
    plan: &TablePlan,
    suspects: &[Suspect],
) -> Result<Vec<Rechecked>, Error> {
    let keys: Vec<RowKey> = suspects.iter().map(|s| s.key.clone()).collect();
    let mut uuids = Uuids::new(ctx.rk);
    let lq = ctx
        .legacy
        .prepare(&plan.legacy_by_keys_sql(true))
        .await
        .map_err(legacy_err(plan))?;
    let tq = ctx
        .target
        .prepare(&plan.target_by_keys_sql(true))
        .await
        .map_err(target_err(plan))?;
    let mut out = Vec::new();
    for batch in keys.chunks(RECHECK_BATCH) {
        let (legacy_rows, target_rows, translated) = match &plan.key {
            KeyPlan::Id { .. } => {
                let ids: Vec<i64> = batch
                    .iter()
                    .map(|k| match k {
                        RowKey::Id(k) => *k,
                        RowKey::Parts(_) => unreachable!("integer key"),
                    })
                    .collect();
                let p: [&(dyn ToSql + Sync); 1] = [&ids];
                let (l, t) = tokio::join!(ctx.legacy.query(&lq, &p), ctx.target.query(&tq, &p));
                (
                    l.map_err(legacy_err(plan))?,
                    t.map_err(target_err(plan))?,
                    batch.to_vec(),
                )
            }
            KeyPlan::Composite(parts) => {
                let legacy_keys: Vec<Vec<String>> = batch
                    .iter()
                    .map(|k| match k {
                        RowKey::Parts(p) => p.clone(),
                        RowKey::Id(_) => unreachable!("composite key"),
                    })
                    .collect();
                let translated: Vec<Vec<String>> = legacy_keys
                    .iter()
                    .map(|k| translate(plan, &mut uuids, k))
                    .collect();
                let la = columns_of(&legacy_keys, parts.len());
                let ta = columns_of(&translated, parts.len());
                let (lp, tp) = (array_params(&la), array_params(&ta));
                let (l, t) = tokio::join!(ctx.legacy.query(&lq, &lp), ctx.target.query(&tq, &tp));
                (
                    l.map_err(legacy_err(plan))?,
                    t.map_err(target_err(plan))?,
                    translated.into_iter().map(RowKey::Parts).collect(),
                )
            }
        };
        let legacy: HashMap<RowKey, LegacyRow> = legacy_rows
            .iter()
            .map(|r| {
                let l = legacy_row(plan, r, true);
                (l.key.clone(), l)
            })
            .collect();
        let target: HashMap<RowKey, TargetRow> = target_rows
            .iter()
            .map(|r| {
                let t = target_row(plan, r, true);
                (t.key.clone(), t)
            })
            .collect();
        for (key, target_key) in batch.iter().zip(&translated) {
            let (l, t) = (legacy.get(key), target.get(target_key));
            out.push(Rechecked {
                seen: Presence::of(l, t),
                finding: classify(plan, &mut uuids, l, t).map(|f| {
                    let label = finding_label(plan, key, &f);
                    (f, label)
                }),
            });
        }
    }
    Ok(out)
}

/// Target rows whose foreign key points at no row, plus live rows whose parent is
/// soft-deleted (legacy would have cascaded); with the first few named.
pub(super) async fn check_foreign_keys(
    ctx: &Ctx<'_>,
    plan: &TablePlan,
    fks: &[ForeignKey],
) -> Result<(u64, Vec<String>), Error> {
    let (mut total, mut labels) = (0u64, Vec::new());
    for fk in fks {
        let row = ctx
            .target
            .query_one(&plan.fk_sql(fk, false), &[])
            .await
            .map_err(target_err(plan))?;
        let n = row.get::<_, i64>(0) as u64 + row.get::<_, i64>(1) as u64;
        if n == 0 {
            continue;
        }
        total += n;
        for r in ctx
            .target
            .query(&plan.fk_sql(fk, true), &[&FK_SAMPLES])
            .await
            .map_err(target_err(plan))?
        {
            let (why, who): (String, String) = (r.get(0), r.get(1));
            labels.push(format!("dangling {} {who} ({why})", fk.column));
        }
    }
    Ok((total, labels))
}
