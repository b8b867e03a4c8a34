//! One token-level loss for every learner. Each completion token carries an advantage and
//! (optionally) the sampling policy's and the reference policy's log-probabilities:
//!
//! - without a ratio (behaviour cloning, DPO's linearised step): `-w·A·log π(a)`;
//! - with a ratio (PPO, GRPO): `-w·min(r·A, clip(r, 1±ε)·A)`, `r = π(a)/π_old(a)`;
//! - plus `β·KL(π‖π_ref)` (the k3 estimator `e^{ref−lp} − (ref−lp) − 1`), minus an entropy
//!   bonus `c_H·H(π)`, plus a value loss `c_V·(V − R)²` on a scalar head (PPO's critic).
//!
//! Everything derives from `g = ∂L/∂log π(a)`, computed on the host from the model's logits
//! ([`TokenLoss`] is a `SequenceLoss`), whichever training backend ran the model.

use std::sync::Mutex;

use ponder_policy_init::cpu::{SeqOutputs, SequenceLoss};

/// The per-token terms of one sequence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenTerms {
    /// `[bos] prompt completion` tokens; the model reads all but the last.
    pub tokens: Vec<u32>,
    /// Index of the first completion token.
    pub first: usize,
    /// Per completion token.
    pub advantages: Vec<f32>,
    /// Per completion token: the sampling policy's log-probability (ratio losses only).
    pub old_logprobs: Vec<f32>,
    /// Per completion token: the reference policy's log-probability (KL only).
    pub ref_logprobs: Vec<f32>,
    /// Per completion token: value targets (critic only).
    pub returns: Vec<f32>,
    /// Weight of each token of this sequence in the batch loss.
    pub weight: f32,
}

impl TokenTerms {
    /// A sequence whose completion tokens all have `advantage`, each weighing `weight` in the
    /// batch loss (no ratio, reference or critic terms yet).
    pub fn uniform(tokens: Vec<u32>, first: usize, advantage: f32, weight: f32) -> TokenTerms {
        TokenTerms {
            advantages: vec![advantage; tokens.len().saturating_sub(first)],
            tokens,
            first,
            weight,
            ..TokenTerms::default()
        }
    }

    pub fn completion_len(&self) -> usize {
        self.tokens.len().saturating_sub(self.first)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossSettings {
    /// Use the importance ratio with this clip range (PPO, GRPO): the ratio is bounded to
    /// `[1 − clip, 1 + clip_high]`; `None` for plain log-likelihood weighting (BC, DPO).
    pub clip: Option<f32>,
    /// The upper clip range when it differs from the lower (DAPO's clip-higher); `None`:
    /// `clip`.
    pub clip_high: Option<f32>,
    /// One importance ratio per sequence (GSPO): the geometric mean of its tokens' ratios,
    /// clipped per sequence, instead of one ratio per token. Every token of the sequence then
    /// carries the sequence's loss and `∂L/∂log π` (weight a sequence `1 / length` for each
    /// to count once).
    pub sequence_ratio: bool,
    pub kl_coef: f32,
    pub entropy_coef: f32,
    pub value_coef: f32,
}

/// Batch statistics, summed over tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenStats {
    pub tokens: f64,
    pub kl: f64,
    pub entropy: f64,
    pub clipped: f64,
    pub value_error: f64,
}

impl TokenStats {
    pub fn add(&mut self, other: &TokenStats) {
        self.tokens += other.tokens;
        self.kl += other.kl;
        self.entropy += other.entropy;
        self.clipped += other.clipped;
        self.value_error += other.value_error;
    }
}

pub struct TokenLoss<'a> {
    pub terms: &'a [&'a TokenTerms],
    pub settings: LossSettings,
    pub stats: Mutex<TokenStats>,
}

/// The largest importance ratio a negative-advantage token counts with.
pub const DUAL_CLIP: f32 = 3.0;

/// The largest per-token KL estimate that still has a gradient.
pub const KL_CLAMP: f32 = 10.0;

/// The k3 estimate of one token's KL to the reference, `e^d − d − 1` with `d = ref − lp`,
/// clamped at [`KL_CLAMP`] (as verl does): beyond it e^d explodes for a token the policy has
/// made nearly impossible, and one token would dominate the batch's loss and its monitor.
pub fn k3(reference: f32, logprob: f32) -> f32 {
    let d = reference - logprob;
    (d.exp() - d - 1.0).min(KL_CLAMP)
}

/// `∂L/∂log π(a)` and the loss of one token, given its log-probability.
pub fn token_gradient(
    settings: &LossSettings,
    logprob: f32,
    advantage: f32,
    old: Option<f32>,
    reference: Option<f32>,
) -> (f32, f32, bool) {
    let (g, loss, clipped) = match (settings.clip, old) {
        (Some(_), Some(old)) => clipped_ratio(settings, (logprob - old).exp(), advantage),
        _ => (-advantage, -advantage * logprob, false),
    };
    with_kl(settings, logprob, reference, (g, loss, clipped))
}

/// The clipped surrogate of one ratio `r` with its advantage: `∂L/∂log π` (that is `−A·r`
/// where the unclipped term is the minimum, else 0), the loss, and whether it was clipped.
fn clipped_ratio(settings: &LossSettings, r: f32, advantage: f32) -> (f32, f32, bool) {
    let low = settings.clip.unwrap_or(0.0);
    let high = settings.clip_high.unwrap_or(low);
    let unclipped = r * advantage;
    let bounded = r.clamp(1.0 - low, 1.0 + high) * advantage;
    if advantage < 0.0 && r > DUAL_CLIP {
        // Dual clip (Ye et al., 2020): a token the update made far likelier while its
        // advantage is negative would otherwise contribute an unbounded loss.
        (0.0, -DUAL_CLIP * advantage, true)
    } else if unclipped <= bounded {
        (-advantage * r, -unclipped, false)
    } else {
        (0.0, -bounded, true)
    }
}

/// Adds the KL penalty to the reference (k3, clamped) to one token's gradient and loss.
fn with_kl(settings: &LossSettings, logprob: f32, reference: Option<f32>, token: (f32, f32, bool)) -> (f32, f32, bool) {
    let (mut g, mut loss, mut clipped) = token;
    if let (Some(reference), true) = (reference, settings.kl_coef != 0.0) {
        let kl = k3(reference, logprob);
        loss += settings.kl_coef * kl;
        if kl < KL_CLAMP {
            g += settings.kl_coef * (1.0 - (reference - logprob).exp());
        }
    }
    if !g.is_finite() {
        g = 0.0;
        clipped = true;
    }
    (g, loss, clipped)
}

/// `∂L/∂log π`, the loss and whether it was clipped, for every completion token of `t` given
/// the current log-probabilities of its tokens: one [`token_gradient`] each, or, with
/// `sequence_ratio` (GSPO), the sequence's ratio `s = exp(mean(log π − log π_old))` clipped
/// once, so that each token carries `∂L_seq/∂log π_t · length = −A·s` (or 0 when clipped) and
/// the sequence's loss, before the KL penalty of its own. The sequence's advantage is its
/// first token's.
pub fn sequence_gradients(settings: &LossSettings, t: &TokenTerms, logprobs: &[f32]) -> Vec<(f32, f32, bool)> {
    let reference = |k: usize| t.ref_logprobs.get(k).copied();
    let sequence = settings.sequence_ratio
        && settings.clip.is_some()
        && !logprobs.is_empty()
        && t.old_logprobs.len() == logprobs.len();
    if !sequence {
        return (logprobs.iter().enumerate())
            .map(|(k, &lp)| {
                let advantage = t.advantages.get(k).copied().unwrap_or(0.0);
                token_gradient(settings, lp, advantage, t.old_logprobs.get(k).copied(), reference(k))
            })
            .collect();
    }
    let mean_log_ratio = (logprobs.iter().zip(&t.old_logprobs))
        .map(|(lp, old)| f64::from(lp - old))
        .sum::<f64>()
        / logprobs.len() as f64;
    let r = mean_log_ratio.exp() as f32;
    let advantage = t.advantages.first().copied().unwrap_or(0.0);
    let whole = clipped_ratio(settings, r, advantage);
    (logprobs.iter().enumerate())
        .map(|(k, &lp)| with_kl(settings, lp, reference(k), whole))
        .collect()
}

impl SequenceLoss for TokenLoss<'_> {
    fn loss(&self, seq: usize, outputs: SeqOutputs<'_>) -> f64 {
        let t = self.terms[seq];
        let (Some(logits), Some(dlogits)) = (outputs.logits, outputs.dlogits) else {
            return 0.0;
        };
        let positions = t.tokens.len() - 1;
        let v = logits.len() / positions.max(1);
        let s = &self.settings;
        let mut stats = TokenStats::default();
        let mut total = 0.0f64;
        let mut dvalues = outputs.dvalues;
        // The position whose logits predict completion token k, and its log-normaliser.
        let position = |k: usize| t.first + k - 1;
        let log_z: Vec<f32> = (0..t.completion_len())
            .map(|k| {
                let p = position(k);
                let row = &logits[p * v..(p + 1) * v];
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                max + row.iter().map(|&l| (l - max).exp()).sum::<f32>().ln()
            })
            .collect();
        let logprobs: Vec<f32> = (0..t.completion_len())
            .map(|k| logits[position(k) * v + t.tokens[t.first + k] as usize] - log_z[k])
            .collect();
        let per_token = sequence_gradients(s, t, &logprobs);
        for (k, &(g, loss, clipped)) in per_token.iter().enumerate() {
            let p = position(k);
            let row = &logits[p * v..(p + 1) * v];
            let drow = &mut dlogits[p * v..(p + 1) * v];
            let a = t.tokens[t.first + k] as usize;
            let (log_z, logprob) = (log_z[k], logprobs[k]);
            let w = t.weight;
            total += f64::from(w * loss);
            // Entropy and its gradient: dH/dlogit_j = -p_j (log p_j + H).
            let mut entropy = 0.0f32;
            for &l in row {
                let lp = l - log_z;
                entropy -= lp.exp() * lp;
            }
            for (j, d) in drow.iter_mut().enumerate() {
                let lp = row[j] - log_z;
                let pj = lp.exp();
                let mut grad = w * g * (f32::from(u8::from(j == a)) - pj);
                if s.entropy_coef != 0.0 {
                    grad += w * s.entropy_coef * pj * (lp + entropy);
                }
                *d += grad;
            }
            total -= f64::from(w * s.entropy_coef * entropy);
            stats.tokens += 1.0;
            stats.entropy += f64::from(entropy);
            stats.clipped += f64::from(u8::from(clipped));
            if let Some(&r) = t.ref_logprobs.get(k) {
                stats.kl += f64::from(k3(r, logprob));
            }
            if let (Some(values), Some(dv), Some(&target)) = (outputs.values, dvalues.as_deref_mut(), t.returns.get(k))
            {
                let err = values[p] - target;
                total += f64::from(w * s.value_coef * err * err);
                dv[p] += 2.0 * w * s.value_coef * err;
                stats.value_error += f64::from(err * err);
            }
        }
        if let Ok(mut all) = self.stats.lock() {
            all.add(&stats);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_tokens_have_no_policy_gradient() {
        let s = LossSettings {
            clip: Some(0.2),
            kl_coef: 0.0,
            entropy_coef: 0.0,
            value_coef: 0.0,
            ..LossSettings::default()
        };
        // ratio 2 with a positive advantage: clipped.
        let (g, _, clipped) = token_gradient(&s, 2f32.ln(), 1.0, Some(0.0), None);
        assert!(clipped && g == 0.0);
        // ratio 2 with a negative advantage: the unclipped term is the minimum.
        let (g, loss, clipped) = token_gradient(&s, 2f32.ln(), -1.0, Some(0.0), None);
        assert!(!clipped && (g - 2.0).abs() < 1e-6 && (loss - 2.0).abs() < 1e-6);
        // ratio 5 with a negative advantage: the dual clip bounds it at 3, with no gradient.
        let (g, loss, clipped) = token_gradient(&s, 5f32.ln(), -1.0, Some(0.0), None);
        assert!(clipped && g == 0.0 && (loss - 3.0).abs() < 1e-6);
        // No ratio: plain weighted log-likelihood.
        let plain = LossSettings { clip: None, ..s };
        let (g, loss, _) = token_gradient(&plain, -0.5, 2.0, None, None);
        assert!((g + 2.0).abs() < 1e-6 && (loss - 1.0).abs() < 1e-6);
        // KL k3 is zero at the reference and its gradient too.
        let kl = LossSettings { kl_coef: 0.1, ..plain };
        let (g, loss, _) = token_gradient(&kl, -1.0, 0.0, None, Some(-1.0));
        assert!(g.abs() < 1e-6 && loss.abs() < 1e-6);
    }

    #[test]
    fn clip_higher_lets_a_rewarded_ratio_rise_further_than_a_penalised_one_falls() {
        let s = LossSettings {
            clip: Some(0.2),
            clip_high: Some(0.28),
            ..LossSettings::default()
        };
        // Ratio 1.25, advantage 1: inside [0.8, 1.28], so unclipped, gradient -A·r.
        let (g, loss, clipped) = token_gradient(&s, 1.25f32.ln(), 1.0, Some(0.0), None);
        assert!(!clipped && (g + 1.25).abs() < 1e-5 && (loss + 1.25).abs() < 1e-5);
        // Ratio 1.3: past 1.28, clipped, the loss at the bound.
        let (g, loss, clipped) = token_gradient(&s, 1.3f32.ln(), 1.0, Some(0.0), None);
        assert!(clipped && g == 0.0 && (loss + 1.28).abs() < 1e-5);
        // Ratio 0.75 with advantage -1: below 0.8, clipped at the lower bound.
        let (g, loss, clipped) = token_gradient(&s, 0.75f32.ln(), -1.0, Some(0.0), None);
        assert!(clipped && g == 0.0 && (loss - 0.8).abs() < 1e-5);
    }

    #[test]
    fn a_sequence_ratio_is_the_geometric_mean_of_the_token_ratios_clipped_once() {
        // Two tokens: log-ratios 0.1 and 0.3, so s = e^0.2 ≈ 1.2214, advantage 1.
        let t = TokenTerms {
            tokens: vec![0, 0, 0],
            first: 1,
            advantages: vec![1.0, 1.0],
            old_logprobs: vec![-1.1, -2.3],
            weight: 0.5,
            ..TokenTerms::default()
        };
        let logprobs = [-1.0f32, -2.0];
        let s = 0.2f32.exp();
        let wide = LossSettings {
            clip: Some(0.3),
            sequence_ratio: true,
            ..LossSettings::default()
        };
        for (g, loss, clipped) in sequence_gradients(&wide, &t, &logprobs) {
            // Each token carries −A·s and the sequence's loss −s·A.
            assert!(
                !clipped && (g + s).abs() < 1e-5 && (loss + s).abs() < 1e-5,
                "{g} {loss}"
            );
        }
        let narrow = LossSettings {
            clip: Some(0.1),
            ..wide
        };
        for (g, loss, clipped) in sequence_gradients(&narrow, &t, &logprobs) {
            assert!(clipped && g == 0.0 && (loss + 1.1).abs() < 1e-5, "{g} {loss}");
        }
        // Per token, the same numbers give each token its own ratio (e^0.1 and e^0.3).
        let per_token = LossSettings {
            sequence_ratio: false,
            ..wide
        };
        let g = sequence_gradients(&per_token, &t, &logprobs);
        assert!((g[0].0 + 0.1f32.exp()).abs() < 1e-5 && g[1].2, "{g:?}");
    }

    #[test]
    fn the_kl_monitor_clamps_each_token_like_the_loss() {
        // Two completion tokens over a vocabulary of 2: the policy gives token 1 a probability
        // of about e^-20 where the reference gives it about 1 (k3 ≈ e^20), and token 0 exactly
        // the reference's probability (k3 = 0).
        let logits = [0.0f32, 0.0, 20.0, 0.0];
        let log_half = -(2f32.ln());
        let terms = TokenTerms {
            tokens: vec![0, 0, 1],
            first: 1,
            advantages: vec![0.0, 0.0],
            ref_logprobs: vec![log_half, 0.0],
            weight: 0.5,
            ..TokenTerms::default()
        };
        let refs = [&terms];
        let loss = TokenLoss {
            terms: &refs,
            settings: LossSettings {
                clip: None,
                kl_coef: 0.1,
                entropy_coef: 0.0,
                value_coef: 0.0,
                ..LossSettings::default()
            },
            stats: Mutex::new(TokenStats::default()),
        };
        let mut dlogits = vec![0.0f32; logits.len()];
        loss.loss(
            0,
            SeqOutputs {
                logits: Some(&logits),
                values: None,
                dlogits: Some(&mut dlogits),
                dvalues: None,
            },
        );
        let stats = loss.stats.lock().map(|s| *s).unwrap_or_default();
        assert_eq!(stats.tokens, 2.0);
        assert!((stats.kl - f64::from(KL_CLAMP)).abs() < 1e-3, "{}", stats.kl);
    }
}
