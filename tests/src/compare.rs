//! An independent comparison of the legacy and the new store, for tests and the demo.
//!
//! It does not use rekey's mapping code: it reads both databases with plain SQL,
//! transforms each legacy row the documented way (key → F(entity, key) and `legacy_id`,
//! reference → F(parent, value), derived column → F(namespace, value), everything else as
//! its text), and compares with the target's live rows. It also checks that the target's
//! soft-deleted rows are exactly the rows gone from legacy.

use std::collections::{BTreeMap, BTreeSet};

use rekey::config::{Config, TableConfig};
use rekey::rekey::Rekeyer;
use tokio_postgres::Client;

/// The differences found in one table.
#[derive(Debug, Default, Clone)]
pub struct TableDiff {
    pub table: String,
    pub legacy_rows: usize,
    pub target_live_rows: usize,
    pub target_deleted_rows: usize,
    /// Expected rows missing from the target (or different there), first few.
    pub missing: Vec<String>,
    /// Target live rows that legacy does not have (or has differently), first few.
    pub unexpected: Vec<String>,
    /// Soft-deleted keys that still exist in legacy.
    pub wrongly_deleted: Vec<String>,
}

impl TableDiff {
    pub fn is_equal(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrongly_deleted.is_empty()
    }
}

/// Compares every configured table; returns one entry per table.
pub async fn compare(
    legacy: &Client,
    target: &Client,
    config: &Config,
    secret: &str,
) -> Vec<TableDiff> {
    let rk = Rekeyer::new(secret.as_bytes());
    let mut out = Vec::new();
    for t in &config.tables {
        out.push(compare_table(legacy, target, t, &rk).await);
    }
    out
}

/// Panics with a readable report unless every table matches.
pub fn assert_equal(diffs: &[TableDiff]) {
    let bad: Vec<&TableDiff> = diffs.iter().filter(|d| !d.is_equal()).collect();
    assert!(bad.is_empty(), "target differs from legacy:\n{bad:#?}");
}

async fn columns(client: &Client, table: &str) -> Vec<String> {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    client
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn rows(
    client: &Client,
    table: &str,
    cols: &[String],
    filter: &str,
) -> Vec<Vec<Option<String>>> {
    let select: Vec<String> = cols.iter().map(|c| format!("\"{c}\"::text")).collect();
    let sql = format!("SELECT {} FROM {table} {filter}", select.join(", "));
    client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            (0..cols.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

async fn compare_table(
    legacy: &Client,
    target: &Client,
    t: &TableConfig,
    rk: &Rekeyer,
) -> TableDiff {
    let source = t.source_name();
    let target_name = t.target_name();
    let legacy_cols = columns(legacy, &source).await;
    let entity = t.entity();

    // Expected target image: column name → value, per legacy row.
    let mut expected_cols: Vec<String> = Vec::new();
    for c in &legacy_cols {
        if Some(c) == t.id.as_ref() {
            expected_cols.push("id".into());
            expected_cols.push("legacy_id".into());
        } else {
            expected_cols.push(c.clone());
        }
    }
    expected_cols.extend(t.derive.iter().map(|d| d.column.clone()));
    let legacy_rows = rows(legacy, &source, &legacy_cols, "").await;
    let mut expected: BTreeSet<Vec<Option<String>>> = BTreeSet::new();
    let mut legacy_keys: BTreeSet<String> = BTreeSet::new();
    for row in &legacy_rows {
        let value = |name: &str| row[legacy_cols.iter().position(|c| c == name).unwrap()].clone();
        let mut image = Vec::new();
        for (c, v) in legacy_cols.iter().zip(row) {
            if Some(c) == t.id.as_ref() {
                let key = v.clone().expect("key is not null");
                image.push(Some(rk.uuid(entity, &key).to_string()));
                image.push(Some(key));
            } else if let Some(parent) = t.references.get(c) {
                image.push(v.as_ref().map(|k| rk.uuid(parent, k).to_string()));
            } else {
                image.push(v.clone());
            }
        }
        for d in &t.derive {
            image.push(value(&d.from).map(|k| rk.uuid(&d.entity, &k).to_string()));
        }
        if let Some(id) = &t.id {
            legacy_keys.insert(rk.uuid(entity, &value(id).unwrap()).to_string());
        }
        expected.insert(image);
    }

    let target_cols = columns(target, &target_name).await;
    let soft = target_cols.iter().any(|c| c == "deleted_at");
    let live_filter = if soft { "WHERE deleted_at IS NULL" } else { "" };
    let actual: BTreeSet<Vec<Option<String>>> =
        rows(target, &target_name, &expected_cols, live_filter)
            .await
            .into_iter()
            .collect();
    let mut diff = TableDiff {
        table: target_name.clone(),
        legacy_rows: legacy_rows.len(),
        target_live_rows: actual.len(),
        ..Default::default()
    };
    let show = |r: &Vec<Option<String>>| {
        let mut s: String = r
            .iter()
            .map(|v| v.as_deref().unwrap_or("NULL"))
            .collect::<Vec<_>>()
            .join(" | ");
        if s.len() > 240 {
            let mut cut = 240;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    };
    diff.missing = expected.difference(&actual).take(5).map(show).collect();
    diff.unexpected = actual.difference(&expected).take(5).map(show).collect();
    if soft && t.id.is_some() {
        let deleted: Vec<String> = target
            .query(
                &format!("SELECT id::text FROM {target_name} WHERE deleted_at IS NOT NULL"),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        diff.target_deleted_rows = deleted.len();
        diff.wrongly_deleted = deleted
            .into_iter()
            .filter(|id| legacy_keys.contains(id))
            .take(5)
            .collect();
    }
    diff
}

/// Row counts per table as `name: legacy/target` for reports.
pub fn summary(diffs: &[TableDiff]) -> BTreeMap<String, (usize, usize, usize)> {
    diffs
        .iter()
        .map(|d| {
            (
                d.table.clone(),
                (d.legacy_rows, d.target_live_rows, d.target_deleted_rows),
            )
        })
        .collect()
}
