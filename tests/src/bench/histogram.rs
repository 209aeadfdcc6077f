//! Quantiles of latency samples: from a Prometheus histogram scraped twice (the
//! cumulative buckets of the interval between the scrapes), or from raw samples.

use std::collections::BTreeMap;

/// Cumulative bucket counts of one histogram, by upper bound (`le`), `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// The buckets of `name` (`name_bucket{le="…"}`) in a scrape, summed over any other
    /// labels.
    pub fn from_scrape(samples: &BTreeMap<String, f64>, name: &str) -> Buckets {
        let prefix = format!("{name}_bucket{{");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for (series, value) in samples {
            let Some(labels) = series.strip_prefix(&prefix) else {
                continue;
            };
            let Some(le) = labels
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            };
            // f64 has no total order for a map key: key by its bits (all bounds ≥ 0).
            by_le.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += value;
        }
        let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(v)
    }

    /// The counts observed after `earlier` (both scrapes of the same histogram).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, n)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, n)| *n);
                    (*le, (n - before).max(0.0))
                })
                .collect(),
        )
    }

    /// Observations in total.
    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, n)| *n)
    }

    /// The `q` quantile by linear interpolation inside the bucket that holds it, as
    /// Prometheus' `histogram_quantile` does (lower bound of the first bucket: 0). In
    /// the `+Inf` bucket the answer is the largest finite bound. None without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.0 {
            if n >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = n - lower.1;
                let frac = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac);
            }
            lower = (le, n);
        }
        Some(lower.0)
    }
}

/// The `q` quantile of samples (nearest rank); None when empty.
pub fn sample_quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs
            .iter()
            .map(|(le, n)| (format!("lat_seconds_bucket{{le=\"{le}\"}}"), *n))
            .chain([("lat_seconds_count".to_string(), 0.0)])
            .collect()
    }

    #[test]
    fn quantiles_of_the_interval_between_two_scrapes() {
        let before = Buckets::from_scrape(
            &scrape(&[("0.01", 5.0), ("0.1", 5.0), ("1", 5.0), ("+Inf", 5.0)]),
            "lat_seconds",
        );
        let after = Buckets::from_scrape(
            &scrape(&[("0.01", 55.0), ("0.1", 95.0), ("1", 105.0), ("+Inf", 105.0)]),
            "lat_seconds",
        );
        let d = after.since(&before);
        assert_eq!(d.count(), 100.0);
        // 50 of 100 below 0.01: the median is the top of the first bucket.
        assert!((d.quantile(0.5).unwrap() - 0.01).abs() < 1e-9);
        // p99: 99th of 100 falls in (0.1, 1], 9 of its 10 observations in.
        assert!((d.quantile(0.99).unwrap() - (0.1 + 0.9 * 0.9)).abs() < 1e-9);
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn nearest_rank_of_samples() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(sample_quantile(&s, 0.5), Some(50.0));
        assert_eq!(sample_quantile(&s, 0.99), Some(99.0));
        assert_eq!(sample_quantile(&[], 0.5), None);
    }
}
