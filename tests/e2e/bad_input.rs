//! Bad input ends in one clear error line that names what to fix, and loses nothing.

use std::time::Duration;

use rekey_tests::pipeline::promptstudio_config;
use rekey_tests::{Broker, Pg, PgOptions, Pipeline, Service};

/// Runs the reader to its exit and returns (exit code, its one `error:` line).
async fn reader_error(p: &Pipeline, env: Vec<(&'static str, String)>) -> (i32, String) {
    p.service_error("rekey-reader", env).await
}

async fn slot_exists(p: &Pipeline) -> bool {
    p.legacy_client()
        .await
        .query_opt("SELECT 1 FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_without_logical_wal_is_named() {
    let (legacy, target, broker) = tokio::join!(
        Pg::start_with(PgOptions {
            wal_level: "replica",
            ..PgOptions::default()
        }),
        Pg::start(),
        Broker::start()
    );
    let p = Pipeline::assemble(legacy, target, broker, promptstudio_config()).await;
    let (code, line) = reader_error(&p, p.env()).await;
    assert_eq!(code, 2);
    assert!(
        line.contains("wal_level = replica") && line.contains("set wal_level = logical"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migrated_table_without_primary_key_is_named_and_nothing_is_created() {
    let config = format!(
        "{}\n[[tables]]\nname = \"audit_log\"\nid = \"id\"\n",
        promptstudio_config()
    );
    let p = Pipeline::with_config(&config).await;
    p.legacy_sql("CREATE TABLE audit_log (id int, msg text)")
        .await;
    let (code, line) = reader_error(&p, p.env()).await;
    assert_eq!(code, 2);
    assert!(
        line.contains("public.audit_log has no primary key"),
        "{line}"
    );
    assert!(!slot_exists(&p).await, "no slot is left holding WAL");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_config_field_is_named() {
    let config = promptstudio_config().replace("[source]\n", "[source]\nslott = \"typo\"\n");
    let p = Pipeline::with_config(&config).await;
    let (code, line) = reader_error(&p, p.env()).await;
    assert_eq!(code, 2);
    assert!(
        line.contains("unknown field `slott`") && line.contains("line "),
        "{line}"
    );
    assert!(!slot_exists(&p).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_is_named() {
    let p = Pipeline::new().await;
    let env: Vec<_> = p
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "REKEY_ID_SECRET")
        .collect();
    let (code, line) = reader_error(&p, env).await;
    assert_eq!(code, 2);
    assert!(line.contains("REKEY_ID_SECRET"), "{line}");
    assert!(!slot_exists(&p).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kafka_setting_from_the_environment_reaches_the_client_and_a_wrong_one_is_named() {
    let p = Pipeline::new().await;
    let mut env = p.env();
    env.push(("REKEY_KAFKA_OPTION_NO_SUCH_SETTING", "1".into()));
    for binary in ["rekey-reader", "rekey-writer"] {
        let (code, line) = p.service_error(binary, env.clone()).await;
        assert_eq!(code, 2, "{line}");
        assert!(line.contains("no.such.setting"), "{line}");
    }
    assert!(!slot_exists(&p).await, "no slot is left holding WAL");

    let mut env = p.env();
    env.push(("REKEY_KAFKA_OPTION_SASL.PASSWORD", "x".into()));
    let (code, line) = reader_error(&p, env).await;
    assert_eq!(code, 2);
    assert!(
        line.contains("REKEY_KAFKA_OPTION_SASL.PASSWORD")
            && line.contains("REKEY_KAFKA_OPTION_SASL_PASSWORD"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_is_retried_and_nothing_written_meanwhile_is_lost() {
    let mut p = Pipeline::new().await;
    p.broker.kill();
    p.start_reader();
    p.start_writer();
    let reader = p.reader.as_ref().unwrap();
    assert!(
        reader
            .wait_for_output("broker unreachable, retrying", Duration::from_secs(30))
            .await
    );
    assert!(
        slot_exists(&p).await,
        "the slot holds the changes while the broker is down"
    );
    p.legacy_sql(
        "INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'written while the broker was down');
         INSERT INTO prompt_libraries (id, prompt_lab_id, name) VALUES (1, 1, 'lib');",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        p.reader.as_mut().unwrap().is_running(),
        "the reader keeps retrying"
    );
    p.broker.restart().await;
    p.wait_streaming().await;
    p.legacy_sql("UPDATE prompt_labs SET description = 'after' WHERE id = 1")
        .await;
    p.assert_converged().await;
}

/// The pipeline's environment with the writer connecting as a user that owns the new
/// schema but is no superuser.
async fn writer_no_superuser(p: &Pipeline) -> Vec<(&'static str, String)> {
    p.target_client()
        .await
        .batch_execute(
            "CREATE ROLE rekey_writer LOGIN;
             GRANT CREATE ON DATABASE promptstudio TO rekey_writer;
             ALTER SCHEMA public OWNER TO rekey_writer;
             DO $$ DECLARE t text; BEGIN
               FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
                 EXECUTE format('ALTER TABLE public.%I OWNER TO rekey_writer', t);
               END LOOP; END $$;",
        )
        .await
        .unwrap();
    let mut env = p.env();
    for (k, v) in env.iter_mut() {
        if *k == "REKEY_TARGET_URL" {
            *v = v.replacen("postgres://postgres@", "postgres://rekey_writer@", 1);
        }
    }
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn without_backfill_a_writer_not_allowed_to_skip_foreign_keys_leaves_them_to_postgres() {
    // What the grant's error line offers instead: no backfill, so nothing needs the
    // replica role, and PostgreSQL checks each row's foreign keys at the commit.
    let config = format!(
        "{}\n[backfill]\nenabled = false\n",
        rekey_tests::pipeline::promptstudio_config()
    );
    let mut p = Pipeline::with_config(&config).await;
    let env = writer_no_superuser(&p).await;
    p.start_reader();
    p.writer = Some(Service::spawn(
        "rekey-writer",
        &["--config", &p.config_arg()],
        &env,
    ));
    p.wait_streaming().await;
    p.legacy_sql(
        "INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'lab');
         INSERT INTO prompt_flows (id, prompt_lab_id, name, definition) VALUES (2, 1, 'flow', '{}');",
    )
    .await;
    p.assert_converged().await;
    let writer = p.writer.as_ref().unwrap();
    assert!(
        writer
            .output()
            .contains("PostgreSQL checks foreign keys row by row"),
        "{}",
        writer.output()
    );
    // And they are checked: a flow whose lab does not exist stops the writer.
    p.legacy_sql(
        "ALTER TABLE prompt_flows DROP CONSTRAINT prompt_flows_prompt_lab_id_fkey;
         INSERT INTO prompt_flows (id, prompt_lab_id, name, definition) VALUES (3, 99, 'orphan', '{}');",
    )
    .await;
    let writer = p.writer.as_mut().unwrap();
    let status = writer
        .wait_exit(Duration::from_secs(90))
        .await
        .expect("the writer stops at the orphan");
    let out = writer.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("violates foreign key constraint \"prompt_flows_prompt_lab_id_fkey\""),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_not_allowed_to_skip_foreign_keys_is_told_the_grant() {
    let p = Pipeline::new().await;
    let env = writer_no_superuser(&p).await;
    let (code, line) = p.service_error("rekey-writer", env.clone()).await;
    assert_eq!(code, 2, "{line}");
    assert!(
        line.contains("GRANT SET ON PARAMETER session_replication_role TO"),
        "{line}"
    );

    // Doing what it says is enough.
    p.target_client()
        .await
        .batch_execute("GRANT SET ON PARAMETER session_replication_role TO rekey_writer")
        .await
        .unwrap();
    let writer = Service::spawn("rekey-writer", &["--config", &p.config_arg()], &env);
    assert!(
        writer
            .wait_for_output("applying", Duration::from_secs(30))
            .await,
        "the writer applies once granted:\n{}",
        writer.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_too_long_for_the_new_schema_stops_the_writer_instead_of_being_cut() {
    // The new schema narrows a column; a value that no longer fits must not arrive
    // shortened (an explicit cast to varchar(n) would cut it silently).
    let mut p = Pipeline::new().await;
    p.target_client()
        .await
        .batch_execute("ALTER TABLE prompt_labs ALTER COLUMN name TYPE varchar(8)")
        .await
        .expect("narrowing the new schema");
    p.start().await;
    p.legacy_sql("INSERT INTO prompt_labs (id, lab_id, name) VALUES (1, 'a', 'fits')")
        .await;
    p.wait_caught_up(Duration::from_secs(60)).await;
    p.legacy_sql(
        "INSERT INTO prompt_labs (id, lab_id, name) VALUES (2, 'b', 'much too long for eight')",
    )
    .await;
    let writer = p.writer.as_mut().unwrap();
    let status = writer
        .wait_exit(Duration::from_secs(90))
        .await
        .expect("the writer stops at the long value");
    let out = writer.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("value too long for type character varying(8)"),
        "{out}"
    );
    let names = p
        .target_value("SELECT string_agg(name, ',' ORDER BY legacy_id) FROM prompt_labs")
        .await;
    assert_eq!(
        names.as_deref(),
        Some("fits"),
        "nothing cut, nothing after it"
    );
}
