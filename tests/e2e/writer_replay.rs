//! The writer's exactly-once effect, driven with hand-made batches on a real broker and
//! a real target: duplicates, a transaction re-sent after a partial first copy (a reader
//! that crashed while publishing a chunked transaction), stale replays after a delete,
//! and a writer restart in the middle — the target ends as if each source transaction
//! had been applied once, in order.

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use rekey::event::{self, value::Kind, Op};
use rekey_tests::pipeline::SECRET;
use rekey_tests::{wait_until, Pipeline};

fn table() -> event::Table {
    let col = |name: &str, is_key: bool| event::Column {
        name: name.into(),
        type_name: String::new(),
        is_key,
    };
    event::Table {
        entity: "prompt_labs".into(),
        source_table: "public.prompt_labs".into(),
        target_table: "public.prompt_labs".into(),
        columns: vec![
            col("id", true),
            col("legacy_id", false),
            col("lab_id", false),
            col("name", false),
        ],
    }
}

fn text(s: impl Into<String>) -> event::Value {
    event::Value {
        kind: Some(Kind::Text(s.into())),
    }
}

fn unchanged() -> event::Value {
    event::Value {
        kind: Some(Kind::Unchanged(true)),
    }
}

struct Source;

impl Source {
    fn change(&self, op: Op, key: i64, name: &str) -> event::Change {
        let id = rekey::rekey::Rekeyer::new(SECRET.as_bytes())
            .uuid("prompt_labs", &key.to_string())
            .to_string();
        let row = match op {
            Op::Delete => vec![text(id), unchanged(), unchanged(), unchanged()],
            _ => vec![
                text(id),
                text(key.to_string()),
                text(format!("lab-{key}")),
                text(name),
            ],
        };
        event::Change {
            table: 0,
            op: op as i32,
            ordinal: 0,
            id: Vec::new(),
            legacy_key: key.to_string(),
            row,
            old_key: Vec::new(),
        }
    }

    fn txn(&self, lsn: u64, seq: u32, last: bool, changes: Vec<event::Change>) -> Vec<u8> {
        // As a reader of schema version 1 wrote them (each transaction with its own
        // tables): writers keep understanding what older readers left in the topic.
        event::Batch {
            schema_version: event::MIN_SCHEMA_VERSION,
            tables: Vec::new(),
            lz4: Vec::new(),
            transactions: vec![event::Transaction {
                position: Some(event::SourcePosition {
                    commit_lsn: lsn,
                    end_lsn: lsn + 1,
                    xid: lsn as u32,
                    commit_time_micros: 1_700_000_000_000_000 + lsn as i64,
                }),
                chunk_seq: seq,
                last,
                heartbeat: false,
                tables: vec![table()],
                changes,
                backfill: None,
                copy: None,
            }],
        }
        .encode_to_vec()
    }
}

async fn send(producer: &FutureProducer, topic: &str, payloads: Vec<Vec<u8>>) {
    for payload in payloads {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(topic)
                    .partition(0)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("delivered");
    }
}

async fn labs(p: &Pipeline) -> String {
    p.target_value(
        "SELECT string_agg(legacy_id || ':' || name || ':' || (deleted_at IS NOT NULL)::text, ' ' ORDER BY legacy_id) FROM prompt_labs",
    )
    .await
    .unwrap_or_default()
}

async fn consistent_lsn(p: &Pipeline) -> i64 {
    // The writer creates rekey.checkpoint when it starts.
    match p
        .target_client()
        .await
        .query_opt("SELECT commit_lsn FROM rekey.checkpoint", &[])
        .await
    {
        Ok(Some(row)) => row.get(0),
        _ => 0,
    }
}

/// A producer to the pipeline's broker, for hand-made batches.
fn producer(p: &Pipeline) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", p.broker.bootstrap())
        .create()
        .expect("producer")
}

/// Waits until the writer's checkpoint is at the source transaction `lsn`.
async fn applied(p: &Pipeline, lsn: i64) {
    wait_until(
        &format!("transaction {lsn} applied"),
        Duration::from_secs(30),
        || async { consistent_lsn(p).await == lsn },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_partial_copies_and_stale_replays_apply_once() {
    let mut p = Pipeline::new().await;
    p.start_writer();
    let topic = p.config().kafka.topic.clone();
    let producer = producer(&p);
    let s = Source;
    use Op::*;
    send(
        &producer,
        &topic,
        vec![
            s.txn(
                100,
                0,
                true,
                vec![s.change(Insert, 1, "one"), s.change(Insert, 9, "nine")],
            ),
            // A chunked transaction whose first copy stops after two chunks…
            s.txn(200, 0, false, vec![s.change(Insert, 2, "two")]),
            s.txn(200, 1, false, vec![s.change(Insert, 3, "three")]),
            // …then the reader restarts from its confirmed LSN: a duplicate of 100,
            s.txn(
                100,
                0,
                true,
                vec![s.change(Insert, 1, "one"), s.change(Insert, 9, "nine")],
            ),
            // and the whole of 200 again, this time complete.
            s.txn(200, 0, false, vec![s.change(Insert, 2, "two")]),
            s.txn(200, 1, false, vec![s.change(Insert, 3, "three")]),
            s.txn(
                200,
                2,
                true,
                vec![s.change(Insert, 4, "four"), s.change(Update, 2, "two v2")],
            ),
        ],
    )
    .await;
    applied(&p, 200).await;
    assert_eq!(
        labs(&p).await,
        "1:one:false 2:two v2:false 3:three:false 4:four:false 9:nine:false"
    );

    // Restart the writer between two transactions, then deliver a delete, and stale
    // copies of the inserts (older LSN) that must not resurrect or overwrite anything.
    p.writer.as_mut().unwrap().kill9();
    send(
        &producer,
        &topic,
        vec![
            s.txn(
                300,
                0,
                true,
                vec![s.change(Delete, 1, ""), s.change(Update, 9, "nine v3")],
            ),
            s.txn(
                100,
                0,
                true,
                vec![s.change(Insert, 1, "one"), s.change(Insert, 9, "nine")],
            ),
            s.txn(
                200,
                2,
                true,
                vec![s.change(Insert, 4, "four"), s.change(Update, 2, "two v2")],
            ),
        ],
    )
    .await;
    p.start_writer();
    applied(&p, 300).await;
    // Let the stale copies reach the writer too.
    send(
        &producer,
        &topic,
        vec![s.txn(400, 0, true, vec![s.change(Insert, 5, "five")])],
    )
    .await;
    applied(&p, 400).await;
    assert_eq!(
        labs(&p).await,
        "1:one:true 2:two v2:false 3:three:false 4:four:false 5:five:false 9:nine v3:false"
    );
    let versions = p
        .target_value(
            "SELECT string_agg(row_version::text, ',' ORDER BY legacy_id) FROM prompt_labs",
        )
        .await;
    assert_eq!(
        versions.as_deref(),
        Some("300,200,200,200,400,300"),
        "row_version is the commit LSN of the last change"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_run_of_new_rows_is_copied_and_rows_the_target_has_are_upserted() {
    // Runs of at least 100 inserts are loaded with COPY, except the rows the target
    // already has (here: replayed keys, and one soft-deleted since), which must take the
    // upsert: COPY would fail on their key.
    let mut p = Pipeline::new().await;
    p.start_writer();
    let topic = p.config().kafka.topic.clone();
    let producer = producer(&p);
    let s = Source;
    use Op::*;
    let awkward = |k: i64| match k % 4 {
        0 => format!("tab\there {k}"),
        1 => format!("line\nbreak\r\n{k}"),
        2 => format!("back\\slash \\. \\N {k}"),
        _ => format!("plain {k}"),
    };
    let first: Vec<event::Change> = (1..=150)
        .map(|k| s.change(Insert, k, &awkward(k)))
        .collect();
    send(&producer, &topic, vec![s.txn(100, 0, true, first)]).await;
    applied(&p, 100).await;
    let expected = |keys: std::ops::RangeInclusive<i64>, name: &dyn Fn(i64) -> String| {
        keys.map(|k| format!("{k}:{}:false", name(k)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(labs(&p).await, expected(1..=150, &awkward));
    send(
        &producer,
        &topic,
        vec![s.txn(200, 0, true, vec![s.change(Delete, 5, "")])],
    )
    .await;
    // Keys 1..=150 again (5 soft-deleted now), and 50 new ones, in one run.
    let again = |k: i64| format!("again\t{k}");
    let second: Vec<event::Change> = (1..=200).map(|k| s.change(Insert, k, &again(k))).collect();
    send(&producer, &topic, vec![s.txn(300, 0, true, second)]).await;
    applied(&p, 300).await;
    assert_eq!(labs(&p).await, expected(1..=200, &again));
    let versions = p
        .target_value("SELECT string_agg(DISTINCT row_version::text, ',') FROM prompt_labs")
        .await;
    assert_eq!(versions.as_deref(), Some("300"));
    assert!(
        p.writer.as_mut().unwrap().is_running(),
        "the writer is still running"
    );
}

/// An upgrade done in the wrong order: a reader newer than the writer publishes a batch
/// of a schema version the writer does not know (version 3 added backfill rows as
/// `COPY` lines, which a writer of 2 would silently drop). The writer stops with one line
/// saying to upgrade it, having applied nothing of that batch; started again (still not
/// upgraded), it stops at the same batch rather than skip it.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_a_newer_schema_stops_the_writer_and_applies_nothing_of_it() {
    let mut p = Pipeline::new().await;
    p.start_writer();
    let topic = p.config().kafka.topic.clone();
    let producer = producer(&p);
    let s = Source;
    send(
        &producer,
        &topic,
        vec![s.txn(100, 0, true, vec![s.change(Op::Insert, 1, "one")])],
    )
    .await;
    applied(&p, 100).await;
    let mut newer =
        event::Batch::decode(&s.txn(200, 0, true, vec![s.change(Op::Insert, 2, "two")])[..])
            .expect("a batch");
    newer.schema_version = event::SCHEMA_VERSION + 1;
    send(&producer, &topic, vec![newer.encode_to_vec()]).await;
    let writer = p.writer.as_mut().unwrap();
    let status = writer
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the writer stops");
    assert!(!status.success(), "it stops with a failure");
    let output = writer.output();
    let reason = output
        .lines()
        .find(|l| l.contains("upgrade the writer"))
        .unwrap_or_else(|| panic!("one line says to upgrade the writer:\n{output}"));
    assert!(
        reason.contains(&format!("schema version {}", event::SCHEMA_VERSION + 1)),
        "{reason}"
    );
    assert_eq!(
        labs(&p).await,
        "1:one:false",
        "nothing of the batch applied"
    );
    assert_eq!(consistent_lsn(&p).await, 100);
    p.start_writer();
    let writer = p.writer.as_mut().unwrap();
    let again = writer
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the restarted writer stops at the same batch");
    assert!(!again.success());
    assert!(
        writer.output().contains("upgrade the writer"),
        "{}",
        writer.output()
    );
    assert_eq!(labs(&p).await, "1:one:false");
    assert_eq!(consistent_lsn(&p).await, 100);
}
