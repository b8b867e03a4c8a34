//! AdamW with decoupled weight decay, global gradient-norm clipping (as PyTorch's
//! `clip_grad_norm_`: burn's `GradientClippingConfig::Norm` clips each tensor on its own), and
//! a warmup + cosine learning-rate schedule. The state is plain tensors, saved with the
//! checkpoint, so a resumed run continues bit for bit.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

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

/// AdamW's moments for a list of parameters (on the non-autodiff device).
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: OptimConfig,
    pub m: Vec<Tensor<2>>,
    pub v: Vec<Tensor<2>>,
    /// Updates done so far (for bias correction).
    pub t: u64,
}

impl AdamW {
    pub fn new(config: OptimConfig, params: &[Tensor<2>]) -> AdamW {
        let zeros = |p: &Tensor<2>| Tensor::<2>::zeros(p.dims(), &p.device().inner());
        AdamW {
            config,
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
            t: 0,
        }
    }

    /// The global norm of a set of gradients.
    pub fn global_norm(grads: &[Tensor<2>]) -> f64 {
        let total: f64 = grads
            .iter()
            .map(|g| {
                let s: f32 = g.clone().square().sum().into_scalar();
                f64::from(s)
            })
            .sum();
        total.sqrt()
    }

    /// Applies one update to `params` (non-autodiff tensors) given their gradients.
    /// `decay[i]` says whether parameter i gets weight decay; `lr_scale[i]` multiplies the
    /// learning rate for parameter i (1 where the slice is shorter).
    pub fn step(
        &mut self,
        params: &mut [Tensor<2>],
        grads: &[Tensor<2>],
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
        let bias1 = 1.0 - b1.powi(self.t as i32);
        let bias2 = 1.0 - b2.powi(self.t as i32);
        for i in 0..params.len() {
            let g = grads[i].clone().mul_scalar(clip as f32);
            let m = self.m[i].clone().mul_scalar(b1 as f32) + g.clone().mul_scalar((1.0 - b1) as f32);
            let v = self.v[i].clone().mul_scalar(b2 as f32) + g.square().mul_scalar((1.0 - b2) as f32);
            let denom = v.clone().div_scalar(bias2 as f32).sqrt().add_scalar(c.eps as f32);
            let update = m.clone().div_scalar(bias1 as f32) / denom;
            let lr = lr * lr_scale.get(i).copied().unwrap_or(1.0);
            let mut p = params[i].clone();
            if decay[i] && c.weight_decay > 0.0 {
                p = p.mul_scalar((1.0 - lr * c.weight_decay) as f32);
            }
            params[i] = p - update.mul_scalar(lr as f32);
            self.m[i] = m;
            self.v[i] = v;
        }
        UpdateStats { grad_norm: norm, lr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

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
        let dev = Device::flex();
        let p = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0], [1, 2]), &dev);
        let q = Tensor::<2>::from_data(TensorData::new(vec![0.5f32], [1, 1]), &dev);
        // Gradients (3, 4) and (12): global norm 13, clipped to 1.3.
        let g1 = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &dev);
        let g2 = Tensor::<2>::from_data(TensorData::new(vec![12.0f32], [1, 1]), &dev);
        let config = OptimConfig {
            grad_clip: 1.3,
            weight_decay: 0.5,
            eps: 0.0,
            ..OptimConfig::default()
        };
        let mut params = vec![p, q];
        let mut opt = AdamW::new(config, &params);
        // q learns at twice the rate.
        let stats = opt.step(&mut params, &[g1, g2], &[true, false], &[1.0, 2.0], 0.1);
        assert!((stats.grad_norm - 13.0).abs() < 1e-5);
        // After one step Adam's normalised update is sign(g): p - lr*wd*p - lr*sign(g).
        let p: Vec<f32> = params[0].clone().into_data().try_into_vec_as().expect("data");
        assert!((p[0] - (1.0 * (1.0 - 0.05) - 0.1)).abs() < 1e-5, "{p:?}");
        assert!((p[1] - (-2.0 * (1.0 - 0.05) - 0.1)).abs() < 1e-5, "{p:?}");
        let q: Vec<f32> = params[1].clone().into_data().try_into_vec_as().expect("data");
        assert!(
            (q[0] - (0.5 - 0.2)).abs() < 1e-5,
            "no decay on q, twice the rate: {q:?}"
        );
    }
}
