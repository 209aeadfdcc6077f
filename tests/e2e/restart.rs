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
