//! The library's error type and its one classification into retryable and fatal.
//!
//! `Display` says what failed in this layer; the binaries print the whole source chain
//! on one line ([`Error::one_line`]). A user error (bad config, a source that is not set
//! up for logical replication, a table without a key) is fatal and names what to fix.
//! Anything unknown is retryable with backoff, never skipped.

use std::error::Error as _;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration: fatal, names the field.
    #[error("config {0}")]
    Config(String),
    /// The environment is not what rekey needs (wal_level, missing key, missing table):
    /// fatal, says what to change.
    #[error("{0}")]
    Setup(String),
    /// A table lacks a column rekey expects: the new store one the events carry (the
    /// legacy table gained it first), or a legacy table one the backfill reads (dropped
    /// since the reader described it). Retried, each attempt reading the table's columns
    /// again: adding the column to the new store resumes the writer without a restart.
    #[error("{0}")]
    MissingColumn(String),
    /// A written row breaks a foreign key of the new store (see [`crate::fk_check`]):
    /// fatal, names the constraint and the row.
    #[error("{0}")]
    ForeignKey(String),
    #[error("source database: {context}")]
    Source {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("replication stream")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error("kafka: {context}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("target database: {context}")]
    Target {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// An event the writer cannot apply: the pipeline stops rather than skip it.
    #[error("event at {topic}[{partition}]@{offset}: {reason}")]
    Poison {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("decoding the replication stream")]
    Decode(#[from] crate::pgoutput::DecodeError),
    /// A broken invariant: stop before anything is lost.
    #[error("invariant broken: {0}")]
    Invariant(String),
}

impl Error {
    pub fn source_db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Self::Source { context, source }
    }
    pub fn target_db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Self::Target { context, source }
    }
    pub fn kafka(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| Self::Kafka { context, source }
    }

    /// Whether waiting and trying again can help. Unknown means yes.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Config(_)
            | Error::Setup(_)
            | Error::Poison { .. }
            | Error::Decode(_)
            | Error::Invariant(_)
            | Error::ForeignKey(_) => false,
            Error::MissingColumn(_) => true,
            Error::Source { source, .. } | Error::Target { source, .. } => pg_retryable(source),
            Error::Replication(e) => {
                !matches!(
                    e,
                    pgwire_replication::PgWireError::Auth(_)
                        | pgwire_replication::PgWireError::MessageTooLarge { .. }
                ) && !replication_setup_error(e)
                    && !replication_tls_refusal(e)
            }
            // A setting librdkafka refuses stays refused.
            Error::Kafka {
                source:
                    rdkafka::error::KafkaError::ClientConfig(..)
                    | rdkafka::error::KafkaError::ClientCreation(_),
                ..
            } => false,
            Error::Kafka { source, .. } => !matches!(
                source.rdkafka_error_code(),
                Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge)
                    | Some(rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed)
                    | Some(rdkafka::types::RDKafkaErrorCode::InvalidConfig)
            ),
        }
    }

    /// The error and all its causes on one line: what a user reads.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut cause = self.source();
        while let Some(c) = cause {
            let text = c.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = c.source();
        }
        line.replace('\n', " ")
    }
}

/// SQLSTATE classes that mean "fix something, retrying will not help".
fn pg_retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // A certificate that does not verify, or no TLS where the URL requires it.
        None if crate::pg_connect::is_tls_refusal(e) => false,
        None => true, // connection-level: the server may be restarting
        Some(code) => {
            let class = &code.code()[..2];
            // 08 connection, 40 serialization/deadlock, 53 resources, 57 operator
            // intervention (shutdown), 58 system errors, 55 object in use (slot active).
            matches!(class, "08" | "40" | "53" | "55" | "57" | "58")
        }
    }
}

/// The replication client's TLS errors that waiting does not change: its own set-up
/// (certificate files), a server without TLS, a certificate rustls refuses.
fn replication_tls_refusal(e: &pgwire_replication::PgWireError) -> bool {
    let pgwire_replication::PgWireError::Tls(text) = e else {
        return false;
    };
    ["TLS config error", "does not support TLS", "certificate"]
        .iter()
        .any(|sign| text.contains(sign))
}

fn replication_setup_error(e: &pgwire_replication::PgWireError) -> bool {
    let text = e.to_string();
    // A missing slot or publication will not come back by itself.
    text.contains("does not exist") || text.contains("wal_level")
}
