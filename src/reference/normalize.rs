//! Stage `normalize` (SPEC §2.11, §E); GPU: `shaders/normalize.wgsl`.

use super::Real;
use crate::geometry::Geometry;
use crate::params::Overlap;

/// Divides the folded output by the overlap divisor (SPEC §2.11, §E); 0 coverage gives 0.
pub fn normalize<T: Real>(y: &mut [T], g: &Geometry, overlap: Overlap) {
    let (hf_full, wf_full) = g.f_size;
    let c = g.channels;
    for py in 0..hf_full {
        for px in 0..wf_full {
            let div = T::from(g.overlap_divisor(overlap, py, px));
            for v in &mut y[(py * wf_full + px) * c..(py * wf_full + px + 1) * c] {
                *v = if div == T::from(0.0) { T::from(0.0) } else { *v / div };
            }
        }
    }
}
