//! Layer-level tests: the whole layer on the GPU against its CPU twin over a grid of parameters,
//! the seed's identity experiment (SPEC §E), tiling invariance (SPEC §T, §9.12), a model-sized
//! smoke test (SPEC §9.13), `forward_async` and the buffer cache, and the demo's semantics
//! (SPEC §9.14).
//!
//! Oracles: the CPU twin (f64) for every GPU result; for the twin itself, expectations computed
//! independently here from SPEC formulas: the whole layer re-derived in f64 ([`spec_layer`],
//! run over the same grid), coverage counts, the identity experiment, the demo's one-hot paste,
//! exact zeros where everything is masked.
//!
//! Argmax criterion (GPU f32 vs twin f64). The twin's pre-softmax scores are recomputed here
//! from its stage functions ([`twin_rows`]). A query may pick a different patch on the GPU only
//! if the two picks are a near-tie for f32: their twin fused scores differ by at most
//! 1e-4 · max(|s_twin|, |s_gpu|) (+1e-7), or the twin's best attention in that row is below
//! f32's smallest normal number (f32 cannot tell it from 0). Masked patches count as −∞ (they get
//! exactly 0 attention). Overall at least 99 % of the queries must agree.
//!
//! Tolerances: y within 1e-5·max|y| absolute + 1e-4 relative, attention mass within 1e-5. The
//! demo (0–255 inputs, logits of order 10⁴) adds, per pixel, a first-order f32 term that vanishes
//! for one-hot queries (see `demo_semantics`).
//! Every test prints its measured errors and time (`cargo test --test layer -- --nocapture`).

mod common;

use std::time::Instant;

use common::{assert_close, to_f64, Rng};
use contextual_attention::geometry::FusePass;
use contextual_attention::plan::{Plan, Tile};
use contextual_attention::{
    reference, ContextualAttention, FuseMode, Geometry, Masking, Output, Overlap, Params, Tensor,
};

// ---------------------------------------------------------------------------------------------
// Independent helpers (SPEC formulas, not the library's)
// ---------------------------------------------------------------------------------------------

/// TF "SAME" padding before, for length n, kernel k, stride s (SPEC §2.2).
fn same_pad_before(n: usize, k: usize, s: usize) -> usize {
    let out = n.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(n);
    total / 2
}

/// How many query positions (i in 0..n_out/r) paste their K×K patch onto each output row
/// P in 0..n_out (SPEC §2.11: 0 ≤ P − r·i + π < K with π the SAME pad before of (n_out, K, r)).
fn coverage(n_out: usize, r: usize, k: usize) -> Vec<usize> {
    let pi = same_pad_before(n_out, k, r) as isize;
    (0..n_out as isize)
        .map(|p| (0..(n_out / r) as isize).filter(|&i| (0..k as isize).contains(&(p - r as isize * i + pi))).count())
        .collect()
}

/// b̃(n, y, x, c): b with zero padding.
fn b_tilde(b: &Tensor, n: usize, y: isize, x: isize, c: usize) -> f64 {
    let s = b.shape();
    if y < 0 || x < 0 || y >= s[1] as isize || x >= s[2] as isize {
        0.0
    } else {
        b.at(n, y as usize, x as usize, c) as f64
    }
}

/// Concatenates per-item tensors along the batch.
fn concat(items: &[Tensor]) -> Tensor {
    let s = items[0].shape();
    let data: Vec<f32> = items.iter().flat_map(|t| t.data().iter().copied()).collect();
    Tensor::new([items.len(), s[1], s[2], s[3]], data).unwrap()
}

/// The smallest fraction, over the mask's items, of b's patches that the mask leaves usable
/// (SPEC §2.7), with the library's index maps: used only to choose test inputs.
fn valid_fraction(p: &Params, b_shape: [usize; 4], mask: &Tensor) -> f64 {
    let g = Geometry::new(p, b_shape, b_shape, Some(mask.shape())).unwrap();
    (0..mask.shape()[0])
        .map(|n| {
            let m: Vec<f64> = mask.item(n).data().iter().map(|&v| v as f64).collect();
            let mp = reference::downscale(&m, g.b_size.1, 1, &g.b_rows, &g.b_cols);
            let mm = reference::mask_validity(&mp, &g);
            mm.iter().sum::<f64>() / mm.len() as f64
        })
        .fold(1.0, f64::min)
}

/// A random rectangular hole ([`Rng::hole`], one item) that leaves at least 30 % of b's patches
/// usable, so that masked comparisons are not trivially all zero.
fn usable_hole(rng: &mut Rng, p: &Params, b_shape: [usize; 4]) -> Tensor {
    loop {
        let m = rng.hole(1, b_shape[1], b_shape[2]);
        if valid_fraction(p, b_shape, &m) >= 0.3 {
            return m;
        }
    }
}

/// Approximately N(0,1) (Box–Muller).
fn normal(rng: &mut Rng) -> f32 {
    let u1 = rng.uniform(1e-7, 1.0) as f64;
    let u2 = rng.uniform(0.0, 1.0) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The largest |Δ| / (atol + rtol·|want|): how much of an `assert_close` tolerance was used.
fn tolerance_used(got: &[f32], want: &[f32], atol: f64, rtol: f64) -> f64 {
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs() / (atol + rtol * (w as f64).abs())))
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// ---------------------------------------------------------------------------------------------
// The whole layer once more, straight from the SPEC's formulas (§2.4–§2.12, §E), in f64 and
// without the library's Geometry, to check the twin itself (GPU and twin share Geometry).
// ---------------------------------------------------------------------------------------------

/// TF-1 align-corners nearest-neighbour source indices (SPEC §2.5), in f32 as the original.
fn spec_nn(input: usize, output: usize) -> Vec<usize> {
    let scale = if output > 1 { (input as f32 - 1.0) / (output as f32 - 1.0) } else { input as f32 / output as f32 };
    (0..output).map(|o| ((o as f32 * scale).round() as usize).min(input - 1)).collect()
}

struct Spec {
    y: Vec<f64>,
    argmax: Vec<u32>,
    mass: Vec<f64>,
}

fn spec_layer(p: &Params, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Spec {
    let [bn, hff, wff, c] = f.shape();
    let [_, hbf, wbf, _] = b.shape();
    let (r, s, k, kk) = (p.rate, p.stride, p.ksize, p.paste_kernel.unwrap_or(2 * p.rate));
    let (hf, wf, hb, wb) = (hff / r, wff / r, hbf / r, wbf / r);
    let (ph, pw) = (hb.div_ceil(s), wb.div_ceil(s));
    let l = ph * pw;
    let (fr, fc, br, bc) = (spec_nn(hff, hf), spec_nn(wff, wf), spec_nn(hbf, hb), spec_nn(wbf, wb));
    let (qy, qx) = (same_pad_before(hf, k, 1) as isize, same_pad_before(wf, k, 1) as isize);
    let (my, mx) = (same_pad_before(hb, k, s) as isize, same_pad_before(wb, k, s) as isize);
    let (ry, rx) = (same_pad_before(hbf, kk, r * s) as isize, same_pad_before(wbf, kk, r * s) as isize);
    let (py_, px_) = (same_pad_before(hff, kk, r) as isize, same_pad_before(wff, kk, r) as isize);
    let lam = p.softmax_scale as f64;
    let mut out = Spec { y: Vec::new(), argmax: Vec::new(), mass: Vec::new() };
    for n in 0..bn {
        // Downscaled f′, b′, m′ with zero padding.
        let fp = |i: isize, j: isize, ch: usize| -> f64 {
            if i < 0 || j < 0 || i >= hf as isize || j >= wf as isize {
                0.0
            } else {
                f.at(n, fr[i as usize], fc[j as usize], ch) as f64
            }
        };
        let bp = |i: isize, j: isize, ch: usize| -> f64 {
            if i < 0 || j < 0 || i >= hb as isize || j >= wb as isize {
                0.0
            } else {
                b.at(n, br[i as usize], bc[j as usize], ch) as f64
            }
        };
        let mp = |i: isize, j: isize| -> f64 {
            match mask {
                Some(m) if i >= 0 && j >= 0 && i < hb as isize && j < wb as isize => {
                    m.at(if m.shape()[0] == 1 { 0 } else { n }, br[i as usize], bc[j as usize], 0) as f64
                }
                _ => 0.0,
            }
        };
        // Raw scores S[x][l] (§2.6, §2.7).
        let mut sc = vec![0.0f64; hf * wf * l];
        let mut mm = vec![0.0f64; l];
        for u in 0..ph {
            for v in 0..pw {
                let (y0, x0) = ((u * s) as isize - my, (v * s) as isize - mx);
                let mut norm2 = 0.0;
                let mut msum = 0.0;
                for dy in 0..k as isize {
                    for dx in 0..k as isize {
                        msum += mp(y0 + dy, x0 + dx);
                        for ch in 0..c {
                            norm2 += bp(y0 + dy, x0 + dx, ch).powi(2);
                        }
                    }
                }
                let denom = norm2.sqrt().max(1e-4);
                mm[u * pw + v] = (msum == 0.0) as u8 as f64;
                for i in 0..hf {
                    for j in 0..wf {
                        let mut dot = 0.0;
                        for dy in 0..k as isize {
                            for dx in 0..k as isize {
                                for ch in 0..c {
                                    dot +=
                                        fp(i as isize + dy - qy, j as isize + dx - qx, ch) * bp(y0 + dy, x0 + dx, ch);
                                }
                            }
                        }
                        sc[(i * wf + j) * l + u * pw + v] = dot / denom;
                    }
                }
            }
        }
        // Fuse (§2.8 closed form; §E spatial).
        let at = |i: usize, j: usize, u: usize, v: usize| sc[(i * wf + j) * l + u * pw + v];
        let fused: Vec<f64> = if !p.fuse {
            sc.clone()
        } else {
            let pp = ((p.fuse_k - 1) / 2) as isize;
            let dset: Vec<isize> = (0..p.fuse_k as isize).map(|t| t - pp).collect();
            // Flat steps: R (row-major) and C (column-major) on an h×w grid.
            let rstep = |h: usize, w: usize, (i, j): (usize, usize), d: isize| -> Option<(usize, usize)> {
                let a = (i * w + j) as isize + d;
                (a >= 0 && a < (h * w) as isize).then(|| (a as usize / w, a as usize % w))
            };
            let cstep = |h: usize, w: usize, (i, j): (usize, usize), e: isize| -> Option<(usize, usize)> {
                let a = (j * h + i) as isize + e;
                (a >= 0 && a < (h * w) as isize).then(|| (a as usize % h, a as usize / h))
            };
            let mut fz = vec![0.0f64; hf * wf * l];
            for i in 0..hf {
                for j in 0..wf {
                    for u in 0..ph {
                        for v in 0..pw {
                            let mut sum = 0.0;
                            for &e in &dset {
                                for &d in &dset {
                                    let term = match p.fuse_mode {
                                        FuseMode::Wrap => {
                                            let x = cstep(hf, wf, (i, j), e).and_then(|z| rstep(hf, wf, z, d));
                                            let y = cstep(ph, pw, (u, v), e).and_then(|z| rstep(ph, pw, z, d));
                                            x.zip(y).map(|((a, bq), (cu, cv))| at(a, bq, cu, cv))
                                        }
                                        FuseMode::Spatial => {
                                            let (a, bq, cu, cv) =
                                                (i as isize + e, j as isize + d, u as isize + e, v as isize + d);
                                            let ok = a >= 0
                                                && bq >= 0
                                                && cu >= 0
                                                && cv >= 0
                                                && a < hf as isize
                                                && bq < wf as isize
                                                && cu < ph as isize
                                                && cv < pw as isize;
                                            ok.then(|| at(a as usize, bq as usize, cu as usize, cv as usize))
                                        }
                                    };
                                    sum += term.unwrap_or(0.0);
                                }
                            }
                            fz[(i * wf + j) * l + u * pw + v] = sum;
                        }
                    }
                }
            }
            fz
        };
        // Masked scaled softmax (§2.9, §E exclude), argmax (first on ties), mass.
        let mut att = vec![0.0f64; hf * wf * l];
        for q in 0..hf * wf {
            let row = &fused[q * l..(q + 1) * l];
            let z: Vec<Option<f64>> = (0..l)
                .map(|t| match p.masking {
                    Masking::ZeroLogit => Some(lam * mm[t] * row[t]),
                    Masking::Exclude => (mm[t] != 0.0).then(|| lam * row[t]),
                })
                .collect();
            let zmax = z.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let (mut best, mut besta, mut total) = (0u32, f64::NEG_INFINITY, 0.0);
            if zmax > f64::NEG_INFINITY {
                let den: f64 = z.iter().flatten().map(|&v| (v - zmax).exp()).sum();
                for t in 0..l {
                    let a = z[t].map_or(0.0, |v| mm[t] * (v - zmax).exp() / den);
                    att[q * l + t] = a;
                    total += a;
                    if a > besta {
                        besta = a;
                        best = t as u32;
                    }
                }
            }
            out.argmax.push(best);
            out.mass.push(total);
        }
        // Paste (§2.4, §2.11, §E: raw patches at stride r·s, K×K, overlap divisor).
        let raw = |t: usize, ty: isize, tx: isize, ch: usize| -> f64 {
            let (u, v) = ((t / pw) as isize, (t % pw) as isize);
            b_tilde(b, n, u * (r * s) as isize + ty - ry, v * (r * s) as isize + tx - rx, ch)
        };
        for pyy in 0..hff as isize {
            for pxx in 0..wff as isize {
                let cover: Vec<(usize, usize)> = (0..hf)
                    .flat_map(|i| (0..wf).map(move |j| (i, j)))
                    .filter(|&(i, j)| {
                        (0..kk as isize).contains(&(pyy - (r * i) as isize + py_))
                            && (0..kk as isize).contains(&(pxx - (r * j) as isize + px_))
                    })
                    .collect();
                let div = match p.overlap {
                    Overlap::Quarter => (kk * kk) as f64 / (r * r) as f64,
                    Overlap::Exact => cover.len() as f64,
                };
                for ch in 0..c {
                    let mut acc = 0.0;
                    for &(i, j) in &cover {
                        let (ty, tx) = (pyy - (r * i) as isize + py_, pxx - (r * j) as isize + px_);
                        let q = i * wf + j;
                        for t in 0..l {
                            let a = att[q * l + t];
                            if a != 0.0 {
                                acc += a * raw(t, ty, tx, ch);
                            }
                        }
                    }
                    out.y.push(if div == 0.0 { 0.0 } else { acc / div });
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The twin's attention rows, from its stage functions (for argmax margins and one-hotness)
// ---------------------------------------------------------------------------------------------

/// Per query (all batch items, row-major), the twin's fused pre-softmax scores made "effective"
/// (masked patches −∞, since they get exactly 0 attention in both maskings) and its attention.
struct Twin {
    l: usize,
    /// `[B·nq·L]`.
    eff: Vec<f64>,
    /// `[B·nq·L]`.
    att: Vec<f64>,
    argmax: Vec<u32>,
    mass: Vec<f64>,
}

fn twin_rows(p: &Params, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Twin {
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

/// Checks the GPU's argmax against the twin's with the near-tie criterion of the file header.
/// Returns (agreeing queries, queries).
fn check_argmax(what: &str, gpu: &[u32], twin: &Twin) -> (usize, usize) {
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
fn compare(what: &str, gpu: &Output, cpu: &Output, twin: &Twin) -> (f64, f64, usize, usize) {
    compare_extra(what, gpu, cpu, twin, None)
}

/// [`compare`] with, optionally, an extra absolute tolerance per element of y.
fn compare_extra(
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

// ---------------------------------------------------------------------------------------------
// 1. Grid: GPU vs twin
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum MaskKind {
    None,
    Shared,
    PerSample,
    /// Per sample, item 1 entirely masked.
    PerSampleAllMasked1,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    rate: usize,
    ksize: usize,
    /// None: fuse off; Some((fk, mode)).
    fuse: Option<(usize, FuseMode)>,
    mask: MaskKind,
    stride: usize,
    overlap: Overlap,
    paste: Option<usize>,
    masking: Masking,
    channels: usize,
    /// f = b (self-attention, f's size) instead of f 12r×18r, b 18r×12r.
    selfie: bool,
}

fn grid_cases() -> Vec<Case> {
    use FuseMode::{Spatial as S, Wrap as W};
    use MaskKind::*;
    use Masking::{Exclude as X, ZeroLogit as Z};
    use Overlap::{Exact as E, Quarter as Q};
    // (rate, ksize, fuse, mask, stride, overlap, paste kernel, masking, channels, f = b)
    type Row = (usize, usize, Option<(usize, FuseMode)>, MaskKind, usize, Overlap, Option<usize>, Masking, usize, bool);
    #[rustfmt::skip]
    let t: &[Row] = &[
        // rate 1
        (1, 3, Some((3, W)), None,      1, Q, Option::None, Z, 3, false),
        (1, 4, Option::None, Shared,    1, Q, Option::None, Z, 4, false),
        (1, 5, Some((2, W)), PerSample, 1, Q, Option::None, Z, 5, false),
        (1, 3, Some((5, W)), Shared,    2, Q, Option::None, Z, 3, false),
        (1, 4, Some((3, S)), PerSample, 1, E, Some(1),      Z, 4, false),
        (1, 5, Option::None, None,      3, Q, Some(3),      Z, 5, false),
        (1, 3, Option::None, Shared,    1, Q, Option::None, X, 3, true),
        (1, 5, Some((3, W)), PerSample, 1, E, Option::None, Z, 3, false),
        // rate 2
        (2, 3, Some((3, W)), Shared,    1, Q, Option::None, Z, 3, true), // the models' call
        (2, 4, Some((2, W)), None,      1, Q, Option::None, Z, 4, false),
        (2, 5, Some((5, W)), PerSample, 1, Q, Option::None, X, 5, false),
        (2, 3, Option::None, PerSample, 2, E, Option::None, Z, 4, false),
        (2, 4, Some((3, W)), Shared,    3, Q, Option::None, Z, 3, false),
        (2, 5, Some((3, S)), Shared,    1, Q, Some(6),      Z, 5, false),
        (2, 3, Some((2, S)), None,      1, E, Some(2),      Z, 3, false),
        (2, 5, Some((5, S)), PerSample, 2, Q, Option::None, X, 4, false),
        (2, 3, Some((5, W)), Shared,    1, Q, Option::None, Z, 5, false),
        (2, 3, Some((3, W)), PerSampleAllMasked1, 1, Q, Option::None, X, 3, false),
        (2, 4, Option::None, PerSampleAllMasked1, 1, Q, Option::None, Z, 4, false),
        // rate 3
        (3, 3, Some((3, W)), None,      1, Q, Option::None, Z, 4, true),
        (3, 4, Some((5, W)), Shared,    1, Q, Option::None, X, 5, false),
        (3, 5, Option::None, PerSample, 1, Q, Option::None, Z, 3, false),
        (3, 3, Some((2, W)), PerSample, 2, Q, Option::None, Z, 5, false),
        (3, 4, Option::None, Shared,    1, E, Some(4),      Z, 4, false), // uneven overlap, exact
        (3, 5, Some((3, W)), None,      1, E, Some(9),      Z, 3, false),
        (3, 3, Some((3, S)), Shared,    3, Q, Some(3),      X, 4, false),
        (3, 4, Some((2, W)), None,      1, Q, Some(4),      Z, 5, false), // uneven overlap, quarter
        (3, 5, Some((5, S)), None,      2, E, Some(4),      Z, 3, false),
    ];
    t.iter()
        .map(|&(rate, ksize, fuse, mask, stride, overlap, paste, masking, channels, selfie)| Case {
            rate,
            ksize,
            fuse,
            mask,
            stride,
            overlap,
            paste,
            masking,
            channels,
            selfie,
        })
        .collect()
}

fn case_params(c: &Case) -> Params {
    Params {
        ksize: c.ksize,
        stride: c.stride,
        rate: c.rate,
        fuse_k: c.fuse.map_or(3, |f| f.0),
        fuse: c.fuse.is_some(),
        fuse_mode: c.fuse.map_or(FuseMode::Wrap, |f| f.1),
        paste_kernel: c.paste,
        overlap: c.overlap,
        masking: c.masking,
        ..Default::default()
    }
}

/// Random inputs for a case: (f, b, mask).
fn case_inputs(c: &Case, p: &Params, rng: &mut Rng) -> (Tensor, Tensor, Option<Tensor>) {
    let (r, ch, batch) = (c.rate, c.channels, 2);
    let f = rng.tensor([batch, 12 * r, 18 * r, ch], -1.0, 1.0);
    let b = if c.selfie { f.clone() } else { rng.tensor([batch, 18 * r, 12 * r, ch], -1.0, 1.0) };
    let (bs, hb, wb) = (b.shape(), b.shape()[1], b.shape()[2]);
    let mask = match c.mask {
        MaskKind::None => None,
        MaskKind::Shared => Some(usable_hole(rng, p, bs)),
        MaskKind::PerSample => Some(concat(&[usable_hole(rng, p, bs), usable_hole(rng, p, bs)])),
        MaskKind::PerSampleAllMasked1 => {
            Some(concat(&[usable_hole(rng, p, bs), Tensor::from_fn([1, hb, wb, 1], |_, _, _, _| 1.0)]))
        }
    };
    (f, b, mask)
}

#[test]
fn grid_gpu_matches_twin() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("grid_gpu_matches_twin");
    let cases = grid_cases();
    let (mut agree_all, mut total_all, mut worst_rel) = (0, 0, 0.0f64);
    let t_all = Instant::now();
    for (k, c) in cases.iter().enumerate() {
        let t0 = Instant::now();
        let what = format!("case {k} {c:?}");
        let params = case_params(c);
        let (f, b, mask) = case_inputs(c, &params, &mut rng);
        let gl = ContextualAttention::new(gpu, params.clone()).unwrap();
        let out = gl.forward(&f, &b, mask.as_ref()).unwrap();
        let cpu = ContextualAttention::cpu(params.clone()).unwrap().forward(&f, &b, mask.as_ref()).unwrap();
        let twin = twin_rows(&params, &f, &b, mask.as_ref());
        let (dy, dm, agree, total) = compare(&what, &out, &cpu, &twin);
        // Shapes per SPEC §E: L = ceil(hb/s)·ceil(wb/s).
        let (hb, wb) = (b.shape()[1] / c.rate, b.shape()[2] / c.rate);
        assert_eq!(out.patch_grid, (hb.div_ceil(c.stride), wb.div_ceil(c.stride)), "{what}: patch grid");
        assert_eq!(out.grid, (f.shape()[1] / c.rate, f.shape()[2] / c.rate), "{what}: query grid");
        if let MaskKind::PerSampleAllMasked1 = c.mask {
            // SPEC §2.3 / §E: every patch masked → attention 0, y exactly 0, never NaN.
            let per = f.shape()[1] * f.shape()[2] * f.shape()[3];
            let nq = out.grid.0 * out.grid.1;
            for (name, o) in [("GPU", &out), ("twin", &cpu)] {
                assert!(
                    o.y.data()[per..].iter().all(|&v| v == 0.0),
                    "{what}: {name}: y of the all-masked item is not exactly 0"
                );
                assert!(o.mass[nq..].iter().all(|&m| m == 0.0), "{what}: {name}: mass of the all-masked item is not 0");
                assert!(o.y.data()[..per].iter().any(|&v| v != 0.0), "{what}: {name}: item 0 is all zero");
            }
        }
        if c.masking == Masking::Exclude {
            // Exclude: the mass is 1 wherever any patch is valid, 0 otherwise.
            for (q, &m) in cpu.mass.iter().enumerate() {
                let any_valid = twin.eff[q * twin.l..(q + 1) * twin.l].iter().any(|s| s.is_finite());
                let want = if any_valid { 1.0 } else { 0.0 };
                assert!((m as f64 - want).abs() <= 1e-6, "{what}: twin mass {m} at query {q}, want {want}");
            }
        }
        let ymax = max_abs(cpu.y.data());
        worst_rel = worst_rel.max(dy / ymax.max(1e-30));
        agree_all += agree;
        total_all += total;
        eprintln!(
            "grid {k:2}: r{} k{} fuse {:?} mask {:?} s{} {:?} K{:?} {:?} C{}{}: max|Δy| {dy:.2e} (max|y| {ymax:.3}), max|Δmass| {dm:.2e}, argmax {agree}/{total}, {:.2}s",
            c.rate, c.ksize, c.fuse, c.mask, c.stride, c.overlap, c.paste, c.masking, c.channels,
            if c.selfie { " f=b" } else { "" },
            t0.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "grid: {} cases, worst max|Δy|/max|y| {worst_rel:.2e}, argmax agree {agree_all}/{total_all}, {:.1}s",
        cases.len(),
        t_all.elapsed().as_secs_f64()
    );
    assert!(agree_all as f64 >= 0.99 * total_all as f64, "argmax agrees on only {agree_all} of {total_all} queries");
}

/// The twin against the SPEC's formulas computed independently here ([`spec_layer`]), over the
/// same grid: GPU and twin share the library's Geometry (paddings, index maps, coverage), so
/// this is what checks the extended options (stride, paste kernel, exact overlap, spatial fuse,
/// exclude masking, per-sample masks) against the SPEC rather than against each other.
#[test]
fn grid_twin_matches_spec_formulas() {
    let mut rng = Rng::new("grid_twin_matches_spec_formulas");
    let t_all = Instant::now();
    let mut worst = 0.0f64;
    for (k, c) in grid_cases().iter().enumerate() {
        let what = format!("twin vs SPEC, case {k} {c:?}");
        let params = case_params(c);
        let (f, b, mask) = case_inputs(c, &params, &mut rng);
        let cpu = ContextualAttention::cpu(params.clone()).unwrap().forward(&f, &b, mask.as_ref()).unwrap();
        let spec = spec_layer(&params, &f, &b, mask.as_ref());
        let ymax = spec.y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert_close(&format!("{what}: y"), cpu.y.data(), &spec.y, 1e-6 * ymax.max(1e-30), 1e-6);
        assert_eq!(cpu.argmax, spec.argmax, "{what}: argmax");
        assert_close(&format!("{what}: mass"), &cpu.mass, &spec.mass, 1e-6, 0.0);
        let dy = cpu.y.data().iter().zip(&spec.y).fold(0.0f64, |m, (&a, &w)| m.max((a as f64 - w).abs()));
        worst = worst.max(dy / ymax.max(1e-30));
    }
    eprintln!(
        "grid twin vs SPEC formulas: worst max|Δy|/max|y| {worst:.2e}, argmax identical, {:.1}s",
        t_all.elapsed().as_secs_f64()
    );
}

/// The grid covers every value of every axis at least twice (guards edits to the table).
#[test]
fn grid_covers_every_axis_value_twice() {
    let cases = grid_cases();
    let count = |p: &dyn Fn(&Case) -> bool| cases.iter().filter(|c| p(c)).count();
    let checks: Vec<(&str, usize)> = vec![
        ("rate 1", count(&|c| c.rate == 1)),
        ("rate 2", count(&|c| c.rate == 2)),
        ("rate 3", count(&|c| c.rate == 3)),
        ("ksize 3", count(&|c| c.ksize == 3)),
        ("ksize 4", count(&|c| c.ksize == 4)),
        ("ksize 5", count(&|c| c.ksize == 5)),
        ("fuse off", count(&|c| c.fuse.is_none())),
        ("fuse_k 2", count(&|c| c.fuse.is_some_and(|f| f.0 == 2))),
        ("fuse_k 3", count(&|c| c.fuse.is_some_and(|f| f.0 == 3))),
        ("fuse_k 5", count(&|c| c.fuse.is_some_and(|f| f.0 == 5))),
        ("spatial fuse", count(&|c| c.fuse.is_some_and(|f| f.1 == FuseMode::Spatial))),
        ("no mask", count(&|c| matches!(c.mask, MaskKind::None))),
        ("shared mask", count(&|c| matches!(c.mask, MaskKind::Shared))),
        ("per-sample mask", count(&|c| matches!(c.mask, MaskKind::PerSample | MaskKind::PerSampleAllMasked1))),
        ("stride 2", count(&|c| c.stride == 2)),
        ("stride 3", count(&|c| c.stride == 3)),
        ("exact overlap", count(&|c| c.overlap == Overlap::Exact)),
        ("K = r", count(&|c| c.paste == Some(c.rate))),
        ("K = 3r", count(&|c| c.paste == Some(3 * c.rate))),
        ("K = 4, r = 3", count(&|c| c.paste == Some(4) && c.rate == 3)),
        ("exclude", count(&|c| c.masking == Masking::Exclude)),
        ("C 3", count(&|c| c.channels == 3)),
        ("C 4", count(&|c| c.channels == 4)),
        ("C 5", count(&|c| c.channels == 5)),
    ];
    for (name, n) in checks {
        assert!(n >= 2, "the grid has only {n} case(s) with {name}");
    }
    assert!((20..=30).contains(&cases.len()));
}

// ---------------------------------------------------------------------------------------------
// 2. The seed's identity experiment (SPEC §E)
// ---------------------------------------------------------------------------------------------

fn identity_params(rate: usize, paste: Option<usize>, overlap: Overlap) -> Params {
    Params { rate, fuse: false, softmax_scale: 1000.0, paste_kernel: paste, overlap, ..Default::default() }
}

/// Runs f = b on a layer and checks argmax = own patch, mass ≈ 1, and
/// |y − b·ratio(P,Q)| ≤ 1e-5 everywhere. Returns max |y − b·ratio|.
fn check_identity(what: &str, layer: &ContextualAttention, x: &Tensor, ratio: &dyn Fn(usize, usize) -> f64) -> f64 {
    let out = layer.forward(x, x, None).unwrap();
    let (hf, wf) = out.grid;
    assert_eq!(out.patch_grid, (hf, wf), "{what}: self-attention grids");
    for n in 0..x.shape()[0] {
        for q in 0..hf * wf {
            assert_eq!(out.argmax[n * hf * wf + q], q as u32, "{what}: item {n} query {q} does not pick its own patch");
            let m = out.mass[n * hf * wf + q];
            assert!((m - 1.0).abs() <= 1e-5, "{what}: item {n} query {q}: mass {m}");
        }
    }
    let [bn, h, w, c] = x.shape();
    let mut worst = 0.0f64;
    for n in 0..bn {
        for py in 0..h {
            for px in 0..w {
                for ch in 0..c {
                    let want = x.at(n, py, px, ch) as f64 * ratio(py, px);
                    let got = out.y.at(n, py, px, ch) as f64;
                    let d = (got - want).abs();
                    worst = worst.max(d);
                    assert!(d <= 1e-5, "{what}: y({n},{py},{px},{ch}) = {got}, want {want} (ratio {})", ratio(py, px));
                }
            }
        }
    }
    worst
}

#[test]
fn identity_experiment() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("identity_experiment");
    let t0 = Instant::now();

    // The coverage helper reproduces SPEC §2.11's table.
    assert_eq!(coverage(8, 2, 4), vec![1, 2, 2, 2, 2, 2, 2, 1]);
    assert_eq!(coverage(6, 1, 2), vec![1, 2, 2, 2, 2, 2]); // rate 1: first row only
    assert_eq!(coverage(12, 3, 6), vec![1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1]); // rate 3: two top, one bottom
    assert_eq!(coverage(12, 4, 8), vec![1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1]);
    // The seed's uneven pattern for K = 4, r = 3 on 6 columns: 1 1 1 2 1 1.
    assert_eq!(coverage(6, 3, 4), vec![1, 1, 1, 2, 1, 1]);

    // (a) Original semantics at rate 2: y = b inside, b/2 on the edges, b/4 at the corners.
    let x = rng.tensor([2, 16, 20, 4], 0.1, 1.0);
    let (h, w) = (16, 20);
    let p = identity_params(2, None, Overlap::Quarter);
    let twin = twin_rows(&p, &x, &x, None);
    let min_own = (0..twin.argmax.len()).map(|q| twin.att[q * twin.l + q % twin.l]).fold(1.0f64, f64::min);
    assert!(min_own >= 1.0 - 1e-9, "twin: attention on the own patch is only {min_own}, not one-hot");
    let ratio = |py: usize, px: usize| -> f64 {
        let edge_y = py == 0 || py == h - 1;
        let edge_x = px == 0 || px == w - 1;
        match (edge_y, edge_x) {
            (false, false) => 1.0,
            (true, true) => 0.25,
            _ => 0.5,
        }
    };
    // The literal darkening agrees with the coverage formula (cov_r·cov_c/4).
    let (cr, cc) = (coverage(h, 2, 4), coverage(w, 2, 4));
    for (py, &cy) in cr.iter().enumerate() {
        for (px, &cx) in cc.iter().enumerate() {
            assert_eq!(ratio(py, px), (cy * cx) as f64 / 4.0);
        }
    }
    for (name, layer) in [
        ("twin", ContextualAttention::cpu(p.clone()).unwrap()),
        ("GPU", ContextualAttention::new(gpu, p.clone()).unwrap()),
    ] {
        let worst = check_identity(&format!("identity r2 quarter on {name}"), &layer, &x, &ratio);
        eprintln!(
            "identity r=2 K=4 quarter on {name}: min twin own attention {min_own:.12}, max |y − b·cov/4| {worst:.2e}"
        );
    }

    // (b) Exact overlap: y = b at every pixel, for every (rate, K) of the seed.
    for (r, k) in [(1, 1), (1, 2), (2, 2), (2, 4), (2, 6), (3, 3), (3, 4), (3, 6), (3, 9)] {
        let x = rng.tensor([1, 6 * r, 7 * r, 3], 0.1, 1.0);
        let p = identity_params(r, Some(k), Overlap::Exact);
        for (name, layer) in [
            ("twin", ContextualAttention::cpu(p.clone()).unwrap()),
            ("GPU", ContextualAttention::new(gpu, p.clone()).unwrap()),
        ] {
            let worst = check_identity(&format!("identity r{r} K{k} exact on {name}"), &layer, &x, &|_, _| 1.0);
            eprintln!("identity r={r} K={k} exact on {name}: max |y − b| {worst:.2e}");
        }
    }

    // (c) The default constant divisor (K/r)² = 16/9 with the uneven K = 4, r = 3: the seed's
    // coverage pattern 1 1 1 2 1 1 … shows up as y/b = cov_r·cov_c·9/16.
    let (r, k) = (3, 4);
    let (h, w) = (18, 24);
    let x = rng.tensor([1, h, w, 3], 0.1, 1.0);
    let (cr, cc) = (coverage(h, r, k), coverage(w, r, k));
    assert_eq!(&cr[..6], &[1, 1, 1, 2, 1, 1]);
    let div = (k * k) as f64 / (r * r) as f64;
    let ratio = |py: usize, px: usize| (cr[py] * cc[px]) as f64 / div;
    let p = identity_params(r, Some(k), Overlap::Quarter);
    for (name, layer) in [
        ("twin", ContextualAttention::cpu(p.clone()).unwrap()),
        ("GPU", ContextualAttention::new(gpu, p.clone()).unwrap()),
    ] {
        let worst = check_identity(&format!("identity r3 K4 quarter on {name}"), &layer, &x, &ratio);
        eprintln!("identity r=3 K=4 quarter on {name}: max |y − b·cov_r·cov_c·9/16| {worst:.2e}");
    }
    eprintln!("identity_experiment: {:.2}s", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// 3. Tiling invariance (SPEC §T, §9.12)
// ---------------------------------------------------------------------------------------------

/// ReLU-like features max(0, N(0,1)).
fn relu_features(rng: &mut Rng, shape: [usize; 4]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| normal(rng).max(0.0)).collect()).unwrap()
}

fn square_hole(h: usize, w: usize, y0: usize, x0: usize, side: usize) -> Tensor {
    Tensor::from_fn([1, h, w, 1], |_, y, x, _| {
        ((y0..y0 + side).contains(&y) && (x0..x0 + side).contains(&x)) as u8 as f32
    })
}

/// Two runs of the same inputs agree: y within 1e-6 relative (and reports whether bit-identical),
/// argmax identical, mass identical (within 1e-6 relative as well). Returns (bit-identical, max |Δy|).
fn assert_same_result(what: &str, a: &Output, b: &Output) -> (bool, f64) {
    let ymax = max_abs(a.y.data());
    assert_close(&format!("{what}: y"), b.y.data(), &to_f64(a.y.data()), 1e-6 * ymax, 1e-6);
    assert_eq!(a.argmax, b.argmax, "{what}: argmax differs");
    assert_close(&format!("{what}: mass"), &b.mass, &to_f64(&a.mass), 0.0, 1e-6);
    let identical = bits(a.y.data()) == bits(b.y.data()) && bits(&a.mass) == bits(&b.mass);
    (identical, max_abs_diff(a.y.data(), b.y.data()))
}

#[test]
fn tiling_invariance_gpu_model_size() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("tiling_invariance_gpu_model_size");
    let shape = [1, 64, 64, 96];
    let x = relu_features(&mut rng, shape);
    let hole = square_hole(64, 64, 20, 22, 24);
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let plan = layer.plan(shape, shape, Some(hole.shape())).unwrap();
    assert_eq!(plan.tiles.len(), 1, "the default plan of 64×64×96 should be one tile");
    // A budget that forces at least 4 tiles.
    let mut budget = plan.tile_bytes / 4;
    let tiled = loop {
        let l = ContextualAttention::new(gpu, Params { memory_budget: Some(budget), ..p.clone() }).unwrap();
        let pl = l.plan(shape, shape, Some(hole.shape())).unwrap();
        if pl.tiles.len() >= 4 {
            break l;
        }
        budget = budget * 3 / 4;
    };
    let tplan = tiled.plan(shape, shape, Some(hole.shape())).unwrap();
    assert!(tplan.tiles.len() >= 4 && tplan.tile_bytes <= budget);
    let t0 = Instant::now();
    let one = layer.forward(&x, &x, Some(&hole)).unwrap();
    let t1 = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let many = tiled.forward(&x, &x, Some(&hole)).unwrap();
    let t2 = t0.elapsed().as_secs_f64();
    let (identical, dy) = assert_same_result("GPU 64×64×96: one tile vs budget tiles", &one, &many);
    eprintln!(
        "tiling GPU 64×64×96: 1 tile ({} B) {t1:.2}s vs {} tiles of {} rows (budget {budget} B, {} B) {t2:.2}s: max|Δy| {dy:.2e}, bit-identical: {identical}",
        plan.tile_bytes,
        tplan.tiles.len(),
        tplan.rows_per_tile,
        tplan.tile_bytes
    );
}

#[test]
fn tiling_invariance_twin() {
    let mut rng = Rng::new("tiling_invariance_twin");
    let shape = [1, 16, 16, 4];
    let x = relu_features(&mut rng, shape);
    let hole = square_hole(16, 16, 5, 6, 6);
    let t0 = Instant::now();
    for (fuse, mode) in [(true, FuseMode::Wrap), (true, FuseMode::Spatial), (false, FuseMode::Wrap)] {
        let p = Params { rate: 2, fuse, fuse_mode: mode, ..Default::default() };
        let layer = ContextualAttention::cpu(p).unwrap();
        let whole = layer.forward_with_tile_rows(8, &x, &x, Some(&hole)).unwrap();
        assert_eq!(whole, layer.forward(&x, &x, Some(&hole)).unwrap(), "twin: forward vs one tile of 8 rows");
        for rows in [1, 2, 3] {
            let tiled = layer.forward_with_tile_rows(rows, &x, &x, Some(&hole)).unwrap();
            let what = format!("twin fuse {fuse} {mode:?}, {rows} rows per tile");
            assert_close(&format!("{what}: y"), tiled.y.data(), &to_f64(whole.y.data()), 1e-12, 0.0);
            assert_eq!(tiled.argmax, whole.argmax, "{what}: argmax");
            assert_close(&format!("{what}: mass"), &tiled.mass, &to_f64(&whole.mass), 1e-12, 0.0);
            let identical = bits(tiled.y.data()) == bits(whole.y.data());
            eprintln!(
                "{what}: max|Δy| {:.2e}, bit-identical: {identical}",
                max_abs_diff(tiled.y.data(), whole.y.data())
            );
        }
    }
    eprintln!("tiling_invariance_twin: {:.2}s", t0.elapsed().as_secs_f64());
}

#[test]
fn tiling_invariance_gpu_small() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("tiling_invariance_gpu_small");
    let t0 = Instant::now();
    // hf = 8, wf = 10 query grid; b 12×14 → 6×7 patches; tiles of 1, 2, 3, 5 rows start/end at 0 and hf−1.
    let f = rng.tensor([2, 16, 20, 4], -1.0, 1.0);
    let b = rng.tensor([2, 12, 14, 4], -1.0, 1.0);
    let hole = usable_hole(&mut rng, &Params { rate: 2, ..Default::default() }, b.shape());
    for (fuse, fk, mode) in
        [(true, 3, FuseMode::Wrap), (true, 5, FuseMode::Wrap), (true, 3, FuseMode::Spatial), (false, 3, FuseMode::Wrap)]
    {
        let p = Params { rate: 2, fuse, fuse_k: fk, fuse_mode: mode, ..Default::default() };
        let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
        assert_eq!(layer.plan(f.shape(), b.shape(), Some(hole.shape())).unwrap().tiles.len(), 1);
        let whole = layer.forward(&f, &b, Some(&hole)).unwrap();
        let cpu = ContextualAttention::cpu(p.clone()).unwrap().forward(&f, &b, Some(&hole)).unwrap();
        let twin = twin_rows(&p, &f, &b, Some(&hole));
        let (dy, _, agree, total) =
            compare(&format!("GPU fuse {fuse} fk{fk} {mode:?} one tile vs twin"), &whole, &cpu, &twin);
        let mut all_identical = true;
        for rows in [1, 2, 3, 5, 7] {
            let what = format!("GPU fuse {fuse} fk{fk} {mode:?}, {rows} rows per tile");
            let tiled = layer.forward_with_tile_rows(rows, &f, &b, Some(&hole)).unwrap();
            let (identical, d) = assert_same_result(&what, &whole, &tiled);
            all_identical &= identical;
            if !identical {
                eprintln!("{what}: NOT bit-identical, max|Δy| {d:.2e}");
            }
        }
        eprintln!("GPU small tiling fuse {fuse} fk{fk} {mode:?}: vs twin max|Δy| {dy:.2e}, argmax {agree}/{total}; tiles 1,2,3,5,7 rows bit-identical to one tile: {all_identical}");
    }
    eprintln!("tiling_invariance_gpu_small: {:.2}s", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// 4. Model-sized smoke test (SPEC §9.13)
// ---------------------------------------------------------------------------------------------

#[test]
fn model_sized_smoke_gpu_vs_twin() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("model_sized_smoke_gpu_vs_twin");
    let shape = [1, 64, 64, 96];
    let x = relu_features(&mut rng, shape);
    let hole = square_hole(64, 64, 20, 20, 24);
    let p = Params { rate: 2, ..Default::default() };
    let t0 = Instant::now();
    let out = ContextualAttention::new(gpu, p.clone()).unwrap().forward(&x, &x, Some(&hole)).unwrap();
    let t_gpu = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let cpu = ContextualAttention::cpu(p.clone()).unwrap().forward(&x, &x, Some(&hole)).unwrap();
    let t_cpu = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let twin = twin_rows(&p, &x, &x, Some(&hole));
    let t_rows = t0.elapsed().as_secs_f64();
    let rel = rel_l2(out.y.data(), cpu.y.data());
    let (dy, dm, agree, total) = compare("64×64×96 smoke", &out, &cpu, &twin);
    let min_mass = cpu.mass.iter().fold(1.0f32, |m, &v| m.min(v));
    eprintln!(
        "smoke 64×64×96: rel L2 {rel:.2e}, max|Δy| {dy:.2e} (max|y| {:.3}), max|Δmass| {dm:.2e}, min twin mass {min_mass:.4}, argmax {agree}/{total}; GPU {t_gpu:.2}s, twin {t_cpu:.2}s, twin rows {t_rows:.2}s",
        max_abs(cpu.y.data())
    );
    assert!(rel <= 1e-5, "relative L2 {rel:e} > 1e-5");
    assert!(agree as f64 >= 0.99 * total as f64, "argmax agrees on only {agree} of {total}");
    // The data separates the original from a port's shortcuts (SPEC §9.13 quotes ≈ 13 % for
    // exact overlap and ≈ 14 % without fuse), so 1e-5 is a meaningful bound here.
    for (name, q) in [
        ("exact overlap", Params { overlap: Overlap::Exact, ..p.clone() }),
        ("no fuse", Params { fuse: false, ..p.clone() }),
    ] {
        let other = ContextualAttention::cpu(q).unwrap().forward(&x, &x, Some(&hole)).unwrap();
        let d = rel_l2(other.y.data(), cpu.y.data());
        eprintln!("smoke 64×64×96: twin with {name} differs by rel L2 {d:.3}");
        assert!(d > 1e-2, "{name} changes y by only {d:e}: the smoke data does not discriminate");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. forward_async and the buffer cache
// ---------------------------------------------------------------------------------------------

#[test]
fn forward_async_matches_forward() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("forward_async_matches_forward");
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let f = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let b = rng.tensor([2, 16, 12, 3], -1.0, 1.0);
    let hole = usable_hole(&mut rng, &p, b.shape());
    let sync = layer.forward(&f, &b, Some(&hole)).unwrap();
    let asynchronous = pollster::block_on(layer.forward_async(&f, &b, Some(&hole))).unwrap();
    assert_eq!(sync, asynchronous, "forward_async differs from forward");
    // And both are right.
    let cpu = ContextualAttention::cpu(p.clone()).unwrap().forward(&f, &b, Some(&hole)).unwrap();
    let (dy, dm, agree, total) =
        compare("forward_async vs twin", &asynchronous, &cpu, &twin_rows(&p, &f, &b, Some(&hole)));
    // The CPU backend's future gives the twin's result.
    let cpu_async =
        pollster::block_on(ContextualAttention::cpu(p).unwrap().forward_async(&f, &b, Some(&hole))).unwrap();
    assert_eq!(cpu_async, cpu);
    eprintln!(
        "forward_async: identical to forward; vs twin max|Δy| {dy:.2e}, max|Δmass| {dm:.2e}, argmax {agree}/{total}"
    );
}

#[test]
fn layer_reuse_across_shapes() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("layer_reuse_across_shapes");
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let cpu = ContextualAttention::cpu(p.clone()).unwrap();
    let fa = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let ba = rng.tensor([2, 16, 12, 3], -1.0, 1.0);
    let ma = usable_hole(&mut rng, &p, ba.shape());
    let fb = rng.tensor([1, 10, 8, 5], -1.0, 1.0);
    let fa2 = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let ma2 = concat(&[usable_hole(&mut rng, &p, ba.shape()), usable_hole(&mut rng, &p, ba.shape())]);
    let ma3 = usable_hole(&mut rng, &p, ba.shape());
    let calls: Vec<(&str, &Tensor, &Tensor, Option<&Tensor>)> = vec![
        ("A", &fa, &ba, Some(&ma)),
        ("B (other shape, no mask)", &fb, &fb, None),
        ("A again", &fa, &ba, Some(&ma)),
        ("A shape, new f", &fa2, &ba, Some(&ma)),
        ("A shape, new shared mask", &fa2, &ba, Some(&ma3)),
        ("A shape, per-sample mask", &fa, &ba, Some(&ma2)),
        ("A shape, no mask", &fa, &ba, None),
        ("A again", &fa, &ba, Some(&ma)),
    ];
    let mut first_a: Option<Output> = None;
    for (name, f, b, m) in calls {
        let out = layer.forward(f, b, m).unwrap();
        let want = cpu.forward(f, b, m).unwrap();
        let (dy, _, agree, total) = compare(&format!("reuse: {name}"), &out, &want, &twin_rows(&p, f, b, m));
        eprintln!("reuse {name}: max|Δy| {dy:.2e}, argmax {agree}/{total}");
        if name.starts_with("A again") || name == "A" {
            match &first_a {
                None => first_a = Some(out),
                Some(a) => assert_eq!(&out, a, "reuse: {name}: differs from the first call of A"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. The demo's semantics (SPEC §3, §9.14)
// ---------------------------------------------------------------------------------------------

#[test]
fn demo_semantics() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("demo_semantics");
    let t0 = Instant::now();
    let (r, kk) = (2usize, 4usize);
    let f = rng.tensor([1, 16, 20, 3], 0.0, 255.0);
    let b = rng.tensor([1, 12, 12, 3], 0.0, 255.0);
    let p = Params { rate: r, fuse: false, softmax_scale: 10.0, ..Default::default() };
    let cpu = ContextualAttention::cpu(p.clone()).unwrap().forward(&f, &b, None).unwrap();
    let twin = twin_rows(&p, &f, &b, None);
    assert_eq!(cpu.argmax, twin.argmax);
    let (hf, wf) = cpu.grid;
    let (ph, pw) = cpu.patch_grid;
    assert_eq!((hf, wf, ph, pw), (8, 10, 6, 6));
    let l = twin.l;

    // Effectively one-hot: the largest attention of (nearly) every query is ≈ 1.
    let amax: Vec<f64> = (0..hf * wf).map(|q| twin.att[q * l + twin.argmax[q] as usize]).collect();
    let onehot = amax.iter().filter(|&&a| a >= 1.0 - 1e-6).count();
    let nearly = amax.iter().filter(|&&a| a >= 0.99).count();
    let mean_amax = amax.iter().sum::<f64>() / amax.len() as f64;
    let min_amax = amax.iter().cloned().fold(1.0, f64::min);
    eprintln!(
        "demo: A_max ≥ 1 − 1e-6 for {onehot}/{0}, ≥ 0.99 for {nearly}/{0}, mean {mean_amax:.5}, min {min_amax:.4}",
        hf * wf
    );
    // Uniform-noise images are a hard case (36 patches, near-ties happen): over 200 seeds the
    // observed minima were 67/80 queries at 1 − 1e-6, 73/80 at 0.99 and a mean of 0.983.
    let nq = (hf * wf) as f64;
    assert!(onehot as f64 >= 0.75 * nq, "only {onehot} of {nq} queries have A_max ≥ 1 − 1e-6");
    assert!(nearly as f64 >= 0.85 * nq, "only {nearly} of {nq} queries have A_max ≥ 0.99");
    assert!(mean_amax >= 0.95, "mean A_max {mean_amax} is not effectively one-hot");
    assert!(cpu.mass.iter().all(|&m| (m - 1.0).abs() <= 1e-6), "no mask: mass must be 1");

    // y per pixel = ¼ · Σ over the covering queries (i, j) of b̃(P + r(u−i), Q + r(v−j)), (u, v)
    // = argmax(i, j) (SPEC §2.11), computed here directly. Where a query's attention is not
    // exactly one-hot, the bound allows its remaining mass: ¼ · 2(1 − A_max) · 255 per query.
    let (hfull, wfull) = (16usize, 20usize);
    let pi = same_pad_before(hfull, kk, r) as isize;
    assert_eq!(pi, 1);
    // For the GPU comparison below: f32 logits here are of order 10⁴, so a query whose attention
    // is not one-hot carries an f32 attention error of first order: with a logit error δ per
    // patch, Σ_l |ΔA_l| ≤ 4δ(1 − A_max). δ_q = 2·λ·k²C·ε_f32·max_l |S_q,l| (a dot product of
    // k²C terms whose magnitudes sum to about ‖f-patch‖ ≈ max |S|). This vanishes for one-hot queries.
    let kc = (p.ksize * p.ksize * 3) as f64;
    let delta: Vec<f64> = (0..hf * wf)
        .map(|q| {
            let smax = twin.eff[q * l..(q + 1) * l].iter().fold(0.0f64, |m, s| m.max(s.abs()));
            2.0 * p.softmax_scale as f64 * kc * f32::EPSILON as f64 * smax
        })
        .collect();
    let bmax = max_abs(b.data());
    let mut extra = vec![0.0f64; hfull * wfull * 3];
    let (mut worst, mut worst_onehot) = (0.0f64, 0.0f64);
    for py in 0..hfull {
        for px in 0..wfull {
            for ch in 0..3 {
                let (mut want, mut tol, mut all_onehot) = (0.0, 1e-3, true);
                for i in 0..hf {
                    for j in 0..wf {
                        let (ty, tx) = (py as isize - (r * i) as isize + pi, px as isize - (r * j) as isize + pi);
                        if !(0..kk as isize).contains(&ty) || !(0..kk as isize).contains(&tx) {
                            continue;
                        }
                        let q = i * wf + j;
                        let (u, v) = (cpu.argmax[q] as usize / pw, cpu.argmax[q] as usize % pw);
                        let (sy, sx) = (
                            py as isize + (r * u) as isize - (r * i) as isize,
                            px as isize + (r * v) as isize - (r * j) as isize,
                        );
                        want += 0.25 * b_tilde(&b, 0, sy, sx, ch);
                        tol += 0.25 * 2.0 * (1.0 - amax[q]) * 255.0;
                        all_onehot &= amax[q] >= 1.0 - 1e-6;
                        extra[(py * wfull + px) * 3 + ch] += 0.25 * 4.0 * delta[q] * (1.0 - amax[q]) * bmax;
                    }
                }
                let got = cpu.y.at(0, py, px, ch) as f64;
                worst = worst.max((got - want).abs());
                if all_onehot {
                    worst_onehot = worst_onehot.max((got - want).abs());
                }
                assert!(
                    (got - want).abs() <= tol,
                    "twin y({py},{px},{ch}) = {got}, one-hot paste gives {want} (tolerance {tol})"
                );
            }
        }
    }

    // Border darkening: with the exact overlap the attention is unchanged and only the divisor
    // differs, so y_quarter = y_exact · cov_r·cov_c/4: ½ on the edges, ¼ at the corners.
    let exact = ContextualAttention::cpu(Params { overlap: Overlap::Exact, ..p.clone() })
        .unwrap()
        .forward(&f, &b, None)
        .unwrap();
    assert_eq!(exact.argmax, cpu.argmax);
    let (cr, cc) = (coverage(hfull, r, kk), coverage(wfull, r, kk));
    let mut worst_ratio = 0.0f64;
    for (py, &cy) in cr.iter().enumerate() {
        for (px, &cx) in cc.iter().enumerate() {
            let ratio = (cy * cx) as f64 / 4.0;
            let edge = (py == 0 || py == hfull - 1) as u8 + (px == 0 || px == wfull - 1) as u8;
            assert_eq!(ratio, [1.0, 0.5, 0.25][edge as usize]);
            for ch in 0..3 {
                let (q, e) = (cpu.y.at(0, py, px, ch) as f64, exact.y.at(0, py, px, ch) as f64);
                let d = (q - e * ratio).abs();
                worst_ratio = worst_ratio.max(d);
                assert!(
                    d <= 1e-4 * e.abs().max(1.0),
                    "darkening at ({py},{px}): quarter {q}, exact {e}, ratio {ratio}"
                );
            }
        }
    }

    // The GPU matches the twin.
    let out = ContextualAttention::new(gpu, p.clone()).unwrap().forward(&f, &b, None).unwrap();
    let (dy, dm, agree, total) = compare_extra("demo GPU vs twin", &out, &cpu, &twin, Some(&extra));
    // Where every covering query is one-hot, the plain tolerance holds.
    let plain: Vec<usize> = (0..extra.len()).filter(|&i| extra[i] <= 1e-3).collect();
    let dy_plain = plain.iter().fold(0.0f64, |m, &i| m.max((out.y.data()[i] as f64 - cpu.y.data()[i] as f64).abs()));
    assert!(plain.len() * 2 >= extra.len(), "fewer than half the pixels are covered by one-hot queries only");
    eprintln!(
        "demo: {onehot}/{} one-hot queries; twin vs one-hot paste max|Δ| {worst_onehot:.2e} where all covering queries are one-hot ({worst:.2e} overall, within the remaining-mass bound); darkening max|Δ| {worst_ratio:.2e}; GPU vs twin max|Δy| {dy:.2e} ({dy_plain:.2e} on the {} pixels with only one-hot covering queries; max|y| {:.1}), max|Δmass| {dm:.2e}, argmax {agree}/{total}; {:.2}s",
        hf * wf,
        plain.len(),
        max_abs(cpu.y.data()),
        t0.elapsed().as_secs_f64()
    );
}
