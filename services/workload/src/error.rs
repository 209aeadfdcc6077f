//! The crate's error type. Each variant says which step failed; the PostgreSQL error
//! stays attached as the source.

use crate::workload::TxnKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying the {schema} schema")]
    Schema {
        schema: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("seed scale must be a positive finite number, got {0}")]
    InvalidScale(f64),
    #[error("seeding table {table}")]
    Seed {
        table: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("reading the highest key of each legacy table")]
    Maxima(#[source] tokio_postgres::Error),
    #[error("workload transaction {kind}")]
    Txn {
        kind: TxnKind,
        #[source]
        source: tokio_postgres::Error,
    },
}
