//! Restarts lose and duplicate nothing: the reader and the writer are killed with
//! SIGKILL in the middle of a live workload and started again; after the workload the
//! target equals the legacy store, row for row. A SIGTERM stops both cleanly (exit 0).

use std::time::Duration;

use rekey_tests::scrape::{scrape, sum};
use rekey_tests::{wait_until, Pipeline};

#[tokio::test(flavor = "multi_thread")]
async fn killing_reader_and_writer_mid_stream_loses_and_duplicates_nothing() {
    let mut p = Pipeline::new().await;
    p.start().await;
    let mut legacy = p.legacy_client().await;
    let workload = tokio::spawn(async move {
        let mut w = rekey_workload::Workload::new(11);
        let opts = rekey_workload::RunOptions {
            txns: None,
            duration: Some(Duration::from_secs(12)),
            rate_per_sec: Some(150.0),
        };
        w.run(&mut legacy, opts).await
    });

    for round in 0..2 {
        // Let some changes through, then kill -9 the reader.
        let applied_before = applied(&p).await;
        wait_until("changes to flow", Duration::from_secs(30), || async {
            applied(&p).await > applied_before + 50.0
        })
        .await;
        p.reader.as_mut().unwrap().kill9();
        tokio::time::sleep(Duration::from_millis(300 + 400 * round)).await;
        p.start_reader();
        p.wait_streaming().await;
        // And the writer.
        let applied_before = applied(&p).await;
        wait_until("changes to flow", Duration::from_secs(30), || async {
            applied(&p).await > applied_before + 50.0
        })
        .await;
        p.writer.as_mut().unwrap().kill9();
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.start_writer();
    }
    let stats = workload.await.unwrap().expect("workload");
    assert!(
        stats.committed > 500,
        "the workload committed {} transactions",
        stats.committed
    );
    p.assert_converged().await;

    // Nothing was applied twice in effect: every legacy row is exactly once in the target
    // (assert_converged compares as sets over a primary key) and the target holds no live
    // row the legacy store does not have.
    let (legacy, target) = (p.legacy_client().await, p.target_client().await);
    for t in rekey_workload::TABLES
        .iter()
        .filter(|t| **t != "prompt_flow_steps")
    {
        let l: i64 = legacy
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        let n: i64 = target
            .query_one(
                &format!("SELECT count(*) FROM {t} WHERE deleted_at IS NULL"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(l, n, "{t}: live rows");
    }

    // A clean stop.
    for s in [p.reader.as_mut().unwrap(), p.writer.as_mut().unwrap()] {
        s.sigterm();
    }
    for s in [p.reader.as_mut().unwrap(), p.writer.as_mut().unwrap()] {
        let status = s
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("stopped within 30s");
        assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    }
}

async fn applied(p: &Pipeline) -> f64 {
    sum(
        &scrape(p.writer_metrics).await,
        "rekey_writer_events_applied_total",
    )
}

/// The partition's high watermark (the next offset the broker will assign).
fn high_watermark(p: &Pipeline) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", p.broker.bootstrap())
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(&p.config().kafka.topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    high
}

async fn wait_published_past(p: &Pipeline, offset: i64) {
    wait_until(
        &format!("the reader published past offset {offset}"),
        Duration::from_secs(60),
        || async { high_watermark(p) > offset },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_behind_the_topics_retention_stops_instead_of_skipping_changes() {
    let mut p = Pipeline::new().await;
    // The topic as an operator might have made it: changes kept for one second.
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", p.broker.bootstrap())
            .create()
            .expect("admin");
        let topic = p.config().kafka.topic.clone();
        let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "delete")
            .set("retention.ms", "1000");
        let created = admin
            .create_topics([&new], &AdminOptions::new())
            .await
            .expect("create topic");
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    }
    p.start().await;
    for service in [&p.reader, &p.writer] {
        let warned = service
            .as_ref()
            .unwrap()
            .wait_for_output(
                "the broker deletes changes older than 1 s",
                Duration::from_secs(10),
            )
            .await;
        assert!(warned, "a warning names the topic's retention at start");
    }
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'applied')")
        .await;
    p.assert_converged().await;

    let mut writer = p.writer.take().unwrap();
    writer.sigterm();
    writer
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("writer stops");
    let before = high_watermark(&p);
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (2, 'b', 'never applied')")
        .await;
    wait_published_past(&p, before).await;
    // Older than the retention; tansu enforces it when it starts (then every 10 minutes).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.broker.restart().await;
    let before = high_watermark(&p);
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (3, 'c', 'after')")
        .await;
    wait_published_past(&p, before).await;

    let (code, line) = p.service_error("rekey-writer", p.env()).await;
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("missing them") && line.contains("retention.ms"),
        "{line}"
    );
    let lab2 = p
        .target_value("SELECT name FROM prompt_labs WHERE legacy_id = 3")
        .await;
    assert_eq!(lab2, None, "nothing after the gap was applied");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_the_server_invalidated_stops_the_reader_instead_of_streaming_on() {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'applied')")
        .await;
    p.assert_converged().await;
    let mut reader = p.reader.take().unwrap();
    reader.sigterm();
    reader
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("reader stops");

    // The reader is away while the legacy database writes more WAL than the slot may keep.
    invalidate_slot(&p).await;

    let (code, line) = p.service_error("rekey-reader", p.env()).await;
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("was invalidated") && line.contains("max_slot_wal_keep_size"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_invalidated_while_the_broker_is_down_stops_the_streaming_reader() {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'applied')")
        .await;
    p.assert_converged().await;

    // The broker goes away: the reader streams on but cannot confirm anything, so the
    // slot keeps the WAL from here, until the server gives up on it.
    p.broker.kill();
    invalidate_slot(&p).await;

    // The server ended the reader's stream; the reader must not wait for the broker and
    // stream on from a slot with changes missing.
    let reader = p.reader.as_mut().unwrap();
    let status = reader
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("the reader stops by itself");
    let out = reader.output();
    assert_eq!(status.code(), Some(2), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("rekey-reader: error: "))
        .unwrap_or_else(|| panic!("one error line:\n{out}"));
    assert!(
        line.contains("was invalidated") && line.contains("max_slot_wal_keep_size"),
        "{line}"
    );
}

/// Has the legacy server invalidate rekey's slot: it may keep 1 MB of WAL, and gets four
/// WAL segments and a checkpoint (nothing confirms them meanwhile).
async fn invalidate_slot(p: &Pipeline) {
    let legacy = p.legacy_client().await;
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
    ] {
        legacy.batch_execute(sql).await.unwrap();
    }
    for i in 2..6 {
        legacy
            .batch_execute(&format!(
                "INSERT INTO prompt_labs (id, lab_id, name) VALUES ({i}, 'x{i}', 'lost'); \
                 SELECT pg_switch_wal();"
            ))
            .await
            .unwrap();
    }
    legacy.batch_execute("CHECKPOINT").await.unwrap();
    let status: Option<String> = legacy
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&p.config().source.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        status.as_deref(),
        Some("lost"),
        "the server invalidated the slot"
    );
}
