//! A real Prometheus server (Debian's, extracted by `make deploy-tools`) scrapes the running
//! reader and writer and evaluates `deploy/prometheus/rules.yaml`: both targets are up, the
//! rekey series are queryable with the job labels the rules match on, every rule group loads
//! and evaluates without error, no alert is active during a healthy run (nor after the
//! cutover flag reaches `cutover_ready`), and a legacy write after the cutover point makes
//! `RekeyLegacyWriteAfterCutover` fire — end to end, from the real metrics.
//!
//! The server is found at `$REKEY_PROMETHEUS`, in `target/deploy-tools/bin/`, or on PATH.
//! Its HTTP API is read over plain HTTP/1.0, like `rekey_tests::scrape`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rekey_tests::{free_port, wait_until, Pipeline, Service};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALERT: &str = "RekeyLegacyWriteAfterCutover";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The Prometheus server binary; panics with what to do when there is none.
fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REKEY_PROMETHEUS") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "REKEY_PROMETHEUS={} is not a file",
            p.display()
        );
        return p;
    }
    let mut candidates = vec![workspace().join("target/deploy-tools/bin/prometheus")];
    // A CARGO_TARGET_DIR elsewhere: target/<profile>/deps/<this test>.
    if let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
    {
        candidates.push(target.join("deploy-tools/bin/prometheus"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("prometheus")));
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|p| seen.insert(p.clone()));
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => p.clone(),
        None => panic!(
            "no Prometheus server binary: run `make deploy-tools` (it extracts /usr/bin/prometheus \
             from Debian's prometheus package into target/deploy-tools/bin), or set \
             REKEY_PROMETHEUS; looked at {}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `GET path` over HTTP/1.0: (status, body), or None when unreachable.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The `data` of a successful Prometheus API answer.
async fn api(port: u16, path: &str) -> Option<Value> {
    let (status, body) = http_get(port, path).await?;
    let v: Value = serde_json::from_str(&body).ok()?;
    (status == 200 && v["status"] == "success").then(|| v["data"].clone())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query that returns one sample; None when it returns none.
async fn query_one(port: u16, expr: &str) -> Option<f64> {
    let data = api(port, &format!("/api/v1/query?query={}", urlencode(expr))).await?;
    data["result"].as_array()?.first()?["value"][1]
        .as_str()?
        .parse()
        .ok()
}

/// The active (pending or firing) rekey alerts: (name, state, labels).
async fn rekey_alerts(port: u16) -> Option<Vec<(String, String, Value)>> {
    let data = api(port, "/api/v1/alerts").await?;
    Some(
        data["alerts"]
            .as_array()?
            .iter()
            .filter_map(|a| {
                let name = a["labels"]["alertname"].as_str()?;
                name.starts_with("Rekey").then(|| {
                    (
                        name.to_string(),
                        a["state"].as_str().unwrap_or("").to_string(),
                        a["labels"].clone(),
                    )
                })
            })
            .collect(),
    )
}

/// Panics when a rekey alert fires; true when none is active at all.
async fn silent(port: u16, when: &str) -> bool {
    let Some(alerts) = rekey_alerts(port).await else {
        return false;
    };
    let firing: Vec<_> = alerts.iter().filter(|a| a.1 == "firing").collect();
    assert!(firing.is_empty(), "alerts firing {when}: {firing:?}");
    alerts.is_empty()
}

/// The rule groups and the alerting rules in `rules.yaml` (its simple layout: one
/// `- name:` per group, one `- alert:` per rule).
fn rules_in_file(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut groups, mut alerts) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        if let Some(g) = line.strip_prefix("- name:") {
            groups.push(g.trim().trim_matches('"').to_string());
        } else if let Some(a) = line.strip_prefix("- alert:") {
            alerts.push(a.trim().trim_matches('"').to_string());
        }
    }
    (groups, alerts)
}

/// Every loaded rule group: (group, rule, health, lastError, lastEvaluation).
async fn loaded_rules(port: u16) -> Option<Vec<(String, String, String, String, String)>> {
    let data = api(port, "/api/v1/rules").await?;
    let mut out = Vec::new();
    for g in data["groups"].as_array()? {
        for r in g["rules"].as_array()? {
            out.push((
                g["name"].as_str()?.to_string(),
                r["name"].as_str()?.to_string(),
                r["health"].as_str().unwrap_or("").to_string(),
                r["lastError"].as_str().unwrap_or("").to_string(),
                r["lastEvaluation"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    Some(out)
}

/// The latest evaluation time of the rekey rule group (RFC 3339 text, sorts by time).
async fn last_evaluation(port: u16) -> Option<String> {
    let data = api(port, "/api/v1/rules").await?;
    data["groups"]
        .as_array()?
        .iter()
        .filter_map(|g| g["lastEvaluation"].as_str().map(str::to_string))
        .max()
}

/// Waits until the rules have been evaluated again after now (on what was just scraped).
async fn wait_next_evaluation(port: u16) {
    let before = last_evaluation(port).await.unwrap_or_default();
    wait_until("a new rule evaluation", Duration::from_secs(15), || {
        let before = before.clone();
        async move {
            last_evaluation(port)
                .await
                .is_some_and(|t| t.as_str() > before.as_str())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_services_and_evaluates_the_rules() {
    let bin = prometheus_bin();
    let rules_path = workspace()
        .join("deploy/prometheus/rules.yaml")
        .canonicalize()
        .expect("deploy/prometheus/rules.yaml");
    let (groups, alerts) = rules_in_file(&std::fs::read_to_string(&rules_path).unwrap());
    assert!(!groups.is_empty() && alerts.contains(&ALERT.to_string()));

    let mut p = Pipeline::new().await;
    p.start().await;

    // The job names are the Services' (rekey-reader, rekey-writer): the rules match on them.
    let dir = p.dir().join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: rekey-reader
    static_configs:
      - targets: ["127.0.0.1:{reader}"]
        labels: {{component: reader}}
  - job_name: rekey-writer
    static_configs:
      - targets: ["127.0.0.1:{writer}"]
        labels: {{component: writer}}
"#,
        rules = serde_json::to_string(&rules_path.display().to_string()).unwrap(),
        reader = p.reader_metrics,
        writer = p.writer_metrics,
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let prometheus = Service::spawn(
        &bin.display().to_string(),
        &[
            &format!("--config.file={}", config_path.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
    );
    wait_until(
        "Prometheus to be ready",
        Duration::from_secs(30),
        || async { matches!(http_get(port, "/-/ready").await, Some((200, _))) },
    )
    .await;

    // Both targets scraped.
    wait_until("both targets up", Duration::from_secs(20), || async {
        let Some(data) = api(port, "/api/v1/targets").await else {
            return false;
        };
        let targets = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        targets.len() == 2
            && targets.iter().all(|t| t["health"] == "up")
            && ["rekey-reader", "rekey-writer"]
                .iter()
                .all(|job| targets.iter().any(|t| t["labels"]["job"] == *job))
    })
    .await;

    // Every rule group of rules.yaml loaded, every rule evaluated without error.
    wait_until(
        "every rule loaded and evaluated",
        Duration::from_secs(20),
        || async {
            let Some(loaded) = loaded_rules(port).await else {
                return false;
            };
            for (g, r, health, err, _) in &loaded {
                assert!(
                    health != "err" && err.is_empty(),
                    "rule {g}/{r} failed to evaluate: {err}"
                );
            }
            groups.iter().all(|g| loaded.iter().any(|l| &l.0 == g))
                && alerts.iter().all(|a| loaded.iter().any(|l| &l.1 == a))
                && loaded.len() == alerts.len()
                && loaded
                    .iter()
                    .all(|l| l.2 == "ok" && !l.4.starts_with("0001-"))
        },
    )
    .await;

    // A workload; its effect is queryable in Prometheus with the labels of the scrape.
    let mut legacy = p.legacy_client().await;
    let mut w = rekey_workload::Workload::new(5);
    let opts = rekey_workload::RunOptions {
        txns: Some(200),
        duration: None,
        rate_per_sec: None,
    };
    w.run(&mut legacy, opts).await.expect("workload");
    wait_until(
        "rekey series in Prometheus",
        Duration::from_secs(30),
        || async {
            query_one(
                port,
                r#"sum(rekey_writer_events_applied_total{job="rekey-writer",component="writer"})"#,
            )
            .await
            .is_some_and(|v| v > 0.0)
                && query_one(
                    port,
                    r#"sum(rekey_reader_events_read_total{job="rekey-reader",component="reader"})"#,
                )
                .await
                .is_some_and(|v| v > 0.0)
                && query_one(port, "count(rekey_up == 1)").await == Some(2.0)
        },
    )
    .await;

    // A healthy run: nothing active (RekeyDown may be pending for the instant before the
    // first scrape), and still nothing after a new evaluation on the workload's data.
    wait_until("no active alert", Duration::from_secs(20), || {
        silent(port, "during a healthy run")
    })
    .await;
    wait_next_evaluation(port).await;
    assert!(silent(port, "during a healthy run").await);

    // The cutover flag: drained and verified, still silent.
    p.set_phase("cutover");
    wait_until("cutover_ready", Duration::from_secs(60), || async {
        p.cutover_state().await.as_deref() == Some("cutover_ready")
    })
    .await;
    wait_until(
        "the cutover_ready phase in Prometheus",
        Duration::from_secs(15),
        || async {
            query_one(port, r#"rekey_cutover_phase{phase="cutover_ready"}"#).await == Some(1.0)
        },
    )
    .await;
    wait_next_evaluation(port).await;
    assert!(silent(port, "at cutover_ready").await);

    // A legacy write after the cutover point: the alert becomes active in Prometheus.
    p.legacy_sql("INSERT INTO prompt_labs (lab_id, name) VALUES ('late', 'written after cutover')")
        .await;
    let is_active = |alerts: &[(String, String, Value)]| {
        alerts
            .iter()
            .any(|(name, st, _)| name == ALERT && (st == "pending" || st == "firing"))
    };
    wait_until(
        &format!("{ALERT} pending or firing"),
        Duration::from_secs(30),
        || async { rekey_alerts(port).await.is_some_and(|a| is_active(&a)) },
    )
    .await;
    let active = rekey_alerts(port).await.unwrap_or_default();
    assert!(is_active(&active), "{active:?}");
    let (_, st, labels) = active.iter().find(|a| a.0 == ALERT).unwrap();
    assert_eq!(labels["severity"], "critical", "{labels}");
    assert_eq!(labels["job"], "rekey-reader", "{labels}");
    assert!(
        active.iter().all(|a| a.0 == ALERT),
        "only {ALERT} is active: {active:?}"
    );
    eprintln!("{ALERT} is {st}: {labels}");
    drop(prometheus);
}
