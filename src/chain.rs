//! The chain of stages (SPEC §2), written once for every backend.
//!
//! [`run`] walks the batch items, their b-side stages, the query tiles of the [`Plan`] and the
//! stages of each tile, in the order the layer computes them, every query against all patches;
//! a backend implements [`Stages`], one method per stage. The twin computes it in f64
//! (`reference::forward`), and a test records the names to check the order. The GPU and CPU
//! backends run the same stages over query tiles × key tiles with an online softmax (SPEC §T2:
//! `gpu::forward`, `cpu`), and are tested against the twin.

use crate::error::Result;
use crate::geometry::{FusePass, Geometry};
use crate::plan::{Plan, Tile};

/// Which input a downscale reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The queries' image f.
    F,
    /// The patches' image b.
    B,
    /// The mask of b.
    Mask,
}

/// A query tile as the stages see it: its place in the plan and its rows.
#[derive(Clone, Copy, Debug)]
pub struct TileAt<'a> {
    /// Index in [`Plan::tiles`].
    pub index: usize,
    /// The tile.
    pub tile: &'a Tile,
}

/// One method per stage of the chain. `item` is the batch item; each method reads what the
/// stages before it wrote, in the buffers the backend keeps (named as in the shaders:
/// `downscaled_f`, `matching_patches`, `raw_scores`, `attention`, `pasted_columns`, `y`, …).
pub trait Stages {
    /// Align-corners NN downscale of an input of batch item `item` (SPEC §2.5); for the mask,
    /// `item` is the mask's own batch index.
    fn downscale(&mut self, input: Input, item: usize) -> Result<()>;
    /// Normalised matching patches of `downscaled_b`, and their norms (SPEC §2.6).
    fn matching_patches(&mut self) -> Result<()>;
    /// Validity of each patch from `downscaled_mask` (SPEC §2.7).
    fn mask_validity(&mut self) -> Result<()>;
    /// Raw (paste) patches of b for batch item `item` (SPEC §2.4).
    fn raw_patches(&mut self, item: usize) -> Result<()>;
    /// Query patches of the tile's `raw_rows` (SPEC §2.7).
    fn query_patches(&mut self, tile: TileAt) -> Result<()>;
    /// Raw scores: query patches · matching patchesᵀ (SPEC §2.7).
    fn scores(&mut self, tile: TileAt) -> Result<()>;
    /// One fuse pass (SPEC §2.8): `Rows` from the raw scores into the first pass's rows,
    /// `Cols` from there into the tile's attention rows.
    fn fuse(&mut self, tile: TileAt, pass: FusePass) -> Result<()>;
    /// Masked scaled softmax of the tile's rows, in place, with argmax and mass (SPEC §2.9).
    fn softmax(&mut self, tile: TileAt, item: usize) -> Result<()>;
    /// Copies the attention rows of the inspected queries in the tile (SPEC §E).
    fn attention_rows(&mut self, tile: TileAt, item: usize) -> Result<()>;
    /// Pasted columns: attention · raw patches (SPEC §2.10).
    fn paste(&mut self, tile: TileAt) -> Result<()>;
    /// Adds the tile's pasted columns into y (SPEC §2.11).
    fn fold(&mut self, tile: TileAt, item: usize) -> Result<()>;
    /// The tile is complete (a backend may submit, or report progress).
    fn end_tile(&mut self, tile: TileAt, item: usize) -> Result<()>;
    /// Overlap normalisation of y for batch item `item` (SPEC §2.11, §E).
    fn normalize(&mut self, item: usize) -> Result<()>;
}

/// Runs the chain over every batch item and tile. Without a mask the backend's validity stays
/// all ones; a shared mask is downscaled once, a per-sample mask once per item.
pub fn run(
    stages: &mut impl Stages,
    g: &Geometry,
    plan: &Plan,
    has_mask: bool,
    queries: &[(usize, usize)],
) -> Result<()> {
    for item in 0..g.batch {
        stages.downscale(Input::F, item)?;
        stages.downscale(Input::B, item)?;
        stages.matching_patches()?;
        if has_mask && (g.mask_batch > 1 || item == 0) {
            stages.downscale(Input::Mask, if g.mask_batch > 1 { item } else { 0 })?;
            stages.mask_validity()?;
        }
        stages.raw_patches(item)?;
        for (index, tile) in plan.tiles.iter().enumerate() {
            let at = TileAt { index, tile };
            stages.query_patches(at)?;
            stages.scores(at)?;
            if g.fuse.is_some() {
                stages.fuse(at, FusePass::Rows)?;
                stages.fuse(at, FusePass::Cols)?;
            }
            stages.softmax(at, item)?;
            if queries.iter().any(|(i, _)| tile.rows.contains(i)) {
                stages.attention_rows(at, item)?;
            }
            stages.paste(at)?;
            stages.fold(at, item)?;
            stages.end_tile(at, item)?;
        }
        stages.normalize(item)?;
    }
    Ok(())
}

/// The (row in the tile's attention, index in `queries`) of each inspected query in `tile`.
pub fn inspected_in(tile: &Tile, wf: usize, queries: &[(usize, usize)]) -> Vec<(u32, u32)> {
    queries
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| tile.rows.contains(i))
        .map(|(q, &(i, j))| (((i - tile.rows.start) * wf + j) as u32, q as u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Params;

    /// Records the stages' names.
    struct Trace(Vec<String>);

    impl Stages for Trace {
        fn downscale(&mut self, input: Input, item: usize) -> Result<()> {
            self.0.push(format!("downscale {input:?} {item}"));
            Ok(())
        }
        fn matching_patches(&mut self) -> Result<()> {
            self.0.push("matching_patches".into());
            Ok(())
        }
        fn mask_validity(&mut self) -> Result<()> {
            self.0.push("mask_validity".into());
            Ok(())
        }
        fn raw_patches(&mut self, _: usize) -> Result<()> {
            self.0.push("raw_patches".into());
            Ok(())
        }
        fn query_patches(&mut self, t: TileAt) -> Result<()> {
            self.0.push(format!("query_patches {}", t.index));
            Ok(())
        }
        fn scores(&mut self, _: TileAt) -> Result<()> {
            self.0.push("scores".into());
            Ok(())
        }
        fn fuse(&mut self, _: TileAt, pass: FusePass) -> Result<()> {
            self.0.push(format!("fuse {pass:?}"));
            Ok(())
        }
        fn softmax(&mut self, _: TileAt, _: usize) -> Result<()> {
            self.0.push("softmax".into());
            Ok(())
        }
        fn attention_rows(&mut self, _: TileAt, _: usize) -> Result<()> {
            self.0.push("attention_rows".into());
            Ok(())
        }
        fn paste(&mut self, _: TileAt) -> Result<()> {
            self.0.push("paste".into());
            Ok(())
        }
        fn fold(&mut self, _: TileAt, _: usize) -> Result<()> {
            self.0.push("fold".into());
            Ok(())
        }
        fn end_tile(&mut self, _: TileAt, _: usize) -> Result<()> {
            self.0.push("end_tile".into());
            Ok(())
        }
        fn normalize(&mut self, item: usize) -> Result<()> {
            self.0.push(format!("normalize {item}"));
            Ok(())
        }
    }

    #[test]
    fn stages_run_in_the_spec_order() {
        let params = Params { rate: 2, ..Default::default() };
        // 2 items, a shared mask, 8×8 queries in tiles of 4 rows, one inspected query in row 5.
        let g = Geometry::new(&params, [2, 16, 16, 3], [2, 16, 16, 3], Some([1, 16, 16, 1])).unwrap();
        let plan = Plan::with_rows(&g, 4);
        assert_eq!(plan.tiles.len(), 2);
        let mut trace = Trace(Vec::new());
        run(&mut trace, &g, &plan, true, &[(5, 1)]).unwrap();
        let tile = |t: usize, inspected: bool| {
            let mut v = vec![format!("query_patches {t}"), "scores".into(), "fuse Rows".into(), "fuse Cols".into()];
            v.push("softmax".into());
            if inspected {
                v.push("attention_rows".into());
            }
            v.extend(["paste".into(), "fold".into(), "end_tile".into()]);
            v
        };
        let mut want: Vec<String> = vec!["downscale F 0".into(), "downscale B 0".into(), "matching_patches".into()];
        want.extend(["downscale Mask 0".into(), "mask_validity".into(), "raw_patches".into()]);
        want.extend(tile(0, false));
        want.extend(tile(1, true));
        want.push("normalize 0".into());
        // The shared mask is not downscaled again for item 1.
        want.extend(["downscale F 1".into(), "downscale B 1".into(), "matching_patches".into(), "raw_patches".into()]);
        want.extend(tile(0, false));
        want.extend(tile(1, true));
        want.push("normalize 1".into());
        assert_eq!(trace.0, want);
    }

    #[test]
    fn inspected_queries_map_to_rows_of_their_tile() {
        let tile = Tile { rows: 4..8, pass1_rows: vec![], raw_rows: vec![] };
        let got = inspected_in(&tile, 10, &[(0, 0), (5, 3), (7, 9), (4, 0), (8, 0)]);
        assert_eq!(got, vec![(13, 1), (39, 2), (0, 3)]);
    }
}
