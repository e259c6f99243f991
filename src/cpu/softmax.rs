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
/// (`avx2::exp8` does the same operations on eight lanes, with these constants.)
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = EXP_POLY[1..].iter().fold(EXP_POLY[0], |p, &k| p * r + k);
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < EXP_MIN {
        0.0
    } else {
        y * scale
    }
}

/// [`exp`]'s constants: its input range, ln 2 in two parts, the rounding constant (adding and
/// subtracting 1.5·2²³ rounds to the nearest integer without a rounding instruction) and the
/// polynomial's coefficients, highest degree first.
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const ROUND: f32 = 12_582_912.0;
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// The maximum of `x` where `m ≠ 0` (all of `x` if `masked_too`), −∞ if none; eight lanes at a time.
#[inline(always)]
fn max_where<const AVX2: bool>(x: &[f32], m: &[f32], masked_too: bool) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let full = x.len() / 8 * 8;
    if AVX2 {
        // SAFETY: as in `update_row`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx2::max_where(&x[..full], &m[..full], masked_too, &mut lanes)
        };
    } else {
        for (xc, mc) in x[..full].chunks_exact(8).zip(m[..full].chunks_exact(8)) {
            for lane in 0..8 {
                let v = if masked_too || mc[lane] != 0.0 { xc[lane] } else { f32::NEG_INFINITY };
                lanes[lane] = if v > lanes[lane] { v } else { lanes[lane] };
            }
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
fn update_row<const AVX2: bool>(
    z: &mut [f32],
    validity: &[f32],
    first: u32,
    scale: f32,
    masking: Masking,
    row: &mut Row,
) {
    match masking {
        Masking::ZeroLogit => z.iter_mut().zip(validity).for_each(|(s, &m)| *s = scale * (*s * m)),
        Masking::Exclude => {
            z.iter_mut().zip(validity).for_each(|(s, &m)| *s = if m != 0.0 { scale * *s } else { f32::NEG_INFINITY })
        }
    }
    let new_max = row.max.max(max_where::<AVX2>(z, validity, true));
    if new_max == f32::NEG_INFINITY {
        // Every patch so far excluded: nothing to weigh.
        z.fill(0.0);
        row.rescale = 1.0;
        return;
    }
    row.rescale = exp(row.max - new_max);
    row.max = new_max;
    // The best valid logit; strict > keeps the earlier tile, `position` the first index on ties.
    let best = max_where::<AVX2>(z, validity, false);
    if best > row.best {
        row.best = best;
        let at = z.iter().zip(validity).position(|(&s, &m)| m != 0.0 && s == best).expect("the maximum is in the row");
        row.arg = first + at as u32;
    }
    // Eight partial sums: the loop vectorises, and the order is fixed, so the bits are too.
    let (mut sum, mut valid_sum) = ([0.0f32; 8], [0.0f32; 8]);
    let full = z.len() / 8 * 8;
    let (z_full, z_tail) = z.split_at_mut(full);
    if AVX2 {
        // SAFETY: `AVX2` is true only in `update_row_avx2` (x86-64 only), called where the CPU
        // has AVX2.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx2::weigh(z_full, &validity[..full], new_max, &mut sum, &mut valid_sum)
        };
    } else {
        for (zc, mc) in z_full.chunks_exact_mut(8).zip(validity.chunks_exact(8)) {
            for lane in 0..8 {
                let e = exp(zc[lane] - new_max);
                sum[lane] += e;
                zc[lane] = e * mc[lane];
                valid_sum[lane] += zc[lane];
            }
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
    update_row::<true>(z, validity, first, scale, masking, row)
}

/// The two hot loops of [`update_row`] in AVX2 intrinsics: the compiler does not vectorise
/// the scalar [`exp`] across the eight lanes (it keeps them scalar and spills). Each lane does
/// the scalar code's operations in its order, without FMA, so the bits are the scalar's.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, ROUND};
    use std::arch::x86_64::*;

    /// [`super::exp`] on eight lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn exp8(x: __m256) -> __m256 {
        let c = _mm256_set1_ps;
        let xc = _mm256_min_ps(_mm256_max_ps(x, c(EXP_MIN)), c(EXP_MAX));
        let n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(xc, c(std::f32::consts::LOG2_E)), c(ROUND)), c(ROUND));
        let r = _mm256_sub_ps(_mm256_sub_ps(xc, _mm256_mul_ps(n, c(LN2_HI))), _mm256_mul_ps(n, c(LN2_LO)));
        let p = EXP_POLY[1..].iter().fold(c(EXP_POLY[0]), |p, &k| _mm256_add_ps(_mm256_mul_ps(p, r), c(k)));
        let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), c(1.0));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvttps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, c(EXP_MIN));
        _mm256_andnot_ps(below, _mm256_mul_ps(y, scale))
    }

    /// `z ← exp(z − max) · m`, adding exp(z − max) to `sum` and the product to `valid_sum`
    /// lane by lane (lengths multiples of 8).
    #[target_feature(enable = "avx2")]
    pub fn weigh(z: &mut [f32], m: &[f32], max: f32, sum: &mut [f32; 8], valid_sum: &mut [f32; 8]) {
        // SAFETY (all loads and stores): every chunk holds eight floats.
        unsafe {
            let (mut s, mut vs, max) =
                (_mm256_loadu_ps(sum.as_ptr()), _mm256_loadu_ps(valid_sum.as_ptr()), _mm256_set1_ps(max));
            for (zc, mc) in z.chunks_exact_mut(8).zip(m.chunks_exact(8)) {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(zc.as_ptr()), max));
                s = _mm256_add_ps(s, e);
                let w = _mm256_mul_ps(e, _mm256_loadu_ps(mc.as_ptr()));
                _mm256_storeu_ps(zc.as_mut_ptr(), w);
                vs = _mm256_add_ps(vs, w);
            }
            _mm256_storeu_ps(sum.as_mut_ptr(), s);
            _mm256_storeu_ps(valid_sum.as_mut_ptr(), vs);
        }
    }

    /// Lane-wise `lanes ← max(lanes, x where m ≠ 0 (everywhere if masked_too))`, as the
    /// scalar `if v > lane { v } else { lane }` (which is what `maxps` computes).
    #[target_feature(enable = "avx2")]
    pub fn max_where(x: &[f32], m: &[f32], masked_too: bool, lanes: &mut [f32; 8]) {
        // SAFETY (all loads and stores): every chunk holds eight floats.
        unsafe {
            let (mut acc, zero, minus_inf) =
                (_mm256_loadu_ps(lanes.as_ptr()), _mm256_setzero_ps(), _mm256_set1_ps(f32::NEG_INFINITY));
            for (xc, mc) in x.chunks_exact(8).zip(m.chunks_exact(8)) {
                let mut v = _mm256_loadu_ps(xc.as_ptr());
                if !masked_too {
                    let counted = _mm256_cmp_ps::<_CMP_NEQ_UQ>(_mm256_loadu_ps(mc.as_ptr()), zero);
                    v = _mm256_blendv_ps(minus_inf, v, counted);
                }
                acc = _mm256_max_ps(v, acc);
            }
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        }
    }
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
        update_row::<false>(z, validity, first, scale, masking, row)
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX2 path gives the scalar path's bits: on scores with ties, excluded patches,
    /// logits far below the maximum (exp underflows to 0) and tails shorter than 8.
    #[test]
    fn avx2_rows_have_the_scalar_bits() {
        assert!(std::arch::is_x86_feature_detected!("avx2"), "this test compares the AVX2 path; the CPU has no AVX2");
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for len in [1, 7, 8, 9, 63, 200] {
            for masking in [Masking::ZeroLogit, Masking::Exclude] {
                for scale in [0.5f32, 10.0, 100.0] {
                    let scores: Vec<f32> = (0..len)
                        .map(|_| match next() % 5 {
                            0 => 1.0,                                   // ties at the maximum
                            1 => -3.0,                                  // far below it once scaled
                            _ => (next() % 2001) as f32 / 1000.0 - 1.0, // in [−1, 1]
                        })
                        .collect();
                    let validity: Vec<f32> = (0..len).map(|_| (next() % 4 != 0) as u8 as f32).collect();
                    let (mut scalar_row, mut simd_row) = (Row::default(), Row::default());
                    // Two tiles in a row, so the rescaling is compared too.
                    for tile in 0..2 {
                        let shifted: Vec<f32> = scores.iter().map(|s| s + tile as f32 * 0.25).collect();
                        let (mut a, mut b) = (shifted.clone(), shifted);
                        update_row::<false>(&mut a, &validity, 0, scale, masking, &mut scalar_row);
                        // SAFETY: checked above that the CPU has AVX2.
                        unsafe { update_row_avx2(&mut b, &validity, 0, scale, masking, &mut simd_row) };
                        let what = format!("len {len}, {masking:?}, scale {scale}, tile {tile}");
                        assert_eq!(
                            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{what}: weights"
                        );
                        assert_eq!(format!("{scalar_row:?}"), format!("{simd_row:?}"), "{what}: row state");
                    }
                }
            }
        }
        for x in
            [-f32::INFINITY, -100.0, -87.5, -87.0, -86.9, -20.0, -1.0, -1e-7, 0.0, 1e-7, 0.3, 1.0, 40.0, 88.0, 90.0]
        {
            let mut z = [x; 8];
            let (mut sum, mut valid_sum) = ([0.0; 8], [0.0; 8]);
            // SAFETY: as above.
            unsafe { avx2::weigh(&mut z, &[1.0; 8], 0.0, &mut sum, &mut valid_sum) };
            assert_eq!(z[3].to_bits(), exp(x).to_bits(), "exp({x})");
        }
    }
}
