//! Copying the seeded legacy database three ways, each timed alone on a quiet machine and
//! checked afterwards, so a fast but wrong copy cannot win:
//!
//! - **rekey**: reader and writer start with backfill on; done when every table's row
//!   in `rekey.backfill` is `done` and the writer's checkpoint has passed the legacy WAL
//!   position read after that (everything copied is applied). Checked with
//!   [`crate::compare::compare`]: every live row, keys and foreign keys rekeyed.
//! - **native**: a publication over the nine tables and a subscription with
//!   `copy_data = true` on a cluster with the legacy schema; done when every table is
//!   `ready`. Checked: row count and a row-text hash sum per table equal legacy's.
//! - **pg_dump**: `pg_dump --data-only | psql` into a fresh database with the legacy
//!   schema (its foreign keys fire). Checked like native.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::compare;
use crate::pg::Pg;
use crate::pipeline::{Pipeline, DB, SECRET};

use super::native;
use super::procstat::{self, Probe};

/// One timed copy.
#[derive(Debug, Clone)]
pub struct Copy {
    /// `rekey`, `native`, `pg_dump`.
    pub method: &'static str,
    /// What was measured, for the report.
    pub description: String,
    /// Legacy rows the copy had to move.
    pub rows: u64,
    pub elapsed: Duration,
    /// Ok, or what differs.
    pub check: Result<(), String>,
    pub check_method: &'static str,
    /// CPU per component during the copy, % of one core.
    pub cpu: Vec<(String, f64)>,
    /// Message payload bytes the reader published (rekey only).
    pub broker_bytes: Option<u64>,
}

impl Copy {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU time per row copied, in µs, per component and (last) their `total`: what a
    /// copy costs independently of how busy the machine was. `machine` is left out.
    pub fn cpu_micros_per_row(&self) -> Vec<(String, f64)> {
        super::procstat::micros_per_unit(&self.cpu, self.elapsed, self.rows)
    }

    pub fn broker_bytes_per_row(&self) -> Option<f64> {
        self.broker_bytes
            .map(|b| b as f64 / self.rows.max(1) as f64)
    }
}

/// Per table: row count and the sum of a hash of each row's text.
pub async fn fingerprints(client: &Client) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for table in rekey_workload::TABLES {
        let row = client
            .query_one(
                &format!("SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0)::bigint FROM {table} t"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("fingerprint of {table}: {e}"));
        out.push((table.to_string(), row.get(0), row.get(1)));
    }
    out
}

/// Legacy rows in the nine tables.
pub async fn legacy_rows(legacy: &Client) -> u64 {
    fingerprints(legacy)
        .await
        .iter()
        .map(|(_, n, _)| *n as u64)
        .sum()
}

/// Whether two [`fingerprints`] agree; the tables that differ otherwise.
pub fn same(expected: &[(String, i64, i64)], actual: &[(String, i64, i64)]) -> Result<(), String> {
    let bad: Vec<String> = expected
        .iter()
        .zip(actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| {
            format!(
                "{}: {} rows (hash {}) expected, {} rows (hash {})",
                e.0, e.1, e.2, a.1, a.2
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// `pg_dump --data-only` of the legacy database piped into `psql` on a fresh database
/// `dump_copy` with the legacy schema on `dest` (dropped afterwards).
pub async fn pg_dump(legacy: &Pg, dest: &Pg) -> Copy {
    const COPY_DB: &str = "dump_copy";
    dest.create_database(COPY_DB).await;
    dest.connect(COPY_DB)
        .await
        .batch_execute(rekey_workload::LEGACY_SQL)
        .await
        .expect("legacy schema in the pg_dump copy");
    let legacy_client = legacy.connect(DB).await;
    let expected = fingerprints(&legacy_client).await;
    let rows = expected.iter().map(|(_, n, _)| *n as u64).sum();

    let bindir = legacy.bindir().to_path_buf();
    let (src_port, dst_port) = (legacy.port, dest.port);
    let probes = [
        Probe::cluster("legacy pg", legacy.dir()),
        Probe::cluster("copy pg", dest.dir()),
        Probe::finished_children("pg_dump+psql"),
        Probe::machine(),
    ];
    let cpu0 = procstat::snapshot(&probes);
    let began = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let client_cmd = |name: &str| {
            let mut c = std::process::Command::new(bindir.join(name));
            for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS"] {
                c.env_remove(var);
            }
            c.args(["-h", "127.0.0.1", "-U", "postgres"]);
            c
        };
        let mut dump = client_cmd("pg_dump")
            .args(["-p", &src_port.to_string(), "--data-only", "-d", DB])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run pg_dump: {e}"));
        let pipe = dump.stdout.take().expect("pg_dump stdout");
        let psql = client_cmd("psql")
            .args([
                "-p",
                &dst_port.to_string(),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-d", COPY_DB])
            .stdin(pipe)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        let psql = psql.wait_with_output().expect("psql");
        let dump = dump.wait_with_output().expect("pg_dump");
        (dump, psql)
    })
    .await
    .expect("pg_dump | psql task");
    let elapsed = began.elapsed();
    let cpu = procstat::usage(&probes, &cpu0, &procstat::snapshot(&probes));
    let (dump, psql) = status;
    let check = if !dump.status.success() || !psql.status.success() {
        Err(format!(
            "pg_dump ({}): {} / psql ({}): {}",
            dump.status,
            String::from_utf8_lossy(&dump.stderr).trim(),
            psql.status,
            String::from_utf8_lossy(&psql.stderr).trim()
        ))
    } else {
        same(&expected, &fingerprints(&dest.connect(COPY_DB).await).await)
    };
    dest.connect("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE {COPY_DB}"))
        .await
        .unwrap_or_else(|e| panic!("dropping {COPY_DB}: {e}"));
    Copy {
        method: "pg_dump",
        description: "pg_dump --data-only | psql (legacy schema, FKs firing)".into(),
        rows,
        elapsed,
        check,
        check_method: "row count and row-hash sum per table",
        cpu,
        broker_bytes: None,
    }
}

/// Native logical replication's initial sync into `subscriber`'s `DB` (legacy schema,
/// empty); the subscription and publication are dropped afterwards and the copied rows
/// stay.
pub async fn native_sync(legacy: &Pg, subscriber: &Pg) -> Copy {
    const NAME: &str = "bench_copy";
    let legacy_client = legacy.connect(DB).await;
    let sub = subscriber.connect(DB).await;
    let expected = fingerprints(&legacy_client).await;
    let rows = expected.iter().map(|(_, n, _)| *n as u64).sum();
    native::publish(&legacy_client, NAME, &rekey_workload::TABLES).await;
    let probes = [
        Probe::cluster("legacy pg", legacy.dir()),
        Probe::cluster("subscriber pg", subscriber.dir()),
        Probe::machine(),
    ];
    let cpu0 = procstat::snapshot(&probes);
    let began = Instant::now();
    native::subscribe(&sub, NAME, legacy, DB).await;
    native::wait_ready(
        &sub,
        NAME,
        rekey_workload::TABLES.len(),
        Duration::from_secs(3600),
    )
    .await;
    let elapsed = began.elapsed();
    let cpu = procstat::usage(&probes, &cpu0, &procstat::snapshot(&probes));
    native::unsubscribe(&sub, NAME).await;
    native::unpublish(&legacy_client, NAME).await;
    let check = same(&expected, &fingerprints(&sub).await);
    Copy {
        method: "native",
        description: "logical replication initial sync (copy_data = true, FKs not firing)".into(),
        rows,
        elapsed,
        check,
        check_method: "row count and row-hash sum per table",
        cpu,
        broker_bytes: None,
    }
}

/// Starts rekey's reader and writer (backfill on) and times the copy (see the module
/// doc). They keep running afterwards: the streaming phase uses them.
pub async fn rekey(p: &mut Pipeline, settings: &str) -> Copy {
    let legacy = p.legacy_client().await;
    let rows = legacy_rows(&legacy).await;
    let tables = p.config().tables.len() as i64;
    let began = Instant::now();
    p.start_reader();
    p.start_writer();
    let probes = super::rekey_probes(p);
    let cpu0 = procstat::snapshot(&probes);
    let target = p.target_client().await;
    let deadline = Duration::from_secs(3600);
    loop {
        // Done: every table copied and every deferred index built again.
        let done = target
            .query_one(
                "SELECT CASE WHEN EXISTS (SELECT FROM rekey.deferred_index) THEN -1
                        ELSE (SELECT count(*) FILTER (WHERE done) FROM rekey.backfill) END",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        if done >= tables {
            break;
        }
        for s in [p.reader.as_mut(), p.writer.as_mut()].into_iter().flatten() {
            if !s.is_running() {
                panic!(
                    "a rekey service exited during backfill; its log: {}\n{}",
                    s.log_path().display(),
                    s.output()
                );
            }
        }
        if began.elapsed() > deadline {
            panic!("rekey backfill not done after {}s", deadline.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let consumer = super::consumer::Consumer::Rekey { target };
    super::consumer::drain(&legacy, &consumer, Duration::from_secs(600))
        .await
        .expect("the writer applies everything up to the end of backfill");
    let elapsed = began.elapsed();
    let cpu = procstat::usage(&probes, &cpu0, &procstat::snapshot(&probes));
    let published = crate::scrape::scrape(p.reader_metrics).await;
    let broker_bytes =
        crate::scrape::sum(&published, rekey::telemetry::READER_BYTES_PUBLISHED) as u64;
    let check = rekey_check(p, &legacy).await;
    Copy {
        method: "rekey",
        description: format!(
            "legacy → reader → broker → writer → new, keys rekeyed ({settings}; FKs not firing until done)"
        ),
        rows,
        elapsed,
        check,
        check_method: "rekey_tests::compare: every live row, keys and FKs rekeyed",
        cpu,
        broker_bytes: Some(broker_bytes),
    }
}

/// Whether rekey's target equals the legacy database, keys translated (see
/// [`crate::compare`]); the caller has waited until the writer caught up.
pub async fn rekey_check(p: &Pipeline, legacy: &Client) -> Result<(), String> {
    let target = p.target_client().await;
    let diffs = compare::compare(legacy, &target, &p.config(), SECRET).await;
    let bad: Vec<String> = diffs
        .iter()
        .filter(|d| !d.is_equal())
        .map(|d| {
            format!(
                "{}: legacy {} rows, target {} live ({} missing/different, {} unexpected)",
                d.table,
                d.legacy_rows,
                d.target_live_rows,
                d.missing.len(),
                d.unexpected.len()
            )
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}
