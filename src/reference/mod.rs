//! The CPU twin: every GPU stage in plain f64 loops, one file per stage named as its shader,
//! with the same stage boundaries and buffer layouts, and the whole layer run through the same
//! chain ([`crate::chain`]). It is the oracle of the GPU tests and a backend of its own
//! ([`crate::Backend::Reference`]). The fast f32 path ([`crate::cpu`]) shares its downscale,
//! fold and normalize.
//!
//! Layouts (per batch item, row-major, f64 here and f32 on the GPU):
//! * downscaled f′ `[hf, wf, C]`, b′ `[hb, wb, C]`, mask `[hb, wb]`;
//! * matching patches `[L, k·k·C]` (normalised) and their norms `[L]`; validity `[L]`;
//! * raw patches `[L, K·K·C]`;
//! * query patches and raw scores of a tile's rows: `[raw rows·wf, k·k·C]` and `[raw rows·wf, L]`;
//! * attention `[tile rows·wf, L]`, pasted columns `[tile rows·wf, K·K·C]`; y `[Hf, Wf, C]`.
//!
//! Element order inside a patch is (dy, dx, c); patches are row-major over the patch grid.

mod attention_rows;
mod downscale;
mod fold;
mod fuse;
mod gemm;
mod mask_validity;
mod matching_patches;
mod normalize;
mod query_patches;
mod raw_patches;
mod softmax;

pub use attention_rows::attention_rows;
pub use downscale::downscale;
pub use fold::fold;
pub use fuse::fuse_pass;
pub use gemm::{gemm_nn, gemm_nt};
pub use mask_validity::mask_validity;
pub use matching_patches::matching_patches;
pub use normalize::normalize;
pub use query_patches::query_patches;
pub use raw_patches::raw_patches;
pub use softmax::softmax;

use crate::chain::{self, inspected_in, Input, Stages, TileAt};
use crate::error::Result;
use crate::geometry::{FusePass, Geometry};
use crate::output::Output;
use crate::params::Params;
use crate::plan::{Plan, Tile};
use crate::tensor::Tensor;

/// The element types of the stages shared with the fast CPU path ([`fold`], [`normalize`]):
/// f64 here, f32 there.
pub trait Real:
    Copy + Send + Sync + std::ops::AddAssign + std::ops::Div<Output = Self> + PartialEq + From<f32>
{
}
impl Real for f32 {}
impl Real for f64 {}

/// Reads `x[(y·w + x)·c + ch]` with zero padding outside `h×w`.
#[inline]
fn padded(x: &[f64], h: usize, w: usize, c: usize, y: isize, xx: isize, ch: usize) -> f64 {
    if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
        0.0
    } else {
        x[(y as usize * w + xx as usize) * c + ch]
    }
}

/// Calls `f(row index, row)` for every `row_len`-long row of `out`, rows split over the
/// machine's cores. Each row is computed by one thread in the same order as a plain loop
/// would, so the result does not depend on the number of threads.
fn for_each_row(out: &mut [f64], row_len: usize, f: impl Fn(usize, &mut [f64]) + Sync) {
    let rows = out.len() / row_len.max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows).max(1);
    if threads == 1 || out.len() < 1 << 14 {
        out.chunks_mut(row_len.max(1)).enumerate().for_each(|(i, r)| f(i, r));
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, chunk) in out.chunks_mut(per * row_len).enumerate() {
            let f = &f;
            scope.spawn(move || chunk.chunks_mut(row_len).enumerate().for_each(|(i, r)| f(t * per + i, r)));
        }
    });
}

/// The twin's buffers, named as the GPU's, and the call's outputs.
struct Twin<'a> {
    params: &'a Params,
    g: &'a Geometry,
    f: &'a Tensor,
    b: &'a Tensor,
    mask: Option<&'a Tensor>,
    queries: &'a [(usize, usize)],
    progress: &'a mut dyn FnMut(usize, usize),
    tiles_done: usize,
    tiles_total: usize,
    downscaled_f: Vec<f64>,
    downscaled_b: Vec<f64>,
    downscaled_mask: Vec<f64>,
    matching_patches: Vec<f64>,
    validity: Vec<f64>,
    raw_patches: Vec<f64>,
    query_patches: Vec<f64>,
    raw_scores: Vec<f64>,
    first_fuse_pass: Vec<f64>,
    attention: Vec<f64>,
    pasted_columns: Vec<f64>,
    /// y of the current item, before its conversion to f32; zeros at the start of each item.
    y: Vec<f64>,
    y_all: Vec<f32>,
    argmax: Vec<u32>,
    mass: Vec<f32>,
    attention_rows: Vec<f32>,
}

/// Item `n` of `t` in f64.
fn item(t: &Tensor, n: usize) -> Vec<f64> {
    t.item(n).data().iter().map(|&v| v as f64).collect()
}

impl Stages for Twin<'_> {
    fn downscale(&mut self, input: Input, n: usize) -> Result<()> {
        let g = self.g;
        let (wf_full, wb_full, c) = (g.f_size.1, g.b_size.1, g.channels);
        match input {
            Input::F => self.downscaled_f = downscale(&item(self.f, n), wf_full, c, &g.f_rows, &g.f_cols),
            Input::B => self.downscaled_b = downscale(&item(self.b, n), wb_full, c, &g.b_rows, &g.b_cols),
            Input::Mask => {
                let mask = self.mask.expect("the chain downscales a mask only when there is one");
                self.downscaled_mask = downscale(&item(mask, n), wb_full, 1, &g.b_rows, &g.b_cols);
            }
        }
        Ok(())
    }

    fn matching_patches(&mut self) -> Result<()> {
        self.matching_patches = matching_patches(&self.downscaled_b, self.g).0;
        Ok(())
    }

    fn mask_validity(&mut self) -> Result<()> {
        self.validity = mask_validity(&self.downscaled_mask, self.g);
        Ok(())
    }

    fn raw_patches(&mut self, n: usize) -> Result<()> {
        self.raw_patches = raw_patches(&item(self.b, n), self.g);
        Ok(())
    }

    fn query_patches(&mut self, t: TileAt) -> Result<()> {
        self.query_patches = query_patches(&self.downscaled_f, self.g, &t.tile.raw_rows);
        Ok(())
    }

    fn scores(&mut self, t: TileAt) -> Result<()> {
        let g = self.g;
        let m = t.tile.raw_rows.len() * g.wf;
        self.raw_scores = gemm_nt(&self.query_patches, &self.matching_patches, m, g.patches(), g.match_len());
        // Without fuse the raw scores are the scores the softmax reads.
        if g.fuse.is_none() {
            self.attention = std::mem::take(&mut self.raw_scores);
        }
        Ok(())
    }

    fn fuse(&mut self, t: TileAt, pass: FusePass) -> Result<()> {
        let (g, tile) = (self.g, t.tile);
        match pass {
            FusePass::Rows => {
                let slots = Tile::slot_map(&tile.raw_rows, g.hf);
                self.first_fuse_pass = fuse_pass(&self.raw_scores, &slots, &tile.pass1_rows, g, pass);
            }
            FusePass::Cols => {
                let slots = Tile::slot_map(&tile.pass1_rows, g.hf);
                let rows: Vec<usize> = tile.rows.clone().collect();
                self.attention = fuse_pass(&self.first_fuse_pass, &slots, &rows, g, pass);
            }
        }
        Ok(())
    }

    fn softmax(&mut self, t: TileAt, n: usize) -> Result<()> {
        let (p, g) = (self.params, self.g);
        let (argmax, mass) =
            softmax(&mut self.attention, &self.validity, g.patches(), p.softmax_scale as f64, p.masking);
        let at = n * g.queries() + t.tile.rows.start * g.wf;
        self.argmax[at..at + argmax.len()].copy_from_slice(&argmax);
        for (dst, m) in self.mass[at..].iter_mut().zip(mass) {
            *dst = m as f32;
        }
        Ok(())
    }

    fn attention_rows(&mut self, t: TileAt, n: usize) -> Result<()> {
        let pairs = inspected_in(t.tile, self.g.wf, self.queries);
        let first_row = n * self.queries.len();
        attention_rows(&self.attention, self.g.patches(), &pairs, first_row, &mut self.attention_rows);
        Ok(())
    }

    fn paste(&mut self, t: TileAt) -> Result<()> {
        let g = self.g;
        let m = t.tile.rows.len() * g.wf;
        self.pasted_columns = gemm_nn(&self.attention, &self.raw_patches, m, g.raw_len(), g.patches());
        Ok(())
    }

    fn fold(&mut self, t: TileAt, _: usize) -> Result<()> {
        fold(&self.pasted_columns, t.tile.rows.clone(), self.g, &mut self.y);
        Ok(())
    }

    fn end_tile(&mut self, _: TileAt, _: usize) -> Result<()> {
        self.tiles_done += 1;
        (self.progress)(self.tiles_done, self.tiles_total);
        Ok(())
    }

    fn normalize(&mut self, _: usize) -> Result<()> {
        let zeros = vec![0.0; self.y.len()];
        let mut y = std::mem::replace(&mut self.y, zeros);
        normalize(&mut y, self.g, self.params.overlap);
        self.y_all.extend(y.iter().map(|&v| v as f32));
        Ok(())
    }
}

/// The whole layer on the CPU, f64 inside, with a checked geometry and a tile plan (see
/// [`crate::ContextualAttention::run`]); `queries` (i, j) of the query grid get their attention
/// rows in [`Output::attention_rows`]; `progress(done, total)` is told after each tile.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    params: &Params,
    g: &Geometry,
    plan: &Plan,
    f: &Tensor,
    b: &Tensor,
    mask: Option<&Tensor>,
    queries: &[(usize, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Output> {
    g.check_queries(queries)?;
    let l = g.patches();
    let mut twin = Twin {
        params,
        g,
        f,
        b,
        mask,
        queries,
        progress,
        tiles_done: 0,
        tiles_total: g.batch * plan.tiles.len(),
        downscaled_f: Vec::new(),
        downscaled_b: Vec::new(),
        downscaled_mask: Vec::new(),
        matching_patches: Vec::new(),
        validity: vec![1.0; l],
        raw_patches: Vec::new(),
        query_patches: Vec::new(),
        raw_scores: Vec::new(),
        first_fuse_pass: Vec::new(),
        attention: Vec::new(),
        pasted_columns: Vec::new(),
        y: vec![0.0; g.f_size.0 * g.f_size.1 * g.channels],
        y_all: Vec::with_capacity(g.batch * g.f_size.0 * g.f_size.1 * g.channels),
        // Queries outside the tiles (rows a region does not need) keep argmax 0, mass 0.
        argmax: vec![0; g.batch * g.queries()],
        mass: vec![0.0; g.batch * g.queries()],
        attention_rows: vec![0.0; g.batch * queries.len() * l],
    };
    chain::run(&mut twin, g, plan, mask.is_some(), queries)?;
    let y = Tensor::new([g.batch, g.f_size.0, g.f_size.1, g.channels], twin.y_all)?;
    let mut out = Output::new(g, y, twin.argmax, twin.mass);
    out.queries = queries.to_vec();
    out.attention_rows = twin.attention_rows;
    Ok(out)
}
