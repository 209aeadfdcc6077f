//! What the workload remembers between transactions: its PRNG, the highest key it
//! knows per table, and the flow executions it started and has yet to finish.
//!
//! Guarantees: keys are never read back in bulk. The highest keys are read once
//! (lazily, on the first step) and then raised from the keys this workload inserts;
//! candidates are drawn from `1..=max`. A candidate may be gone (deleted, or a
//! sequence gap): callers look up several at once and take whichever still exists.

use tokio_postgres::Client;

use crate::rng::Rng;
use crate::Error;

/// Candidate keys per lookup; with 8, a table must be mostly gaps before a
/// transaction finds nothing.
const CANDIDATES: usize = 8;
/// Share of candidates drawn from the newest tenth of keys (recent rows are hot).
const RECENT_SHARE: f64 = 0.3;
/// Most unfinished flow executions remembered for later transitions.
const MAX_OPEN_RUNS: usize = 1_000;

/// Highest key known per legacy table (0: none).
#[derive(Debug, Clone, Default)]
pub(super) struct Maxima {
    pub labs: i64,
    pub libraries: i64,
    pub templates: i64,
    pub variables: i64,
    pub collections: i64,
    pub executions: i64,
    pub flows: i64,
    pub flow_executions: i64,
}

impl Maxima {
    pub async fn load(client: &Client) -> Result<Self, Error> {
        let row = client
            .query_one(
                "SELECT (SELECT coalesce(max(id), 0)::int8 FROM prompt_labs),
                        (SELECT coalesce(max(id), 0)::int8 FROM prompt_libraries),
                        (SELECT coalesce(max(id), 0)::int8 FROM prompt_templates),
                        (SELECT coalesce(max(id), 0)::int8 FROM prompt_variables),
                        (SELECT coalesce(max(id), 0)::int8 FROM variable_collections),
                        (SELECT coalesce(max(id), 0)::int8 FROM prompt_executions),
                        (SELECT coalesce(max(id), 0)::int8 FROM prompt_flows),
                        (SELECT coalesce(max(id), 0)::int8 FROM flow_executions)",
                &[],
            )
            .await
            .map_err(Error::Maxima)?;
        Ok(Self {
            labs: row.get(0),
            libraries: row.get(1),
            templates: row.get(2),
            variables: row.get(3),
            collections: row.get(4),
            executions: row.get(5),
            flows: row.get(6),
            flow_executions: row.get(7),
        })
    }
}

/// Raises `max` to cover `ids`.
pub(super) fn raise(max: &mut i64, ids: &[i64]) {
    if let Some(&top) = ids.iter().max() {
        *max = (*max).max(top);
    }
}

#[derive(Debug)]
pub(super) struct State {
    pub rng: Rng,
    pub max: Maxima,
    /// Flow executions this workload started (pending or running).
    open_runs: Vec<i64>,
}

impl State {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            max: Maxima::default(),
            open_runs: Vec::new(),
        }
    }

    /// Up to [`CANDIDATES`] keys in `1..=max`, biased towards recent ones; empty when
    /// the table has no known rows.
    pub fn candidates(&mut self, max: i64) -> Vec<i64> {
        if max <= 0 {
            return Vec::new();
        }
        (0..CANDIDATES)
            .map(|_| {
                let lo = if self.rng.chance(RECENT_SHARE) {
                    (max - max / 10).max(1)
                } else {
                    1
                };
                self.rng.range(lo, max)
            })
            .collect()
    }

    pub fn remember_open_run(&mut self, id: i64) {
        if self.open_runs.len() < MAX_OPEN_RUNS {
            self.open_runs.push(id);
        }
    }

    /// Takes a random remembered open run, if any.
    pub fn take_open_run(&mut self) -> Option<i64> {
        if self.open_runs.is_empty() {
            return None;
        }
        let i = self.rng.below(self.open_runs.len() as u64) as usize;
        Some(self.open_runs.swap_remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_stay_in_range() {
        let mut s = State::new(1);
        assert!(s.candidates(0).is_empty());
        for max in [1, 2, 10, 1_000_000] {
            let c = s.candidates(max);
            assert_eq!(c.len(), CANDIDATES);
            assert!(c.iter().all(|&id| (1..=max).contains(&id)));
        }
    }

    #[test]
    fn raise_only_grows() {
        let mut m = 5;
        raise(&mut m, &[]);
        raise(&mut m, &[3, 4]);
        assert_eq!(m, 5);
        raise(&mut m, &[9, 7]);
        assert_eq!(m, 9);
    }

    #[test]
    fn open_runs_are_bounded_and_taken_once() {
        let mut s = State::new(2);
        for id in 0..(MAX_OPEN_RUNS as i64 + 10) {
            s.remember_open_run(id);
        }
        let mut taken = std::collections::HashSet::new();
        while let Some(id) = s.take_open_run() {
            assert!(taken.insert(id));
        }
        assert_eq!(taken.len(), MAX_OPEN_RUNS);
    }
}
