//! The training loop every learning stage shares (policy initialisation, reward models, RL):
//! AdamW on named parameters, the learning-rate schedule, global-norm clipping, metrics,
//! atomic checkpoints with resume, a divergence guard and progress reports.
//!
//! Determinism: the data of step `s` is a pure function of the seed and `s`, and the state is
//! the parameters, AdamW's moments and the step count. A run resumed from a checkpoint
//! therefore ends with the same weights as an uninterrupted one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backend::Backend;
use crate::checkpoint::Checkpointer;
use crate::error::PolicyError;
use crate::metrics::MetricsLog;
use crate::optim::{AdamW, OptimConfig};
use crate::weights::{HostTensor, HostWeights, load_safetensors, save_safetensors};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    pub optim: OptimConfig,
    /// Optimizer steps.
    pub steps: usize,
    /// Write a checkpoint every this many steps (and at the end); `usize::MAX`: never (the
    /// caller saves its own).
    pub checkpoint_every: usize,
    /// Write a metrics record every this many steps.
    pub log_every: usize,
    /// Run the objective's evaluation every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Stop when the loss's magnitude exceeds this multiple of its running mean magnitude, or
    /// of `divergence_floor` if that is larger (after warmup).
    pub divergence_factor: f64,
    /// The smallest scale the guard compares against. Supervised losses are positive and
    /// settle, so a floor of 0.1 catches a real jump (diverging cross-entropy heads for
    /// ln(vocab), several nats) without stopping a run whose loss of 0.003 meets a batch at
    /// 0.03. RL surrogate losses hover around zero with large relative swings, so RL sets a
    /// floor of the loss's natural scale (1.0).
    pub divergence_floor: f64,
    /// How often to rewind when the guard fires past [`TrainerConfig::skip_spikes`]: back to
    /// the latest in-memory snapshot, with the learning rate halved, and train on; the run
    /// fails only after this many rewinds (0: at the first). An unstable stretch of the
    /// schedule then costs some steps instead of the run.
    pub max_rewinds: usize,
    /// Keep a snapshot of the parameters and optimizer state every this many steps and at
    /// every checkpoint (memory: three copies of the parameters).
    pub snapshot_every: usize,
    /// A batch whose loss trips the guard is skipped (no update) up to this many times in a
    /// row: one batch of unusually hard or noisy examples costs its step, not the run. Past
    /// that, or at a non-finite gradient, the run rewinds (or stops, without rewinds left).
    pub skip_spikes: usize,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            optim: OptimConfig::default(),
            steps: 1000,
            checkpoint_every: 100,
            log_every: 10,
            eval_every: 0,
            divergence_factor: 8.0,
            divergence_floor: 0.1,
            max_rewinds: 3,
            snapshot_every: 100,
            skip_spikes: 3,
        }
    }
}

/// What one step's loss came with.
#[derive(Clone, Debug, Default)]
pub struct StepInfo {
    /// Tokens processed (for tokens/s).
    pub tokens: usize,
    /// Extra scalars to log (e.g. KL, entropy).
    pub scalars: Vec<(String, f64)>,
}

/// What one step of an objective gives: the loss, the gradient of every parameter (in the
/// trainer's order, each as long as its parameter) and what to log.
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    pub loss: f64,
    pub gradients: Vec<Vec<f32>>,
    pub info: StepInfo,
}

/// A training objective: the loss of step `step` and its gradients, given the current
/// parameters, computed by `backend` (ponder's CPU transformer, or burn's autodiff as the
/// reference). Every objective is written once, as a [`crate::cpu::SequenceLoss`] on the
/// model's outputs, whichever backend runs the model.
pub trait Objective {
    fn step(&mut self, params: &[HostTensor], step: usize, backend: &Backend) -> Result<StepOutput, PolicyError>;

    /// An evaluation of the current parameters, logged as one record.
    fn evaluate(&mut self, _params: &[HostTensor], _step: usize) -> Result<serde_json::Value, PolicyError> {
        Ok(serde_json::Value::Null)
    }
}

/// Receives progress: the step reached, the total, and a short status.
pub trait Progress: Send + Sync {
    fn update(&self, step: usize, total: usize, status: &str);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct Silent;

impl Progress for Silent {
    fn update(&self, _: usize, _: usize, _: &str) {}
}

/// How a run ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub tokens: u64,
    /// Wall time of the training steps (evaluations excluded).
    pub train_seconds: f64,
    pub tokens_per_second: f64,
    pub final_loss: f64,
    pub resumed_from: Option<usize>,
    /// Times the divergence guard rewound the run (see [`TrainerConfig::max_rewinds`]).
    pub rewinds: usize,
    /// The learning rate's multiplier at the end (0.5 per rewind).
    pub lr_factor: f64,
    /// Batches skipped for a loss spike (see [`TrainerConfig::skip_spikes`]).
    pub skipped_batches: usize,
}

/// A copy of the training state the guard can rewind to.
struct Snapshot {
    step: usize,
    params: Vec<Vec<f32>>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    optimizer_t: u64,
    tokens: u64,
    loss_mean: Option<f64>,
    last_loss: f64,
    skipped: usize,
}

/// Named parameters and their optimizer, on the host.
pub struct Trainer {
    pub config: TrainerConfig,
    /// Where the objectives' forward and backward passes run.
    pub backend: Backend,
    pub names: Vec<String>,
    pub decay: Vec<bool>,
    /// Per-parameter learning-rate multipliers (1 for all by default; PPO's critic head
    /// learns faster than the backbone).
    pub lr_scale: Vec<f64>,
    /// Current parameters, under their saved shapes.
    pub params: Vec<HostTensor>,
    pub optimizer: AdamW,
    pub step: usize,
    pub tokens: u64,
    pub train_seconds: f64,
    checkpointer: Option<Checkpointer>,
    metrics: MetricsLog,
    resumed_from: Option<usize>,
    loss_mean: Option<f64>,
    /// The loss of the last step taken (kept in checkpoints, so that a run resumed from its
    /// final checkpoint still reports it).
    last_loss: f64,
    /// The learning rate's multiplier, halved at each rewind.
    lr_factor: f64,
    rewinds: usize,
    snapshot: Option<Snapshot>,
    /// Batches skipped so far, and how many of the latest steps were.
    skipped: usize,
    spikes_in_a_row: usize,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trainer(step {}, {} tensors)", self.step, self.params.len())
    }
}

impl Trainer {
    /// `params` under `names` (and their shapes) as checkpoints save them; `decay` says which
    /// get weight decay. Trains on ponder's CPU transformer until [`Trainer::with_backend`].
    pub fn new(config: TrainerConfig, names: Vec<String>, decay: Vec<bool>, params: Vec<HostTensor>) -> Trainer {
        let optimizer = AdamW::new(config.optim.clone(), &params);
        Trainer {
            config,
            backend: Backend::default(),
            names,
            decay,
            lr_scale: vec![1.0; params.len()],
            params,
            optimizer,
            step: 0,
            tokens: 0,
            train_seconds: 0.0,
            checkpointer: None,
            metrics: MetricsLog::disabled("train"),
            resumed_from: None,
            loss_mean: None,
            last_loss: f64::NAN,
            lr_factor: 1.0,
            rewinds: 0,
            snapshot: None,
            skipped: 0,
            spikes_in_a_row: 0,
        }
    }

    /// A trainer over a model's weights (Hugging Face names; decay on matrices).
    pub fn for_weights(config: TrainerConfig, weights: &HostWeights) -> Trainer {
        Trainer::for_weights_and_heads(config, weights, Vec::new())
    }

    /// [`Trainer::for_weights`] with more named tensors after the model's (a value or reward
    /// head), which get no weight decay.
    pub fn for_weights_and_heads(
        config: TrainerConfig,
        weights: &HostWeights,
        heads: Vec<(&str, HostTensor)>,
    ) -> Trainer {
        let layout = weights.layout();
        let mut decay: Vec<bool> = (0..layout.names.len()).map(|i| layout.decays(i)).collect();
        let mut names = layout.names;
        let mut params = weights.tensors.clone();
        for (name, tensor) in heads {
            names.push(name.to_string());
            decay.push(false);
            params.push(tensor);
        }
        Trainer::new(config, names, decay, params)
    }

    /// Runs the objectives' passes on `backend`.
    pub fn with_backend(mut self, backend: Backend) -> Trainer {
        self.backend = backend;
        self
    }

    /// Checkpoints go under `dir`; metrics records to `metrics`.
    pub fn with_outputs(mut self, checkpoints: Checkpointer, metrics: MetricsLog) -> Trainer {
        self.set_outputs(checkpoints, metrics);
        self
    }

    /// Writes checkpoints to `checkpoint_dir` and metrics records, under `name`, to `metrics`.
    /// With `resume`, continues from the latest checkpoint there, if any (metrics records past
    /// it are dropped, the run writes them again); otherwise starts afresh, clearing earlier
    /// checkpoints and this name's records. [`Trainer::resumed_from`] tells which happened.
    pub fn open(
        mut self,
        checkpoint_dir: &Path,
        metrics: &Path,
        name: &str,
        resume: bool,
    ) -> Result<Trainer, PolicyError> {
        let checkpoints = Checkpointer::new(checkpoint_dir, 2);
        let resume_step = if resume {
            checkpoints.latest()?.map(|(step, _)| step)
        } else {
            None
        };
        if resume_step.is_none() && checkpoint_dir.exists() {
            std::fs::remove_dir_all(checkpoint_dir).map_err(|e| PolicyError::io(checkpoint_dir, e))?;
        }
        let log = MetricsLog::open(metrics, name, resume_step)?;
        self.set_outputs(checkpoints, log);
        self.resume()?;
        Ok(self)
    }

    /// The checkpoint step this trainer continued from, when it resumed one.
    pub fn resumed_from(&self) -> Option<usize> {
        self.resumed_from
    }

    /// Sets where checkpoints and metrics go (in place).
    pub fn set_outputs(&mut self, checkpoints: Checkpointer, metrics: MetricsLog) {
        self.checkpointer = Some(checkpoints);
        self.metrics = metrics;
    }

    /// The parameters under their names.
    pub fn named_params(&self) -> BTreeMap<String, &HostTensor> {
        self.names.iter().cloned().zip(&self.params).collect()
    }

    /// Loads the latest checkpoint, if there is one; returns its step.
    pub fn resume(&mut self) -> Result<Option<usize>, PolicyError> {
        let Some(checkpointer) = &self.checkpointer else {
            return Ok(None);
        };
        let Some((step, dir)) = checkpointer.latest()? else {
            return Ok(None);
        };
        let mut params = load_safetensors(&dir.join("model.safetensors"))?;
        let mut moments = load_safetensors(&dir.join("optimizer.safetensors"))?;
        for i in 0..self.names.len() {
            let size = self.params[i].data.len();
            let take = |map: &mut BTreeMap<String, HostTensor>, key: &str| {
                map.remove(key)
                    .filter(|t| t.data.len() == size)
                    .map(|t| t.data)
                    .ok_or_else(|| PolicyError::Format(format!("{}: `{key}` is missing or misshapen", dir.display())))
            };
            let name = self.names[i].clone();
            self.params[i].data = take(&mut params, &name)?;
            self.optimizer.m[i] = take(&mut moments, &format!("m.{name}"))?;
            self.optimizer.v[i] = take(&mut moments, &format!("v.{name}"))?;
        }
        let state_path = dir.join("trainer.json");
        let state: serde_json::Value = std::fs::read_to_string(&state_path)
            .map_err(|e| PolicyError::io(&state_path, e))
            .and_then(|t| {
                serde_json::from_str(&t).map_err(|e| PolicyError::Format(format!("{}: {e}", state_path.display())))
            })?;
        self.step = step;
        self.optimizer.t = state["optimizer_t"].as_u64().unwrap_or(step as u64);
        self.tokens = state["tokens"].as_u64().unwrap_or(0);
        self.train_seconds = state["train_seconds"].as_f64().unwrap_or(0.0);
        self.loss_mean = state["loss_mean"].as_f64();
        self.last_loss = state["last_loss"].as_f64().unwrap_or(f64::NAN);
        self.lr_factor = state["lr_factor"].as_f64().unwrap_or(1.0);
        self.rewinds = state["rewinds"].as_u64().unwrap_or(0) as usize;
        self.skipped = state["skipped_batches"].as_u64().unwrap_or(0) as usize;
        self.spikes_in_a_row = state["spikes_in_a_row"].as_u64().unwrap_or(0) as usize;
        self.snapshot = None;
        self.resumed_from = Some(step);
        Ok(Some(step))
    }

    /// Starts the optimizer from the moments of another run's latest checkpoint in
    /// `checkpoints` (RL from the initialisation's AdamW state), keeping this trainer's
    /// parameters; tensors missing there or of another shape keep their fresh moments. The
    /// step count is set as after a long run, so bias correction does not inflate the first
    /// updates. Returns the step warm-started from; `None` without a checkpoint.
    pub fn warm_start_from(&mut self, checkpoints: &Path) -> Result<Option<usize>, PolicyError> {
        let Some((step, dir)) = Checkpointer::new(checkpoints, 2).latest()? else {
            return Ok(None);
        };
        let mut moments = load_safetensors(&dir.join("optimizer.safetensors"))?;
        for i in 0..self.names.len() {
            let size = self.params[i].data.len();
            let mut take = |key: String| moments.remove(&key).filter(|t| t.data.len() == size).map(|t| t.data);
            if let Some(m) = take(format!("m.{}", self.names[i])) {
                self.optimizer.m[i] = m;
            }
            if let Some(v) = take(format!("v.{}", self.names[i])) {
                self.optimizer.v[i] = v;
            }
        }
        self.optimizer.t = 10_000;
        Ok(Some(step))
    }

    /// Clears AdamW's moments and step count, as a fresh optimizer over the current parameters
    /// (ProRL's periodic optimizer reset).
    pub fn reset_optimizer(&mut self) {
        self.optimizer = AdamW::new(self.optimizer.config.clone(), &self.params);
    }

    /// Writes a checkpoint of the current state; `extra` adds files (configs, tokenizer).
    pub fn save_checkpoint(&self, extra: &dyn Fn(&Path) -> Result<(), PolicyError>) -> Result<(), PolicyError> {
        let Some(checkpointer) = &self.checkpointer else {
            return Ok(());
        };
        let params = self.named_params();
        let mut moments: BTreeMap<String, HostTensor> = BTreeMap::new();
        for (((name, m), v), p) in self
            .names
            .iter()
            .zip(&self.optimizer.m)
            .zip(&self.optimizer.v)
            .zip(&self.params)
        {
            let moment = |data: &Vec<f32>| HostTensor {
                shape: p.shape.clone(),
                data: data.clone(),
            };
            moments.insert(format!("m.{name}"), moment(m));
            moments.insert(format!("v.{name}"), moment(v));
        }
        let state = json!({
            "step": self.step,
            "optimizer_t": self.optimizer.t,
            "tokens": self.tokens,
            "train_seconds": self.train_seconds,
            "loss_mean": self.loss_mean,
            "last_loss": self.last_loss,
            "lr_factor": self.lr_factor,
            "rewinds": self.rewinds,
            "skipped_batches": self.skipped,
            "spikes_in_a_row": self.spikes_in_a_row,
        });
        checkpointer.save(self.step, |dir| {
            save_safetensors(
                &dir.join("model.safetensors"),
                params.iter().map(|(k, v)| (k.clone(), *v)),
                None,
            )?;
            save_safetensors(
                &dir.join("optimizer.safetensors"),
                moments.iter().map(|(k, v)| (k.clone(), v)),
                None,
            )?;
            let path = dir.join("trainer.json");
            std::fs::write(&path, serde_json::to_string_pretty(&state).unwrap_or_default())
                .map_err(|e| PolicyError::io(&path, e))?;
            extra(dir)
        })?;
        Ok(())
    }

    /// Trains until `config.steps`, checkpointing and evaluating on the way.
    pub fn run(
        &mut self,
        objective: &mut dyn Objective,
        progress: &dyn Progress,
        extra: &dyn Fn(&Path) -> Result<(), PolicyError>,
    ) -> Result<TrainSummary, PolicyError> {
        let total = self.config.steps;
        let mut window_tokens = 0u64;
        let mut window_seconds = 0.0f64;
        while self.step < total {
            // Checkpoint steps are snapshot steps too, so a run resumed from a checkpoint
            // rewinds to where the uninterrupted run would have.
            let checkpoint_every = self.config.checkpoint_every.max(1);
            let snapshot_due = self.step.is_multiple_of(self.config.snapshot_every.max(1))
                || (checkpoint_every != usize::MAX && self.step.is_multiple_of(checkpoint_every));
            // Not while batches are being skipped: the parameters may already be going bad.
            if self.config.max_rewinds > 0 && (self.snapshot.is_none() || (snapshot_due && self.spikes_in_a_row == 0)) {
                self.take_snapshot();
            }
            let started = Instant::now();
            let lr = self.config.optim.lr_at(self.step, total) * self.lr_factor;
            let StepOutput {
                loss: loss_value,
                gradients: grads,
                info,
            } = objective.step(&self.params, self.step, &self.backend)?;
            // A spiking batch is skipped, a few in a row; past that the run rewinds.
            let skipped = match self.guard(loss_value) {
                Ok(()) => {
                    self.spikes_in_a_row = 0;
                    None
                }
                Err(spike) if self.spikes_in_a_row < self.config.skip_spikes => {
                    self.spikes_in_a_row += 1;
                    self.skipped += 1;
                    Some(spike)
                }
                Err(spike) => {
                    self.rewind(spike)?;
                    continue;
                }
            };
            let mut grad_norm = None;
            if skipped.is_none() {
                if grads.len() != self.params.len()
                    || grads.iter().zip(&self.params).any(|(g, p)| g.len() != p.data.len())
                {
                    return Err(PolicyError::Config(format!(
                        "step {}: the objective gave gradients that do not match the {} parameters",
                        self.step,
                        self.params.len()
                    )));
                }
                let stats = self
                    .optimizer
                    .step(&mut self.params, &grads, &self.decay, &self.lr_scale, lr);
                if !stats.grad_norm.is_finite() {
                    self.rewind(format!("step {}: the gradient norm is {}", self.step, stats.grad_norm))?;
                    continue;
                }
                grad_norm = Some(stats.grad_norm);
                self.tokens += info.tokens as u64;
                window_tokens += info.tokens as u64;
                self.last_loss = loss_value;
            }
            self.step += 1;
            let seconds = started.elapsed().as_secs_f64();
            self.train_seconds += seconds;
            window_seconds += seconds;
            if let Some(spike) = &skipped {
                self.metrics.write(json!({
                    "step": self.step,
                    "skipped_batch": self.skipped,
                    "spiking_loss": loss_value,
                    "reason": spike,
                }))?;
            }
            if grad_norm.is_some() && (self.step.is_multiple_of(self.config.log_every.max(1)) || self.step == total) {
                let mut record = json!({
                    "step": self.step,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": self.tokens,
                    "tokens_per_s": window_tokens as f64 / window_seconds.max(1e-9),
                });
                for (k, v) in &info.scalars {
                    record[k] = json!(v);
                }
                self.metrics.write(record)?;
                window_tokens = 0;
                window_seconds = 0.0;
            }
            progress.update(self.step, total, &format!("loss {loss_value:.3}"));
            let eval_due = self.config.eval_every > 0 && self.step.is_multiple_of(self.config.eval_every);
            if eval_due || self.step == total {
                let result = objective.evaluate(&self.params, self.step)?;
                if !result.is_null() {
                    let mut record = json!({"step": self.step, "eval": result});
                    record["tokens"] = json!(self.tokens);
                    self.metrics.write(record)?;
                }
            }
            // `usize::MAX`: the caller saves its own checkpoints, with its own state beside the
            // trainer's (RL after each iteration); a checkpoint written here without that state
            // would be the latest one a kill could leave.
            let every = self.config.checkpoint_every.max(1);
            if every != usize::MAX && (self.step.is_multiple_of(every) || self.step == total) {
                self.save_checkpoint(extra)?;
            }
        }
        Ok(TrainSummary {
            steps: self.step,
            tokens: self.tokens,
            train_seconds: self.train_seconds,
            tokens_per_second: self.tokens as f64 / self.train_seconds.max(1e-9),
            final_loss: self.last_loss,
            resumed_from: self.resumed_from,
            rewinds: self.rewinds,
            lr_factor: self.lr_factor,
            skipped_batches: self.skipped,
        })
    }

    fn take_snapshot(&mut self) {
        self.snapshot = Some(Snapshot {
            step: self.step,
            params: self.params.iter().map(|p| p.data.clone()).collect(),
            m: self.optimizer.m.clone(),
            v: self.optimizer.v.clone(),
            optimizer_t: self.optimizer.t,
            tokens: self.tokens,
            loss_mean: self.loss_mean,
            last_loss: self.last_loss,
            skipped: self.skipped,
        });
    }

    /// Answers the guard firing for `reason`: back to the snapshot with half the learning
    /// rate, or the run stops once the rewinds are spent. The metrics records past the
    /// snapshot are dropped (the run writes them again) and a record of the rewind is added.
    fn rewind(&mut self, reason: String) -> Result<(), PolicyError> {
        let diverged = || PolicyError::Diverged(format!("{reason} (the last checkpoint is intact)"));
        if self.rewinds >= self.config.max_rewinds {
            return Err(diverged());
        }
        let Some(snapshot) = &self.snapshot else {
            return Err(diverged());
        };
        let spike_step = self.step;
        for (param, saved) in self.params.iter_mut().zip(&snapshot.params) {
            param.data.clone_from(saved);
        }
        self.optimizer.m.clone_from(&snapshot.m);
        self.optimizer.v.clone_from(&snapshot.v);
        self.optimizer.t = snapshot.optimizer_t;
        self.step = snapshot.step;
        self.tokens = snapshot.tokens;
        self.loss_mean = snapshot.loss_mean;
        self.last_loss = snapshot.last_loss;
        self.skipped = snapshot.skipped;
        self.spikes_in_a_row = 0;
        self.lr_factor *= 0.5;
        self.rewinds += 1;
        self.metrics.rewind_to(self.step)?;
        self.metrics.write(json!({
            "step": self.step,
            "rewind": self.rewinds,
            "from_step": spike_step,
            "lr_factor": self.lr_factor,
            "reason": reason,
        }))
    }

    /// `Err` with what is wrong when the loss spiked or is not finite.
    fn guard(&mut self, loss: f64) -> Result<(), String> {
        if !loss.is_finite() {
            return Err(format!("step {}: the loss is {loss}", self.step));
        }
        if let Some(mean) = self.loss_mean
            && self.step > self.config.optim.warmup_steps
            && loss.abs() > self.config.divergence_factor * mean.max(self.config.divergence_floor)
        {
            return Err(format!(
                "step {}: the loss jumped to {loss:.4}, {:.1}x its running mean magnitude {mean:.4}",
                self.step,
                loss.abs() / mean.max(1e-12)
            ));
        }
        self.loss_mean = Some(match self.loss_mean {
            Some(m) => 0.95 * m + 0.05 * loss.abs(),
            None => loss.abs(),
        });
        Ok(())
    }
}
