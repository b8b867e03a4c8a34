//! Safe wrappers over the `gemm` crate (the matrix kernels burn's flex backend uses too).
#![allow(unsafe_code)]

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
    assert!(
        x.len() >= n * k && w.len() >= m * k && out.len() >= n * m,
        "matmul shapes"
    );
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..n * m].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index gemm touches: dst is n x m with row stride
    // m, lhs is n x k with row stride k, rhs (wᵀ) is k x m read from w[m, k] with column
    // stride k and row stride 1.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `out[n, m] (+)= x[n, k] · w[k, m]` for row-major slices.
pub fn matmul(
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    m: usize,
    out: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    assert!(
        x.len() >= n * k && w.len() >= k * m && out.len() >= n * m,
        "matmul shapes"
    );
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..n * m].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: as above, with rhs w[k, m] row-major (row stride m, column stride 1).
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            m as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
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
    assert!(
        x.len() >= n * k && y.len() >= n * m && out.len() >= k * m,
        "matmul shapes"
    );
    if k == 0 || m == 0 {
        return;
    }
    if n == 0 {
        if !accumulate {
            out[..k * m].fill(0.0);
        }
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: dst k x m (row stride m); lhs = xᵀ is k x n read from x[n, k] (column stride k,
    // row stride 1); rhs y is n x m (row stride m).
    unsafe {
        gemm::gemm(
            k,
            m,
            n,
            out.as_mut_ptr(),
            1,
            m as isize,
            accumulate,
            x.as_ptr(),
            k as isize,
            1,
            y.as_ptr(),
            1,
            m as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn all_three_products_match_a_naive_loop() {
        let (n, k, m) = (5, 7, 3);
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
            assert!((a - (b + 1.0)).abs() < 1e-5);
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
    }
}
