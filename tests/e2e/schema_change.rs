//! The legacy schema changes while rekey streams: a column added to a legacy table
//! reaches the new store once the new schema has it too, in either order, and nothing
//! the legacy table wrote in between is lost; a column dropped before its table's
//! backfill is read again; a table added to the mapping of a running migration is
//! copied and streamed after a restart.

use std::time::Duration;

use rekey_tests::pipeline::promptstudio_config;
use rekey_tests::Pipeline;

async fn started() -> Pipeline {
    let mut p = Pipeline::new().await;
    p.start().await;
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'before')")
        .await;
    p.assert_converged().await;
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_to_the_new_store_first_flows_through_without_a_restart() {
    let mut p = started().await;
    let writer_pid = p.writer.as_ref().unwrap().pid();
    let target = p.target_client().await;
    target
        .batch_execute("ALTER TABLE prompt_labs ADD COLUMN region text")
        .await
        .unwrap();
    p.legacy_sql(
        "ALTER TABLE prompt_labs ADD COLUMN region text;
         INSERT INTO prompt_labs (id, lab_id, name, region) VALUES (2, 'b', 'after', 'eu');
         UPDATE prompt_labs SET region = 'us' WHERE id = 1;",
    )
    .await;
    p.assert_converged().await;
    let region = p
        .target_value("SELECT region FROM prompt_labs WHERE legacy_id = 2")
        .await;
    assert_eq!(region.as_deref(), Some("eu"));
    let writer = p.writer.as_mut().unwrap();
    assert!(writer.is_running(), "{}", writer.output());
    assert_eq!(writer.pid(), writer_pid, "the same writer process");
    p.assert_verify_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_the_new_store_lacks_holds_the_writer_until_it_is_added() {
    let mut p = started().await;
    p.legacy_sql(
        "ALTER TABLE prompt_labs ADD COLUMN region text;
         INSERT INTO prompt_labs (id, lab_id, name, region) VALUES (2, 'b', 'after', 'eu');
         UPDATE prompt_labs SET region = 'us' WHERE id = 1;",
    )
    .await;
    let said = p
        .writer
        .as_ref()
        .unwrap()
        .wait_for_output(
            "target table public.prompt_labs has no column \"region\"",
            Duration::from_secs(30),
        )
        .await;
    assert!(said, "{}", p.writer.as_ref().unwrap().output());
    // It waits: applies nothing of the transaction, and does not exit.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lab2 = p
        .target_value("SELECT name FROM prompt_labs WHERE legacy_id = 2")
        .await;
    assert_eq!(lab2, None, "nothing applied without the column");
    let writer = p.writer.as_mut().unwrap();
    assert!(writer.is_running(), "{}", writer.output());

    p.target_client()
        .await
        .batch_execute("ALTER TABLE prompt_labs ADD COLUMN region text")
        .await
        .unwrap();
    p.assert_converged().await;
    let region = p
        .target_value("SELECT region FROM prompt_labs WHERE legacy_id = 1")
        .await;
    assert_eq!(region.as_deref(), Some("us"));
    p.assert_verify_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_column_dropped_from_a_legacy_table_before_its_backfill_is_read_again() {
    // Small, slowed chunks: the first tables take seconds to copy.
    let config = format!(
        "{}\n[backfill]\nchunk_rows = 50\nwindow_delay_ms = 50\n",
        promptstudio_config()
    );
    let mut p = Pipeline::with_config(&config).await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 7).await.expect("seed");
    p.start().await;
    // The last table copied (parents come first) loses a column the reader described.
    p.legacy_sql("ALTER TABLE flow_executions DROP COLUMN error")
        .await;
    let reader = p.reader.as_ref().unwrap();
    let said = reader
        .wait_for_output(
            "legacy table public.flow_executions no longer has a column the backfill reads",
            Duration::from_secs(120),
        )
        .await;
    assert!(said, "{}", reader.output());
    p.wait_backfilled().await;
    p.assert_converged().await;
    let reader = p.reader.as_mut().unwrap();
    assert!(reader.is_running(), "{}", reader.output());
    p.assert_verify_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_added_to_a_running_migration_is_copied_and_streamed() {
    let full = promptstudio_config();
    let last = full
        .rfind("[[tables]]\nname = \"flow_executions\"")
        .expect("flow_executions is the last table");
    let mut p = Pipeline::with_config(&full[..last]).await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 7).await.expect("seed");
    p.start().await;
    let mut legacy = p.legacy_client().await;
    let mut w = rekey_workload::Workload::new(3);
    for _ in 0..100 {
        w.step(&mut legacy).await.expect("workload step");
    }
    p.wait_backfilled().await;
    p.assert_converged().await;
    let copied = p
        .target_value("SELECT count(*)::text FROM flow_executions")
        .await;
    assert_eq!(copied.as_deref(), Some("0"), "not migrated yet");

    // The platform team adds the table to the mapping and restarts both services.
    for mut service in [p.reader.take(), p.writer.take()].into_iter().flatten() {
        service.sigterm();
        service
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("stops on SIGTERM");
    }
    std::fs::write(
        p.config_arg(),
        full.replace(
            "heartbeat_interval_secs = 10",
            "heartbeat_interval_secs = 1",
        ),
    )
    .unwrap();
    p.start().await;
    for _ in 0..100 {
        w.step(&mut legacy).await.expect("workload step");
    }
    p.wait_backfilled().await;
    p.assert_converged().await;
    let copied = p
        .target_value("SELECT count(*)::text FROM flow_executions")
        .await;
    assert_ne!(copied.as_deref(), Some("0"), "copied");
    p.assert_verify_clean().await;
}
