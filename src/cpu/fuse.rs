//! One fuse pass (SPEC §2.8) on a query tile × key tile of scores, with the halos of both
//! (SPEC §T2). Both sides take the same flat step d ∈ D, each on its own grid; the key side's
//! steps are compressed into runs of consecutive columns, so the inner loop adds contiguous
//! slices (it vectorises) instead of stepping element by element.

use rayon::prelude::*;

use crate::geometry::{Fuse, FusePass, Geometry};
use crate::plan::Tile;

const NONE: u32 = u32::MAX;

/// `len` consecutive output columns from `dst` read input columns from `src`.
#[derive(Clone, Copy, Debug)]
struct Run {
    dst: usize,
    src: usize,
    len: usize,
}

/// For every offset d: the input position of each output position of one side (`NONE` where
/// the step leaves the grid), positions numbered row-major over the listed rows.
fn steps(fuse: Fuse, pass: FusePass, (h, w): (usize, usize), out_rows: &[usize], in_rows: &[usize]) -> Vec<Vec<u32>> {
    let slots = Tile::slot_map(in_rows, h);
    fuse.offsets()
        .map(|d| {
            out_rows
                .iter()
                .flat_map(|&i| (0..w).map(move |j| (i, j)))
                .map(|(i, j)| match Geometry::fuse_step(fuse.mode, pass, h, w, i, j, d) {
                    Some((si, sj)) => {
                        let slot = slots[si];
                        assert!(slot != NONE, "fuse pass reads row {si} that the tile did not compute");
                        slot * w as u32 + sj as u32
                    }
                    None => NONE,
                })
                .collect()
        })
        .collect()
}

/// The runs of consecutive defined steps of one offset.
fn runs(step: &[u32]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (dst, &src) in step.iter().enumerate() {
        if src == NONE {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.dst + r.len == dst && r.src + r.len == src as usize => r.len += 1,
            _ => runs.push(Run { dst, src: src as usize, len: 1 }),
        }
    }
    runs
}

/// One pass from `input` (query rows `q_in` × key rows `k_in`) into `out` (`q_out` × `k_out`):
/// out(q, β) = Σ_{d∈D} input(step_d(q), step_d(β)), terms in ascending d, a term 0 where either
/// step leaves its grid.
#[allow(clippy::too_many_arguments)]
pub fn pass(
    g: &Geometry,
    pass: FusePass,
    input: &[f32],
    (q_in, k_in): (&[usize], &[usize]),
    out: &mut [f32],
    (q_out, k_out): (&[usize], &[usize]),
) {
    let fuse = g.fuse.expect("fuse pass without fuse");
    let query_steps = steps(fuse, pass, (g.hf, g.wf), q_out, q_in);
    let key_runs: Vec<Vec<Run>> = steps(fuse, pass, (g.ph, g.pw), k_out, k_in).iter().map(|s| runs(s)).collect();
    let (in_cols, out_cols) = (k_in.len() * g.pw, k_out.len() * g.pw);
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    out[..q_out.len() * g.wf * out_cols].par_chunks_mut(out_cols).enumerate().for_each(|(q, row)| {
        let sources = query_steps.iter().map(|s| s[q]);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { fuse_row_avx2(row, input, in_cols, sources, &key_runs) };
        }
        fuse_row(row, input, in_cols, sources, &key_runs)
    });
}

/// One output row: the sum over offsets of the input row each offset's query step reads,
/// shifted by its key runs.
#[inline(always)]
fn fuse_row(row: &mut [f32], input: &[f32], in_cols: usize, sources: impl Iterator<Item = u32>, key_runs: &[Vec<Run>]) {
    row.fill(0.0);
    for (src, runs) in sources.zip(key_runs) {
        if src == NONE {
            continue;
        }
        let in_row = &input[src as usize * in_cols..][..in_cols];
        for r in runs {
            for (o, x) in row[r.dst..r.dst + r.len].iter_mut().zip(&in_row[r.src..r.src + r.len]) {
                *o += x;
            }
        }
    }
}

/// [`fuse_row`] compiled for AVX2 (the same additions in the same order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fuse_row_avx2(
    row: &mut [f32],
    input: &[f32],
    in_cols: usize,
    sources: impl Iterator<Item = u32>,
    key_runs: &[Vec<Run>],
) {
    fuse_row(row, input, in_cols, sources, key_runs)
}
