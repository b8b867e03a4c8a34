//! The transformer in burn tensor operations: one implementation for every device (flex on the
//! CPU, cuda on a GPU). Training runs here; its full-sequence forward is also the reference
//! the CPU decoding engine (`engine.rs`) is tested against.
//!
//! Parameters are kept under their Hugging Face names and layouts (`[out, in]` matrices), as
//! rank-2 tensors (vectors as `[1, n]`), so import and export are a rename-free copy.

use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::ModelConfig;
use crate::weights::{HostTensor, HostWeights, Layout};

/// The model's parameters on a device.
#[derive(Clone, Debug)]
pub struct Transformer {
    pub config: ModelConfig,
    pub layout: Layout,
    /// In layout order; vectors are `[1, n]`.
    pub params: Vec<Tensor<2>>,
    /// Rotary tables `[max_seq_len, head_dim]` (each frequency twice, rotate-half layout).
    cos: Tensor<2>,
    sin: Tensor<2>,
}

/// A batch of token sequences, right-padded, with the positions whose prediction is trained.
#[derive(Clone, Debug)]
pub struct TokenBatch {
    pub batch: usize,
    pub len: usize,
    /// `[batch * len]` input ids.
    pub inputs: Vec<i32>,
    /// `[batch * len]` next-token targets.
    pub targets: Vec<i32>,
    /// `[batch * len]` 1.0 where the target counts in the loss.
    pub mask: Vec<f32>,
}

impl TokenBatch {
    /// Builds a batch from `(tokens, first_trained_target)` pairs: targets at positions
    /// `>= first_trained_target - 1` (the predictions of tokens from that index on) count.
    pub fn new(sequences: &[(Vec<u32>, usize)], pad: u32) -> TokenBatch {
        let len = sequences
            .iter()
            .map(|(s, _)| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .max(1);
        let batch = sequences.len();
        let mut inputs = vec![pad as i32; batch * len];
        let mut targets = vec![pad as i32; batch * len];
        let mut mask = vec![0.0; batch * len];
        for (b, (tokens, first)) in sequences.iter().enumerate() {
            for t in 0..tokens.len().saturating_sub(1) {
                inputs[b * len + t] = tokens[t] as i32;
                targets[b * len + t] = tokens[t + 1] as i32;
                if t + 1 >= *first {
                    mask[b * len + t] = 1.0;
                }
            }
        }
        TokenBatch {
            batch,
            len,
            inputs,
            targets,
            mask,
        }
    }

    /// Trained target tokens.
    pub fn trained_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m > 0.0).count()
    }
}

fn to_tensor(t: &HostTensor, device: &Device) -> Tensor<2> {
    let shape = match t.shape[..] {
        [n] => [1, n],
        [r, c] => [r, c],
        _ => [1, t.data.len()],
    };
    Tensor::from_data(TensorData::new(t.data.clone(), shape), device)
}

/// Rotary tables for positions `0..len`: `[len, head_dim]`, rotate-half layout.
pub fn rope_tables(config: &ModelConfig, len: usize) -> (Vec<f32>, Vec<f32>) {
    let dh = config.head_dim();
    let half = dh / 2;
    let mut cos = vec![0.0f32; len * dh];
    let mut sin = vec![0.0f32; len * dh];
    for pos in 0..len {
        for i in 0..half {
            let freq = (config.rope_theta as f64).powf(-(2.0 * i as f64) / dh as f64);
            let angle = pos as f64 * freq;
            let (s, c) = angle.sin_cos();
            for j in [i, i + half] {
                cos[pos * dh + j] = c as f32;
                sin[pos * dh + j] = s as f32;
            }
        }
    }
    (cos, sin)
}

impl Transformer {
    pub fn from_host(weights: &HostWeights, device: &Device) -> Transformer {
        let config = weights.config.clone();
        let (cos, sin) = rope_tables(&config, config.max_seq_len);
        let dh = config.head_dim();
        let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [config.max_seq_len, dh]), device);
        Transformer {
            layout: Layout::new(&config),
            params: weights.tensors.iter().map(|t| to_tensor(t, device)).collect(),
            cos: table(cos),
            sin: table(sin),
            config,
        }
    }

    /// Copies the parameters back to the host.
    pub fn to_host(&self) -> HostWeights {
        let tensors = self
            .params
            .iter()
            .zip(&self.layout.shapes)
            .map(|(p, shape)| HostTensor {
                shape: shape.clone(),
                data: p
                    .clone()
                    .inner()
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .unwrap_or_default(),
            })
            .collect();
        HostWeights {
            config: self.config.clone(),
            tensors,
        }
    }

    pub fn device(&self) -> Device {
        self.cos.device()
    }

    /// A trainer over this model's parameters (Hugging Face names; decay on matrices).
    pub fn trainer(&self, config: crate::trainer::TrainerConfig) -> crate::trainer::Trainer {
        let decay = (0..self.params.len()).map(|i| self.layout.decays(i)).collect();
        crate::trainer::Trainer::new(
            config,
            self.layout.names.clone(),
            self.layout.shapes.clone(),
            decay,
            self.params.clone(),
        )
    }

    /// The same model with other parameter values (same layout).
    pub fn with_params(&self, params: Vec<Tensor<2>>) -> Transformer {
        let mut m = self.clone();
        m.params = params;
        m
    }

    /// The same parameters as trainable leaves on the autodiff version of the device.
    pub fn trainable(&self) -> Transformer {
        let mut t = self.clone();
        t.params = self
            .params
            .iter()
            .map(|p| p.clone().inner().autodiff().require_grad())
            .collect();
        t
    }

    fn p(&self, slot: usize) -> Tensor<2> {
        self.params[slot].clone()
    }

    /// `x [n, in] @ w[out, in]ᵀ (+ b)`.
    fn linear(&self, x: Tensor<2>, weight: usize, bias: Option<usize>) -> Tensor<2> {
        let y = x.matmul(self.p(weight).transpose());
        match bias {
            Some(b) => y + self.p(b),
            None => y,
        }
    }

    fn rms_norm(&self, x: Tensor<2>, gamma: usize) -> Tensor<2> {
        let scale = x
            .clone()
            .square()
            .mean_dim(1)
            .add_scalar(self.config.rms_eps)
            .sqrt()
            .recip();
        x * scale * self.p(gamma)
    }

    /// Rotary positions on `[b, h, t, dh]` with tables `[b or 1, 1, t, dh]`.
    fn rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
        let [b, h, t, dh] = x.dims();
        let half = dh / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = x.clone().slice([0..b, 0..h, 0..t, half..dh]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos + rotated * sin
    }

    /// Logits `[batch * len, vocab]` for every position of a right-padded batch of inputs
    /// (`[batch * len]` ids), causal attention, positions from 0.
    pub fn forward(&self, inputs: &[i32], batch: usize, len: usize) -> Tensor<2> {
        self.logits(self.forward_hidden(inputs, batch, len))
    }

    /// Next-token logits `[rows, vocab]` from final hidden states `[rows, d_model]`.
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        let head = self.layout.lm_head.unwrap_or(self.layout.embed);
        self.linear(hidden, head, None)
    }

    /// The final normalised hidden states `[batch * len, d_model]` (what a head reads).
    pub fn forward_hidden(&self, inputs: &[i32], batch: usize, len: usize) -> Tensor<2> {
        let device = self.device();
        let c = &self.config;
        let (d, h, kvh, dh) = (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim());
        let n = batch * len;
        let ids = Tensor::<2, Int>::from_data(TensorData::new(inputs.to_vec(), [batch, len]), &device);
        let mut x: Tensor<2> = burn::tensor::module::embedding(self.p(self.layout.embed), ids).reshape([n, d]);
        let cos: Tensor<4> = self.cos.clone().slice([0..len, 0..dh]).reshape([1, 1, len, dh]);
        let sin: Tensor<4> = self.sin.clone().slice([0..len, 0..dh]).reshape([1, 1, len, dh]);
        for l in &self.layout.layers {
            let a = self.rms_norm(x.clone(), l.input_norm);
            let q = self.linear(a.clone(), l.q, l.q_bias);
            let k = self.linear(a.clone(), l.k, l.k_bias);
            let v = self.linear(a, l.v, l.v_bias);
            let heads = |t: Tensor<2>, nh: usize| -> Tensor<4> { t.reshape([batch, len, nh, dh]).swap_dims(1, 2) };
            let q = Self::rope(heads(q, h), cos.clone(), sin.clone());
            let mut k = Self::rope(heads(k, kvh), cos.clone(), sin.clone());
            let mut v = heads(v, kvh);
            if kvh != h {
                // Autodiff's attention needs equal head counts: repeat each kv head.
                let rep = h / kvh;
                let expand = |t: Tensor<4>| -> Tensor<4> {
                    t.unsqueeze_dim::<5>(2)
                        .expand([batch, kvh, rep, len, dh])
                        .reshape([batch, h, len, dh])
                };
                k = expand(k);
                v = expand(v);
            }
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: true,
            };
            let att = attention(q, k, v, None, None, options);
            let att: Tensor<2> = att.swap_dims(1, 2).reshape([n, d]);
            x = x + self.linear(att, l.o, l.o_bias);
            let m = self.rms_norm(x.clone(), l.post_norm);
            let gate = silu(self.linear(m.clone(), l.gate, None));
            let up = self.linear(m, l.up, None);
            x = x + self.linear(gate * up, l.down, None);
        }
        self.rms_norm(x, self.layout.final_norm)
    }

    /// Mean cross-entropy over the batch's trained positions, and how many there were.
    pub fn loss(&self, batch: &TokenBatch) -> (Tensor<1>, usize) {
        let device = self.device();
        let n = batch.batch * batch.len;
        let logits = self.forward(&batch.inputs, batch.batch, batch.len);
        let logp = log_softmax(logits, 1);
        let targets = Tensor::<2, Int>::from_data(TensorData::new(batch.targets.clone(), [n, 1]), &device);
        let mask = Tensor::<2>::from_data(TensorData::new(batch.mask.clone(), [n, 1]), &device);
        let count = batch.trained_tokens().max(1);
        let picked = logp.gather(1, targets) * mask;
        (picked.sum().neg().div_scalar(count as f32), count)
    }

    /// Per-position log-probabilities of the targets `[batch * len]` (no gradient tracking
    /// unless the parameters are trainable).
    pub fn target_logprobs(&self, batch: &TokenBatch) -> Tensor<2> {
        let device = self.device();
        let n = batch.batch * batch.len;
        let logits = self.forward(&batch.inputs, batch.batch, batch.len);
        let targets = Tensor::<2, Int>::from_data(TensorData::new(batch.targets.clone(), [n, 1]), &device);
        log_softmax(logits, 1).gather(1, targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_masks_only_the_trace() {
        // tokens: bos p p t t ; trace starts at index 3
        let b = TokenBatch::new(&[(vec![1, 10, 11, 20, 21], 3), (vec![1, 10, 20], 2)], 0);
        assert_eq!(b.len, 4);
        assert_eq!(b.inputs, vec![1, 10, 11, 20, 1, 10, 0, 0]);
        assert_eq!(b.targets, vec![10, 11, 20, 21, 10, 20, 0, 0]);
        assert_eq!(b.mask, vec![0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn host_round_trip_is_exact() {
        let c = ModelConfig::preset("tiny", 100).expect("preset");
        let w = HostWeights::init(&c, 5).expect("init");
        let m = Transformer::from_host(&w, &Device::flex());
        assert_eq!(m.to_host(), w);
    }
}
