//! Memory-bounded execution (SPEC §T, §T2): queries are processed in tiles of whole query rows
//! and patches in tiles of whole patch rows, each with the halo rows its fuse step reads. The
//! GPU runs the plan's query × key tiles, the twin its query tiles; the CPU backend plans its
//! own tiles from the same [`RowNeeds`] (`cpu::Tiling`).

use crate::error::{Error, Result};
use crate::geometry::{Fuse, FusePass, Geometry};

/// One tile of query rows and the rows it must compute on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Query rows `r0..r1` of the hf×wf grid whose attention this tile produces.
    pub rows: std::ops::Range<usize>,
    /// Rows (ascending) of the first fuse pass this tile needs; empty without fuse.
    pub pass1_rows: Vec<usize>,
    /// Rows (ascending) whose raw scores this tile computes: the halo of `pass1_rows`, or
    /// `rows` itself without fuse.
    pub raw_rows: Vec<usize>,
}

impl Tile {
    /// Slot of `row` in `rows`, a sorted list (`u32::MAX` if absent), for every grid row.
    pub fn slot_map(rows: &[usize], hf: usize) -> Vec<u32> {
        let mut map = vec![u32::MAX; hf];
        for (slot, &r) in rows.iter().enumerate() {
            map[r] = slot as u32;
        }
        map
    }
}

/// The tiles of one layer call (SPEC §T, §T2) and the working set they need on the GPU.
///
/// Queries are split into tiles of whole rows of the query grid, patches (keys) into tiles of
/// whole rows of the patch grid, each with the halo rows its fuse reads. The GPU runs every
/// query tile against every key tile with an online softmax; the twin
/// ([`crate::reference`]) runs the query tiles against all patches at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Query tiles in ascending row order; they cover `0..hf` exactly once (with a region, SPEC
    /// §R, only the rows it needs).
    pub tiles: Vec<Tile>,
    /// Key tiles in ascending row order; they cover the patch rows `0..ph` exactly once.
    pub keys: Vec<Tile>,
    /// Query rows per tile (the last may have fewer).
    pub rows_per_tile: usize,
    /// Patch rows per key tile (the last may have fewer).
    pub key_rows_per_tile: usize,
    /// The working set of the GPU path in bytes: the sum of [`Plan::working_buffers`].
    pub tile_bytes: u64,
}

/// What a buffer of the GPU path holds for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    /// Uploaded inputs (f, b, mask).
    Input,
    /// Results (y, argmax, mass, attention rows) and their readback.
    Output,
    /// Everything in between.
    Working,
}

impl BufferKind {
    /// The name in `plan --json`.
    pub fn name(self) -> &'static str {
        match self {
            BufferKind::Input => "input",
            BufferKind::Output => "output",
            BufferKind::Working => "working",
        }
    }
}

/// One buffer the GPU path allocates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferSpec {
    /// Its name (also its label on the device).
    pub name: &'static str,
    /// Its size in bytes.
    pub bytes: u64,
    /// What it holds for the caller.
    pub kind: BufferKind,
}

/// Words of one query's online softmax state on the GPU (`shaders/softmax.wgsl`).
pub(crate) const SOFTMAX_STATE_WORDS: usize = 6;

/// Largest tile sizes of one side, in positions: (own rows, first-pass rows, raw rows).
pub(crate) fn largest(tiles: &[Tile], w: usize) -> (u64, u64, u64) {
    let w = w as u64;
    tiles.iter().fold((0, 0, 0), |(a, b, c), t| {
        (a.max(t.rows.len() as u64 * w), b.max(t.pass1_rows.len() as u64 * w), c.max(t.raw_rows.len() as u64 * w))
    })
}

/// The tile heights worth trying on a grid of `h` rows: ⌈h/n⌉ for n = 1..h, each once (taller
/// tiles in between would not need fewer tiles).
pub(crate) fn candidates(h: usize) -> Vec<usize> {
    let mut rows: Vec<usize> = (1..=h).map(|n| h.div_ceil(n)).collect();
    rows.dedup();
    rows
}

/// What the dispatches of one query tile × key tile weigh, in flops: a handful of small
/// dispatches at a few µs each, so that tiny tiles are not chosen when larger ones fit.
const PER_PAIR: f64 = 2e8;

impl Plan {
    /// The working buffers of the GPU path for these tiles (the list the GPU allocates), each
    /// as (name, 4-byte elements). Besides the per-tile panels, scores and accumulators, only
    /// L-sized vectors (the downscaled mask, the validity) depend on the image.
    pub fn working_buffers(g: &Geometry, query: &[Tile], keys: &[Tile]) -> Vec<(&'static str, u64)> {
        let (nq, nq1, nq_raw) = largest(query, g.wf);
        let (nk, nk1, nk_raw) = largest(keys, g.pw);
        let (d, p) = (g.match_len() as u64, g.raw_len() as u64);
        vec![
            ("downscaled mask", (g.hb * g.wb) as u64),
            ("mask validity", g.patches() as u64),
            ("query patches", nq_raw * d),
            ("matching patches", nk_raw * d),
            ("patch norms", nk_raw),
            // Raw scores, then the fused scores, then the paste weights.
            ("scores", (nq_raw * nk_raw).max(nq * nk)),
            // Empty without fuse (no first-pass rows).
            ("first fuse pass", nq1 * nk1),
            ("raw patches", nk * p),
            ("pasted columns", nq * p),
            ("softmax state", nq * SOFTMAX_STATE_WORDS as u64),
        ]
    }

    /// Every buffer the GPU path allocates for a call with this plan that inspects `inspected`
    /// queries: inputs, outputs and working buffers.
    pub fn buffers(&self, g: &Geometry, has_mask: bool, inspected: usize) -> Vec<BufferSpec> {
        let (hf, wf) = g.f_size;
        let (hb, wb) = g.b_size;
        let c = g.channels;
        let y = (g.batch * hf * wf * c) as u64;
        let nq = (g.batch * g.queries()) as u64;
        let rows = (g.batch * inspected * g.patches()) as u64;
        let spec = |name, floats: u64, kind| BufferSpec { name, bytes: 4 * floats.max(1), kind };
        let mask = if has_mask { (g.mask_batch * hb * wb) as u64 } else { 1 };
        let mut list = vec![
            spec("f", y, BufferKind::Input),
            spec("b", (g.batch * hb * wb * c) as u64, BufferKind::Input),
            spec("mask", mask, BufferKind::Input),
        ];
        let working = Self::working_buffers(g, &self.tiles, &self.keys);
        list.extend(working.into_iter().map(|(name, floats)| spec(name, floats, BufferKind::Working)));
        list.push(spec("index tables", self.index_len(g, inspected) as u64, BufferKind::Working));
        list.extend([
            spec("y", y, BufferKind::Output),
            spec("argmax", nq, BufferKind::Output),
            spec("attention mass", nq, BufferKind::Output),
            spec("attention rows", rows, BufferKind::Output),
            BufferSpec { name: "readback", bytes: readback_bytes(y, nq, rows, true), kind: BufferKind::Output },
        ]);
        list
    }

    /// Length of the GPU's u32 index tables: the NN index maps, then per tile (query and key)
    /// its raw rows, their slot map, its first-pass rows, their slot map and its rows, then the
    /// inspected queries' (row, destination) pairs.
    pub(crate) fn index_len(&self, g: &Geometry, inspected: usize) -> usize {
        let side = |tiles: &[Tile], h: usize| -> usize {
            tiles.iter().map(|t| t.raw_rows.len() + t.pass1_rows.len() + t.rows.len() + 2 * h).sum()
        };
        g.hf + g.wf + g.hb + g.wb + side(&self.tiles, g.hf) + side(&self.keys, g.ph) + 2 * inspected
    }

    /// The cheapest tiles whose working set fits `budget` bytes with no single buffer over
    /// `max_binding` bytes. Cost: the scores GEMM with the halo rows both sides recompute, the
    /// fuse passes, the panel gathers, the accumulator's rescaling and a fixed cost per query
    /// tile × key tile ([`PER_PAIR`]); the paste GEMM costs the same for every tiling.
    pub fn new(g: &Geometry, budget: u64, max_binding: u64) -> Result<Plan> {
        let query_needs = RowNeeds::new(g);
        let key_needs = RowNeeds::on_grid(g.fuse, g.ph, g.pw);
        let key_options: Vec<(usize, Vec<Tile>)> =
            candidates(g.ph).into_iter().map(|rows| (rows, key_needs.tiles(rows))).collect();
        let mut best: Option<(f64, Plan)> = None;
        // (working set, largest buffer) of the smallest tiles.
        let mut smallest = (u64::MAX, u64::MAX);
        for rows in candidates(g.hf) {
            let query = query_needs.tiles(rows);
            for (key_rows, keys) in &key_options {
                let buffers = Self::working_buffers(g, &query, keys);
                let bytes = 4 * buffers.iter().map(|b| b.1).sum::<u64>();
                let largest = 4 * buffers.iter().map(|b| b.1).max().unwrap_or(0);
                if bytes < smallest.0 {
                    smallest = (bytes, largest);
                }
                if bytes > budget || largest > max_binding {
                    continue;
                }
                let cost = Self::cost(g, &query, keys);
                if best.as_ref().is_none_or(|b| cost < b.0) {
                    let plan = Plan {
                        tiles: query.clone(),
                        keys: keys.clone(),
                        rows_per_tile: rows,
                        key_rows_per_tile: *key_rows,
                        tile_bytes: bytes,
                    };
                    best = Some((cost, plan));
                }
            }
        }
        match best {
            Some((_, plan)) => Ok(plan),
            None if smallest.0 <= budget => Err(Error::BufferTooLarge {
                name: "a working buffer of the smallest tiles",
                size: smallest.1,
                limit: max_binding,
                what: "storage binding",
            }),
            None => Err(Error::MemoryBudget { budget, needed: smallest.0 }),
        }
    }

    /// Estimated work in flop-equivalents (see [`Plan::new`]).
    fn cost(g: &Geometry, query: &[Tile], keys: &[Tile]) -> f64 {
        let sum =
            |tiles: &[Tile], w: usize, f: fn(&Tile) -> usize| -> f64 { tiles.iter().map(|t| (f(t) * w) as f64).sum() };
        let (q_raw, k_raw) = (sum(query, g.wf, |t| t.raw_rows.len()), sum(keys, g.pw, |t| t.raw_rows.len()));
        let (q1, k1) = (sum(query, g.wf, |t| t.pass1_rows.len()), sum(keys, g.pw, |t| t.pass1_rows.len()));
        let (tq, tk) = (query.len() as f64, keys.len() as f64);
        let (d, p) = (g.match_len() as f64, g.raw_len() as f64);
        let fk = g.fuse.map_or(0, |f| f.k) as f64;
        let scores = 2.0 * d * q_raw * k_raw;
        let fuse = 2.0 * fk * (q1 * k1 + (g.queries() * g.patches()) as f64);
        let gathers = 8.0 * tq * (k_raw * d + g.patches() as f64 * p);
        let rescale = 4.0 * tk * g.queries() as f64 * p;
        scores + fuse + gathers + rescale + PER_PAIR * tq * tk
    }

    /// Like [`Plan::new`], but `budget` is a target rather than a limit: if even the smallest
    /// tiles exceed it, the smallest tiles are used anyway (every buffer still within
    /// `max_binding`). This is what the default budget does, so that large inputs run without
    /// configuration.
    pub fn targeting(g: &Geometry, budget: u64, max_binding: u64) -> Result<Plan> {
        match Plan::new(g, budget, max_binding) {
            Err(Error::MemoryBudget { .. }) => Plan::new(g, u64::MAX, max_binding).map(|_| Plan::with_tiles(g, 1, 1)),
            other => other,
        }
    }

    /// Query tiles of exactly `rows_per_tile` rows (the last may have fewer) against one key
    /// tile of every patch, whatever they cost.
    pub fn with_rows(g: &Geometry, rows_per_tile: usize) -> Plan {
        Self::with_tiles(g, rows_per_tile, g.ph)
    }

    /// Query tiles of `rows_per_tile` rows and key tiles of `key_rows` patch rows (the last of
    /// each may have fewer), whatever they cost.
    pub fn with_tiles(g: &Geometry, rows_per_tile: usize, key_rows: usize) -> Plan {
        let rows_per_tile = rows_per_tile.clamp(1, g.hf);
        let key_rows = key_rows.clamp(1, g.ph);
        let tiles = RowNeeds::new(g).tiles(rows_per_tile);
        let keys = RowNeeds::on_grid(g.fuse, g.ph, g.pw).tiles(key_rows);
        let tile_bytes = 4 * Self::working_buffers(g, &tiles, &keys).iter().map(|b| b.1).sum::<u64>();
        Plan { tiles, keys, rows_per_tile, key_rows_per_tile: key_rows, tile_bytes }
    }

    /// The plan restricted to the query rows marked in `needed` (SPEC §R): tiles of at most
    /// `rows_per_tile` rows over its runs of consecutive rows, with their halos; the key tiles
    /// are unchanged.
    pub fn restricted(mut self, g: &Geometry, needed: &[bool]) -> Plan {
        self.tiles = RowNeeds::new(g).tiles_within(self.rows_per_tile, Some(needed));
        self.tile_bytes = 4 * Self::working_buffers(g, &self.tiles, &self.keys).iter().map(|b| b.1).sum::<u64>();
        self
    }
}

/// Bytes of the readback buffer: y, argmax, mass and the attention rows (element counts), then
/// two timestamps at an 8-byte boundary where the device has timestamp queries.
pub(crate) fn readback_bytes(y: u64, nq: u64, rows: u64, timestamps: bool) -> u64 {
    (4 * (y + 2 * nq + rows)).div_ceil(8) * 8 + if timestamps { 16 } else { 0 }
}

/// Rows reached from any position of row `i` of an `h×w` grid by the steps of `pass` (all
/// columns, all offsets).
fn rows_reached(fuse: Fuse, h: usize, w: usize, pass: FusePass, i: usize) -> Vec<usize> {
    let mut rows: Vec<usize> = Vec::new();
    for j in 0..w {
        for d in fuse.offsets() {
            if let Some((ni, _)) = Geometry::fuse_step(fuse.mode, pass, h, w, i, j, d) {
                rows.push(ni);
            }
        }
    }
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Per grid row: the first-pass rows its second fuse pass reads, and the raw rows a
/// first-pass row reads (empty without fuse). The same for the query grid (hf×wf) and, with key
/// tiles (SPEC §T2), for the patch grid (ph×pw): the fuse couples both alike.
pub(crate) struct RowNeeds {
    h: usize,
    fused: bool,
    pass2: Vec<Vec<usize>>,
    pass1: Vec<Vec<usize>>,
}

impl RowNeeds {
    fn new(g: &Geometry) -> RowNeeds {
        Self::on_grid(g.fuse, g.hf, g.wf)
    }

    /// The needs of every row of an `h×w` grid.
    pub(crate) fn on_grid(fuse: Option<Fuse>, h: usize, w: usize) -> RowNeeds {
        let Some(fuse) = fuse else {
            return RowNeeds { h, fused: false, pass2: Vec::new(), pass1: Vec::new() };
        };
        let (pass2, pass1) = (0..h)
            .map(|i| (rows_reached(fuse, h, w, FusePass::Cols, i), rows_reached(fuse, h, w, FusePass::Rows, i)))
            .unzip();
        RowNeeds { h, fused: true, pass2, pass1 }
    }

    /// Tiles of `rows_per_tile` rows (the last may have fewer) with their halos.
    pub(crate) fn tiles(&self, rows_per_tile: usize) -> Vec<Tile> {
        self.tiles_within(rows_per_tile, None)
    }

    /// Tiles of at most `rows_per_tile` rows over the runs of consecutive rows marked in
    /// `needed` (every row if `None`), with their halos (SPEC §R).
    pub(crate) fn tiles_within(&self, rows_per_tile: usize, needed: Option<&[bool]>) -> Vec<Tile> {
        let h = self.h;
        let is_needed = |i: usize| needed.is_none_or(|n| n[i]);
        let mut runs = Vec::new();
        let mut i = 0;
        while i < h {
            if !is_needed(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < h && is_needed(i) {
                i += 1;
            }
            runs.push(start..i);
        }
        let step = rows_per_tile.max(1);
        runs.into_iter()
            .flat_map(|run| run.clone().step_by(step).map(move |r0| r0..(r0 + step).min(run.end)))
            .map(|rows| self.tile(rows))
            .collect()
    }

    /// The tile of query rows `rows` with its halos.
    fn tile(&self, rows: std::ops::Range<usize>) -> Tile {
        if !self.fused {
            return Tile { raw_rows: rows.clone().collect(), rows, pass1_rows: Vec::new() };
        }
        let pass1_rows = union(self.h, rows.clone().map(|i| &self.pass2[i]));
        let raw_rows = union(self.h, pass1_rows.iter().map(|&z| &self.pass1[z]));
        Tile { rows, pass1_rows, raw_rows }
    }
}

/// The sorted union of row sets.
fn union<'a>(hf: usize, sets: impl Iterator<Item = &'a Vec<usize>>) -> Vec<usize> {
    let mut seen = vec![false; hf];
    for set in sets {
        for &r in set {
            seen[r] = true;
        }
    }
    (0..hf).filter(|&r| seen[r]).collect()
}
