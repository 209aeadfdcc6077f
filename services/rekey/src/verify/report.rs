//! The verification report: per table, row counts, difference counts and the first
//! differing keys; rendered as a text table or as JSON (hand-written, no dependency).

use std::fmt;
use std::time::Duration;

/// The outcome of `rekeyctl verify`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub tables: Vec<TableReport>,
    /// Wall time of the whole verification.
    pub elapsed: Duration,
}

/// One table; only differences that persisted through the re-check are counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableReport {
    /// The target `schema.name`.
    pub table: String,
    pub legacy_rows: u64,
    pub target_live_rows: u64,
    pub target_deleted_rows: u64,
    /// Legacy rows without a target row.
    pub missing: u64,
    /// Live target rows whose legacy row does not exist.
    pub extra: u64,
    /// Rows whose content, key or foreign keys differ.
    pub mismatched: u64,
    /// Legacy rows whose target row is soft-deleted.
    pub wrongly_deleted: u64,
    /// Target rows whose foreign key points at no row, or (live rows) at a soft-deleted one.
    pub dangling_fks: u64,
    /// The first few differences, e.g. `missing legacy_id=42`.
    pub first_differences: Vec<String>,
}

impl TableReport {
    pub fn differences(&self) -> u64 {
        self.missing + self.extra + self.mismatched + self.wrongly_deleted + self.dangling_fks
    }

    pub fn is_clean(&self) -> bool {
        self.differences() == 0
    }
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(TableReport::is_clean)
    }

    /// Legacy rows compared, all tables.
    pub fn legacy_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.legacy_rows).sum()
    }

    /// Legacy rows compared per second of wall time.
    pub fn rows_per_sec(&self) -> f64 {
        self.legacy_rows() as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    pub fn to_json(&self) -> String {
        let tables: Vec<String> = self
            .tables
            .iter()
            .map(|t| {
                let diffs: Vec<String> = t.first_differences.iter().map(|d| json_str(d)).collect();
                format!(
                    "{{\"table\":{},\"clean\":{},\"legacy_rows\":{},\"target_live_rows\":{},\"target_deleted_rows\":{},\"missing\":{},\"extra\":{},\"mismatched\":{},\"wrongly_deleted\":{},\"dangling_fks\":{},\"first_differences\":[{}]}}",
                    json_str(&t.table),
                    t.is_clean(),
                    t.legacy_rows,
                    t.target_live_rows,
                    t.target_deleted_rows,
                    t.missing,
                    t.extra,
                    t.mismatched,
                    t.wrongly_deleted,
                    t.dangling_fks,
                    diffs.join(",")
                )
            })
            .collect();
        format!(
            "{{\"clean\":{},\"legacy_rows\":{},\"elapsed_secs\":{:.3},\"rows_per_sec\":{:.0},\"tables\":[{}]}}",
            self.is_clean(),
            self.legacy_rows(),
            self.elapsed.as_secs_f64(),
            self.rows_per_sec(),
            tables.join(",")
        )
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const HEADERS: [&str; 9] = [
    "table",
    "legacy",
    "live",
    "deleted",
    "missing",
    "extra",
    "mismatch",
    "wr_deleted",
    "dangling",
];

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<[String; 9]> = self
            .tables
            .iter()
            .map(|t| {
                [
                    t.table.clone(),
                    t.legacy_rows.to_string(),
                    t.target_live_rows.to_string(),
                    t.target_deleted_rows.to_string(),
                    t.missing.to_string(),
                    t.extra.to_string(),
                    t.mismatched.to_string(),
                    t.wrongly_deleted.to_string(),
                    t.dangling_fks.to_string(),
                ]
            })
            .collect();
        let mut widths = HEADERS.map(str::len);
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[&str]| -> fmt::Result {
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i == 0 {
                    write!(f, "{cell:<w$}")?;
                } else {
                    write!(f, "  {cell:>w$}")?;
                }
            }
            writeln!(f)
        };
        line(f, &HEADERS)?;
        for r in &rows {
            line(f, &r.each_ref().map(String::as_str))?;
        }
        for t in self
            .tables
            .iter()
            .filter(|t| !t.first_differences.is_empty())
        {
            writeln!(f, "{}:", t.table)?;
            for d in &t.first_differences {
                writeln!(f, "  {d}")?;
            }
        }
        let differing = self.tables.iter().filter(|t| !t.is_clean()).count();
        let secs = self.elapsed.as_secs_f64();
        if differing == 0 {
            writeln!(
                f,
                "verify: clean: {} legacy rows in {} tables match the target ({secs:.1}s, {:.0} rows/s)",
                self.legacy_rows(),
                self.tables.len(),
                self.rows_per_sec()
            )
        } else {
            writeln!(
                f,
                "verify: {differing} of {} tables differ ({secs:.1}s, {:.0} rows/s)",
                self.tables.len(),
                self.rows_per_sec()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            tables: vec![
                TableReport {
                    table: "public.prompt_labs".into(),
                    legacy_rows: 120,
                    target_live_rows: 120,
                    target_deleted_rows: 3,
                    ..Default::default()
                },
                TableReport {
                    table: "public.prompt_templates".into(),
                    legacy_rows: 900,
                    target_live_rows: 899,
                    missing: 1,
                    mismatched: 1,
                    first_differences: vec![
                        "missing legacy_id=42".into(),
                        "mismatch legacy_id=7 column \"name\"".into(),
                    ],
                    ..Default::default()
                },
            ],
            elapsed: Duration::from_millis(1500),
        }
    }

    #[test]
    fn clean_only_without_any_difference() {
        let mut r = report();
        assert!(!r.is_clean());
        assert!(r.tables[0].is_clean());
        r.tables[1] = TableReport {
            table: "x".into(),
            dangling_fks: 1,
            ..Default::default()
        };
        assert!(!r.is_clean());
        r.tables.pop();
        assert!(r.is_clean());
    }

    #[test]
    fn json_has_every_field_and_escapes_strings() {
        let j = report().to_json();
        assert!(
            j.starts_with("{\"clean\":false,\"legacy_rows\":1020,"),
            "{j}"
        );
        assert!(j.contains("\"table\":\"public.prompt_labs\",\"clean\":true,\"legacy_rows\":120,\"target_live_rows\":120,\"target_deleted_rows\":3,\"missing\":0,\"extra\":0,\"mismatched\":0,\"wrongly_deleted\":0,\"dangling_fks\":0,\"first_differences\":[]"), "{j}");
        assert!(j.contains(r#""first_differences":["missing legacy_id=42","mismatch legacy_id=7 column \"name\""]"#), "{j}");
        assert_eq!(json_str("a\u{1}\n"), "\"a\\u0001\\n\"");
    }

    #[test]
    fn text_is_an_aligned_table_with_the_differences_below() {
        let text = report().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("table  ") && lines[0].ends_with("dangling"),
            "{text}"
        );
        assert_eq!(lines[0].len(), lines[1].len(), "{text}");
        assert!(lines[2].starts_with("public.prompt_templates"), "{text}");
        assert_eq!(lines[3], "public.prompt_templates:");
        assert_eq!(lines[4], "  missing legacy_id=42");
        assert!(
            text.ends_with("verify: 1 of 2 tables differ (1.5s, 680 rows/s)\n"),
            "{text}"
        );
    }
}
