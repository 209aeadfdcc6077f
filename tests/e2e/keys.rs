//! Key changes: a row moving to another parent (a foreign-key change), and a change of
//! the legacy primary key itself. Semantics of the latter: the old identity ends (its
//! UUID is soft-deleted, or deleted for tables without `deleted_at`) and the new one
//! begins (a new UUID, derived from the new key) — exactly what a delete of the old key
//! and an insert of the new one would give.

use rekey_tests::Pipeline;

const SETUP: &str = "
INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'A'), (2, 'b', 'B'), (3, 'c', 'C');
INSERT INTO prompt_libraries (id, prompt_lab_id, name) VALUES (10, 1, 'lib');
INSERT INTO prompt_templates (id, prompt_library_id, name, content, version) VALUES (100, 10, 't', 'x', 1), (101, 10, 'u', 'y', 1);
INSERT INTO prompt_flows (id, prompt_lab_id, name) VALUES (20, 1, 'f');
INSERT INTO prompt_flow_steps (prompt_flow_id, position, prompt_template_id) VALUES (20, 1, 100), (20, 2, 101);
";

#[tokio::test(flavor = "multi_thread")]
async fn moving_a_row_to_another_parent_rewrites_its_foreign_key() {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql(SETUP).await;
    p.legacy_sql("UPDATE prompt_libraries SET prompt_lab_id = 2 WHERE id = 10")
        .await;
    p.legacy_sql("UPDATE prompt_flows SET prompt_lab_id = 3 WHERE id = 20")
        .await;
    p.assert_converged().await;
    assert_eq!(
        p.target_value("SELECT prompt_lab_id::text FROM prompt_libraries WHERE legacy_id = 10")
            .await,
        Some(p.uuid("prompt_labs", 2))
    );
    assert_eq!(
        p.target_value("SELECT prompt_lab_id::text FROM prompt_flows WHERE legacy_id = 20")
            .await,
        Some(p.uuid("prompt_labs", 3))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_a_legacy_key_ends_the_old_identity_and_begins_a_new_one() {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql(SETUP).await;
    p.legacy_sql("UPDATE prompt_labs SET id = 99, name = 'C moved' WHERE id = 3")
        .await;
    p.legacy_sql(
        "UPDATE prompt_flow_steps SET position = 7 WHERE prompt_flow_id = 20 AND position = 2",
    )
    .await;
    p.assert_converged().await;
    let old = p.uuid("prompt_labs", 3);
    let new = p.uuid("prompt_labs", 99);
    assert_eq!(
        p.target_value(&format!(
            "SELECT (deleted_at IS NOT NULL)::text FROM prompt_labs WHERE id = '{old}'"
        ))
        .await
        .as_deref(),
        Some("true"),
        "old identity ended"
    );
    assert_eq!(
        p.target_value(&format!("SELECT legacy_id || ' ' || name || ' ' || (deleted_at IS NULL)::text FROM prompt_labs WHERE id = '{new}'")).await.as_deref(),
        Some("99 C moved true"),
        "new identity began"
    );
    let flow = p.uuid("prompt_flows", 20);
    assert_eq!(
        p.target_value(&format!("SELECT string_agg(position::text, ',' ORDER BY position) FROM prompt_flow_steps WHERE prompt_flow_id = '{flow}'")).await.as_deref(),
        Some("1,7"),
        "composite key moved: the old row is gone, the new one exists"
    );
}
