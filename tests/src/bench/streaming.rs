//! The highest change rate a consumer sustains, and its latency at half that rate.
//!
//! Steps: pgbench drives the mix ([`super::pgbench`]) at each requested rate for a fixed
//! time while the lag (legacy WAL position minus the consumer's applied position, see
//! [`super::consumer`]) is sampled every second. When pgbench ends, the drain time is how
//! long the consumer takes to apply everything written before that moment. A step is
//! **sustained** when
//!
//! 1. pgbench achieved at least 90 % of the requested rate (an unthrottled step has no
//!    request), and
//! 2. the consumer drained within the bound (default: a tenth of the step, at least 2 s):
//!    a consumer slower than the source by a fraction f piles up a backlog that takes
//!    about f × step to drain, so the bound admits at most a ~10 % shortfall.
//!
//! The steps run in increasing order; the first step whose lag is not bounded ends the
//! series (the consumer is then left to catch up before anything else runs; the step's
//! changes over the step plus its drain time are a lower bound of the consumer's apply
//! rate while behind, shown with the verdict). A step the source could not produce skips
//! the remaining throttled steps but not the unthrottled one. Changes are rows inserted,
//! updated or deleted on the legacy database during the step, measured from its
//! statistics, not estimated from the mix.
//!
//! Every step's drain time is also the answer to "how long does the pipeline take to
//! drain at this load" (see [`super::consumer::drain`] for the cutover hook).

use std::time::Duration;

use tokio_postgres::Client;

use super::consumer::{self, Consumer};
use super::pgbench::{self, Mix};
use super::procstat::{self, Probe};
use crate::pg::Pg;

/// How long a consumer may take to apply a step's backlog before the bench gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(1800);

/// A requested rate: transactions per second, or as fast as pgbench goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Tps(f64),
    Max,
}

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, String> {
        match s.trim() {
            "max" | "unthrottled" => Ok(Rate::Max),
            v => match v.parse::<f64>() {
                Ok(r) if r > 0.0 => Ok(Rate::Tps(r)),
                _ => Err(format!("{v:?}: not a rate (a positive number, or max)")),
            },
        }
    }

    pub fn label(&self) -> String {
        match self {
            Rate::Tps(r) => format!("{r:.0}"),
            Rate::Max => "max".into(),
        }
    }
}

/// How the steps run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Rate>,
    pub step: Duration,
    pub drain_bound: Duration,
    pub clients: u32,
    pub jobs: u32,
}

/// One step's outcome.
#[derive(Debug, Clone)]
pub struct Step {
    pub rate: Rate,
    pub tps: f64,
    pub transactions: u64,
    pub elapsed: Duration,
    /// Rows changed on the legacy database during the step.
    pub changes: u64,
    pub max_lag_bytes: Option<u64>,
    /// Lag when pgbench ended.
    pub end_lag_bytes: Option<u64>,
    /// Time to apply everything written during the step, after it.
    pub drain: Option<Duration>,
    pub sustained: bool,
    pub verdict: String,
    /// CPU per component during the load, % of one core.
    pub cpu: Vec<(String, f64)>,
}

impl Step {
    pub fn changes_per_sec(&self) -> f64 {
        self.changes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// End-to-end latency at a fixed rate.
#[derive(Debug, Clone)]
pub struct Latency {
    pub rate_tps: f64,
    pub achieved_tps: f64,
    pub changes_per_sec: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub samples: u64,
    pub method: &'static str,
    /// What else the consumer reported over the run (for rekey: the writer's batches).
    pub diagnostics: Vec<(String, f64)>,
}

/// What a latency measurement found.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub samples: u64,
    pub diagnostics: Vec<(String, f64)>,
}

/// Catching up a backlog: the consumer was stopped while pgbench ran unthrottled, then
/// started again; `elapsed` runs from the start to the moment it had applied it all.
#[derive(Debug, Clone)]
pub struct CatchUp {
    pub changes: u64,
    pub load: Duration,
    pub elapsed: Duration,
    /// CPU per component while catching up, % of one core.
    pub cpu: Vec<(String, f64)>,
}

impl CatchUp {
    pub fn changes_per_sec(&self) -> f64 {
        self.changes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU µs per change applied, per component and in total.
    pub fn cpu_micros_per_change(&self) -> Vec<(String, f64)> {
        procstat::micros_per_unit(&self.cpu, self.elapsed, self.changes)
    }
}

/// All of one consumer's streaming results.
#[derive(Debug, Clone)]
pub struct Streaming {
    pub consumer: &'static str,
    pub steps: Vec<Step>,
    pub latency: Option<Latency>,
    pub catch_up: Option<CatchUp>,
    /// After the last run, caught up: the copy equals the legacy database, or what
    /// differs.
    pub check: Result<(), String>,
    pub check_method: &'static str,
}

impl Streaming {
    /// The sustained step with the most changes per second.
    pub fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.sustained)
            .max_by(|a, b| a.changes_per_sec().total_cmp(&b.changes_per_sec()))
    }
}

/// What the steps need: the legacy cluster, connections, the consumer and what to watch.
pub struct Bench<'a> {
    pub legacy: &'a Pg,
    pub legacy_client: &'a Client,
    pub consumer: &'a Consumer,
    pub mix: &'a Mix,
    pub probes: &'a [Probe],
}

impl Bench<'_> {
    /// Runs pgbench unthrottled for `load` (the consumer is stopped) and returns the rows
    /// it changed: the backlog for a catch-up.
    pub async fn backlog(&self, plan: &Plan, load: Duration) -> u64 {
        let changes0 = pgbench::changes(self.legacy_client).await;
        self.mix
            .run(self.legacy, None, load, (plan.clients, plan.jobs))
            .await;
        pgbench::changes(self.legacy_client)
            .await
            .saturating_sub(changes0)
    }

    /// Times the consumer, just started again, until it has applied everything written
    /// so far, and measures the CPU of `probes` (the consumer's processes as they run now)
    /// meanwhile.
    pub async fn catch_up(
        &self,
        changes: u64,
        load: Duration,
        started: std::time::Instant,
        probes: &[Probe],
    ) -> CatchUp {
        let cpu0 = procstat::snapshot(probes);
        consumer::drain(self.legacy_client, self.consumer, CATCH_UP_LIMIT)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{} did not catch up a backlog within {} s",
                    self.consumer.name(),
                    CATCH_UP_LIMIT.as_secs()
                )
            });
        let cpu1 = procstat::snapshot(probes);
        let c = CatchUp {
            changes,
            load,
            elapsed: started.elapsed(),
            cpu: procstat::usage(probes, &cpu0, &cpu1),
        };
        println!(
            "  {:<7} catch-up: {} changes written in {} s while stopped, applied in {:.1}s after its start = {:.0} changes/s",
            self.consumer.name(), c.changes, load.as_secs(), c.elapsed.as_secs_f64(), c.changes_per_sec()
        );
        c
    }

    /// Runs the steps of `plan` (see the module doc).
    pub async fn steps(&self, plan: &Plan) -> Vec<Step> {
        let mut out = Vec::new();
        let mut skip_throttled = false;
        for &rate in &plan.steps {
            if skip_throttled && rate != Rate::Max {
                continue;
            }
            let step = self.step(rate, plan).await;
            println!(
                "  {:<7} {:>6} tx/s req {:>8} tx/s {:>8.0} changes/s  max lag {:>12}  drain {:>7}  {}",
                self.consumer.name(),
                rate.label(),
                format!("{:.0}", step.tps),
                step.changes_per_sec(),
                step.max_lag_bytes
                    .map_or("-".into(), |b| format!("{b} B")),
                step.drain
                    .map_or("-".into(), |d| format!("{:.2}s", d.as_secs_f64())),
                step.verdict
            );
            let drained = step.drain.is_some_and(|d| d <= plan.drain_bound);
            let short = !step.sustained && drained;
            out.push(step);
            if !drained {
                break;
            }
            if short {
                skip_throttled = true;
            }
        }
        out
    }

    async fn step(&self, rate: Rate, plan: &Plan) -> Step {
        let changes0 = pgbench::changes(self.legacy_client).await;
        let cpu0 = procstat::snapshot(self.probes);
        let requested = match rate {
            Rate::Tps(r) => Some(r),
            Rate::Max => None,
        };
        let run = self
            .mix
            .run(self.legacy, requested, plan.step, (plan.clients, plan.jobs));
        tokio::pin!(run);
        let mut max_lag: Option<u64> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let run = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tick.tick() => {
                    if let Some(lag) = consumer::lag_bytes(self.legacy_client, self.consumer).await {
                        max_lag = Some(max_lag.map_or(lag, |m| m.max(lag)));
                    }
                }
            }
        };
        let cpu1 = procstat::snapshot(self.probes);
        let end_lag = consumer::lag_bytes(self.legacy_client, self.consumer).await;
        // Wait for the whole backlog even when the lag is unbounded: the next
        // measurement must start from a caught-up consumer.
        let drain = consumer::drain(self.legacy_client, self.consumer, CATCH_UP_LIMIT).await;
        if drain.is_none() {
            panic!(
                "{} did not catch up within {} s after a step",
                self.consumer.name(),
                CATCH_UP_LIMIT.as_secs()
            );
        }
        let changes = pgbench::changes(self.legacy_client)
            .await
            .saturating_sub(changes0);
        let achieved_ok = requested.is_none_or(|r| run.tps >= 0.9 * r);
        let drained = drain.is_some_and(|d| d <= plan.drain_bound);
        let verdict = match (achieved_ok, drain) {
            (_, Some(d)) if !drained => format!(
                "lag unbounded: drained in {:.1}s > {:.1}s (applied ≥ {:.0} changes/s)",
                d.as_secs_f64(),
                plan.drain_bound.as_secs_f64(),
                changes as f64 / (run.elapsed + d).as_secs_f64()
            ),
            (false, _) => format!(
                "source short: pgbench reached {:.0} of {} tx/s",
                run.tps,
                rate.label()
            ),
            _ => "sustained".into(),
        };
        Step {
            rate,
            tps: run.tps,
            transactions: run.transactions,
            elapsed: run.elapsed,
            changes,
            max_lag_bytes: max_lag.max(end_lag),
            end_lag_bytes: end_lag,
            drain,
            sustained: achieved_ok && drained,
            verdict,
            cpu: procstat::usage(self.probes, &cpu0, &cpu1),
        }
    }

    /// Runs pgbench at `rate_tps` for `plan.step` and measures end-to-end latency:
    /// `during` runs alongside the load (native: the marker inserts), `measure` after
    /// the consumer drained.
    pub async fn latency<D, M, MF>(
        &self,
        rate_tps: f64,
        plan: &Plan,
        during: D,
        measure: M,
        method: &'static str,
    ) -> Latency
    where
        D: std::future::Future<Output = ()>,
        M: FnOnce() -> MF,
        MF: std::future::Future<Output = Measured>,
    {
        let changes0 = pgbench::changes(self.legacy_client).await;
        let run = self.mix.run(
            self.legacy,
            Some(rate_tps),
            plan.step,
            (plan.clients, plan.jobs),
        );
        tokio::pin!(run);
        tokio::pin!(during);
        let mut during_done = false;
        let run = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = &mut during, if !during_done => during_done = true,
            }
        };
        consumer::drain(self.legacy_client, self.consumer, Duration::from_secs(600))
            .await
            .expect("the consumer catches up after the latency run");
        let changes = pgbench::changes(self.legacy_client)
            .await
            .saturating_sub(changes0);
        let Measured {
            p50,
            p99,
            samples,
            diagnostics,
        } = measure().await;
        Latency {
            rate_tps,
            achieved_tps: run.tps,
            changes_per_sec: changes as f64 / run.elapsed.as_secs_f64().max(1e-9),
            p50,
            p99,
            samples,
            method,
            diagnostics,
        }
    }
}

/// The rate for the latency run: half the best step's transaction rate (its request, or
/// what pgbench reached unthrottled).
pub fn half_rate(best: &Step) -> f64 {
    let tps = match best.rate {
        Rate::Tps(r) => r,
        Rate::Max => best.tps,
    };
    (tps / 2.0).max(1.0)
}
