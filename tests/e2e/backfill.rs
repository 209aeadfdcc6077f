//! Backfill: rows that existed before streaming began arrive in the new store,
//! consistently with the changes that keep streaming meanwhile (DBLog watermarks), and a
//! restarted reader resumes from its last recorded chunk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rekey_tests::pipeline::promptstudio_config;
use rekey_tests::{wait_until, Pipeline, Service};

fn config(chunk_rows: usize, window_delay_ms: u64) -> String {
    format!(
        "{}\n[backfill]\nchunk_rows = {chunk_rows}\nwindow_delay_ms = {window_delay_ms}\n",
        promptstudio_config()
    )
}

async fn backfill_state(p: &Pipeline) -> Vec<(String, i64, i64, i64, bool)> {
    let t = p.target_client().await;
    match t
        .query("SELECT target_table, rows_copied, rows_superseded, chunks, done FROM rekey.backfill ORDER BY 1", &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect(),
        Err(_) => Vec::new(),
    }
}

/// The new store's indexes: (name, definition).
async fn indexes(p: &Pipeline) -> Vec<(String, String)> {
    index_defs(&p.target_client().await).await
}

async fn index_defs(t: &tokio_postgres::Client) -> Vec<(String, String)> {
    t.query(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
        &[],
    )
    .await
    .expect("reading the target's indexes")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn deferred_names(t: &tokio_postgres::Client) -> Vec<String> {
    t.query(
        "SELECT index_name FROM rekey.deferred_index ORDER BY 1",
        &[],
    )
    .await
    .expect("reading rekey.deferred_index")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Waits until the new store has exactly the indexes it had before the migration
/// started (the deferred ones are built again once their table is in), and none is
/// left recorded as deferred.
async fn assert_indexes_back(p: &Pipeline, before: &[(String, String)]) {
    let t = p.target_client().await;
    wait_until(
        "every deferred index built again",
        Duration::from_secs(60),
        || async {
            let deferred: i64 = t
                .query_one("SELECT count(*) FROM rekey.deferred_index", &[])
                .await
                .map_or(-1, |r| r.get(0));
            deferred == 0 && indexes(p).await == before
        },
    )
    .await;
}

/// Updates and deletes rows all over the legacy database until told to stop.
fn churn(
    mut legacy: tokio_postgres::Client,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut w = rekey_workload::Workload::new(seed);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            w.step(&mut legacy).await.expect("workload step");
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn existing_rows_arrive_while_changes_stream() {
    let mut p = Pipeline::with_config(&config(1000, 0)).await;
    let legacy = p.legacy_client().await;
    let seeded = rekey_workload::seed(&legacy, 0.1, 3).await.expect("seed");
    let before = indexes(&p).await;
    let stop = Arc::new(AtomicBool::new(false));
    p.start().await;
    let churner = churn(p.legacy_client().await, stop.clone(), 5);
    wait_until(
        "every table backfilled",
        Duration::from_secs(180),
        || async {
            let s = backfill_state(&p).await;
            s.len() == 9 && s.iter().all(|t| t.4)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let txns = churner.await.unwrap();
    assert!(
        txns > 50,
        "the workload ran {txns} transactions during backfill"
    );
    p.assert_converged().await;
    assert_indexes_back(&p, &before).await;
    // Foreign keys too: rows the stream wrote before their parents' chunks all point at
    // existing rows now (rekeyctl verify checks every reference).
    p.assert_verify_clean().await;
    let copied: i64 = backfill_state(&p).await.iter().map(|t| t.1).sum();
    assert!(
        copied as u64 >= seeded.total() * 9 / 10,
        "backfill copied {copied} of {} seeded rows",
        seeded.total()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_during_a_chunk_window_ends_with_the_newest_value() {
    // Small chunks held open 200 ms each: the churn lands inside windows. Every batch
    // compressed (the default compresses backfill batches only), so stream batches take
    // that path end to end too.
    let config = config(100, 200).replacen("[source]\n", "[source]\ncompression = \"lz4\"\n", 1);
    assert!(config.contains("compression = \"lz4\""));
    let mut p = Pipeline::with_config(&config).await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 9).await.expect("seed");
    let stop = Arc::new(AtomicBool::new(false));
    p.start().await;
    let churner = churn(p.legacy_client().await, stop.clone(), 13);
    // Also hammer the first rows of the tables being copied, with metadata-only updates
    // of TOASTed templates among them.
    let hammer = {
        let legacy = p.legacy_client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Deadlocks with the workload are possible and harmless here.
                let _ = legacy
                    .batch_execute(&format!(
                        "UPDATE prompt_templates SET version = version + 1, name = 'hammered {i}' WHERE id % 20 = {};
                         UPDATE prompt_executions SET output_tokens = output_tokens + 1 WHERE id % 50 = {};",
                        i % 20,
                        i % 50
                    ))
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_until(
        "every table backfilled",
        Duration::from_secs(240),
        || async {
            let s = backfill_state(&p).await;
            s.len() == 9 && s.iter().all(|t| t.4)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    churner.await.unwrap();
    hammer.await.unwrap();
    p.assert_converged().await;
    let superseded: i64 = backfill_state(&p).await.iter().map(|t| t.2).sum();
    assert!(
        superseded > 0,
        "some chunk rows were changed by the stream inside their window and dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_reader_resumes_backfill_from_its_last_chunk() {
    let mut p = Pipeline::with_config(&config(500, 30)).await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.1, 21).await.expect("seed");
    p.start().await;
    // Wait until prompt_executions (the largest table) is partly copied.
    wait_until(
        "prompt_executions partly backfilled",
        Duration::from_secs(180),
        || async {
            backfill_state(&p)
                .await
                .iter()
                .any(|t| t.0 == "public.prompt_executions" && t.3 >= 5 && !t.4)
        },
    )
    .await;
    p.reader.as_mut().unwrap().kill9();
    let before = backfill_state(&p).await;
    let done_before: Vec<String> = before.iter().filter(|t| t.4).map(|t| t.0.clone()).collect();
    assert!(
        !done_before.is_empty(),
        "parents were done before the kill: {before:?}"
    );
    p.start_reader();
    let reader: &Service = p.reader.as_ref().unwrap();
    assert!(
        reader
            .wait_for_output("resuming backfill", Duration::from_secs(60))
            .await
    );
    assert!(
        reader
            .wait_for_output(
                "resuming backfill table=public.prompt_executions",
                Duration::from_secs(60)
            )
            .await
    );
    let out = reader.output();
    let resumed = out
        .lines()
        .find(|l| l.contains("resuming backfill table=public.prompt_executions"))
        .unwrap();
    let executions = before
        .iter()
        .find(|t| t.0 == "public.prompt_executions")
        .unwrap();
    // The writer may apply more chunks after the kill (published before it): the resume
    // point is at least what was recorded then, and not the start.
    let rows_done: i64 = resumed
        .split("rows_done=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        rows_done >= executions.1 && rows_done > 0,
        "resumes after the recorded chunks ({executions:?}): {resumed}"
    );
    for t in &done_before {
        assert!(
            !out.lines()
                .any(|l| l.contains("backfill table=") && l.contains(&format!("table={t} "))),
            "{t} was done before the kill and must not be copied again:\n{out}"
        );
    }
    wait_until(
        "every table backfilled",
        Duration::from_secs(180),
        || async {
            let s = backfill_state(&p).await;
            s.len() == 9 && s.iter().all(|t| t.4)
        },
    )
    .await;
    p.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_writer_loses_and_double_counts_no_chunk() {
    // The writer applies chunks on connections of their own, and its checkpoint stays
    // behind any chunk not committed yet: kill -9 it while prompt_executions is being
    // copied, start it again, and every row is there once, counted once.
    let mut p = Pipeline::with_config(&config(500, 20)).await;
    let legacy = p.legacy_client().await;
    let seeded = rekey_workload::seed(&legacy, 0.1, 33).await.expect("seed");
    let before = indexes(&p).await;
    p.start().await;
    wait_until(
        "prompt_executions partly backfilled",
        Duration::from_secs(180),
        || async {
            backfill_state(&p)
                .await
                .iter()
                .any(|t| t.0 == "public.prompt_executions" && t.3 >= 5 && !t.4)
        },
    )
    .await;
    // Its foreign-key indexes wait for the end of its backfill, recorded.
    let during = indexes(&p).await;
    let deferred: Vec<String> = p
        .target_client()
        .await
        .query(
            "SELECT index_name FROM rekey.deferred_index WHERE target_table = 'public.prompt_executions' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        deferred,
        [
            "prompt_executions_prompt_template_id_idx",
            "prompt_executions_variable_collection_id_idx"
        ]
    );
    assert!(
        during.iter().all(|(name, _)| !deferred.contains(name))
            && during
                .iter()
                .any(|(name, _)| name == "prompt_executions_pkey"),
        "deferred indexes are dropped, the primary key stays: {during:?}"
    );
    // …and the operator is told.
    let mut status = Service::spawn(
        "rekeyctl",
        &["--config", &p.config_arg(), "status"],
        &p.env(),
    );
    status
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("status exits");
    assert!(
        status
            .output()
            .lines()
            .any(|l| l.starts_with("backfill: public.prompt_executions ")
                && l.ends_with(", 2 indexes deferred until done")),
        "{}",
        status.output()
    );
    p.writer.as_mut().unwrap().kill9();
    p.start_writer();
    wait_until(
        "every table backfilled",
        Duration::from_secs(180),
        || async {
            let s = backfill_state(&p).await;
            s.len() == 9 && s.iter().all(|t| t.4)
        },
    )
    .await;
    p.assert_converged().await;
    let state = backfill_state(&p).await;
    let copied: i64 = state.iter().map(|t| t.1).sum();
    assert_eq!(
        copied as u64,
        seeded.total(),
        "no workload ran, so every seeded row is copied and counted exactly once: {state:?}"
    );
    assert_indexes_back(&p, &before).await;
    p.assert_verify_clean().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deferred_indexes_come_back_once_their_table_is_done_or_deferral_is_off() {
    // The writer's start-up step, on its own: whatever a crash left behind, a table
    // still being copied has its secondary indexes deferred, a table that is in has
    // them built again, and turning deferral off brings every one back as it was.
    let pg = rekey_tests::Pg::start().await;
    pg.create_database("target").await;
    let t = pg.connect("target").await;
    t.batch_execute(rekey_workload::TARGET_SQL).await.unwrap();
    t.batch_execute(rekey::backfill::SCHEMA_SQL).await.unwrap();
    let before = index_defs(&t).await;
    let mut config = rekey::config::Config::parse(promptstudio_config()).unwrap();

    rekey::deferred_index::reconcile(&t, &config).await.unwrap();
    let dropped = deferred_names(&t).await;
    assert_eq!(dropped.len(), 11, "every non-unique index: {dropped:?}");
    let during = index_defs(&t).await;
    for (name, def) in &during {
        assert!(!dropped.contains(name));
        assert!(
            name.ends_with("_pkey") || def.starts_with("CREATE UNIQUE INDEX"),
            "only keys and unique indexes stay: {name}"
        );
    }
    // Idempotent: a second start changes nothing.
    rekey::deferred_index::reconcile(&t, &config).await.unwrap();
    assert_eq!(deferred_names(&t).await, dropped);

    t.batch_execute(
        "INSERT INTO rekey.backfill (target_table, source_table, done)
         VALUES ('public.prompt_executions', 'public.prompt_executions', true)",
    )
    .await
    .unwrap();
    rekey::deferred_index::reconcile(&t, &config).await.unwrap();
    assert!(!deferred_names(&t)
        .await
        .iter()
        .any(|n| n.starts_with("prompt_executions_")));
    assert_eq!(deferred_names(&t).await.len(), 9);

    config.backfill.defer_indexes = false;
    rekey::deferred_index::reconcile(&t, &config).await.unwrap();
    assert!(deferred_names(&t).await.is_empty());
    assert_eq!(
        index_defs(&t).await,
        before,
        "every index back, defined as it was"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deferring_indexes_gives_way_to_a_session_holding_a_table_lock() {
    // An application reads the new store in a long transaction while the writer starts:
    // the writer's start-up must not wait for ever for its exclusive lock (every later
    // query on the table would queue behind it). It gives up after its lock timeout
    // with an error the writer retries, leaves nothing half done, and succeeds once the
    // lock is released.
    let pg = rekey_tests::Pg::start().await;
    pg.create_database("target").await;
    let t = pg.connect("target").await;
    t.batch_execute(rekey_workload::TARGET_SQL).await.unwrap();
    t.batch_execute(rekey::backfill::SCHEMA_SQL).await.unwrap();
    let before = index_defs(&t).await;
    let config = rekey::config::Config::parse(promptstudio_config()).unwrap();

    let app = pg.connect("target").await;
    app.batch_execute("BEGIN; SELECT count(*) FROM prompt_executions")
        .await
        .unwrap();
    let writer = pg.connect("target").await;
    let waited = tokio::time::timeout(
        Duration::from_secs(120),
        rekey::deferred_index::reconcile(&writer, &config),
    )
    .await
    .expect("reconcile gives up instead of waiting for the lock for ever");
    let err = waited.expect_err("the lock was held");
    assert!(err.is_retryable(), "the writer retries it: {err}");
    assert!(
        err.one_line().contains("prompt_executions"),
        "names the table it waited for: {}",
        err.one_line()
    );
    assert!(deferred_names(&t).await.is_empty(), "all or nothing");
    assert_eq!(index_defs(&t).await, before);

    app.batch_execute("COMMIT").await.unwrap();
    rekey::deferred_index::reconcile(&writer, &config)
        .await
        .unwrap();
    assert_eq!(deferred_names(&t).await.len(), 11);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_the_stream_wrote_before_their_chunk_and_awkward_text_arrive_intact() {
    // Chunks of 100 rows (the fewest the writer loads with COPY) held open 300 ms:
    // prompt_executions, late in the config's order, is
    // reached long after the stream has written some of its rows.
    let mut p = Pipeline::with_config(&config(100, 300)).await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 21).await.expect("seed");
    // Pre-existing values COPY's text format must escape, beside NULL and empty ones.
    legacy
        .batch_execute(
            r#"UPDATE prompt_executions SET response = CASE id % 4
                 WHEN 0 THEN E'tab\there\nnew line\r\nend\t'
                 WHEN 1 THEN E'back\\slash \\. \\N \\t and a lone \\'
                 WHEN 2 THEN '' END
                WHERE id % 3 = 0;
               UPDATE prompt_libraries SET tags = ARRAY[E'a\tb', 'quo"te', E'back\\slash', 'NULL', '', E'line\nbreak']
                WHERE id % 2 = 0;"#,
        )
        .await
        .expect("awkward values");
    let last: i64 = legacy
        .query_one("SELECT max(id) FROM prompt_executions", &[])
        .await
        .unwrap()
        .get(0);
    p.start().await;
    // The stream writes the last executions (whole rows) before backfill reaches them.
    legacy
        .batch_execute(&format!(
            "UPDATE prompt_executions SET output_tokens = 100000 + id, response = E'streamed\\t' || id
              WHERE id > {last} - 20"
        ))
        .await
        .expect("updating the last executions");
    let target = p.target_client().await;
    wait_until(
        "the stream to write the last executions",
        Duration::from_secs(60),
        || async {
            target
                .query_one(
                    "SELECT count(*) FROM prompt_executions WHERE output_tokens > 100000",
                    &[],
                )
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == 20)
        },
    )
    .await;
    let reached: Option<i64> = target
        .query_opt(
            "SELECT last_key[1]::bigint FROM rekey.backfill WHERE target_table = 'public.prompt_executions'",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert!(
        reached.is_none_or(|k| k < last - 20),
        "backfill had already copied prompt_executions up to {reached:?} (rows from {})",
        last - 19
    );
    wait_until(
        "every table backfilled",
        Duration::from_secs(240),
        || async {
            let s = backfill_state(&p).await;
            s.len() == 9 && s.iter().all(|t| t.4)
        },
    )
    .await;
    p.assert_converged().await;
    let streamed: i64 = target
        .query_one(
            "SELECT count(*) FROM prompt_executions WHERE response = E'streamed\\t' || legacy_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(streamed, 20, "the streamed rows keep their newer values");
}

/// Transactions waiting for a lock on `table` (a chunk's COPY or upsert needs ROW
/// EXCLUSIVE, which a SHARE lock excludes).
async fn waiting_on_lock(client: &tokio_postgres::Client, table: &str) -> f64 {
    client
        .query_one(
            "SELECT count(*)::float8 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              WHERE c.relname = $1 AND NOT l.granted",
            &[&table],
        )
        .await
        .map(|r| r.get::<_, f64>(0))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_copied_again_while_its_first_copy_is_in_flight_is_applied_once() {
    // The first chunks of prompt_executions wait on a lock the test holds while the
    // reader is killed and restarted: it publishes the same key range again, and the
    // writer has two copies of it in flight on two connections. Neither may COPY rows
    // the other is writing (it would fail on the key): the second waits for the first.
    let mut p = Pipeline::with_config(&config(200, 1500)).await;
    let legacy = p.legacy_client().await;
    rekey_workload::seed(&legacy, 0.01, 41).await.expect("seed");
    p.start().await;
    let writer = p.writer.as_ref().unwrap();
    assert!(
        writer
            .wait_for_output(
                "indexes deferred: built once the table's backfill is in table=\"public.prompt_executions\"",
                Duration::from_secs(60)
            )
            .await,
        "{}",
        writer.output()
    );
    let lock = p.target_client().await;
    lock.batch_execute("BEGIN; LOCK TABLE prompt_executions IN SHARE MODE")
        .await
        .expect("locking prompt_executions against writes");
    let in_flight = |p: &Pipeline| {
        let port = p.writer_metrics;
        async move {
            rekey_tests::scrape::sum(
                &rekey_tests::scrape::scrape(port).await,
                "rekey_writer_backfill_chunks_in_flight",
            )
        }
    };
    // Every chunk in flight is one waiting on the lock: a finished chunk of an earlier
    // table, not yet collected, would leave the count later and hide the second copy's
    // arrival.
    let probe = p.target_client().await;
    wait_until(
        "chunks of prompt_executions waiting on the lock, and no other chunk in flight",
        Duration::from_secs(120),
        || async {
            let b = waiting_on_lock(&probe, "prompt_executions").await;
            b >= 1.0 && in_flight(&p).await == b
        },
    )
    .await;
    p.reader.as_mut().unwrap().kill9();
    let before = in_flight(&p).await;
    p.start_reader();
    wait_until(
        "the same range published again and in flight beside its first copy",
        Duration::from_secs(60),
        || async { in_flight(&p).await > before },
    )
    .await;
    lock.batch_execute("COMMIT")
        .await
        .expect("releasing the lock");
    wait_until(
        "every table backfilled",
        Duration::from_secs(180),
        || async {
            let s = backfill_state(&p).await;
            s.len() == 9 && s.iter().all(|t| t.4)
        },
    )
    .await;
    p.assert_converged().await;
    let writer = p.writer.as_mut().unwrap();
    assert!(writer.is_running(), "{}", writer.output());
}
