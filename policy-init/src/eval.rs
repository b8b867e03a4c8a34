//! Evaluation statistics: the unbiased pass@k estimator (Chen et al., 2021), Wilson score
//! intervals and bootstrap intervals.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The probability that at least one of k samples drawn without replacement from n samples,
/// c of them right, is right: `1 - C(n-c, k) / C(n, k)`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n == 0 {
        return 0.0;
    }
    let k = k.min(n);
    if n - c < k {
        return 1.0;
    }
    // Product form, numerically stable: prod_{i=n-c+1}^{n} (1 - k / i).
    let mut miss = 1.0;
    for i in (n - c + 1)..=n {
        miss *= 1.0 - k as f64 / i as f64;
    }
    1.0 - miss
}

/// An estimate with a 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

impl Estimate {
    pub fn format_pct(&self) -> String {
        format!(
            "{:.1}% [{:.1}, {:.1}]",
            self.value * 100.0,
            self.low * 100.0,
            self.high * 100.0
        )
    }
}

/// The 95% Wilson score interval of a proportion.
pub fn wilson(successes: f64, n: usize) -> Estimate {
    if n == 0 {
        return Estimate {
            value: 0.0,
            low: 0.0,
            high: 1.0,
            n,
        };
    }
    let z = 1.959_964;
    let nf = n as f64;
    let p = successes / nf;
    let denom = 1.0 + z * z / nf;
    let centre = (p + z * z / (2.0 * nf)) / denom;
    let half = z * ((p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt()) / denom;
    Estimate {
        value: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
        n,
    }
}

/// The mean of per-problem scores in [0, 1] with a 95% percentile-bootstrap interval
/// (seeded, 1000 resamples).
pub fn bootstrap_mean(scores: &[f64], seed: u64) -> Estimate {
    let n = scores.len();
    if n == 0 {
        return Estimate {
            value: 0.0,
            low: 0.0,
            high: 1.0,
            n,
        };
    }
    let mean = scores.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..1000)
        .map(|_| (0..n).map(|_| scores[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    Estimate {
        value: mean,
        low: means[25],
        high: means[974],
        n,
    }
}

/// The paired bootstrap interval of the mean difference `a - b` over the same problems.
pub fn bootstrap_difference(a: &[f64], b: &[f64], seed: u64) -> Estimate {
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    bootstrap_mean(&diffs, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_the_combinatorial_definition() {
        fn choose(n: u64, k: u64) -> f64 {
            (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
        }
        for (n, c, k) in [(10, 3, 1), (10, 3, 5), (32, 1, 8), (32, 0, 4), (5, 5, 2), (20, 7, 20)] {
            let exact = if n - c < k {
                1.0
            } else {
                1.0 - choose(n - c, k) / choose(n, k)
            };
            let got = pass_at_k(n as usize, c as usize, k as usize);
            assert!((got - exact).abs() < 1e-12, "{n} {c} {k}: {got} vs {exact}");
        }
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
    }

    #[test]
    fn intervals_cover_the_estimate() {
        let w = wilson(30.0, 100);
        assert!(w.low < 0.3 && 0.3 < w.high && w.high - w.low < 0.2);
        let b = bootstrap_mean(&[1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0], 1);
        assert!(b.low <= b.value && b.value <= b.high);
        assert_eq!(bootstrap_mean(&[1.0; 5], 1).low, 1.0);
    }
}
