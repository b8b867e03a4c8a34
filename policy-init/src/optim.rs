//! AdamW with decoupled weight decay, global gradient-norm clipping (as PyTorch's
//! `clip_grad_norm_`: burn's `GradientClippingConfig::Norm` clips each tensor on its own), and
//! a warmup + cosine learning-rate schedule, on host memory beside the parameters. The state
//! is plain vectors, saved with the checkpoint, so a resumed run continues bit for bit.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::weights::HostTensor;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// The schedule ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    pub warmup_steps: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay on matrices (not on norms and biases).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 disables).
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 3e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 50,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}

impl OptimConfig {
    /// Linear warmup, then cosine decay to `lr * min_lr_ratio` at `total` steps.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let min = self.lr * self.min_lr_ratio;
        min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            problems.push(format!("lr: must be positive, not {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            problems.push("beta1: beta1 and beta2 must be in [0, 1)".into());
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            problems.push("min_lr_ratio: must be in [0, 1]".into());
        }
        problems
    }
}

/// Statistics of one update.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UpdateStats {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

/// AdamW's moments for a list of parameters, on the host beside them.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: OptimConfig,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Updates done so far (for bias correction).
    pub t: u64,
}

impl AdamW {
    pub fn new(config: OptimConfig, params: &[HostTensor]) -> AdamW {
        let zeros = |p: &HostTensor| vec![0.0f32; p.data.len()];
        AdamW {
            config,
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
            t: 0,
        }
    }

    /// The global norm of a set of gradients.
    pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
        let total: f64 = grads
            .par_iter()
            .map(|g| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
            .collect::<Vec<f64>>()
            .into_iter()
            .sum();
        total.sqrt()
    }

    /// Applies one update to `params` given their gradients. `decay[i]` says whether parameter
    /// i gets weight decay; `lr_scale[i]` multiplies the learning rate for parameter i (1 where
    /// the slice is shorter). Tensors are updated in parallel, each element on its own, so the
    /// result does not depend on the thread count.
    pub fn step(
        &mut self,
        params: &mut [HostTensor],
        grads: &[Vec<f32>],
        decay: &[bool],
        lr_scale: &[f64],
        lr: f64,
    ) -> UpdateStats {
        let c = &self.config;
        let norm = Self::global_norm(grads);
        let clip = if c.grad_clip > 0.0 && norm > c.grad_clip {
            c.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let (b1, b2) = (c.beta1, c.beta2);
        let bias1 = (1.0 - b1.powi(self.t as i32)) as f32;
        let bias2 = (1.0 - b2.powi(self.t as i32)) as f32;
        let (clip, b1, b2, eps) = (clip as f32, b1 as f32, b2 as f32, c.eps as f32);
        let weight_decay = c.weight_decay;
        params
            .par_iter_mut()
            .zip(self.m.par_iter_mut())
            .zip(self.v.par_iter_mut())
            .enumerate()
            .for_each(|(i, ((p, m), v))| {
                let lr = lr * lr_scale.get(i).copied().unwrap_or(1.0);
                let shrink = if decay.get(i).copied().unwrap_or(false) && weight_decay > 0.0 {
                    (1.0 - lr * weight_decay) as f32
                } else {
                    1.0
                };
                let lr = lr as f32;
                for (((p, m), v), &g) in p.data.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(&grads[i]) {
                    let g = g * clip;
                    *m = *m * b1 + g * (1.0 - b1);
                    *v = *v * b2 + g * g * (1.0 - b2);
                    let update = (*m / bias1) / ((*v / bias2).sqrt() + eps);
                    *p = *p * shrink - update * lr;
                }
            });
        UpdateStats { grad_norm: norm, lr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            ..OptimConfig::default()
        };
        assert!((c.lr_at(0, 100) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(100, 100) - 0.1).abs() < 1e-12);
        assert!(c.lr_at(50, 100) < c.lr_at(30, 100));
    }

    #[test]
    fn matches_a_hand_computed_adamw_step_with_global_clipping() {
        let tensor = |data: Vec<f32>| HostTensor {
            shape: vec![data.len()],
            data,
        };
        // Gradients (3, 4) and (12): global norm 13, clipped to 1.3.
        let config = OptimConfig {
            grad_clip: 1.3,
            weight_decay: 0.5,
            eps: 0.0,
            ..OptimConfig::default()
        };
        let mut params = vec![tensor(vec![1.0, -2.0]), tensor(vec![0.5])];
        let mut opt = AdamW::new(config, &params);
        // q learns at twice the rate.
        let grads = [vec![3.0, 4.0], vec![12.0]];
        let stats = opt.step(&mut params, &grads, &[true, false], &[1.0, 2.0], 0.1);
        assert!((stats.grad_norm - 13.0).abs() < 1e-5);
        // After one step Adam's normalised update is sign(g): p - lr*wd*p - lr*sign(g).
        let p = &params[0].data;
        assert!((p[0] - (1.0 * (1.0 - 0.05) - 0.1)).abs() < 1e-5, "{p:?}");
        assert!((p[1] - (-2.0 * (1.0 - 0.05) - 0.1)).abs() < 1e-5, "{p:?}");
        let q = &params[1].data;
        assert!(
            (q[0] - (0.5 - 0.2)).abs() < 1e-5,
            "no decay on q, twice the rate: {q:?}"
        );
        // The moments are the clipped gradient's: m = (1 - b1) g, v = (1 - b2) g².
        assert!((opt.m[1][0] - 0.1 * 1.2).abs() < 1e-6 && (opt.v[1][0] - 0.05 * 1.44).abs() < 1e-6);
    }
}
