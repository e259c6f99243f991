//! The fast CPU backend ([`crate::Backend::Cpu`]): the whole layer in f32, organised as SPEC
//! §T2 describes. For each query tile (whole rows of the query grid, with the halo rows the fuse
//! reads) and each key tile (whole rows of the patch grid, with theirs):
//!
//! 1. the raw scores from a GEMM of f′'s and b′'s pixels and k² shifted adds (`scores.rs`),
//! 2. the two fuse passes, from the halos down to the tiles' own rows,
//! 3. the online masked softmax, keeping per query the running maximum, sums, argmax and mass,
//! 4. the paste as a second GEMM (weights · raw patches) added to the query tile's accumulator,
//!    rescaled when a tile raises the maximum.
//!
//! After the last key tile the accumulator, divided by the softmax's sum, is folded into y; y is
//! normalised per item. The cheap per-pixel stages are the twin's, in f32:
//! [`downscale`](crate::reference::downscale), [`fold`](crate::reference::fold),
//! [`normalize`](crate::reference::normalize) (and, on the one-channel mask, its f64 mask validity). Nothing but L-sized vectors (norms,
//! validity) grows with the number of patches: the working set is bounded by the memory budget
//! whatever the image size.
//!
//! Threads: the GEMMs run on all of rayon's threads (faer splits their output); the shifted
//! adds, gathers, fuse and softmax split rows. No result depends on how many threads there are: every number
//! is computed by one thread in a fixed order, and the tiling depends on the sizes and the
//! budget only.
//!
//! Written here rather than taken from a crate: the scores from pixel dot products, the fuse,
//! the online masked softmax and the patch panels are this layer's own; the GEMMs are faer's
//! ([`gemm`]).

mod fuse;
pub mod gemm;
mod panels;
mod scores;
pub mod softmax;

use rayon::prelude::*;

use crate::chain::inspected_in;
use crate::error::{Error, Result};
use crate::geometry::{FusePass, Geometry};
use crate::output::Output;
use crate::params::Params;
use crate::plan::{candidates, RowNeeds, Tile};
use crate::reference;
use crate::tensor::Tensor;
use panels::Image;
use softmax::Row;

/// One line naming the backend: threads and the widest SIMD the GEMMs dispatch to.
pub fn describe() -> String {
    let threads = rayon::current_num_threads();
    format!("CPU (f32, {threads} thread{}, {})", if threads == 1 { "" } else { "s" }, simd().0)
}

/// The widest vector instructions this CPU offers the GEMM kernels, and their f32 lanes.
pub fn simd() -> (&'static str, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return ("AVX-512", 16);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return ("AVX2+FMA", 8);
        }
        ("SSE2", 4)
    }
    #[cfg(target_arch = "aarch64")]
    {
        ("NEON", 4)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        ("scalar", 1)
    }
}

/// The CPU backend's memory target when `Params::memory_budget` is `None`: two and a half times
/// one batch item of f and b, at least 8 MiB and at most [`MAX_DEFAULT_BUDGET`]. The working set
/// then grows with the inputs the caller already holds, not with their square (the scores):
/// on the three bench cases this keeps the layer's memory under a quarter of TensorFlow's
/// (README, Numbers) at 1.1× to 1.6× its speed, where the largest tiles are 1.2× to 1.5×
/// faster still; `Params::memory_budget` trades one for the other.
pub fn default_budget(g: &Geometry) -> u64 {
    let ((hf, wf), (hb, wb)) = (g.f_size, g.b_size);
    let inputs = 4 * g.channels as u64 * (hf * wf + hb * wb) as u64;
    (inputs * 5 / 2).clamp(8 << 20, MAX_DEFAULT_BUDGET)
}

/// The largest default budget: 384 MiB, more than the GPU's 256 MiB because halo rows kept
/// between tiles make large images faster, while the process stays under 0.5 GB.
pub const MAX_DEFAULT_BUDGET: u64 = 384 << 20;

/// Query tiles (rows of the hf×wf grid) × key tiles (rows of the ph×pw patch grid), each with
/// its fuse halos (SPEC §T, §T2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Query tiles, in ascending row order.
    pub query: Vec<Tile>,
    /// Key tiles, in ascending row order.
    pub keys: Vec<Tile>,
    /// Whether the raw scores of the rows consecutive query tiles share are kept from one
    /// query tile for the next (faster; costs those rows against every key tile in memory).
    pub keep_halo: bool,
}

impl Tiling {
    /// Tiles of exactly `query_rows` and `key_rows` rows (the last of each may have fewer).
    pub fn with_rows(g: &Geometry, query_rows: usize, key_rows: usize) -> Tiling {
        Tiling {
            query: RowNeeds::on_grid(g.fuse, g.hf, g.wf).tiles(query_rows.clamp(1, g.hf)),
            keys: RowNeeds::on_grid(g.fuse, g.ph, g.pw).tiles(key_rows.clamp(1, g.ph)),
            keep_halo: true,
        }
    }

    /// The cheapest of the tilings whose working set ([`Tiling::bytes`]) fits `budget` bytes
    /// (every height of query and key tiles, halo rows kept or not); `query_rows` fixes the
    /// query tiles' rows. (Preferring less memory among tilings within 3 % of the cheapest cost
    /// nothing measurable on 2 threads but made 16 threads 1.4× to 3× slower: smaller tiles
    /// leave the threads idle more often.) Cost ([`Tiling::cost`]): the Gram GEMM of each tile
    /// pair's pixels with their window rows, the k² shifted adds per score, the fuse passes, the
    /// memory passes of the accumulator and of the raw-patch gathers (about 100 flop-equivalents
    /// per float), and a cost per tile pair (the paste GEMM costs the same for every tiling).
    pub fn new(g: &Geometry, budget: u64, query_rows: Option<usize>) -> Result<Tiling> {
        let query_needs = RowNeeds::on_grid(g.fuse, g.hf, g.wf);
        let key_needs = RowNeeds::on_grid(g.fuse, g.ph, g.pw);
        let query_candidates = match query_rows {
            Some(rows) => vec![rows.clamp(1, g.hf)],
            None => candidates(g.hf),
        };
        let key_options: Vec<(usize, Vec<Tile>)> =
            candidates(g.ph).into_iter().map(|rows| (rows, key_needs.tiles(rows))).collect();
        let mut fitting: Vec<(f64, Tiling)> = Vec::new();
        let mut smallest = u64::MAX;
        for rows in query_candidates {
            let query = query_needs.tiles(rows);
            for ((_, keys), keep_halo) in key_options.iter().flat_map(|k| [(k, true), (k, false)]) {
                let tiling = Tiling { query: query.clone(), keys: keys.clone(), keep_halo };
                let bytes = tiling.bytes(g);
                smallest = smallest.min(bytes);
                if bytes <= budget {
                    fitting.push((tiling.cost(g), tiling));
                }
            }
        }
        fitting
            .into_iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|t| t.1)
            .ok_or(Error::MemoryBudget { budget, needed: smallest })
    }

    /// The tiling a call uses: under `budget` ([`default_budget`] if `None`), or with
    /// `query_rows` rows per query tile.
    pub fn for_call(g: &Geometry, budget: Option<u64>, query_rows: Option<usize>) -> Result<Tiling> {
        match (budget, query_rows) {
            (Some(budget), rows) => Tiling::new(g, budget, rows),
            // The default budget is a target: if nothing fits, the smallest tiles still run.
            (None, rows) => Tiling::new(g, default_budget(g), rows).or_else(|e| match e {
                Error::MemoryBudget { .. } => {
                    Ok(Tiling { keep_halo: false, ..Tiling::with_rows(g, rows.unwrap_or(1), 1) })
                }
                e => Err(e),
            }),
        }
    }

    /// The tiling restricted to the query rows marked in `needed` (SPEC §R): query tiles of at
    /// most as many rows as before over its runs of consecutive rows; key tiles unchanged.
    pub fn restricted(mut self, g: &Geometry, needed: &[bool]) -> Tiling {
        let rows = self.query.first().map_or(g.hf, |t| t.rows.len());
        self.query = RowNeeds::on_grid(g.fuse, g.hf, g.wf).tiles_within(rows, Some(needed));
        self
    }

    /// Largest sizes over the tiles of one side: (tile positions, first-pass positions, raw positions).
    fn largest(tiles: &[Tile], w: usize) -> (usize, usize, usize) {
        tiles.iter().fold((0, 0, 0), |(a, b, c), t| {
            (a.max(t.rows.len() * w), b.max(t.pass1_rows.len() * w), c.max(t.raw_rows.len() * w))
        })
    }

    /// Rows that consecutive tiles share (computed once, then kept).
    fn shared(tiles: &[Tile]) -> impl Iterator<Item = usize> + '_ {
        tiles.windows(2).map(|w| w[0].raw_rows.iter().filter(|r| w[1].raw_rows.binary_search(r).is_ok()).count())
    }

    /// Query-grid rows kept from one query tile for the next (none unless `keep_halo`).
    fn shared_query_rows(&self) -> impl Iterator<Item = usize> + '_ {
        Self::shared(if self.keep_halo { &self.query } else { &[] })
    }

    /// The working set in bytes: the Gram block, scores and paste panels of the largest query
    /// tile × key tile (the raw scores' buffer is reused for the second fuse pass and the
    /// weights), the halo rows kept for the next query tile against every key tile and for the
    /// next key tile, and the L-sized vectors.
    pub fn bytes(&self, g: &Geometry) -> u64 {
        let (nq, nq1, nq_raw) = Self::largest(&self.query, g.wf);
        let (nk, nk1, nk_raw) = Self::largest(&self.keys, g.pw);
        let p = g.raw_len();
        let raw_rows = |tiles: &[Tile]| tiles.iter().map(|t| t.raw_rows.len()).max().unwrap_or(0);
        let gram = scores::gram_len(g, raw_rows(&self.query), raw_rows(&self.keys));
        let all_keys_raw: usize = self.keys.iter().map(|t| t.raw_rows.len() * g.pw).sum();
        let query_halo = self.shared_query_rows().max().unwrap_or(0) * g.wf * all_keys_raw;
        let key_halo = nq_raw * Self::shared(&self.keys).max().unwrap_or(0) * g.pw;
        let floats = gram + (nq_raw * nk_raw).max(nq * nk) + nq1 * nk1 + nk * p + nq * p + query_halo + key_halo;
        4 * floats as u64 + 4 * (3 * g.patches() + 8 * nq) as u64
    }

    /// Estimated work in flop-equivalents (see [`Tiling::new`]).
    fn cost(&self, g: &Geometry) -> f64 {
        let sum =
            |tiles: &[Tile], w: usize, f: fn(&Tile) -> usize| tiles.iter().map(|t| (f(t) * w) as f64).sum::<f64>();
        // Rows shared with the previous tile are copied, not computed.
        let q_shared = (self.shared_query_rows().sum::<usize>() * g.wf) as f64;
        let k_shared = (Self::shared(&self.keys).sum::<usize>() * g.pw) as f64;
        let q_raw = sum(&self.query, g.wf, |t| t.raw_rows.len()) - q_shared;
        let k_raw = sum(&self.keys, g.pw, |t| t.raw_rows.len()) - k_shared;
        let (q1, k1) = (sum(&self.query, g.wf, |t| t.pass1_rows.len()), sum(&self.keys, g.pw, |t| t.pass1_rows.len()));
        let fk = g.fuse.map_or(0, |f| f.k) as f64;
        let (k, s) = (g.ksize, g.stride);
        // The Gram GEMM: C per pixel pair, over each tile pair's pixel rows, window rows included.
        let pixels = |tiles: &[Tile], w: usize, step: usize| {
            tiles.iter().map(|t| ((t.raw_rows.len() * step + k - 1) * w) as f64).sum::<f64>()
        };
        let gram = 2.0 * g.channels as f64 * pixels(&self.query, g.wf, 1) * pixels(&self.keys, g.wb, s);
        // The k² shifted adds per score, memory-bound.
        let scores = gram + 4.0 * (k * k) as f64 * q_raw * k_raw;
        let fuse = 4.0 * fk * (q1 * k1 + (g.queries() * g.patches()) as f64);
        // Passes over memory cost far more than their flops: about 100 flop-equivalents per float
        // read and written, fitted to tilings of the three bench cases timed on a 2-vCPU Zen 5.
        // Each key tile rescales the query tile's paste accumulator and adds to it; each query
        // tile gathers every raw patch.
        let per_float = 100.0;
        let accumulate = 2.0 * per_float * (self.keys.len() * g.queries() * g.raw_len()) as f64;
        let gathers = per_float * (self.query.len() * g.patches() * g.raw_len()) as f64;
        // Waits between the parallel steps of a tile pair, about 0.1 ms.
        let per_pair = 2e7 * (self.query.len() * self.keys.len()) as f64;
        scores + accumulate + fuse + gathers + per_pair
    }
}

/// Buffers reused from tile to tile and from call to call (a layer object keeps one), so that
/// a call of the same sizes allocates nothing large.
#[derive(Default)]
pub struct Workspace {
    /// Pixel dot products of f′ and b′ (see [`scores`]).
    gram: Vec<f32>,
    raw_patches: Vec<f32>,
    /// Raw scores, then the fused scores, then the paste weights.
    scores: Vec<f32>,
    first_fuse_pass: Vec<f32>,
    /// The paste accumulated over key tiles, then the pasted columns of the query tile.
    pasted_columns: Vec<f32>,
    /// Per key tile: raw score rows of the last query tile that the next one needs again.
    halo: Vec<HaloRows>,
    /// Raw score columns of the last key tile that the next key tile of the same query tile
    /// needs again (`rows` are patch-grid rows, `scores` `[query positions, rows·pw]`).
    key_halo: HaloRows,
}

/// Raw scores kept from one tile for the next: consecutive tiles share their halo rows
/// (SPEC §T2), and copying them costs far less than computing them again.
#[derive(Default)]
struct HaloRows {
    /// Query-grid rows held, ascending.
    rows: Vec<usize>,
    /// `[rows·wf, raw key positions]`.
    scores: Vec<f32>,
}

impl Workspace {
    /// The raw scores `[raw rows·wf, raw key positions]` of query tile `qt` against key tile
    /// `kt` (index `k`). Computed only where neither neighbour has them: rows the previous query
    /// tile left in `halo[k]` and key rows the previous key tile left in `key_halo` are
    /// copied, the rest computed from Gram blocks of consecutive rows (`scores::raw_scores`).
    /// Then the rows the next query tile (`next_q`) and the key rows the next key tile
    /// (`next_k`) need are kept.
    fn raw_scores(
        &mut self,
        item: &Item,
        (qt, next_q): (&Tile, Option<&Tile>),
        (k, kt, next_k): (usize, &Tile, Option<&Tile>),
    ) {
        let (g, wf, pw) = (item.g, item.g.wf, item.g.pw);
        let nk_raw = kt.raw_rows.len() * pw;
        let block = wf * nk_raw;
        if self.halo.len() <= k {
            self.halo.resize_with(k + 1, HaloRows::default);
        }
        let halo = &mut self.halo[k];
        let key_halo = &self.key_halo;
        let key_width = key_halo.rows.len() * pw;
        // Runs of key slots: computed (start..end, None) or one cached slot (slot..slot+1, Some(at)).
        let mut key_runs: Vec<(std::ops::Range<usize>, Option<usize>)> = Vec::new();
        for (slot, row) in kt.raw_rows.iter().enumerate() {
            match (key_halo.rows.binary_search(row).ok(), key_runs.last_mut()) {
                (None, Some((run, None))) if run.end == slot => run.end += 1,
                (at, _) => key_runs.push((slot..slot + 1, at)),
            }
        }
        let cached = |row: usize| halo.rows.binary_search(&row).ok();
        let mut slot = 0;
        while slot < qt.raw_rows.len() {
            if let Some(at) = cached(qt.raw_rows[slot]) {
                self.scores[slot * block..(slot + 1) * block]
                    .copy_from_slice(&halo.scores[at * block..(at + 1) * block]);
                slot += 1;
                continue;
            }
            let end =
                (slot..qt.raw_rows.len()).find(|&s| cached(qt.raw_rows[s]).is_some()).unwrap_or(qt.raw_rows.len());
            let queries = slot * wf..end * wf;
            for (keys, at) in &key_runs {
                let column = keys.start * pw;
                match at {
                    None => scores::raw_scores(
                        item.downscaled_f,
                        item.downscaled_b,
                        g,
                        item.inv_norms,
                        &qt.raw_rows[slot..end],
                        &kt.raw_rows[keys.clone()],
                        &mut self.gram,
                        &mut self.scores[queries.start * nk_raw + column..],
                        nk_raw,
                    ),
                    Some(at) => {
                        for q in queries.clone() {
                            self.scores[q * nk_raw + column..][..pw]
                                .copy_from_slice(&key_halo.scores[q * key_width + at * pw..][..pw]);
                        }
                    }
                }
            }
            slot = end;
        }
        halo.rows.clear();
        halo.scores.clear();
        if let Some(next) = next_q {
            for (slot, row) in qt.raw_rows.iter().enumerate() {
                if next.raw_rows.binary_search(row).is_ok() {
                    halo.rows.push(*row);
                    halo.scores.extend_from_slice(&self.scores[slot * block..(slot + 1) * block]);
                }
            }
        }
        let key_halo = &mut self.key_halo;
        key_halo.rows.clear();
        key_halo.scores.clear();
        if let Some(next) = next_k {
            let kept: Vec<usize> =
                (0..kt.raw_rows.len()).filter(|&s| next.raw_rows.binary_search(&kt.raw_rows[s]).is_ok()).collect();
            key_halo.rows.extend(kept.iter().map(|&s| kt.raw_rows[s]));
            for q in 0..qt.raw_rows.len() * wf {
                for &s in &kept {
                    key_halo.scores.extend_from_slice(&self.scores[q * nk_raw + s * pw..][..pw]);
                }
            }
        }
    }
}

/// One batch item's inputs as the tiles read them.
struct Item<'a> {
    g: &'a Geometry,
    params: &'a Params,
    downscaled_f: Image<'a>,
    downscaled_b: Image<'a>,
    b: Image<'a>,
    /// `1 / max(‖patch‖, 1e-4)` per patch (SPEC §2.6).
    inv_norms: &'a [f32],
    validity: &'a [f32],
    /// The keys whose validity is not 0 (`None`: all of them): the paste leaves out the others,
    /// whose weight is exactly 0 (SPEC §2.9).
    valid: Option<&'a [bool]>,
}

/// What a query tile gives beside its pasted columns (left in [`Workspace`]): argmax and mass per query.
struct TileResult {
    argmax: Vec<u32>,
    mass: Vec<f32>,
}

impl Item<'_> {
    /// One query tile against every key tile; `next` is the query tile to keep shared halo
    /// rows for (`None`: keep none). `inspected` are (row in the tile, row in
    /// `attention_rows`) of the inspected queries; their attention rows are written there.
    fn query_tile(
        &self,
        qt: &Tile,
        next: Option<&Tile>,
        keys: &[Tile],
        ws: &mut Workspace,
        inspected: &[(u32, u32)],
        attention_rows: &mut [f32],
    ) -> TileResult {
        let g = self.g;
        let (wf, pw, p, l) = (g.wf, g.pw, g.raw_len(), g.patches());
        let (scale, masking) = (self.params.softmax_scale, self.params.masking);
        let nq = qt.rows.len() * wf;
        let nq_raw = qt.raw_rows.len() * wf;
        let q_rows: Vec<usize> = qt.rows.clone().collect();
        let mut rows = vec![Row::default(); nq];
        let mut acc = std::mem::take(&mut ws.pasted_columns);
        acc.clear();
        acc.resize(nq * p, 0.0);
        ws.key_halo.rows.clear();
        let valid = self.valid;
        for (k, kt) in keys.iter().enumerate() {
            let (nk, nk_raw) = (kt.rows.len() * pw, kt.raw_rows.len() * pw);
            ws.scores.resize((nq_raw * nk_raw).max(nq * nk), 0.0);
            ws.raw_scores(self, (qt, next), (k, kt, keys.get(k + 1)));
            if g.fuse.is_some() {
                let k_rows: Vec<usize> = kt.rows.clone().collect();
                ws.first_fuse_pass.resize(qt.pass1_rows.len() * wf * kt.pass1_rows.len() * pw, 0.0);
                let (raw, first) = (&qt.raw_rows[..], &qt.pass1_rows[..]);
                fuse::pass(
                    g,
                    FusePass::Rows,
                    &ws.scores,
                    (raw, &kt.raw_rows),
                    &mut ws.first_fuse_pass,
                    (first, &kt.pass1_rows),
                );
                fuse::pass(
                    g,
                    FusePass::Cols,
                    &ws.first_fuse_pass,
                    (first, &kt.pass1_rows),
                    &mut ws.scores,
                    (&q_rows, &k_rows),
                );
            }
            let scores = &mut ws.scores[..nq * nk];
            let first = kt.rows.start * pw;
            // Inspected queries keep their scores until the softmax's maximum and sum are known.
            for &(row, dst) in inspected {
                attention_rows[dst as usize * l + first..][..nk].copy_from_slice(&scores[row as usize * nk..][..nk]);
            }
            let validity = &self.validity[first..first + nk];
            softmax::update(scores, nk, validity, first as u32, scale, masking, &mut rows);
            acc.par_chunks_mut(p).zip(&rows).filter(|(_, r)| r.rescale != 1.0).for_each(|(a, r)| {
                a.iter_mut().for_each(|x| *x *= r.rescale);
            });
            // Patches of validity 0 have weight exactly 0: the paste leaves them out.
            let weighed = panels::raw_patches(self.b, g, kt.rows.clone(), valid, &mut ws.raw_patches);
            if let Some(valid) = valid.filter(|_| weighed < nk) {
                let runs = kept_runs(&valid[first..first + nk]);
                scores.par_chunks_mut(nk).for_each(|row| gather(row, &runs));
            }
            gemm::accumulate(scores, nk, &ws.raw_patches, &mut acc, nq, p, weighed);
        }
        let finished: Vec<(f32, u32, f32)> = rows.iter().map(Row::finish).collect();
        acc.par_chunks_mut(p).zip(&finished).for_each(|(a, &(sum, _, _))| {
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            a.iter_mut().for_each(|x| *x *= inv);
        });
        for &(row, dst) in inspected {
            let state = &rows[row as usize];
            let out = &mut attention_rows[dst as usize * l..][..l];
            for (a, &m) in out.iter_mut().zip(self.validity) {
                *a = state.attention(softmax::logit(*a, m, scale, masking), m);
            }
        }
        ws.pasted_columns = acc;
        TileResult { argmax: finished.iter().map(|f| f.1).collect(), mass: finished.iter().map(|f| f.2).collect() }
    }
}

/// The whole layer on the fast CPU path (see the module's header); the arguments as
/// [`reference::forward`]'s, with a [`Tiling`] for the plan and the buffers to reuse.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    params: &Params,
    g: &Geometry,
    tiling: &Tiling,
    ws: &mut Workspace,
    f: &Tensor,
    b: &Tensor,
    mask: Option<&Tensor>,
    queries: &[(usize, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Output> {
    g.check_queries(queries)?;
    let (c, l) = (g.channels, g.patches());
    let ((hf_full, wf_full), (hb_full, wb_full)) = (g.f_size, g.b_size);
    let (f_len, b_len) = (hf_full * wf_full * c, hb_full * wb_full * c);
    let mut y_all = vec![0.0f32; g.batch * f_len];
    // Queries outside the tiles (rows a region does not need) keep argmax 0, mass 0.
    let mut argmax = vec![0u32; g.batch * g.queries()];
    let mut mass = vec![0.0f32; g.batch * g.queries()];
    let mut attention_rows = vec![0.0f32; g.batch * queries.len() * l];
    let mut validity = vec![1.0f32; l];
    let mut valid: Option<Vec<bool>> = None;
    let (mut done, total) = (0, g.batch * tiling.query.len());
    for n in 0..g.batch {
        let f_item = &f.data()[n * f_len..(n + 1) * f_len];
        let b_item = &b.data()[n * b_len..(n + 1) * b_len];
        let downscaled_f = reference::downscale(f_item, wf_full, c, &g.f_rows, &g.f_cols);
        let downscaled_b = reference::downscale(b_item, wb_full, c, &g.b_rows, &g.b_cols);
        if let Some(mask) = mask.filter(|_| g.mask_batch > 1 || n == 0) {
            // The mask is one channel and read once per item: the twin's f64 stages cost nothing here.
            let m = if g.mask_batch > 1 { n } else { 0 };
            let item: Vec<f64> = mask.item(m).data().iter().map(|&v| v as f64).collect();
            let downscaled = reference::downscale(&item, wb_full, 1, &g.b_rows, &g.b_cols);
            validity = reference::mask_validity(&downscaled, g).iter().map(|&v| v as f32).collect();
            valid = Some(validity.iter().map(|&m| m != 0.0).collect::<Vec<bool>>()).filter(|v| v.contains(&false));
        }
        let downscaled_b = Image { data: &downscaled_b, h: g.hb, w: g.wb, c };
        // Multiplied, not divided, in the scores' inner loop: a division there cost 3 % of a call.
        let inv_norms: Vec<f32> = panels::norms(downscaled_b, g).iter().map(|n| 1.0 / n.max(1e-4)).collect();
        let item = Item {
            g,
            params,
            downscaled_f: Image { data: &downscaled_f, h: g.hf, w: g.wf, c },
            downscaled_b,
            b: Image { data: b_item, h: hb_full, w: wb_full, c },
            inv_norms: &inv_norms,
            validity: &validity,
            valid: valid.as_deref(),
        };
        // Folded straight into the output: a second buffer and a copy doubled the page faults.
        let y = &mut y_all[n * f_len..(n + 1) * f_len];
        let item_rows = &mut attention_rows[n * queries.len() * l..(n + 1) * queries.len() * l];
        for (t, qt) in tiling.query.iter().enumerate() {
            let inspected = inspected_in(qt, g.wf, queries);
            // The next query tile, whose shared halo rows this one keeps (if the tiling keeps any).
            let next = tiling.query.get(t + 1).filter(|_| tiling.keep_halo);
            let r = item.query_tile(qt, next, &tiling.keys, ws, &inspected, item_rows);
            reference::fold(&ws.pasted_columns, qt.rows.clone(), g, y);
            let at = n * g.queries() + qt.rows.start * g.wf;
            argmax[at..at + r.argmax.len()].copy_from_slice(&r.argmax);
            mass[at..at + r.mass.len()].copy_from_slice(&r.mass);
            done += 1;
            progress(done, total);
        }
        reference::normalize(y, g, params.overlap);
    }
    let y = Tensor::new([g.batch, hf_full, wf_full, c], y_all)?;
    let mut out = Output::new(g, y, argmax, mass);
    out.queries = queries.to_vec();
    out.attention_rows = attention_rows;
    Ok(out)
}

/// The runs of consecutive positions that `flags` marks, as (start, length), in order.
fn kept_runs(flags: &[bool]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (at, _) in flags.iter().enumerate().filter(|(_, &kept)| kept) {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == at => *len += 1,
            _ => runs.push((at, 1)),
        }
    }
    runs
}

/// Moves the values of `row` in `runs` (see [`kept_runs`]) to its front, in order (in place):
/// one block copy per run, since the kept keys come in runs along the key grid's rows.
fn gather(row: &mut [f32], runs: &[(usize, usize)]) {
    let mut kept = 0;
    for &(start, len) in runs {
        row.copy_within(start..start + len, kept);
        kept += len;
    }
}
