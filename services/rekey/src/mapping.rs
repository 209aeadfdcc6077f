//! From a legacy row to the target row image: the rekeying of keys and foreign keys.
//!
//! A [`TableMap`] is built from the stream's Relation message (the columns as the
//! walsender sends them) and the table's config. For each legacy row it produces the
//! target columns in a fixed order:
//!
//! - the integer key column `id` → `id` = F(entity, key) and `legacy_id` = the key;
//! - a reference column → the parent entity's UUID for its value (NULL stays NULL);
//! - a derived column (e.g. `organization_id` from `tenant_id`) → F(namespace, value);
//! - every other column → its value unchanged (text representation, lossless).
//!
//! Unchanged-TOAST markers pass through as [`Value::Unchanged`]: the writer keeps what the
//! target has, never a NULL or a placeholder.

use std::borrow::Cow;
use std::ops::Range;

use crate::config::TableConfig;
use crate::copy_text;
use crate::error::Error;
use crate::event::{self, value::Kind};
use crate::pgoutput::{self, Relation, Tuple};
use crate::rekey::Rekeyer;

/// The target column that keeps a row's legacy integer key.
pub const LEGACY_ID: &str = "legacy_id";

/// Where a target column's value comes from.
#[derive(Debug, Clone)]
enum Source {
    /// The rekeyed integer key.
    Id,
    /// The legacy key itself.
    LegacyId(usize),
    /// A value rekeyed into `entity` (a reference or a derived column).
    Rekeyed { column: usize, entity: String },
    /// Copied as is.
    Plain(usize),
}

#[derive(Debug, Clone)]
struct TargetColumn {
    name: String,
    type_name: String,
    is_key: bool,
    source: Source,
}

/// The mapping of one legacy relation, valid until the next Relation message for it.
#[derive(Debug, Clone)]
pub struct TableMap {
    pub source_table: String,
    pub target_table: String,
    pub entity: String,
    columns: Vec<TargetColumn>,
    /// Legacy key columns (indices into the relation's columns), in key order.
    key_columns: Vec<usize>,
    has_id: bool,
    /// [`Self::descriptor`], built once: transactions refer to it without copying it.
    shared: std::sync::Arc<event::Table>,
}

/// The target image of one row.
pub struct Image {
    pub id: Option<uuid::Uuid>,
    pub legacy_key: String,
    pub values: Vec<event::Value>,
}

impl TableMap {
    /// `type_of(column)` gives the legacy type name (informational, carried in events).
    pub fn new(
        rel: &Relation,
        table: &TableConfig,
        type_of: impl Fn(&str) -> String,
    ) -> Result<Self, Error> {
        let index = |name: &str| -> Result<usize, Error> {
            rel.columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| {
                    Error::Setup(format!(
                        "legacy table {}.{} has no column {name:?} named in its [[tables]] config",
                        rel.namespace, rel.name
                    ))
                })
        };
        let entity = table.entity().to_string();
        let key_columns: Vec<usize> = rel
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key)
            .map(|(i, _)| i)
            .collect();
        if key_columns.is_empty() {
            return Err(Error::Setup(format!(
                "legacy table {}.{} has no primary key (replica identity): add one, or remove it from [[tables]]",
                rel.namespace, rel.name
            )));
        }
        let id_index = table.id.as_deref().map(index).transpose()?;
        if let Some(i) = id_index {
            if key_columns != [i] {
                return Err(Error::Setup(format!(
                    "legacy table {}.{}: `id = {:?}` must be its whole primary key",
                    rel.namespace, rel.name, rel.columns[i].name
                )));
            }
        }
        let mut columns = Vec::with_capacity(rel.columns.len() + 1 + table.derive.len());
        for (i, c) in rel.columns.iter().enumerate() {
            if Some(i) == id_index {
                columns.push(TargetColumn {
                    name: "id".into(),
                    type_name: "uuid".into(),
                    is_key: true,
                    source: Source::Id,
                });
                columns.push(TargetColumn {
                    name: LEGACY_ID.into(),
                    type_name: type_of(&c.name),
                    is_key: false,
                    source: Source::LegacyId(i),
                });
            } else if let Some(parent) = table.references.get(&c.name) {
                columns.push(TargetColumn {
                    name: c.name.clone(),
                    type_name: "uuid".into(),
                    is_key: id_index.is_none() && c.is_key,
                    source: Source::Rekeyed {
                        column: i,
                        entity: parent.clone(),
                    },
                });
            } else {
                columns.push(TargetColumn {
                    name: c.name.clone(),
                    type_name: type_of(&c.name),
                    is_key: id_index.is_none() && c.is_key,
                    source: Source::Plain(i),
                });
            }
        }
        for name in table.references.keys() {
            index(name)?;
        }
        for d in &table.derive {
            let from = index(&d.from)?;
            columns.push(TargetColumn {
                name: d.column.clone(),
                type_name: "uuid".into(),
                is_key: false,
                source: Source::Rekeyed {
                    column: from,
                    entity: d.entity.clone(),
                },
            });
        }
        let mut map = Self {
            source_table: format!("{}.{}", rel.namespace, rel.name),
            target_table: table.target_name(),
            entity,
            columns,
            key_columns,
            has_id: id_index.is_some(),
            shared: Default::default(),
        };
        map.shared = std::sync::Arc::new(map.descriptor());
        Ok(map)
    }

    /// The table descriptor carried in events, shared (see [`Self::descriptor`]).
    pub fn shared_descriptor(&self) -> &std::sync::Arc<event::Table> {
        &self.shared
    }

    /// The table descriptor carried in events.
    pub fn descriptor(&self) -> event::Table {
        event::Table {
            entity: self.entity.clone(),
            source_table: self.source_table.clone(),
            target_table: self.target_table.clone(),
            columns: self
                .columns
                .iter()
                .map(|c| event::Column {
                    name: c.name.clone(),
                    type_name: c.type_name.clone(),
                    is_key: c.is_key,
                })
                .collect(),
        }
    }

    /// The legacy key of a tuple as text: `"42"`, or `"7/3"` for composite keys.
    pub fn legacy_key(&self, tuple: &Tuple) -> Result<String, Error> {
        let mut key = String::new();
        for (n, &i) in self.key_columns.iter().enumerate() {
            if n > 0 {
                key.push('/');
            }
            match tuple.0.get(i).and_then(pgoutput::Value::as_str) {
                Some(s) => key.push_str(s),
                None => {
                    return Err(Error::Invariant(format!(
                        "{}: key column {i} missing in a change",
                        self.source_table
                    )))
                }
            }
        }
        Ok(key)
    }

    /// The full target image of a row (inserts and updates).
    pub fn image(&self, rk: &Rekeyer, tuple: &Tuple) -> Result<Image, Error> {
        self.build(rk, tuple, false)
    }

    /// Only the key columns of the target image (deletes, the old identity of a key
    /// change); the other columns are `Unchanged`.
    pub fn key_image(&self, rk: &Rekeyer, tuple: &Tuple) -> Result<Image, Error> {
        self.build(rk, tuple, true)
    }

    fn build(&self, rk: &Rekeyer, tuple: &Tuple, keys_only: bool) -> Result<Image, Error> {
        if tuple.0.len() < self.key_columns.last().map_or(0, |k| k + 1) {
            return Err(Error::Invariant(format!(
                "{}: tuple shorter than its relation",
                self.source_table
            )));
        }
        let legacy_key = self.legacy_key(tuple)?;
        let id = self.has_id.then(|| rk.uuid(&self.entity, &legacy_key));
        let mut values = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            if keys_only && !c.is_key {
                values.push(unchanged());
                continue;
            }
            let v = match &c.source {
                Source::Id => text(id.expect("has_id").to_string()),
                Source::LegacyId(i) | Source::Plain(i) => copy(tuple.0.get(*i)),
                Source::Rekeyed { column, entity } => match tuple.0.get(*column) {
                    Some(pgoutput::Value::Text(_)) => {
                        let key = tuple.0[*column].as_str().ok_or_else(|| {
                            Error::Invariant(format!(
                                "{}.{}: key value is not UTF-8",
                                self.source_table, c.name
                            ))
                        })?;
                        text(rk.uuid(entity, key).to_string())
                    }
                    other => copy(other),
                },
            };
            values.push(v);
        }
        Ok(Image {
            id,
            legacy_key,
            values,
        })
    }
}

/// A legacy row read with `COPY … TO STDOUT`: one line of the text format, and the
/// ranges of its fields (see [`copy_text::fields`]).
pub struct CopyLine<'a> {
    pub line: &'a [u8],
    pub fields: &'a [Range<usize>],
}

impl CopyLine<'_> {
    fn field(&self, i: usize) -> Option<&[u8]> {
        self.fields.get(i).map(|r| &self.line[r.clone()])
    }

    /// The row as the stream would carry it (for an overlay).
    pub fn tuple(&self) -> Tuple {
        Tuple(
            self.fields
                .iter()
                .map(|r| match copy_text::unescape(&self.line[r.clone()]) {
                    None => pgoutput::Value::Null,
                    Some(b) => pgoutput::Value::Text(bytes::Bytes::from(b.into_owned())),
                })
                .collect(),
        )
    }
}

impl TableMap {
    /// The legacy key of a row read with `COPY`, as [`Self::legacy_key`] gives it.
    pub fn copy_key<'a>(&self, row: &CopyLine<'a>) -> Result<Cow<'a, str>, Error> {
        let text = |i: usize| -> Result<Cow<'a, str>, Error> {
            let field = row
                .fields
                .get(i)
                .map(|r| &row.line[r.clone()])
                .and_then(copy_text::unescape)
                .ok_or_else(|| {
                    Error::Invariant(format!(
                        "{}: key column {i} missing or NULL in a backfill row",
                        self.source_table
                    ))
                })?;
            match field {
                Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).ok(),
                Cow::Owned(b) => String::from_utf8(b).map(Cow::Owned).ok(),
            }
            .ok_or_else(|| {
                Error::Invariant(format!("{}: key value is not UTF-8", self.source_table))
            })
        };
        if let [one] = self.key_columns[..] {
            return text(one);
        }
        let mut key = String::new();
        for (n, &i) in self.key_columns.iter().enumerate() {
            if n > 0 {
                key.push('/');
            }
            key.push_str(&text(i)?);
        }
        Ok(Cow::Owned(key))
    }

    /// Appends the target line of a row read with `COPY` to `out`: the same fields as
    /// [`Self::image`] gives, in `COPY`'s text format, with its newline. Only the
    /// rekeyed fields are decoded; every other one is copied as the legacy database
    /// wrote it (the two text formats are the same).
    pub fn copy_line(
        &self,
        rk: &Rekeyer,
        row: &CopyLine<'_>,
        legacy_key: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut uuid = [0u8; uuid::fmt::Hyphenated::LENGTH];
        for (n, c) in self.columns.iter().enumerate() {
            if n > 0 {
                out.push(b'\t');
            }
            match &c.source {
                Source::Id => out.extend_from_slice(
                    rk.uuid(&self.entity, legacy_key)
                        .hyphenated()
                        .encode_lower(&mut uuid)
                        .as_bytes(),
                ),
                Source::LegacyId(i) | Source::Plain(i) => {
                    out.extend_from_slice(row.field(*i).ok_or_else(|| self.short_row())?)
                }
                Source::Rekeyed { column, entity } => {
                    let field = row.field(*column).ok_or_else(|| self.short_row())?;
                    match copy_text::unescape(field) {
                        None => out.extend_from_slice(copy_text::NULL),
                        Some(key) => {
                            let key = std::str::from_utf8(&key).map_err(|_| {
                                Error::Invariant(format!(
                                    "{}.{}: key value is not UTF-8",
                                    self.source_table, c.name
                                ))
                            })?;
                            out.extend_from_slice(
                                rk.uuid(entity, key)
                                    .hyphenated()
                                    .encode_lower(&mut uuid)
                                    .as_bytes(),
                            );
                        }
                    }
                }
            }
        }
        out.push(b'\n');
        Ok(())
    }

    fn short_row(&self) -> Error {
        Error::Invariant(format!(
            "{}: a backfill row shorter than its relation",
            self.source_table
        ))
    }
}

fn text(s: String) -> event::Value {
    event::Value {
        kind: Some(Kind::Text(s)),
    }
}

fn unchanged() -> event::Value {
    event::Value {
        kind: Some(Kind::Unchanged(true)),
    }
}

fn copy(v: Option<&pgoutput::Value>) -> event::Value {
    let kind = match v {
        None | Some(pgoutput::Value::Null) => Kind::Null(true),
        Some(pgoutput::Value::UnchangedToast) => Kind::Unchanged(true),
        Some(pgoutput::Value::Text(b)) => match std::str::from_utf8(b) {
            Ok(s) => Kind::Text(s.to_string()),
            Err(_) => Kind::Binary(b.to_vec()),
        },
        Some(pgoutput::Value::Binary(b)) => Kind::Binary(b.to_vec()),
    };
    event::Value { kind: Some(kind) }
}

/// Approximate encoded size of a value, for chunking.
pub fn value_size(v: &event::Value) -> usize {
    match &v.kind {
        Some(Kind::Text(s)) => s.len() + 3,
        Some(Kind::Binary(b)) => b.len() + 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{RelationColumn, Value as PgValue};
    use bytes::Bytes;

    fn rel(name: &str, cols: &[(&str, bool)]) -> Relation {
        Relation {
            oid: 1,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: b'd',
            columns: cols
                .iter()
                .map(|(n, k)| RelationColumn {
                    is_key: *k,
                    name: (*n).into(),
                    type_oid: 23,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn t(s: &str) -> PgValue {
        PgValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn cfg(toml_text: &str) -> TableConfig {
        let c: crate::config::Config = crate::config::Config::parse(toml_text).unwrap();
        c.tables[0].clone()
    }

    fn as_text(v: &event::Value) -> Option<&str> {
        match &v.kind {
            Some(Kind::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// A legacy row as `COPY … TO STDOUT` writes it.
    fn copy_out(values: &[Option<&str>]) -> Vec<u8> {
        let mut line = Vec::new();
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                line.push(b'\t');
            }
            match v {
                Some(s) => copy_text::push_escaped(&mut line, s),
                None => line.extend_from_slice(copy_text::NULL),
            }
        }
        line
    }

    /// The target line rewritten from the COPY line is the row's image in COPY text,
    /// and its key is the stream's: for plain and composite keys, references,
    /// derived columns, NULLs and text that needs escaping.
    #[test]
    fn a_copy_line_is_rewritten_to_the_image_in_copy_text() {
        let rk = Rekeyer::new(b"0123456789abcdef");
        type Rows<'a> = Vec<Vec<Option<&'a str>>>;
        let cases: Vec<(Relation, TableConfig, Rows)> = vec![
            (
                rel(
                    "prompt_templates",
                    &[
                        ("id", true),
                        ("prompt_library_id", false),
                        ("tenant_id", false),
                        ("content", false),
                    ],
                ),
                cfg(r#"[[tables]]
                    name = "prompt_templates"
                    id = "id"
                    references = { prompt_library_id = "prompt_libraries" }
                    derive = [{ column = "organization_id", from = "tenant_id", entity = "organizations" }]"#),
                vec![
                    vec![Some("5"), Some("9"), Some("t1"), Some("a\tb\\c\nd\r é")],
                    vec![Some("6"), None, None, None],
                    vec![Some("7"), Some("10"), Some("t\\2"), Some("\\N")],
                ],
            ),
            (
                rel(
                    "prompt_flow_steps",
                    &[
                        ("prompt_flow_id", true),
                        ("position", true),
                        ("note", false),
                    ],
                ),
                cfg(r#"[[tables]]
                    name = "prompt_flow_steps"
                    references = { prompt_flow_id = "prompt_flows" }"#),
                vec![
                    vec![Some("7"), Some("3"), Some("x")],
                    vec![Some("7"), Some("4"), None],
                ],
            ),
        ];
        for (r, c, rows) in cases {
            let m = TableMap::new(&r, &c, |_| "text".into()).unwrap();
            for values in rows {
                let line = copy_out(&values);
                let mut fields = Vec::new();
                copy_text::fields(&line, &mut fields);
                let row = CopyLine {
                    line: &line,
                    fields: &fields,
                };
                let tuple = Tuple(values.iter().map(|v| v.map_or(PgValue::Null, t)).collect());
                assert_eq!(row.tuple(), tuple);
                let img = m.image(&rk, &tuple).unwrap();
                let key = m.copy_key(&row).unwrap();
                assert_eq!(key, img.legacy_key);
                let mut got = Vec::new();
                m.copy_line(&rk, &row, &key, &mut got).unwrap();
                let want: Vec<Option<&str>> = img.values.iter().map(as_text).collect();
                let mut want = copy_out(&want);
                want.push(b'\n');
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "{values:?}"
                );
            }
        }
    }

    #[test]
    fn keys_and_references_become_parent_uuids() {
        let rk = Rekeyer::new(b"0123456789abcdef");
        let r = rel(
            "prompt_templates",
            &[
                ("id", true),
                ("prompt_library_id", false),
                ("parent_template_id", false),
                ("content", false),
            ],
        );
        let c = cfg(r#"[[tables]]
            name = "prompt_templates"
            id = "id"
            references = { prompt_library_id = "prompt_libraries", parent_template_id = "prompt_templates" }"#);
        let m = TableMap::new(&r, &c, |_| "integer".into()).unwrap();
        let names: Vec<_> = m.descriptor().columns.into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "id",
                "legacy_id",
                "prompt_library_id",
                "parent_template_id",
                "content"
            ]
        );
        let img = m
            .image(
                &rk,
                &Tuple(vec![t("5"), t("9"), PgValue::Null, PgValue::UnchangedToast]),
            )
            .unwrap();
        assert_eq!(img.id, Some(rk.uuid("prompt_templates", "5")));
        assert_eq!(
            as_text(&img.values[0]),
            Some(rk.uuid("prompt_templates", "5").to_string().as_str())
        );
        assert_eq!(as_text(&img.values[1]), Some("5"));
        assert_eq!(
            as_text(&img.values[2]),
            Some(rk.uuid("prompt_libraries", "9").to_string().as_str())
        );
        assert_eq!(img.values[3].kind, Some(Kind::Null(true)));
        assert_eq!(img.values[4].kind, Some(Kind::Unchanged(true)));
    }

    #[test]
    fn composite_keys_keep_their_columns_and_self_describe() {
        let rk = Rekeyer::new(b"0123456789abcdef");
        let r = rel(
            "prompt_flow_steps",
            &[
                ("prompt_flow_id", true),
                ("position", true),
                ("prompt_template_id", false),
            ],
        );
        let c = cfg(r#"[[tables]]
            name = "prompt_flow_steps"
            references = { prompt_flow_id = "prompt_flows", prompt_template_id = "prompt_templates" }"#);
        let m = TableMap::new(&r, &c, |_| "integer".into()).unwrap();
        let d = m.descriptor();
        let keys: Vec<_> = d
            .columns
            .iter()
            .filter(|c| c.is_key)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(keys, ["prompt_flow_id", "position"]);
        let img = m
            .key_image(&rk, &Tuple(vec![t("7"), t("3"), PgValue::Null]))
            .unwrap();
        assert_eq!(img.id, None);
        assert_eq!(img.legacy_key, "7/3");
        assert_eq!(
            as_text(&img.values[0]),
            Some(rk.uuid("prompt_flows", "7").to_string().as_str())
        );
        assert_eq!(img.values[2].kind, Some(Kind::Unchanged(true)));
    }

    #[test]
    fn derived_columns_use_their_namespace() {
        let rk = Rekeyer::new(b"0123456789abcdef");
        let r = rel("prompt_labs", &[("id", true), ("tenant_id", false)]);
        let c = cfg(r#"[[tables]]
            name = "prompt_labs"
            id = "id"
            derive = [{ column = "organization_id", from = "tenant_id", entity = "organizations" }]"#);
        let m = TableMap::new(&r, &c, |_| "integer".into()).unwrap();
        let img = m.image(&rk, &Tuple(vec![t("1"), t("77")])).unwrap();
        assert_eq!(as_text(&img.values[2]), Some("77"));
        assert_eq!(
            as_text(&img.values[3]),
            Some(rk.uuid("organizations", "77").to_string().as_str())
        );
        let img = m.image(&rk, &Tuple(vec![t("1"), PgValue::Null])).unwrap();
        assert_eq!(img.values[3].kind, Some(Kind::Null(true)));
    }

    #[test]
    fn a_table_without_key_is_a_clear_error() {
        let r = rel("audit_log", &[("id", false), ("msg", false)]);
        let c = cfg("[[tables]]\nname = \"audit_log\"\nid = \"id\"");
        let err = TableMap::new(&r, &c, |_| "integer".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("public.audit_log has no primary key"), "{err}");
    }
}
