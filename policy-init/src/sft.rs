//! Policy initialisation: supervised training on expert traces, with the loss on the trace
//! only (never the prompt).

use ponder_datagen::Example;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::backend::{Backend, PassModel};
use crate::config::ModelConfig;
use crate::cpu::CrossEntropy;
use crate::error::PolicyError;
use crate::tokenizer::Tokenizer;
use crate::trainer::{Objective, StepInfo, StepOutput};
use crate::weights::{HostTensor, HostWeights};

/// Tokenized training sequences: `[bos] prompt completion`, and the index of the first
/// completion token (the first trained target).
#[derive(Clone, Debug, Default)]
pub struct Sequences {
    pub items: Vec<(Vec<u32>, usize)>,
    /// Examples dropped for not fitting the context.
    pub dropped: usize,
}

impl Sequences {
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        tokenizer: &Tokenizer,
        max_seq_len: usize,
    ) -> Sequences {
        let mut out = Sequences::default();
        for (prompt, completion) in pairs {
            let mut tokens: Vec<u32> = tokenizer.bos_id.into_iter().collect();
            tokens.extend(tokenizer.encode(prompt));
            let first = tokens.len();
            tokens.extend(tokenizer.encode(completion));
            // Inputs are tokens[..n-1]: n - 1 positions must fit the context.
            if tokens.len() > max_seq_len + 1 || first >= tokens.len() {
                out.dropped += 1;
                continue;
            }
            out.items.push((tokens, first));
        }
        out
    }

    pub fn from_examples(examples: &[Example], tokenizer: &Tokenizer, max_seq_len: usize) -> Sequences {
        // The model reads prompt and context (earlier attempts, for revision data) and is
        // trained on the completion.
        let conditioned: Vec<String> = examples
            .iter()
            .map(|e| format!("{}{}", e.problem.prompt, e.context.as_deref().unwrap_or("")))
            .collect();
        Self::from_pairs(
            conditioned
                .iter()
                .zip(examples)
                .map(|(c, e)| (c.as_str(), e.completion.as_str())),
            tokenizer,
            max_seq_len,
        )
    }

    pub fn total_tokens(&self) -> u64 {
        self.items.iter().map(|(t, _)| t.len() as u64).sum()
    }
}

/// The batches of one epoch: the examples shuffled and cut into batches. A pure function of
/// seed and epoch. (Grouping batches by length to save padding was tried and dropped: the CPU
/// path pads nothing, and length-sorted batches are correlated batches, which slowed learning
/// badly: 4-digit addition at 600 steps reached 4% greedy instead of 81%.)
pub fn epoch_batches(count: usize, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut rng);
    order.chunks(batch_size.max(1)).map(|b| b.to_vec()).collect()
}

/// The mean next-token cross-entropy over the trace tokens of `(tokens, first_trained)`
/// sequences and its gradients, on `backend`. Returns the loss, the gradients in layout order
/// and the input tokens processed.
pub fn cross_entropy_gradients(
    config: &ModelConfig,
    tensors: &[HostTensor],
    sequences: &[(Vec<u32>, usize)],
    backend: &Backend,
) -> (f64, Vec<Vec<f32>>, usize) {
    let tokens: Vec<Vec<u32>> = sequences.iter().map(|(t, _)| t.clone()).collect();
    let firsts: Vec<usize> = sequences.iter().map(|(_, f)| *f).collect();
    let count: usize = sequences.iter().map(|(t, f)| t.len().saturating_sub(*f)).sum();
    let inputs: Vec<&[u32]> = tokens.iter().map(|t| &t[..t.len() - 1]).collect();
    let loss = CrossEntropy {
        tokens: &tokens,
        first_trained: &firsts,
        count,
    };
    let model = PassModel {
        config,
        tensors,
        head: None,
        lm: true,
    };
    let (value, grads) = backend.loss_and_gradients(model, &inputs, &loss);
    (value, grads.tensors, inputs.iter().map(|i| i.len()).sum())
}

/// Evaluation hook: current weights and step in, a JSON summary out.
pub type EvalHook = Box<dyn FnMut(&HostWeights, usize) -> Result<serde_json::Value, PolicyError>>;

/// Next-token cross-entropy on the trace tokens of expert examples.
pub struct SftObjective {
    config: ModelConfig,
    sequences: Sequences,
    batch_size: usize,
    seed: u64,
    epoch: Option<(usize, Vec<Vec<usize>>)>,
    eval: Option<EvalHook>,
}

impl SftObjective {
    pub fn new(config: ModelConfig, sequences: Sequences, batch_size: usize, seed: u64) -> SftObjective {
        SftObjective {
            config,
            sequences,
            batch_size,
            seed,
            epoch: None,
            eval: None,
        }
    }

    pub fn with_eval(mut self, hook: EvalHook) -> SftObjective {
        self.eval = Some(hook);
        self
    }

    /// The sequences of step `step`.
    pub fn picked(&mut self, step: usize) -> Result<Vec<(Vec<u32>, usize)>, PolicyError> {
        if self.sequences.items.is_empty() {
            return Err(PolicyError::Config(
                "no training sequences fit the model's context".into(),
            ));
        }
        let count = self.sequences.items.len();
        let per_epoch = count.div_ceil(self.batch_size.max(1));
        let (epoch, index) = (step / per_epoch, step % per_epoch);
        if self.epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.epoch = Some((epoch, epoch_batches(count, self.batch_size, self.seed, epoch)));
        }
        let batches = self
            .epoch
            .as_ref()
            .map(|(_, b)| b)
            .ok_or_else(|| PolicyError::Config("no batches".into()))?;
        Ok(batches[index % batches.len()]
            .iter()
            .map(|&i| self.sequences.items[i].clone())
            .collect())
    }
}

impl Objective for SftObjective {
    fn step(&mut self, params: &[HostTensor], step: usize, backend: &Backend) -> Result<StepOutput, PolicyError> {
        let picked = self.picked(step)?;
        let (loss, gradients, tokens) = cross_entropy_gradients(&self.config, params, &picked, backend);
        Ok(StepOutput {
            loss,
            gradients,
            info: StepInfo {
                tokens,
                scalars: Vec::new(),
            },
        })
    }

    fn evaluate(&mut self, params: &[HostTensor], step: usize) -> Result<serde_json::Value, PolicyError> {
        let weights = HostWeights {
            config: self.config.clone(),
            tensors: params.to_vec(),
        };
        match &mut self.eval {
            Some(hook) => hook(&weights, step),
            None => Ok(serde_json::Value::Null),
        }
    }
}
