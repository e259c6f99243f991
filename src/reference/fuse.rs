//! Stage `fuse` (SPEC §2.8); GPU: `shaders/fuse.wgsl`.

use super::for_each_row;
use crate::geometry::{FusePass, Geometry};

/// One fuse pass (SPEC §2.8): for every output row `out_rows[o]`, column j and patch β,
/// the sum over d ∈ D of the input at the query and the patch each stepped by d on its own
/// grid. `in_slots[row]` is the input slot of a grid row (`u32::MAX` if the input lacks it,
/// which a correct plan never asks for).
pub fn fuse_pass(input: &[f64], in_slots: &[u32], out_rows: &[usize], g: &Geometry, pass: FusePass) -> Vec<f64> {
    let fuse = g.fuse.expect("fuse_pass without fuse");
    let l = g.patches();
    let mut out = vec![0.0; out_rows.len() * g.wf * l];
    // One output row per query (o, j).
    for_each_row(&mut out, l, |q, row| {
        let (i, j) = (out_rows[q / g.wf], q % g.wf);
        for u in 0..g.ph {
            for v in 0..g.pw {
                let mut sum = 0.0;
                for d in fuse.offsets() {
                    let qs = Geometry::fuse_step(fuse.mode, pass, g.hf, g.wf, i, j, d);
                    let ps = Geometry::fuse_step(fuse.mode, pass, g.ph, g.pw, u, v, d);
                    if let (Some((qi, qj)), Some((pu, pv))) = (qs, ps) {
                        let slot = in_slots[qi];
                        assert!(slot != u32::MAX, "fuse pass reads row {qi} that the tile did not compute");
                        sum += input[(slot as usize * g.wf + qj) * l + pu * g.pw + pv];
                    }
                }
                row[u * g.pw + v] = sum;
            }
        }
    });
    out
}
