//! Outcome and process reward models: the policy's transformer backbone (from its checkpoint or
//! fresh) with a scalar head, read at the last token (ORM) or at the end of every step and of
//! the answer line (PRM), trained with binary cross-entropy on (possibly soft) labels. Training
//! runs on the policy trainer's machinery: AdamW, checkpoints, resume, metrics, progress.
//!
//! Saved as a Hugging Face-shaped folder: `config.json` (`LlamaForTokenClassification` for a
//! PRM, `LlamaForSequenceClassification` for an ORM, one label), `model.safetensors` (the
//! backbone's `model.*` tensors and `score.weight`, `score.bias`), `tokenizer.json`, and
//! `reward.json` (granularity, aggregation and the likelihood feature's weight).
//!
//! The likelihood feature (on unless the weight is 0): the logit at a position adds a learned
//! multiple of the backbone's own log-likelihood of the trace up to it, read through its
//! language-model head (kept in the folder for it; the embedding when tied). Started from a
//! zero head and weight 1, a model ranks steps as the policy does before any training.
//! `transformers` loading the folder as a token classifier reads the head alone: the feature
//! is ponder's.

use std::collections::BTreeMap;
use std::path::Path;

use ponder_datagen::trace::answer_line;
use ponder_datagen::{Problem, Trace};
use ponder_policy_init::backend::{Backend, PassModel};
use ponder_policy_init::cpu::{ScalarHead, SeqOutputs, SequenceLoss};
use ponder_policy_init::trainer::{Objective, StepInfo, StepOutput, Trainer, TrainerConfig};
use ponder_policy_init::weights::{HostTensor, load_safetensors, save_safetensors};
use ponder_policy_init::{HostWeights, ModelConfig, PolicyError, Tokenizer};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Aggregation, Granularity, RewardError};

/// A problem and trace as tokens, with where each step and the answer line end.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedTrace {
    pub tokens: Vec<u32>,
    /// Index of the last token of the prompt (the trace's tokens follow it).
    pub prompt_end: usize,
    /// Index of the last token of each step.
    pub step_ends: Vec<usize>,
    /// Index of the last token of the answer line, for a finished trace.
    pub answer_end: Option<usize>,
}

/// `[bos] prompt step\n ... Answer: x\n`, each piece tokenized on its own so the positions are
/// exact for any tokenizer (training and scoring encode alike).
pub fn encode_trace(tokenizer: &Tokenizer, problem: &Problem, trace: &Trace) -> EncodedTrace {
    let mut tokens: Vec<u32> = tokenizer.bos_id.into_iter().collect();
    tokens.extend(tokenizer.encode(&problem.prompt));
    let prompt_end = tokens.len().saturating_sub(1);
    let mut step_ends = Vec::with_capacity(trace.steps.len());
    for step in &trace.steps {
        tokens.extend(tokenizer.encode(&format!("{step}\n")));
        step_ends.push(tokens.len() - 1);
    }
    let answer_end = trace.answer.as_ref().map(|a| {
        tokens.extend(tokenizer.encode(&format!("{}\n", answer_line(a))));
        tokens.len() - 1
    });
    EncodedTrace {
        tokens,
        prompt_end,
        step_ends,
        answer_end,
    }
}

/// One training sequence: tokens and the positions whose score is trained, with targets.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardExample {
    pub tokens: Vec<u32>,
    /// Index of the last prompt token: the likelihood feature sums the trace's tokens after it.
    pub prompt_end: usize,
    pub positions: Vec<usize>,
    pub targets: Vec<f32>,
}

/// A PRM example trains every step end (with `step_labels`) and the answer line (with
/// `outcome`); an ORM example trains the last token with `outcome`.
pub fn reward_example(
    tokenizer: &Tokenizer,
    problem: &Problem,
    trace: &Trace,
    step_labels: &[f32],
    outcome: f32,
    granularity: Granularity,
) -> RewardExample {
    let e = encode_trace(tokenizer, problem, trace);
    let (positions, targets) = match granularity {
        Granularity::Process => {
            let mut positions: Vec<usize> = e.step_ends.clone();
            let mut targets: Vec<f32> = step_labels.iter().copied().take(positions.len()).collect();
            positions.truncate(targets.len());
            if let Some(a) = e.answer_end {
                positions.push(a);
                targets.push(outcome);
            }
            (positions, targets)
        }
        Granularity::Outcome => (vec![e.tokens.len() - 1], vec![outcome]),
    };
    RewardExample {
        tokens: e.tokens,
        prompt_end: e.prompt_end,
        positions,
        targets,
    }
}

/// `log(sum(exp(row)))`, computed stably.
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln()
}

/// The log-likelihood of the trace so far at every position: `out[p]` sums the log-probability
/// the language model gives each token after the prompt up to and including token `p` (0 up
/// to the prompt's end). `logits(t)` is the row of next-token logits read at position `t`.
pub fn prefix_loglik<'a>(logits: impl Fn(usize) -> &'a [f32], tokens: &[u32], prompt_end: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; tokens.len()];
    let mut sum = 0.0f32;
    for t in prompt_end..tokens.len().saturating_sub(1) {
        let row = logits(t);
        let next = row.get(tokens[t + 1] as usize).copied().unwrap_or(f32::NEG_INFINITY);
        sum += next - log_sum_exp(row);
        out[t + 1] = sum;
    }
    out
}

/// A reward model's weights on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardWeights {
    pub backbone: HostWeights,
    /// `[d_model]`.
    pub head: Vec<f32>,
    pub bias: f32,
    /// Weight of the likelihood feature: the score's logit adds this multiple of the
    /// backbone's own log-likelihood of the trace so far ([`prefix_loglik`], read through its
    /// language-model head). 0 turns the feature off (a plain token or sequence classifier).
    pub likelihood_weight: f32,
    pub granularity: Granularity,
    pub aggregation: Aggregation,
}

#[derive(Serialize, Deserialize)]
struct RewardMeta {
    granularity: Granularity,
    aggregation: Aggregation,
    #[serde(default)]
    likelihood_weight: f32,
}

impl RewardWeights {
    /// A fresh head on a backbone. With `likelihood`, the backbone keeps its language-model
    /// head and the score starts as the backbone's own log-likelihood of the trace so far (weight
    /// 1, a zero head): training starts from the generator's ranking rather than from chance.
    /// Without it the language-model head, if any, is dropped: the model reads hidden states
    /// only.
    pub fn new(
        mut backbone: HostWeights,
        granularity: Granularity,
        aggregation: Aggregation,
        likelihood: bool,
    ) -> RewardWeights {
        if !likelihood && let Some(slot) = backbone.layout().lm_head {
            backbone.tensors.remove(slot);
            backbone.config.tie_embeddings = true;
        }
        let d = backbone.config.d_model;
        RewardWeights {
            backbone,
            head: vec![0.0; d],
            bias: 0.0,
            likelihood_weight: if likelihood { 1.0 } else { 0.0 },
            granularity,
            aggregation,
        }
    }

    /// The language-model head `[vocab, d_model]` the likelihood feature reads (the embedding
    /// when tied).
    pub fn lm_head(&self) -> &[f32] {
        let layout = self.backbone.layout();
        &self.backbone.tensors[layout.lm_head.unwrap_or(layout.embed)].data
    }

    pub fn save(&self, dir: &Path, tokenizer: &Tokenizer) -> Result<(), RewardError> {
        std::fs::create_dir_all(dir).map_err(|e| PolicyError::io(dir, e))?;
        let mut config = self
            .backbone
            .config
            .to_hf_json(tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id);
        let arch = match (self.granularity, config["model_type"].as_str()) {
            (Granularity::Process, Some("qwen2")) => "Qwen2ForTokenClassification",
            (Granularity::Process, _) => "LlamaForTokenClassification",
            (Granularity::Outcome, Some("qwen2")) => "Qwen2ForSequenceClassification",
            (Granularity::Outcome, _) => "LlamaForSequenceClassification",
        };
        config["architectures"] = serde_json::json!([arch]);
        config["num_labels"] = serde_json::json!(1);
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            ponder_datagen::io::write_atomic(&path, text.as_bytes()).map_err(|e| PolicyError::io(&path, e))
        };
        write("config.json", serde_json::to_string_pretty(&config).unwrap_or_default())?;
        let meta = RewardMeta {
            granularity: self.granularity,
            aggregation: self.aggregation,
            likelihood_weight: self.likelihood_weight,
        };
        write("reward.json", serde_json::to_string_pretty(&meta).unwrap_or_default())?;
        let head = HostTensor {
            shape: vec![1, self.head.len()],
            data: self.head.clone(),
        };
        let bias = HostTensor {
            shape: vec![1],
            data: vec![self.bias],
        };
        let mut named: BTreeMap<String, &HostTensor> = self.backbone.named();
        named.insert("score.weight".into(), &head);
        named.insert("score.bias".into(), &bias);
        save_safetensors(&dir.join("model.safetensors"), named, None)?;
        tokenizer.save(dir)?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<(RewardWeights, Tokenizer), RewardError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| RewardError::from(PolicyError::io(&path, e)))
        };
        let mut config = ModelConfig::from_hf_json(&read("config.json")?)?;
        let meta: RewardMeta = serde_json::from_str(&read("reward.json")?)
            .map_err(|e| RewardError::Format(format!("{}/reward.json: {e}", dir.display())))?;
        let mut named = load_safetensors(&dir.join("model.safetensors"))?;
        let head = named
            .remove("score.weight")
            .ok_or_else(|| RewardError::Format(format!("{}: no score.weight", dir.display())))?;
        let bias = named
            .remove("score.bias")
            .map_or(0.0, |b| b.data.first().copied().unwrap_or(0.0));
        // Without the likelihood feature a reward model carries no language-model head: its
        // backbone reads as tied.
        if meta.likelihood_weight == 0.0 {
            config.tie_embeddings = true;
            named.remove("lm_head.weight");
        }
        let backbone = HostWeights::from_named(&config, named)?;
        if head.data.len() != backbone.config.d_model {
            return Err(RewardError::Format(format!(
                "{}: score.weight has the wrong size",
                dir.display()
            )));
        }
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"))?;
        Ok((
            RewardWeights {
                backbone,
                head: head.data,
                bias,
                likelihood_weight: meta.likelihood_weight,
                granularity: meta.granularity,
                aggregation: meta.aggregation,
            },
            tokenizer,
        ))
    }
}

/// Binary cross-entropy of a reward head over labelled positions.
pub struct RewardObjective {
    /// The backbone's architecture: its `backbone_params` parameters are the trainer's first.
    config: ModelConfig,
    backbone_params: usize,
    examples: Vec<RewardExample>,
    batch_size: usize,
    seed: u64,
    epoch: Option<(usize, Vec<Vec<usize>>)>,
    eval: Option<Box<dyn FnMut(&RewardWeights, usize) -> Result<serde_json::Value, PolicyError>>>,
    granularity: Granularity,
    aggregation: Aggregation,
}

impl RewardObjective {
    pub fn new(
        config: ModelConfig,
        examples: Vec<RewardExample>,
        batch_size: usize,
        seed: u64,
        granularity: Granularity,
        aggregation: Aggregation,
    ) -> RewardObjective {
        // Sequences longer than the model's context cannot be trained on: they are left out.
        let max = config.max_seq_len;
        let examples: Vec<RewardExample> = examples.into_iter().filter(|e| e.tokens.len() <= max).collect();
        RewardObjective {
            backbone_params: ponder_policy_init::weights::Layout::tensor_count(&config),
            config,
            examples,
            batch_size,
            seed,
            epoch: None,
            eval: None,
            granularity,
            aggregation,
        }
    }

    pub fn with_eval(
        mut self,
        hook: Box<dyn FnMut(&RewardWeights, usize) -> Result<serde_json::Value, PolicyError>>,
    ) -> RewardObjective {
        self.eval = Some(hook);
        self
    }

    /// Host weights from the trainer's parameter list (backbone, then head and bias, then the
    /// likelihood feature's weight when it is on).
    pub fn weights(&self, params: &[HostTensor]) -> RewardWeights {
        let n = self.backbone_params;
        let scalar = |t: Option<&HostTensor>| t.and_then(|t| t.data.first().copied()).unwrap_or(0.0);
        RewardWeights {
            backbone: HostWeights {
                config: self.config.clone(),
                tensors: params[..n].to_vec(),
            },
            head: params[n].data.clone(),
            bias: scalar(params.get(n + 1)),
            likelihood_weight: scalar(params.get(n + 2)),
            granularity: self.granularity,
            aggregation: self.aggregation,
        }
    }

    fn batch_indices(&mut self, step: usize) -> Vec<usize> {
        let per_epoch = self.examples.len().div_ceil(self.batch_size.max(1)).max(1);
        let (epoch, index) = (step / per_epoch, step % per_epoch);
        if self.epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut order: Vec<usize> = (0..self.examples.len()).collect();
            order.shuffle(&mut rng);
            let batches = order.chunks(self.batch_size.max(1)).map(|c| c.to_vec()).collect();
            self.epoch = Some((epoch, batches));
        }
        self.epoch
            .as_ref()
            .map(|(_, b)| b[index % b.len()].clone())
            .unwrap_or_default()
    }
}

/// The trainer for a reward model: backbone parameters plus `score.weight`, `score.bias` and,
/// with the likelihood feature, `score.likelihood_weight`.
pub fn reward_trainer(start: &RewardWeights, config: TrainerConfig) -> Trainer {
    let d = start.backbone.config.d_model;
    let tensor = |shape: Vec<usize>, data: Vec<f32>| HostTensor { shape, data };
    let mut heads = vec![
        ("score.weight", tensor(vec![1, d], start.head.clone())),
        ("score.bias", tensor(vec![1], vec![start.bias])),
    ];
    if start.likelihood_weight != 0.0 {
        heads.push((
            "score.likelihood_weight",
            tensor(vec![1], vec![start.likelihood_weight]),
        ));
    }
    Trainer::for_weights_and_heads(config, &start.backbone, heads)
}

impl Objective for RewardObjective {
    fn step(&mut self, params: &[HostTensor], step: usize, backend: &Backend) -> Result<StepOutput, PolicyError> {
        if self.examples.is_empty() {
            return Err(PolicyError::Config("no reward-model training examples".into()));
        }
        let picked = self.batch_indices(step);
        let n = self.backbone_params;
        let head = ScalarHead {
            weight: params[n].data.clone(),
            bias: params[n + 1].data.first().copied().unwrap_or(0.0),
        };
        let examples: Vec<&RewardExample> = picked.iter().map(|&i| &self.examples[i]).collect();
        let sequences: Vec<&[u32]> = examples.iter().map(|e| e.tokens.as_slice()).collect();
        let count = examples.iter().map(|e| e.positions.len()).sum::<usize>().max(1);
        // The feature is on when its weight is a parameter (even if it has trained to 0).
        let likelihood = params.len() > n + 2;
        let loss = BinaryCrossEntropy {
            examples: &examples,
            count,
            likelihood,
            likelihood_weight: params.get(n + 2).and_then(|t| t.data.first().copied()).unwrap_or(0.0),
            likelihood_grads: std::sync::Mutex::new(vec![0.0; examples.len()]),
        };
        let model = PassModel {
            config: &self.config,
            tensors: &params[..n],
            head: Some(&head),
            lm: likelihood,
        };
        let (value, grads) = backend.loss_and_gradients(model, &sequences, &loss);
        let mut gradients = grads.tensors;
        let head_grad = grads.head.unwrap_or(ScalarHead {
            weight: vec![0.0; head.weight.len()],
            bias: 0.0,
        });
        gradients.push(head_grad.weight);
        gradients.push(vec![head_grad.bias]);
        if likelihood {
            // Summed in sequence order, so a step's result does not depend on thread timing.
            let g = loss
                .likelihood_grads
                .lock()
                .map(|g| g.iter().sum::<f64>())
                .unwrap_or(0.0) as f32;
            gradients.push(vec![g]);
        }
        let tokens = sequences.iter().map(|s| s.len()).sum();
        Ok(StepOutput {
            loss: value,
            gradients,
            info: StepInfo {
                tokens,
                scalars: vec![("labels".into(), count as f64)],
            },
        })
    }

    fn evaluate(&mut self, params: &[HostTensor], step: usize) -> Result<serde_json::Value, PolicyError> {
        let weights = self.weights(params);
        match &mut self.eval {
            Some(hook) => hook(&weights, step),
            None => Ok(serde_json::Value::Null),
        }
    }
}

/// Binary cross-entropy with logits on the labelled positions (the reward objective); with
/// the likelihood feature the logit at `p` adds `likelihood_weight` times the trace's
/// log-likelihood up to `p`, whose gradient flows into the language-model logits.
struct BinaryCrossEntropy<'a> {
    examples: &'a [&'a RewardExample],
    count: usize,
    /// The likelihood feature is on (its weight is a trained parameter, possibly 0).
    likelihood: bool,
    likelihood_weight: f32,
    /// Each sequence's share of the gradient of the batch loss with respect to
    /// `likelihood_weight` (sequences run in parallel; the shares are summed in order).
    likelihood_grads: std::sync::Mutex<Vec<f64>>,
}

impl SequenceLoss for BinaryCrossEntropy<'_> {
    fn loss(&self, seq: usize, outputs: SeqOutputs<'_>) -> f64 {
        let (Some(values), Some(dvalues)) = (outputs.values, outputs.dvalues) else {
            return 0.0;
        };
        let e = self.examples[seq];
        let len = e.tokens.len();
        let likelihood = outputs.logits.filter(|_| self.likelihood);
        let vocab = likelihood.map_or(0, |l| l.len() / len.max(1));
        let loglik = match likelihood {
            Some(logits) => prefix_loglik(|t| &logits[t * vocab..(t + 1) * vocab], &e.tokens, e.prompt_end),
            None => vec![0.0; len],
        };
        let norm = 1.0 / self.count as f32;
        let mut total = 0.0f64;
        // d loss / d loglik[p], per position.
        let mut dloglik = vec![0.0f32; len];
        let mut weight_grad = 0.0f64;
        for (&p, &y) in e.positions.iter().zip(&e.targets) {
            let z = values[p] + self.likelihood_weight * loglik[p];
            let l = z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
            total += f64::from(l * norm);
            let sig = 1.0 / (1.0 + (-z).exp());
            let g = (sig - y) * norm;
            dvalues[p] += g;
            dloglik[p] += g * self.likelihood_weight;
            weight_grad += f64::from(g * loglik[p]);
        }
        if let (Some(logits), Some(dlogits)) = (likelihood, outputs.dlogits) {
            // loglik[p] holds log p(token t + 1 | row t) for every t from the prompt's end to
            // p - 1: row t's logits get the sum of dloglik over p > t, times (one-hot - softmax).
            let mut later = 0.0f32;
            for t in (e.prompt_end..len.saturating_sub(1)).rev() {
                later += dloglik[t + 1];
                if later == 0.0 {
                    continue;
                }
                let row = &logits[t * vocab..(t + 1) * vocab];
                let lse = log_sum_exp(row);
                let drow = &mut dlogits[t * vocab..(t + 1) * vocab];
                for (d, &x) in drow.iter_mut().zip(row) {
                    *d -= later * (x - lse).exp();
                }
                if let Some(d) = drow.get_mut(e.tokens[t + 1] as usize) {
                    *d += later;
                }
            }
        }
        if likelihood.is_some()
            && let Ok(mut grads) = self.likelihood_grads.lock()
            && let Some(g) = grads.get_mut(seq)
        {
            *g = weight_grad;
        }
        total
    }
}
