//! Unit-level checks of SPEC §9 (items 1–9, 11) and the tiling plan (SPEC §2.13, §T), on the
//! host: SAME padding, align-corners index maps, the wrap-around fuse operator (contributor
//! sets of the §2.8 table, its closed form, pass order), b-only normalisation, mask windows,
//! the paste's border coverage, argmax ties, large magnitudes, and the tile plan.
//!
//! Expected values come from SPEC.md or from independent computations written here; the
//! library's own geometry helpers are never used to produce an expected value.

mod common;

use std::collections::BTreeSet;

use common::spec::coverage;
use common::{assert_close, to_f64, Rng};
use contextual_attention::geometry::{nn_indices, same_padding, FusePass};
use contextual_attention::plan::{Plan, Tile};
use contextual_attention::reference;
use contextual_attention::{ContextualAttention, Error, FuseMode, Geometry, Masking, Params, Tensor};

// ---------------------------------------------------------------------------------------------
// helpers

/// Geometry for fuse experiments: rate 1, ksize 1, so the grids are the input sizes.
fn fuse_geometry(fh: usize, fw: usize, bh: usize, bw: usize, fuse_k: usize, mode: FuseMode) -> Geometry {
    let params = Params { rate: 1, ksize: 1, fuse_k, fuse_mode: mode, ..Default::default() };
    Geometry::new(&params, [1, fh, fw, 1], [1, bh, bw, 1], None).unwrap()
}

/// The twin's two fuse passes over the whole score matrix, in the given order.
fn twin_fuse(g: &Geometry, s: &[f64], first: FusePass, second: FusePass) -> Vec<f64> {
    let rows: Vec<usize> = (0..g.hf).collect();
    let slots = Tile::slot_map(&rows, g.hf);
    let p1 = reference::fuse_pass(s, &slots, &rows, g, first);
    reference::fuse_pass(&p1, &slots, &rows, g, second)
}

/// SPEC §2.8 row-major step R_d on an h×w grid, written from the formula
/// R_d(i,j) = (i + ⌊(j+d)/w⌋, (j+d) mod w), undefined if i·w+j+d leaves [0, h·w).
fn r_step(h: usize, w: usize, (i, j): (usize, usize), d: isize) -> Option<(usize, usize)> {
    let (h, w, i, j) = (h as isize, w as isize, i as isize, j as isize);
    let flat = i * w + j + d;
    if flat < 0 || flat >= h * w {
        return None;
    }
    Some(((i + (j + d).div_euclid(w)) as usize, (j + d).rem_euclid(w) as usize))
}

/// SPEC §2.8 column-major step C_e(i,j) = ((i+e) mod h, j + ⌊(i+e)/h⌋), undefined if
/// j·h+i+e leaves [0, h·w).
fn c_step(h: usize, w: usize, (i, j): (usize, usize), e: isize) -> Option<(usize, usize)> {
    let (h, w, i, j) = (h as isize, w as isize, i as isize, j as isize);
    let flat = j * h + i + e;
    if flat < 0 || flat >= h * w {
        return None;
    }
    Some(((i + e).rem_euclid(h) as usize, (j + (i + e).div_euclid(h)) as usize))
}

/// D = {−p, …, fk−1−p}, p = ⌊(fk−1)/2⌋ (SPEC §2.8).
fn offsets(fk: usize) -> Vec<isize> {
    let p = ((fk - 1) / 2) as isize;
    (0..fk as isize).map(|t| t - p).collect()
}

/// The closed form S_fused(x, y) = Σ_{e∈D} Σ_{d∈D} S(R_d(C_e(x)), R_d(C_e(y))).
fn closed_form_fuse(s: &[f64], f: (usize, usize), b: (usize, usize), fk: usize) -> Vec<f64> {
    let (nf, nb) = (f.0 * f.1, b.0 * b.1);
    let d_set = offsets(fk);
    let mut out = vec![0.0; nf * nb];
    for a in 0..nf {
        let x = (a / f.1, a % f.1);
        for beta in 0..nb {
            let y = (beta / b.1, beta % b.1);
            let mut sum = 0.0;
            for &e in &d_set {
                for &d in &d_set {
                    let xs = c_step(f.0, f.1, x, e).and_then(|p| r_step(f.0, f.1, p, d));
                    let ys = c_step(b.0, b.1, y, e).and_then(|p| r_step(b.0, b.1, p, d));
                    if let (Some(xs), Some(ys)) = (xs, ys) {
                        sum += s[(xs.0 * f.1 + xs.1) * nb + ys.0 * b.1 + ys.1];
                    }
                }
            }
            out[a * nb + beta] = sum;
        }
    }
    out
}

/// A zero-padded 2-D diagonal box filter: Σ_{e,d∈D} S̃(i+e, j+d; u+e, v+d).
fn box_filter(s: &[f64], f: (usize, usize), b: (usize, usize), fk: usize) -> Vec<f64> {
    let (nf, nb) = (f.0 * f.1, b.0 * b.1);
    let d_set = offsets(fk);
    let inside = |h: usize, w: usize, i: isize, j: isize| i >= 0 && j >= 0 && i < h as isize && j < w as isize;
    let mut out = vec![0.0; nf * nb];
    for a in 0..nf {
        let (i, j) = ((a / f.1) as isize, (a % f.1) as isize);
        for beta in 0..nb {
            let (u, v) = ((beta / b.1) as isize, (beta % b.1) as isize);
            let mut sum = 0.0;
            for &e in &d_set {
                for &d in &d_set {
                    if inside(f.0, f.1, i + e, j + d) && inside(b.0, b.1, u + e, v + d) {
                        let q = (i + e) as usize * f.1 + (j + d) as usize;
                        let p = (u + e) as usize * b.1 + (v + d) as usize;
                        sum += s[q * nb + p];
                    }
                }
            }
            out[a * nb + beta] = sum;
        }
    }
    out
}

fn fraction_differing(a: &[f64], b: &[f64]) -> f64 {
    let n = a.iter().zip(b).filter(|(x, y)| (*x - *y).abs() > 1e-9 * (1.0 + x.abs())).count();
    n as f64 / a.len() as f64
}

// ---------------------------------------------------------------------------------------------
// 1. SAME rule (SPEC §2.2, §9.1)

#[test]
fn same_padding_table() {
    let table = [
        ((8, 4, 2), (4, 1, 1)),
        ((9, 4, 2), (5, 1, 2)),
        ((8, 3, 1), (8, 1, 1)),
        ((8, 4, 1), (8, 1, 2)),
        ((8, 5, 1), (8, 2, 2)),
        ((8, 2, 1), (8, 0, 1)),
        ((12, 6, 3), (4, 1, 2)),
        ((9, 6, 3), (3, 1, 2)),
        ((16, 8, 4), (4, 2, 2)),
    ];
    for ((n, k, s), want) in table {
        assert_eq!(same_padding(n, k, s), want, "same_padding({n}, {k}, {s})");
    }
    // SPEC §2.2: "n, 5, 1 → n, 2, 2" for any n, and for the raw/paste kernel with H = h·r the
    // padding is ⌊r/2⌋ before and ⌈r/2⌉ after.
    for n in 1..20 {
        assert_eq!(same_padding(n, 5, 1), (n, 2, 2), "same_padding({n}, 5, 1)");
    }
    for r in 1..6 {
        for h in 1..6 {
            assert_eq!(same_padding(h * r, 2 * r, r), (h, r / 2, r.div_ceil(2)), "raw kernel, r={r}, h={h}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Align-corners nearest-neighbour index maps (SPEC §2.5, §9.2)

#[test]
fn nn_index_maps() {
    let table: [(usize, usize, &[u32]); 7] = [
        (6, 3, &[0, 3, 5]),
        (8, 4, &[0, 2, 5, 7]),
        (10, 5, &[0, 2, 5, 7, 9]),
        (12, 6, &[0, 2, 4, 7, 9, 11]),
        (16, 8, &[0, 2, 4, 6, 9, 11, 13, 15]),
        (9, 3, &[0, 4, 8]),
        (7, 3, &[0, 3, 6]),
    ];
    for (input, output, want) in table {
        assert_eq!(nn_indices(input, output), want, "nn_indices({input}, {output})");
    }
    // 64 → 32: even rows 0..=30, then odd rows 33..=63.
    let want: Vec<u32> = (0..=30).step_by(2).chain((33..=63).step_by(2)).collect();
    assert_eq!(want.len(), 32);
    assert_eq!(nn_indices(64, 32), want, "nn_indices(64, 32)");
    // SPEC §2.5 closed form for r = 2, H = 2h: src(i) = 2i for i < (h−1)/2, else 2i+1 (the
    // tie at i = (h−1)/2 rounds up). The closed form is the real-number idealisation of the f32
    // rule: at h = 27 the f32 product 13 · f32(53/26) is 26.499998, not 26.5, so the f32 rule
    // (which SPEC §2.5 says is bit-exact against TF, verified for every H ≤ 69) gives 26 there.
    for h in 2..70usize {
        let mut want: Vec<u32> =
            (0..h).map(|i| if (2 * i) < h - 1 { 2 * i as u32 } else { 2 * i as u32 + 1 }).collect();
        if h == 27 {
            assert_eq!(13.0f32 * (53.0f32 / 26.0f32), 26.499998f32, "f32 product of the h = 27 tie");
            want[13] = 26;
        }
        assert_eq!(nn_indices(2 * h, h), want, "nn_indices({}, {h}) against the r=2 closed form", 2 * h);
    }
    for n in [1, 2, 3, 7, 64, 1000] {
        assert_eq!(nn_indices(n, 1), vec![0], "nn_indices({n}, 1)");
        let id: Vec<u32> = (0..n as u32).collect();
        assert_eq!(nn_indices(n, n), id, "nn_indices({n}, {n}) must be the identity");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. The fuse operator on one-hot inputs (SPEC §2.8, §9.3)

type Pair = ((usize, usize), (usize, usize)); // (query (i,j); patch (u,v))
/// (i, j, u, v) of a fused entry and the raw pairs SPEC §2.8's table lists for it.
type TableRow = ((usize, usize, usize, usize), BTreeSet<Pair>);

/// For every fused entry, the raw (query; patch) entries that feed it and with what weight,
/// found by fusing one one-hot raw score matrix per raw entry.
fn contributors(g: &Geometry, order: (FusePass, FusePass)) -> Vec<Vec<(Pair, f64)>> {
    let (nf, nb) = (g.queries(), g.patches());
    let mut table = vec![Vec::new(); nf * nb];
    for a in 0..nf {
        for beta in 0..nb {
            let mut s = vec![0.0; nf * nb];
            s[a * nb + beta] = 1.0;
            let fused = twin_fuse(g, &s, order.0, order.1);
            let raw = ((a / g.wf, a % g.wf), (beta / g.pw, beta % g.pw));
            for (out, &w) in fused.iter().enumerate() {
                if w != 0.0 {
                    table[out].push((raw, w));
                }
            }
        }
    }
    table
}

fn pairs(list: &[(usize, usize, usize, usize)]) -> BTreeSet<Pair> {
    list.iter().map(|&(i, j, u, v)| ((i, j), (u, v))).collect()
}

#[test]
fn fuse_contributors_match_spec_table() {
    let g = fuse_geometry(3, 3, 3, 3, 3, FuseMode::Wrap);
    assert_eq!((g.hf, g.wf, g.ph, g.pw), (3, 3, 3, 3));
    let table = contributors(&g, (FusePass::Rows, FusePass::Cols));
    let all_diag: Vec<_> = (0..3).flat_map(|a| (0..3).map(move |b| (a, b, a, b))).collect();
    let cases: [TableRow; 5] = [
        ((1, 1, 1, 1), pairs(&all_diag)),
        (
            (0, 2, 1, 2),
            pairs(&[
                (0, 1, 1, 1),
                (0, 2, 1, 2),
                (1, 1, 2, 1),
                (1, 2, 2, 2),
                (1, 0, 2, 0),
                (2, 0, 0, 1),
                (2, 1, 0, 2),
                (2, 2, 1, 0),
            ]),
        ),
        ((0, 0, 0, 0), pairs(&[(0, 0, 0, 0), (0, 1, 0, 1), (0, 2, 0, 2), (1, 0, 1, 0), (1, 1, 1, 1)])),
        ((2, 2, 2, 2), pairs(&[(1, 1, 1, 1), (1, 2, 1, 2), (2, 0, 2, 0), (2, 1, 2, 1), (2, 2, 2, 2)])),
        ((1, 2, 0, 0), pairs(&[(1, 2, 0, 0), (2, 0, 0, 1), (2, 1, 0, 2), (2, 2, 1, 0)])),
    ];
    let counts = [9, 8, 5, 5, 4];
    for (((i, j, u, v), want), count) in cases.iter().zip(counts) {
        assert_eq!(want.len(), count, "test table itself");
        let entry = &table[(i * 3 + j) * 9 + u * 3 + v];
        let got: BTreeSet<Pair> = entry.iter().map(|(p, _)| *p).collect();
        assert_eq!(&got, want, "S_fused({i},{j}; {u},{v}): contributing raw (query; patch) pairs");
        for (p, w) in entry {
            assert_eq!(*w, 1.0, "S_fused({i},{j}; {u},{v}): raw term {p:?} counted with weight {w}, not once");
        }
    }

    // The spatial option is the zero-padded 2-D filter: (0,2;1,2) gets only the first 4 terms.
    let gs = fuse_geometry(3, 3, 3, 3, 3, FuseMode::Spatial);
    let spatial = contributors(&gs, (FusePass::Rows, FusePass::Cols));
    let at = |i: usize, j: usize, u: usize, v: usize| (i * 3 + j) * 9 + u * 3 + v;
    let got: BTreeSet<Pair> = spatial[at(0, 2, 1, 2)].iter().map(|(p, _)| *p).collect();
    assert_eq!(got, pairs(&[(0, 1, 1, 1), (0, 2, 1, 2), (1, 1, 2, 1), (1, 2, 2, 2)]), "spatial fuse of (0,2;1,2)");
}

#[test]
fn fuse_matches_closed_form_on_non_square_grids() {
    let mut rng = Rng::new("fuse_matches_closed_form_on_non_square_grids");
    // f 2×5 against b 3×4 (row and column wrap lengths differ), both ways round, and fk 2, 3, 5.
    for (f, b) in [((2, 5), (3, 4)), ((3, 4), (2, 5)), ((4, 3), (3, 4)), ((1, 6), (5, 1))] {
        for fk in [2, 3, 5] {
            let g = fuse_geometry(f.0, f.1, b.0, b.1, fk, FuseMode::Wrap);
            let s: Vec<f64> = rng.vec(g.queries() * g.patches(), -1.0, 1.0).into_iter().map(f64::from).collect();
            let got = twin_fuse(&g, &s, FusePass::Rows, FusePass::Cols);
            let want = closed_form_fuse(&s, f, b, fk);
            assert_close(&format!("wrap fuse, f {f:?}, b {b:?}, fk {fk}"), &got, &want, 1e-12, 1e-12);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Pass order and the spatial option (SPEC §9.4, §E)

#[test]
fn fuse_pass_order_and_spatial_mode() {
    let mut rng = Rng::new("fuse_pass_order_and_spatial_mode");
    let (f, b) = ((3, 4), (4, 3));
    let g = fuse_geometry(f.0, f.1, b.0, b.1, 3, FuseMode::Wrap);
    let s: Vec<f64> = rng.vec(g.queries() * g.patches(), -1.0, 1.0).into_iter().map(f64::from).collect();
    let wrap = twin_fuse(&g, &s, FusePass::Rows, FusePass::Cols);
    let swapped = twin_fuse(&g, &s, FusePass::Cols, FusePass::Rows);
    let boxed = box_filter(&s, f, b, 3);
    let swap_frac = fraction_differing(&wrap, &swapped);
    let box_frac = fraction_differing(&wrap, &boxed);
    eprintln!(
        "pass order: {:.1} % differ (SPEC: 85 %); zero-padded box: {:.1} % differ (SPEC: 96 %)",
        100.0 * swap_frac,
        100.0 * box_frac
    );
    assert!(swap_frac > 0.5, "swapping the fuse passes changed only {:.1} % of the entries", 100.0 * swap_frac);
    assert!(box_frac > 0.5, "the wrap fuse differs from a zero-padded box filter at only {:.1} %", 100.0 * box_frac);
    // The percentages SPEC §9.4 quotes for exactly this setting.
    assert!((swap_frac - 0.85).abs() < 0.01, "pass order: {:.2} % differ, SPEC says 85 %", 100.0 * swap_frac);
    assert!((box_frac - 0.96).abs() < 0.01, "box filter: {:.2} % differ, SPEC says 96 %", 100.0 * box_frac);

    for fk in [2, 3, 5] {
        let gs = fuse_geometry(f.0, f.1, b.0, b.1, fk, FuseMode::Spatial);
        let spatial = twin_fuse(&gs, &s, FusePass::Rows, FusePass::Cols);
        assert_close(
            &format!("spatial fuse = zero-padded 2-D diagonal box filter, fk {fk}"),
            &spatial,
            &box_filter(&s, f, b, fk),
            1e-12,
            1e-12,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Normalisation (SPEC §2.6, §9.5)

#[test]
fn normalisation_of_b_only() {
    let mut rng = Rng::new("normalisation_of_b_only");
    let c = 2;
    for k in [3usize, 4] {
        let params = Params { rate: 1, ksize: k, ..Default::default() };
        let (h, w) = (5, 6);
        let g = Geometry::new(&params, [1, h, w, c], [1, h, w, c], None).unwrap();
        let q = (k - 1) / 2; // window of patch (u,v): rows u−q ..= u−q+k−1
        let mut bp: Vec<f64> = rng.vec(h * w * c, -1.0, 1.0).into_iter().map(f64::from).collect();
        // Zero the whole window of patch (2, 3) so that its patch is all zero.
        for y in 2 - q..2 - q + k {
            for x in 3 - q..(3 - q + k).min(w) {
                for ch in 0..c {
                    bp[(y * w + x) * c + ch] = 0.0;
                }
            }
        }
        let (patches, norms) = reference::matching_patches(&bp, &g);
        let d = k * k * c;
        assert!(patches.iter().chain(&norms).all(|v| v.is_finite()), "k={k}: NaN/Inf in matching patches");
        let zero = 2 * w + 3;
        assert_eq!(norms[zero], 0.0, "k={k}: an all-zero patch has norm 0");
        assert!(
            patches[zero * d..(zero + 1) * d].iter().all(|&v| v == 0.0),
            "k={k}: an all-zero patch normalises to 0"
        );

        // Norms include the padding: compare with a direct sum over the in-image pixels only.
        for u in 0..h {
            for v in 0..w {
                let mut sq = 0.0;
                for y in u as isize - q as isize..u as isize - q as isize + k as isize {
                    for x in v as isize - q as isize..v as isize - q as isize + k as isize {
                        if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w {
                            for ch in 0..c {
                                sq += bp[(y as usize * w + x as usize) * c + ch].powi(2);
                            }
                        }
                    }
                }
                let l = u * w + v;
                assert!(
                    (norms[l] - sq.sqrt()).abs() <= 1e-12,
                    "k={k}: norm of patch ({u},{v}) = {}, direct sum gives {}",
                    norms[l],
                    sq.sqrt()
                );
                if sq.sqrt() > 1e-4 {
                    let n2: f64 = patches[l * d..(l + 1) * d].iter().map(|v| v * v).sum();
                    assert!((n2 - 1.0).abs() < 1e-12, "k={k}: normalised patch ({u},{v}) has squared norm {n2}");
                }
            }
        }

        // The clamp max(‖w‖, 1e-4): a single pixel of 1e-6 gives 1e-6 / 1e-4 = 1e-2, not 1.
        let mut tiny = vec![0.0; h * w * c];
        tiny[(2 * w + 3) * c] = 1e-6;
        let (tp, tn) = reference::matching_patches(&tiny, &g);
        assert_eq!(tn[zero], 1e-6);
        let centre = (q * k + q) * c; // element (dy=q, dx=q, c=0) of patch (2,3)
        assert!(
            (tp[zero * d + centre] - 1e-2).abs() < 1e-15,
            "k={k}: clamped normalisation gave {}",
            tp[zero * d + centre]
        );

        // Raw scores against SPEC §2.7 written out, and scores of the zero patch are exactly 0.
        let fp: Vec<f64> = rng.vec(h * w * c, -1.0, 1.0).into_iter().map(f64::from).collect();
        let rows: Vec<usize> = (0..h).collect();
        let pf = reference::query_patches(&fp, &g, &rows);
        let scores = reference::gemm_nt(&pf, &patches, h * w, h * w, d);
        let get = |x: &[f64], y: isize, xx: isize, ch: usize| {
            if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                0.0
            } else {
                x[(y as usize * w + xx as usize) * c + ch]
            }
        };
        for a in 0..h * w {
            let (i, j) = ((a / w) as isize, (a % w) as isize);
            assert_eq!(scores[a * h * w + zero], 0.0, "k={k}: score of the all-zero patch");
            for l in 0..h * w {
                let (u, v) = ((l / w) as isize, (l % w) as isize);
                let mut dot = 0.0;
                for dy in 0..k as isize {
                    for dx in 0..k as isize {
                        for ch in 0..c {
                            let o = q as isize;
                            dot += get(&fp, i + dy - o, j + dx - o, ch) * get(&bp, u + dy - o, v + dx - o, ch);
                        }
                    }
                }
                let want = dot / norms[l].max(1e-4);
                assert!(
                    (scores[a * h * w + l] - want).abs() < 1e-12,
                    "k={k}: S(query {a}, patch {l}) = {}, SPEC §2.7 gives {want}",
                    scores[a * h * w + l]
                );
            }
        }

        // f is not normalised: scaling f′ by 10 scales the scores by 10.
        let fp10: Vec<f64> = fp.iter().map(|v| v * 10.0).collect();
        let scores10 = reference::gemm_nt(&reference::query_patches(&fp10, &g, &rows), &patches, h * w, h * w, d);
        for (s10, s) in scores10.iter().zip(&scores) {
            assert!(
                (s10 - 10.0 * s).abs() <= 1e-12 * (1.0 + s.abs()),
                "k={k}: scores of 10·f′ are not 10× the scores ({s10} vs {s})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Mask (SPEC §2.7, §9.6)

#[test]
fn mask_window_of_a_single_hole() {
    let (h, w) = (6, 7);
    for (k, s) in [(3, 1), (4, 1), (3, 2), (4, 2), (5, 1)] {
        let params = Params { rate: 1, ksize: k, stride: s, ..Default::default() };
        let g = Geometry::new(&params, [1, h, w, 1], [1, h, w, 1], Some([1, h, w, 1])).unwrap();
        // SAME (n, k, s) written out: out = ceil(n/s), before = ⌊max((out−1)s + k − n, 0)/2⌋.
        let before = |n: usize| ((n.div_ceil(s) - 1) * s + k).saturating_sub(n) / 2;
        let (ph, pw) = (h.div_ceil(s), w.div_ceil(s));
        assert_eq!((g.ph, g.pw), (ph, pw));

        // No hole: every patch is valid, border patches included (padding counts as valid).
        assert_eq!(reference::mask_validity(&vec![0.0; h * w], &g), vec![1.0; ph * pw], "k={k} s={s}: empty mask");

        for hy in 0..h {
            for hx in 0..w {
                let mut m = vec![0.0; h * w];
                m[hy * w + hx] = 1.0;
                let mm = reference::mask_validity(&m, &g);
                for pu in 0..ph {
                    for pv in 0..pw {
                        let y0 = (pu * s) as isize - before(h) as isize;
                        let x0 = (pv * s) as isize - before(w) as isize;
                        let covers = (y0..y0 + k as isize).contains(&(hy as isize))
                            && (x0..x0 + k as isize).contains(&(hx as isize));
                        let want = if covers { 0.0 } else { 1.0 };
                        assert_eq!(mm[pu * pw + pv], want, "k={k} s={s}: hole at ({hy},{hx}), patch ({pu},{pv})");
                    }
                }
            }
        }
        // The comparison is an exact `== 0`: any positive value marks the patch.
        let mut m = vec![0.0; h * w];
        m[2 * w + 2] = 1e-30;
        let mut hole = vec![0.0; h * w];
        hole[2 * w + 2] = 1.0;
        let tiny = reference::mask_validity(&m, &g);
        assert!(tiny.contains(&0.0), "k={k} s={s}: a value of 1e-30 must mask its patches");
        assert_eq!(tiny, reference::mask_validity(&hole, &g), "k={k} s={s}: 1e-30 must mask like a 1");
    }
}

#[test]
fn whole_mask_gives_exactly_zero() {
    let mut rng = Rng::new("whole_mask_gives_exactly_zero");
    for masking in [Masking::ZeroLogit, Masking::Exclude] {
        for fuse in [true, false] {
            let params = Params { rate: 2, fuse, masking, ..Default::default() };
            let f = rng.tensor([2, 8, 10, 3], -1.0, 1.0);
            let b = rng.tensor([2, 8, 6, 3], -1.0, 1.0);
            let mask = Tensor::from_fn([1, 8, 6, 1], |_, _, _, _| 1.0);
            let out = ContextualAttention::reference(params).unwrap().forward(&f, &b, Some(&mask)).unwrap();
            assert!(
                out.y.data().iter().all(|&v| v == 0.0),
                "{masking:?} fuse {fuse}: y is not exactly 0 under a whole mask"
            );
            assert!(out.mass.iter().all(|&m| m == 0.0), "{masking:?} fuse {fuse}: mass {:?}", out.mass);
            assert!(
                out.argmax.iter().all(|&a| a == 0),
                "{masking:?} fuse {fuse}: argmax must be 0 when all is masked (SPEC §2.10)"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Paste overlap (SPEC §2.11, §9.7)

/// The paste's coverage of output row (or column) `p` of `n` at the original paste kernel 2·rate
/// (SPEC §2.11's formula, `common::spec::coverage`).
fn cov(n: usize, rate: usize, p: usize) -> f64 {
    coverage(n, rate, 2 * rate)[p] as f64
}

#[test]
fn paste_coverage_follows_the_spec_table() {
    // SPEC §2.11's table at K = 2r: every row is covered twice except these, covered once
    // (negative: counted from the end).
    for (rate, under) in [(1, &[0isize][..]), (2, &[0, -1]), (3, &[0, 1, -1]), (4, &[0, 1, -2, -1])] {
        for n in (rate * 2..=rate * 9).step_by(rate) {
            let want: Vec<usize> = (0..n as isize)
                .map(|p| if under.iter().any(|&u| if u >= 0 { p == u } else { p == n as isize + u }) { 1 } else { 2 })
                .collect();
            assert_eq!(coverage(n, rate, 2 * rate), want, "rate {rate}, {n} rows");
        }
    }
    assert_eq!(coverage(8, 2, 4), vec![1, 2, 2, 2, 2, 2, 2, 1]);
    assert_eq!(coverage(6, 1, 2), vec![1, 2, 2, 2, 2, 2]); // rate 1: first row only
    assert_eq!(coverage(12, 3, 6), vec![1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1]); // rate 3: two top, one bottom
    assert_eq!(coverage(12, 4, 8), vec![1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1]);
    // The seed's uneven pattern for K = 4, r = 3 on 6 columns: 1 1 1 2 1 1.
    assert_eq!(coverage(6, 3, 4), vec![1, 1, 1, 2, 1, 1]);
}

#[test]
fn constant_image_border_darkening() {
    let c = 4.0f32;
    for (rate, h, w) in [(2, 8, 10), (3, 12, 9), (1, 5, 7), (4, 16, 12)] {
        let params = Params { rate, fuse: false, ..Default::default() };
        let x = Tensor::from_fn([1, h, w, 4], |_, _, _, _| c);
        let out = ContextualAttention::reference(params).unwrap().forward(&x, &x, None).unwrap();
        for py in 0..h {
            for px in 0..w {
                let want = c as f64 * cov(h, rate, py) * cov(w, rate, px) / 4.0;
                for ch in 0..4 {
                    let got = out.y.at(0, py, px, ch) as f64;
                    assert!(
                        (got - want).abs() <= 1e-9 * want,
                        "rate {rate}: y({py},{px}) = {got}, want {want} (c·coverage/4)"
                    );
                }
            }
        }
        if rate == 2 {
            // c inside, c/2 on edges, c/4 at corners.
            assert_eq!(out.y.at(0, 3, 4, 0), c);
            assert_eq!(out.y.at(0, 0, 4, 0), c / 2.0);
            assert_eq!(out.y.at(0, 3, w - 1, 0), c / 2.0);
            assert_eq!(out.y.at(0, h - 1, w - 1, 0), c / 4.0);
        }
        if rate == 3 {
            // Exactly the first two rows and the last row are under-covered (away from the
            // under-covered columns).
            let under: Vec<usize> = (0..h).filter(|&py| out.y.at(0, py, 4, 0) < c).collect();
            assert_eq!(under, vec![0, 1, h - 1], "rate 3: under-covered rows");
        }
    }
}

#[test]
fn raw_patches_follow_spec_2_4() {
    // raw(l = (u,v), ty, tx, c) = b̃(u·r·s + ty − π, v·r·s + tx − π, c), π the SAME "before"
    // padding of (H, K, r·s); for s = 1 and K = 2r, π = ⌊r/2⌋ (SPEC §2.4).
    let mut rng = Rng::new("raw_patches_follow_spec_2_4");
    for (rate, stride, kernel, h, w) in
        [(1, 1, 2, 5, 7), (2, 1, 4, 8, 6), (3, 1, 6, 9, 12), (3, 1, 4, 12, 9), (2, 2, 4, 10, 14), (2, 2, 6, 8, 12)]
    {
        let c = 2;
        let params = Params { rate, stride, paste_kernel: Some(kernel), ..Default::default() };
        let g = Geometry::new(&params, [1, h, w, c], [1, h, w, c], None).unwrap();
        let step = rate * stride;
        let before = |n: usize| ((n.div_ceil(step) - 1) * step + kernel).saturating_sub(n) / 2;
        if stride == 1 && kernel == 2 * rate {
            assert_eq!((before(h), before(w)), (rate / 2, rate / 2));
        }
        let (ph, pw) = ((h / rate).div_ceil(stride), (w / rate).div_ceil(stride));
        let b: Vec<f64> = rng.vec(h * w * c, -1.0, 1.0).into_iter().map(f64::from).collect();
        let raw = reference::raw_patches(&b, &g);
        let len = kernel * kernel * c;
        assert_eq!(raw.len(), ph * pw * len);
        for u in 0..ph {
            for v in 0..pw {
                for ty in 0..kernel {
                    for tx in 0..kernel {
                        let y = (u * step + ty) as isize - before(h) as isize;
                        let x = (v * step + tx) as isize - before(w) as isize;
                        for ch in 0..c {
                            let want = if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                0.0
                            } else {
                                b[(y as usize * w + x as usize) * c + ch]
                            };
                            let got = raw[(u * pw + v) * len + (ty * kernel + tx) * c + ch];
                            assert_eq!(
                                got, want,
                                "r={rate} s={stride} K={kernel}: raw patch ({u},{v}) at ({ty},{tx},{ch})"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn identity_experiment_with_exact_overlap() {
    // SPEC §E: f = b, no mask, fuse off, a large softmax scale → attention one-hot on the
    // query's own patch; with `exact` overlap y = b at every pixel for any r and K ≥ r
    // (including the uneven K = 4, r = 3); with the original `/4` (K = 2r) y = b·coverage/4.
    let mut rng = Rng::new("identity_experiment_with_exact_overlap");
    for (rate, kernel, h, w) in [
        (1, 2, 5, 7),
        (2, 4, 8, 10),
        (3, 6, 12, 9),
        (3, 4, 12, 9),
        (2, 2, 8, 6),
        (2, 6, 8, 6),
        (3, 9, 9, 12),
        (1, 1, 4, 5),
    ] {
        let x = rng.tensor([1, h, w, 3], -1.0, 1.0);
        for overlap in [contextual_attention::Overlap::Exact, contextual_attention::Overlap::Quarter] {
            if overlap == contextual_attention::Overlap::Quarter && kernel != 2 * rate {
                continue;
            }
            let params = Params {
                rate,
                paste_kernel: Some(kernel),
                fuse: false,
                softmax_scale: 1000.0,
                overlap,
                ..Default::default()
            };
            let out = ContextualAttention::reference(params).unwrap().forward(&x, &x, None).unwrap();
            let (hf, wf) = (h / rate, w / rate);
            let own: Vec<u32> = (0..(hf * wf) as u32).collect();
            assert_eq!(out.argmax, own, "r={rate} K={kernel}: every query must attend to its own patch");
            for py in 0..h {
                for px in 0..w {
                    let factor = match overlap {
                        contextual_attention::Overlap::Exact => 1.0,
                        contextual_attention::Overlap::Quarter => cov(h, rate, py) * cov(w, rate, px) / 4.0,
                    };
                    for ch in 0..3 {
                        let (got, want) = (out.y.at(0, py, px, ch) as f64, x.at(0, py, px, ch) as f64 * factor);
                        assert!(
                            (got - want).abs() <= 1e-6,
                            "r={rate} K={kernel} {overlap:?}: y({py},{px},{ch}) = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Argmax ties and offsets (SPEC §2.10, §9.9)

#[test]
fn argmax_ties_pick_the_first_index() {
    // ksize 1, fuse off: every patch of a constant image is the same vector, so every score
    // ties and the first index wins.
    let x = Tensor::from_fn([1, 8, 10, 3], |_, _, _, _| 0.75);
    for rate in [1, 2] {
        let params = Params { rate, ksize: 1, fuse: false, ..Default::default() };
        let out = ContextualAttention::reference(params).unwrap().forward(&x, &x, None).unwrap();
        assert!(out.argmax.iter().all(|&a| a == 0), "rate {rate}: argmax {:?}", out.argmax);
    }
    // ksize 3: patches tie within each class of equal zero padding (top / interior / bottom
    // rows × left / interior / right columns); a query's best class is its own, and the first
    // patch of that class wins: row 0, 1 or hb−1, column 0, 1 or wb−1.
    let params = Params { rate: 2, ksize: 3, fuse: false, ..Default::default() };
    let out = ContextualAttention::reference(params).unwrap().forward(&x, &x, None).unwrap();
    let (hf, wf) = (4, 5);
    let first = |i: usize, n: usize| {
        if i == 0 {
            0
        } else if i == n - 1 {
            n - 1
        } else {
            1
        }
    };
    for i in 0..hf {
        for j in 0..wf {
            let want = (first(i, hf) * wf + first(j, wf)) as u32;
            assert_eq!(out.argmax[i * wf + j], want, "constant image, query ({i},{j})");
        }
    }
}

#[test]
fn offsets_decode_with_the_patch_grid_width() {
    let mut rng = Rng::new("offsets_decode_with_the_patch_grid_width");
    for (stride, f_shape, b_shape) in
        [(1, [2, 8, 12, 2], [2, 8, 6, 2]), (1, [1, 6, 4, 2], [1, 10, 14, 2]), (2, [1, 8, 8, 2], [1, 10, 14, 2])]
    {
        let params = Params { rate: 2, stride, ..Default::default() };
        let f = rng.tensor(f_shape, -1.0, 1.0);
        let b = rng.tensor(b_shape, -1.0, 1.0);
        let out = ContextualAttention::reference(params).unwrap().forward(&f, &b, None).unwrap();
        let (hb, wb) = (b_shape[1] / 2, b_shape[2] / 2);
        let (ph, pw) = (hb.div_ceil(stride), wb.div_ceil(stride));
        assert_eq!(out.patch_grid, (ph, pw));
        assert_eq!(out.grid, (f_shape[1] / 2, f_shape[2] / 2));
        let nq = f_shape[0] * (f_shape[1] / 2) * (f_shape[2] / 2);
        assert_eq!(out.argmax.len(), nq);
        assert_eq!(out.offsets.len(), 2 * nq);
        let distinct: BTreeSet<u32> = out.argmax.iter().copied().collect();
        assert!(distinct.len() > 1, "random inputs should not all pick the same patch");
        for (q, &a) in out.argmax.iter().enumerate() {
            assert!((a as usize) < ph * pw, "argmax {a} out of range");
            let want = [(a as usize / pw) as i32, (a as usize % pw) as i32];
            assert_eq!(out.offsets[2 * q..2 * q + 2], want, "offset of query {q} (argmax {a}, pw {pw})");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Large magnitudes (SPEC §9.11)

/// The attention rows of batch item 0 built from the twin's stage functions, in one tile.
fn twin_attention(params: &Params, g: &Geometry, f: &Tensor, b: &Tensor) -> (Vec<f64>, Vec<u32>, Vec<f64>) {
    let fd = to_f64(f.item(0).data());
    let bd = to_f64(b.item(0).data());
    let fp = reference::downscale(&fd, g.f_size.1, g.channels, &g.f_rows, &g.f_cols);
    let bp = reference::downscale(&bd, g.b_size.1, g.channels, &g.b_rows, &g.b_cols);
    let (pb, _) = reference::matching_patches(&bp, g);
    let rows: Vec<usize> = (0..g.hf).collect();
    let raw =
        reference::gemm_nt(&reference::query_patches(&fp, g, &rows), &pb, g.queries(), g.patches(), g.match_len());
    let mut scores = if g.fuse.is_some() { twin_fuse(g, &raw, FusePass::Rows, FusePass::Cols) } else { raw };
    let (argmax, mass) = reference::softmax(
        &mut scores,
        &vec![1.0; g.patches()],
        g.patches(),
        params.softmax_scale as f64,
        params.masking,
    );
    (scores, argmax, mass)
}

#[test]
fn large_magnitudes_stay_finite_and_one_hot() {
    let mut rng = Rng::new("large_magnitudes_stay_finite_and_one_hot");
    for fuse in [true, false] {
        let params = Params { rate: 2, fuse, ..Default::default() };
        let (h, w, c) = (8, 12, 3);
        let x =
            Tensor::new([1, h, w, c], rng.vec(h * w * c, -1.0, 1.0).into_iter().map(|v| v * 1000.0).collect()).unwrap();
        let g = Geometry::new(&params, x.shape(), x.shape(), None).unwrap();
        let out = ContextualAttention::reference(params.clone()).unwrap().forward(&x, &x, None).unwrap();
        assert!(out.y.data().iter().all(|v| v.is_finite()), "fuse {fuse}: Inf/NaN in y");
        for &m in &out.mass {
            assert!((m - 1.0).abs() < 1e-6, "fuse {fuse}: attention mass {m} without a mask");
        }
        let (attention, argmax, _) = twin_attention(&params, &g, &x, &x);
        assert_eq!(argmax, out.argmax, "fuse {fuse}: stage-built argmax vs the layer's");
        let l = g.patches();
        for (q, row) in attention.chunks(l).enumerate() {
            assert!(row.iter().all(|v| v.is_finite()));
            assert!(
                row[argmax[q] as usize] > 1.0 - 1e-9,
                "fuse {fuse}: query {q}: attention of the argmax is {}",
                row[argmax[q] as usize]
            );
        }
        // With one-hot attention, y is SPEC §2.11's average of shifted copies of b:
        // y(P,Q) = ¼ Σ_{(i,j)∈N(P,Q)} b̃(P + r(u−i), Q + r(v−j)), (u,v) the argmax of (i,j).
        let (r, k, pi) = (2isize, 4isize, 1isize);
        for py in 0..h as isize {
            for px in 0..w as isize {
                for ch in 0..c {
                    let mut sum = 0.0f64;
                    for i in 0..g.hf as isize {
                        for j in 0..g.wf as isize {
                            let (ty, tx) = (py - r * i + pi, px - r * j + pi);
                            if !(0..k).contains(&ty) || !(0..k).contains(&tx) {
                                continue;
                            }
                            let a = argmax[(i * g.wf as isize + j) as usize] as isize;
                            let (u, v) = (a / g.pw as isize, a % g.pw as isize);
                            let (sy, sx) = (py + r * (u - i), px + r * (v - j));
                            if sy >= 0 && sx >= 0 && sy < h as isize && sx < w as isize {
                                sum += x.at(0, sy as usize, sx as usize, ch) as f64;
                            }
                        }
                    }
                    let want = sum / 4.0;
                    let got = out.y.at(0, py as usize, px as usize, ch) as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * 1000.0,
                        "fuse {fuse}: y({py},{px},{ch}) = {got}, one-hot paste gives {want}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 10. The tile plan (SPEC §2.13, §T)

/// Raw rows a query row needs through both fuse passes, from the §2.8 closed form.
fn needed_raw_rows(hf: usize, wf: usize, fk: usize, row: usize) -> BTreeSet<usize> {
    let d_set = offsets(fk);
    let mut rows = BTreeSet::new();
    for j in 0..wf {
        for &e in &d_set {
            for &d in &d_set {
                if let Some(p) = c_step(hf, wf, (row, j), e).and_then(|p| r_step(hf, wf, p, d)) {
                    rows.insert(p.0);
                }
            }
        }
    }
    rows
}

#[test]
fn plan_halo_rows_and_cover() {
    let params = Params { rate: 1, ..Default::default() };
    let g = Geometry::new(&params, [1, 8, 8, 2], [1, 8, 8, 2], None).unwrap();
    let (hf, wf) = (g.hf, g.wf);
    assert_eq!(hf, 8);

    let plan = Plan::with_rows(&g, 2);
    let first = &plan.tiles[0];
    assert_eq!(first.rows, 0..2);
    assert!(
        first.raw_rows.contains(&(hf - 2)) && first.raw_rows.contains(&(hf - 1)),
        "tile [0,2): raw rows {:?} lack hf−2, hf−1",
        first.raw_rows
    );
    let last = plan.tiles.last().unwrap();
    assert_eq!(last.rows, 6..8);
    assert!(
        last.raw_rows.contains(&0) && last.raw_rows.contains(&1),
        "tile [6,8): raw rows {:?} lack 0, 1",
        last.raw_rows
    );

    for rows_per_tile in 1..=hf {
        let plan = Plan::with_rows(&g, rows_per_tile);
        let mut covered = Vec::new();
        for t in &plan.tiles {
            covered.extend(t.rows.clone());
            let need: BTreeSet<usize> = t.rows.clone().flat_map(|i| needed_raw_rows(hf, wf, 3, i)).collect();
            let have: BTreeSet<usize> = t.raw_rows.iter().copied().collect();
            assert!(need.is_subset(&have), "tile {:?}: needs raw rows {need:?}, has {have:?}", t.rows);
            // SPEC §2.13: rows r0−2 … r1+1, plus hf−2, hf−1 when touching row 0, plus 0, 1
            // when touching row hf−1.
            let (r0, r1) = (t.rows.start, t.rows.end);
            let mut allowed: BTreeSet<usize> = (r0.saturating_sub(2)..(r1 + 2).min(hf)).collect();
            if r0 == 0 {
                allowed.extend([hf - 2, hf - 1]);
            }
            if r1 == hf {
                allowed.extend([0, 1]);
            }
            assert!(have.is_subset(&allowed), "tile {:?}: raw rows {have:?} beyond SPEC §2.13's {allowed:?}", t.rows);
            assert!(t.raw_rows.windows(2).all(|p| p[0] < p[1]), "raw rows must be ascending");
        }
        assert_eq!(
            covered,
            (0..hf).collect::<Vec<_>>(),
            "rows per tile {rows_per_tile}: tiles must cover 0..hf once, in order"
        );
    }

    // Plans chosen by budget cover 0..hf exactly once too, and a smaller budget never gives bigger tiles.
    let mut last_rows = usize::MAX;
    for budget in [1u64 << 30, 200_000, 60_000, 30_000, 20_000] {
        match Plan::new(&g, budget, u64::MAX) {
            Ok(plan) => {
                let covered: Vec<usize> = plan.tiles.iter().flat_map(|t| t.rows.clone()).collect();
                assert_eq!(covered, (0..hf).collect::<Vec<_>>(), "budget {budget}");
                assert!(plan.tile_bytes <= budget, "budget {budget}: tile needs {} bytes", plan.tile_bytes);
                assert!(plan.rows_per_tile <= last_rows);
                last_rows = plan.rows_per_tile;
            }
            Err(e) => assert!(matches!(e, Error::MemoryBudget { .. }), "budget {budget}: {e}"),
        }
    }

    // Without fuse a tile needs only its own rows.
    let g2 = Geometry::new(&Params { rate: 1, fuse: false, ..Default::default() }, [1, 8, 8, 2], [1, 8, 8, 2], None)
        .unwrap();
    for t in &Plan::with_rows(&g2, 3).tiles {
        assert_eq!(t.raw_rows, t.rows.clone().collect::<Vec<_>>());
    }

    // A budget that fits but a binding limit that even one row exceeds: BufferTooLarge.
    match Plan::new(&g, 1 << 30, 64) {
        Err(Error::BufferTooLarge { limit, size, .. }) => {
            assert!(limit == 64 && size > 64, "limit {limit}, size {size}")
        }
        other => panic!("a 64-byte binding limit must give Error::BufferTooLarge, got {other:?}"),
    }

    match Plan::new(&g, 16, u64::MAX) {
        Err(Error::MemoryBudget { budget, needed }) => {
            assert_eq!(budget, 16);
            assert!(needed > 16, "needed {needed}");
            let msg = Plan::new(&g, 16, u64::MAX).unwrap_err().to_string();
            assert!(msg.contains("memory budget"), "message: {msg}");
        }
        other => panic!("a 16-byte budget must give Error::MemoryBudget, got {other:?}"),
    }
}
