//! Memory-bounded execution (SPEC §T): queries are processed in tiles of whole query rows, each
//! with the halo rows its fuse step reads. The CPU twin and the GPU run the same plan.

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

/// The tiles of one layer call and the bytes each needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Tiles in ascending row order; they cover `0..hf` exactly once.
    pub tiles: Vec<Tile>,
    /// Query rows per tile (the last may have fewer).
    pub rows_per_tile: usize,
    /// The largest working set of any tile, in bytes.
    pub tile_bytes: u64,
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

/// Bytes of the per-tile buffers: query patches and raw scores of the raw rows (the fused
/// scores and then the attention of the tile's rows reuse the raw scores' buffer), the first
/// fuse pass's rows, and the tile's pasted columns (all f32).
pub fn tile_bytes(g: &Geometry, tile_rows: usize, pass1_rows: usize, raw_rows: usize) -> [u64; 4] {
    let (wf, l) = (g.wf as u64, g.patches() as u64);
    [
        4 * raw_rows as u64 * wf * g.match_len() as u64, // query patches
        4 * raw_rows as u64 * wf * l,                    // raw scores → fused scores → attention
        4 * pass1_rows as u64 * wf * l,                  // first fuse pass
        4 * tile_rows as u64 * wf * g.raw_len() as u64,  // pasted columns
    ]
}

impl Plan {
    /// Splits the queries into the largest tiles whose working set fits `budget` bytes, with no
    /// single buffer over `max_binding` bytes.
    pub fn new(g: &Geometry, budget: u64, max_binding: u64) -> Result<Plan> {
        let needs = RowNeeds::new(g);
        let mut smallest = (u64::MAX, u64::MAX); // (working set, largest buffer) of the smallest tiles
        for rows_per_tile in (1..=g.hf).rev() {
            let (plan, largest) = Self::build(g, &needs, rows_per_tile);
            smallest = (plan.tile_bytes, largest);
            if plan.tile_bytes <= budget && largest <= max_binding {
                return Ok(plan);
            }
        }
        if smallest.0 <= budget {
            return Err(Error::BufferTooLarge {
                name: "score rows of a one-row tile",
                size: smallest.1,
                limit: max_binding,
                what: "storage binding",
            });
        }
        Err(Error::MemoryBudget { budget, needed: smallest.0 })
    }

    /// Like [`Plan::new`], but `budget` is a target rather than a limit: if even one-row tiles
    /// exceed it, one-row tiles are used anyway (every buffer still within `max_binding`).
    /// This is what the default budget does, so that large inputs run without configuration.
    pub fn targeting(g: &Geometry, budget: u64, max_binding: u64) -> Result<Plan> {
        match Plan::new(g, budget, max_binding) {
            Err(Error::MemoryBudget { .. }) => {
                let (plan, largest) = Self::build(g, &RowNeeds::new(g), 1);
                if largest > max_binding {
                    return Err(Error::BufferTooLarge {
                        name: "score rows of a one-row tile",
                        size: largest,
                        limit: max_binding,
                        what: "storage binding",
                    });
                }
                Ok(plan)
            }
            other => other,
        }
    }

    /// Tiles of exactly `rows_per_tile` query rows (the last may have fewer), whatever they cost.
    pub fn with_rows(g: &Geometry, rows_per_tile: usize) -> Plan {
        Self::build(g, &RowNeeds::new(g), rows_per_tile.clamp(1, g.hf)).0
    }

    /// The plan and its largest single buffer.
    fn build(g: &Geometry, needs: &RowNeeds, rows_per_tile: usize) -> (Plan, u64) {
        let tiles = needs.tiles(rows_per_tile);
        let sizes: Vec<[u64; 4]> =
            tiles.iter().map(|t| tile_bytes(g, t.rows.len(), t.pass1_rows.len(), t.raw_rows.len())).collect();
        let total = sizes.iter().map(|s| s.iter().sum::<u64>()).max().unwrap_or(0);
        let largest = sizes.iter().flat_map(|s| s.iter().copied()).max().unwrap_or(0);
        (Plan { tiles, rows_per_tile, tile_bytes: total }, largest)
    }
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
        let h = self.h;
        (0..h)
            .step_by(rows_per_tile.max(1))
            .map(|r0| {
                let r1 = (r0 + rows_per_tile).min(h);
                if !self.fused {
                    return Tile { rows: r0..r1, pass1_rows: Vec::new(), raw_rows: (r0..r1).collect() };
                }
                let pass1_rows = union(h, (r0..r1).map(|i| &self.pass2[i]));
                let raw_rows = union(h, pass1_rows.iter().map(|&z| &self.pass1[z]));
                Tile { rows: r0..r1, pass1_rows, raw_rows }
            })
            .collect()
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
