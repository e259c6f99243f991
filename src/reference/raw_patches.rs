//! Stage `raw_patches` (SPEC §2.4); GPU: `shaders/raw_patches.wgsl`.

use super::padded;
use crate::geometry::Geometry;

/// Raw (paste) patches `[L, K·K·C]` from full-resolution b `[Hb, Wb, C]`: K×K windows at
/// stride r·s with TF SAME padding (SPEC §2.4).
pub fn raw_patches(b: &[f64], g: &Geometry) -> Vec<f64> {
    let (kk, c, p) = (g.paste_kernel, g.channels, g.raw_len());
    let (hb, wb) = g.b_size;
    let step = g.rate * g.stride;
    let mut raw = vec![0.0; g.patches() * p];
    for u in 0..g.ph {
        for v in 0..g.pw {
            let l = u * g.pw + v;
            for ty in 0..kk {
                for tx in 0..kk {
                    let y = (u * step + ty) as isize - g.raw_pad.0 as isize;
                    let x = (v * step + tx) as isize - g.raw_pad.1 as isize;
                    for ch in 0..c {
                        raw[l * p + (ty * kk + tx) * c + ch] = padded(b, hb, wb, c, y, x, ch);
                    }
                }
            }
        }
    }
    raw
}
