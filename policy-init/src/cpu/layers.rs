//! What decoding and training share: the weights laid out for the CPU (per layer, the q, k and
//! v projections stacked into one `[d + 2 kv, d]` matrix and the gate and up projections into
//! one `[2 f, d]`, so each is one matrix product), the rotary tables at half width, and the
//! row kernels of a Llama block (RMSNorm forward and backward, rotary positions, biases,
//! SwiGLU), inlined into the callers' `pulp`-dispatched kernels so they compile for the CPU's
//! vector instructions there. The forward pass that strings them together is
//! [`super::forward`].

use crate::config::ModelConfig;
use crate::cpu::linalg::{fast_exp, lane_dot, lane_dot3};
use crate::weights::{HostTensor, Layout};

/// One layer's stacked projections.
#[derive(Clone, Debug)]
pub struct StackedLayer {
    /// q, k and v projections stacked: `[d + 2 kv, d]`.
    pub qkv: Vec<f32>,
    /// Their biases stacked (zeros for k or v without one), when the model has q biases.
    pub qkv_bias: Option<Vec<f32>>,
    /// gate and up projections stacked: `[2 f, d]`.
    pub gate_up: Vec<f32>,
}

/// The stacked projections of every layer and the rotary tables, built once from weights in
/// [`Layout`] order.
#[derive(Clone, Debug)]
pub struct Stacked {
    pub layers: Vec<StackedLayer>,
    /// `[max_seq_len, head_dim / 2]`.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Stacked {
    pub fn new(config: &ModelConfig, layout: &Layout, tensors: &[HostTensor]) -> Stacked {
        let t = |slot: usize| -> &[f32] { tensors[slot].data.as_slice() };
        let zeros = vec![0.0f32; config.kv_dim()];
        let layers = layout
            .layers
            .iter()
            .map(|l| StackedLayer {
                qkv: [t(l.q), t(l.k), t(l.v)].concat(),
                qkv_bias: l.q_bias.map(|q| {
                    let k = l.k_bias.map_or(zeros.as_slice(), t);
                    let v = l.v_bias.map_or(zeros.as_slice(), t);
                    [t(q), k, v].concat()
                }),
                gate_up: [t(l.gate), t(l.up)].concat(),
            })
            .collect();
        let (cos, sin) = half_rope_tables(config);
        Stacked { layers, cos, sin }
    }
}

/// Rotary tables for positions `0..len`: `[len, head_dim]`, rotate-half layout (each
/// frequency twice), as burn's model reads them.
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

/// The rotary tables of every position at half width, `[max_seq_len, head_dim / 2]`.
fn half_rope_tables(config: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    let (cos, sin) = rope_tables(config, config.max_seq_len);
    let (dh, half) = (config.head_dim(), config.head_dim() / 2);
    let halve = |full: Vec<f32>| -> Vec<f32> { full.chunks_exact(dh).flat_map(|r| r[..half].to_vec()).collect() };
    (halve(cos), halve(sin))
}

/// `out = x · r · gamma` per row of width `d`, with `r = 1 / sqrt(mean(x²) + eps)` kept in
/// `inverse` (for the backward pass) when given.
#[inline(always)]
pub fn rms_norm(x: &[f32], d: usize, gamma: &[f32], eps: f32, out: &mut [f32], mut inverse: Option<&mut [f32]>) {
    for (i, (row, o)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
        let r = 1.0 / (lane_dot(row, row) / d as f32 + eps).sqrt();
        if let Some(inv) = inverse.as_deref_mut() {
            inv[i] = r;
        }
        for ((o, &v), &g) in o.iter_mut().zip(row).zip(gamma) {
            *o = v * r * g;
        }
    }
}

/// Adds to `dx` the gradient through `y = x · r · gamma`; adds `dgamma`.
#[inline(always)]
pub fn rms_norm_backward(
    dy: &[f32],
    x: &[f32],
    r: &[f32],
    gamma: &[f32],
    d: usize,
    dx: &mut [f32],
    dgamma: &mut [f32],
) {
    for (((dy, x), &r), dx) in dy
        .chunks_exact(d)
        .zip(x.chunks_exact(d))
        .zip(r)
        .zip(dx.chunks_exact_mut(d))
    {
        let t = lane_dot3(dy, gamma, x);
        for j in 0..d {
            dgamma[j] += dy[j] * x[j] * r;
        }
        let c = r * r * r * t / d as f32;
        for j in 0..d {
            dx[j] += r * dy[j] * gamma[j] - x[j] * c;
        }
    }
}

/// Rotates every head of width `dh` in `heads` (the q and k part of a stacked row) to position
/// `pos`, in place; `inverse` rotates back (the gradient of the rotation).
#[inline(always)]
pub fn rotate(heads: &mut [f32], dh: usize, stacked: &Stacked, pos: usize, inverse: bool) {
    let half = dh / 2;
    let (cos, sin) = (
        &stacked.cos[pos * half..(pos + 1) * half],
        &stacked.sin[pos * half..(pos + 1) * half],
    );
    let sign = if inverse { -1.0 } else { 1.0 };
    for head in heads.chunks_exact_mut(dh) {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            let s = sign * sin[i];
            head[i] = a * cos[i] - b * s;
            head[i + half] = b * cos[i] + a * s;
        }
    }
}

/// Adds `bias` to every row.
#[inline(always)]
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `act = silu(gate) · up` per row of a stacked `[gate | up]` matrix of width `2 f`.
#[inline(always)]
pub fn swiglu(gate_up: &[f32], f: usize, act: &mut [f32]) {
    for (row, a) in gate_up.chunks_exact(2 * f).zip(act.chunks_exact_mut(f)) {
        let (g, u) = row.split_at(f);
        for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
            *a = g / (1.0 + fast_exp(-g)) * u;
        }
    }
}

/// The gradient of [`swiglu`]: `dgate_up` from `dact` and the stacked inputs.
#[inline(always)]
pub fn swiglu_backward(gate_up: &[f32], dact: &[f32], f: usize, dgate_up: &mut [f32]) {
    for ((row, da), dg) in gate_up
        .chunks_exact(2 * f)
        .zip(dact.chunks_exact(f))
        .zip(dgate_up.chunks_exact_mut(2 * f))
    {
        let (g, u) = row.split_at(f);
        let (dgate, dup) = dg.split_at_mut(f);
        for j in 0..f {
            let sig = 1.0 / (1.0 + fast_exp(-g[j]));
            dup[j] = da[j] * g[j] * sig;
            dgate[j] = da[j] * u[j] * sig * (1.0 + g[j] * (1.0 - sig));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_back_undoes_the_rotation_and_keeps_the_norm() {
        let config = ModelConfig::preset("tiny", 50).expect("preset");
        let weights = crate::HostWeights::init(&config, 1).expect("init");
        let stacked = Stacked::new(&config, &weights.layout(), &weights.tensors);
        let dh = config.head_dim();
        let heads: Vec<f32> = (0..2 * dh).map(|i| (i as f32 * 0.37).sin()).collect();
        let turned_by = |x: &[f32], pos: usize, inverse: bool| {
            let mut out = x.to_vec();
            rotate(&mut out, dh, &stacked, pos, inverse);
            out
        };
        let turned = turned_by(&heads, 17, false);
        assert!(
            turned.iter().zip(&heads).any(|(a, b)| (a - b).abs() > 1e-3),
            "position 17 rotates"
        );
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
        assert!((norm(&turned) - norm(&heads)).abs() < 1e-4);
        let back = turned_by(&turned, 17, true);
        assert!(back.iter().zip(&heads).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(turned_by(&heads, 0, false), heads, "position 0 is the identity");
    }

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let f = 3;
        let gate_up = vec![0.5f32, -1.0, 2.0, 1.5, 0.3, -0.7];
        let dact = vec![1.0f32, -0.5, 0.25];
        let mut grad = vec![0.0f32; 2 * f];
        swiglu_backward(&gate_up, &dact, f, &mut grad);
        let value = |x: &[f32]| {
            let mut act = vec![0.0f32; f];
            swiglu(x, f, &mut act);
            act.iter().zip(&dact).map(|(a, d)| f64::from(a * d)).sum::<f64>()
        };
        for j in 0..2 * f {
            let (mut up, mut down) = (gate_up.clone(), gate_up.clone());
            up[j] += 1e-2;
            down[j] -= 1e-2;
            let numeric = (value(&up) - value(&down)) / 2e-2;
            assert!(
                (numeric - f64::from(grad[j])).abs() < 1e-3,
                "{j}: {numeric} vs {}",
                grad[j]
            );
        }
    }
}
