//! The raw scores (SPEC §2.7) on the CPU through the pixel Gram matrix instead of patch panels.
//!
//! A raw score is the dot product of a k×k query window of f′ with a k×k matching window of b′,
//! divided by the matching patch's norm (SPEC §2.6). Both windows are made of pixels, and both
//! step over the same k² offsets d, so with G = f′·b′ᵀ (one dot product of C values per pair of
//! pixels) a score is
//!
//! ```text
//! score(q, l) = Σ_{d ∈ k×k} G[q₀ + d, l₀ + d] / max(‖patch_l‖, 1e-4)
//! ```
//!
//! where q₀ and l₀ are the windows' top-left pixels and terms whose pixel lies outside either
//! image are 0 (TF SAME padding, SPEC §2.2). G's inner size is C, where the patch GEMM's is k²C;
//! the k² shifted adds that follow cost k² per score instead of 2k²C. At 3×3 windows that is
//! about 9× fewer flops, and neither image is copied into k²-times-larger panels: the rows of
//! f′ and b′ are already the GEMM's operands.
//!
//! Written here, not taken from a crate: this is the layer's own arithmetic on top of faer's
//! GEMM ([`super::gemm::gram`]). Every score is summed by one thread in a fixed (dy, dx)
//! order, so the bits do not depend on the thread count.

use std::ops::Range;

use rayon::prelude::*;

use super::gemm;
use super::panels::Image;
use crate::geometry::Geometry;

/// Columns of b′ (pixels) that one Gram block spans at most, unless a single key row needs
/// more: small enough that the block stays in the caches while the shifted adds read it.
const GRAM_COLUMNS: usize = 2048;

/// Patch-grid rows per Gram block: as many as fit [`GRAM_COLUMNS`] with their window rows.
pub fn key_rows_per_block(g: &Geometry) -> usize {
    let pixel_rows = (GRAM_COLUMNS / g.wb.max(1)).saturating_sub(g.ksize - 1);
    (pixel_rows / g.stride).max(1)
}

/// The floats of the largest Gram block for `query_rows` query-grid rows and `key_rows`
/// patch-grid rows (the working set [`raw_scores`] adds to its output).
pub fn gram_len(g: &Geometry, query_rows: usize, key_rows: usize) -> usize {
    let key_rows = key_rows.min(key_rows_per_block(g));
    let f_rows = (query_rows + g.ksize - 1).min(g.hf);
    let b_rows = ((key_rows.max(1) - 1) * g.stride + g.ksize).min(g.hb);
    f_rows * g.wf * b_rows * g.wb
}

/// Consecutive runs of the ascending `rows`: (index of the run's first row in `rows`, the rows).
fn runs(rows: &[usize]) -> Vec<(usize, Range<usize>)> {
    let mut out: Vec<(usize, Range<usize>)> = Vec::new();
    for (at, &row) in rows.iter().enumerate() {
        match out.last_mut() {
            Some((_, run)) if run.end == row => run.end += 1,
            _ => out.push((at, row..row + 1)),
        }
    }
    out
}

/// Raw scores of the queries on the query-grid rows `query_rows` (ascending) against the
/// matching patches on the patch-grid rows `key_rows` (ascending): query `t` of the listed rows
/// (row-major) and key `s` go to `out[t·out_stride + s]`. `f` is f′, `b` is b′, `inv_norms`
/// the patches' `1 / max(‖patch‖, 1e-4)`; `gram` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn raw_scores(
    f: Image,
    b: Image,
    g: &Geometry,
    inv_norms: &[f32],
    query_rows: &[usize],
    key_rows: &[usize],
    gram: &mut Vec<f32>,
    out: &mut [f32],
    out_stride: usize,
) {
    let per_block = key_rows_per_block(g);
    for (query_slot, queries) in runs(query_rows) {
        for (key_slot, keys) in runs(key_rows) {
            for first in keys.clone().step_by(per_block) {
                let chunk = first..(first + per_block).min(keys.end);
                let at = query_slot * g.wf * out_stride + (key_slot + first - keys.start) * g.pw;
                block(f, b, g, inv_norms, queries.clone(), chunk, gram, &mut out[at..], out_stride);
            }
        }
    }
}

/// [`raw_scores`] for consecutive query rows `queries` and patch rows `keys`, through one Gram block.
#[allow(clippy::too_many_arguments)]
fn block(
    f: Image,
    b: Image,
    g: &Geometry,
    inv_norms: &[f32],
    queries: Range<usize>,
    keys: Range<usize>,
    gram: &mut Vec<f32>,
    out: &mut [f32],
    out_stride: usize,
) {
    let (k, s) = (g.ksize as isize, g.stride as isize);
    let (wf, wb, pw, c) = (g.wf, g.wb, g.pw, g.channels);
    let (qp, mp) = (g.query_pad.0 as isize, (g.match_pad.0 as isize, g.match_pad.1 as isize));
    // The pixel rows of f′ the queries' windows cover, and of b′ the keys' windows.
    let a0 = (queries.start as isize - qp).max(0);
    let a1 = (queries.end as isize - 1 - qp + k).min(g.hf as isize);
    let c0 = (keys.start as isize * s - mp.0).max(0);
    let c1 = ((keys.end as isize - 1) * s - mp.0 + k).min(g.hb as isize);
    let m = (a1 - a0).max(0) as usize * wf;
    let n = (c1 - c0).max(0) as usize * wb;
    gram.resize(m * n, 0.0);
    gemm::gram(&f.data[a0 as usize * wf * c..], &b.data[c0 as usize * wb * c..], gram, n, m, n, c);
    let gram = &gram[..];
    // For each dx, the key columns v whose window column v·s − pad + dx lies in b′.
    let columns: Vec<Range<usize>> = (0..k)
        .map(|dx| {
            let off = dx - mp.1;
            let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize };
            let hi = if wb as isize - 1 - off < 0 { 0 } else { (((wb as isize - 1 - off) / s + 1) as usize).min(pw) };
            lo..hi.max(lo)
        })
        .collect();
    let window = Window { g, gram, n, first_pixel_rows: (a0, c0), columns: &columns, inv_norms };
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    out.par_chunks_mut(out_stride).take(queries.len() * wf).enumerate().for_each(|(t, row)| {
        let query = (queries.start + t / wf, t % wf);
        let row = &mut row[..keys.len() * pw];
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { query_row_avx2(&window, query, keys.clone(), row) };
        }
        query_row(&window, query, keys.clone(), row)
    });
}

/// What [`query_row`] reads: the Gram block `gram` (`n` columns) whose first pixel rows are
/// `first_pixel_rows` of f′ and b′, and per dx the key columns whose window column is in b′.
struct Window<'a> {
    g: &'a Geometry,
    gram: &'a [f32],
    n: usize,
    first_pixel_rows: (isize, isize),
    columns: &'a [Range<usize>],
    inv_norms: &'a [f32],
}

/// The raw scores of query `(i, j)` against the patch rows `keys`, into `row`: per key row,
/// the sum over (dy, dx) in that order of shifted runs of Gram values, times the inverse norms.
#[inline(always)]
fn query_row(w: &Window, (i, j): (usize, usize), keys: Range<usize>, row: &mut [f32]) {
    let g = w.g;
    let (k, s) = (g.ksize as isize, g.stride as isize);
    let (wf, wb, pw) = (g.wf, g.wb, g.pw);
    let (hf, hb) = (g.hf as isize, g.hb as isize);
    let (qp, mp) = ((g.query_pad.0 as isize, g.query_pad.1 as isize), (g.match_pad.0 as isize, g.match_pad.1 as isize));
    let (a0, c0) = w.first_pixel_rows;
    let (i, j) = (i as isize, j as isize);
    row.fill(0.0);
    for (slot, u) in keys.enumerate() {
        let scores = &mut row[slot * pw..(slot + 1) * pw];
        for dy in 0..k {
            let (a, cy) = (i - qp.0 + dy, u as isize * s - mp.0 + dy);
            if a < 0 || a >= hf || cy < 0 || cy >= hb {
                continue;
            }
            for dx in 0..k {
                let x = j - qp.1 + dx;
                if x < 0 || x >= wf as isize {
                    continue;
                }
                let from = ((a - a0) as usize * wf + x as usize) * w.n + (cy - c0) as usize * wb;
                let pixels = &w.gram[from..from + wb];
                let v = w.columns[dx as usize].clone();
                if v.is_empty() {
                    continue;
                }
                let off = dx - mp.1;
                if s == 1 {
                    let first = (v.start as isize + off) as usize;
                    for (score, &p) in scores[v.clone()].iter_mut().zip(&pixels[first..first + v.len()]) {
                        *score += p;
                    }
                } else {
                    for v in v {
                        scores[v] += pixels[(v as isize * s + off) as usize];
                    }
                }
            }
        }
        for (score, &inv) in scores.iter_mut().zip(&w.inv_norms[u * pw..(u + 1) * pw]) {
            *score *= inv;
        }
    }
}

/// [`query_row`] compiled for AVX2 (the same additions in the same order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn query_row_avx2(w: &Window, query: (usize, usize), keys: Range<usize>, row: &mut [f32]) {
    query_row(w, query, keys, row)
}
