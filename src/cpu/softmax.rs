//! The masked scaled softmax (SPEC §2.9) online over key tiles (SPEC §T2), with argmax and
//! attention mass (SPEC §2.10). Per query: the running maximum logit, the running sum of
//! exp(z − max) over the patches the softmax counts (all of them with 0-logit masking, the
//! valid ones with `exclude`), the same over valid patches (the mass), and the best valid logit
//! (first index on ties, across tiles too). A tile that raises the maximum rescales the sums
//! and, through [`Row::rescale`], the paste accumulated so far.

use rayon::prelude::*;

use crate::params::Masking;

/// The online state of one query.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    max: f32,
    sum: f32,
    valid_sum: f32,
    best: f32,
    arg: u32,
    /// What the paste accumulated before this tile must be multiplied by.
    pub rescale: f32,
}

impl Default for Row {
    fn default() -> Self {
        Row { max: f32::NEG_INFINITY, sum: 0.0, valid_sum: 0.0, best: f32::NEG_INFINITY, arg: 0, rescale: 1.0 }
    }
}

/// The logit of score `s` of a patch with validity `m` (SPEC §2.9, §E `masking`).
#[inline(always)]
pub fn logit(s: f32, m: f32, scale: f32, masking: Masking) -> f32 {
    match masking {
        Masking::ZeroLogit => scale * (s * m),
        Masking::Exclude if m != 0.0 => scale * s,
        Masking::Exclude => f32::NEG_INFINITY,
    }
}

/// eˣ in f32 without a library call, so that loops over it vectorise: Cody–Waite reduction
/// x = n·ln 2 + r, |r| ≤ ln 2 / 2, a degree-6 polynomial for eʳ (Cephes' `expf` coefficients,
/// about 1 ulp), and 2ⁿ put into the exponent bits. Below −87.3 (and for −∞) it returns 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// The maximum of `x` where `m ≠ 0` (all of `x` if `masked_too`), −∞ if none; eight lanes at a time.
#[inline(always)]
fn max_where(x: &[f32], m: &[f32], masked_too: bool) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let full = x.len() / 8 * 8;
    for (xc, mc) in x[..full].chunks_exact(8).zip(m[..full].chunks_exact(8)) {
        for lane in 0..8 {
            let v = if masked_too || mc[lane] != 0.0 { xc[lane] } else { f32::NEG_INFINITY };
            lanes[lane] = if v > lanes[lane] { v } else { lanes[lane] };
        }
    }
    for (&v, &mv) in x[full..].iter().zip(&m[full..]) {
        if (masked_too || mv != 0.0) && v > lanes[0] {
            lanes[0] = v;
        }
    }
    lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// One query's row of a key tile (see [`update`]).
#[inline(always)]
fn update_row(z: &mut [f32], validity: &[f32], first: u32, scale: f32, masking: Masking, row: &mut Row) {
    match masking {
        Masking::ZeroLogit => z.iter_mut().zip(validity).for_each(|(s, &m)| *s = scale * (*s * m)),
        Masking::Exclude => {
            z.iter_mut().zip(validity).for_each(|(s, &m)| *s = if m != 0.0 { scale * *s } else { f32::NEG_INFINITY })
        }
    }
    let new_max = row.max.max(max_where(z, validity, true));
    if new_max == f32::NEG_INFINITY {
        // Every patch so far excluded: nothing to weigh.
        z.fill(0.0);
        row.rescale = 1.0;
        return;
    }
    row.rescale = exp(row.max - new_max);
    row.max = new_max;
    // The best valid logit; strict > keeps the earlier tile, `position` the first index on ties.
    let best = max_where(z, validity, false);
    if best > row.best {
        row.best = best;
        let at = z.iter().zip(validity).position(|(&s, &m)| m != 0.0 && s == best).expect("the maximum is in the row");
        row.arg = first + at as u32;
    }
    // Eight partial sums: the loop vectorises, and the order is fixed, so the bits are too.
    let (mut sum, mut valid_sum) = ([0.0f32; 8], [0.0f32; 8]);
    let full = z.len() / 8 * 8;
    let (z_full, z_tail) = z.split_at_mut(full);
    for (zc, mc) in z_full.chunks_exact_mut(8).zip(validity.chunks_exact(8)) {
        for lane in 0..8 {
            let e = exp(zc[lane] - new_max);
            sum[lane] += e;
            zc[lane] = e * mc[lane];
            valid_sum[lane] += zc[lane];
        }
    }
    for (s, &m) in z_tail.iter_mut().zip(&validity[full..]) {
        let e = exp(*s - new_max);
        sum[0] += e;
        *s = e * m;
        valid_sum[0] += *s;
    }
    row.sum = row.sum * row.rescale + sum.iter().sum::<f32>();
    row.valid_sum = row.valid_sum * row.rescale + valid_sum.iter().sum::<f32>();
}

/// [`update_row`] compiled for AVX2 and FMA (called only where the CPU has them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn update_row_avx2(z: &mut [f32], validity: &[f32], first: u32, scale: f32, masking: Masking, row: &mut Row) {
    update_row(z, validity, first, scale, masking, row)
}

/// Takes one key tile: `scores [rows, nk]` (fused) become the tile's paste weights
/// valid·exp(z − max) in place; `validity` holds the tile's `nk` patches, whose global indices
/// start at `first`. The same code runs with or without AVX2: only the instructions differ,
/// not the order of operations (FMA contraction is not enabled), so neither do the bits.
pub fn update(
    scores: &mut [f32],
    nk: usize,
    validity: &[f32],
    first: u32,
    scale: f32,
    masking: Masking,
    rows: &mut [Row],
) {
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    scores.par_chunks_mut(nk).zip(rows.par_iter_mut()).for_each(|(z, row)| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { update_row_avx2(z, validity, first, scale, masking, row) };
        }
        update_row(z, validity, first, scale, masking, row)
    });
}

impl Row {
    /// After the last key tile: what the accumulated paste is divided by (0 when nothing was
    /// counted), the argmax (index 0 when every attention is 0, as in the original) and the
    /// attention mass.
    pub fn finish(&self) -> (f32, u32, f32) {
        if self.sum == 0.0 {
            return (0.0, 0, 0.0);
        }
        let best_attention = if self.best == f32::NEG_INFINITY { 0.0 } else { exp(self.best - self.max) / self.sum };
        let arg = if best_attention > 0.0 { self.arg } else { 0 };
        (self.sum, arg, self.valid_sum / self.sum)
    }

    /// The attention of a patch with logit `z` and validity `m`, once all tiles are in.
    pub fn attention(&self, z: f32, m: f32) -> f32 {
        if self.sum == 0.0 || m == 0.0 {
            0.0
        } else {
            exp(z - self.max) / self.sum
        }
    }
}
