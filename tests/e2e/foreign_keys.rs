//! With `target.replication_role = origin` (the default) the writer's rows satisfy the
//! new store's foreign keys at every commit: the writer checks what each transaction
//! wrote, a batch at a time (`rekey::fk_check`), and the first row that breaks a
//! foreign key stops it with one line, before anything of that transaction is applied.

use std::time::Duration;

use rekey_tests::Pipeline;

const PARENTS: &str = "
INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'lab-1', 'Lab');
INSERT INTO prompt_libraries (id, prompt_lab_id, name) VALUES (10, 1, 'library');
INSERT INTO prompt_templates (id, prompt_library_id, name, content, version)
  VALUES (100, 10, 'base', 'Hello', 1), (101, 10, 'other', 'Hi', 1);
INSERT INTO prompt_flows (id, prompt_lab_id, name, definition)
  VALUES (20, 1, 'run', '{}'), (21, 1, 'never run', '{}');
INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id)
  VALUES (20, 1, 100), (21, 1, 100), (21, 2, 101);
INSERT INTO flow_executions (id, prompt_flow_id, status, started_at)
  VALUES (30, 20, 'running', '2026-03-04 05:06:07+00');
";

/// The writer's one error line, after it exited with `code`.
async fn writer_error(p: &mut Pipeline, code: i32) -> String {
    let writer = p.writer.as_mut().expect("a writer");
    let status = writer
        .wait_exit(Duration::from_secs(90))
        .await
        .expect("the writer stops at the row");
    let out = writer.output();
    assert_eq!(status.code(), Some(code), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("rekey-writer: error: "))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one error line, got:\n{out}");
    assert!(
        out.contains("foreign keys are checked by the writer"),
        "the writer checked them itself:\n{out}"
    );
    lines[0].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_whose_parent_does_not_exist_stops_the_writer_before_it_commits() {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql(PARENTS).await;
    // Valid changes pass the check: a new child of an existing parent, a child moved to
    // another parent, a reference set to NULL.
    p.legacy_sql(
        "INSERT INTO prompt_executions (id, prompt_template_id, model) VALUES (7, 100, 'm');
         UPDATE prompt_flow_steps SET prompt_template_id = 101 WHERE prompt_flow_id = 20;
         UPDATE prompt_templates SET parent_template_id = 100 WHERE id = 101;
         UPDATE prompt_templates SET parent_template_id = NULL WHERE id = 101;",
    )
    .await;
    p.assert_converged().await;

    // The legacy store loses a constraint. A step that points at no template for a
    // moment, inside one transaction, is not a violation: at the commit no row holds
    // the reference, as a deferred constraint sees it.
    p.legacy_sql(
        "ALTER TABLE prompt_flow_steps DROP CONSTRAINT prompt_flow_steps_prompt_template_id_fkey;
         BEGIN;
         INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id) VALUES (20, 5, 999);
         INSERT INTO prompt_executions (id, prompt_template_id, model) VALUES (9, 100, 'm');
         DELETE FROM prompt_flow_steps WHERE prompt_flow_id = 20 AND position = 5;
         COMMIT;",
    )
    .await;
    p.assert_converged().await;

    // A step whose template does not exist, committed in the same transaction as a
    // valid row, stops the writer.
    p.legacy_sql(
        "BEGIN;
         INSERT INTO prompt_executions (id, prompt_template_id, model) VALUES (8, 100, 'm');
         INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id) VALUES (20, 2, 999);
         COMMIT;",
    )
    .await;
    let line = writer_error(&mut p, 1).await;
    let step = format!("{}/2", p.uuid("prompt_flows", 20));
    let missing = p.uuid("prompt_templates", 999);
    for part in [
        "public.prompt_flow_steps row ",
        &step,
        "violates foreign key prompt_flow_steps_prompt_template_id_fkey",
        &format!("(prompt_template_id) = ({missing}) is not present in public.prompt_templates"),
    ] {
        assert!(line.contains(part), "{part:?} not in: {line}");
    }
    // Nothing of that transaction was applied, and the writer would resume before it.
    for (sql, want) in [
        ("SELECT count(*)::text FROM prompt_flow_steps WHERE position = 2 AND prompt_flow_id = (SELECT id FROM prompt_flows WHERE legacy_id = 20)", "0"),
        ("SELECT count(*)::text FROM prompt_executions WHERE legacy_id = 8", "0"),
        ("SELECT count(*)::text FROM prompt_executions WHERE legacy_id = 7", "1"),
    ] {
        assert_eq!(p.target_value(sql).await.as_deref(), Some(want), "{sql}");
    }

    // Started again, the writer stops at the same transaction: the row is in the log,
    // so the fix is in the new schema (or `target.replication_role = replica`).
    p.start_writer();
    let again = writer_error(&mut p, 1).await;
    assert!(again.contains(&missing), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_deleted_for_good_while_rows_still_reference_it_stops_the_writer() {
    let mut p = Pipeline::new().await;
    // Flows are deleted for good in this new schema (no `deleted_at`), while their
    // executions are soft-deleted and stay.
    p.target_client()
        .await
        .batch_execute("ALTER TABLE prompt_flows DROP COLUMN deleted_at")
        .await
        .unwrap();
    p.start().await;
    p.legacy_sql(PARENTS).await;
    p.assert_converged().await;

    // A flow that never ran goes with its steps (the legacy cascade): nothing refers
    // to it any more, and the deletes pass the check.
    p.legacy_sql("DELETE FROM prompt_flows WHERE id = 21").await;
    p.wait_caught_up(Duration::from_secs(90)).await;
    assert_eq!(
        p.target_value("SELECT count(*)::text FROM prompt_flows")
            .await
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        p.target_value("SELECT count(*)::text FROM prompt_flow_steps")
            .await
            .as_deref(),
        Some("1")
    );

    // A flow that ran: its execution is only soft-deleted in the new store and still
    // references it.
    p.legacy_sql("DELETE FROM prompt_flows WHERE id = 20").await;
    let line = writer_error(&mut p, 1).await;
    let flow = p.uuid("prompt_flows", 20);
    let execution = p.uuid("flow_executions", 30);
    for part in [
        &format!("public.flow_executions row {execution} violates foreign key flow_executions_prompt_flow_id_fkey"),
        &format!("(prompt_flow_id) = ({flow}) is not present in public.prompt_flows (deleted)"),
    ] {
        assert!(line.contains(part), "{part:?} not in: {line}");
    }
    assert_eq!(
        p.target_value("SELECT count(*)::text FROM prompt_flows WHERE legacy_id = 20")
            .await
            .as_deref(),
        Some("1"),
        "the delete was not applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_parent_is_checked_against_every_row_that_referenced_it() {
    let mut p = Pipeline::new().await;
    p.target_client()
        .await
        .batch_execute("ALTER TABLE prompt_flows DROP COLUMN deleted_at")
        .await
        .unwrap();
    p.start().await;
    p.legacy_sql(PARENTS).await;
    p.assert_converged().await;

    // A truncate of a table with `deleted_at` soft-deletes every row: they stay, and so
    // do their references.
    p.legacy_sql("TRUNCATE flow_executions").await;
    p.wait_caught_up(Duration::from_secs(90)).await;
    assert_eq!(
        p.target_value(
            "SELECT count(*) FILTER (WHERE deleted_at IS NULL)::text || '/' || count(*)::text FROM flow_executions"
        )
        .await
        .as_deref(),
        Some("0/1")
    );

    // Flows (and, by the legacy cascade, their steps) truncated for good: the
    // soft-deleted execution still references its flow.
    p.legacy_sql("TRUNCATE prompt_flows CASCADE").await;
    let line = writer_error(&mut p, 1).await;
    let flow = p.uuid("prompt_flows", 20);
    let execution = p.uuid("flow_executions", 30);
    for part in [
        &format!("public.flow_executions row {execution} violates foreign key flow_executions_prompt_flow_id_fkey"),
        &format!("(prompt_flow_id) = ({flow}) is not present in public.prompt_flows (deleted)"),
    ] {
        assert!(line.contains(part), "{part:?} not in: {line}");
    }
    assert_eq!(
        p.target_value("SELECT count(*)::text FROM prompt_flows")
            .await
            .as_deref(),
        Some("2"),
        "the truncate was not applied"
    );
}
