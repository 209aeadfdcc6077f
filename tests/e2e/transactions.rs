//! Source transactions arrive whole and in commit order: whatever moment one looks at the
//! target, it is the legacy store as of some commit — never half a transaction, never an
//! older state after a newer one — including transactions large enough to be cut into
//! many Kafka messages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rekey_tests::pipeline::promptstudio_config;
use rekey_tests::Pipeline;

#[tokio::test(flavor = "multi_thread")]
async fn multi_table_and_chunked_transactions_are_seen_whole_and_in_order() {
    // Small chunks, so the large transaction below spans dozens of messages, and an
    // in-flight window of one chunk: each message waits for the one before it to be
    // acknowledged, and nothing stalls or reorders.
    let config = promptstudio_config().replace(
        "[source]\n",
        "[source]\nchunk_max_changes = 50\nchunk_max_bytes = 8192\nmax_in_flight_bytes = 8192\n",
    );
    let mut p = Pipeline::with_config(&config).await;
    p.start().await;
    p.legacy_sql(
        "INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'g0');
         INSERT INTO prompt_flows (id, prompt_lab_id, name) VALUES (1, 1, 'g0');
         INSERT INTO prompt_libraries (id, prompt_lab_id, name) VALUES (1, 1, 'lib');
         INSERT INTO prompt_templates (id, prompt_library_id, name, content, version) VALUES (1, 1, 't', 'c', 1);",
    )
    .await;
    p.assert_converged().await;

    // Observe the target continuously while the legacy database commits.
    let done = Arc::new(AtomicBool::new(false));
    let observer = {
        let target = p.target_client().await;
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                // One statement: one snapshot of both tables.
                let row = target
                    .query_one(
                        "SELECT l.name, f.name, (SELECT count(*) FROM prompt_executions WHERE model = 'bulk')
                           FROM prompt_labs l, prompt_flows f WHERE l.legacy_id = 1 AND f.legacy_id = 1",
                        &[],
                    )
                    .await
                    .unwrap();
                seen.push((
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2),
                ));
            }
            seen
        })
    };
    let legacy = p.legacy_client().await;
    for i in 1..=150 {
        legacy
            .batch_execute(&format!(
                "BEGIN; UPDATE prompt_labs SET name = 'g{i}' WHERE id = 1; UPDATE prompt_flows SET name = 'g{i}' WHERE id = 1; COMMIT;"
            ))
            .await
            .unwrap();
        if i == 75 {
            legacy
                .batch_execute(
                    "INSERT INTO prompt_executions (prompt_template_id, model, input_tokens, output_tokens, cost_usd, latency_ms, response, executed_at)
                     SELECT 1, 'bulk', g, g, g / 1000.0, g * 0.5, repeat('r', 200), now() FROM generate_series(1, 1000) g",
                )
                .await
                .unwrap();
        }
    }
    p.assert_converged().await;
    done.store(true, Ordering::Relaxed);
    let seen = observer.await.unwrap();
    assert!(seen.len() > 10, "observed the target {} times", seen.len());
    let mut last_gen = 0;
    for (lab, flow, bulk) in &seen {
        assert_eq!(
            lab, flow,
            "a transaction touching two tables was seen half applied"
        );
        let generation: u32 = lab[1..].parse().unwrap();
        assert!(
            generation >= last_gen,
            "the target went back from g{last_gen} to g{generation}"
        );
        last_gen = generation;
        assert!(
            *bulk == 0 || *bulk == 1000,
            "a 1000-row transaction was seen with {bulk} rows"
        );
        if generation > 75 {
            assert_eq!(
                *bulk, 1000,
                "a later transaction was visible before the large one"
            );
        }
    }
    assert_eq!(last_gen, 150);
}
