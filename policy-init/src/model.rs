//! The transformer in burn tensor operations, for every burn device (flex or ndarray on the
//! CPU, cuda on a GPU): the reference ponder's CPU transformer (`cpu/`) is tested against
//! (logits and gradients), and the `burn` training backend, which runs an objective's
//! [`SequenceLoss`] on this model's outputs and its autodiff for the gradients.
//!
//! Parameters are kept under their Hugging Face names and layouts (`[out, in]` matrices), as
//! rank-2 tensors (vectors as `[1, n]`), so import and export are a rename-free copy.

use burn::tensor::activation::silu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::backend::PassModel;
use crate::config::ModelConfig;
use crate::cpu::layers::rope_tables;
use crate::cpu::{Gradients, ScalarHead, SeqOutputs, SequenceLoss};
use crate::weights::{HostTensor, HostWeights, Layout};

/// The model's parameters on a device.
#[derive(Clone, Debug)]
pub struct Transformer {
    pub config: ModelConfig,
    pub layout: Layout,
    /// In layout order; vectors are `[1, n]`.
    pub params: Vec<Tensor<2>>,
    /// Rotary tables `[max_seq_len, head_dim]` (each frequency twice, rotate-half layout).
    pub(crate) cos: Tensor<2>,
    pub(crate) sin: Tensor<2>,
}

fn to_tensor(t: &HostTensor, device: &Device) -> Tensor<2> {
    let shape = match t.shape[..] {
        [n] => [1, n],
        [r, c] => [r, c],
        _ => [1, t.data.len()],
    };
    Tensor::from_data(TensorData::new(t.data.clone(), shape), device)
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

    pub(crate) fn p(&self, slot: usize) -> Tensor<2> {
        self.params[slot].clone()
    }

    /// `x [n, in] @ w[out, in]ᵀ (+ b)`.
    pub(crate) fn linear(&self, x: Tensor<2>, weight: usize, bias: Option<usize>) -> Tensor<2> {
        let y = x.matmul(self.p(weight).transpose());
        match bias {
            Some(b) => y + self.p(b),
            None => y,
        }
    }

    pub(crate) fn rms_norm(&self, x: Tensor<2>, gamma: usize) -> Tensor<2> {
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
    pub(crate) fn rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
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
                k = repeat_kv_heads(k, h);
                v = repeat_kv_heads(v, h);
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
}

/// `[b, kv_heads, t, dh]` with each key-value head repeated for the query heads that share it:
/// `[b, heads, t, dh]`.
pub(crate) fn repeat_kv_heads(t: Tensor<4>, heads: usize) -> Tensor<4> {
    let [b, kvh, len, dh] = t.dims();
    if kvh == heads {
        return t;
    }
    t.unsqueeze_dim::<5>(2)
        .expand([b, kvh, heads / kvh, len, dh])
        .reshape([b, heads, len, dh])
}

/// One training pass on burn: the model's outputs for a right-padded batch through autodiff,
/// the loss and its output gradients from `loss` on the host (as the CPU path computes them),
/// then the gradients of the parameters by backpropagating the surrogate
/// `Σ logits·dlogits + Σ values·dvalues`, whose gradient is the loss's.
pub fn autodiff_loss_and_gradients(
    model: PassModel<'_>,
    sequences: &[&[u32]],
    loss: &dyn SequenceLoss,
    device: &Device,
) -> (f64, Gradients) {
    let weights = HostWeights {
        config: model.config.clone(),
        tensors: model.tensors.to_vec(),
    };
    let transformer = Transformer::from_host(&weights, device).trainable();
    let device = transformer.device();
    let (batch, len) = (
        sequences.len(),
        sequences.iter().map(|s| s.len()).max().unwrap_or(1).max(1),
    );
    let mut inputs = vec![0i32; batch * len];
    for (b, s) in sequences.iter().enumerate() {
        for (t, &tok) in s.iter().enumerate() {
            inputs[b * len + t] = tok as i32;
        }
    }
    let hidden = transformer.forward_hidden(&inputs, batch, len);
    let leaf = |data: Vec<f32>, dims: [usize; 2]| {
        Tensor::<2>::from_data(TensorData::new(data, dims), &device)
            .autodiff()
            .require_grad()
    };
    let head = model
        .head
        .map(|h| (leaf(h.weight.clone(), [1, h.weight.len()]), leaf(vec![h.bias], [1, 1])));
    let logits = model.lm.then(|| transformer.logits(hidden.clone()));
    let values = head
        .as_ref()
        .map(|(w, b)| hidden.clone().matmul(w.clone().transpose()) + b.clone());
    let host = |t: &Option<Tensor<2>>| -> Vec<f32> {
        t.as_ref()
            .map(|t| {
                t.clone()
                    .inner()
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    };
    let (logits_host, values_host) = (host(&logits), host(&values));
    let vocab = model.config.vocab_size;
    let mut dlogits = vec![0.0f32; logits_host.len()];
    let mut dvalues = vec![0.0f32; values_host.len()];
    let mut total = 0.0;
    // Sequence b's rows are `b * len .. b * len + its length`; padding rows get no gradient.
    for (b, s) in sequences.iter().enumerate() {
        let rows = b * len..b * len + s.len();
        let wide = rows.start * vocab..rows.end * vocab;
        total += loss.loss(
            b,
            SeqOutputs {
                logits: model.lm.then(|| &logits_host[wide.clone()]),
                values: head.as_ref().map(|_| &values_host[rows.clone()]),
                dlogits: if model.lm { Some(&mut dlogits[wide]) } else { None },
                dvalues: if head.is_some() { Some(&mut dvalues[rows]) } else { None },
            },
        );
    }
    let weigh = |t: Tensor<2>, g: Vec<f32>| {
        let dims = t.dims();
        (t * Tensor::<2>::from_data(TensorData::new(g, dims), &device)).sum()
    };
    let mut surrogate = Tensor::<1>::zeros([1], &device);
    if let Some(logits) = logits {
        surrogate = surrogate + weigh(logits, dlogits);
    }
    if let Some(values) = values {
        surrogate = surrogate + weigh(values, dvalues);
    }
    let grads = surrogate.backward();
    let read = |t: &Tensor<2>| -> Vec<f32> {
        t.grad(&grads)
            .map(|g| g.into_data().try_into_vec_as::<f32>().unwrap_or_default())
            .unwrap_or_else(|| vec![0.0; t.dims().iter().product()])
    };
    let tensors = transformer.params.iter().map(read).collect();
    let head = head.map(|(w, b)| ScalarHead {
        weight: read(&w),
        bias: read(&b).first().copied().unwrap_or(0.0),
    });
    (total, Gradients { tensors, head })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_round_trip_is_exact() {
        let c = ModelConfig::preset("tiny", 100).expect("preset");
        let w = HostWeights::init(&c, 5).expect("init");
        let m = Transformer::from_host(&w, &Device::flex());
        assert_eq!(m.to_host(), w);
    }
}
