//! Each GPU stage on its own against its CPU twin (DESIGN.md, Testing): fresh random inputs
//! (never all zeros), several shapes (odd, non-square, rate 1/2/3, ksize 3/4/5, stride 1/2,
//! paste kernel 2r and others), outputs poisoned with NaN by each stage's `run` so an unwritten element
//! fails. Exact where the stage only moves data; ~1e-5 relative where it sums.

mod common;

use common::{assert_close, bits, to_f64, Rng};
use contextual_attention::geometry::FusePass;
use contextual_attention::gpu::stages;
use contextual_attention::plan::{Plan, Tile};
use contextual_attention::reference;
use contextual_attention::Gpu;
use contextual_attention::{FuseMode, Geometry, Masking, Overlap, Params};

/// Tolerances of the summing stages: |Δ| ≤ ATOL + RTOL·|want|.
const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;

struct Config {
    name: &'static str,
    params: Params,
    f: [usize; 4],
    b: [usize; 4],
}

impl Config {
    fn geometry(&self) -> Geometry {
        let mask = [1, self.b[1], self.b[2], 1];
        Geometry::new(&self.params, self.f, self.b, Some(mask)).unwrap()
    }
    fn with_mode(&self, mode: FuseMode) -> Geometry {
        let params = Params { fuse_mode: mode, ..self.params.clone() };
        Geometry::new(&params, self.f, self.b, None).unwrap()
    }
}

fn configs() -> Vec<Config> {
    let p = Params::default();
    vec![
        Config {
            name: "r1 k3 s1, odd 5×7 vs 6×4",
            params: Params { rate: 1, ksize: 3, ..p.clone() },
            f: [1, 5, 7, 3],
            b: [1, 6, 4, 3],
        },
        Config {
            name: "r2 k4 s1 fk2, 10×6 vs 8×12",
            params: Params { rate: 2, ksize: 4, fuse_k: 2, ..p.clone() },
            f: [1, 10, 6, 2],
            b: [1, 8, 12, 2],
        },
        Config {
            name: "r3 k3 s2 (K=6), 9×12 vs 15×12",
            params: Params { rate: 3, ksize: 3, stride: 2, ..p.clone() },
            f: [1, 9, 12, 2],
            b: [1, 15, 12, 2],
        },
        Config {
            name: "r3 k4 s1 K=4 fk5, 12×9 vs 9×9",
            params: Params { rate: 3, ksize: 4, paste_kernel: Some(4), fuse_k: 5, ..p.clone() },
            f: [1, 12, 9, 2],
            b: [1, 9, 9, 2],
        },
        Config {
            name: "r2 k3 s2 K=6, 14×10 vs 12×14",
            params: Params { rate: 2, ksize: 3, stride: 2, paste_kernel: Some(6), ..p.clone() },
            f: [1, 14, 10, 3],
            b: [1, 12, 14, 3],
        },
        Config {
            name: "r1 k5 s1 K=1 fk3, 7×6 vs 7×6",
            params: Params { rate: 1, ksize: 5, paste_kernel: Some(1), ..p.clone() },
            f: [1, 7, 6, 2],
            b: [1, 7, 6, 2],
        },
    ]
}

macro_rules! stages_or_skip {
    () => {{
        gpu_or_skip!()
    }};
}

/// Asserts bit-exact equality (data movement stages).
fn assert_exact(what: &str, got: &[f32], want: &[f64]) {
    assert_close(what, got, want, 0.0, 0.0);
}

#[test]
fn downscale_matches_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("downscale_matches_twin");
    for cfg in configs() {
        let g = cfg.geometry();
        let c = g.channels;
        let f = rng.vec(g.f_size.0 * g.f_size.1 * c, -1.0, 1.0);
        let got = stages::downscale::run(st, &f, g.f_size.1, c, &g.f_rows, &g.f_cols).unwrap();
        let want = reference::downscale(&to_f64(&f), g.f_size.1, c, &g.f_rows, &g.f_cols);
        assert_eq!(want.len(), g.queries() * c);
        assert_exact(&format!("{}: downscale f", cfg.name), &got, &want);

        let b = rng.vec(g.b_size.0 * g.b_size.1 * c, -1.0, 1.0);
        let got = stages::downscale::run(st, &b, g.b_size.1, c, &g.b_rows, &g.b_cols).unwrap();
        let want = reference::downscale(&to_f64(&b), g.b_size.1, c, &g.b_rows, &g.b_cols);
        assert_exact(&format!("{}: downscale b", cfg.name), &got, &want);

        let m: Vec<f32> = (0..g.b_size.0 * g.b_size.1).map(|_| (rng.below(3) == 0) as u8 as f32).collect();
        let got = stages::downscale::run(st, &m, g.b_size.1, 1, &g.b_rows, &g.b_cols).unwrap();
        let want = reference::downscale(&to_f64(&m), g.b_size.1, 1, &g.b_rows, &g.b_cols);
        assert_exact(&format!("{}: downscale mask", cfg.name), &got, &want);
    }
}

#[test]
fn matching_patches_and_norms_match_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("matching_patches_and_norms_match_twin");
    for cfg in configs() {
        let g = cfg.geometry();
        let n = g.hb * g.wb * g.channels;
        let mut inputs = vec![("random", rng.vec(n, -1.0, 1.0))];
        // Part of b′ zero (an all-zero patch: norm 0, no NaN) and one tiny pixel (the 1e-4 clamp).
        let mut holey = rng.vec(n, -1.0, 1.0);
        let w = g.wb * g.channels;
        for v in &mut holey[..w.min(n)] {
            *v = 0.0;
        }
        for v in &mut holey[w..(g.hb.min(4) * w).min(n)] {
            *v = 0.0;
        }
        if n > w {
            holey[w + g.channels] = 1e-6;
        }
        inputs.push(("zero rows and a tiny pixel", holey));
        for (kind, bp) in inputs {
            let (got_p, got_n) = stages::matching_patches::run(st, &bp, &g).unwrap();
            let (want_p, want_n) = reference::matching_patches(&to_f64(&bp), &g);
            assert_close(&format!("{} ({kind}): matching patches", cfg.name), &got_p, &want_p, ATOL, RTOL);
            assert_close(&format!("{} ({kind}): patch norms", cfg.name), &got_n, &want_n, ATOL, RTOL);
        }
    }
}

#[test]
fn mask_validity_matches_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("mask_validity_matches_twin");
    for cfg in configs() {
        let g = cfg.geometry();
        let n = g.hb * g.wb;
        let sparse: Vec<f32> = (0..n).map(|_| (rng.below(8) == 0) as u8 as f32).collect();
        let mut corner = vec![0.0f32; n];
        corner[n - 1] = 1.0; // a hole in the bottom-right corner only
        let mut tiny = vec![0.0f32; n];
        tiny[rng.below(n)] = 1e-30; // any positive value masks (exact `== 0`)
        for (kind, mp) in
            [("sparse holes", sparse), ("corner hole", corner), ("tiny value", tiny), ("no hole", vec![0.0; n])]
        {
            let got = stages::mask_validity::run(st, &mp, &g).unwrap();
            let want = reference::mask_validity(&to_f64(&mp), &g);
            assert_exact(&format!("{} ({kind}): mask validity", cfg.name), &got, &want);
        }
    }
}

#[test]
fn raw_patches_match_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("raw_patches_match_twin");
    for cfg in configs() {
        let g = cfg.geometry();
        let b = rng.vec(g.b_size.0 * g.b_size.1 * g.channels, -1.0, 1.0);
        let got = stages::raw_patches::run(st, &b, &g).unwrap();
        let want = reference::raw_patches(&to_f64(&b), &g);
        assert_eq!(want.len(), g.patches() * g.raw_len());
        assert_exact(&format!("{}: raw patches", cfg.name), &got, &want);
    }
}

#[test]
fn query_patches_match_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("query_patches_match_twin");
    for cfg in configs() {
        let g = cfg.geometry();
        let fp = rng.vec(g.queries() * g.channels, -1.0, 1.0);
        let all: Vec<usize> = (0..g.hf).collect();
        let mut row_sets = vec![all];
        // The raw rows of each tile of a 1-row plan (with the fuse halo, possibly wrapped).
        row_sets.extend(Plan::with_rows(&g, 1).tiles.into_iter().map(|t| t.raw_rows));
        row_sets.push(vec![g.hf - 1]);
        row_sets.dedup();
        for rows in row_sets {
            let got = stages::query_patches::run(st, &fp, &g, &rows).unwrap();
            let want = reference::query_patches(&to_f64(&fp), &g, &rows);
            assert_exact(&format!("{}: query patches of rows {rows:?}", cfg.name), &got, &want);
        }
    }
}

#[test]
fn gemm_matches_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("gemm_matches_twin");
    let mut shapes = vec![(1, 1, 1), (7, 5, 3), (37, 29, 19), (64, 64, 16), (65, 33, 70), (130, 3, 27), (3, 130, 9)];
    // The shapes the layer uses: scores [raw rows·wf, k²C]·[L, k²C]ᵀ and paste [rows·wf, L]·[L, K²C].
    for cfg in configs() {
        let g = cfg.geometry();
        shapes.push((g.queries(), g.patches(), g.match_len()));
        shapes.push((g.queries(), g.raw_len(), g.patches()));
    }
    // Sizes that are multiples of every variant's tiles, so the kernels without bounds checks run too.
    shapes.extend([(128, 64, 32), (256, 128, 64)]);
    use stages::gemm::{Kind, VARIANTS};
    for (m, n, k) in shapes {
        for kind in [Kind::Scores, Kind::Paste] {
            let a = rng.vec(m * k, -1.0, 1.0);
            let b = rng.vec(n * k, -1.0, 1.0);
            let want = match kind {
                Kind::Scores => reference::gemm_nt(&to_f64(&a), &to_f64(&b), m, n, k),
                Kind::Paste => reference::gemm_nn(&to_f64(&a), &to_f64(&b), m, n, k),
            };
            // f32 accumulation of k products of magnitude ≤ 1.
            let atol = 1e-6 * (k as f64).sqrt().max(1.0) * 4.0;
            let mut first: Option<Vec<f32>> = None;
            for (v, variant) in VARIANTS.iter().enumerate() {
                let got = stages::gemm::run(st, kind, v, &a, &b, m, n, k).unwrap();
                let what = format!("gemm {kind:?} {m}×{n}×{k}, variant {}", variant.name);
                assert_close(&what, &got, &want, atol, RTOL);
                // Every variant adds in ascending k: the same bits.
                match &first {
                    None => first = Some(got),
                    Some(f) => assert!(bits(f) == bits(&got), "{what}: not bit-identical to {}", VARIANTS[0].name),
                }
            }
        }
    }
}

#[test]
fn fuse_passes_match_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("fuse_passes_match_twin");
    for cfg in configs() {
        for mode in [FuseMode::Wrap, FuseMode::Spatial] {
            let g = cfg.with_mode(mode);
            let l = g.patches();
            for rows_per_tile in [g.hf, 2, 1] {
                let plan = Plan::with_rows(&g, rows_per_tile);
                // All tiles of the 2-row plan; the first, a middle and the last tile otherwise.
                let picks: Vec<usize> = if rows_per_tile == 2 {
                    (0..plan.tiles.len()).collect()
                } else {
                    let mut p = vec![0, plan.tiles.len() / 2, plan.tiles.len() - 1];
                    p.dedup();
                    p
                };
                for t in picks.into_iter().map(|i| &plan.tiles[i]) {
                    let what = format!("{} {mode:?}, tile {:?}", cfg.name, t.rows);
                    // Pass 1 (rows): raw rows → first-pass rows.
                    let input = rng.vec(t.raw_rows.len() * g.wf * l, -1.0, 1.0);
                    let slots = Tile::slot_map(&t.raw_rows, g.hf);
                    let got = stages::fuse::run(st, &input, &slots, &t.pass1_rows, &g, FusePass::Rows).unwrap();
                    let want = reference::fuse_pass(&to_f64(&input), &slots, &t.pass1_rows, &g, FusePass::Rows);
                    assert_close(&format!("{what}: fuse pass Rows"), &got, &want, ATOL, RTOL);
                    // Pass 2 (cols): first-pass rows → the tile's rows.
                    let input = rng.vec(t.pass1_rows.len() * g.wf * l, -1.0, 1.0);
                    let slots = Tile::slot_map(&t.pass1_rows, g.hf);
                    let rows: Vec<usize> = t.rows.clone().collect();
                    let got = stages::fuse::run(st, &input, &slots, &rows, &g, FusePass::Cols).unwrap();
                    let want = reference::fuse_pass(&to_f64(&input), &slots, &rows, &g, FusePass::Cols);
                    assert_close(&format!("{what}: fuse pass Cols"), &got, &want, ATOL, RTOL);
                }
            }
        }
    }
}

/// Compares the GPU softmax of `scores` with the twin's; argmax where the twin's top-2 margin
/// exceeds 1e-5, or where the whole row is 0 (everything masked: the first index, 0).
fn check_softmax(st: &Gpu, what: &str, scores: &[f32], mm: &[f32], l: usize, scale: f32, masking: Masking) {
    let (got_a, got_i, got_m) = stages::softmax::run(st, scores, mm, l, scale, masking).unwrap();
    let mut want_a = to_f64(scores);
    let (want_i, want_m) = reference::softmax(&mut want_a, &to_f64(mm), l, scale as f64, masking);
    assert_close(&format!("{what}: attention"), &got_a, &want_a, ATOL, RTOL);
    assert_close(&format!("{what}: mass"), &got_m, &want_m, ATOL, RTOL);
    let mut checked = 0;
    for (q, row) in want_a.chunks(l).enumerate() {
        let mut sorted = row.to_vec();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let margin = if l > 1 { sorted[0] - sorted[1] } else { f64::INFINITY };
        if margin > 1e-5 || row.iter().all(|&a| a == 0.0) {
            assert_eq!(got_i[q], want_i[q], "{what}: argmax of row {q} (twin's top-2 margin {margin:e})");
            checked += 1;
        }
    }
    assert!(checked > 0, "{what}: no row had a clear argmax; the test input is too flat");
}

#[test]
fn softmax_matches_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("softmax_matches_twin");
    for (rows, l, magnitude) in
        [(37, 300, 1.0), (9, 5, 1.0), (4, 1, 1.0), (3, 257, 1.0), (64, 24, 1.0), (16, 40, 1000.0)]
    {
        // magnitude 1000: logits ≈ 1e4 (SPEC §9.11) must stay finite and one-hot. Those scores
        // are multiples of 1/8 so that λ·s is exact in f32 for the λ used here; otherwise the f32
        // rounding of a 1e5 logit (~6e-3) alone would exceed the tolerance at near-ties.
        let mut scores = rng.vec(rows * l, -magnitude, magnitude);
        if magnitude > 1.0 {
            scores.iter_mut().for_each(|s| *s = (*s * 8.0).round() / 8.0);
        }
        // A clear winner in half of the rows (at the last patch, which the mixed mask keeps
        // valid, or anywhere), so that the argmax is checked even at λ = 0.5 over 300 patches.
        for q in (0..rows).step_by(2) {
            let at = if q % 4 == 0 { l - 1 } else { rng.below(l) };
            scores[q * l + at] = magnitude + 0.5;
        }
        let mixed: Vec<f32> = (0..l)
            .map(|i| {
                if i == 0 {
                    0.0
                } else if i == l - 1 {
                    1.0
                } else {
                    (rng.below(3) != 0) as u8 as f32
                }
            })
            .collect();
        let masks = [("no mask", vec![1.0f32; l]), ("mixed mask", mixed), ("all masked", vec![0.0f32; l])];
        for (kind, mm) in &masks {
            for masking in [Masking::ZeroLogit, Masking::Exclude] {
                for scale in [10.0f32, 0.5, 100.0] {
                    let what = format!("softmax {rows}×{l}, |s| ≤ {magnitude}, {kind}, {masking:?}, λ={scale}");
                    check_softmax(st, &what, &scores, mm, l, scale, masking);
                }
                if *kind == "all masked" {
                    // SPEC §2.3 / §2.9: every patch masked → attention 0, mass 0, argmax 0, never NaN.
                    let (a, i, m) = stages::softmax::run(st, &scores, mm, l, 10.0, masking).unwrap();
                    assert!(a.iter().all(|&v| v == 0.0), "{kind} {masking:?}: attention not exactly 0");
                    assert!(m.iter().all(|&v| v == 0.0), "{kind} {masking:?}: mass not exactly 0");
                    assert!(i.iter().all(|&v| v == 0), "{kind} {masking:?}: argmax {i:?}");
                }
            }
        }
    }
}

#[test]
fn attention_rows_match_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("attention_rows_match_twin");
    for (rows, l) in [(6, 35), (1, 1), (12, 300)] {
        let attention = rng.vec(rows * l, 0.0, 1.0);
        // Some rows copied, one twice, to destination rows in another order; some left out.
        let dst_rows = rows + 2;
        let mut pairs: Vec<(u32, u32)> = (0..rows as u32).step_by(2).map(|r| (r, dst_rows as u32 - 1 - r)).collect();
        pairs.push((0, 1.min(dst_rows as u32 - 1)));
        pairs.dedup_by_key(|p| p.1);
        let got = stages::attention_rows::run(st, &attention, l, &pairs, dst_rows).unwrap();
        let mut want = vec![f32::NAN; dst_rows * l];
        reference::attention_rows(&to_f64(&attention), l, &pairs, 0, &mut want);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits(), "rows {rows}, l {l}: element {k} is {g}, want {w} (NaN = not written)");
        }
        assert!(got.iter().any(|v| v.is_nan()) == want.iter().any(|v| v.is_nan()));
    }
}

#[test]
fn fold_matches_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("fold_matches_twin");
    for cfg in configs() {
        let g = cfg.geometry();
        let y_len = g.f_size.0 * g.f_size.1 * g.channels;
        let mut tiles: Vec<std::ops::Range<usize>> = std::iter::once(0..g.hf).collect();
        tiles.extend(Plan::with_rows(&g, 2).tiles.into_iter().map(|t| t.rows));
        if g.hf >= 3 {
            tiles.push(1..g.hf - 1); // a tile in the middle
        }
        for rows in tiles {
            let cols = rng.vec(rows.len() * g.wf * g.raw_len(), -1.0, 1.0);
            let y = rng.vec(y_len, -1.0, 1.0); // added onto a non-zero y
            let got = stages::fold::run(st, &cols, rows.clone(), &g, &y).unwrap();
            let mut want = to_f64(&y);
            reference::fold(&to_f64(&cols), rows.clone(), &g, &mut want);
            assert_close(&format!("{}: fold of query rows {rows:?}", cfg.name), &got, &want, ATOL, RTOL);
        }
    }
}

#[test]
fn normalize_matches_twin() {
    let st = stages_or_skip!();
    let mut rng = Rng::new("normalize_matches_twin");
    for cfg in configs() {
        let g = cfg.geometry();
        let y = rng.vec(g.f_size.0 * g.f_size.1 * g.channels, -1.0, 1.0);
        for overlap in [Overlap::Quarter, Overlap::Exact] {
            let got = stages::normalize::run(st, &y, &g, overlap).unwrap();
            let mut want = to_f64(&y);
            reference::normalize(&mut want, &g, overlap);
            assert_close(&format!("{}: normalize {overlap:?}", cfg.name), &got, &want, 0.0, 1e-6);
        }
    }
}

#[test]
fn dispatch_grid_folds_past_65535_workgroups() {
    // 4097² elements need 65,569 workgroups of 256: more than one grid dimension allows, so the
    // dispatch is folded into two dimensions and the shader rebuilds the linear index.
    let st = stages_or_skip!();
    let n = 4097;
    let x: Vec<f32> = (0..n * n).map(|i| (i % 65_521) as f32).collect();
    // Reversed row and column maps, so every output element comes from a different place.
    let rev: Vec<u32> = (0..n as u32).rev().collect();
    let got = stages::downscale::run(st, &x, n, 1, &rev, &rev).unwrap();
    assert_eq!(got.len(), n * n);
    for (k, &v) in got.iter().enumerate() {
        let (i, j) = (k / n, k % n);
        let want = x[(n - 1 - i) * n + (n - 1 - j)];
        assert!(v == want, "element {k} = ({i},{j}): got {v}, want {want}");
    }
}

#[test]
fn gemm_variants_are_timed_on_the_device_and_the_choice_is_kept() {
    use stages::gemm::{choices, choose, time_variants, Kind, ShapeClass, DEFAULT, VARIANTS};
    let st = stages_or_skip!();
    let timestamps = st.device().features().contains(wgpu::Features::TIMESTAMP_QUERY);
    if timestamps {
        let class = ShapeClass { kind: Kind::Scores, m: 256, n: 128, k: 64 };
        let times = time_variants(st, class).unwrap();
        eprintln!("GEMM variants at {class:?}: {times:?}");
        assert_eq!(times.iter().map(|t| t.0).collect::<Vec<_>>(), (0..VARIANTS.len()).collect::<Vec<_>>());
        assert!(times.iter().all(|t| t.1.is_finite() && t.1 > 0.0), "{times:?}");
    }
    if std::env::var("CA_GEMM_VARIANT").is_ok() {
        return;
    }
    // Timed where the device has timestamps (the fastest wins), else the default; kept.
    let v = choose(st, Kind::Paste, 100, 200, 300).unwrap();
    let kept = choices(st);
    let (class, choice) = kept.iter().find(|(c, _)| c.kind == Kind::Paste).unwrap();
    eprintln!("paste 100×200×300: class {class:?}, {choice:?}");
    assert_eq!(choice.variant, v);
    if timestamps {
        assert_eq!(choice.reason, "timed");
        let fastest = choice.times_ms.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
        assert_eq!(v, fastest);
    } else {
        assert!(v == DEFAULT && choice.reason.starts_with("default"), "{choice:?}");
    }
    assert_eq!(choose(st, Kind::Paste, 100, 200, 300).unwrap(), v, "the choice is kept");
}
