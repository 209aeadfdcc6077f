//! The cutover flag: `phase = "cutover"` written into the live config (as a ConfigMap
//! update would) drains the pipeline to the legacy's current position, validates foreign
//! keys, verifies, and reports `cutover_ready` — in `rekey.status`, the
//! `rekey_cutover_phase` gauge and `rekeyctl status`. A legacy write after the cutover
//! point raises the alarm and is still applied. `phase = "replicate"` goes back.

use std::time::Duration;

use rekey_tests::scrape::{scrape, sum};
use rekey_tests::{wait_until, Pipeline, Service};

#[tokio::test(flavor = "multi_thread")]
async fn the_cutover_flag_drains_verifies_and_alarms_on_late_legacy_writes() {
    let mut p = Pipeline::new().await;
    p.start().await;
    let mut legacy = p.legacy_client().await;
    let mut w = rekey_workload::Workload::new(17);
    let opts = rekey_workload::RunOptions {
        txns: Some(300),
        duration: None,
        rate_per_sec: None,
    };
    w.run(&mut legacy, opts).await.expect("workload");

    // The application stops writing to legacy; the operator flips the flag.
    p.set_phase("cutover");
    wait_until("cutover_ready", Duration::from_secs(90), || async {
        p.cutover_state().await.as_deref() == Some("cutover_ready")
    })
    .await;
    let t = p.target_client().await;
    let row = t
        .query_one(
            "SELECT cutover_lsn, drain_seconds, legacy_writes_after_cutover FROM rekey.status",
            &[],
        )
        .await
        .unwrap();
    let (point, drain, late): (i64, f64, i64) = (row.get(0), row.get(1), row.get(2));
    let applied: i64 = t
        .query_one("SELECT max(end_lsn) FROM rekey.checkpoint", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        applied >= point,
        "the consistent position {applied} reached the cutover point {point}"
    );
    assert!(drain >= 0.0 && late == 0);
    let metrics = scrape(p.reader_metrics).await;
    assert_eq!(
        sum(&metrics, "rekey_cutover_phase{phase=\"cutover_ready\"}"),
        1.0,
        "{metrics:?}"
    );
    assert_eq!(
        sum(&metrics, "rekey_cutover_phase{phase=\"replicating\"}"),
        0.0
    );
    let mut status = Service::spawn(
        "rekeyctl",
        &["--config", &p.config_arg(), "status", "--json"],
        &p.env(),
    );
    assert!(status
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits")
        .success());
    assert!(
        status.output().contains("\"state\":\"cutover_ready\""),
        "{}",
        status.output()
    );

    // A straggler writes to legacy after the cutover point: alarm, and still applied.
    p.legacy_sql("INSERT INTO prompt_labs (lab_id, name) VALUES ('late', 'written after cutover')")
        .await;
    let reader = p.reader.as_ref().unwrap();
    assert!(
        reader
            .wait_for_output(
                "legacy write after the cutover point",
                Duration::from_secs(30)
            )
            .await
    );
    wait_until("the alarm metric", Duration::from_secs(15), || async {
        sum(
            &scrape(p.reader_metrics).await,
            "rekey_cutover_legacy_writes_after_cutover_total",
        ) >= 1.0
    })
    .await;
    p.assert_converged().await;
    assert_eq!(
        p.target_value("SELECT legacy_writes_after_cutover::text FROM rekey.status")
            .await
            .as_deref(),
        Some("1")
    );

    // Back to replicate, this time with SIGHUP instead of waiting for the file poll.
    p.set_phase("replicate");
    std::process::Command::new("kill")
        .args(["-HUP", &p.reader.as_ref().unwrap().pid().to_string()])
        .status()
        .unwrap();
    wait_until("replicating again", Duration::from_secs(30), || async {
        p.cutover_state().await.as_deref() == Some("replicating")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_config_update_keeps_the_running_phase() {
    let mut p = Pipeline::new().await;
    p.start().await;
    let text = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(&p.config_path, format!("phase = \"cutovr\"\n{text}")).unwrap();
    let reader = p.reader.as_ref().unwrap();
    assert!(
        reader
            .wait_for_output(
                "config reload failed; keeping the running phase",
                Duration::from_secs(30)
            )
            .await
    );
    assert!(
        reader.output().contains("cutovr"),
        "the error names the bad value"
    );
    assert!(!reader.output().contains("phase changed"));
    std::fs::write(&p.config_path, text).unwrap();
    p.legacy_sql("INSERT INTO prompt_labs (lab_id, name) VALUES ('still', 'streaming')")
        .await;
    p.assert_converged().await;
}
