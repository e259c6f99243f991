//! Tiling invariance (SPEC §T, §T2, §9.12): the result does not depend on how the query rows
//! and the patch rows are split into tiles — on the GPU at model size under budgets that force
//! several tiles, on the twin for every tile height, and on the GPU for every query and key tile
//! height at a small size. The tile
//! plan itself (halo rows, cover) is checked in `tests/geometry.rs`; every extended option under
//! tiling in `tests/extended.rs`.

mod common;

use std::time::Instant;

use common::compare::{compare, twin_rows};
use common::{assert_close, bits, max_abs, max_abs_diff, relu_features, square_hole, to_f64, usable_hole, Rng};
use contextual_attention::{ContextualAttention, FuseMode, Masking, Output, Params, RunOptions, Tensor};

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
fn key_tile_invariance_gpu() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("key_tile_invariance_gpu");
    let t0 = Instant::now();
    // hf = 8, wf = 10 queries; b 14×12 → 7×6 patches at rate 2 (stride 1): key tiles of 1, 2
    // and 3 rows start at patch row 0 and end at ph − 1, where the wrap-around fuse reaches
    // the other end of the grid. Per-sample masks.
    let f = rng.tensor([2, 16, 20, 4], -1.0, 1.0);
    let b = rng.tensor([2, 14, 12, 4], -1.0, 1.0);
    let base = Params { rate: 2, ..Default::default() };
    let holes: Vec<Tensor> = (0..2).map(|_| usable_hole(&mut rng, &base, b.shape())).collect();
    let mask = common::concat_batch(&holes);
    let cases = [
        Params { fuse_mode: FuseMode::Wrap, ..base.clone() },
        Params { fuse_k: 5, masking: Masking::Exclude, ..base.clone() },
        Params { fuse_mode: FuseMode::Spatial, ..base.clone() },
        Params { fuse_mode: FuseMode::Spatial, masking: Masking::Exclude, ..base.clone() },
        Params { fuse: false, ..base.clone() },
        Params { rate: 1, stride: 2, ..base.clone() },
        Params { rate: 1, stride: 2, masking: Masking::Exclude, fuse_mode: FuseMode::Spatial, ..base.clone() },
    ];
    let inspected = [(0, 0), (4, 9), (7, 3)];
    for p in cases {
        let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
        let whole = layer.forward_inspect(&f, &b, Some(&mask), &inspected).unwrap();
        let ph = layer.plan(f.shape(), b.shape(), Some(mask.shape())).unwrap().keys[0].rows.len();
        let cpu = ContextualAttention::reference(p.clone()).unwrap().forward(&f, &b, Some(&mask)).unwrap();
        let twin = twin_rows(&p, &f, &b, Some(&mask));
        let what = format!("{p:?}");
        let (dy, _, agree, total) = compare(&format!("GPU one key tile vs twin, {what}"), &whole, &cpu, &twin);
        let mut split = 0;
        for (rows, key_rows) in [(8, 1), (8, 2), (8, 3), (1, 1), (2, 3), (3, 2), (5, 4)] {
            let options = RunOptions::new().tile_rows(rows).key_rows(key_rows).queries(&inspected);
            let tiled = layer.run(&f, &b, Some(&mask), &options).unwrap();
            let at = format!("{rows}-row query tiles × {key_rows}-row key tiles, {what}");
            assert_same_result(&at, &whole, &tiled);
            assert_close(
                &format!("{at}: attention rows"),
                &tiled.attention_rows,
                &to_f64(&whole.attention_rows),
                1e-7,
                1e-6,
            );
            split += (key_rows < ph) as usize;
        }
        assert!(split >= 6, "{what}: the key tiles must really split the {ph} patch rows");
        eprintln!("key tiles {what}: one key tile vs twin max|Δy| {dy:.2e}, argmax {agree}/{total}; 7 tilings agree");
    }
    eprintln!("key_tile_invariance_gpu: {:.2}s", t0.elapsed().as_secs_f64());
}

/// SPEC §T2's promise: any budget that fits one small tile runs, with the same result.
#[test]
fn a_one_mib_budget_runs_model_features() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("a_one_mib_budget_runs_model_features");
    let shape = [1, 64, 64, 32];
    let x = relu_features(&mut rng, shape);
    let hole = square_hole(64, 64, 20, 22, 24);
    let p = Params { rate: 2, ..Default::default() };
    let roomy = ContextualAttention::new(gpu, p.clone()).unwrap();
    let tight = ContextualAttention::new(gpu, Params { memory_budget: Some(1 << 20), ..p }).unwrap();
    let plan = tight.plan(shape, shape, Some(hole.shape())).unwrap();
    assert!(plan.tile_bytes <= 1 << 20, "working set {} B over the 1 MiB budget", plan.tile_bytes);
    assert!(plan.keys.len() > 1, "a 1 MiB budget must split the patches too");
    let t0 = Instant::now();
    let (whole, tiled) = (roomy.forward(&x, &x, Some(&hole)).unwrap(), tight.forward(&x, &x, Some(&hole)).unwrap());
    let (_, dy) = assert_same_result("64×64×32: default plan vs 1 MiB", &whole, &tiled);
    eprintln!(
        "1 MiB budget on 64×64×32: {} query tiles of {} rows × {} key tiles of {} rows, working set {} B; max|Δy| {dy:.2e}; {:.2}s",
        plan.tiles.len(),
        plan.rows_per_tile,
        plan.keys.len(),
        plan.key_rows_per_tile,
        plan.tile_bytes,
        t0.elapsed().as_secs_f64()
    );
}

/// Issue 9's acceptance case: 1×128×128×64 at rate 2 with a hole, a 4 MiB budget against 1 GiB.
#[test]
fn a_4_mib_budget_matches_a_1_gib_budget_at_128x128x64() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("a_4_mib_budget_matches_a_1_gib_budget_at_128x128x64");
    let shape = [1, 128, 128, 64];
    let x = relu_features(&mut rng, shape);
    let hole = square_hole(128, 128, 32, 32, 64);
    let p = Params { rate: 2, ..Default::default() };
    let layer =
        |mib: u64| ContextualAttention::new(gpu, Params { memory_budget: Some(mib << 20), ..p.clone() }).unwrap();
    let (roomy, tight) = (layer(1024), layer(4));
    let plans = [&roomy, &tight].map(|l| l.plan(shape, shape, Some(hole.shape())).unwrap());
    assert!(plans[1].tile_bytes <= 4 << 20 && plans[1].keys.len() > 1);
    let t0 = Instant::now();
    let whole = roomy.forward(&x, &x, Some(&hole)).unwrap();
    let t1 = t0.elapsed().as_secs_f64();
    let tiled = tight.forward(&x, &x, Some(&hole)).unwrap();
    let t2 = t0.elapsed().as_secs_f64() - t1;
    let (identical, dy) = assert_same_result("128×128×64 rate 2: 1 GiB vs 4 MiB budget", &whole, &tiled);
    for (plan, secs) in plans.iter().zip([t1, t2]) {
        eprintln!(
            "128×128×64 rate 2: {} query tiles × {} key tiles, working set {:.2} MiB: {secs:.2}s",
            plan.tiles.len(),
            plan.keys.len(),
            plan.tile_bytes as f64 / (1 << 20) as f64
        );
    }
    eprintln!("max|Δy| {dy:.2e}, bit-identical: {identical}, argmax identical");
}

#[test]
fn the_default_budget_is_a_target_and_an_explicit_one_a_limit() {
    use contextual_attention::geometry::Geometry;
    use contextual_attention::plan::{BufferKind, Plan};
    let model = Params { rate: 2, ..Default::default() };
    // 1080p, 2560×1600 and 4K model features: query × key tiles (SPEC §T2) fit the default
    // 256 MiB with no buffer over WebGPU's default 128 MiB binding, though at 4K one query row
    // of scores alone would take 2 GB.
    for shape in [[1, 270, 480, 96], [1, 400, 640, 96], [1, 540, 960, 96]] {
        let g = Geometry::new(&model, shape, shape, Some([1, shape[1], shape[2], 1])).unwrap();
        let plan = Plan::targeting(&g, 256 << 20, 128 << 20).unwrap();
        let buffers = plan.buffers(&g, true, 0);
        let working: u64 = buffers.iter().filter(|b| b.kind == BufferKind::Working).map(|b| b.bytes).sum();
        let largest = buffers.iter().filter(|b| b.kind == BufferKind::Working).max_by_key(|b| b.bytes).unwrap();
        eprintln!(
            "{shape:?}: {} query tiles of {} rows × {} key tiles of {} rows; working set {} MiB, largest {} ({} MiB)",
            plan.tiles.len(),
            plan.rows_per_tile,
            plan.keys.len(),
            plan.key_rows_per_tile,
            working >> 20,
            largest.name,
            largest.bytes >> 20
        );
        assert!(working <= 256 << 20 && largest.bytes <= 128 << 20);
        assert!(plan.tile_bytes <= working, "the plan's working set leaves out the index tables only");
    }
    // A budget below the smallest tiles: as the default (a target) the smallest tiles run; given
    // explicitly (a limit) it is refused with a message that says what to do.
    let g = Geometry::new(&model, [1, 64, 64, 32], [1, 64, 64, 32], None).unwrap();
    let smallest = Plan::with_tiles(&g, 1, 1);
    let target = Plan::targeting(&g, 1024, u64::MAX).unwrap();
    assert_eq!((target.tiles.len(), target.keys.len()), (smallest.tiles.len(), smallest.keys.len()));
    match Plan::new(&g, 1024, u64::MAX) {
        Err(err @ contextual_attention::Error::MemoryBudget { .. }) => {
            assert!(err.to_string().contains("raise the memory budget"), "{err}")
        }
        other => panic!("an explicit 1 KiB budget must be refused, got {:?}", other.map(|p| p.tiles.len())),
    }
    // With room, tiles grow: one query tile and one key tile.
    let roomy = Plan::new(&g, 1 << 30, u64::MAX).unwrap();
    assert_eq!((roomy.tiles.len(), roomy.keys.len()), (1, 1));
}
