//! What the workload did: per transaction and summed over a run.

use std::fmt;
use std::time::Duration;

use super::TxnKind;

/// How one transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Nothing to act on (the picked rows no longer exist); rolled back.
    SkippedNotFound,
    /// Unique or foreign-key violation, deadlock or serialization failure; rolled back.
    SkippedConflict,
}

/// One transaction: its kind, how it ended and how many rows it touched directly
/// (rows removed by ON DELETE CASCADE are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepStats {
    pub kind: TxnKind,
    pub outcome: Outcome,
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindStats {
    pub committed: u64,
    /// All skipped transactions, conflicts included.
    pub skipped: u64,
    /// Skipped on a unique/foreign-key violation, deadlock or serialization failure.
    pub conflicts: u64,
    pub rows: u64,
}

/// Sums of [`StepStats`] over a run, overall and per kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    pub txns: u64,
    pub committed: u64,
    pub skipped: u64,
    pub conflicts: u64,
    pub rows: u64,
    pub elapsed: Duration,
    per_kind: [KindStats; TxnKind::ALL.len()],
}

impl RunStats {
    pub fn record(&mut self, step: &StepStats) {
        let k = &mut self.per_kind[step.kind.index()];
        self.txns += 1;
        self.rows += step.rows;
        k.rows += step.rows;
        if step.outcome == Outcome::Committed {
            self.committed += 1;
            k.committed += 1;
        } else {
            self.skipped += 1;
            k.skipped += 1;
        }
        if step.outcome == Outcome::SkippedConflict {
            self.conflicts += 1;
            k.conflicts += 1;
        }
    }

    pub fn kind(&self, kind: TxnKind) -> KindStats {
        self.per_kind[kind.index()]
    }

    pub fn per_kind(&self) -> impl Iterator<Item = (TxnKind, KindStats)> + '_ {
        TxnKind::ALL.iter().map(|&k| (k, self.kind(k)))
    }
}

impl fmt::Display for RunStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.txns as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "{} txns in {secs:.1}s ({rate:.0}/s): {} committed, {} skipped ({} conflicts), {} rows",
            self.txns, self.committed, self.skipped, self.conflicts, self.rows
        )?;
        let mut sep = " [";
        for (kind, k) in self.per_kind().filter(|(_, k)| k.committed + k.skipped > 0) {
            write!(f, "{sep}{kind}={}", k.committed)?;
            sep = " ";
        }
        if sep == " " {
            write!(f, "]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sums_overall_and_per_kind() {
        let mut s = RunStats::default();
        s.record(&StepStats {
            kind: TxnKind::CreateLab,
            outcome: Outcome::Committed,
            rows: 10,
        });
        s.record(&StepStats {
            kind: TxnKind::CreateLab,
            outcome: Outcome::SkippedConflict,
            rows: 0,
        });
        s.record(&StepStats {
            kind: TxnKind::DeleteLab,
            outcome: Outcome::Committed,
            rows: 1,
        });
        assert_eq!(
            (s.txns, s.committed, s.skipped, s.conflicts, s.rows),
            (3, 2, 1, 1, 11)
        );
        assert_eq!(
            s.kind(TxnKind::CreateLab),
            KindStats {
                committed: 1,
                skipped: 1,
                conflicts: 1,
                rows: 10
            }
        );
        let line = s.to_string();
        assert!(
            line.contains("create_lab=1") && line.contains("delete_lab=1"),
            "{line}"
        );
    }
}
