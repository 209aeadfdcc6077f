//! The live legacy workload: one random PromptStudio transaction at a time, from a
//! realistic mix (see [`TxnKind`]), for the CDC pipeline to carry across.
//!
//! Guarantees:
//! - Every step is one `BEGIN .. COMMIT` on the legacy database, so every change the
//!   pipeline sees is a whole application transaction (several tables, several rows).
//! - Works on an empty database (the first steps create labs) as well as after
//!   [`crate::seed`], and next to other workloads on other connections: a row that
//!   vanished is skipped, and a unique or foreign-key violation, deadlock or
//!   serialization failure rolls the transaction back and counts as skipped. Any other
//!   error is returned; the open transaction is then rolled back.
//! - Deterministic for a seed given the same starting database and no concurrent
//!   writers.

mod kind;
mod state;
mod stats;
mod txn;

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

pub use kind::TxnKind;
pub use stats::{KindStats, Outcome, RunStats, StepStats};

use crate::Error;
use state::{Maxima, State};

/// Limits of [`Workload::run`]; it stops at whichever comes first. With neither
/// `txns` nor `duration` it runs until the future is dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    /// Stop after this many transactions (committed or skipped).
    pub txns: Option<u64>,
    /// Stop once this much time has passed.
    pub duration: Option<Duration>,
    /// Start at most this many transactions per second (paced by sleeping).
    pub rate_per_sec: Option<f64>,
}

/// A workload generator; keep one per connection.
#[derive(Debug)]
pub struct Workload {
    state: State,
    loaded: bool,
}

fn is_conflict(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::FOREIGN_KEY_VIOLATION
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Self {
            state: State::new(seed),
            loaded: false,
        }
    }

    /// Runs one random transaction and reports what it did.
    pub async fn step(&mut self, client: &mut Client) -> Result<StepStats, Error> {
        if !self.loaded {
            self.state.max = Maxima::load(client).await?;
            self.loaded = true;
        }
        let kind = if self.state.max.labs == 0 {
            TxnKind::CreateLab
        } else {
            let weights = TxnKind::ALL.map(TxnKind::weight);
            TxnKind::ALL[self.state.rng.weighted(&weights)]
        };
        let err = |source| Error::Txn { kind, source };
        let tx = client.transaction().await.map_err(err)?;
        let (outcome, rows) = match txn::run(kind, &tx, &mut self.state).await {
            Ok(Some(rows)) => match tx.commit().await {
                Ok(()) => (Outcome::Committed, rows),
                Err(e) if is_conflict(&e) => (Outcome::SkippedConflict, 0),
                Err(e) => return Err(err(e)),
            },
            Ok(None) => {
                tx.rollback().await.map_err(err)?;
                (Outcome::SkippedNotFound, 0)
            }
            Err(e) if is_conflict(&e) => {
                tx.rollback().await.map_err(err)?;
                (Outcome::SkippedConflict, 0)
            }
            Err(e) => return Err(err(e)),
        };
        Ok(StepStats {
            kind,
            outcome,
            rows,
        })
    }

    /// Runs steps until a limit of `opts` is reached.
    pub async fn run(&mut self, client: &mut Client, opts: RunOptions) -> Result<RunStats, Error> {
        let started = Instant::now();
        let deadline = opts.duration.map(|d| started + d);
        let interval = opts
            .rate_per_sec
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        let mut stats = RunStats::default();
        loop {
            if opts.txns.is_some_and(|n| stats.txns >= n) {
                break;
            }
            if let Some(interval) = interval {
                let due = started + interval.mul_f64(stats.txns as f64);
                if deadline.is_some_and(|d| due >= d) {
                    tokio::time::sleep_until(deadline.unwrap_or(due)).await;
                    break;
                }
                tokio::time::sleep_until(due).await;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            stats.record(&self.step(client).await?);
        }
        stats.elapsed = started.elapsed();
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_first_kinds() {
        let draw = |seed| {
            let mut w = Workload::new(seed);
            let weights = TxnKind::ALL.map(TxnKind::weight);
            (0..50)
                .map(|_| w.state.rng.weighted(&weights))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
