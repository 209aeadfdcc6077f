//! `make bench`: rekey next to PostgreSQL's own tools, on one machine, on the same data
//! (the PromptStudio seed at a scale factor), in one run. Benchmarks are not tests:
//! nothing here asserts a timing; copies are checked for correctness so a fast but wrong
//! run cannot win.
//!
//! ```text
//!  seed legacy ─▶ VACUUM ANALYZE, CHECKPOINT
//!     │
//!     ├─ backfill (each alone, same rows):  pg_dump | psql ─▶ native initial sync ─▶ rekey
//!     │                                     (rekey's reader and writer keep running)
//!     ├─ streaming, rekey:   steps (pgbench at rising rates) ─▶ latency at half the best
//!     │                      ─▶ catch-up (stopped during one unthrottled step, started)
//!     │                      ─▶ cutover drain ─▶ peak RSS ─▶ stop, drop their slot
//!     └─ streaming, native:  fresh subscriber copy (truncate, copy_data) ─▶ steps ─▶ latency
//!                            ─▶ catch-up (subscription disabled, then enabled)
//! ```
//!
//! Streaming runs with `synchronous_commit = on` on the legacy cluster (PostgreSQL's
//! default; the harness turns it off for the tests, and then a commit reaches the WAL
//! senders only when the WAL writer flushes, up to 200 ms later, for both consumers).
//! One consumer streams at a time; the other is stopped (rekey) or not subscribed yet
//! (native), so neither takes CPU from the other. The servers: a legacy cluster, the
//! rekey target cluster, a subscriber cluster (native, and the pg_dump copy in its own
//! database), all with the harness's settings (`--shared-buffers` sizes them), and one
//! tansu broker with its durable sqlite storage, as in the tests. `--broker-storage memory` keeps
//! the log in memory instead: during a backfill sqlite costs tansu 0.3–0.5 of a core (and
//! the reader's producer as much again, waiting on slower acknowledgements), a cost of
//! tansu's that Kafka, whose log is an append to the page cache, does not have; but
//! tansu's memory engine grows without bound and streams with a worse p99 latency.
//! The baselines copy the legacy schema as is, with its foreign keys: they fire for
//! `pg_dump | psql`, not for native apply (`session_replication_role = replica`), nor
//! for rekey while its backfill runs (same mechanism; enforced once it is done).
//!
//! See [`backfill`], [`streaming`], [`consumer`] (lag and drain, the hook for the cutover
//! drain time) and [`report`] (the table and the JSON).

pub mod backfill;
pub mod consumer;
pub mod cutover;
pub mod histogram;
pub mod native;
pub mod pgbench;
pub mod procstat;
pub mod report;
pub mod streaming;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::broker::Storage;
use crate::pipeline::{promptstudio_config, Pipeline, DB};
use crate::scrape::{self, scrape};
use crate::{Broker, Pg, PgOptions};

use consumer::Consumer;
use procstat::Probe;
use streaming::{Latency, Measured, Plan, Rate, Streaming};

/// Which parts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    Backfill,
    Streaming,
}

/// The command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub scale: f64,
    pub seed: u64,
    pub steps: Vec<Rate>,
    pub step_secs: u64,
    /// None: a tenth of the step, at least 2 s.
    pub drain_bound_secs: Option<f64>,
    pub only: Option<Only>,
    pub chunk_rows: usize,
    /// `backfill.parallelism`: chunks the writer applies at once.
    pub parallelism: usize,
    /// `backfill.defer_indexes`: secondary indexes built after each table's backfill.
    pub defer_indexes: bool,
    /// `target.replication_role = replica`: the writer checks no foreign keys and fires
    /// no ordinary trigger after backfill either, as native apply.
    pub replica: bool,
    /// librdkafka settings added to (or replacing) the config's `[kafka.options]`.
    pub kafka_options: Vec<(String, String)>,
    /// How the broker keeps its log (sqlite, as in the tests, unless told otherwise).
    pub broker_storage: Storage,
    /// `shared_buffers` of every cluster in the run.
    pub shared_buffers: String,
    pub clients: u32,
    pub jobs: u32,
    pub out: PathBuf,
}

pub const USAGE: &str = "usage: rekey-bench [--scale F] [--seed N] [--only backfill|streaming]
                   [--steps \"500,1000,2000,3000,4000,6000,8000,max\"] [--step-secs N]
                   [--drain-bound-secs S] [--chunk-rows N] [--parallelism N] [--no-defer-indexes] [--replica]
                   [--kafka-option KEY=VALUE]…
                   [--broker-storage memory|sqlite] [--shared-buffers SIZE] [--clients N] [--jobs N] [--out PATH]";

/// Rows per backfill chunk the bench runs rekey with: the product default, so the figures
/// are what a user gets. `--chunk-rows` tries others (at scale 1 on 2 vCPUs, once the
/// writer was the bottleneck, 5 000, 10 000 and 20 000 copied equally fast, 29.3k / 28.5k
/// / 29.5k rows/s, while the reader's peak RSS grew 231 → 262 → 310 MiB).
/// `shared_buffers` of the bench's clusters: the harness's, so the figures compare with
/// earlier runs. At scale 1, 1GB copied no faster (31.8k rows/s, 51 µs of CPU per row):
/// the data fits in the page cache either way.
pub const BENCH_SHARED_BUFFERS: &str = "32MB";

pub const BENCH_CHUNK_ROWS: usize = rekey::config::DEFAULT_BACKFILL_CHUNK_ROWS;

impl Default for Options {
    fn default() -> Self {
        Options {
            scale: 1.0,
            seed: 42,
            steps: [500.0, 1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0]
                .into_iter()
                .map(Rate::Tps)
                .chain([Rate::Max])
                .collect(),
            step_secs: 20,
            drain_bound_secs: None,
            only: None,
            chunk_rows: BENCH_CHUNK_ROWS,
            parallelism: rekey::config::DEFAULT_BACKFILL_PARALLELISM,
            defer_indexes: true,
            replica: false,
            kafka_options: Vec::new(),
            broker_storage: Storage::Sqlite,
            shared_buffers: BENCH_SHARED_BUFFERS.into(),
            clients: 4,
            jobs: 2,
            out: default_out(),
        }
    }
}

/// `<target dir>/bench/bench.json`, next to the profile directory of the running binary
/// (`target/release/rekey-bench` → `target/bench/bench.json`).
fn default_out() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|t| t.join("bench/bench.json")))
        .unwrap_or_else(|| PathBuf::from("target/bench/bench.json"))
}

impl Options {
    /// Parses the arguments (without the program name). `Ok(None)` for `--help`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
        let mut o = Options::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
                v.parse()
                    .map_err(|_| format!("{flag} {v}: not a valid number"))
            }
            match flag.as_str() {
                "--scale" => {
                    o.scale = num(&flag, &value()?)?;
                    if o.scale <= 0.0 || !o.scale.is_finite() {
                        return Err("--scale must be positive".into());
                    }
                }
                "--seed" => o.seed = num(&flag, &value()?)?,
                "--steps" => {
                    o.steps = value()?
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(Rate::parse)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("--steps {e}"))?;
                    if o.steps.is_empty() {
                        return Err("--steps needs at least one rate".into());
                    }
                }
                "--step-secs" => {
                    o.step_secs = num(&flag, &value()?)?;
                    if o.step_secs == 0 {
                        return Err("--step-secs must be at least 1".into());
                    }
                }
                "--drain-bound-secs" => o.drain_bound_secs = Some(num(&flag, &value()?)?),
                "--only" => {
                    o.only = Some(match value()?.as_str() {
                        "backfill" => Only::Backfill,
                        "streaming" => Only::Streaming,
                        v => return Err(format!("--only {v}: use backfill or streaming")),
                    })
                }
                "--chunk-rows" => {
                    o.chunk_rows = num(&flag, &value()?)?;
                    if o.chunk_rows == 0 {
                        return Err("--chunk-rows must be at least 1".into());
                    }
                }
                "--shared-buffers" => {
                    let v = value()?;
                    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                    let unit = &v[digits.len()..];
                    if digits.parse::<u64>().is_err()
                        || !["", "kB", "MB", "GB", "TB"].contains(&unit)
                    {
                        return Err(format!(
                            "--shared-buffers {v}: use a size such as 128MB or 2GB"
                        ));
                    }
                    o.shared_buffers = v;
                }
                "--parallelism" => {
                    o.parallelism = num(&flag, &value()?)?;
                    if o.parallelism == 0 {
                        return Err("--parallelism must be at least 1".into());
                    }
                }
                "--no-defer-indexes" => o.defer_indexes = false,
                "--replica" => o.replica = true,
                "--kafka-option" => {
                    let v = value()?;
                    let (k, v) = v
                        .split_once('=')
                        .ok_or_else(|| format!("--kafka-option {v}: use KEY=VALUE"))?;
                    o.kafka_options.push((k.trim().into(), v.trim().into()));
                }
                "--broker-storage" => {
                    o.broker_storage = match value()?.as_str() {
                        "memory" => Storage::Memory,
                        "sqlite" => Storage::Sqlite,
                        v => return Err(format!("--broker-storage {v}: use memory or sqlite")),
                    }
                }
                "--clients" => o.clients = num(&flag, &value()?)?,
                "--jobs" => o.jobs = num(&flag, &value()?)?,
                "--out" => o.out = PathBuf::from(value()?),
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        if o.clients == 0 || o.jobs == 0 || o.jobs > o.clients {
            return Err("--clients and --jobs must be at least 1, jobs ≤ clients".into());
        }
        Ok(Some(o))
    }

    pub fn plan(&self) -> Plan {
        let step = Duration::from_secs(self.step_secs);
        let bound = self
            .drain_bound_secs
            .map(Duration::from_secs_f64)
            .unwrap_or_else(|| (step / 10).max(Duration::from_secs(2)));
        Plan {
            steps: self.steps.clone(),
            step,
            drain_bound: bound,
            clients: self.clients,
            jobs: self.jobs,
        }
    }

    fn backfill(&self) -> bool {
        self.only != Some(Only::Streaming)
    }

    fn streaming(&self) -> bool {
        self.only != Some(Only::Backfill)
    }
}

/// Peak resident memory (`VmHWM`) of the long-running processes, in bytes.
#[derive(Debug, Clone, Default)]
pub struct PeakRss {
    pub reader: Option<u64>,
    pub writer: Option<u64>,
    pub broker: Option<u64>,
}

impl PeakRss {
    /// The larger of each (a restarted process starts its peak afresh).
    fn max(&self, other: &PeakRss) -> PeakRss {
        let m = |a: Option<u64>, b: Option<u64>| a.max(b);
        PeakRss {
            reader: m(self.reader, other.reader),
            writer: m(self.writer, other.writer),
            broker: m(self.broker, other.broker),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub options: Options,
    pub plan: Plan,
    /// `release` or `debug`: how the binaries were built.
    pub build: &'static str,
    pub cpus: usize,
    pub postgres: String,
    pub seeded_rows: u64,
    pub seed_secs: f64,
    pub backfill: Vec<backfill::Copy>,
    pub rekey: Option<Streaming>,
    /// Cutover drain time at half the highest sustained rate.
    pub cutover: Option<cutover::Drain>,
    pub native: Option<Streaming>,
    /// The second native initial sync that refreshes the subscriber before its streaming
    /// steps (more rows than the seed: rekey's steps added some).
    pub native_resync: Option<backfill::Copy>,
    pub peak_rss: PeakRss,
    pub elapsed: Duration,
}

impl Report {
    /// Whether every copy checked out (backfills, and the streamed copies at the end).
    pub fn all_correct(&self) -> bool {
        self.backfill
            .iter()
            .chain(&self.native_resync)
            .all(|c| c.check.is_ok())
            && [&self.rekey, &self.native]
                .into_iter()
                .flatten()
                .all(|s| s.check.is_ok())
    }
}

/// The config rekey runs with in the bench: the shipped PromptStudio mapping with the
/// backfill chunk size and any librdkafka settings from the command line.
pub fn rekey_config(o: &Options) -> String {
    use toml::{Table, Value};
    let mut doc: Table = promptstudio_config()
        .parse()
        .expect("the shipped PromptStudio config parses");
    fn table<'a>(t: &'a mut Table, key: &str) -> &'a mut Table {
        t.entry(key)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{key} is not a table"))
    }
    let backfill = table(&mut doc, "backfill");
    backfill.insert("chunk_rows".into(), Value::Integer(o.chunk_rows as i64));
    backfill.insert("parallelism".into(), Value::Integer(o.parallelism as i64));
    backfill.insert("defer_indexes".into(), Value::Boolean(o.defer_indexes));
    if o.replica {
        table(&mut doc, "target")
            .insert("replication_role".into(), Value::String("replica".into()));
    }
    let options = table(table(&mut doc, "kafka"), "options");
    for (k, v) in &o.kafka_options {
        options.insert(k.clone(), Value::String(v.clone()));
    }
    toml::to_string(&doc).expect("config serialises")
}

/// Reader, writer, broker and the clusters rekey involves.
pub fn rekey_probes(p: &Pipeline) -> Vec<Probe> {
    let mut v = Vec::new();
    if let Some(r) = &p.reader {
        v.push(Probe::process("reader", r.pid()));
    }
    if let Some(w) = &p.writer {
        v.push(Probe::process("writer", w.pid()));
    }
    if let Some(pid) = p.broker.pid() {
        v.push(Probe::process("tansu", pid));
    }
    v.push(Probe::cluster("legacy pg", p.legacy.dir()));
    v.push(Probe::cluster("target pg", p.target.dir()));
    v.push(Probe::machine());
    v
}

fn native_probes(legacy: &Pg, subscriber: &Pg) -> Vec<Probe> {
    vec![
        Probe::cluster("legacy pg", legacy.dir()),
        Probe::cluster("subscriber pg", subscriber.dir()),
        Probe::finished_children("pgbench"),
        Probe::machine(),
    ]
}

/// Runs the whole bench (see the module doc) and returns what it measured.
pub async fn run(options: Options) -> Report {
    let began = Instant::now();
    let plan = options.plan();
    println!("starting a legacy, a rekey target and a subscriber PostgreSQL and a tansu broker on loopback…");
    let cluster = || {
        Pg::start_with(PgOptions {
            shared_buffers: options.shared_buffers.clone(),
            ..PgOptions::default()
        })
    };
    let (legacy, target, subscriber, broker) = tokio::join!(
        cluster(),
        cluster(),
        cluster(),
        Broker::start_with(options.broker_storage)
    );
    let mut p = Pipeline::assemble(legacy, target, broker, &rekey_config(&options)).await;
    subscriber.create_database(DB).await;
    subscriber
        .connect(DB)
        .await
        .batch_execute(rekey_workload::LEGACY_SQL)
        .await
        .expect("legacy schema on the subscriber");
    let legacy = p.legacy_client().await;
    let postgres: String = legacy
        .query_one("SHOW server_version", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();

    println!(
        "seeding legacy: PromptStudio at scale {} (seed {})…",
        options.scale, options.seed
    );
    let seeded = rekey_workload::seed(&legacy, options.scale, options.seed)
        .await
        .unwrap_or_else(|e| panic!("seeding the legacy database: {e}"));
    println!("  {seeded}");
    // Hint bits set and statistics fresh before anything reads: no copy pays for them.
    legacy
        .batch_execute("VACUUM (ANALYZE)")
        .await
        .expect("VACUUM legacy");
    legacy
        .batch_execute("CHECKPOINT")
        .await
        .expect("CHECKPOINT");

    let mut report = Report {
        options: options.clone(),
        plan: plan.clone(),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        postgres,
        seeded_rows: seeded.total(),
        seed_secs: seeded.elapsed.as_secs_f64(),
        backfill: Vec::new(),
        rekey: None,
        cutover: None,
        native: None,
        native_resync: None,
        peak_rss: PeakRss::default(),
        elapsed: Duration::ZERO,
    };

    if options.backfill() {
        println!("backfill: pg_dump --data-only | psql…");
        let c = backfill::pg_dump(&p.legacy, &subscriber).await;
        print_copy(&c);
        report.backfill.push(c);
        println!("backfill: native logical replication initial sync…");
        let c = backfill::native_sync(&p.legacy, &subscriber).await;
        print_copy(&c);
        report.backfill.push(c);
    }
    let settings = [
        format!("chunk_rows = {}", options.chunk_rows),
        format!("parallelism = {}", options.parallelism),
        format!("defer_indexes = {}", options.defer_indexes),
    ]
    .into_iter()
    .chain(
        options
            .replica
            .then(|| "replication_role = replica".to_string()),
    )
    .chain(
        options
            .kafka_options
            .iter()
            .map(|(k, v)| format!("{k} = {v}")),
    )
    .collect::<Vec<_>>()
    .join(", ");
    println!("backfill: rekey (reader + writer, {settings})…");
    let c = backfill::rekey(&mut p, &settings).await;
    print_copy(&c);
    report.backfill.insert(0, c);

    if options.streaming() {
        // PostgreSQL's default: every commit is flushed, so it reaches the WAL senders at
        // once (the harness turns this off for the tests; then commits wait for the WAL
        // writer, up to 200 ms, which would put a floor under both consumers' latency).
        legacy
            .batch_execute("ALTER SYSTEM SET synchronous_commit = on")
            .await
            .expect("synchronous_commit on legacy");
        legacy
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .expect("reloading the legacy configuration");
        let mix = pgbench::Mix::prepare(&legacy).await;
        println!(
            "streaming: rekey, {} s steps, drain bound {:.1} s…",
            plan.step.as_secs(),
            plan.drain_bound.as_secs_f64()
        );
        let (rekey, rss_before_restart) = rekey_streaming(&mut p, &mix, &plan).await;
        report.rekey = Some(rekey);
        let rate = report
            .rekey
            .as_ref()
            .and_then(Streaming::best)
            .map_or(500.0, streaming::half_rate);
        println!(
            "cutover: drain time after {} s of load at {rate:.0} tx/s…",
            plan.step.as_secs()
        );
        let drain = cutover::measure(&p, &mix, rate, plan.step, (plan.clients, plan.jobs)).await;
        println!(
            "  cutover   {} in {:.2}s after phase = cutover (drain {:.2}s; includes the 2 s config poll, FK validation and verify)",
            drain.state,
            drain.total.as_secs_f64(),
            drain.drain_seconds.unwrap_or_default()
        );
        report.cutover = Some(drain);
        report.peak_rss = peak_rss(&p).max(&rss_before_restart);
        stop_rekey(&mut p).await;
        println!("streaming: native logical replication (fresh subscriber copy first)…");
        let (resync, native) = native_streaming(&p.legacy, &subscriber, &mix, &plan).await;
        report.native_resync = Some(resync);
        report.native = Some(native);
    } else {
        report.peak_rss = peak_rss(&p);
        stop_rekey(&mut p).await;
    }
    report.elapsed = began.elapsed();
    report
}

fn print_copy(c: &backfill::Copy) {
    println!(
        "  {:<8} {:>9} rows in {:>7.2}s = {:>9.0} rows/s  {}  cpu: {}",
        c.method,
        c.rows,
        c.elapsed.as_secs_f64(),
        c.rows_per_sec(),
        match &c.check {
            Ok(()) => "(checked: equal)".to_string(),
            Err(e) => format!("WRONG: {e}"),
        },
        report::cpu_text(&c.cpu)
    );
}

fn peak_rss(p: &Pipeline) -> PeakRss {
    PeakRss {
        reader: p
            .reader
            .as_ref()
            .and_then(|s| procstat::peak_rss_bytes(s.pid())),
        writer: p
            .writer
            .as_ref()
            .and_then(|s| procstat::peak_rss_bytes(s.pid())),
        broker: p.broker.pid().and_then(procstat::peak_rss_bytes),
    }
}

/// SIGTERM to reader and writer, then drops their slot so the legacy cluster keeps no
/// WAL for them while native streams.
async fn stop_rekey(p: &mut Pipeline) {
    for s in [p.reader.as_mut(), p.writer.as_mut()].into_iter().flatten() {
        s.sigterm();
    }
    for s in [p.reader.as_mut(), p.writer.as_mut()].into_iter().flatten() {
        if s.wait_exit(Duration::from_secs(30)).await.is_none() {
            s.kill9();
        }
    }
    let slot = p.config().source.slot;
    let legacy = p.legacy_client().await;
    for _ in 0..50 {
        match legacy
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
        {
            Ok(_) => return,
            // Still marked active for a moment after the reader's exit.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    eprintln!("rekey-bench: warning: could not drop the replication slot {slot}");
}

/// Rekey's steps, latency and catch-up; also the peak RSS before the catch-up restarted
/// reader and writer.
async fn rekey_streaming(
    p: &mut Pipeline,
    mix: &pgbench::Mix,
    plan: &Plan,
) -> (Streaming, PeakRss) {
    let legacy = p.legacy_client().await;
    let consumer = Consumer::Rekey {
        target: p.target_client().await,
    };
    let mut probes = rekey_probes(p);
    probes.insert(probes.len() - 1, Probe::finished_children("pgbench"));
    let bench = streaming::Bench {
        legacy: &p.legacy,
        legacy_client: &legacy,
        consumer: &consumer,
        mix,
        probes: &probes,
    };
    settle(&legacy, &consumer).await;
    let steps = bench.steps(plan).await;
    let mut s = Streaming {
        consumer: "rekey",
        steps,
        latency: None,
        catch_up: None,
        check: Ok(()),
        check_method: "rekey_tests::compare after catching up: every live row, keys and FKs rekeyed, deletes soft",
    };
    if let Some(best) = s.best() {
        let rate = streaming::half_rate(best);
        println!("  rekey latency at {rate:.0} tx/s…");
        let metric = rekey::telemetry::WRITER_END_TO_END_LATENCY;
        let before = scrape(p.writer_metrics).await;
        let writer_metrics = p.writer_metrics;
        let lat = bench
            .latency(
                rate,
                plan,
                std::future::pending::<()>(),
                || async move {
                    let after = scrape(writer_metrics).await;
                    let d = histogram::Buckets::from_scrape(&after, metric)
                        .since(&histogram::Buckets::from_scrape(&before, metric));
                    let q = |q| d.quantile(q).map(Duration::from_secs_f64);
                    // How the writer cut its target transactions meanwhile.
                    let batches = rekey::telemetry::WRITER_BATCH_CHANGES;
                    let delta = |suffix: &str| {
                        let name = format!("{batches}_{suffix}");
                        scrape::sum(&after, &name) - scrape::sum(&before, &name)
                    };
                    let (count, changes) = (delta("count"), delta("sum"));
                    Measured {
                        p50: q(0.5),
                        p99: q(0.99),
                        samples: d.count() as u64,
                        diagnostics: vec![
                            ("writer target transactions".into(), count),
                            (
                                "writer changes per target transaction (mean)".into(),
                                changes / count.max(1.0),
                            ),
                        ],
                    }
                },
                "writer histogram rekey_writer_end_to_end_latency_seconds (source commit → target commit, every source transaction; quantiles interpolated in buckets 5,10,25,50,100,250,500 ms…)",
            )
            .await;
        print_latency("rekey", &lat);
        s.latency = Some(lat);
    }
    consumer::drain(&legacy, &consumer, Duration::from_secs(600))
        .await
        .expect("rekey catches up after its streaming runs");
    // Catch-up: reader and writer stopped while the source writes, then started.
    let rss = peak_rss(p);
    for svc in [&p.reader, &p.writer].into_iter().flatten() {
        svc.sigterm();
    }
    for svc in [&mut p.reader, &mut p.writer].into_iter().flatten() {
        svc.wait_exit(Duration::from_secs(60)).await;
    }
    let changes = bench.backlog(plan, plan.step).await;
    let started = Instant::now();
    // (Pipeline::start_reader/start_writer, field by field: `bench` holds `p.legacy`.)
    p.reader = Some(p.spawn("rekey-reader", p.reader_metrics));
    p.writer = Some(p.spawn("rekey-writer", p.writer_metrics));
    let restarted = rekey_probes(p);
    s.catch_up = Some(
        bench
            .catch_up(changes, plan.step, started, &restarted)
            .await,
    );
    s.check = backfill::rekey_check(p, &legacy).await;
    (s, rss)
}

async fn native_streaming(
    legacy: &Pg,
    subscriber: &Pg,
    mix: &pgbench::Mix,
    plan: &Plan,
) -> (backfill::Copy, Streaming) {
    const NAME: &str = "bench_stream";
    let legacy_client = legacy.connect(DB).await;
    let sub = subscriber.connect(DB).await;
    // A fresh copy: the subscriber must hold what rekey's steps changed too.
    sub.batch_execute(&format!(
        "TRUNCATE {} CASCADE",
        rekey_workload::TABLES.join(", ")
    ))
    .await
    .expect("truncating the subscriber");
    native::create_marker(&legacy_client, &sub).await;
    let expected = backfill::fingerprints(&legacy_client).await;
    let mut tables: Vec<&str> = rekey_workload::TABLES.to_vec();
    tables.push(native::MARKER_TABLE);
    native::publish(&legacy_client, NAME, &tables).await;
    let began = Instant::now();
    native::subscribe(&sub, NAME, legacy, DB).await;
    native::wait_ready(&sub, NAME, tables.len(), Duration::from_secs(3600)).await;
    let elapsed = began.elapsed();
    let actual = backfill::fingerprints(&sub).await;
    let resync = backfill::Copy {
        method: "native",
        description: "re-sync of the subscriber before its streaming steps".into(),
        rows: expected.iter().map(|(_, n, _)| *n as u64).sum(),
        elapsed,
        check: if expected == actual {
            Ok(())
        } else {
            Err(format!("subscriber differs after re-sync: {actual:?}"))
        },
        check_method: "row count and row-hash sum per table",
        cpu: Vec::new(),
        broker_bytes: None,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let consumer = Consumer::Native {
        subscriber: sub,
        subscription: NAME.into(),
    };
    let probes = native_probes(legacy, subscriber);
    let bench = streaming::Bench {
        legacy,
        legacy_client: &legacy_client,
        consumer: &consumer,
        mix,
        probes: &probes,
    };
    settle(&legacy_client, &consumer).await;
    let steps = bench.steps(plan).await;
    let mut s = Streaming {
        consumer: "native",
        steps,
        latency: None,
        catch_up: None,
        check: Ok(()),
        check_method: "row count and row-hash sum per table after catching up",
    };
    if let Some(best) = s.best() {
        let rate = streaming::half_rate(best);
        println!("  native latency at {rate:.0} tx/s…");
        let after = native::last_marker(&legacy_client).await;
        let marker_client = legacy.connect(DB).await;
        let sub_client = subscriber.connect(DB).await;
        let during = async {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                native::send_marker(&marker_client).await;
            }
        };
        let lat: Latency = bench
            .latency(
                rate,
                plan,
                during,
                || async {
                    let v = native::marker_latencies(&sub_client, after).await;
                    let q = |q| histogram::sample_quantile(&v, q).map(Duration::from_secs_f64);
                    Measured {
                        p50: q(0.5),
                        p99: q(0.99),
                        samples: v.len() as u64,
                        diagnostics: Vec::new(),
                    }
                },
                "marker rows, 20/s alongside the load: legacy clock_timestamp() at insert → subscriber clock_timestamp() in an ENABLE ALWAYS trigger at apply (exact quantiles)",
            )
            .await;
        print_latency("native", &lat);
        s.latency = Some(lat);
    }
    consumer::drain(&legacy_client, &consumer, Duration::from_secs(600))
        .await
        .expect("native catches up after its streaming runs");
    // Catch-up: the subscription disabled while the source writes, then enabled.
    let sql = |on: bool| {
        format!(
            "ALTER SUBSCRIPTION {NAME} {}",
            if on { "ENABLE" } else { "DISABLE" }
        )
    };
    consumer_client(&consumer)
        .batch_execute(&sql(false))
        .await
        .expect("disabling the subscription");
    let changes = bench.backlog(plan, plan.step).await;
    let started = Instant::now();
    consumer_client(&consumer)
        .batch_execute(&sql(true))
        .await
        .expect("enabling the subscription");
    s.catch_up = Some(
        bench
            .catch_up(changes, plan.step, started, bench.probes)
            .await,
    );
    s.check = backfill::same(
        &backfill::fingerprints(&legacy_client).await,
        &backfill::fingerprints(consumer_client(&consumer)).await,
    );
    native::unsubscribe(consumer_client(&consumer), NAME).await;
    native::unpublish(&legacy_client, NAME).await;
    (resync, s)
}

/// Before the first step: the consumer has applied everything so far (its position is
/// known), and the machine had a moment to settle.
async fn settle(legacy: &tokio_postgres::Client, consumer: &Consumer) {
    consumer::drain(legacy, consumer, Duration::from_secs(300))
        .await
        .unwrap_or_else(|| panic!("{} did not catch up before the steps", consumer.name()));
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn consumer_client(c: &Consumer) -> &tokio_postgres::Client {
    match c {
        Consumer::Rekey { target } => target,
        Consumer::Native { subscriber, .. } => subscriber,
    }
}

fn print_latency(name: &str, l: &Latency) {
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
    println!(
        "  {name:<7} at {:.0} tx/s ({:.0} changes/s): p50 {}  p99 {}  ({} samples)",
        l.achieved_tps,
        l.changes_per_sec,
        ms(l.p50),
        ms(l.p99),
        l.samples
    );
    for (what, v) in &l.diagnostics {
        println!("  {name:<7} {what}: {v:.1}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        Options::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn the_bench_config_carries_its_settings() {
        let mut o = parse(&[
            "--chunk-rows",
            "777",
            "--parallelism",
            "3",
            "--kafka-option",
            "compression.type=zstd",
            "--no-defer-indexes",
            "--replica",
        ])
        .unwrap()
        .unwrap();
        let c = rekey::config::Config::parse(&rekey_config(&o)).unwrap();
        assert!(c.target.applies_as_replica());
        assert_eq!(c.backfill.chunk_rows, 777);
        assert_eq!(c.backfill.parallelism, 3);
        assert!(!c.backfill.defer_indexes);
        assert_eq!(c.kafka.options["compression.type"], "zstd");
        assert_eq!(c.tables.len(), 9);
        o.kafka_options.clear();
        o.defer_indexes = true;
        o.replica = false;
        let c = rekey::config::Config::parse(&rekey_config(&o)).unwrap();
        assert!(!c.target.applies_as_replica());
        assert_eq!(c.kafka.options["compression.type"], "none");
        assert!(c.backfill.defer_indexes);
        assert!(rekey_config(&o).contains("heartbeat_interval_secs = 10"));
    }

    #[test]
    fn flags_parse_and_defaults_hold() {
        let o = parse(&[]).unwrap().unwrap();
        assert_eq!(o.scale, 1.0);
        assert_eq!(o.steps.last(), Some(&Rate::Max));
        assert_eq!(o.plan().drain_bound, Duration::from_secs(2));
        let o = parse(&[
            "--scale",
            "0.1",
            "--steps=500, 1000,max",
            "--step-secs",
            "60",
            "--only",
            "streaming",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.scale, 0.1);
        assert_eq!(
            o.steps,
            vec![Rate::Tps(500.0), Rate::Tps(1000.0), Rate::Max]
        );
        assert_eq!(o.plan().drain_bound, Duration::from_secs(6));
        assert_eq!(o.only, Some(Only::Streaming));
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--steps", "fast"]).is_err());
        assert!(parse(&["--only", "both"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert_eq!(parse(&[]).unwrap().unwrap().broker_storage, Storage::Sqlite);
        let o = parse(&["--broker-storage", "memory"]).unwrap().unwrap();
        assert_eq!(o.broker_storage, Storage::Memory);
        assert_eq!(
            parse(&[]).unwrap().unwrap().shared_buffers,
            BENCH_SHARED_BUFFERS
        );
        let o = parse(&["--shared-buffers=1GB"]).unwrap().unwrap();
        assert_eq!(o.shared_buffers, "1GB");
        assert!(parse(&["--shared-buffers", "lots"])
            .unwrap_err()
            .contains("use a size such as"));
        assert!(parse(&["--broker-storage", "disk"])
            .unwrap_err()
            .contains("use memory or sqlite"));
    }
}
