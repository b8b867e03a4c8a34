//! Decoding with burn's model on any burn device (`run.backend = "burn"`): the same KV-cached
//! passes as the CPU engine ([`crate::cpu::Engine`]), written in burn tensor operations.
//!
//! Each pass runs only the new tokens of every sequence; their queries attend to the keys and
//! values cached by earlier passes and to the new ones (causally). The sequences of a pass are
//! one padded batch: sequence `s`'s cached positions fill the first `past[s]` of `P` key slots,
//! its new tokens the slots from `P` on, and a mask hides the padding. The cache is kept in the
//! CPU engine's host layout ([`KvCache`]: per layer `[len, kv_dim]`, keys after the rotary
//! positions), so prefix reuse works the same on both backends and a cache filled by one can be
//! continued by the other (tested); each pass moves the cached keys and values to the device and
//! the new ones back, a copy as large as the cache, which on a GPU costs bandwidth that a
//! device-resident cache would not.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::ModelConfig;
use crate::cpu::{KvCache, MAX_PASS_TOKENS, Want};
use crate::model::{Transformer, repeat_kv_heads};
use crate::weights::HostWeights;

/// The additive mask of a hidden key slot (finite: a row that hides every slot stays a number).
const HIDDEN: f32 = -1e30;

pub struct BurnDecoder {
    model: Transformer,
}

impl std::fmt::Debug for BurnDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BurnDecoder({:?})", self.model.device())
    }
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("a float tensor converts to f32")
}

impl BurnDecoder {
    pub fn new(weights: &HostWeights, device: &Device) -> BurnDecoder {
        BurnDecoder {
            model: Transformer::from_host(weights, device),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    /// Runs `tokens[i]` through sequence `i` (appending to its cache) and returns the logits
    /// each sequence wants, as [`crate::cpu::Engine::forward`] does.
    pub fn forward(&self, caches: &mut [KvCache], tokens: &[&[u32]], want: &[Want]) -> Vec<Vec<f32>> {
        assert!(
            tokens.len() == caches.len() && want.len() == caches.len(),
            "one token list and want per cache"
        );
        // Passes of at most MAX_PASS_TOKENS padded positions (cached and new, or one sequence):
        // the batch's activations stay bounded, its attention scores `[b, heads, new, all]` at
        // most `heads * max_seq_len` times that.
        let mut out = Vec::with_capacity(caches.len());
        let mut start = 0;
        while start < caches.len() {
            let mut end = start + 1;
            let width = |end: usize| {
                let past = caches[start..end].iter().map(|c| c.len).max().unwrap_or(0);
                let new = tokens[start..end].iter().map(|t| t.len()).max().unwrap_or(0);
                (end - start) * (past + new)
            };
            while end < caches.len() && width(end + 1) <= MAX_PASS_TOKENS {
                end += 1;
            }
            out.extend(self.pass(&mut caches[start..end], &tokens[start..end], &want[start..end]));
            start = end;
        }
        out
    }

    fn pass(&self, caches: &mut [KvCache], tokens: &[&[u32]], want: &[Want]) -> Vec<Vec<f32>> {
        let m = &self.model;
        let c = &m.config;
        let device = m.device();
        let (d, h, kvh, dh, kv, vocab) = (
            c.d_model,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim(),
            c.kv_dim(),
            c.vocab_size,
        );
        // This pass reads each cache as one block: shared positions are copied in.
        for cache in caches.iter_mut() {
            cache.flatten();
        }
        let b = caches.len();
        let past: Vec<usize> = caches.iter().map(|c| c.len).collect();
        let p = past.iter().copied().max().unwrap_or(0);
        let n = tokens.iter().map(|t| t.len()).max().unwrap_or(0);
        if n == 0 {
            return vec![Vec::new(); b];
        }
        // Ids and positions `[b, n]`, right-padded (padding rows are computed and dropped; their
        // positions are clamped to the context).
        let mut ids = vec![0i32; b * n];
        let mut positions = vec![0i32; b * n];
        for (s, t) in tokens.iter().enumerate() {
            assert!(
                past[s] + t.len() <= c.max_seq_len,
                "a sequence longer than the model's context"
            );
            for i in 0..n {
                if let Some(&tok) = t.get(i) {
                    ids[s * n + i] = tok.min(vocab as u32 - 1) as i32;
                }
                positions[s * n + i] = (past[s] + i).min(c.max_seq_len - 1) as i32;
            }
        }
        // Query i of sequence s sees its cached slots and the new slots up to its own.
        let mut mask = vec![HIDDEN; b * n * (p + n)];
        for s in 0..b {
            for i in 0..n {
                let row = &mut mask[(s * n + i) * (p + n)..(s * n + i + 1) * (p + n)];
                row[..past[s]].fill(0.0);
                row[p..=p + i].fill(0.0);
            }
        }
        let mask: Tensor<4> = Tensor::from_data(TensorData::new(mask, [b, 1, n, p + n]), &device);
        let positions = Tensor::<1, Int>::from_data(TensorData::new(positions, [b * n]), &device);
        let table = |t: &Tensor<2>| -> Tensor<4> { t.clone().select(0, positions.clone()).reshape([b, 1, n, dh]) };
        let (cos, sin) = (table(&m.cos), table(&m.sin));
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, n]), &device);
        let mut x: Tensor<2> = burn::tensor::module::embedding(m.p(m.layout.embed), ids).reshape([b * n, d]);
        let heads = |t: Tensor<2>, nh: usize| -> Tensor<4> { t.reshape([b, n, nh, dh]).swap_dims(1, 2) };
        let scale = 1.0 / (dh as f32).sqrt();
        for (li, l) in m.layout.layers.iter().enumerate() {
            let a = m.rms_norm(x.clone(), l.input_norm);
            let q = Transformer::rope(heads(m.linear(a.clone(), l.q, l.q_bias), h), cos.clone(), sin.clone());
            let k = Transformer::rope(heads(m.linear(a.clone(), l.k, l.k_bias), kvh), cos.clone(), sin.clone());
            let v = heads(m.linear(a, l.v, l.v_bias), kvh);
            let (mut k_all, mut v_all) = (k.clone(), v.clone());
            if p > 0 {
                // The cached keys and values, `[b, p, kv]` zero-padded, as `[b, kvh, p, dh]`.
                let cached = |of: &dyn Fn(&KvCache) -> &Vec<f32>| -> Tensor<4> {
                    let mut data = vec![0.0f32; b * p * kv];
                    for (s, cache) in caches.iter().enumerate() {
                        let rows = &of(cache)[..past[s] * kv];
                        data[s * p * kv..s * p * kv + rows.len()].copy_from_slice(rows);
                    }
                    Tensor::<4>::from_data(TensorData::new(data, [b, p, kvh, dh]), &device).swap_dims(1, 2)
                };
                k_all = Tensor::cat(vec![cached(&|c| &c.keys[li]), k_all], 2);
                v_all = Tensor::cat(vec![cached(&|c| &c.values[li]), v_all], 2);
            }
            // Append the new keys and values (`[b, n, kv]` on the host) to the caches.
            let new_rows = |t: Tensor<4>| host(t.swap_dims(1, 2).reshape([b * n, kv]));
            let (new_keys, new_values) = (new_rows(k), new_rows(v));
            for (s, t) in tokens.iter().enumerate() {
                let rows = s * n * kv..(s * n + t.len()) * kv;
                caches[s].keys[li].extend_from_slice(&new_keys[rows.clone()]);
                caches[s].values[li].extend_from_slice(&new_values[rows]);
            }
            let (k_all, v_all) = (repeat_kv_heads(k_all, h), repeat_kv_heads(v_all, h));
            let scores = q.matmul(k_all.swap_dims(2, 3)).mul_scalar(scale) + mask.clone();
            let attended: Tensor<2> = softmax(scores, 3).matmul(v_all).swap_dims(1, 2).reshape([b * n, d]);
            x = x + m.linear(attended, l.o, l.o_bias);
            let normed = m.rms_norm(x.clone(), l.post_norm);
            let gate = silu(m.linear(normed.clone(), l.gate, None));
            let up = m.linear(normed, l.up, None);
            x = x + m.linear(gate * up, l.down, None);
        }
        // The logits of the wanted rows only.
        let mut wanted = Vec::new();
        let mut counts = Vec::with_capacity(b);
        for (s, t) in tokens.iter().enumerate() {
            let rows = match want[s] {
                Want::Last if !t.is_empty() => t.len() - 1..t.len(),
                Want::All => 0..t.len(),
                _ => 0..0,
            };
            counts.push(rows.len());
            wanted.extend(rows.map(|i| (s * n + i) as i32));
            caches[s].len += t.len();
        }
        let mut logits = Vec::new();
        let rows_wanted = wanted.len();
        if rows_wanted > 0 {
            let rows = Tensor::<1, Int>::from_data(TensorData::new(wanted, [rows_wanted]), &device);
            logits = host(m.logits(m.rms_norm(x.select(0, rows), m.layout.final_norm)));
        }
        let mut out = Vec::with_capacity(b);
        let mut at = 0;
        for count in counts {
            out.push(logits[at * vocab..(at + count) * vocab].to_vec());
            at += count;
        }
        out
    }
}
