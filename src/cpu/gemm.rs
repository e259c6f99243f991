//! The two GEMMs of the layer on the CPU (SPEC §2.7 scores, as pixel dot products; §2.10 paste), through faer's packed,
//! blocked kernels with run-time SIMD dispatch (AVX-512/AVX2/NEON) on all of rayon's threads.
//!
//! Why faer: on the layer's shapes as they were when the crate was chosen (patch GEMMs
//! [Nq, k²C]·[Nk, k²C]ᵀ and the paste [Nq, Lk]·[Lk, K²C]) on a 2-vCPU AMD EPYC (Zen 5) it gave
//! 161–201 GFLOP/s with both threads, the fastest on four of six shapes, against 150–183 for
//! `matrixmultiply` (AVX2 at most) and 140–194 for `gemm` (README, Numbers). The scores' GEMM is
//! now one of pixels, [pixels, C]·[pixels, C]ᵀ, with the same kernels.
//! It also gives the same bits for any thread count (it splits the output, never the inner
//! dimension), which the backend's determinism rests on.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

/// All of rayon's threads.
fn par() -> Par {
    match rayon::current_num_threads() {
        0 | 1 => Par::Seq,
        n => Par::rayon(n),
    }
}

/// `out [m, n] = a [m, k] · b [n, k]ᵀ`, rows `out_stride` apart: the dot products of f′'s and
/// b′'s pixels the raw scores are summed from (`scores.rs`).
pub fn gram(a: &[f32], b: &[f32], out: &mut [f32], out_stride: usize, m: usize, n: usize, k: usize) {
    if m == 0 || n == 0 {
        return;
    }
    // Row-major with a row stride, as the transpose of a column-major view (faer 0.22's
    // `from_row_major_slice_with_stride_mut` lays rows 1 apart and columns `row_stride` apart).
    let mut out =
        MatMut::from_column_major_slice_with_stride_mut(&mut out[..(m - 1) * out_stride + n], n, m, out_stride)
            .transpose_mut();
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let a = MatRef::from_row_major_slice(&a[..m * k], m, k);
    let b = MatRef::from_row_major_slice(&b[..n * k], n, k).transpose();
    matmul(out, Accum::Replace, a, b, 1.0f32, par());
}

/// `out [m, n] += a [m, k] · b [k, n]`: attention weights times raw patches, added to the paste;
/// a's rows are `a_stride` apart.
pub fn accumulate(a: &[f32], a_stride: usize, b: &[f32], out: &mut [f32], m: usize, n: usize, k: usize) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let a = MatRef::from_row_major_slice_with_stride(&a[..(m - 1) * a_stride + k], m, k, a_stride);
    let b = MatRef::from_row_major_slice(&b[..k * n], k, n);
    matmul(MatMut::from_row_major_slice_mut(&mut out[..m * n], m, n), Accum::Add, a, b, 1.0f32, par());
}
