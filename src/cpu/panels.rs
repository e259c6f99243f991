//! Gathers into small per-tile panels (SPEC §T2): the raw patches of a key tile's rows, and
//! the patch norms (the one L-sized vector besides validity). (The scores need no panels: they
//! read f′ and b′ in place, see [`super::scores`].) Windows are copied as contiguous
//! runs of `C` floats; positions outside the image are zeros (TF SAME padding, SPEC §2.2).

use rayon::prelude::*;

use crate::geometry::Geometry;

/// An image `[h, w, c]` that windows are read from.
#[derive(Clone, Copy)]
pub struct Image<'a> {
    pub data: &'a [f32],
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Image<'_> {
    /// Writes the `k×k` window with top-left `(y0, x0)` into `out` (`k·k·c`, order (dy, dx, c)).
    fn window(&self, y0: isize, x0: isize, k: usize, out: &mut [f32]) {
        let (h, w, c) = (self.h as isize, self.w as isize, self.c);
        // Columns of the window inside the image, the same for every row.
        let dx0 = (-x0).clamp(0, k as isize) as usize;
        let dx1 = (w - x0).clamp(0, k as isize) as usize;
        for dy in 0..k {
            let row = &mut out[dy * k * c..(dy + 1) * k * c];
            let y = y0 + dy as isize;
            if y < 0 || y >= h || dx0 >= dx1 {
                row.fill(0.0);
                continue;
            }
            row[..dx0 * c].fill(0.0);
            row[dx1 * c..].fill(0.0);
            let from = ((y as usize) * self.w + (x0 + dx0 as isize) as usize) * c;
            row[dx0 * c..dx1 * c].copy_from_slice(&self.data[from..from + (dx1 - dx0) * c]);
        }
    }
}

/// Top-left of matching patch `(u, v)` on b′.
fn match_origin(g: &Geometry, u: usize, v: usize) -> (isize, isize) {
    ((u * g.stride) as isize - g.match_pad.0 as isize, (v * g.stride) as isize - g.match_pad.1 as isize)
}

/// ‖patch‖ of every matching patch `[L]`, zero padding included (SPEC §2.6).
pub fn norms(b: Image, g: &Geometry) -> Vec<f32> {
    let mut norms = vec![0.0; g.patches()];
    norms.par_chunks_mut(g.pw).enumerate().for_each_init(
        || vec![0.0; g.match_len()],
        |patch, (u, row)| {
            for (v, norm) in row.iter_mut().enumerate() {
                let (y0, x0) = match_origin(g, u, v);
                b.window(y0, x0, g.ksize, patch);
                *norm = sum_of_squares(patch).sqrt();
            }
        },
    );
    norms
}

/// Σ x² with eight partial sums (vectorisable; a fixed order, so the same bits every run).
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for chunk in chunks {
        for (acc, v) in lanes.iter_mut().zip(chunk) {
            *acc += v * v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The patch-grid indices of the positions on the patch-grid rows `rows` that `keep` (over all L
/// patches; `None`: every one) marks, row-major.
fn kept(g: &Geometry, rows: impl Iterator<Item = usize>, keep: Option<&[bool]>) -> Vec<usize> {
    rows.flat_map(|u| (0..g.pw).map(move |v| u * g.pw + v)).filter(|&at| keep.is_none_or(|k| k[at])).collect()
}

/// Raw (paste) patches of the patch-grid rows `rows` that `keep` marks (all if `None`), in
/// order, from full-resolution b: K×K windows at stride r·s with SAME padding (SPEC §2.4),
/// `[kept, K·K·C]`. Returns how many were kept.
pub fn raw_patches(
    b: Image,
    g: &Geometry,
    rows: std::ops::Range<usize>,
    keep: Option<&[bool]>,
    out: &mut Vec<f32>,
) -> usize {
    let (kk, step) = (g.paste_kernel, g.rate * g.stride);
    let p = g.raw_len();
    let positions = kept(g, rows, keep);
    out.resize(positions.len() * p, 0.0);
    out.par_chunks_mut(p).zip(&positions).for_each(|(patch, &at)| {
        let y0 = ((at / g.pw) * step) as isize - g.raw_pad.0 as isize;
        let x0 = ((at % g.pw) * step) as isize - g.raw_pad.1 as isize;
        b.window(y0, x0, kk, patch);
    });
    positions.len()
}
