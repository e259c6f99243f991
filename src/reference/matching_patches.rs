//! Stage `matching_patches` (SPEC §2.6); GPU: `shaders/matching_patches.wgsl`.

use super::padded;
use crate::geometry::Geometry;

/// Matching patches of b′ divided by `max(‖patch‖, 1e-4)`, norms including the zero padding
/// (SPEC §2.6). Returns `(patches [L, k·k·C], norms [L])`.
pub fn matching_patches(downscaled_b: &[f64], g: &Geometry) -> (Vec<f64>, Vec<f64>) {
    let (k, c, d) = (g.ksize, g.channels, g.match_len());
    let mut patches = vec![0.0; g.patches() * d];
    let mut norms = vec![0.0; g.patches()];
    for u in 0..g.ph {
        for v in 0..g.pw {
            let l = u * g.pw + v;
            let p = &mut patches[l * d..(l + 1) * d];
            for dy in 0..k {
                for dx in 0..k {
                    let y = (u * g.stride + dy) as isize - g.match_pad.0 as isize;
                    let x = (v * g.stride + dx) as isize - g.match_pad.1 as isize;
                    for ch in 0..c {
                        p[(dy * k + dx) * c + ch] = padded(downscaled_b, g.hb, g.wb, c, y, x, ch);
                    }
                }
            }
            let norm = p.iter().map(|v| v * v).sum::<f64>().sqrt();
            norms[l] = norm;
            let denom = norm.max(1e-4);
            p.iter_mut().for_each(|v| *v /= denom);
        }
    }
    (patches, norms)
}
