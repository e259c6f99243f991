//! The GPU's output against the CPU twin's, for whole-layer tests.
//!
//! Argmax criterion (GPU f32 vs twin f64). The twin's pre-softmax scores are recomputed here
//! from its stage functions ([`twin_rows`]). A query may pick a different patch on the GPU only
//! if the two picks are a near-tie for f32: their twin fused scores differ by at most
//! 1e-4 · max(|s_twin|, |s_gpu|) (+1e-7), or the twin's best attention in that row is below
//! f32's smallest normal number (f32 cannot tell it from 0). Masked patches count as −∞ (they get
//! exactly 0 attention). Overall at least 99 % of the queries must agree.
//!
//! Tolerances: y within 1e-5·max|y| absolute + 1e-4 relative, attention mass within 1e-5.

use contextual_attention::geometry::FusePass;
use contextual_attention::plan::{Plan, Tile};
use contextual_attention::{reference, Geometry, Output, Params, Tensor};

use super::{assert_close, max_abs, max_abs_diff, to_f64};

/// The largest |Δ| / (atol + rtol·|want|): how much of an `assert_close` tolerance was used.
pub fn tolerance_used(got: &[f32], want: &[f32], atol: f64, rtol: f64) -> f64 {
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs() / (atol + rtol * (w as f64).abs())))
}

/// Per query (all batch items, row-major), the twin's fused pre-softmax scores made "effective"
/// (masked patches −∞, since they get exactly 0 attention in both maskings) and its attention.
pub struct Twin {
    /// Patches per query row.
    pub l: usize,
    /// `[B·nq·L]`.
    pub eff: Vec<f64>,
    /// `[B·nq·L]`.
    pub att: Vec<f64>,
    pub argmax: Vec<u32>,
    pub mass: Vec<f64>,
}

pub fn twin_rows(p: &Params, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Twin {
    let g = Geometry::new(p, f.shape(), b.shape(), mask.map(|m| m.shape())).unwrap();
    let plan = Plan::with_rows(&g, g.hf);
    assert_eq!(plan.tiles.len(), 1);
    let tile = &plan.tiles[0];
    let (l, c) = (g.patches(), g.channels);
    let as64 = |t: &Tensor| -> Vec<f64> { t.data().iter().map(|&v| v as f64).collect() };
    let mut out = Twin { l, eff: Vec::new(), att: Vec::new(), argmax: Vec::new(), mass: Vec::new() };
    for n in 0..g.batch {
        let fp = reference::downscale(&as64(&f.item(n)), g.f_size.1, c, &g.f_rows, &g.f_cols);
        let bp = reference::downscale(&as64(&b.item(n)), g.b_size.1, c, &g.b_rows, &g.b_cols);
        let (pb, _) = reference::matching_patches(&bp, &g);
        let mm = match mask {
            Some(m) => {
                let mi = m.item(if m.shape()[0] == 1 { 0 } else { n });
                let mp = reference::downscale(&as64(&mi), g.b_size.1, 1, &g.b_rows, &g.b_cols);
                reference::mask_validity(&mp, &g)
            }
            None => vec![1.0; l],
        };
        let pf = reference::query_patches(&fp, &g, &tile.raw_rows);
        let raw = reference::gemm_nt(&pf, &pb, tile.raw_rows.len() * g.wf, l, g.match_len());
        let fused = if g.fuse.is_some() {
            let p1 =
                reference::fuse_pass(&raw, &Tile::slot_map(&tile.raw_rows, g.hf), &tile.pass1_rows, &g, FusePass::Rows);
            let rows: Vec<usize> = (0..g.hf).collect();
            reference::fuse_pass(&p1, &Tile::slot_map(&tile.pass1_rows, g.hf), &rows, &g, FusePass::Cols)
        } else {
            raw
        };
        assert_eq!(fused.len(), g.queries() * l);
        out.eff.extend(fused.iter().enumerate().map(|(i, &s)| if mm[i % l] != 0.0 { s } else { f64::NEG_INFINITY }));
        let mut att = fused;
        let (a, m) = reference::softmax(&mut att, &mm, l, p.softmax_scale as f64, p.masking);
        out.att.extend(att);
        out.argmax.extend(a);
        out.mass.extend(m);
    }
    out
}

/// Checks the GPU's argmax against the twin's with the near-tie criterion of the module header.
/// Returns (agreeing queries, queries).
pub fn check_argmax(what: &str, gpu: &[u32], twin: &Twin) -> (usize, usize) {
    assert_eq!(gpu.len(), twin.argmax.len(), "{what}: argmax lengths");
    let l = twin.l;
    let mut agree = 0;
    for (q, (&g, &t)) in gpu.iter().zip(&twin.argmax).enumerate() {
        if g == t {
            agree += 1;
            continue;
        }
        assert!((g as usize) < l, "{what}: query {q}: GPU argmax {g} out of range (L = {l})");
        let (st, sg) = (twin.eff[q * l + t as usize], twin.eff[q * l + g as usize]);
        let best_att = twin.att[q * l + t as usize];
        let near = sg.is_finite() && st - sg <= 1e-4 * st.abs().max(sg.abs()) + 1e-7;
        let underflow = best_att < f32::MIN_POSITIVE as f64;
        assert!(
            near || underflow,
            "{what}: query {q}: GPU picks patch {g} (twin score {sg}), twin picks {t} (score {st}, attention {best_att}): not a near-tie"
        );
    }
    (agree, gpu.len())
}

/// GPU output against the twin: y, mass, argmax (criterion above). Returns (max|Δy|, max|Δmass|, agree, total).
pub fn compare(what: &str, gpu: &Output, cpu: &Output, twin: &Twin) -> (f64, f64, usize, usize) {
    compare_extra(what, gpu, cpu, twin, None)
}

/// [`compare`] with, optionally, an extra absolute tolerance per element of y.
pub fn compare_extra(
    what: &str,
    gpu: &Output,
    cpu: &Output,
    twin: &Twin,
    extra: Option<&[f64]>,
) -> (f64, f64, usize, usize) {
    assert_eq!(gpu.y.shape(), cpu.y.shape(), "{what}: y shapes");
    assert_eq!((gpu.grid, gpu.patch_grid), (cpu.grid, cpu.patch_grid), "{what}: grids");
    let ymax = max_abs(cpu.y.data());
    let (atol, rtol) = (1e-5 * ymax.max(1e-30), 1e-4);
    match extra {
        None => {
            assert_close(&format!("{what}: y"), gpu.y.data(), &to_f64(cpu.y.data()), atol, rtol);
            let used = tolerance_used(gpu.y.data(), cpu.y.data(), atol, rtol);
            if used > 0.25 {
                eprintln!("{what}: y used {:.0} % of its tolerance", 100.0 * used);
            }
        }
        Some(extra) => {
            assert_eq!(extra.len(), cpu.y.data().len());
            let (mut bad, mut worst) = (0, (0usize, 0.0f64));
            for (i, ((&g, &w), &e)) in gpu.y.data().iter().zip(cpu.y.data()).zip(extra).enumerate() {
                let d = (g as f64 - w as f64).abs();
                let d = if d.is_nan() { f64::INFINITY } else { d };
                let used = d / (atol + rtol * (w as f64).abs() + e);
                if used > 1.0 {
                    bad += 1;
                }
                if used > worst.1 {
                    worst = (i, used);
                }
            }
            let i = worst.0;
            assert!(
                bad == 0,
                "{what}: y: {bad} elements off; worst at {i}: got {} want {} (atol {atol:e} + rtol {rtol:e} + extra {:e})",
                gpu.y.data()[i],
                cpu.y.data()[i],
                extra[i]
            );
        }
    }
    assert_close(&format!("{what}: mass"), &gpu.mass, &to_f64(&cpu.mass), 1e-5, 0.0);
    assert!(gpu.y.data().iter().chain(&gpu.mass).all(|v| v.is_finite()), "{what}: NaN or Inf on the GPU");
    // The twin's own stages and the twin layer agree (guards the helper).
    assert_eq!(cpu.argmax, twin.argmax, "{what}: twin layer vs twin stages: argmax");
    assert_close(&format!("{what}: twin mass vs stages"), &cpu.mass, &twin.mass, 1e-6, 0.0);
    let (agree, total) = check_argmax(what, &gpu.argmax, twin);
    (max_abs_diff(gpu.y.data(), cpu.y.data()), max_abs_diff(&gpu.mass, &cpu.mass), agree, total)
}
