//! What to compare for one table, and the SQL that reads it.
//!
//! A [`TablePlan`] is built from a `[[tables]]` entry and the two catalogs. It splits the
//! legacy columns into
//!
//! - the key: the integer `id` (target `id` = F(entity, key), `legacy_id` = key), or the
//!   composite primary key (its columns carried over, rekeyed where they are references);
//! - rekeyed columns: references (target column = F(parent, value)) and derived columns
//!   (target `column` = F(entity, value of `from`)), compared value by value;
//! - copied columns: every other legacy column, same name in the target, compared
//!   through one `md5(ROW(c1::text, …)::text)` per row, computed by each server in the
//!   same column order. (A derive source such as `tenant_id` is copied as well.)
//!
//! Target bookkeeping columns (`row_version`, `deleted_at`, `organization_id` where it is
//! not derived) are never compared. Every statement is a single `SELECT` bounded by a
//! key range or a key list and `LIMIT`; see the parent module for why.

use crate::config::{quote_ident, quote_qualified, Config, TableConfig};
use crate::error::Error;

/// A column as the catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// SQL type as `format_type` prints it.
    pub type_name: String,
}

/// One side's catalog of a table: columns in attribute order, primary-key columns in
/// key order.
#[derive(Debug, Clone, Default)]
pub struct TableCatalog {
    pub columns: Vec<Column>,
    pub key: Vec<String>,
}

impl TableCatalog {
    fn type_of(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.type_name.as_str())
    }
}

/// A target column whose value is F(entity, legacy value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rekeyed {
    pub target: String,
    pub legacy: String,
    pub entity: String,
    /// A reference (a foreign key in the target), not a derived column.
    pub reference: bool,
}

/// One column of a composite key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPart {
    pub name: String,
    pub legacy_type: String,
    pub target_type: String,
    /// The parent entity, when the column is a reference.
    pub entity: Option<String>,
    /// The parent's target table (quoted), when the parent has an `id`: lets a target
    /// key be turned back into the legacy key through the parent's `legacy_id`.
    pub parent_table: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlan {
    /// The integer key `column`: target `id` and `legacy_id`.
    Id { column: String, legacy_type: String },
    /// A composite key carried over column by column.
    Composite(Vec<KeyPart>),
}

#[derive(Debug, Clone)]
pub struct TablePlan {
    /// The target `schema.name`: how the report names the table.
    pub name: String,
    pub legacy_table: String,
    pub target_table: String,
    pub entity: String,
    pub key: KeyPlan,
    pub rekeyed: Vec<Rekeyed>,
    pub copied: Vec<String>,
    /// The target has `deleted_at`.
    pub soft_delete: bool,
}

/// The integer types an `id` column may have.
const INTEGER_TYPES: &[&str] = &["smallint", "integer", "bigint"];

impl TablePlan {
    /// Checks the config against both catalogs; an error names the table and column.
    pub fn new(
        config: &Config,
        table: &TableConfig,
        legacy: &TableCatalog,
        target: &TableCatalog,
    ) -> Result<TablePlan, Error> {
        let source = table.source_name();
        let target_name = table.target_name();
        let setup = |msg: String| Err(Error::Setup(msg));
        if legacy.columns.is_empty() {
            return setup(format!("legacy table {source} does not exist"));
        }
        if target.columns.is_empty() {
            return setup(format!(
                "target table {target_name} does not exist: apply the new schema first"
            ));
        }
        for name in table
            .references
            .keys()
            .chain(table.derive.iter().map(|d| &d.from))
            .chain(table.id.iter())
        {
            if legacy.type_of(name).is_none() {
                return setup(format!(
                    "legacy table {source} has no column {name:?} named in its [[tables]] config"
                ));
            }
        }
        let key = match &table.id {
            Some(id) => {
                let legacy_type = legacy.type_of(id).unwrap_or_default().to_string();
                if legacy.key != [id.clone()] {
                    return setup(format!(
                        "legacy table {source}: `id = {id:?}` must be its whole primary key"
                    ));
                }
                if !INTEGER_TYPES.contains(&legacy_type.as_str()) {
                    return setup(format!(
                        "legacy table {source}: `id = {id:?}` is {legacy_type}, not an integer"
                    ));
                }
                KeyPlan::Id {
                    column: id.clone(),
                    legacy_type,
                }
            }
            None => {
                if legacy.key.is_empty() {
                    return setup(format!("legacy table {source} has no primary key"));
                }
                let mut parts = Vec::new();
                for name in &legacy.key {
                    let entity = table.references.get(name).cloned();
                    let parent_table = entity.as_ref().and_then(|e| {
                        config
                            .tables
                            .iter()
                            .find(|t| t.entity() == e && t.id.is_some())
                            .map(|t| {
                                let (s, n) = t.target_parts();
                                quote_qualified(s, n)
                            })
                    });
                    parts.push(KeyPart {
                        name: name.clone(),
                        legacy_type: legacy.type_of(name).unwrap_or_default().to_string(),
                        target_type: target
                            .type_of(name)
                            .ok_or_else(|| missing_target(&target_name, name))?
                            .to_string(),
                        entity,
                        parent_table,
                    });
                }
                KeyPlan::Composite(parts)
            }
        };
        let mut rekeyed: Vec<Rekeyed> = table
            .references
            .iter()
            .map(|(column, entity)| Rekeyed {
                target: column.clone(),
                legacy: column.clone(),
                entity: entity.clone(),
                reference: true,
            })
            .collect();
        rekeyed.extend(table.derive.iter().map(|d| Rekeyed {
            target: d.column.clone(),
            legacy: d.from.clone(),
            entity: d.entity.clone(),
            reference: false,
        }));
        let copied: Vec<String> = legacy
            .columns
            .iter()
            .map(|c| c.name.clone())
            .filter(|c| Some(c) != table.id.as_ref() && !table.references.contains_key(c))
            .collect();
        let mut needed: Vec<&str> = rekeyed.iter().map(|r| r.target.as_str()).collect();
        needed.extend(copied.iter().map(String::as_str));
        if table.id.is_some() {
            needed.extend(["id", "legacy_id"]);
        }
        for name in needed {
            if target.type_of(name).is_none() {
                return Err(missing_target(&target_name, name));
            }
        }
        let (ls, ln) = table.source_parts();
        let (ts, tn) = table.target_parts();
        Ok(TablePlan {
            name: target_name,
            legacy_table: quote_qualified(ls, ln),
            target_table: quote_qualified(ts, tn),
            entity: table.entity().to_string(),
            key,
            rekeyed,
            copied,
            soft_delete: target.type_of("deleted_at").is_some(),
        })
    }

    pub fn has_id(&self) -> bool {
        matches!(self.key, KeyPlan::Id { .. })
    }

    /// Names of the legacy key columns, in key order.
    pub fn key_names(&self) -> Vec<&str> {
        match &self.key {
            KeyPlan::Id { column, .. } => vec![column.as_str()],
            KeyPlan::Composite(parts) => parts.iter().map(|p| p.name.as_str()).collect(),
        }
    }

    fn parts(&self) -> &[KeyPart] {
        match &self.key {
            KeyPlan::Composite(parts) => parts,
            KeyPlan::Id { .. } => &[],
        }
    }

    /// Whether a target key can be turned back into its legacy key (every rekeyed key
    /// part's parent has a `legacy_id`).
    pub fn reversible(&self) -> bool {
        self.parts()
            .iter()
            .all(|p| p.entity.is_none() || p.parent_table.is_some())
    }

    fn digest(&self) -> String {
        if self.copied.is_empty() {
            return "md5('')".into();
        }
        let cols: Vec<String> = self
            .copied
            .iter()
            .map(|c| format!("t.{}::text", quote_ident(c)))
            .collect();
        format!("md5(ROW({})::text)", cols.join(", "))
    }

    fn values(&self) -> String {
        self.copied
            .iter()
            .map(|c| format!(", t.{}::text", quote_ident(c)))
            .collect()
    }

    /// Legacy row: key (`bigint`, or each part as text), rekeyed sources as text, digest,
    /// and with `values` every copied column as text.
    fn legacy_select(&self, values: bool) -> String {
        let mut cols: Vec<String> = match &self.key {
            KeyPlan::Id { column, .. } => vec![format!("t.{}::bigint", quote_ident(column))],
            KeyPlan::Composite(parts) => parts
                .iter()
                .map(|p| format!("t.{}::text", quote_ident(&p.name)))
                .collect(),
        };
        cols.extend(
            self.rekeyed
                .iter()
                .map(|r| format!("t.{}::text", quote_ident(&r.legacy))),
        );
        cols.push(self.digest());
        let mut s = cols.join(", ");
        if values {
            s.push_str(&self.values());
        }
        s
    }

    /// Target row: `legacy_id, id` (or each key part as text), deleted flag, rekeyed
    /// columns as text, digest, and with `values` every copied column as text.
    fn target_select(&self, values: bool) -> String {
        let mut cols: Vec<String> = match &self.key {
            KeyPlan::Id { .. } => vec!["t.legacy_id::bigint".into(), "t.id::text".into()],
            KeyPlan::Composite(parts) => parts
                .iter()
                .map(|p| format!("t.{}::text", quote_ident(&p.name)))
                .collect(),
        };
        cols.push(self.deleted_expr().into());
        cols.extend(
            self.rekeyed
                .iter()
                .map(|r| format!("t.{}::text", quote_ident(&r.target))),
        );
        cols.push(self.digest());
        let mut s = cols.join(", ");
        if values {
            s.push_str(&self.values());
        }
        s
    }

    fn deleted_expr(&self) -> &'static str {
        if self.soft_delete {
            "t.deleted_at IS NOT NULL"
        } else {
            "false"
        }
    }

    fn key_list(&self) -> String {
        self.parts()
            .iter()
            .map(|p| format!("t.{}", quote_ident(&p.name)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `(t.a, t.b) > ($1::text::T1, $2::text::T2)` over the composite key.
    fn after(&self, target_types: bool) -> String {
        let params: Vec<String> = self
            .parts()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ty = if target_types {
                    &p.target_type
                } else {
                    &p.legacy_type
                };
                format!("${}::text::{ty}", i + 1)
            })
            .collect();
        format!("({}) > ({})", self.key_list(), params.join(", "))
    }

    /// `JOIN unnest($1::text[], …) AS k(c0, …) ON t.a = k.c0::T1 AND …`
    fn join_keys(&self, target_types: bool) -> String {
        let parts = self.parts();
        let arrays: Vec<String> = (1..=parts.len()).map(|i| format!("${i}::text[]")).collect();
        let names: Vec<String> = (0..parts.len()).map(|i| format!("c{i}")).collect();
        let on: Vec<String> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ty = if target_types {
                    &p.target_type
                } else {
                    &p.legacy_type
                };
                format!("t.{} = k.c{i}::{ty}", quote_ident(&p.name))
            })
            .collect();
        format!(
            "JOIN unnest({}) AS k({}) ON {}",
            arrays.join(", "),
            names.join(", "),
            on.join(" AND ")
        )
    }

    /// A page of legacy rows after key `$1` (integer key), at most `$2` rows.
    pub fn legacy_page_sql(&self) -> String {
        match &self.key {
            KeyPlan::Id { column, .. } => {
                let k = quote_ident(column);
                format!(
                    "SELECT {} FROM {} t WHERE t.{k} > $1::bigint ORDER BY t.{k} LIMIT $2::bigint",
                    self.legacy_select(false),
                    self.legacy_table
                )
            }
            KeyPlan::Composite(parts) => format!(
                "SELECT {} FROM {} t WHERE {} ORDER BY {} LIMIT ${}::bigint",
                self.legacy_select(false),
                self.legacy_table,
                self.after(false),
                self.key_list(),
                parts.len() + 1
            ),
        }
    }

    /// The first page of a composite-key table (no lower bound), at most `$1` rows.
    pub fn legacy_first_page_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} t ORDER BY {} LIMIT $1::bigint",
            self.legacy_select(false),
            self.legacy_table,
            self.key_list()
        )
    }

    /// A page of target rows (live and soft-deleted) after `legacy_id` `$1`, at most `$2`.
    pub fn target_page_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} t WHERE t.legacy_id > $1::bigint ORDER BY t.legacy_id LIMIT $2::bigint",
            self.target_select(false),
            self.target_table
        )
    }

    /// Legacy rows by key: `$1::bigint[]`, or one `text[]` per composite key part.
    pub fn legacy_by_keys_sql(&self, values: bool) -> String {
        match &self.key {
            KeyPlan::Id {
                column,
                legacy_type,
            } => format!(
                "SELECT {} FROM {} t WHERE t.{} = ANY($1::bigint[]::{legacy_type}[])",
                self.legacy_select(values),
                self.legacy_table,
                quote_ident(column)
            ),
            KeyPlan::Composite(_) => format!(
                "SELECT {} FROM {} t {}",
                self.legacy_select(values),
                self.legacy_table,
                self.join_keys(false)
            ),
        }
    }

    /// Target rows by legacy key (`$1::bigint[]`) or by translated composite key (one
    /// `text[]` per part).
    pub fn target_by_keys_sql(&self, values: bool) -> String {
        match &self.key {
            KeyPlan::Id { .. } => format!(
                "SELECT {} FROM {} t WHERE t.legacy_id = ANY($1::bigint[])",
                self.target_select(values),
                self.target_table
            ),
            KeyPlan::Composite(_) => format!(
                "SELECT {} FROM {} t {}",
                self.target_select(values),
                self.target_table,
                self.join_keys(true)
            ),
        }
    }

    /// Live and soft-deleted row counts of the target (composite-key tables).
    pub fn target_counts_sql(&self) -> String {
        format!(
            "SELECT count(*) FILTER (WHERE NOT ({d})), count(*) FILTER (WHERE {d}) FROM {} t",
            self.target_table,
            d = self.deleted_expr()
        )
    }

    /// Live target rows of a composite-key table in target key order, each with its
    /// target key parts and the legacy key parts recovered through the parents'
    /// `legacy_id` (NULL when the parent row is missing). `first`: no lower bound, the
    /// limit is `$1`; else after the target key `$1..$n`, limit `$n+1`.
    pub fn reverse_page_sql(&self, first: bool) -> String {
        let parts = self.parts();
        let mut cols: Vec<String> = parts
            .iter()
            .map(|p| format!("t.{}::text", quote_ident(&p.name)))
            .collect();
        let mut joins = String::new();
        for (i, p) in parts.iter().enumerate() {
            match &p.parent_table {
                Some(parent) if p.entity.is_some() => {
                    cols.push(format!("p{i}.legacy_id::text"));
                    joins.push_str(&format!(
                        " LEFT JOIN {parent} p{i} ON p{i}.id = t.{}",
                        quote_ident(&p.name)
                    ));
                }
                _ => cols.push(format!("t.{}::text", quote_ident(&p.name))),
            }
        }
        let mut conds = Vec::new();
        if !first {
            conds.push(self.after(true));
        }
        if self.soft_delete {
            conds.push("t.deleted_at IS NULL".into());
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        let limit = if first { 1 } else { parts.len() + 1 };
        format!(
            "SELECT {} FROM {} t{joins}{filter} ORDER BY {} LIMIT ${limit}::bigint",
            cols.join(", "),
            self.target_table,
            self.key_list()
        )
    }

    /// The foreign keys of this table whose parent is a configured table with an `id`:
    /// `(column, parent target table quoted, parent has deleted_at)`.
    pub fn foreign_keys(
        &self,
        config: &Config,
        target_soft: impl Fn(&str) -> bool,
    ) -> Vec<ForeignKey> {
        self.rekeyed
            .iter()
            .filter(|r| r.reference)
            .filter_map(|r| {
                let parent = config
                    .tables
                    .iter()
                    .find(|t| t.entity() == r.entity && t.id.is_some())?;
                let (s, n) = parent.target_parts();
                Some(ForeignKey {
                    column: r.target.clone(),
                    parent: quote_qualified(s, n),
                    parent_soft_delete: target_soft(&parent.target_name()),
                })
            })
            .collect()
    }

    /// How a target row of this table is named in FK findings.
    fn fk_label(&self) -> String {
        match &self.key {
            KeyPlan::Id { .. } => "'legacy_id=' || c.legacy_id".into(),
            KeyPlan::Composite(parts) => parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    format!(
                        "'{}{}=' || c.{}",
                        if i > 0 { " " } else { "" },
                        p.name.replace('\'', "''"),
                        quote_ident(&p.name)
                    )
                })
                .collect::<Vec<_>>()
                .join(" || "),
        }
    }

    /// Counts of rows whose `fk` points at no parent row, and of live rows whose parent
    /// is soft-deleted; with `sample`, up to `$1` labels of such rows instead.
    pub fn fk_sql(&self, fk: &ForeignKey, sample: bool) -> String {
        let col = quote_ident(&fk.column);
        let child_live = if self.soft_delete {
            "c.deleted_at IS NULL"
        } else {
            "true"
        };
        let parent_deleted = if fk.parent_soft_delete {
            "p.deleted_at IS NOT NULL"
        } else {
            "false"
        };
        let from = format!(
            "FROM {} c LEFT JOIN {} p ON p.id = c.{col} WHERE c.{col} IS NOT NULL",
            self.target_table, fk.parent
        );
        if sample {
            format!(
                "SELECT CASE WHEN p.id IS NULL THEN 'no parent' ELSE 'parent soft-deleted' END, {} \
                 {from} AND (p.id IS NULL OR ({child_live} AND {parent_deleted})) LIMIT $1::bigint",
                self.fk_label()
            )
        } else {
            format!(
                "SELECT count(*) FILTER (WHERE p.id IS NULL), \
                 count(*) FILTER (WHERE p.id IS NOT NULL AND {child_live} AND {parent_deleted}) {from}"
            )
        }
    }
}

/// A reference column whose parent is a configured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub column: String,
    pub parent: String,
    pub parent_soft_delete: bool,
}

fn missing_target(table: &str, column: &str) -> Error {
    Error::Setup(format!(
        "target table {table} has no column {column:?}: the schema does not match the [[tables]] config"
    ))
}

/// The catalog of `schema.name` (empty when the table does not exist).
pub async fn read_catalog(
    client: &tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> Result<TableCatalog, tokio_postgres::Error> {
    let rel = quote_qualified(schema, name);
    let columns = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&rel],
        )
        .await?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
        })
        .collect();
    let key = client
        .query(
            "SELECT a.attname::text FROM pg_index i
               JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE i.indrelid = to_regclass($1) AND i.indisprimary
              ORDER BY k.ord",
            &[&rel],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(TableCatalog { columns, key })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn catalog(cols: &[(&str, &str)], key: &[&str]) -> TableCatalog {
        TableCatalog {
            columns: cols
                .iter()
                .map(|(n, t)| Column {
                    name: (*n).into(),
                    type_name: (*t).into(),
                })
                .collect(),
            key: key.iter().map(|k| (*k).into()).collect(),
        }
    }

    pub fn promptstudio() -> Config {
        let mut c =
            Config::parse(include_str!("../../../../deploy/promptstudio/rekey.toml")).unwrap();
        c.rekey.secret = crate::config::Secret::new("0123456789abcdef0123");
        c
    }

    pub fn libraries_plan() -> TablePlan {
        let c = promptstudio();
        let legacy = catalog(
            &[
                ("id", "integer"),
                ("prompt_lab_id", "integer"),
                ("name", "text"),
                ("tags", "text[]"),
            ],
            &["id"],
        );
        let target = catalog(
            &[
                ("id", "uuid"),
                ("legacy_id", "integer"),
                ("prompt_lab_id", "uuid"),
                ("name", "text"),
                ("tags", "text[]"),
                ("organization_id", "uuid"),
                ("row_version", "bigint"),
                ("deleted_at", "timestamp with time zone"),
            ],
            &["id"],
        );
        TablePlan::new(&c, &c.tables[1], &legacy, &target).unwrap()
    }

    pub fn steps_plan() -> TablePlan {
        let c = promptstudio();
        let legacy = catalog(
            &[
                ("prompt_flow_id", "integer"),
                ("position", "integer"),
                ("prompt_template_id", "integer"),
            ],
            &["prompt_flow_id", "position"],
        );
        let target = catalog(
            &[
                ("prompt_flow_id", "uuid"),
                ("position", "integer"),
                ("prompt_template_id", "uuid"),
                ("row_version", "bigint"),
            ],
            &["prompt_flow_id", "position"],
        );
        TablePlan::new(&c, &c.tables[7], &legacy, &target).unwrap()
    }

    #[test]
    fn columns_split_into_key_rekeyed_and_copied() {
        let p = libraries_plan();
        assert_eq!(p.name, "public.prompt_libraries");
        assert_eq!(p.entity, "prompt_libraries");
        assert!(p.has_id() && p.soft_delete);
        assert_eq!(p.copied, ["name", "tags"]);
        assert_eq!(
            p.rekeyed,
            [Rekeyed {
                target: "prompt_lab_id".into(),
                legacy: "prompt_lab_id".into(),
                entity: "prompt_labs".into(),
                reference: true,
            }]
        );
        // Both sides hash the same columns in the same order; bookkeeping is left out.
        let l = p.legacy_page_sql();
        let t = p.target_page_sql();
        let digest = r#"md5(ROW(t."name"::text, t."tags"::text)::text)"#;
        assert!(l.contains(digest) && t.contains(digest), "{l}\n{t}");
        assert!(
            !t.contains("row_version") && !t.contains("organization_id"),
            "{t}"
        );
        assert_eq!(
            l,
            format!(
                r#"SELECT t."id"::bigint, t."prompt_lab_id"::text, {digest} FROM "public"."prompt_libraries" t WHERE t."id" > $1::bigint ORDER BY t."id" LIMIT $2::bigint"#
            )
        );
    }

    #[test]
    fn derived_columns_are_rekeyed_and_their_source_is_copied() {
        let c = promptstudio();
        let legacy = catalog(
            &[
                ("id", "integer"),
                ("tenant_id", "integer"),
                ("name", "text"),
            ],
            &["id"],
        );
        let target = catalog(
            &[
                ("id", "uuid"),
                ("legacy_id", "integer"),
                ("tenant_id", "integer"),
                ("name", "text"),
                ("organization_id", "uuid"),
                ("row_version", "bigint"),
            ],
            &["id"],
        );
        let p = TablePlan::new(&c, &c.tables[0], &legacy, &target).unwrap();
        assert_eq!(p.copied, ["tenant_id", "name"]);
        assert_eq!(p.rekeyed[0].target, "organization_id");
        assert_eq!(p.rekeyed[0].legacy, "tenant_id");
        assert_eq!(p.rekeyed[0].entity, "organizations");
        assert!(!p.soft_delete);
        // No foreign key for a derived column (there is no organizations table).
        assert!(p.foreign_keys(&c, |_| true).is_empty());
    }

    #[test]
    fn composite_keys_page_by_row_comparison_and_look_up_by_unnest() {
        let p = steps_plan();
        assert!(!p.has_id() && !p.soft_delete && p.reversible());
        assert_eq!(p.copied, ["position"]);
        assert_eq!(
            p.legacy_page_sql(),
            r#"SELECT t."prompt_flow_id"::text, t."position"::text, t."prompt_flow_id"::text, t."prompt_template_id"::text, md5(ROW(t."position"::text)::text) FROM "public"."prompt_flow_steps" t WHERE (t."prompt_flow_id", t."position") > ($1::text::integer, $2::text::integer) ORDER BY t."prompt_flow_id", t."position" LIMIT $3::bigint"#
        );
        let t = p.target_by_keys_sql(false);
        assert!(
            t.ends_with(r#"JOIN unnest($1::text[], $2::text[]) AS k(c0, c1) ON t."prompt_flow_id" = k.c0::uuid AND t."position" = k.c1::integer"#),
            "{t}"
        );
        let r = p.reverse_page_sql(false);
        assert!(
            r.contains(r#"LEFT JOIN "public"."prompt_flows" p0 ON p0.id = t."prompt_flow_id""#),
            "{r}"
        );
        assert!(
            r.contains("($1::text::uuid, $2::text::integer)") && r.ends_with("LIMIT $3::bigint"),
            "{r}"
        );
    }

    #[test]
    fn a_config_that_does_not_match_the_schema_is_named() {
        let c = promptstudio();
        let legacy = catalog(&[("id", "integer"), ("name", "text")], &["id"]);
        let target = catalog(&[("id", "uuid"), ("legacy_id", "integer")], &["id"]);
        let err = TablePlan::new(&c, &c.tables[1], &legacy, &target)
            .unwrap_err()
            .to_string();
        assert!(err.contains("prompt_lab_id"), "{err}");
        let legacy = catalog(
            &[
                ("id", "integer"),
                ("prompt_lab_id", "integer"),
                ("name", "text"),
            ],
            &["id"],
        );
        let err = TablePlan::new(&c, &c.tables[1], &legacy, &target)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("public.prompt_libraries has no column \"prompt_lab_id\""),
            "{err}"
        );
        let err = TablePlan::new(&c, &c.tables[1], &TableCatalog::default(), &target)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn foreign_key_checks_name_the_parent() {
        let c = promptstudio();
        let p = libraries_plan();
        let fks = p.foreign_keys(&c, |_| true);
        assert_eq!(
            fks,
            [ForeignKey {
                column: "prompt_lab_id".into(),
                parent: r#""public"."prompt_labs""#.into(),
                parent_soft_delete: true
            }]
        );
        let sql = p.fk_sql(&fks[0], false);
        assert!(
            sql.contains(r#"LEFT JOIN "public"."prompt_labs" p ON p.id = c."prompt_lab_id""#),
            "{sql}"
        );
        assert!(
            sql.contains("c.deleted_at IS NULL AND p.deleted_at IS NOT NULL"),
            "{sql}"
        );
    }
}
