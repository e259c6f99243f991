//! The fast CPU backend (`Backend::Cpu`, issue 8) beyond the grid and goldens it shares with the
//! GPU (`tests/layer.rs`, `tests/golden.rs`): random configurations of every parameter under
//! random query × key tilings against the twin (1e-5 of max |y|; 5e-5 at softmax scale 100),
//! the same bits for any thread count, tiling invariance over query and key tiles (wrap-around
//! halos included), inspected attention rows, progress, and the memory budget.

mod common;

use common::{assert_close, bits, max_abs, relu_features, square_hole, to_f64, Rng};
use contextual_attention::cpu::{self, Tiling};
use contextual_attention::{ContextualAttention, FuseMode, Geometry, Masking, Output, Params, RunOptions, Tensor};

/// The CPU backend with an explicit tiling.
fn run_tiled(
    p: &Params,
    f: &Tensor,
    b: &Tensor,
    mask: Option<&Tensor>,
    rows: (usize, usize),
    queries: &[(usize, usize)],
) -> Output {
    let g = Geometry::new(p, f.shape(), b.shape(), mask.map(|m| m.shape())).unwrap();
    let tiling = Tiling::with_rows(&g, rows.0, rows.1);
    cpu::forward(p, &g, &tiling, &mut cpu::Workspace::default(), f, b, mask, queries, &mut |_, _| {}).unwrap()
}

/// Same y within 1e-6 relative of max |y|, identical argmax, mass within 1e-6.
fn assert_same(what: &str, a: &Output, b: &Output) {
    let ymax = max_abs(a.y.data()).max(1e-30);
    assert_close(&format!("{what}: y"), b.y.data(), &to_f64(a.y.data()), 1e-6 * ymax, 0.0);
    assert_eq!(a.argmax, b.argmax, "{what}: argmax");
    assert_close(&format!("{what}: mass"), &b.mass, &to_f64(&a.mass), 1e-6, 0.0);
}

#[test]
fn random_configurations_and_tilings_agree_with_the_twin() {
    let mut rng = Rng::new("cpu_fuzz");
    let mut checked = 0;
    for it in 0..150 {
        let (params, f, b, mask) = common::random_case(&mut rng);
        let rows = (1 + rng.below(3), 1 + rng.below(3));
        let what = format!(
            "case {it}: {params:?}, f {:?}, b {:?}, mask {:?}, tiles of {rows:?} rows",
            f.shape(),
            b.shape(),
            mask.as_ref().map(|m| m.shape())
        );
        let twin = ContextualAttention::reference(params.clone()).unwrap().forward(&f, &b, mask.as_ref());
        let Ok(twin) = twin else {
            // Invalid sizes: the CPU backend refuses them with the same message.
            let e = ContextualAttention::cpu(params).unwrap().forward(&f, &b, mask.as_ref()).err();
            assert_eq!(e.map(|e| e.to_string()), twin.err().map(|e| e.to_string()), "{what}");
            continue;
        };
        let out = run_tiled(&params, &f, &b, mask.as_ref(), rows, &[]);
        // 1e-5 of max |y|, except at softmax scale 100: logits up to ~10³ from f32 scores carry
        // absolute errors ~10⁻⁴ in any f32 implementation (the original's too), and the softmax
        // passes them on. Over 6,000 random cases (40 seeds) the worst was 5.5e-7 at scale 0.5,
        // 5.1e-6 at 10 and 2.2e-5 at 100.
        let rtol = if params.softmax_scale > 10.0 { 5e-5 } else { 1e-5 };
        let scale = max_abs(twin.y.data()).max(1e-6);
        assert_close(&format!("{what}: y"), out.y.data(), &to_f64(twin.y.data()), rtol * scale, 0.0);
        assert_close(&format!("{what}: mass"), &out.mass, &to_f64(&twin.mass), 1e-5, 0.0);
        checked += 1;
    }
    assert!(checked >= 100, "only {checked} of 150 random cases were valid");
}

#[test]
fn same_bits_for_any_thread_count() {
    let mut rng = Rng::new("cpu_threads");
    let shape = [2, 48, 40, 24];
    let x = relu_features(&mut rng, shape);
    let hole = square_hole(48, 40, 12, 10, 20);
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::cpu(p).unwrap();
    let queries = [(3, 4), (20, 1)];
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| layer.forward_inspect(&x, &x, Some(&hole), &queries).unwrap())
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        let other = run(threads);
        assert_eq!(bits(one.y.data()), bits(other.y.data()), "y with {threads} threads");
        assert_eq!(one.argmax, other.argmax, "argmax with {threads} threads");
        assert_eq!(bits(&one.mass), bits(&other.mass), "mass with {threads} threads");
        assert_eq!(bits(&one.attention_rows), bits(&other.attention_rows), "attention rows with {threads} threads");
    }
}

#[test]
fn query_and_key_tiles_do_not_change_the_result() {
    let mut rng = Rng::new("cpu_tiling");
    // f ≠ b sizes, wrap-around fuse (halos across the grid's ends), a hole, per-sample masks.
    let f = relu_features(&mut rng, [2, 26, 30, 8]);
    let b = relu_features(&mut rng, [2, 34, 22, 8]);
    let mask = common::concat_batch(&[square_hole(34, 22, 6, 4, 12), square_hole(34, 22, 14, 8, 10)]);
    for (fuse_k, mode, masking) in [
        (3, FuseMode::Wrap, Masking::ZeroLogit),
        (5, FuseMode::Wrap, Masking::Exclude),
        (2, FuseMode::Spatial, Masking::ZeroLogit),
    ] {
        let p = Params { rate: 2, fuse_k, fuse_mode: mode, masking, ..Default::default() };
        let whole = run_tiled(&p, &f, &b, Some(&mask), (usize::MAX, usize::MAX), &[]);
        let twin = ContextualAttention::reference(p.clone()).unwrap().forward(&f, &b, Some(&mask)).unwrap();
        assert_close("whole vs twin: y", whole.y.data(), &to_f64(twin.y.data()), 1e-5 * max_abs(twin.y.data()), 0.0);
        for rows in [(1, 1), (2, 3), (5, 1), (1, 4), (13, 17), (3, usize::MAX)] {
            let tiled = run_tiled(&p, &f, &b, Some(&mask), rows, &[]);
            assert_same(
                &format!("fk {fuse_k} {mode:?} {masking:?}: tiles of {rows:?} rows vs one tile"),
                &whole,
                &tiled,
            );
        }
    }
}

#[test]
fn inspected_attention_rows_and_progress_match_the_twin() {
    let mut rng = Rng::new("cpu_inspect");
    let x = relu_features(&mut rng, [2, 32, 24, 6]);
    let hole = square_hole(32, 24, 8, 6, 12);
    let p = Params { rate: 2, softmax_scale: 0.5, ..Default::default() };
    let queries = [(0, 0), (7, 11), (15, 3)];
    let twin =
        ContextualAttention::reference(p.clone()).unwrap().forward_inspect(&x, &x, Some(&hole), &queries).unwrap();
    for rows in [(16, 12), (3, 2)] {
        let out = run_tiled(&p, &x, &x, Some(&hole), rows, &queries);
        assert_eq!(out.attention_rows.len(), twin.attention_rows.len());
        assert_close(
            &format!("attention rows, tiles {rows:?}"),
            &out.attention_rows,
            &to_f64(&twin.attention_rows),
            1e-6,
            1e-5,
        );
    }
    let calls = std::cell::RefCell::new(Vec::new());
    let layer = ContextualAttention::cpu(Params { memory_budget: Some(96 << 10), ..p }).unwrap();
    let progress = |done, total| calls.borrow_mut().push((done, total));
    let out = layer.run(&x, &x, Some(&hole), &RunOptions::new().progress(&progress).queries(&queries)).unwrap();
    assert_close("attention rows under a budget", &out.attention_rows, &to_f64(&twin.attention_rows), 1e-6, 1e-5);
    let calls = calls.into_inner();
    let total = calls.last().unwrap().1;
    assert!(total >= 4, "a 96 KiB budget splits 2 items into several tiles, got {total}");
    assert_eq!(calls, (1..=total).map(|d| (d, total)).collect::<Vec<_>>(), "progress counts every tile once");
}

#[test]
fn tiling_fits_the_budget_and_bounds_key_buffers() {
    let p = Params { rate: 1, ..Default::default() };
    let g = Geometry::new(&p, [1, 128, 128, 128], [1, 128, 128, 128], Some([1, 128, 128, 1])).unwrap();
    for budget in [16u64 << 20, 64 << 20, 256 << 20] {
        let t = Tiling::new(&g, budget, None).unwrap();
        assert!(t.bytes(&g) <= budget, "{budget}: {} B", t.bytes(&g));
        assert!(t.keys.len() > 1, "{budget} B for 16384 patches needs key tiles");
    }
    let e = Tiling::new(&g, 1 << 20, None).unwrap_err().to_string();
    assert!(e.contains("memory budget"), "{e}");
}

#[test]
fn default_budget_follows_the_inputs_within_its_bounds() {
    let p = Params { rate: 2, ..Default::default() };
    let budget = |h: usize, c: usize| {
        let g = Geometry::new(&p, [1, h, h, c], [1, h, h, c], None).unwrap();
        (cpu::default_budget(&g), g)
    };
    // 64×64×128 f and b: 2 × 2 MiB of f32, two and a half times that.
    let (b64, g) = budget(64, 128);
    assert_eq!(b64, 10 << 20);
    let t = Tiling::for_call(&g, None, None).unwrap();
    assert!(t.bytes(&g) <= b64, "the default tiling fits the default budget: {} B", t.bytes(&g));
    assert_eq!(budget(16, 8).0, 8 << 20, "small inputs get the 8 MiB floor");
    assert_eq!(budget(1024, 128).0, cpu::MAX_DEFAULT_BUDGET, "large inputs are capped");
}

#[test]
fn wide_backgrounds_split_into_several_gram_blocks_and_agree_with_the_twin() {
    // b′ is 440 pixels wide (880 at rate 2): a Gram block spans at most 2,048 of b′'s pixels,
    // 4 pixel rows, so it holds 2 patch rows at stride 1 (with their k − 1 = 2 window rows) and
    // 1 at stride 2, and each key tile's rows go through several blocks. f is small so the
    // test stays quick.
    let mut rng = Rng::new("cpu_wide_b");
    for (stride, rows) in [(1, (2, 3)), (2, (1, 2)), (1, (3, 6))] {
        let p = Params { rate: 2, stride, ..Params::default() };
        let f = relu_features(&mut rng, [1, 8, 16, 3]);
        let b = relu_features(&mut rng, [1, 24, 880, 3]);
        let mask = square_hole(24, 880, 4, 100, 12);
        let twin = ContextualAttention::reference(p.clone()).unwrap().forward(&f, &b, Some(&mask)).unwrap();
        let out = run_tiled(&p, &f, &b, Some(&mask), rows, &[]);
        let what = format!("stride {stride}, tiles of {rows:?} rows");
        let scale = max_abs(twin.y.data());
        assert_close(&format!("{what}: y"), out.y.data(), &to_f64(twin.y.data()), 1e-5 * scale, 0.0);
        assert_close(&format!("{what}: mass"), &out.mass, &to_f64(&twin.mass), 1e-5, 0.0);
    }
}
