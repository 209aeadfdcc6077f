//! The control CLI and the service flags a platform team uses: `rekeyctl resolve` in
//! both directions (API teams keeping old URLs working), `rekeyctl status --json`, and
//! `--log-format json` for Kubernetes log pipelines.

use std::time::Duration;

use rekey_tests::{Pipeline, Service};

async fn rekeyctl(p: &Pipeline, args: &[&str]) -> (bool, String) {
    let config = p.config_arg();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    let mut s = Service::spawn("rekeyctl", &all, &p.env());
    let status = s
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("rekeyctl exits");
    (status.success(), s.output())
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_maps_legacy_keys_and_uuids_both_ways() {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (42, 'l42', 'lab')")
        .await;
    p.assert_converged().await;
    let uuid = p.uuid("prompt_labs", 42);

    let (ok, out) = rekeyctl(&p, &["resolve", "prompt_labs", "42"]).await;
    assert!(ok && out.trim() == uuid, "legacy key → UUID: {out}");
    let (ok, out) = rekeyctl(&p, &["resolve", &uuid]).await;
    assert!(
        ok && out.trim() == "public.prompt_labs 42",
        "UUID → table and legacy key: {out}"
    );
    let unknown = p.uuid("prompt_labs", 4242);
    let (ok, out) = rekeyctl(&p, &["resolve", &unknown]).await;
    assert!(!ok && out.contains("is not the id of any row"), "{out}");

    let (ok, out) = rekeyctl(&p, &["status", "--json"]).await;
    assert!(ok, "{out}");
    let status: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(status["phase"], "replicate");
    assert_eq!(status["state"], "replicating");
    assert_eq!(status["backfill"].as_array().map(Vec::len), Some(9));
    assert!(
        status["consistent_lsn"].is_string() && status["lag_bytes"].is_number(),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let p = Pipeline::new().await;
    let mut env = p.env();
    env.push((
        "REKEY_METRICS_ADDR",
        format!("127.0.0.1:{}", p.reader_metrics),
    ));
    let mut reader = Service::spawn(
        "rekey-reader",
        &["--config", &p.config_arg(), "--log-format", "json"],
        &env,
    );
    assert!(
        reader
            .wait_for_output("streaming", Duration::from_secs(60))
            .await
    );
    reader.sigterm();
    assert!(reader
        .wait_exit(Duration::from_secs(50))
        .await
        .expect("exits")
        .success());
    let out = reader.output();
    let logs: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(logs.len() >= 3, "{out}");
    assert!(logs
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string() && l["message"].is_string()));
    assert!(
        logs.iter()
            .any(|l| l["message"] == "streaming" && l["slot"] == "rekey_promptstudio"),
        "{out}"
    );
}
