//! Matrix products for the CPU engine: safe wrappers over the `gemm` crate (the kernels
//! burn's flex backend uses too) for many rows, and a dot-product kernel for few rows, where
//! gemm's packing of the weight matrix on every call costs more than the product itself.
//! Kernels run under `pulp`'s runtime dispatch, so the compiler vectorises them for AVX2 or
//! AVX-512 where the CPU has them.
#![allow(unsafe_code)]

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Below this many rows the dot-product kernel beats gemm (measured on the tiny preset).
pub const SMALL_ROWS: usize = 48;

/// `e^x` in f32 without a library call, so loops over it vectorise: range reduction to
/// `x = k ln 2 + r`, a degree-6 polynomial for `e^r`, then `2^k` by exponent bits. Relative
/// error below 2e-7 on [-87, 88]; inputs outside saturate (0 below, `e^88` above).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let k = (x * std::f32::consts::LOG2_E).round();
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// Independent partial results for reductions: a strict left-to-right float sum or max cannot
/// be vectorised, sixteen running lanes can (and inlined into a `pulp`-dispatched kernel they
/// use its AVX-512 or AVX2 registers).
const LANES: usize = 16;

/// `Σ x`, in [`LANES`] partial sums.
#[inline(always)]
pub fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            acc[k] += c[k];
        }
    }
    chunks.remainder().iter().fold(acc.iter().sum::<f32>(), |s, v| s + v)
}

/// `Σ a·b` over `a`'s length, in [`LANES`] partial sums.
#[inline(always)]
pub fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    let mut acc = [0.0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ a·b·c` over `a`'s length, in [`LANES`] partial sums.
#[inline(always)]
pub fn lane_dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let (b, c) = (&b[..a.len()], &c[..a.len()]);
    let mut acc = [0.0f32; LANES];
    let (mut ca, mut cb, mut cc) = (a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    for ((x, y), z) in (&mut ca).zip(&mut cb).zip(&mut cc) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k] * z[k];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
        .map(|((x, y), z)| x * y * z)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ e^(x - shift)` with [`fast_exp`], in [`LANES`] partial sums.
#[inline(always)]
pub fn lane_sum_exp(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            acc[k] += fast_exp(c[k] - shift);
        }
    }
    chunks
        .remainder()
        .iter()
        .fold(acc.iter().sum::<f32>(), |s, &v| s + fast_exp(v - shift))
}

/// `max x` (negative infinity for an empty slice), in [`LANES`] partial maxima.
#[inline(always)]
pub fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            acc[k] = acc[k].max(c[k]);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Few rows against weights larger than this (in floats) are split across threads. Measured
/// at batch 1: `tiny`'s largest weight (2^17 floats) decodes slower split (the threads' hand-off
/// costs more than half its product), `small`'s (2^17.6 to 2^18.6) faster.
pub const SPLIT_WEIGHTS: usize = 1 << 17;

/// From this many rows on, gemm gets the threads.
pub const GEMM_THREAD_ROWS: usize = 128;

/// `out[n, m] (+)= x[n, k] · w[m, k]ᵀ`, choosing the kernel by the number of rows: below
/// [`SMALL_ROWS`] (decoding) the dot-product kernel, with the weight rows split across
/// `threads` when the weights are large; otherwise gemm, threaded from [`GEMM_THREAD_ROWS`].
/// Each output is computed the same way whatever the threads.
pub fn linear(x: &[f32], n: usize, k: usize, w: &[f32], m: usize, out: &mut [f32], accumulate: bool, threads: usize) {
    if n >= SMALL_ROWS {
        let threads = if n >= GEMM_THREAD_ROWS { threads } else { 1 };
        matmul_transposed(x, n, k, w, m, out, accumulate, threads);
    } else if threads > 1 && m * k > SPLIT_WEIGHTS {
        linear_few_rows_split(x, n, k, w, m, out, accumulate, threads);
    } else {
        linear_few_rows(x, n, k, w, m, out, accumulate);
    }
}

/// [`linear_few_rows`] with the weight rows (the output columns) split into one part per
/// thread. Decoding one sequence is a few rows against every weight, and reading the weights
/// is the work, so two cores read them twice as fast.
fn linear_few_rows_split(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    out: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    let per = m.div_ceil(threads);
    let parts: Vec<Vec<f32>> = w[..m * k]
        .par_chunks(per * k)
        .map(|part_w| {
            let cols = part_w.len() / k;
            let mut part = vec![0.0f32; n * cols];
            linear_few_rows(x, n, k, part_w, cols, &mut part, false);
            part
        })
        .collect();
    for (index, part) in parts.iter().enumerate() {
        let first = index * per;
        let cols = per.min(m - first);
        for (row, values) in part.chunks_exact(cols).enumerate() {
            let dst = &mut out[row * m + first..row * m + first + cols];
            for (o, &v) in dst.iter_mut().zip(values) {
                *o = if accumulate { *o + v } else { v };
            }
        }
    }
}

/// Dot products of each row of `x` with each row of `w`, four rows of `x` at a time so each
/// weight row is read once per four.
pub fn linear_few_rows(x: &[f32], n: usize, k: usize, w: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
    assert!(
        x.len() >= n * k && w.len() >= m * k && out.len() >= n * m,
        "linear shapes"
    );
    pulp::Arch::new().dispatch(FewRows {
        x,
        n,
        k,
        w,
        m,
        out,
        accumulate,
    });
}

struct FewRows<'a> {
    x: &'a [f32],
    n: usize,
    k: usize,
    w: &'a [f32],
    m: usize,
    out: &'a mut [f32],
    accumulate: bool,
}

/// `a · b` with SIMD lanes.
#[inline(always)]
pub fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (av, at) = S::as_simd_f32s(a);
    let (bv, bt) = S::as_simd_f32s(&b[..a.len()]);
    let mut acc = simd.splat_f32s(0.0);
    for (x, y) in av.iter().zip(bv) {
        acc = simd.mul_add_e_f32s(*x, *y, acc);
    }
    let mut sum = simd.reduce_sum_f32s(acc);
    for (x, y) in at.iter().zip(bt) {
        sum += x * y;
    }
    sum
}

/// `out = Σ_t weights[t] · row(t)` (each product rounded, then added in order of t, from
/// zero: what `out += w · row` over t gives), with the sums held in SIMD registers across t.
#[inline(always)]
pub fn weighted_rows<'a, S: Simd>(simd: S, weights: &[f32], row: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    let n = out.len();
    let (head, tail) = S::as_mut_simd_f32s(out);
    let zero = simd.splat_f32s(0.0);
    // Two lane groups per pass over t: two independent sums in flight.
    let mut c = 0;
    while c < head.len() {
        let pair = c + 1 < head.len();
        let (mut a0, mut a1) = (zero, zero);
        for (t, &w) in weights.iter().enumerate() {
            let w = simd.splat_f32s(w);
            let (rv, _) = S::as_simd_f32s(&row(t)[..n]);
            a0 = simd.add_f32s(a0, simd.mul_f32s(w, rv[c]));
            if pair {
                a1 = simd.add_f32s(a1, simd.mul_f32s(w, rv[c + 1]));
            }
        }
        head[c] = a0;
        if pair {
            head[c + 1] = a1;
        }
        c += 2;
    }
    let done = n - tail.len();
    for (i, o) in tail.iter_mut().enumerate() {
        let mut sum = 0.0f32;
        for (t, &w) in weights.iter().enumerate() {
            sum += w * row(t)[done + i];
        }
        *o = sum;
    }
}

impl WithSimd for FewRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let FewRows {
            x,
            n,
            k,
            w,
            m,
            out,
            accumulate,
        } = self;
        let store = |o: &mut f32, v: f32| *o = if accumulate { *o + v } else { v };
        let zero = simd.splat_f32s(0.0);
        let mut i = 0;
        while i + 4 <= n {
            let (x0, t0) = S::as_simd_f32s(&x[i * k..(i + 1) * k]);
            let (x1, t1) = S::as_simd_f32s(&x[(i + 1) * k..(i + 2) * k]);
            let (x2, t2) = S::as_simd_f32s(&x[(i + 2) * k..(i + 3) * k]);
            let (x3, t3) = S::as_simd_f32s(&x[(i + 3) * k..(i + 4) * k]);
            for j in 0..m {
                let (wv, wt) = S::as_simd_f32s(&w[j * k..(j + 1) * k]);
                let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
                for c in 0..wv.len() {
                    let wc = wv[c];
                    a0 = simd.mul_add_e_f32s(x0[c], wc, a0);
                    a1 = simd.mul_add_e_f32s(x1[c], wc, a1);
                    a2 = simd.mul_add_e_f32s(x2[c], wc, a2);
                    a3 = simd.mul_add_e_f32s(x3[c], wc, a3);
                }
                let tail = |t: &[f32]| t.iter().zip(wt).map(|(a, b)| a * b).sum::<f32>();
                store(&mut out[i * m + j], simd.reduce_sum_f32s(a0) + tail(t0));
                store(&mut out[(i + 1) * m + j], simd.reduce_sum_f32s(a1) + tail(t1));
                store(&mut out[(i + 2) * m + j], simd.reduce_sum_f32s(a2) + tail(t2));
                store(&mut out[(i + 3) * m + j], simd.reduce_sum_f32s(a3) + tail(t3));
            }
            i += 4;
        }
        for i in i..n {
            let row = &x[i * k..(i + 1) * k];
            for j in 0..m {
                store(&mut out[i * m + j], dot(simd, row, &w[j * k..(j + 1) * k]));
            }
        }
    }
}

/// A matrix operand of gemm: its data and the strides, in elements, between its columns and
/// between its rows.
struct Operand<'a> {
    data: &'a [f32],
    column_stride: usize,
    row_stride: usize,
}

impl Operand<'_> {
    /// Whether every element of a `rows x columns` view lies inside the data.
    fn holds(&self, rows: usize, columns: usize) -> bool {
        rows == 0 || columns == 0 || (rows - 1) * self.row_stride + (columns - 1) * self.column_stride < self.data.len()
    }
}

/// `out[rows, columns] (+)= lhs[rows, inner] · rhs[inner, columns]` with `out` row-major,
/// through gemm (on `threads` threads). `accumulate` adds to `out` instead of overwriting it.
///
/// # Panics
/// If an operand or `out` is shorter than its shape (a bug in the caller, never user input).
fn gemm_into(
    rows: usize,
    columns: usize,
    inner: usize,
    out: &mut [f32],
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    accumulate: bool,
    threads: usize,
) {
    assert!(
        out.len() >= rows * columns && lhs.holds(rows, inner) && rhs.holds(inner, columns),
        "matmul shapes"
    );
    if rows == 0 || columns == 0 {
        return;
    }
    if inner == 0 {
        if !accumulate {
            out[..rows * columns].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above bounds every index gemm touches: dst is rows x columns with row
    // stride `columns`, and each operand's last element lies inside its slice.
    unsafe {
        gemm::gemm(
            rows,
            columns,
            inner,
            out.as_mut_ptr(),
            1,
            columns as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.column_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.column_stride as isize,
            rhs.row_stride as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A row-major `[_, width]` matrix as an operand.
fn row_major(data: &[f32], width: usize) -> Operand<'_> {
    Operand {
        data,
        column_stride: 1,
        row_stride: width,
    }
}

/// The transpose of a row-major `[_, width]` matrix as an operand.
fn transposed(data: &[f32], width: usize) -> Operand<'_> {
    Operand {
        data,
        column_stride: width,
        row_stride: 1,
    }
}

/// `out[n, m] (+)= x[n, k] · w[m, k]ᵀ` for row-major slices: a linear layer with weights in
/// the `[out, in]` layout. `accumulate` adds to `out` instead of overwriting it.
///
/// # Panics
/// If a slice is shorter than its shape (a bug in the caller, never user input).
pub fn matmul_transposed(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    out: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    gemm_into(n, m, k, out, row_major(x, k), transposed(w, k), accumulate, threads);
}

/// `out[n, m] (+)= x[n, k] · w[k, m]` for row-major slices.
pub fn matmul(x: &[f32], n: usize, k: usize, w: &[f32], m: usize, out: &mut [f32], accumulate: bool, threads: usize) {
    gemm_into(n, m, k, out, row_major(x, k), row_major(w, m), accumulate, threads);
}

/// `out[k, m] (+)= x[n, k]ᵀ · y[n, m]`: the weight gradient of a linear layer.
pub fn matmul_lhs_transposed(
    x: &[f32],
    n: usize,
    k: usize,
    y: &[f32],
    m: usize,
    out: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    gemm_into(k, m, n, out, transposed(x, k), row_major(y, m), accumulate, threads);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct WeightedRows<'a> {
        weights: &'a [f32],
        rows: &'a [f32],
        out: &'a mut [f32],
    }

    impl WithSimd for WeightedRows<'_> {
        type Output = ();
        fn with_simd<S: Simd>(self, simd: S) {
            let n = self.out.len();
            weighted_rows(simd, self.weights, |t| &self.rows[t * n..(t + 1) * n], self.out);
        }
    }

    #[test]
    fn weighted_rows_adds_in_order_of_t_as_the_plain_loop_does() {
        // Widths with an odd number of lane groups and with a scalar tail.
        for n in [8usize, 20, 32, 48, 70] {
            let t = 37;
            let weights: Vec<f32> = (0..t).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.173).collect();
            let rows: Vec<f32> = (0..t * n).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.311).collect();
            let mut plain = vec![0.0f32; n];
            for (i, &w) in weights.iter().enumerate() {
                for (o, &v) in plain.iter_mut().zip(&rows[i * n..(i + 1) * n]) {
                    *o += w * v;
                }
            }
            let mut out = vec![f32::NAN; n];
            pulp::Arch::new().dispatch(WeightedRows {
                weights: &weights,
                rows: &rows,
                out: &mut out,
            });
            assert_eq!(out, plain, "width {n}: bit for bit");
        }
    }

    fn naive(x: &[f32], n: usize, k: usize, w: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0.0; n * m];
        for i in 0..n {
            for j in 0..m {
                out[i * m + j] = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
            }
        }
        out
    }

    #[test]
    fn lane_reductions_match_plain_loops_at_every_length() {
        for len in [0usize, 1, 5, 15, 16, 17, 33, 128, 131] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.25).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i * 3 % 5) as f32) * 0.5 - 1.0).collect();
            let sum: f32 = a.iter().sum();
            let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert!((lane_sum(&a) - sum).abs() < 1e-4, "sum at {len}");
            assert!((lane_dot(&a, &b) - dot).abs() < 1e-4, "dot at {len}");
            assert_eq!(lane_max(&a), max, "max at {len}");
            let dot3: f32 = a.iter().zip(&b).map(|(x, y)| x * y * y).sum();
            assert!((lane_dot3(&a, &b, &b) - dot3).abs() < 1e-4, "dot3 at {len}");
            let exps: f32 = a.iter().map(|x| (x - 1.0).exp()).sum();
            assert!(
                (lane_sum_exp(&a, 1.0) - exps).abs() < 1e-4 * exps.max(1.0),
                "exp sum at {len}"
            );
        }
        // `lane_dot` reads only as much of its second argument as the first has.
        assert_eq!(lane_dot(&[2.0], &[3.0, 100.0]), 6.0);
    }

    #[test]
    fn all_three_products_match_a_naive_loop() {
        let (n, k, m) = (5, 37, 3);
        let x: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let expected = naive(&x, n, k, &w, m);
        let mut out = vec![0.0; n * m];
        matmul_transposed(&x, n, k, &w, m, &mut out, false, 1);
        for (a, b) in out.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5);
        }
        // w as [k, m]
        let wt: Vec<f32> = (0..k * m).map(|i| w[(i % m) * k + i / m]).collect();
        let mut out2 = vec![1.0; n * m];
        matmul(&x, n, k, &wt, m, &mut out2, true, 2);
        for (a, b) in out2.iter().zip(&expected) {
            assert!((a - (b + 1.0)).abs() < 1e-4);
        }
        // xᵀ · y
        let y = expected.clone();
        let mut g = vec![0.0; k * m];
        matmul_lhs_transposed(&x, n, k, &y, m, &mut g, false, 1);
        for a in 0..k {
            for b in 0..m {
                let e: f32 = (0..n).map(|i| x[i * k + a] * y[i * m + b]).sum();
                assert!((g[a * m + b] - e).abs() < 1e-4);
            }
        }
        for x in [-87.0f32, -20.0, -1.5, -0.1, 0.0, 0.3, 1.0, 7.7, 42.0, 88.0] {
            let rel = (fast_exp(x) - x.exp()).abs() / x.exp();
            assert!(rel < 2e-7, "{x}: {rel}");
        }
        for rows in [1, 4, 5] {
            let mut few = vec![0.5; rows * m];
            linear_few_rows(&x, rows, k, &w, m, &mut few, true);
            for (a, b) in few.iter().zip(&expected) {
                assert!((a - (b + 0.5)).abs() < 1e-5);
            }
        }
        // Split across threads, each output is bit-for-bit the single-thread one.
        for rows in [1, 3] {
            let mut single = vec![0.25; rows * m];
            linear_few_rows(&x, rows, k, &w, m, &mut single, true);
            for threads in [2, 3] {
                let mut split = vec![0.25; rows * m];
                linear_few_rows_split(&x, rows, k, &w, m, &mut split, true, threads);
                assert_eq!(split, single, "{rows} rows, {threads} threads");
            }
        }
    }
}
