//! The pure part of verification: what a row should look like in the target, how a pair
//! of rows is classified, and the merge of two key-ordered streams. No I/O here.
//!
//! ```text
//! legacy  ORDER BY id         3   5   7       9
//! target  ORDER BY legacy_id  3   5'  7†  8
//!                             ok  mismatch    wrongly_deleted (7† soft-deleted)
//!                                             extra (8 live, gone from legacy)
//!                                             missing (9)
//! ```
//!
//! A soft-deleted target row without a legacy row is what a delete should leave: fine.

use std::collections::{HashMap, VecDeque};

use crate::rekey::Rekeyer;

use super::plan::{KeyPlan, TablePlan};

/// The key a finding is about, in legacy terms: the integer key, or the composite key's
/// parts as text (legacy values).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowKey {
    Id(i64),
    Parts(Vec<String>),
}

impl RowKey {
    fn id(&self) -> i64 {
        match self {
            RowKey::Id(k) => *k,
            RowKey::Parts(_) => unreachable!("merged streams have integer keys"),
        }
    }
}

/// A legacy row as verification reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyRow {
    pub key: RowKey,
    /// Sources of the rekeyed columns, in [`TablePlan::rekeyed`] order.
    pub rekeyed: Vec<Option<String>>,
    /// md5 of the copied columns.
    pub digest: String,
    /// The copied columns as text, when read for a re-check.
    pub values: Option<Vec<Option<String>>>,
}

/// A target row as verification reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRow {
    /// `legacy_id`, or the target's composite key parts (rekeyed where references).
    pub key: RowKey,
    /// The target `id` (tables with an integer key).
    pub id: Option<String>,
    pub deleted: bool,
    pub rekeyed: Vec<Option<String>>,
    pub digest: String,
    pub values: Option<Vec<Option<String>>>,
}

/// How a key differs between the stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A legacy row without a target row.
    Missing,
    /// A legacy row whose target row is soft-deleted.
    WronglyDeleted,
    /// Both live, different: the differing target columns (key and foreign-key columns by
    /// name; copied columns by name when their values were read, else `row content`).
    Mismatch(Vec<String>),
    /// A live target row whose legacy key does not exist in legacy; its target id.
    Extra(Option<String>),
}

/// What a mismatch of the copied columns is called when only their digests were read.
pub const CONTENT: &str = "row content";

/// Parent UUIDs remembered per entity before the memo is cleared (bounds memory).
const MEMO_MAX: usize = 100_000;

/// F, as text, with a bounded memo for the values that repeat: many children share a
/// parent, so a foreign key is usually computed once per parent, not once per row.
pub struct Uuids<'a> {
    rk: &'a Rekeyer,
    memo: HashMap<String, HashMap<String, String>>,
}

impl<'a> Uuids<'a> {
    pub fn new(rk: &'a Rekeyer) -> Self {
        Self {
            rk,
            memo: HashMap::new(),
        }
    }

    /// F(entity, key) of a value that may repeat (a reference, a derived column).
    pub fn shared(&mut self, entity: &str, key: &str) -> &str {
        if !self.memo.contains_key(entity) {
            self.memo.insert(entity.to_string(), HashMap::new());
        }
        let memo = self.memo.get_mut(entity).expect("inserted");
        if memo.len() >= MEMO_MAX && !memo.contains_key(key) {
            memo.clear();
        }
        if !memo.contains_key(key) {
            memo.insert(key.to_string(), self.rk.uuid(entity, key).to_string());
        }
        &memo[key]
    }

    /// F(entity, key) of a value seen once (a row's own key).
    pub fn once(&self, entity: &str, key: &str) -> String {
        self.rk.uuid(entity, key).to_string()
    }
}

/// The target key parts of a composite legacy key: references rekeyed, the rest as is.
pub fn translate(plan: &TablePlan, uuids: &mut Uuids, legacy_parts: &[String]) -> Vec<String> {
    match &plan.key {
        KeyPlan::Composite(parts) => parts
            .iter()
            .zip(legacy_parts)
            .map(|(p, v)| match &p.entity {
                Some(e) => uuids.shared(e, v).to_string(),
                None => v.clone(),
            })
            .collect(),
        KeyPlan::Id { .. } => legacy_parts.to_vec(),
    }
}

/// Classifies the rows of one key; `None` when they agree (or both are gone).
pub fn classify(
    plan: &TablePlan,
    uuids: &mut Uuids,
    legacy: Option<&LegacyRow>,
    target: Option<&TargetRow>,
) -> Option<Finding> {
    let (l, t) = match (legacy, target) {
        (Some(l), Some(t)) => (l, t),
        (Some(_), None) => return Some(Finding::Missing),
        (None, Some(t)) if !t.deleted => return Some(Finding::Extra(t.id.clone())),
        (None, _) => return None,
    };
    if t.deleted {
        return Some(Finding::WronglyDeleted);
    }
    let mut columns = Vec::new();
    if let RowKey::Id(key) = &l.key {
        let expected = uuids.once(&plan.entity, &key.to_string());
        if t.id.as_deref() != Some(expected.as_str()) {
            columns.push("id".to_string());
        }
    }
    for (i, r) in plan.rekeyed.iter().enumerate() {
        let expected = l
            .rekeyed
            .get(i)
            .and_then(Option::as_deref)
            .map(|v| uuids.shared(&r.entity, v));
        if t.rekeyed.get(i).and_then(Option::as_deref) != expected {
            columns.push(r.target.clone());
        }
    }
    match (&l.values, &t.values) {
        (Some(lv), Some(tv)) => {
            columns.extend(
                plan.copied
                    .iter()
                    .zip(lv.iter().zip(tv))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(name, _)| name.clone()),
            );
            if lv == tv && l.digest != t.digest {
                columns.push(CONTENT.into());
            }
        }
        _ if l.digest != t.digest => columns.push(CONTENT.into()),
        _ => {}
    }
    (!columns.is_empty()).then_some(Finding::Mismatch(columns))
}

/// One side of a merge: buffered rows in key order, and whether the stream has ended.
#[derive(Debug)]
pub struct Stream<R> {
    pub rows: VecDeque<R>,
    pub exhausted: bool,
}

impl<R> Default for Stream<R> {
    fn default() -> Self {
        Self {
            rows: VecDeque::new(),
            exhausted: false,
        }
    }
}

impl<R> Stream<R> {
    /// The buffer is empty and the stream may have more: fetch a page.
    pub fn needs_page(&self) -> bool {
        self.rows.is_empty() && !self.exhausted
    }

    /// Adds a page; a page shorter than `limit` ends the stream.
    pub fn push_page(&mut self, page: Vec<R>, limit: usize) {
        self.exhausted = page.len() < limit;
        self.rows.extend(page);
    }

    pub fn done(&self) -> bool {
        self.rows.is_empty() && self.exhausted
    }
}

/// The next key of a merge of two streams ordered by integer key: the rows of the
/// smaller key (both, when the keys are equal). `None` when a stream needs a page first
/// (see [`Stream::needs_page`]) or both are done.
pub fn pop_pair(
    legacy: &mut Stream<LegacyRow>,
    target: &mut Stream<TargetRow>,
) -> Option<(Option<LegacyRow>, Option<TargetRow>)> {
    if legacy.needs_page() || target.needs_page() {
        return None;
    }
    let l = legacy.rows.front().map(|r| r.key.id());
    let t = target.rows.front().map(|r| r.key.id());
    match (l, t) {
        (None, None) => None,
        (Some(_), None) => Some((legacy.rows.pop_front(), None)),
        (None, Some(_)) => Some((None, target.rows.pop_front())),
        (Some(a), Some(b)) if a < b => Some((legacy.rows.pop_front(), None)),
        (Some(a), Some(b)) if a > b => Some((None, target.rows.pop_front())),
        _ => Some((legacy.rows.pop_front(), target.rows.pop_front())),
    }
}

/// Difference counts of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub missing: u64,
    pub extra: u64,
    pub mismatched: u64,
    pub wrongly_deleted: u64,
}

impl Counts {
    pub fn add(&mut self, f: &Finding) {
        match f {
            Finding::Missing => self.missing += 1,
            Finding::Extra(_) => self.extra += 1,
            Finding::Mismatch(_) => self.mismatched += 1,
            Finding::WronglyDeleted => self.wrongly_deleted += 1,
        }
    }

    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            missing: self.missing + o.missing,
            extra: self.extra + o.extra,
            mismatched: self.mismatched + o.mismatched,
            wrongly_deleted: self.wrongly_deleted + o.wrongly_deleted,
        }
    }

    pub fn total(&self) -> u64 {
        self.missing + self.extra + self.mismatched + self.wrongly_deleted
    }
}

/// Which rows of a key exist: in legacy, and in the target (`Some(deleted)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    pub legacy: bool,
    pub target: Option<bool>,
}

impl Presence {
    pub fn of(legacy: Option<&LegacyRow>, target: Option<&TargetRow>) -> Self {
        Self {
            legacy: legacy.is_some(),
            target: target.map(|t| t.deleted),
        }
    }

    /// `(legacy rows, live target rows, soft-deleted target rows)` this key counts for.
    pub fn counts(&self) -> [u64; 3] {
        [
            u64::from(self.legacy),
            u64::from(self.target == Some(false)),
            u64::from(self.target == Some(true)),
        ]
    }
}

/// A key that differed in the first pass, and what was there then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    pub key: RowKey,
    pub seen: Presence,
}

/// The findings of a first pass: the first `limit` keys to re-check, and counts of the
/// ones past the limit, which are reported as found.
#[derive(Debug, Default)]
pub struct Tally {
    pub suspects: Vec<Suspect>,
    pub overflow: Counts,
    /// Findings that cannot be re-checked by key, with their labels.
    pub fixed: Counts,
    pub fixed_labels: Vec<String>,
    limit: usize,
}

impl Tally {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Default::default()
        }
    }

    pub fn record(&mut self, key: RowKey, seen: Presence, f: &Finding) {
        if self.suspects.len() < self.limit {
            self.suspects.push(Suspect { key, seen });
        } else {
            self.overflow.add(f);
        }
    }

    pub fn record_fixed(&mut self, label: String, f: &Finding) {
        self.fixed.add(f);
        self.fixed_labels.push(label);
    }

    pub fn is_empty(&self) -> bool {
        self.suspects.is_empty() && self.overflow.total() == 0 && self.fixed.total() == 0
    }
}

/// `legacy_id=42`, or `prompt_flow_id=7 position=3` (legacy values).
pub fn key_label(plan: &TablePlan, key: &RowKey) -> String {
    match key {
        RowKey::Id(k) => format!("legacy_id={k}"),
        RowKey::Parts(parts) => plan
            .key_names()
            .iter()
            .zip(parts)
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// A finding as the report lists it: `missing legacy_id=42`,
/// `mismatch legacy_id=7 column prompt_lab_id`, `extra id=<uuid> legacy_id=9`.
pub fn finding_label(plan: &TablePlan, key: &RowKey, f: &Finding) -> String {
    let k = key_label(plan, key);
    match f {
        Finding::Missing => format!("missing {k}"),
        Finding::WronglyDeleted => format!("wrongly_deleted {k}"),
        Finding::Mismatch(cols) if cols.len() == 1 => format!("mismatch {k} column {}", cols[0]),
        Finding::Mismatch(cols) => format!("mismatch {k} columns {}", cols.join(", ")),
        Finding::Extra(Some(id)) => format!("extra id={id} {k}"),
        Finding::Extra(None) => format!("extra {k}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::tests::{libraries_plan, steps_plan};
    use super::*;

    fn rk() -> Rekeyer {
        Rekeyer::new(b"0123456789abcdef0123")
    }

    fn classify(
        p: &TablePlan,
        rk: &Rekeyer,
        l: Option<&LegacyRow>,
        t: Option<&TargetRow>,
    ) -> Option<Finding> {
        super::classify(p, &mut Uuids::new(rk), l, t)
    }

    fn legacy(key: i64, lab: Option<&str>, digest: &str) -> LegacyRow {
        LegacyRow {
            key: RowKey::Id(key),
            rekeyed: vec![lab.map(String::from)],
            digest: digest.into(),
            values: None,
        }
    }

    /// The target row rekey should have written for `legacy(key, lab, digest)`.
    fn target(key: i64, lab: Option<&str>, digest: &str) -> TargetRow {
        let rk = rk();
        TargetRow {
            key: RowKey::Id(key),
            id: Some(rk.uuid("prompt_libraries", &key.to_string()).to_string()),
            deleted: false,
            rekeyed: vec![lab.map(|l| rk.uuid("prompt_labs", l).to_string())],
            digest: digest.into(),
            values: None,
        }
    }

    #[test]
    fn a_faithful_copy_agrees() {
        let p = libraries_plan();
        let l = legacy(7, Some("3"), "d1");
        assert_eq!(
            classify(&p, &rk(), Some(&l), Some(&target(7, Some("3"), "d1"))),
            None
        );
        // NULL stays NULL.
        let l = legacy(7, None, "d1");
        assert_eq!(
            classify(&p, &rk(), Some(&l), Some(&target(7, None, "d1"))),
            None
        );
    }

    #[test]
    fn each_kind_of_difference_is_classified() {
        let (p, rk) = (libraries_plan(), rk());
        let l = legacy(7, Some("3"), "d1");
        assert_eq!(classify(&p, &rk, Some(&l), None), Some(Finding::Missing));
        let mut t = target(7, Some("3"), "d1");
        t.deleted = true;
        assert_eq!(
            classify(&p, &rk, Some(&l), Some(&t)),
            Some(Finding::WronglyDeleted)
        );
        // A soft-deleted row that is gone from legacy is what a delete leaves.
        assert_eq!(classify(&p, &rk, None, Some(&t)), None);
        let t = target(8, Some("3"), "d1");
        assert_eq!(
            classify(&p, &rk, None, Some(&t)),
            Some(Finding::Extra(t.id.clone()))
        );
        // Wrong parent, wrong content, wrong id.
        let t = target(7, Some("4"), "d2");
        assert_eq!(
            classify(&p, &rk, Some(&l), Some(&t)),
            Some(Finding::Mismatch(vec![
                "prompt_lab_id".into(),
                CONTENT.into()
            ]))
        );
        let mut t = target(7, Some("3"), "d1");
        t.id = Some(rk.uuid("prompt_libraries", "8").to_string());
        assert_eq!(
            classify(&p, &rk, Some(&l), Some(&t)),
            Some(Finding::Mismatch(vec!["id".into()]))
        );
        let t = target(7, None, "d1");
        assert_eq!(
            classify(&p, &rk, Some(&l), Some(&t)),
            Some(Finding::Mismatch(vec!["prompt_lab_id".into()]))
        );
    }

    #[test]
    fn with_values_a_content_mismatch_names_its_columns() {
        let (p, rk) = (libraries_plan(), rk());
        let mut l = legacy(7, Some("3"), "d1");
        l.values = Some(vec![Some("lib".into()), None]);
        let mut t = target(7, Some("3"), "d2");
        t.values = Some(vec![Some("lib (changed)".into()), None]);
        assert_eq!(
            classify(&p, &rk, Some(&l), Some(&t)),
            Some(Finding::Mismatch(vec!["name".into()]))
        );
        assert_eq!(
            finding_label(&p, &l.key, &Finding::Mismatch(vec!["name".into()])),
            "mismatch legacy_id=7 column name"
        );
    }

    #[test]
    fn composite_keys_translate_references_only() {
        let (p, rk) = (steps_plan(), rk());
        let parts = vec!["20".to_string(), "3".to_string()];
        assert_eq!(
            translate(&p, &mut Uuids::new(&rk), &parts),
            [rk.uuid("prompt_flows", "20").to_string(), "3".into()]
        );
        assert_eq!(
            finding_label(&p, &RowKey::Parts(parts), &Finding::Missing),
            "missing prompt_flow_id=20 position=3"
        );
    }

    #[test]
    fn merge_pairs_equal_keys_and_waits_for_pages() {
        let mut l = Stream::default();
        let mut t = Stream::default();
        assert_eq!(pop_pair(&mut l, &mut t), None, "both need a page");
        l.push_page(vec![legacy(1, None, "a"), legacy(3, None, "a")], 2);
        assert_eq!(pop_pair(&mut l, &mut t), None, "the target needs a page");
        t.push_page(vec![target(3, None, "a"), target(4, None, "a")], 2);
        let (a, b) = pop_pair(&mut l, &mut t).unwrap();
        assert_eq!((a.unwrap().key, b), (RowKey::Id(1), None));
        let (a, b) = pop_pair(&mut l, &mut t).unwrap();
        assert_eq!(
            (a.unwrap().key, b.unwrap().key),
            (RowKey::Id(3), RowKey::Id(3))
        );
        // The legacy page is used up but the stream goes on: wait, even though the
        // target has row 4 buffered (legacy may still have a row 4).
        assert!(l.needs_page());
        assert_eq!(pop_pair(&mut l, &mut t), None);
        l.push_page(vec![legacy(5, None, "a")], 2);
        assert!(l.exhausted);
        let (a, b) = pop_pair(&mut l, &mut t).unwrap();
        assert_eq!((a, b.unwrap().key), (None, RowKey::Id(4)));
        t.push_page(vec![], 2);
        let (a, b) = pop_pair(&mut l, &mut t).unwrap();
        assert_eq!((a.unwrap().key, b), (RowKey::Id(5), None));
        assert_eq!(pop_pair(&mut l, &mut t), None);
        assert!(l.done() && t.done());
    }

    #[test]
    fn the_memo_gives_what_f_gives_and_stays_bounded() {
        let rk = rk();
        let mut u = Uuids::new(&rk);
        for k in 0..(MEMO_MAX + 10) {
            let key = (k % (MEMO_MAX + 5)).to_string();
            assert_eq!(
                u.shared("prompt_labs", &key),
                rk.uuid("prompt_labs", &key).to_string()
            );
        }
        assert!(u.memo["prompt_labs"].len() <= MEMO_MAX);
        assert_eq!(
            u.once("prompt_labs", "1"),
            rk.uuid("prompt_labs", "1").to_string()
        );
    }

    #[test]
    fn the_tally_keeps_a_bounded_list_and_counts_the_rest() {
        let mut tally = Tally::new(2);
        let seen = Presence {
            legacy: true,
            target: None,
        };
        for k in 0..5 {
            tally.record(RowKey::Id(k), seen, &Finding::Missing);
        }
        let keys: Vec<_> = tally.suspects.iter().map(|s| s.key.clone()).collect();
        assert_eq!(keys, [RowKey::Id(0), RowKey::Id(1)]);
        assert_eq!(tally.overflow.missing, 3);
        assert!(!tally.is_empty());
    }
}
