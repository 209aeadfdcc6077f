//! Where a consumer of the legacy database's WAL stands, and how long it takes to drain.
//!
//! Both consumers report the source position of the last transaction they *applied*
//! (committed in their own database), so their lag is measured the same way:
//!
//! - rekey: `max(end_lsn)` of `rekey.checkpoint` in the target — written by the writer in
//!   the target transaction that applied the source transaction;
//! - native logical replication: `remote_lsn` of the subscription's replication origin
//!   (`pg_replication_origin_status`, origin `pg_<subscription oid>`) — advanced by the
//!   apply worker in the local transaction that applied the source transaction.
//!
//! Drain: after the load stops, take the source's WAL position L, commit one marker
//! transaction (so the consumer has something after L to apply), and time until the
//! consumer's applied position reaches L. This is the hook for the cutover drain time
//! (issue #4): a cutover freezes legacy writes instead of stopping pgbench, then calls
//! [`drain`] the same way.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

/// A consumer of the legacy WAL, with a connection to the database it applies to.
pub enum Consumer {
    Rekey {
        target: Client,
    },
    Native {
        subscriber: Client,
        subscription: String,
    },
}

impl Consumer {
    pub fn name(&self) -> &'static str {
        match self {
            Consumer::Rekey { .. } => "rekey",
            Consumer::Native { .. } => "native",
        }
    }

    /// The source end LSN of the last applied transaction; None before the first.
    pub async fn applied_lsn(&self) -> Option<u64> {
        let row = match self {
            Consumer::Rekey { target } => {
                target
                    .query_opt("SELECT max(end_lsn) FROM rekey.checkpoint", &[])
                    .await
            }
            Consumer::Native {
                subscriber,
                subscription,
            } => {
                subscriber
                    .query_opt(
                        "SELECT (o.remote_lsn - '0/0'::pg_lsn)::bigint
                           FROM pg_replication_origin_status o
                           JOIN pg_subscription s ON o.external_id = 'pg_' || s.oid
                          WHERE s.subname = $1",
                        &[subscription],
                    )
                    .await
            }
        };
        // An origin that has applied nothing yet reports 0/0.
        row.ok()
            .flatten()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .filter(|v| *v > 0)
            .map(|v| v as u64)
    }

    /// Commits one transaction on the legacy database that this consumer will apply:
    /// for rekey a heartbeat (the reader's own `pg_logical_emit_message`, no row
    /// changes); for native logical replication, which ignores messages, a one-row
    /// update of `prompt_labs.updated_at`.
    pub async fn mark(&self, legacy: &Client) {
        match self {
            Consumer::Rekey { .. } => rekey::slot::emit_heartbeat(legacy)
                .await
                .unwrap_or_else(|e| panic!("emitting a marker heartbeat: {e}")),
            Consumer::Native { .. } => {
                legacy
                    .batch_execute(
                        "UPDATE prompt_labs SET updated_at = now()
                          WHERE id = (SELECT min(id) FROM prompt_labs)",
                    )
                    .await
                    .unwrap_or_else(|e| panic!("marker update: {e}"));
            }
        }
    }
}

/// The legacy database's current WAL position.
pub async fn current_lsn(legacy: &Client) -> u64 {
    legacy
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0) as u64)
        .unwrap_or_else(|e| panic!("reading the legacy WAL position: {e}"))
}

/// Source WAL bytes the consumer has not applied yet (None before its first apply).
pub async fn lag_bytes(legacy: &Client, consumer: &Consumer) -> Option<u64> {
    let applied = consumer.applied_lsn().await?;
    Some(current_lsn(legacy).await.saturating_sub(applied))
}

/// Waits until the consumer has applied everything the legacy database wrote before
/// this call (see the module doc); returns how long that took, or None after `timeout`.
pub async fn drain(legacy: &Client, consumer: &Consumer, timeout: Duration) -> Option<Duration> {
    let began = Instant::now();
    let target = current_lsn(legacy).await;
    consumer.mark(legacy).await;
    loop {
        if consumer.applied_lsn().await.is_some_and(|a| a >= target) {
            return Some(began.elapsed());
        }
        if began.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
