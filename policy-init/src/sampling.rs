//! Drawing a token from logits: temperature, top-k, top-p, seeded.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::policy::Sampling;

/// `log_softmax(logits)[token]`.
pub fn logprob(logits: &[f32], token: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    logits.get(token).map_or(f32::NEG_INFINITY, |&l| l - max - sum.ln())
}

/// The index of the largest logit (the lowest index on ties).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best
}

/// Draws a token; returns it with its model log-probability (temperature 1, no truncation).
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut ChaCha8Rng) -> (u32, f32) {
    if sampling.temperature <= 0.0 || logits.len() < 2 {
        let token = argmax(logits);
        return (token as u32, logprob(logits, token));
    }
    let inv_t = 1.0 / sampling.temperature;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l - max) * inv_t).exp()))
        .collect();
    let truncate = (sampling.top_k > 0 && sampling.top_k < probs.len()) || sampling.top_p < 1.0;
    if truncate {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if sampling.top_k > 0 {
            probs.truncate(sampling.top_k);
        }
        if sampling.top_p < 1.0 {
            let total: f32 = probs.iter().map(|p| p.1).sum();
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p.1 / total;
                if acc >= sampling.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
    }
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f32>() * total;
    let mut token = probs.last().map_or(0, |p| p.0);
    for &(i, p) in &probs {
        if u < p {
            token = i;
            break;
        }
        u -= p;
    }
    (token as u32, logprob(logits, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn frequencies_follow_the_distribution_and_truncation() {
        let logits = [0.0f32, 1.0, 2.0, -10.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = [0usize; 4];
        for _ in 0..20000 {
            counts[sample(&logits, &Sampling::default(), &mut rng).0 as usize] += 1;
        }
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for i in 0..3 {
            let expected = logits[i].exp() / z;
            let seen = counts[i] as f32 / 20000.0;
            assert!((seen - expected).abs() < 0.02, "{i}: {seen} vs {expected}");
        }
        let top1 = Sampling {
            top_k: 1,
            ..Sampling::default()
        };
        assert!((0..100).all(|_| sample(&logits, &top1, &mut rng).0 == 2));
        let top_p = Sampling {
            top_p: 0.5,
            ..Sampling::default()
        };
        assert!((0..100).all(|_| sample(&logits, &top_p, &mut rng).0 == 2));
        let (t, lp) = sample(&logits, &Sampling::greedy(), &mut rng);
        assert_eq!(t, 2);
        assert!((lp - (2.0 - z.ln())).abs() < 1e-5);
    }
}
