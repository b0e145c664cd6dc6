//! Percentiles and latency distributions.

use std::time::Duration;

/// The `p`-th percentile (0..=100) of `sorted` samples, interpolated linearly between the two
/// nearest ranks (the common "type 7" definition: p0 = min, p100 = max). `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let (first, last) = (sorted.first()?, sorted.last()?);
    let p = p.clamp(0.0, 100.0);
    if sorted.len() == 1 || p == 0.0 {
        return Some(*first);
    }
    if p == 100.0 {
        return Some(*last);
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let low = rank.floor() as usize;
    let fraction = rank - low as f64;
    Some(sorted[low] + (sorted[low + 1] - sorted[low]) * fraction)
}

/// Milliseconds of a duration, as a float.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A latency distribution over N runs: the summary and the samples themselves.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribution {
    /// Number of samples.
    pub count: usize,
    /// Smallest sample, ms.
    pub min_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest sample, ms.
    pub max_ms: f64,
    /// Arithmetic mean, ms.
    pub mean_ms: f64,
    /// Every sample in run order, ms.
    pub samples_ms: Vec<f64>,
}

impl Distribution {
    /// Summarizes samples in milliseconds; `None` when there are none (or any is not finite).
    pub fn from_millis(samples_ms: Vec<f64>) -> Option<Self> {
        if samples_ms.is_empty() || samples_ms.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |p| percentile(&sorted, p).expect("non-empty");
        Some(Distribution {
            count: sorted.len(),
            min_ms: at(0.0),
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            max_ms: at(100.0),
            mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
            samples_ms,
        })
    }

    /// Summarizes measured durations; `None` when there are none.
    pub fn from_durations(samples: &[Duration]) -> Option<Self> {
        Self::from_millis(samples.iter().copied().map(millis).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&sorted, 50.0), Some(5.5));
        assert!((percentile(&sorted, 90.0).unwrap() - 9.1).abs() < 1e-9);
        assert_eq!(percentile(&sorted, 100.0), Some(10.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn distribution_summarizes_unsorted_samples() {
        let samples = [30, 10, 20].map(Duration::from_millis);
        let dist = Distribution::from_durations(&samples).unwrap();
        assert_eq!((dist.min_ms, dist.p50_ms, dist.max_ms), (10.0, 20.0, 30.0));
        assert_eq!(dist.mean_ms, 20.0);
        assert_eq!(dist.samples_ms, [30.0, 10.0, 20.0]);
        assert!(Distribution::from_durations(&[]).is_none());
        assert!(Distribution::from_millis(vec![1.0, f64::NAN]).is_none());
    }
}
