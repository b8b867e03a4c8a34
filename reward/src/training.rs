//! Outcome and process reward models: the policy's transformer backbone (from its checkpoint or
//! fresh) with a scalar head, read at the last token (ORM) or at the end of every step and of
//! the answer line (PRM), trained with binary cross-entropy on (possibly soft) labels. Training
//! runs on the policy trainer's machinery: AdamW, checkpoints, resume, metrics, progress.
//!
//! Saved as a Hugging Face-shaped folder: `config.json` (`LlamaForTokenClassification` for a
//! PRM, `LlamaForSequenceClassification` for an ORM, one label), `model.safetensors` (the
//! backbone's `model.*` tensors and `score.weight`, `score.bias`), `tokenizer.json`, and
//! `reward.json` (granularity and aggregation).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use ponder_datagen::trace::answer_line;
use ponder_datagen::{Problem, Trace};
use ponder_policy_init::model::Transformer;
use ponder_policy_init::native_train::{NativeModel, ScalarHead, SeqOutputs, SequenceLoss};
use ponder_policy_init::trainer::{Objective, StepInfo, Trainer, TrainerConfig};
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
        step_ends,
        answer_end,
    }
}

/// One training sequence: tokens and the positions whose score is trained, with targets.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardExample {
    pub tokens: Vec<u32>,
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
        positions,
        targets,
    }
}

/// A reward model's weights on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardWeights {
    pub backbone: HostWeights,
    /// `[d_model]`.
    pub head: Vec<f32>,
    pub bias: f32,
    pub granularity: Granularity,
    pub aggregation: Aggregation,
}

#[derive(Serialize, Deserialize)]
struct RewardMeta {
    granularity: Granularity,
    aggregation: Aggregation,
}

impl RewardWeights {
    /// A fresh head on a backbone (its language-model head, if any, is dropped: a reward model
    /// reads hidden states, not next-token logits).
    pub fn new(mut backbone: HostWeights, granularity: Granularity, aggregation: Aggregation) -> RewardWeights {
        if let Some(slot) = backbone.layout().lm_head {
            backbone.tensors.remove(slot);
            backbone.config.tie_embeddings = true;
        }
        let d = backbone.config.d_model;
        RewardWeights {
            backbone,
            head: vec![0.0; d],
            bias: 0.0,
            granularity,
            aggregation,
        }
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
        // A reward model carries no language-model head: its backbone reads as tied.
        config.tie_embeddings = true;
        named.remove("lm_head.weight");
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
                granularity: meta.granularity,
                aggregation: meta.aggregation,
            },
            tokenizer,
        ))
    }
}

/// Binary cross-entropy of a reward head over labelled positions.
pub struct RewardObjective {
    template: Transformer,
    examples: Vec<RewardExample>,
    batch_size: usize,
    seed: u64,
    pad: u32,
    epoch: Option<(usize, Vec<Vec<usize>>)>,
    eval: Option<Box<dyn FnMut(&RewardWeights, usize) -> Result<serde_json::Value, PolicyError>>>,
    granularity: Granularity,
    aggregation: Aggregation,
}

impl RewardObjective {
    pub fn new(
        template: Transformer,
        examples: Vec<RewardExample>,
        batch_size: usize,
        seed: u64,
        pad: u32,
        granularity: Granularity,
        aggregation: Aggregation,
    ) -> RewardObjective {
        // Sequences longer than the model's context cannot be trained on: they are left out.
        let max = template.config.max_seq_len;
        let examples: Vec<RewardExample> = examples.into_iter().filter(|e| e.tokens.len() <= max).collect();
        RewardObjective {
            template,
            examples,
            batch_size,
            seed,
            pad,
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

    /// Host weights from the trainer's parameter list (backbone, then head and bias).
    pub fn weights(&self, params: &[Tensor<2>]) -> RewardWeights {
        let n = self.template.params.len();
        let backbone = self.template.with_params(params[..n].to_vec()).to_host();
        let read = |t: &Tensor<2>| {
            t.clone()
                .inner()
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap_or_default()
        };
        RewardWeights {
            backbone,
            head: read(&params[n]),
            bias: read(&params[n + 1]).first().copied().unwrap_or(0.0),
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

/// The trainer for a reward model: backbone parameters plus `score.weight` and `score.bias`.
pub fn reward_trainer(template: &Transformer, start: &RewardWeights, config: TrainerConfig) -> Trainer {
    let device = template.device();
    let d = template.config.d_model;
    let mut names = template.layout.names.clone();
    let mut shapes = template.layout.shapes.clone();
    let mut decay: Vec<bool> = (0..names.len()).map(|i| template.layout.decays(i)).collect();
    let mut params = template.params.clone();
    names.extend(["score.weight".to_string(), "score.bias".to_string()]);
    shapes.extend([vec![1, d], vec![1]]);
    decay.extend([false, false]);
    params.push(Tensor::from_data(TensorData::new(start.head.clone(), [1, d]), &device));
    params.push(Tensor::from_data(TensorData::new(vec![start.bias], [1, 1]), &device));
    Trainer::new(config, names, shapes, decay, params)
}

impl Objective for RewardObjective {
    fn loss(&mut self, params: &[Tensor<2>], step: usize) -> Result<(Tensor<1>, StepInfo), PolicyError> {
        if self.examples.is_empty() {
            return Err(PolicyError::Config("no reward-model training examples".into()));
        }
        let picked = self.batch_indices(step);
        let len = picked.iter().map(|&i| self.examples[i].tokens.len()).max().unwrap_or(1);
        let batch = picked.len();
        let mut inputs = vec![self.pad as i32; batch * len];
        let mut mask = vec![0.0f32; batch * len];
        let mut targets = vec![0.0f32; batch * len];
        let mut tokens = 0;
        for (b, &i) in picked.iter().enumerate() {
            let e = &self.examples[i];
            tokens += e.tokens.len();
            for (t, &tok) in e.tokens.iter().enumerate() {
                inputs[b * len + t] = tok as i32;
            }
            for (&p, &y) in e.positions.iter().zip(&e.targets) {
                mask[b * len + p] = 1.0;
                targets[b * len + p] = y;
            }
        }
        let n = self.template.params.len();
        let model = self.template.with_params(params[..n].to_vec());
        let device = model.device();
        let hidden = model.forward_hidden(&inputs, batch, len);
        let z = hidden.matmul(params[n].clone().transpose()) + params[n + 1].clone();
        let y = Tensor::<2>::from_data(TensorData::new(targets, [batch * len, 1]), &device);
        let m = Tensor::<2>::from_data(TensorData::new(mask.clone(), [batch * len, 1]), &device);
        let count = mask.iter().filter(|&&v| v > 0.0).count().max(1);
        let bce = z.clone().clamp_min(0.0) - z.clone() * y + z.abs().neg().exp().add_scalar(1.0).log();
        let loss = (bce * m).sum().div_scalar(count as f32);
        Ok((
            loss,
            StepInfo {
                tokens,
                scalars: vec![("labels".into(), count as f64)],
            },
        ))
    }

    fn host_step(
        &mut self,
        params: &[Tensor<2>],
        step: usize,
    ) -> Option<Result<(f64, Vec<Tensor<2>>, StepInfo), PolicyError>> {
        if params.first()?.device() != burn::tensor::Device::flex() || self.examples.is_empty() {
            return None;
        }
        let picked = self.batch_indices(step);
        let weights = self.weights(params);
        let head = ScalarHead {
            weight: weights.head.clone(),
            bias: weights.bias,
        };
        let examples: Vec<&RewardExample> = picked.iter().map(|&i| &self.examples[i]).collect();
        let sequences: Vec<&[u32]> = examples.iter().map(|e| e.tokens.as_slice()).collect();
        let count = examples.iter().map(|e| e.positions.len()).sum::<usize>().max(1);
        let loss = BinaryCrossEntropy {
            examples: &examples,
            count,
        };
        let model = NativeModel::new(&weights.backbone, Some(&head), false);
        let (value, grads) = model.loss_and_gradients(&sequences, &loss, rayon::current_num_threads());
        let device = params[0].device();
        let mut tensors: Vec<Tensor<2>> = grads
            .tensors
            .into_iter()
            .zip(params)
            .map(|(g, p)| Tensor::from_data(TensorData::new(g, p.dims()), &device))
            .collect();
        let head_grad = grads.head.unwrap_or(ScalarHead {
            weight: vec![0.0; head.weight.len()],
            bias: 0.0,
        });
        let d = head_grad.weight.len();
        tensors.push(Tensor::from_data(TensorData::new(head_grad.weight, [1, d]), &device));
        tensors.push(Tensor::from_data(
            TensorData::new(vec![head_grad.bias], [1, 1]),
            &device,
        ));
        let tokens = sequences.iter().map(|s| s.len()).sum();
        Some(Ok((
            value,
            tensors,
            StepInfo {
                tokens,
                scalars: vec![("labels".into(), count as f64)],
            },
        )))
    }

    fn evaluate(&mut self, params: &[Tensor<2>], step: usize) -> Result<serde_json::Value, PolicyError> {
        let weights = self.weights(params);
        match &mut self.eval {
            Some(hook) => hook(&weights, step),
            None => Ok(serde_json::Value::Null),
        }
    }
}

/// Binary cross-entropy with logits on the labelled positions, for the CPU training path.
struct BinaryCrossEntropy<'a> {
    examples: &'a [&'a RewardExample],
    count: usize,
}

impl SequenceLoss for BinaryCrossEntropy<'_> {
    fn loss(&self, seq: usize, outputs: SeqOutputs<'_>) -> f64 {
        let (Some(values), Some(dvalues)) = (outputs.values, outputs.dvalues) else {
            return 0.0;
        };
        let e = self.examples[seq];
        let norm = 1.0 / self.count as f32;
        let mut total = 0.0f64;
        for (&p, &y) in e.positions.iter().zip(&e.targets) {
            let z = values[p];
            let l = z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
            total += f64::from(l * norm);
            let sig = 1.0 / (1.0 + (-z).exp());
            dvalues[p] += (sig - y) * norm;
        }
        total
    }
}

/// Starts a reward model from a policy's weights (a tied head-less backbone).
pub fn backbone_from_policy(policy: &HostWeights, device: &Device) -> Transformer {
    Transformer::from_host(policy, device)
}
