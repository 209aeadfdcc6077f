//! The PromptStudio schemas: the legacy (integer keys) and target (UUID keys) DDL,
//! compiled into the crate from `deploy/promptstudio/`.
//!
//! Guarantees: [`apply`] runs the whole file as one simple-query batch, which
//! PostgreSQL executes as one implicit transaction: on an empty database it creates
//! everything or nothing. It is not idempotent: applying twice fails on the existing
//! type.

use tokio_postgres::Client;

use crate::Error;

/// DDL of the legacy PromptStudio database (serial/bigserial keys).
pub const LEGACY_SQL: &str = include_str!("../../../deploy/promptstudio/legacy.sql");
/// DDL of the new PromptStudio database (uuid keys, legacy_id, row_version, deleted_at).
pub const TARGET_SQL: &str = include_str!("../../../deploy/promptstudio/target.sql");

/// The nine tables, parents before children (the order to insert or copy in).
pub const TABLES: [&str; 9] = [
    "prompt_labs",
    "prompt_libraries",
    "prompt_templates",
    "prompt_variables",
    "variable_collections",
    "prompt_executions",
    "prompt_flows",
    "prompt_flow_steps",
    "flow_executions",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Legacy,
    Target,
}

impl Schema {
    pub fn name(self) -> &'static str {
        match self {
            Schema::Legacy => "legacy",
            Schema::Target => "target",
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            Schema::Legacy => LEGACY_SQL,
            Schema::Target => TARGET_SQL,
        }
    }
}

/// Creates `schema`'s types, tables and indexes in the connected (empty) database.
pub async fn apply(client: &Client, schema: Schema) -> Result<(), Error> {
    client
        .batch_execute(schema.sql())
        .await
        .map_err(|source| Error::Schema {
            schema: schema.name(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_schemas_create_every_table() {
        for sql in [LEGACY_SQL, TARGET_SQL] {
            for table in TABLES {
                assert!(sql.contains(&format!("CREATE TABLE {table} (")), "{table}");
            }
            assert!(
                !sql.lines().any(|l| l.starts_with('\\')),
                "psql meta-command"
            );
        }
    }
}
