//! Deleting a lab cascades in the legacy database (libraries, templates, variables,
//! collections, executions, flows, steps, flow executions); every row it took with it is
//! soft-deleted in the target (steps, which have no `deleted_at`, are deleted) — and
//! nothing else is.

use rekey_tests::Pipeline;

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_lab_soft_deletes_exactly_what_the_cascade_took() {
    let mut p = Pipeline::new().await;
    p.start().await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 7).await.expect("seed");
    // Rows that existed before the slot only arrive with backfill (a later issue); touch
    // every row so the stream carries all of them.
    legacy
        .batch_execute(
            "UPDATE prompt_labs SET name = name; UPDATE prompt_libraries SET name = name;
             UPDATE prompt_templates SET name = name, content = content || ''; UPDATE prompt_variables SET name = name;
             UPDATE variable_collections SET name = name; UPDATE prompt_executions SET model = model;
             UPDATE prompt_flows SET name = name; UPDATE prompt_flow_steps SET position = position;
             UPDATE flow_executions SET status = status;",
        )
        .await
        .unwrap();
    p.assert_converged().await;

    // The lab with the most descendants.
    let lab: i32 = legacy
        .query_one(
            "SELECT prompt_lab_id FROM prompt_libraries GROUP BY 1 ORDER BY count(*) DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let target = p.target_client().await;
    let deleted_before: i64 = deleted_total(&target).await;
    let live_before = live_counts(&legacy).await;
    legacy
        .execute("DELETE FROM prompt_labs WHERE id = $1", &[&lab])
        .await
        .unwrap();
    let live_after = live_counts(&legacy).await;
    let cascaded: i64 = live_before
        .iter()
        .zip(&live_after)
        .map(|(b, a)| b - a)
        .sum();
    let steps_gone = live_before[7] - live_after[7];
    assert!(cascaded > 5, "the cascade took {cascaded} rows");

    p.assert_converged().await;
    let deleted_after = deleted_total(&target).await;
    assert_eq!(
        deleted_after - deleted_before,
        cascaded - steps_gone,
        "soft-deleted exactly the cascaded rows"
    );
    assert_eq!(
        p.target_value(&format!(
            "SELECT (deleted_at IS NOT NULL)::text FROM prompt_labs WHERE legacy_id = {lab}"
        ))
        .await
        .as_deref(),
        Some("true")
    );
    // assert_converged also proved: every soft-deleted row is gone from legacy and every
    // legacy row is live in the target.
}

async fn live_counts(c: &tokio_postgres::Client) -> Vec<i64> {
    let mut out = Vec::new();
    for t in rekey_workload::TABLES {
        out.push(
            c.query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .await
                .unwrap()
                .get(0),
        );
    }
    out
}

async fn deleted_total(c: &tokio_postgres::Client) -> i64 {
    let mut total = 0;
    for t in rekey_workload::TABLES
        .iter()
        .filter(|t| **t != "prompt_flow_steps")
    {
        let n: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {t} WHERE deleted_at IS NOT NULL"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        total += n;
    }
    total
}
