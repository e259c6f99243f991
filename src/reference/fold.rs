//! Stage `fold` (SPEC §2.11, §T); GPU: `shaders/fold.wgsl`.

use rayon::prelude::*;

use super::Real;
use crate::geometry::Geometry;

/// Adds the pasted columns `[tile rows·wf, K·K·C]` of the queries in `rows` into the
/// unnormalised output `y [Hf, Wf, C]` (the fold of the transposed convolution, as a gather).
/// Each pixel adds its covering queries in ascending (i, j) order, so tiles of whole rows
/// added in ascending order give the same sums as one tile. Output rows are independent, so
/// they are split over threads without changing a bit.
pub fn fold<T: Real>(pasted_columns: &[T], rows: std::ops::Range<usize>, g: &Geometry, y: &mut [T]) {
    let wf_full = g.f_size.1;
    let (kk, c, p, r) = (g.paste_kernel, g.channels, g.raw_len(), g.rate);
    y.par_chunks_mut(wf_full * c).enumerate().for_each(|(py, y_row)| {
        let irange = Geometry::covering(py, g.hf, r, g.paste_pad.0, kk);
        let (i0, i1) = (irange.start.max(rows.start), irange.end.min(rows.end));
        if i0 >= i1 {
            return;
        }
        for (px, pixel) in y_row.chunks_mut(c).enumerate() {
            let jrange = Geometry::covering(px, g.wf, r, g.paste_pad.1, kk);
            for i in i0..i1 {
                let ty = py + g.paste_pad.0 - r * i;
                for j in jrange.clone() {
                    let tx = px + g.paste_pad.1 - r * j;
                    let column = &pasted_columns[((i - rows.start) * g.wf + j) * p + (ty * kk + tx) * c..][..c];
                    for (acc, &v) in pixel.iter_mut().zip(column) {
                        *acc += v;
                    }
                }
            }
        }
    });
}
