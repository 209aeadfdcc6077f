//! Unchanged TOASTed values: an update that does not touch a large `content` makes
//! pgoutput send "unchanged" for it; the target must keep the content, never a NULL or
//! a placeholder — also when the row is changed again before the writer applies it.

use rekey_tests::Pipeline;

#[tokio::test(flavor = "multi_thread")]
async fn an_update_without_the_toasted_content_keeps_it() {
    let mut p = Pipeline::new().await;
    p.start().await;
    // ~24 kB of barely compressible text: stored out of line (TOAST).
    let big: String = (0..3000u64)
        .map(|i| format!("{:07x} ", i.wrapping_mul(2654435761) % 0xfffffff))
        .collect();
    p.legacy_sql(&format!(
        "INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'l', 'lab');
         INSERT INTO prompt_libraries (id, prompt_lab_id, name) VALUES (1, 1, 'lib');
         INSERT INTO prompt_templates (id, prompt_library_id, name, content, version) VALUES (1, 1, 't', '{big}', 1);"
    ))
    .await;
    let external: bool = p
        .legacy_client()
        .await
        .query_one(
            "SELECT pg_column_size(content) < length(content) FROM prompt_templates WHERE id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        external || big.len() > 2000,
        "content is large enough to be TOASTed"
    );
    // Updates that leave content alone: alone, and several in one transaction.
    p.legacy_sql("UPDATE prompt_templates SET version = 2, is_archived = true WHERE id = 1")
        .await;
    p.legacy_sql("BEGIN; UPDATE prompt_templates SET version = 3 WHERE id = 1; UPDATE prompt_templates SET name = 'renamed' WHERE id = 1; COMMIT;").await;
    p.assert_converged().await;
    let t = p.target_client().await;
    let row = t
        .query_one(
            "SELECT content, version, name, is_archived FROM prompt_templates WHERE legacy_id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), big, "content kept");
    assert_eq!(row.get::<_, i32>(1), 3);
    assert_eq!(row.get::<_, String>(2), "renamed");
    assert!(row.get::<_, bool>(3));
    // And a real change of the content still arrives.
    p.legacy_sql("UPDATE prompt_templates SET content = 'short now' WHERE id = 1")
        .await;
    p.assert_converged().await;
    assert_eq!(
        p.target_value("SELECT content FROM prompt_templates WHERE legacy_id = 1")
            .await
            .as_deref(),
        Some("short now")
    );
}

/// The writer compresses large values with lz4 (cheaper to write than the default pglz,
/// see `target.toast_compression`); they read back unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn large_values_are_compressed_with_lz4_in_the_new_store() {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql(
        "INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'l', 'lab');
         INSERT INTO prompt_libraries (id, prompt_lab_id, name) VALUES (1, 1, 'lib');
         INSERT INTO prompt_templates (id, prompt_library_id, name, content, version)
              VALUES (1, 1, 't', repeat('You are a helpful assistant. ', 400), 1);",
    )
    .await;
    p.assert_converged().await;
    let row = p
        .target_client()
        .await
        .query_one(
            "SELECT pg_column_compression(content), content = repeat('You are a helpful assistant. ', 400)
               FROM prompt_templates WHERE legacy_id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("lz4"));
    assert!(row.get::<_, bool>(1), "the value reads back unchanged");
}
