//! `make demo`: a full rekey migration on throwaway local servers.
//!
//! Starts a legacy and a new PostgreSQL and a broker on loopback, creates the
//! PromptStudio schemas, starts `rekey-reader` and `rekey-writer`, drives a live
//! insert/update/delete workload on the legacy database while printing progress, then
//! waits for the new store to catch up, compares the two stores and stops everything.
//!
//! Usage: `rekey-demo [--duration SECS] [--rate TXN_PER_SEC]` (defaults: 30 s, 200/s).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rekey_tests::compare::{compare, summary};
use rekey_tests::pipeline::SECRET;
use rekey_tests::scrape::{scrape, sum};
use rekey_tests::Pipeline;

struct Args {
    duration: Duration,
    rate: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        duration: Duration::from_secs(30),
        rate: 200.0,
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
            "-h" | "--help" => {
                println!("usage: rekey-demo [--duration SECS] [--rate TXN_PER_SEC]");
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
    println!(
        "starting rekey-reader (metrics :{}) and rekey-writer (metrics :{})…",
        p.reader_metrics, p.writer_metrics
    );
    p.start().await;
    println!(
        "streaming. Live workload: {:.0} txn/s for {}s on the legacy database.\n",
        args.rate,
        args.duration.as_secs()
    );

    let mut legacy = p.legacy_client().await;
    let workload = tokio::spawn({
        let duration = args.duration;
        let rate = args.rate;
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
        "{:>6}  {:>10}  {:>10}  {:>10}  {:>12}  {:>8}",
        "time", "read", "published", "applied", "lag (bytes)", "lag (s)"
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
                .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
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
                "{label:>6}  {:>10}  {:>10}  {:>10}  {:>12}  {:>8.2}",
                sum(&r, "rekey_reader_events_read_total"),
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
    println!("\nworkload done: {stats:?}");
    println!("waiting for the new store to catch up…");
    let t = Instant::now();
    p.wait_caught_up(Duration::from_secs(120)).await;
    print_progress("final".into()).await;
    println!("caught up in {:.1}s\n", t.elapsed().as_secs_f64());

    println!("comparing the new store with the legacy one (keys translated, every column)…");
    let config = {
        let mut c = rekey::config::Config::parse(rekey_tests::pipeline::promptstudio_config())
            .expect("config");
        c.rekey.secret = rekey::config::Secret::new(SECRET);
        c
    };
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

    println!("\nstopping rekey-reader and rekey-writer (SIGTERM)…");
    for s in [p.reader.as_mut(), p.writer.as_mut()].into_iter().flatten() {
        s.sigterm();
    }
    for s in [p.reader.as_mut(), p.writer.as_mut()].into_iter().flatten() {
        match s.wait_exit(Duration::from_secs(30)).await {
            Some(status) if status.success() => {}
            other => println!("  a service did not stop cleanly: {other:?}"),
        }
    }
    if equal {
        println!("\nOK: the new store matches the legacy store (every live row, every key and foreign key rekeyed; deletes soft-deleted).");
        println!("stopping the servers and removing their data.");
        ExitCode::SUCCESS
    } else {
        for d in diffs.iter().filter(|d| !d.is_equal()) {
            println!("{d:#?}");
        }
        println!("\nFAILED: the new store differs from the legacy store (details above).");
        ExitCode::from(1)
    }
}
