//! What one call of the layer produces, on any backend.

use crate::geometry::Geometry;
use crate::tensor::Tensor;

/// What one call produces. Equality compares the results, not `gpu_time_ms` or `queries_computed`.
#[derive(Clone, Debug)]
pub struct Output {
    /// The reconstruction, `[B, Hf, Wf, C]`.
    pub y: Tensor,
    /// Per query, the patch with the largest attention (first on ties), as a flat index
    /// `u·pw + v` into b's patch grid; `[B, hf, wf]` flattened.
    pub argmax: Vec<u32>,
    /// The same as (row, col) in b's patch grid: int32 `[B, hf, wf, 2]` flattened.
    pub offsets: Vec<i32>,
    /// Sum of the attention over the patches per query, `[B, hf, wf]` flattened. Below 1 where
    /// masked patches took mass (the original's 0-logit masking).
    pub mass: Vec<f32>,
    /// The query grid (hf, wf).
    pub grid: (usize, usize),
    /// b's patch grid (ph, pw).
    pub patch_grid: (usize, usize),
    /// The queries (i, j) whose attention rows were asked for ([`crate::RunOptions::queries`]).
    pub queries: Vec<(usize, usize)>,
    /// Their attention over b's patches, `[B, queries, ph, pw]` flattened; empty unless asked for.
    pub attention_rows: Vec<f32>,
    /// Time the GPU spent in the layer's compute pass (timestamp queries), where the device
    /// supports them; `None` on the CPU backend. Excludes upload and readback.
    pub gpu_time_ms: Option<f64>,
    /// Queries whose attention the call computed, over the batch: B·hf·wf, or with a region
    /// (SPEC §R, [`crate::RunOptions::region`]) B·wf times the query rows it needs.
    pub queries_computed: usize,
}

impl PartialEq for Output {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.y,
            &self.argmax,
            &self.offsets,
            &self.mass,
            self.grid,
            self.patch_grid,
            &self.queries,
            &self.attention_rows,
        ) == (&o.y, &o.argmax, &o.offsets, &o.mass, o.grid, o.patch_grid, &o.queries, &o.attention_rows)
    }
}

impl Output {
    pub(crate) fn new(g: &Geometry, y: Tensor, argmax: Vec<u32>, mass: Vec<f32>) -> Output {
        let offsets = argmax.iter().flat_map(|&a| [(a as usize / g.pw) as i32, (a as usize % g.pw) as i32]).collect();
        Output {
            y,
            argmax,
            offsets,
            mass,
            grid: (g.hf, g.wf),
            patch_grid: (g.ph, g.pw),
            queries: Vec::new(),
            attention_rows: Vec::new(),
            gpu_time_ms: None,
            queries_computed: g.batch * g.queries(),
        }
    }

    /// Keeps only what a run restricted to `region` defines (SPEC §R): y outside the region is
    /// 0, and queries in rows not `needed` have argmax 0, offsets (0, 0) and mass 0.
    pub(crate) fn keep_region(&mut self, g: &Geometry, region: &Tensor, needed: &[bool]) {
        let (hf_full, wf_full) = g.f_size;
        let pixels = hf_full * wf_full;
        let c = g.channels;
        let region_items = region.shape()[0];
        for (n, item) in self.y.data_mut().chunks_mut(pixels * c).enumerate() {
            let wanted = &region.data()[if region_items > 1 { n * pixels } else { 0 }..][..pixels];
            for (pixel, &w) in item.chunks_mut(c).zip(wanted) {
                if w == 0.0 {
                    pixel.fill(0.0);
                }
            }
        }
        for (q, (argmax, mass)) in self.argmax.iter_mut().zip(&mut self.mass).enumerate() {
            if !needed[q / g.wf % g.hf] {
                *argmax = 0;
                *mass = 0.0;
                self.offsets[2 * q..2 * q + 2].fill(0);
            }
        }
        self.queries_computed = g.batch * g.wf * needed.iter().filter(|&&r| r).count();
    }
}
