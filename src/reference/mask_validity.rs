//! Stage `mask_validity` (SPEC §2.7); GPU: `shaders/mask_validity.wgsl`.

use super::padded;
use crate::geometry::Geometry;

/// Mask validity `[L]`: 1 where the mean of the downscaled mask over the patch window is
/// exactly 0, padding counting as valid (SPEC §2.7).
pub fn mask_validity(downscaled_mask: &[f64], g: &Geometry) -> Vec<f64> {
    let k = g.ksize;
    let mut validity = vec![0.0; g.patches()];
    for u in 0..g.ph {
        for v in 0..g.pw {
            let mut sum = 0.0;
            for dy in 0..k {
                for dx in 0..k {
                    let y = (u * g.stride + dy) as isize - g.match_pad.0 as isize;
                    let x = (v * g.stride + dx) as isize - g.match_pad.1 as isize;
                    sum += padded(downscaled_mask, g.hb, g.wb, 1, y, x, 0);
                }
            }
            validity[u * g.pw + v] = if sum / (k * k) as f64 == 0.0 { 1.0 } else { 0.0 };
        }
    }
    validity
}
