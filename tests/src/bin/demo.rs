//! `make demo`: a full rekey migration on throwaway local servers.
//!
//! Starts a legacy and a new PostgreSQL and a broker on loopback, creates the
//! PromptStudio schemas and seeds the legacy database (rows that exist before the
//! migration starts: they arrive by backfill), starts `rekey-reader` and `rekey-writer`,
//! drives a live insert/update/delete workload on the legacy database while printing
//! progress, waits for the new store to catch up, compares the two stores (an independent
//! comparison, then `rekeyctl verify`'s), flips the cutover flag and waits for
//! `cutover_ready`, and stops everything.
//!
//! Usage: `rekey-demo [--duration SECS] [--rate TXN_PER_SEC] [--scale F]`
//! (defaults: 30 s, 200 txn/s, scale 0.05 ≈ 15k pre-existing rows).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rekey_tests::compare::{compare, summary};
use rekey_tests::pipeline::SECRET;
use rekey_tests::scrape::{scrape, sum};
use rekey_tests::{wait_until, Pipeline};

struct Args {
    duration: Duration,
    rate: f64,
    scale: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        duration: Duration::from_secs(30),
        rate: 200.0,
        scale: 0.05,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--duration" => {
                let v = value("--duration")?;
                args.duration = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--duration {v}: not a number of seconds"))?,
                );
            }
            "--rate" => {
                let v = value("--rate")?;
                args.rate = v.parse().map_err(|_| format!("--rate {v}: not a number"))?;
            }
            "--scale" => {
                let v = value("--scale")?;
                args.scale = v
                    .parse()
                    .map_err(|_| format!("--scale {v}: not a number"))?;
            }
            "-h" | "--help" => {
                println!("usage: rekey-demo [--duration SECS] [--rate TXN_PER_SEC] [--scale F]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rekey-demo: error: {e}");
            return ExitCode::from(2);
        }
    };
    println!("rekey demo: PromptStudio, legacy (int keys) → Kafka → new (UUID keys)");
    println!("starting a legacy PostgreSQL, a new PostgreSQL and a tansu broker on loopback…");
    let mut p = Pipeline::new().await;
    println!("  legacy  {}", p.legacy.url(rekey_tests::pipeline::DB));
    println!("  new     {}", p.target.url(rekey_tests::pipeline::DB));
    println!("  broker  {}", p.broker.bootstrap());
    println!(
        "  config  {} (deploy/promptstudio/rekey.toml)",
        p.config_path.display()
    );
    if args.scale > 0.0 {
        let legacy = p.legacy_client().await;
        match rekey_workload::seed(&legacy, args.scale, 42).await {
            Ok(s) => println!(
                "seeded the legacy database with {} rows (scale {}): they arrive by backfill",
                s.total(),
                args.scale
            ),
            Err(e) => {
                eprintln!("rekey-demo: error: seeding failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    println!(
        "starting rekey-reader (metrics :{}) and rekey-writer (metrics :{})…",
        p.reader_metrics, p.writer_metrics
    );
    p.start().await;
    println!(
        "streaming and backfilling. Live workload: {:.0} txn/s for {}s on the legacy database.\n",
        args.rate,
        args.duration.as_secs()
    );

    let mut legacy = p.legacy_client().await;
    let workload = tokio::spawn({
        let (duration, rate) = (args.duration, args.rate);
        async move {
            let mut w = rekey_workload::Workload::new(42);
            let opts = rekey_workload::RunOptions {
                txns: None,
                duration: Some(duration),
                rate_per_sec: Some(rate),
            };
            w.run(&mut legacy, opts).await
        }
    });

    println!(
        "{:>6}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}  {:>8}",
        "time", "read", "backfilled", "published", "applied", "lag (bytes)", "lag (s)"
    );
    let started = Instant::now();
    let monitor = p.legacy_client().await;
    let target = p.target_client().await;
    let print_progress = |label: String| {
        let (rm, wm) = (p.reader_metrics, p.writer_metrics);
        let (monitor, target) = (&monitor, &target);
        async move {
            let (r, w) = (scrape(rm).await, scrape(wm).await);
            let current: i64 = monitor
                .query_one(
                    "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            let applied: i64 = target
                .query_opt("SELECT max(end_lsn) FROM rekey.checkpoint", &[])
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get::<_, Option<i64>>(0))
                .unwrap_or(0);
            println!(
                "{label:>6}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}  {:>8.2}",
                sum(&r, "rekey_reader_events_read_total"),
                sum(&r, "rekey_backfill_rows_total"),
                sum(&r, "rekey_reader_events_published_total"),
                sum(&w, "rekey_writer_events_applied_total"),
                (current - applied).max(0),
                sum(&w, "rekey_writer_lag_seconds"),
            );
        }
    };
    while !workload.is_finished() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        print_progress(format!("{}s", started.elapsed().as_secs())).await;
    }
    let stats = match workload.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            eprintln!("rekey-demo: error: the workload failed: {e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("rekey-demo: error: the workload panicked: {e}");
            return ExitCode::from(1);
        }
    };
    println!("\nworkload done: {stats}");
    println!("waiting for backfill to finish and the new store to catch up…");
    let t = Instant::now();
    wait_until("backfill to finish", Duration::from_secs(600), || async {
        target
            .query_one(
                "SELECT count(*) FILTER (WHERE done) FROM rekey.backfill",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 9)
            .unwrap_or(false)
    })
    .await;
    p.wait_caught_up(Duration::from_secs(300)).await;
    print_progress("final".into()).await;
    println!("caught up in {:.1}s\n", t.elapsed().as_secs_f64());

    println!("1. an independent comparison of the two stores (keys translated, every column)…");
    let mut config = p.config();
    config.apply_env(|k| {
        p.env()
            .into_iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v)
    });
    let legacy = p.legacy_client().await;
    let diffs = compare(&legacy, &target, &config, SECRET).await;
    println!(
        "{:<28} {:>8} {:>8} {:>9}  result",
        "table", "legacy", "new", "deleted"
    );
    for (table, (l, t, d)) in summary(&diffs) {
        let ok = diffs
            .iter()
            .find(|x| x.table == table)
            .is_some_and(|x| x.is_equal());
        println!(
            "{table:<28} {l:>8} {t:>8} {d:>9}  {}",
            if ok { "match" } else { "DIFFERENT" }
        );
    }
    let equal = diffs.iter().all(|d| d.is_equal());

    println!("\n2. rekeyctl verify (checksums with translated keys, foreign keys, soft deletes)…");
    let report =
        match rekey::verify::run(&config, &rekey::verify::Options::default(), &mut |_| {}).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("rekey-demo: error: verify failed: {}", e.one_line());
                return ExitCode::from(1);
            }
        };
    print!("{report}");

    println!("\n3. cutover: the application stops writing; set phase = \"cutover\" in the config…");
    let text = std::fs::read_to_string(&p.config_path).unwrap_or_default();
    let _ = std::fs::write(&p.config_path, format!("phase = \"cutover\"\n{text}"));
    let t = Instant::now();
    wait_until("cutover_ready", Duration::from_secs(300), || async {
        target
            .query_opt("SELECT state FROM rekey.status", &[])
            .await
            .ok()
            .flatten()
            .is_some_and(|r| matches!(r.get::<_, &str>(0), "cutover_ready" | "failed"))
    })
    .await;
    let row = target
        .query_one(
            "SELECT state, drain_seconds, coalesce(detail, '') FROM rekey.status",
            &[],
        )
        .await;
    let cutover_ok = match row {
        Ok(r) => {
            let (state, drain, detail): (String, Option<f64>, String) =
                (r.get(0), r.get(1), r.get(2));
            println!(
                "   state {state} after {:.1}s (drained in {:.2}s, foreign keys validated, verified) {detail}",
                t.elapsed().as_secs_f64(),
                drain.unwrap_or_default()
            );
            state == "cutover_ready"
        }
        Err(e) => {
            println!("   cannot read rekey.status: {e}");
            false
        }
    };

    println!("\nstopping rekey-reader and rekey-writer (SIGTERM)…");
    for s in [p.reader.as_mut(), p.writer.as_mut()].into_iter().flatten() {
        s.sigterm();
    }
    for s in [p.reader.as_mut(), p.writer.as_mut()].into_iter().flatten() {
        match s.wait_exit(Duration::from_secs(50)).await {
            Some(status) if status.success() => {}
            other => println!("  a service did not stop cleanly: {other:?}"),
        }
    }
    if equal && report.is_clean() && cutover_ok {
        println!("\nOK: the new store matches the legacy store (every live row, every key and foreign key rekeyed; deletes soft-deleted), and it is ready for cutover.");
        println!("stopping the servers and removing their data.");
        ExitCode::SUCCESS
    } else {
        for d in diffs.iter().filter(|d| !d.is_equal()) {
            println!("{d:#?}");
        }
        println!("\nFAILED: the new store differs from the legacy store or is not ready (details above).");
        ExitCode::from(1)
    }
}
