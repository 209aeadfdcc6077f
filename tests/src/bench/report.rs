//! The bench's output: a table for people (baseline next to rekey, with the ratio) and a
//! JSON document for tools (every step, every figure, the parameters and the methods).

use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Value};

use super::backfill::Copy;
use super::streaming::{Latency, Step, Streaming};
use super::Report;

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    })
}

/// `name 12, other 34` (percent of one core).
pub fn cpu_text(cpu: &[(String, f64)]) -> String {
    cpu.iter()
        .map(|(n, v)| format!("{n} {v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 1234567 → "1,234,567".
fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn check(c: &Copy) -> String {
    match &c.check {
        Ok(()) => "equal".into(),
        Err(e) => format!("WRONG: {e}"),
    }
}

/// The human-readable table.
pub fn table(r: &Report) -> String {
    let mut t = String::new();
    let o = &r.options;
    let _ = writeln!(
        t,
        "\nrekey bench: PromptStudio at scale {} ({} rows seeded, seed {}), {} build, {} CPUs, PostgreSQL {} (shared_buffers {}), tansu ({} storage); every server on this machine",
        o.scale,
        thousands(r.seeded_rows as f64),
        o.seed,
        r.build,
        r.cpus,
        r.postgres,
        o.shared_buffers,
        o.broker_storage.name()
    );

    if !r.backfill.is_empty() {
        let rekey = r.backfill.iter().find(|c| c.method == "rekey");
        let _ = writeln!(
            t,
            "\nBACKFILL (copy the existing rows)     rows   seconds      rows/s  rekey ÷ this  check"
        );
        for c in &r.backfill {
            let _ = writeln!(
                t,
                "  {:<30} {:>9} {:>9.2} {:>11} {:>13}  {}",
                c.method,
                c.rows,
                c.elapsed.as_secs_f64(),
                thousands(c.rows_per_sec()),
                match rekey {
                    Some(k) if c.method != "rekey" => ratio(k.rows_per_sec(), c.rows_per_sec()),
                    _ => "-".into(),
                },
                check(c)
            );
        }
        for c in &r.backfill {
            let _ = writeln!(t, "    {:<8} {}", c.method, c.description);
            let _ = writeln!(t, "    {:<8} cpu % of one core: {}", "", cpu_text(&c.cpu));
            let _ = writeln!(
                t,
                "    {:<8} cpu µs per row: {}",
                "",
                cpu_text(&c.cpu_micros_per_row())
            );
            if let Some(b) = c.broker_bytes_per_row() {
                let _ = writeln!(t, "    {:<8} broker bytes per row: {b:.0}", "");
            }
        }
    }

    if let (Some(k), Some(n)) = (&r.rekey, &r.native) {
        let _ = writeln!(
            t,
            "\nSTREAMING (highest sustained change rate: pgbench ≥ 90 % of the requested rate and the lag drained ≤ {:.1} s after a {} s step)",
            r.plan.drain_bound.as_secs_f64(),
            r.plan.step.as_secs()
        );
        let _ = writeln!(
            t,
            "  {:<8} {:>10} {:>8} {:>13}  | latency at half the rate: {:>8} {:>10} {:>10} {:>8}",
            "", "changes/s", "at tx/s", "rekey ÷ this", "tx/s", "p50", "p99", "samples"
        );
        let kb = k.best().map(Step::changes_per_sec);
        for s in [k, n] {
            let best = s.best();
            let lat = s.latency.as_ref();
            let _ = writeln!(
                t,
                "  {:<8} {:>10} {:>8} {:>13}  | {:>34} {:>10} {:>10} {:>8}",
                s.consumer,
                best.map_or("none".into(), |b| thousands(b.changes_per_sec())),
                best.map_or("-".into(), |b| b.rate.label()),
                match (kb, best) {
                    (Some(kb), Some(b)) if s.consumer != "rekey" => ratio(kb, b.changes_per_sec()),
                    _ => "-".into(),
                },
                lat.map_or("-".into(), |l| format!("{:.0}", l.achieved_tps)),
                ms(lat.and_then(|l| l.p50)),
                ms(lat.and_then(|l| l.p99)),
                lat.map_or(0, |l| l.samples)
            );
        }
        for s in [k, n] {
            if let Some(l) = &s.latency {
                let _ = writeln!(t, "    {:<8} latency: {}", s.consumer, l.method);
                for (what, v) in &l.diagnostics {
                    let _ = writeln!(t, "    {:<8}   meanwhile, {what}: {v:.1}", "");
                }
            }
        }
        for s in [k, n] {
            let _ = writeln!(
                t,
                "    {:<8} streamed copy at the end: {} ({})",
                s.consumer,
                match &s.check {
                    Ok(()) => "equal".to_string(),
                    Err(e) => format!("WRONG: {e}"),
                },
                s.check_method
            );
        }

        if let (Some(kc), Some(nc)) = (&k.catch_up, &n.catch_up) {
            let _ = writeln!(
                t,
                "\nCATCH-UP (stopped during {} s of unthrottled load, then started: changes applied per second from the start)",
                kc.load.as_secs()
            );
            let _ = writeln!(
                t,
                "  {:<8} {:>10} {:>10} {:>10} {:>13}",
                "", "backlog", "seconds", "changes/s", "rekey ÷ this"
            );
            for (name, c) in [("rekey", kc), ("native", nc)] {
                let _ = writeln!(
                    t,
                    "  {:<8} {:>10} {:>10.1} {:>10} {:>13}",
                    name,
                    thousands(c.changes as f64),
                    c.elapsed.as_secs_f64(),
                    thousands(c.changes_per_sec()),
                    if name == "rekey" {
                        "-".into()
                    } else {
                        ratio(kc.changes_per_sec(), c.changes_per_sec())
                    }
                );
            }
            for (name, c) in [("rekey", kc), ("native", nc)] {
                let _ = writeln!(
                    t,
                    "    {:<8} cpu % of one core: {}\n             cpu µs per change: {}",
                    name,
                    cpu_text(&c.cpu),
                    cpu_text(&c.cpu_micros_per_change())
                );
            }
            let _ = writeln!(t, "    rekey    reader and writer stopped (SIGTERM), the slot keeps the WAL; timed from their start until the writer applied it all");
            let _ = writeln!(t, "    native   ALTER SUBSCRIPTION … DISABLE, then ENABLE; timed from ENABLE until the origin reached the end");
        }
        let _ = writeln!(
            t,
            "\n  steps (cpu: % of one core during the load; machine: all CPUs busy, any process)"
        );
        let _ = writeln!(
            t,
            "  {:<8} {:>8} {:>8} {:>10} {:>13} {:>8}  verdict",
            "", "req tx/s", "tx/s", "changes/s", "max lag B", "drain s"
        );
        for s in [k, n] {
            for st in &s.steps {
                let _ = writeln!(
                    t,
                    "  {:<8} {:>8} {:>8.0} {:>10} {:>13} {:>8}  {}\n  {:<8} cpu: {}",
                    s.consumer,
                    st.rate.label(),
                    st.tps,
                    thousands(st.changes_per_sec()),
                    st.max_lag_bytes.map_or("-".into(), |b| thousands(b as f64)),
                    st.drain
                        .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
                    st.verdict,
                    "",
                    cpu_text(&st.cpu)
                );
            }
        }
    }

    let _ = writeln!(
        t,
        "\nPEAK RSS (VmHWM)  reader {}  writer {}  (tansu {})",
        mib(r.peak_rss.reader),
        mib(r.peak_rss.writer),
        mib(r.peak_rss.broker)
    );
    let _ = writeln!(t, "whole run: {:.0} s", r.elapsed.as_secs_f64());
    t
}

fn copy_json(c: &Copy) -> Value {
    json!({
        "method": c.method,
        "description": c.description,
        "rows": c.rows,
        "seconds": c.elapsed.as_secs_f64(),
        "rows_per_sec": c.rows_per_sec(),
        "check": { "method": c.check_method, "ok": c.check.is_ok(), "error": c.check.as_ref().err() },
        "cpu_percent_of_one_core": c.cpu.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "cpu_micros_per_row": c.cpu_micros_per_row().into_iter().map(|(n, v)| (n, json!(v))).collect::<serde_json::Map<_, _>>(),
        "broker_bytes_per_row": c.broker_bytes_per_row(),
    })
}

fn step_json(s: &Step) -> Value {
    json!({
        "requested_tps": match s.rate { super::streaming::Rate::Tps(r) => json!(r), super::streaming::Rate::Max => json!("max") },
        "achieved_tps": s.tps,
        "transactions": s.transactions,
        "seconds": s.elapsed.as_secs_f64(),
        "changes": s.changes,
        "changes_per_sec": s.changes_per_sec(),
        "max_lag_bytes": s.max_lag_bytes,
        "end_lag_bytes": s.end_lag_bytes,
        "drain_seconds": s.drain.map(|d| d.as_secs_f64()),
        "sustained": s.sustained,
        "verdict": s.verdict,
        "cpu_percent_of_one_core": s.cpu.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    })
}

fn latency_json(l: &Latency) -> Value {
    json!({
        "requested_tps": l.rate_tps,
        "achieved_tps": l.achieved_tps,
        "changes_per_sec": l.changes_per_sec,
        "p50_seconds": l.p50.map(|d| d.as_secs_f64()),
        "p99_seconds": l.p99.map(|d| d.as_secs_f64()),
        "samples": l.samples,
        "method": l.method,
        "diagnostics": l.diagnostics.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
    })
}

fn streaming_json(s: &Streaming) -> Value {
    json!({
        "highest_sustained_changes_per_sec": s.best().map(Step::changes_per_sec),
        "highest_sustained_step": s.best().map(step_json),
        "latency_at_half_rate": s.latency.as_ref().map(latency_json),
        "catch_up": s.catch_up.as_ref().map(|c| json!({
            "backlog_changes": c.changes,
            "load_seconds": c.load.as_secs_f64(),
            "seconds": c.elapsed.as_secs_f64(),
            "changes_per_sec": c.changes_per_sec(),
            "cpu_percent": c.cpu.iter().map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "cpu_micros_per_change": c.cpu_micros_per_change().into_iter().map(|(n, v)| (n, json!(v))).collect::<serde_json::Map<_, _>>(),
        })),
        "steps": s.steps.iter().map(step_json).collect::<Vec<_>>(),
        "check": { "method": s.check_method, "ok": s.check.is_ok(), "error": s.check.as_ref().err() },
    })
}

/// The JSON document.
pub fn json(r: &Report) -> Value {
    let o = &r.options;
    let rekey_copy = r.backfill.iter().find(|c| c.method == "rekey");
    let ratios: serde_json::Map<String, Value> = r
        .backfill
        .iter()
        .filter(|c| c.method != "rekey")
        .filter_map(|c| {
            Some((
                c.method.to_string(),
                json!(rekey_copy?.rows_per_sec() / c.rows_per_sec()),
            ))
        })
        .collect();
    let streaming_ratio = match (
        r.rekey.as_ref().and_then(Streaming::best),
        r.native.as_ref().and_then(Streaming::best),
    ) {
        (Some(k), Some(n)) => Some(k.changes_per_sec() / n.changes_per_sec()),
        _ => None,
    };
    json!({
        "parameters": {
            "scale": o.scale,
            "seed": o.seed,
            "seeded_rows": r.seeded_rows,
            "seed_seconds": r.seed_secs,
            "steps": o.steps.iter().map(|s| s.label()).collect::<Vec<_>>(),
            "step_seconds": r.plan.step.as_secs(),
            "drain_bound_seconds": r.plan.drain_bound.as_secs_f64(),
            "pgbench_clients": o.clients,
            "pgbench_jobs": o.jobs,
            "pgbench_mix_percent": super::pgbench::Mix::weights().into_iter().map(|(k, w)| (k.to_string(), json!(w))).collect::<serde_json::Map<_, _>>(),
            "rekey_backfill_chunk_rows": o.chunk_rows,
            "rekey_backfill_parallelism": o.parallelism,
            "rekey_target_replication_role": if o.replica { "replica" } else { "origin" },
            "rekey_kafka_options_overridden": o.kafka_options.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "build": r.build,
            "cpus": r.cpus,
            "postgres": r.postgres,
            "postgres_shared_buffers": o.shared_buffers,
            "broker_storage": o.broker_storage.name(),
        },
        "backfill": {
            "copies": r.backfill.iter().map(copy_json).collect::<Vec<_>>(),
            "rekey_over_baseline": ratios,
        },
        "streaming": {
            "rekey": r.rekey.as_ref().map(streaming_json),
            "native": r.native.as_ref().map(streaming_json),
            "rekey_over_native": streaming_ratio,
            "native_resync": r.native_resync.as_ref().map(copy_json),
        },
        "cutover": r.cutover.as_ref().map(|c| json!({
            "load_requested_tps": c.rate,
            "load_achieved_tps": c.tps,
            "state": c.state,
            "seconds_from_flag_to_ready": c.total.as_secs_f64(),
            "drain_seconds": c.drain_seconds,
            "method": "pgbench mix at half the highest sustained rate for one step, then phase = cutover written to the live config; time until rekey.status says cutover_ready (includes the reader's 2 s config poll, FK validation and verify)",
        })),
        "peak_rss_bytes": {
            "reader": r.peak_rss.reader,
            "writer": r.peak_rss.writer,
            "tansu": r.peak_rss.broker,
        },
        "seconds": r.elapsed.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
