//! Stage `gemm` (SPEC §2.7, §2.10): the scores (`gemm_nt`) and the paste (`gemm_nn`); GPU: `shaders/gemm.wgsl`.

use super::for_each_row;

/// `a [m, k] · b [n, k]ᵀ → [m, n]`: the matching scores as a GEMM (SPEC §2.7).
pub fn gemm_nt(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for_each_row(&mut out, n, |i, oi| {
        let ai = &a[i * k..(i + 1) * k];
        for (j, o) in oi.iter_mut().enumerate() {
            *o = ai.iter().zip(&b[j * k..(j + 1) * k]).map(|(x, y)| x * y).sum();
        }
    });
    out
}

/// `a [m, k] · b [k, n] → [m, n]`: attention × raw patches, the paste as a GEMM.
pub fn gemm_nn(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for_each_row(&mut out, n, |i, oi| {
        for t in 0..k {
            let x = a[i * k + t];
            if x != 0.0 {
                for (o, y) in oi.iter_mut().zip(&b[t * n..(t + 1) * n]) {
                    *o += x * y;
                }
            }
        }
    });
    out
}
