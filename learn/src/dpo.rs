//! DPO: preference pairs (a better and a worse completion of one prompt) against a frozen
//! reference policy, `−log σ(β·[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))])`.
//! Pairs come from the experience's preferences and from its samples: per prompt, a right
//! answer against a wrong one (the best against the worst by reward).
//!
//! Each optimizer step linearises the loss at the current parameters: the pair's coefficient
//! `β·σ(−βΔ)` weights the sequence log-likelihoods, which gives the exact gradient.

use std::sync::{Arc, Mutex};

use ponder_policy_init::optim::OptimConfig;
use ponder_policy_init::trainer::Progress;
use ponder_reward::sigmoid;
use serde::{Deserialize, Serialize};

use crate::objective::{TermsObjective, minibatches};
use crate::token_loss::{LossSettings, TokenTerms};
use crate::{
    Experience, LearnResult, LearnStats, Learner, Preference, TrainablePolicy, completion_logprobs, encode_sample,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSettings {
    /// Learning rate (default 1e-4: on the default countdown policy, 3e-4 and 5e-4 lowered
    /// held-out pass@1 within 20 iterations while 1e-4 raised it).
    pub lr: f64,
    pub beta: f32,
    pub epochs: usize,
    /// Pairs per optimizer step.
    pub minibatch: usize,
    /// Pairs made from the samples of one prompt, at most.
    pub pairs_per_prompt: usize,
}

impl Default for DpoSettings {
    fn default() -> Self {
        DpoSettings {
            lr: 1e-4,
            beta: 0.1,
            epochs: 2,
            minibatch: 32,
            pairs_per_prompt: 2,
        }
    }
}

#[derive(Debug)]
pub struct Dpo {
    pub settings: DpoSettings,
    pub seed: u64,
}

/// Pairs from grouped samples: right against wrong, best against worst reward.
pub fn pairs_from_samples(samples: &[crate::Sample], per_prompt: usize) -> Vec<Preference> {
    let mut groups: std::collections::BTreeMap<usize, Vec<&crate::Sample>> = std::collections::BTreeMap::new();
    for s in samples {
        groups.entry(s.group).or_default().push(s);
    }
    let mut out = Vec::new();
    for members in groups.values() {
        let mut right: Vec<&&crate::Sample> = members.iter().filter(|s| s.correct).collect();
        let mut wrong: Vec<&&crate::Sample> = members.iter().filter(|s| !s.correct).collect();
        right.sort_by(|a, b| b.reward.total_cmp(&a.reward));
        wrong.sort_by(|a, b| a.reward.total_cmp(&b.reward));
        right.dedup_by(|a, b| a.completion == b.completion);
        wrong.dedup_by(|a, b| a.completion == b.completion);
        for (c, r) in right.iter().zip(&wrong).take(per_prompt) {
            out.push(Preference {
                prompt: c.prompt.clone(),
                chosen: c.completion.clone(),
                rejected: r.completion.clone(),
            });
        }
    }
    out
}

impl Learner for Dpo {
    fn describe(&self) -> String {
        format!("DPO (beta {})", self.settings.beta)
    }

    fn optim(&self) -> OptimConfig {
        crate::fine_tuning_optim(self.settings.lr, Some(0.0))
    }

    fn learn(&mut self, policy: &mut TrainablePolicy, batch: &Experience, progress: &dyn Progress) -> LearnResult {
        let s = self.settings.clone();
        let mut prefs = batch.preferences.clone();
        prefs.extend(pairs_from_samples(&batch.samples, s.pairs_per_prompt));
        let prefs: Vec<Preference> = prefs
            .into_iter()
            .filter(|p| {
                [&p.chosen, &p.rejected]
                    .iter()
                    .all(|c| policy.fits(&encode_sample(&policy.tokenizer, &p.prompt, c)))
            })
            .collect();
        if prefs.is_empty() {
            return Ok(LearnStats::default());
        }
        let sequences: Vec<(&str, &str)> = prefs
            .iter()
            .flat_map(|p| {
                [
                    (p.prompt.as_str(), p.chosen.as_str()),
                    (p.prompt.as_str(), p.rejected.as_str()),
                ]
            })
            .collect();
        let reference: Vec<f32> = completion_logprobs(
            &policy.reference,
            &policy.tokenizer,
            &sequences,
            &policy.trainer.backend,
        )
        .iter()
        .map(|l| l.iter().sum())
        .collect();
        let terms: Vec<TokenTerms> = sequences
            .iter()
            .map(|(p, c)| {
                let (tokens, first) = encode_sample(&policy.tokenizer, p, c);
                TokenTerms::uniform(tokens, first, 0.0, 1.0)
            })
            .collect();
        self.seed = self.seed.wrapping_add(1);
        let pair_batches = minibatches(prefs.len(), s.minibatch, s.epochs, self.seed);
        let batches: Vec<Vec<usize>> = pair_batches
            .iter()
            .map(|b| b.iter().flat_map(|&i| [2 * i, 2 * i + 1]).collect())
            .collect();
        let steps = batches.len();
        // Forward-only passes: the reference over every sequence once, the current policy over
        // each minibatch's sequences before its step.
        let length: Vec<u64> = terms.iter().map(|t| t.tokens.len() as u64).collect();
        let scored_tokens = length.iter().sum::<u64>() + batches.iter().flatten().map(|&i| length[i]).sum::<u64>();
        // The loss is DPO's own (below); the token terms carry no ratio, KL, entropy or critic.
        let settings = LossSettings::default();
        let losses = Arc::new(Mutex::new(Vec::<f32>::new()));
        let margins = Arc::new(Mutex::new(Vec::<f32>::new()));
        let (config, tokenizer, beta) = (policy.config.clone(), policy.tokenizer.clone(), s.beta);
        let backend = policy.trainer.backend.clone();
        let owned: Vec<(String, String)> = sequences.iter().map(|(p, c)| (p.to_string(), c.to_string())).collect();
        let (loss_log, margin_log) = (losses.clone(), margins.clone());
        let n_policy = ponder_policy_init::weights::Layout::tensor_count(&config);
        let refresh =
            move |params: &[ponder_policy_init::weights::HostTensor], members: &[usize], terms: &mut [TokenTerms]| {
                let weights = ponder_policy_init::HostWeights {
                    config: config.clone(),
                    tensors: params[..n_policy].to_vec(),
                };
                let pairs: Vec<(&str, &str)> = members
                    .iter()
                    .map(|&i| (owned[i].0.as_str(), owned[i].1.as_str()))
                    .collect();
                let current: Vec<f32> = completion_logprobs(&weights, &tokenizer, &pairs, &backend)
                    .iter()
                    .map(|l| l.iter().sum())
                    .collect();
                let n_pairs = (members.len() / 2).max(1) as f32;
                for (j, chunk) in members.chunks(2).enumerate() {
                    let (c, r) = (chunk[0], chunk[1]);
                    let delta = beta * ((current[2 * j] - reference[c]) - (current[2 * j + 1] - reference[r]));
                    let coef = beta * sigmoid(-delta);
                    for a in &mut terms[c].advantages {
                        *a = coef;
                    }
                    for a in &mut terms[r].advantages {
                        *a = -coef;
                    }
                    terms[c].weight = 1.0 / n_pairs;
                    terms[r].weight = 1.0 / n_pairs;
                    if let (Ok(mut l), Ok(mut m)) = (loss_log.lock(), margin_log.lock()) {
                        l.push(-sigmoid(delta).ln());
                        m.push(delta / beta);
                    }
                }
                Ok(())
            };
        let tokens_before = policy.trainer.tokens;
        let mut objective = TermsObjective::new(
            policy.config.clone(),
            terms,
            batches,
            policy.trainer.step,
            settings,
            policy.value_head,
        );
        objective.normalize = false;
        objective.refresh = Some(Box::new(refresh));
        policy.train(&mut objective, steps, progress)?;
        let losses = losses.lock().map(|l| l.clone()).unwrap_or_default();
        let margins = margins.lock().map(|m| m.clone()).unwrap_or_default();
        let mean = |v: &[f32]| f64::from(v.iter().sum::<f32>()) / v.len().max(1) as f64;
        Ok(LearnStats {
            loss: mean(&losses),
            optimizer_steps: steps,
            tokens: policy.trainer.tokens - tokens_before,
            sequences: prefs.len() * 2,
            scored_tokens,
            extra: vec![
                ("pairs".into(), prefs.len() as f64),
                ("reward_margin".into(), mean(&margins)),
            ],
            ..LearnStats::default()
        })
    }
}
