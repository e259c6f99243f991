//! Stage `query_patches` (SPEC §2.7); GPU: `shaders/query_patches.wgsl`.

use super::padded;
use crate::geometry::Geometry;

/// Query patches `[rows·wf, k·k·C]` of f′ for the given grid rows (SAME, stride 1).
pub fn query_patches(downscaled_f: &[f64], g: &Geometry, rows: &[usize]) -> Vec<f64> {
    let (k, c, d) = (g.ksize, g.channels, g.match_len());
    let mut out = vec![0.0; rows.len() * g.wf * d];
    for (slot, &i) in rows.iter().enumerate() {
        for j in 0..g.wf {
            let q = &mut out[(slot * g.wf + j) * d..(slot * g.wf + j + 1) * d];
            for dy in 0..k {
                for dx in 0..k {
                    let y = (i + dy) as isize - g.query_pad.0 as isize;
                    let x = (j + dx) as isize - g.query_pad.1 as isize;
                    for ch in 0..c {
                        q[(dy * k + dx) * c + ch] = padded(downscaled_f, g.hf, g.wf, c, y, x, ch);
                    }
                }
            }
        }
    }
    out
}
