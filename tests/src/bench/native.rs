//! The baseline: PostgreSQL's own logical replication (publication on the legacy
//! database, subscription on a cluster with the legacy schema as is), and a marker table
//! that times its apply latency.
//!
//! Subscriptions run with PostgreSQL's defaults (two table-sync workers, the
//! subscription's `synchronous_commit = off`); their apply workers run with
//! `session_replication_role = replica`, so the subscriber's foreign keys do not fire.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::pg::Pg;

/// `CREATE PUBLICATION name FOR TABLE …` on the legacy database.
pub async fn publish(legacy: &Client, name: &str, tables: &[&str]) {
    let sql = format!("CREATE PUBLICATION {name} FOR TABLE {}", tables.join(", "));
    legacy
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub async fn unpublish(legacy: &Client, name: &str) {
    let sql = format!("DROP PUBLICATION IF EXISTS {name}");
    legacy
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `CREATE SUBSCRIPTION name … PUBLICATION name WITH (copy_data = true)`: also creates
/// the slot on the legacy cluster and starts the initial copy.
pub async fn subscribe(subscriber: &Client, name: &str, legacy: &Pg, db: &str) {
    let sql = format!(
        "CREATE SUBSCRIPTION {name} CONNECTION 'host=127.0.0.1 port={} user=postgres dbname={db}' \
         PUBLICATION {name} WITH (copy_data = true)",
        legacy.port
    );
    subscriber
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Waits until every table of the subscription is `ready` (`srsubstate = 'r'`: copied
/// and caught up with the stream); panics after `timeout`.
pub async fn wait_ready(subscriber: &Client, name: &str, tables: usize, timeout: Duration) {
    let began = Instant::now();
    loop {
        let ready: i64 = subscriber
            .query_one(
                "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
                  WHERE s.subname = $1 AND r.srsubstate = 'r'",
                &[&name],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if ready as usize >= tables {
            return;
        }
        if began.elapsed() >= timeout {
            panic!(
                "subscription {name}: {ready} of {tables} tables ready after {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `DROP SUBSCRIPTION` (its slot on the legacy cluster goes with it).
pub async fn unsubscribe(subscriber: &Client, name: &str) {
    let sql = format!("DROP SUBSCRIPTION IF EXISTS {name}");
    subscriber
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The marker table: `sent_at` is the legacy clock at insert; on the subscriber a
/// trigger that fires for replicated rows too (`ENABLE ALWAYS`) stamps `applied_at` as
/// the apply worker writes the row. Both clocks are this machine's.
pub const MARKER_TABLE: &str = "bench_marker";

pub async fn create_marker(legacy: &Client, subscriber: &Client) {
    let table = format!(
        "CREATE TABLE {MARKER_TABLE} (id bigserial PRIMARY KEY, \
         sent_at timestamptz NOT NULL DEFAULT clock_timestamp(), applied_at timestamptz)"
    );
    legacy
        .batch_execute(&table)
        .await
        .unwrap_or_else(|e| panic!("{table}: {e}"));
    let sub = format!(
        "{table};
         CREATE FUNCTION {MARKER_TABLE}_applied() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN NEW.applied_at := clock_timestamp(); RETURN NEW; END $$;
         CREATE TRIGGER {MARKER_TABLE}_applied BEFORE INSERT ON {MARKER_TABLE}
           FOR EACH ROW EXECUTE FUNCTION {MARKER_TABLE}_applied();
         ALTER TABLE {MARKER_TABLE} ENABLE ALWAYS TRIGGER {MARKER_TABLE}_applied;"
    );
    subscriber
        .batch_execute(&sub)
        .await
        .unwrap_or_else(|e| panic!("marker table on the subscriber: {e}"));
}

/// Inserts one marker row on the legacy database (its own transaction).
pub async fn send_marker(legacy: &Client) {
    legacy
        .batch_execute(&format!("INSERT INTO {MARKER_TABLE} DEFAULT VALUES"))
        .await
        .unwrap_or_else(|e| panic!("marker insert: {e}"));
}

/// Apply latencies in seconds of the markers after id `after`, sorted.
pub async fn marker_latencies(subscriber: &Client, after: i64) -> Vec<f64> {
    let mut v: Vec<f64> = subscriber
        .query(
            &format!(
                "SELECT extract(epoch FROM applied_at - sent_at)::float8 FROM {MARKER_TABLE}
                  WHERE id > $1 AND applied_at IS NOT NULL"
            ),
            &[&after],
        )
        .await
        .unwrap_or_else(|e| panic!("reading marker latencies: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The highest marker id so far on the legacy database.
pub async fn last_marker(legacy: &Client) -> i64 {
    legacy
        .query_one(
            &format!("SELECT coalesce(max(id), 0)::bigint FROM {MARKER_TABLE}"),
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("reading the last marker: {e}"))
}
