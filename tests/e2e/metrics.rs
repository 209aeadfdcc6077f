//! Each service serves `/metrics`, `/healthz` and `/readyz`; the documented metrics exist
//! during a run, and the lag falls back to zero once the workload stops.

use std::time::Duration;

use rekey_tests::scrape::{scrape, sum};
use rekey_tests::{wait_until, Pipeline};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

const READER: &[&str] = &[
    "rekey_reader_events_read_total",
    "rekey_reader_transactions_total",
    "rekey_reader_messages_published_total",
    "rekey_reader_events_published_total",
    "rekey_reader_published_bytes_total",
    "rekey_reader_confirmed_lsn",
    "rekey_source_lag_bytes",
    "rekey_source_slot_retained_wal_bytes",
    "rekey_cutover_phase",
    "rekey_up",
];
const WRITER: &[&str] = &[
    "rekey_writer_events_applied_total",
    "rekey_writer_transactions_applied_total",
    "rekey_writer_consistent_lsn",
    "rekey_writer_lag_seconds",
    "rekey_writer_batch_changes_bucket",
    "rekey_writer_end_to_end_latency_seconds_bucket",
    "rekey_writer_consumer_lag_messages",
    "rekey_up",
];

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_lag_back_to_zero() {
    let mut p = Pipeline::new().await;
    p.start().await;
    for port in [p.reader_metrics, p.writer_metrics] {
        assert!(get(port, "/healthz").await.starts_with("HTTP/1.1 200"));
        wait_until("ready", Duration::from_secs(30), || async move {
            get(port, "/readyz").await.starts_with("HTTP/1.1 200")
        })
        .await;
        assert!(get(port, "/nope").await.starts_with("HTTP/1.1 404"));
    }
    let mut legacy = p.legacy_client().await;
    let workload = tokio::spawn(async move {
        let mut w = rekey_workload::Workload::new(3);
        let opts = rekey_workload::RunOptions {
            txns: None,
            duration: Some(Duration::from_secs(6)),
            rate_per_sec: Some(200.0),
        };
        w.run(&mut legacy, opts).await
    });
    // During the run, every documented series is there (the source lag is sampled every 5s).
    wait_until(
        "every documented metric",
        Duration::from_secs(30),
        || async {
            let (r, w) = (
                scrape(p.reader_metrics).await,
                scrape(p.writer_metrics).await,
            );
            READER.iter().all(|m| r.keys().any(|k| k.starts_with(m)))
                && WRITER.iter().all(|m| w.keys().any(|k| k.starts_with(m)))
        },
    )
    .await;
    let w = scrape(p.writer_metrics).await;
    assert!(sum(&w, "rekey_writer_events_applied_total") > 0.0);
    workload.await.unwrap().expect("workload");
    p.assert_converged().await;
    wait_until(
        "the lag to fall back to zero",
        Duration::from_secs(30),
        || async {
            let (r, w) = (
                scrape(p.reader_metrics).await,
                scrape(p.writer_metrics).await,
            );
            sum(&w, "rekey_writer_lag_seconds") == 0.0
            && sum(&w, "rekey_writer_consumer_lag_messages") == 0.0
            // What is left of the source lag is the last heartbeat's own WAL.
            && sum(&r, "rekey_source_lag_bytes") < 64.0 * 1024.0
        },
    )
    .await;
}
