//! Tiling invariance (SPEC §T, §9.12): the result does not depend on how the query rows are
//! split into tiles — on the GPU at model size under budgets that force several tiles, on the
//! twin for every tile height, and on the GPU for every tile height at a small size. The tile
//! plan itself (halo rows, cover) is checked in `tests/geometry.rs`; every extended option under
//! tiling in `tests/extended.rs`.

mod common;

use std::time::Instant;

use common::compare::{compare, twin_rows};
use common::{assert_close, bits, max_abs, max_abs_diff, relu_features, square_hole, to_f64, usable_hole, Rng};
use contextual_attention::{ContextualAttention, FuseMode, Output, Params};

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
        let layer = ContextualAttention::reference(p).unwrap();
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
        let cpu = ContextualAttention::reference(p.clone()).unwrap().forward(&f, &b, Some(&hole)).unwrap();
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

#[test]
fn the_default_budget_is_a_target_and_an_explicit_one_a_limit() {
    // 1080p model features (270×480×96 at rate 2): 32,400 queries and patches, a 4 GB score
    // matrix, in one-row tiles within the default 256 MiB.
    let shape = [1, 270, 480, 96];
    let mask = Some([1, 270, 480, 1]);
    let model = Params { rate: 2, ..Default::default() };
    let plan = ContextualAttention::reference(model.clone()).unwrap().plan(shape, shape, mask).unwrap();
    let full = 32_400u64 * 32_400 * 4;
    eprintln!(
        "1080p default plan: {} tiles of {} rows, {} MiB per tile (whole matrix {} MiB)",
        plan.tiles.len(),
        plan.rows_per_tile,
        plan.tile_bytes >> 20,
        full >> 20
    );
    assert!(plan.tile_bytes <= 256 << 20 && plan.tiles.len() == 135);
    // 2560×1600 (400×640×96): one-row tiles need more than 256 MiB. The default budget is a
    // target and uses them anyway; the same budget given explicitly is a limit.
    let (shape, mask) = ([1, 400, 640, 96], Some([1, 400, 640, 1]));
    let plan = ContextualAttention::reference(model.clone()).unwrap().plan(shape, shape, mask).unwrap();
    eprintln!(
        "2560x1600 default plan: {} tiles of {} rows, {} MiB per tile",
        plan.tiles.len(),
        plan.rows_per_tile,
        plan.tile_bytes >> 20
    );
    assert!(plan.rows_per_tile == 1 && plan.tile_bytes > 256 << 20);
    let strict = ContextualAttention::reference(Params { memory_budget: Some(256 << 20), ..model.clone() }).unwrap();
    match strict.plan(shape, shape, mask) {
        Err(err @ contextual_attention::Error::MemoryBudget { .. }) => {
            assert!(err.to_string().contains("raise the memory budget"), "{err}")
        }
        other => panic!("an explicit 256 MiB budget must be refused, got {:?}", other.map(|p| p.tiles.len())),
    }
    // With room, tiles grow.
    let roomy = ContextualAttention::reference(Params { memory_budget: Some(4 << 30), ..model }).unwrap();
    assert!(roomy.plan(shape, shape, mask).unwrap().rows_per_tile > 1);
}
