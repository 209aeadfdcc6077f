//! Inserts, updates and deletes on all nine PromptStudio tables arrive in the new store
//! with the right UUIDs and foreign keys, and every value survives the trip: a null FK,
//! the self-reference, the composite key, an enum, jsonb, text[] with a NULL element,
//! numeric at full scale, timestamptz and unicode text.

use rekey_tests::Pipeline;

const INSERTS: &str = r#"
BEGIN;
INSERT INTO prompt_labs (id, lab_id, tenant_id, name, description)
  VALUES (1, 'lab-1', 7, 'Lab ünïcødé — 日本語 🚀', NULL), (2, 'lab-2', NULL, 'Lab two', 'second');
INSERT INTO prompt_libraries (id, prompt_lab_id, name, description, tags)
  VALUES (10, 1, 'library', 'x', ARRAY['a', NULL, 'c']), (11, 2, 'other', NULL, '{}');
INSERT INTO prompt_templates (id, prompt_library_id, parent_template_id, name, content, version, parameters, is_archived)
  VALUES (100, 10, NULL, 'base', 'Hello {{user}}', 1, '{"temperature": 0.7, "nested": {"k": [1, 2, null]}}', false),
         (101, 10, 100, 'fork', 'Hello again', 2, NULL, true);
INSERT INTO prompt_variables (id, prompt_template_id, name, var_type, default_value, is_required)
  VALUES (1000, 100, 'user', 'string', NULL, true), (1001, 100, 'tone', 'enum', 'warm', false);
INSERT INTO variable_collections (id, prompt_template_id, name, variables)
  VALUES (500, 100, 'defaults', '{"user": "Zoë"}');
INSERT INTO prompt_executions (id, prompt_template_id, variable_collection_id, model, input_tokens, output_tokens, cost_usd, latency_ms, response, executed_at)
  VALUES (5000000000, 100, 500, 'gpt-x', 10, 20, 123456.123456, 12.345678901234567, 'réponse 🎉', '2026-01-02 03:04:05.123456+02'),
         (5000000001, 101, NULL, 'gpt-y', 1, 2, 0.000001, 0.5, '', '2026-06-30 23:59:59.999999+00');
INSERT INTO prompt_flows (id, prompt_lab_id, name, definition) VALUES (20, 1, 'flow', '{"steps": 2}');
INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id) VALUES (20, 1, 100), (20, 2, 101);
INSERT INTO flow_executions (id, prompt_flow_id, status, started_at, finished_at, result, error)
  VALUES (30, 20, 'running', '2026-03-04 05:06:07+00', NULL, NULL, NULL);
COMMIT;
"#;

const CHANGES: &str = r#"
UPDATE flow_executions SET status = 'succeeded', finished_at = '2026-03-04 05:07:00+00', result = '{"ok": true}' WHERE id = 30;
UPDATE prompt_variables SET default_value = 'friendly' WHERE id = 1001;
UPDATE prompt_flow_steps SET prompt_template_id = 100 WHERE prompt_flow_id = 20 AND position = 2;
UPDATE prompt_labs SET tenant_id = 8 WHERE id = 2;
UPDATE prompt_executions SET cost_usd = 0.5, variable_collection_id = NULL WHERE id = 5000000000;
DELETE FROM prompt_variables WHERE id = 1000;
DELETE FROM prompt_executions WHERE id = 5000000001;
DELETE FROM prompt_flow_steps WHERE prompt_flow_id = 20 AND position = 1;
"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_table_arrives_rekeyed_with_every_type_intact() {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql(INSERTS).await;
    p.assert_converged().await;

    let q = |sql: String| {
        let p = &p;
        async move { p.target_value(&sql).await }
    };
    // Keys and foreign keys.
    assert_eq!(
        q("SELECT id::text FROM prompt_labs WHERE legacy_id = 1".into()).await,
        Some(p.uuid("prompt_labs", 1))
    );
    assert_eq!(
        q("SELECT organization_id::text FROM prompt_labs WHERE legacy_id = 1".into()).await,
        Some(p.uuid("organizations", 7))
    );
    assert_eq!(
        q("SELECT organization_id::text FROM prompt_labs WHERE legacy_id = 2".into()).await,
        None,
        "null tenant → null organization"
    );
    assert_eq!(
        q("SELECT prompt_lab_id::text FROM prompt_libraries WHERE legacy_id = 10".into()).await,
        Some(p.uuid("prompt_labs", 1))
    );
    assert_eq!(
        q("SELECT parent_template_id::text FROM prompt_templates WHERE legacy_id = 101".into())
            .await,
        Some(p.uuid("prompt_templates", 100)),
        "self-reference"
    );
    assert_eq!(
        q("SELECT parent_template_id::text FROM prompt_templates WHERE legacy_id = 100".into())
            .await,
        None
    );
    let step = format!(
        "SELECT prompt_template_id::text FROM prompt_flow_steps WHERE prompt_flow_id = '{}' AND position = 2",
        p.uuid("prompt_flows", 20)
    );
    assert_eq!(
        q(step.clone()).await,
        Some(p.uuid("prompt_templates", 101)),
        "composite key"
    );
    // Values of every type.
    assert_eq!(
        q("SELECT name FROM prompt_labs WHERE legacy_id = 1".into())
            .await
            .as_deref(),
        Some("Lab ünïcødé — 日本語 🚀")
    );
    assert_eq!(
        q("SELECT tags::text FROM prompt_libraries WHERE legacy_id = 10".into())
            .await
            .as_deref(),
        Some("{a,NULL,c}")
    );
    assert_eq!(
        q("SELECT parameters::text FROM prompt_templates WHERE legacy_id = 100".into())
            .await
            .as_deref(),
        Some(r#"{"nested": {"k": [1, 2, null]}, "temperature": 0.7}"#)
    );
    assert_eq!(
        q("SELECT cost_usd::text FROM prompt_executions WHERE legacy_id = 5000000000".into())
            .await
            .as_deref(),
        Some("123456.123456")
    );
    assert_eq!(
        q("SELECT cost_usd::text FROM prompt_executions WHERE legacy_id = 5000000001".into())
            .await
            .as_deref(),
        Some("0.000001")
    );
    assert_eq!(
        q("SELECT (latency_ms = 12.345678901234567::float8)::text FROM prompt_executions WHERE legacy_id = 5000000000".into()).await.as_deref(),
        Some("true"),
        "double precision bit-exact"
    );
    assert_eq!(
        q("SELECT (executed_at = '2026-01-02 01:04:05.123456+00')::text FROM prompt_executions WHERE legacy_id = 5000000000".into()).await.as_deref(),
        Some("true")
    );
    assert_eq!(
        q("SELECT status::text FROM flow_executions WHERE legacy_id = 30".into())
            .await
            .as_deref(),
        Some("running")
    );
    assert_eq!(
        q("SELECT response FROM prompt_executions WHERE legacy_id = 5000000001".into())
            .await
            .as_deref(),
        Some(""),
        "empty string is not NULL"
    );

    // One source transaction per statement.
    for statement in CHANGES.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        p.legacy_sql(statement).await;
    }
    p.assert_converged().await;
    assert_eq!(
        q("SELECT status::text FROM flow_executions WHERE legacy_id = 30".into())
            .await
            .as_deref(),
        Some("succeeded")
    );
    assert_eq!(
        q("SELECT result::text FROM flow_executions WHERE legacy_id = 30".into())
            .await
            .as_deref(),
        Some(r#"{"ok": true}"#)
    );
    assert_eq!(q(step).await, Some(p.uuid("prompt_templates", 100)));
    assert_eq!(
        q("SELECT organization_id::text FROM prompt_labs WHERE legacy_id = 2".into()).await,
        Some(p.uuid("organizations", 8))
    );
    assert_eq!(q("SELECT variable_collection_id::text FROM prompt_executions WHERE legacy_id = 5000000000".into()).await, None, "FK set to NULL");
    // Deletes: soft where the table has deleted_at, real for the junction table.
    assert_eq!(
        q(
            "SELECT (deleted_at IS NOT NULL)::text FROM prompt_variables WHERE legacy_id = 1000"
                .into()
        )
        .await
        .as_deref(),
        Some("true")
    );
    assert_eq!(q("SELECT (deleted_at IS NOT NULL)::text FROM prompt_executions WHERE legacy_id = 5000000001".into()).await.as_deref(), Some("true"));
    assert_eq!(
        q("SELECT (deleted_at IS NULL)::text FROM prompt_variables WHERE legacy_id = 1001".into())
            .await
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        q("SELECT count(*)::text FROM prompt_flow_steps".into())
            .await
            .as_deref(),
        Some("1")
    );
    // row_version grew with the update.
    let v: Vec<Option<String>> = vec![
        q("SELECT row_version::text FROM prompt_variables WHERE legacy_id = 1001".into()).await,
        q("SELECT row_version::text FROM prompt_variables WHERE legacy_id = 1000".into()).await,
    ];
    let (updated, deleted) = (
        v[0].as_ref().unwrap().parse::<i64>().unwrap(),
        v[1].as_ref().unwrap().parse::<i64>().unwrap(),
    );
    assert!(
        updated > 0 && deleted > updated,
        "row_version follows the source commit order: {updated} then {deleted}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_small_interleaved_transactions_arrives_as_in_source_order() {
    // Stopped while hundreds of small transactions interleave four tables, a row
    // deleted and inserted again under its key, rows updated after other tables'
    // changes, and unique names freed and taken again, and swapped, in a table with a
    // unique constraint beyond its key (prompt_variables). Started again, the reader packs
    // them into few large messages and the writer gathers the rows of each table and
    // kind into one statement where that cannot be told apart from source order. The
    // target must end exactly as the source, with far fewer statements than changes.
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql(INSERTS).await;
    p.assert_converged().await;
    for svc in [&p.reader, &p.writer].into_iter().flatten() {
        svc.sigterm();
    }
    for svc in [&mut p.reader, &mut p.writer].into_iter().flatten() {
        svc.wait_exit(std::time::Duration::from_secs(60)).await;
    }

    let legacy = p.legacy_client().await;
    let mut changes = 0;
    for i in 0..60i64 {
        let e = 6_000_000_000 + i;
        let mut statements = vec![
            format!("INSERT INTO prompt_executions (id, prompt_template_id, model, response) VALUES ({e}, 100, 'm', 'first {i}')"),
            format!("UPDATE flow_executions SET status = 'failed', error = 'e{i}' WHERE id = 30"),
            format!("UPDATE prompt_executions SET response = 'second {i}' WHERE id = {}", 6_000_000_000 + i / 2),
            format!("UPDATE prompt_variables SET name = 'was {i}' WHERE prompt_template_id = 100 AND name = 'slot'"),
            format!("INSERT INTO prompt_variables (id, prompt_template_id, name, var_type, is_required) VALUES ({}, 100, 'slot', 'string', false)", 2000 + i),
            format!("BEGIN; UPDATE prompt_templates SET version = version + 1 WHERE id = 101; INSERT INTO prompt_executions (id, prompt_template_id, model) VALUES ({}, 101, 'two-table'); COMMIT", 7_000_000_000 + i),
        ];
        if i % 3 == 2 {
            // The row inserted last time, deleted and inserted again under its key.
            statements.push(format!(
                "DELETE FROM prompt_executions WHERE id = {}",
                e - 1
            ));
            statements.push(format!("INSERT INTO prompt_executions (id, prompt_template_id, model, response) VALUES ({}, 101, 'm', 'again {i}')", e - 1));
        }
        if i % 5 == 4 {
            statements.push(format!("DELETE FROM prompt_executions WHERE id = {e}"));
        }
        if i == 10 {
            // Two variables swap their unique names through a third.
            statements.push("UPDATE prompt_variables SET name = 'swap' WHERE id = 1000".into());
            statements.push("UPDATE prompt_variables SET name = 'user' WHERE id = 1001".into());
            statements.push("UPDATE prompt_variables SET name = 'tone' WHERE id = 1000".into());
        }
        for sql in statements {
            legacy
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|err| panic!("{sql}: {err}"));
            changes += 1;
        }
    }

    p.start().await;
    p.assert_converged().await;
    let metrics = rekey_tests::scrape::scrape(p.writer_metrics).await;
    let statements = metrics
        .get(rekey::telemetry::WRITER_STATEMENTS)
        .copied()
        .unwrap_or_default();
    assert!(
        statements > 0.0 && statements < changes as f64 / 2.0,
        "{statements} statements for {changes} changes: rows were not gathered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_target_catalog_says_which_tables_may_be_gathered() {
    // What decides how freely the writer gathers a table's rows (rekey::target::Order):
    // the PromptStudio schema as shipped, then a trigger and an immediate foreign key.
    use rekey::target::Order;
    let pg = rekey_tests::Pg::start().await;
    pg.create_database("target").await;
    let t = pg.connect("target").await;
    t.batch_execute(rekey_workload::TARGET_SQL).await.unwrap();
    let config =
        rekey::config::Config::parse(rekey_tests::pipeline::promptstudio_config()).unwrap();
    let orders = |catalog: &rekey::target::Catalog| {
        let mut v: Vec<(String, Order)> = catalog
            .iter()
            .map(|(name, table)| (name.trim_start_matches("public.").to_string(), table.order))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let shipped = orders(&rekey::target::load(&t, &config).await.unwrap());
    let expected = |table: &str| match table {
        // A unique name among live rows.
        "prompt_labs" | "prompt_variables" => Order::Table,
        _ => Order::Rows,
    };
    for (table, order) in &shipped {
        assert_eq!(*order, expected(table), "{table}");
    }
    assert_eq!(shipped.len(), 9);

    t.batch_execute(
        "CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE TRIGGER audit BEFORE UPDATE ON flow_executions FOR EACH ROW EXECUTE FUNCTION audit();
         ALTER TABLE prompt_executions ALTER CONSTRAINT prompt_executions_variable_collection_id_fkey NOT DEFERRABLE;",
    )
    .await
    .unwrap();
    let changed = orders(&rekey::target::load(&t, &config).await.unwrap());
    for (table, order) in &changed {
        let want = match table.as_str() {
            // The trigger; both ends of the immediate foreign key.
            "flow_executions" | "prompt_executions" | "variable_collections" => Order::Strict,
            other => expected(other),
        };
        assert_eq!(*order, want, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn as_a_replica_the_writer_leaves_the_new_stores_triggers_and_foreign_keys_to_cutover() {
    let config = format!(
        "{}\n[target]\nreplication_role = \"replica\"\n",
        rekey_tests::pipeline::promptstudio_config()
    );
    let mut p = Pipeline::with_config(&config).await;
    // An ordinary trigger in the new store that rewrites what it is given.
    p.target_client()
        .await
        .batch_execute(
            "CREATE FUNCTION mark() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN NEW.name := NEW.name || ' (edited)'; RETURN NEW; END $$;
             CREATE TRIGGER mark BEFORE INSERT OR UPDATE ON prompt_labs
               FOR EACH ROW EXECUTE FUNCTION mark();",
        )
        .await
        .unwrap();
    p.start().await;
    p.legacy_sql(INSERTS).await;
    p.legacy_sql(CHANGES).await;
    // The replicated rows are the source's, through backfill and after it: the trigger
    // did not fire for the writer, as with PostgreSQL's own logical replication.
    p.assert_converged().await;
    assert_eq!(
        p.target_value("SELECT name FROM prompt_labs WHERE legacy_id = 2")
            .await
            .as_deref(),
        Some("Lab two")
    );
    // It does for any other session: it was live all along.
    let target = p.target_client().await;
    target
        .batch_execute("UPDATE prompt_labs SET description = 'by hand' WHERE legacy_id = 2")
        .await
        .unwrap();
    assert_eq!(
        p.target_value("SELECT name FROM prompt_labs WHERE legacy_id = 2")
            .await
            .as_deref(),
        Some("Lab two (edited)")
    );
    target
        .batch_execute(
            "UPDATE prompt_labs SET name = 'Lab two', description = 'second' WHERE legacy_id = 2",
        )
        .await
        .unwrap();

    // Foreign keys are not checked on the writer's rows. The legacy store loses one of
    // its constraints and takes a step whose template does not exist: the writer
    // applies it (as `origin` it would stop at the commit), and the cutover's
    // validating step names it.
    p.legacy_sql(
        "ALTER TABLE prompt_flow_steps DROP CONSTRAINT prompt_flow_steps_prompt_template_id_fkey;
         INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id) VALUES (20, 3, 999);",
    )
    .await;
    p.wait_caught_up(std::time::Duration::from_secs(90)).await;
    assert_eq!(
        p.target_value(
            "SELECT count(*)::text FROM prompt_flow_steps s
              WHERE NOT EXISTS (SELECT 1 FROM prompt_templates t WHERE t.id = s.prompt_template_id)"
        )
        .await
        .as_deref(),
        Some("1")
    );
    p.set_phase("cutover");
    rekey_tests::wait_until(
        "the cutover to fail",
        std::time::Duration::from_secs(90),
        || async { p.cutover_state().await.as_deref() == Some("failed") },
    )
    .await;
    let detail = p
        .target_value("SELECT detail FROM rekey.status")
        .await
        .unwrap_or_default();
    assert!(
        detail.contains("foreign keys pointing at no row") && detail.contains("prompt_flow_steps"),
        "{detail}"
    );
}
