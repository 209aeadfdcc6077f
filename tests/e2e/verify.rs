//! `rekeyctl verify`: a faithful migration verifies clean (exit 0); differences planted
//! in the target — a changed value, a missing row, a wrong foreign key, extra rows, a
//! wrong soft delete, a live child of a soft-deleted parent — are each named by table and
//! key (exit 1); a database of many chunks is paged in bounded chunks, and differences
//! that are only replication lag are re-checked away once the target catches up.

use std::path::Path;
use std::time::Duration;

use rekey_tests::{Pipeline, Service};
use serde_json::Value;
use tokio_postgres::Client;

/// Runs `rekeyctl verify` with `args`; its exit code and everything it printed.
async fn run_verify(p: &Pipeline, args: &[&str]) -> (Option<i32>, String) {
    let mut verify = spawn_verify(p, args);
    let status = verify
        .wait_exit(Duration::from_secs(240))
        .await
        .expect("verify finished within 240s");
    (status.code(), verify.output())
}

fn spawn_verify(p: &Pipeline, args: &[&str]) -> Service {
    let config = p.config_arg();
    let mut all = vec!["verify", "--config", config.as_str()];
    all.extend_from_slice(args);
    Service::spawn("rekeyctl", &all, &p.env())
}

/// The JSON report: the line of `output` that is the report (`--json -`).
fn json_line(output: &str) -> Value {
    let line = output
        .lines()
        .find(|l| l.starts_with("{\"clean\":"))
        .unwrap_or_else(|| panic!("no JSON report in:\n{output}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn table<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == format!("public.{name}"))
        .unwrap_or_else(|| panic!("no {name} in {report:#}"))
}

fn differences(t: &Value) -> Vec<String> {
    t["first_differences"]
        .as_array()
        .expect("first_differences")
        .iter()
        .map(|d| d.as_str().expect("a string").to_string())
        .collect()
}

/// Per table, the live row counts agree with the differences: every legacy row is a
/// live target row unless missing or wrongly deleted, every other live row is extra.
fn assert_counts_agree(report: &Value) {
    for t in report["tables"].as_array().expect("tables") {
        let n = |f: &str| t[f].as_u64().unwrap_or_else(|| panic!("{f} in {t:#}"));
        assert_eq!(
            n("legacy_rows") - n("missing") - n("wrongly_deleted") + n("extra"),
            n("target_live_rows"),
            "{t:#}"
        );
    }
}

async fn one(c: &Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_faithful_migration_verifies_clean_and_every_planted_difference_is_named() {
    let mut p = Pipeline::new().await;
    p.start().await;
    let mut legacy = p.legacy_client().await;
    let stats = rekey_workload::Workload::new(23)
        .run(
            &mut legacy,
            rekey_workload::RunOptions {
                txns: Some(300),
                ..Default::default()
            },
        )
        .await
        .expect("workload");
    assert!(stats.committed > 200, "{} committed", stats.committed);
    p.assert_converged().await;

    let (code, out) = run_verify(&p, &["--json", "-"]).await;
    assert_eq!(
        code,
        Some(0),
        "a converged migration verifies clean:\n{out}"
    );
    let report = json_line(&out);
    assert_eq!(report["clean"], true, "{report:#}");
    assert_eq!(report["tables"].as_array().unwrap().len(), 9);
    assert_counts_agree(&report);
    let executions = table(&report, "prompt_executions");
    let legacy_executions: i64 = legacy
        .query_one("SELECT count(*) FROM prompt_executions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(executions["legacy_rows"], legacy_executions);
    assert_eq!(executions["target_live_rows"], legacy_executions);
    assert!(
        out.contains("verify public.prompt_executions: done,"),
        "{out}"
    );

    // Stop the writer so nothing repairs what we break, then break the target.
    let writer = p.writer.as_mut().unwrap();
    writer.sigterm();
    writer
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("writer stopped");
    let t = p.target_client().await;
    let live = "deleted_at IS NULL";
    let template = one(&t, &format!(
        "UPDATE prompt_templates SET name = name || ' (edited in the target)'
          WHERE legacy_id = (SELECT min(legacy_id) FROM prompt_templates WHERE {live}) RETURNING legacy_id::text"
    ))
    .await;
    let execution = one(&t, &format!(
        "DELETE FROM prompt_executions WHERE legacy_id = (SELECT max(legacy_id) FROM prompt_executions WHERE {live})
         RETURNING legacy_id::text"
    ))
    .await;
    let library = one(&t, &format!(
        "UPDATE prompt_libraries l SET prompt_lab_id = (SELECT id FROM prompt_labs WHERE {live} AND id <> l.prompt_lab_id LIMIT 1)
          WHERE legacy_id = (SELECT min(legacy_id) FROM prompt_libraries WHERE {live}) RETURNING legacy_id::text"
    ))
    .await;
    let variable = one(&t, &format!(
        "UPDATE prompt_variables SET deleted_at = now()
          WHERE legacy_id = (SELECT min(legacy_id) FROM prompt_variables WHERE {live}) RETURNING legacy_id::text"
    ))
    .await;
    // A flow soft-deleted under its live executions: wrongly deleted, and its children dangle.
    let flow = one(&t, &format!(
        "UPDATE prompt_flows SET deleted_at = now()
          WHERE id = (SELECT prompt_flow_id FROM flow_executions WHERE {live} ORDER BY legacy_id LIMIT 1)
          RETURNING legacy_id::text"
    ))
    .await;
    let extra_execution = one(&t, &format!(
        "INSERT INTO flow_executions (id, legacy_id, prompt_flow_id, status, started_at, row_version)
         SELECT gen_random_uuid(), 900000001, id, 'pending', now(), 1 FROM prompt_flows WHERE {live} LIMIT 1
         RETURNING id::text"
    ))
    .await;
    // The junction table: one row gone, one row legacy never had.
    let missing_step = one(
        &t,
        "WITH victim AS (
             SELECT s.prompt_flow_id, s.position, f.legacy_id FROM prompt_flow_steps s
               JOIN prompt_flows f ON f.id = s.prompt_flow_id
              WHERE f.deleted_at IS NULL ORDER BY f.legacy_id, s.position LIMIT 1)
         DELETE FROM prompt_flow_steps s USING victim v
          WHERE s.prompt_flow_id = v.prompt_flow_id AND s.position = v.position
          RETURNING 'prompt_flow_id=' || v.legacy_id || ' position=' || s.position",
    )
    .await;
    let extra_step_flow = one(
        &t,
        &format!(
        "INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id, row_version)
         SELECT f.id, 9999, (SELECT id FROM prompt_templates WHERE {live} LIMIT 1), 1
           FROM prompt_flows f WHERE f.{live} ORDER BY f.legacy_id DESC LIMIT 1
         RETURNING (SELECT legacy_id::text FROM prompt_flows WHERE id = prompt_flow_id)"
    ),
    )
    .await;

    let json = p.dir().join("verify.json");
    let json_arg = json.display().to_string();
    let (code, out) = run_verify(&p, &["--json", &json_arg, "--settle-timeout", "2"]).await;
    assert_eq!(code, Some(1), "differences exit 1:\n{out}");
    assert!(
        out.contains("re-checking"),
        "differences are re-checked:\n{out}"
    );
    let report = json_file(&json);
    assert_eq!(report["clean"], false);
    assert_counts_agree(&report);

    let expect = |name: &str, field: &str, n: u64, label: &str| {
        let t = table(&report, name);
        assert_eq!(t[field], n, "{name}.{field} in {t:#}");
        let diffs = differences(t);
        assert!(
            diffs.iter().any(|d| d == label),
            "{name}: expected {label:?} in {diffs:#?}"
        );
        assert!(
            out.contains(label),
            "the text report names {label:?}:\n{out}"
        );
    };
    expect(
        "prompt_templates",
        "mismatched",
        1,
        &format!("mismatch legacy_id={template} column name"),
    );
    expect(
        "prompt_executions",
        "missing",
        1,
        &format!("missing legacy_id={execution}"),
    );
    expect(
        "prompt_libraries",
        "mismatched",
        1,
        &format!("mismatch legacy_id={library} column prompt_lab_id"),
    );
    expect(
        "prompt_variables",
        "wrongly_deleted",
        1,
        &format!("wrongly_deleted legacy_id={variable}"),
    );
    expect(
        "prompt_flows",
        "wrongly_deleted",
        1,
        &format!("wrongly_deleted legacy_id={flow}"),
    );
    expect(
        "flow_executions",
        "extra",
        1,
        &format!("extra id={extra_execution} legacy_id=900000001"),
    );
    expect(
        "prompt_flow_steps",
        "missing",
        1,
        &format!("missing {missing_step}"),
    );
    expect(
        "prompt_flow_steps",
        "extra",
        1,
        &format!("extra prompt_flow_id={extra_step_flow} position=9999"),
    );
    let fe = table(&report, "flow_executions");
    assert!(fe["dangling_fks"].as_u64().unwrap() >= 1, "{fe:#}");
    assert!(
        differences(fe)
            .iter()
            .any(|d| d.starts_with("dangling prompt_flow_id legacy_id=")
                && d.ends_with("(parent soft-deleted)")),
        "{fe:#}"
    );
    // Nothing else is reported.
    for name in ["prompt_labs", "variable_collections"] {
        assert_eq!(table(&report, name)["clean"], true, "{report:#}");
    }
    for (name, field) in [
        ("prompt_templates", "missing"),
        ("prompt_executions", "mismatched"),
        ("prompt_libraries", "extra"),
    ] {
        assert_eq!(table(&report, name)[field], 0, "{name}.{field}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seeded_database_is_verified_in_bounded_chunks_and_lag_is_rechecked_away() {
    let mut p = Pipeline::new().await;
    p.start().await;
    let mut legacy = p.legacy_client().await;
    let seeded = rekey_workload::seed(&legacy, 0.05, 1).await.expect("seed");
    // Rows that existed before the slot only arrive with backfill; touch every row so the
    // stream carries all of them (content || '' forces TOASTed values through).
    legacy
        .batch_execute(
            "UPDATE prompt_labs SET name = name; UPDATE prompt_libraries SET name = name;
             UPDATE prompt_templates SET name = name, content = content || ''; UPDATE prompt_variables SET name = name;
             UPDATE variable_collections SET name = name; UPDATE prompt_executions SET model = model;
             UPDATE prompt_flows SET name = name; UPDATE prompt_flow_steps SET position = position;
             UPDATE flow_executions SET status = status; ANALYZE;",
        )
        .await
        .unwrap();
    p.assert_converged().await;

    // Small chunks: every table takes many pages.
    let (code, out) = run_verify(&p, &["--chunk-rows", "500", "--json", "-"]).await;
    assert_eq!(code, Some(0), "{out}");
    let report = json_line(&out);
    assert_eq!(report["legacy_rows"], seeded.total(), "{report:#}");
    let executions = table(&report, "prompt_executions")["legacy_rows"]
        .as_u64()
        .unwrap();
    let line = out
        .lines()
        .find(|l| l.starts_with("verify public.prompt_executions: done,"))
        .unwrap_or_else(|| panic!("no progress line:\n{out}"));
    let chunks: u64 = line
        .split(" rows compared in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        chunks > executions / 500,
        "{executions} rows in {chunks} chunks: {line}"
    );
    let small = report["rows_per_sec"].as_f64().unwrap();

    let (code, out) = run_verify(&p, &["--json", "-"]).await;
    assert_eq!(code, Some(0), "{out}");
    let report = json_line(&out);
    eprintln!(
        "verify speed: {} rows, {:.0} rows/s with --chunk-rows 10000, {small:.0} rows/s with --chunk-rows 500",
        report["legacy_rows"],
        report["rows_per_sec"].as_f64().unwrap()
    );

    // Lag is not a difference: with the writer stopped the target falls behind a live
    // workload; verify starts, and the writer comes back while it runs. The first pass
    // sees the lag; the re-check after the target caught up does not.
    let writer = p.writer.as_mut().unwrap();
    writer.sigterm();
    writer
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("writer stopped");
    let stats = rekey_workload::Workload::new(99)
        .run(
            &mut legacy,
            rekey_workload::RunOptions {
                txns: Some(200),
                ..Default::default()
            },
        )
        .await
        .expect("workload");
    assert!(stats.committed > 100);
    let mut verify = spawn_verify(
        &p,
        &[
            "--chunk-rows",
            "500",
            "--settle-timeout",
            "90",
            "--json",
            "-",
        ],
    );
    assert!(
        verify
            .wait_for_output(
                "verify public.prompt_templates: done",
                Duration::from_secs(120)
            )
            .await,
        "{}",
        verify.output()
    );
    p.start_writer();
    let status = verify
        .wait_exit(Duration::from_secs(240))
        .await
        .expect("verify finished");
    let out = verify.output();
    assert_eq!(status.code(), Some(0), "lag is re-checked away:\n{out}");
    assert!(
        out.contains("verify public.prompt_templates: re-checking"),
        "the first pass saw the lag:\n{out}"
    );
    assert!(out.contains("verify: target consistent at"), "{out}");
    let report = json_line(&out);
    assert_eq!(report["clean"], true);
    // The counts are the re-check's too, not the lagging first pass's.
    assert_counts_agree(&report);
}

/// Arguments, environment, and what the one error line says.
type Case<'a> = (&'a [&'a str], Vec<(&'a str, String)>, &'a str);

#[tokio::test(flavor = "multi_thread")]
async fn verify_without_what_it_needs_exits_2_with_one_line() {
    let dir = std::env::temp_dir().join(format!("rekey-verify-usage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rekey.toml");
    std::fs::write(&config, rekey_tests::pipeline::promptstudio_config()).unwrap();
    let config = config.display().to_string();
    let cases: [Case; 3] = [
        (
            &["verify", "--config", "/nonexistent/rekey.toml"],
            vec![],
            "rekeyctl: error: config cannot read /nonexistent/rekey.toml",
        ),
        (
            &["verify", "--config", &config],
            vec![
                ("REKEY_SOURCE_URL", "postgres://127.0.0.1:1/x".into()),
                ("REKEY_TARGET_URL", String::new()),
            ],
            "rekeyctl: error: config target.url: missing",
        ),
        (
            &["verify", "--config", &config, "--chunk-rows", "0"],
            vec![],
            "--chunk-rows",
        ),
    ];
    for (args, env, expected) in cases {
        let mut s = Service::spawn("rekeyctl", args, &env);
        let status = s.wait_exit(Duration::from_secs(30)).await.expect("exited");
        let out = s.output();
        assert_eq!(status.code(), Some(2), "{args:?}: {out}");
        assert!(
            out.contains(expected),
            "{args:?}: expected {expected:?} in {out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
