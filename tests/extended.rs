//! The extended options of SPEC §E on the GPU: per-sample masks, −∞ masking, attention rows of
//! chosen queries, and tiling invariance for every option.

mod common;

use common::assert_tensors_close;

use contextual_attention::{ContextualAttention, FuseMode, Masking, Overlap, Params, Tensor};

#[test]
fn per_sample_masks_equal_running_each_item_alone() {
    let gpu = gpu_or_skip!();
    let mut rng = common::Rng::new("per-sample masks");
    let f = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let b = rng.tensor([2, 16, 12, 3], -1.0, 1.0);
    let m0 = rng.hole(1, 16, 12);
    let m1 = rng.hole(1, 16, 12);
    let masks = Tensor::new([2, 16, 12, 1], [m0.data(), m1.data()].concat()).unwrap();
    for params in [
        Params { rate: 2, ..Default::default() },
        Params { rate: 2, masking: Masking::Exclude, fuse_mode: FuseMode::Spatial, ..Default::default() },
    ] {
        let layer = ContextualAttention::new(gpu, params.clone()).unwrap();
        let both = layer.forward(&f, &b, Some(&masks)).unwrap();
        for (n, m) in [(0, &m0), (1, &m1)] {
            let alone = layer.forward(&f.item(n), &b.item(n), Some(m)).unwrap();
            let q = alone.argmax.len();
            assert_eq!(&both.argmax[n * q..(n + 1) * q], &alone.argmax[..], "argmax of item {n}");
            assert_eq!(&both.mass[n * q..(n + 1) * q], &alone.mass[..], "mass of item {n}");
            assert_eq!(both.y.item(n), alone.y, "y of item {n}");
        }
        // and the twin agrees
        let twin = ContextualAttention::reference(params).unwrap().forward(&f, &b, Some(&masks)).unwrap();
        assert_tensors_close("per-sample masks, GPU vs twin", &both.y, &twin.y, 1e-5);
        assert_eq!(both.argmax, twin.argmax);
    }
}

#[test]
fn exclude_masking_gives_mass_one_and_zero_when_everything_is_masked() {
    let gpu = gpu_or_skip!();
    let mut rng = common::Rng::new("exclude");
    let x = rng.tensor([1, 16, 16, 4], 0.0, 1.0);
    let hole = rng.hole(1, 16, 16);
    let exclude = Params { rate: 2, masking: Masking::Exclude, ..Default::default() };
    let out = ContextualAttention::new(gpu, exclude.clone()).unwrap().forward(&x, &x, Some(&hole)).unwrap();
    for (q, &m) in out.mass.iter().enumerate() {
        assert!((m - 1.0).abs() <= 1e-5, "query {q}: mass {m} with −∞ masking");
    }
    // The original's 0 logits lose mass (the masked patches stay in the denominator), visibly so
    // with a large hole and a low softmax scale.
    let big_hole =
        Tensor::from_fn([1, 16, 16, 1], |_, y, x, _| ((2..14).contains(&y) && (2..14).contains(&x)) as u8 as f32);
    let zero = ContextualAttention::new(gpu, Params { rate: 2, softmax_scale: 0.5, ..Default::default() })
        .unwrap()
        .forward(&x, &x, Some(&big_hole))
        .unwrap();
    assert!(zero.mass.iter().any(|&m| m < 0.999), "0-logit masking keeps all mass: {:?}", &zero.mass[..4]);
    // Everything masked: y = 0 exactly, mass 0, never NaN.
    let all = Tensor::from_fn([1, 16, 16, 1], |_, _, _, _| 1.0);
    for params in [exclude, Params { rate: 2, ..Default::default() }] {
        let out = ContextualAttention::new(gpu, params).unwrap().forward(&x, &x, Some(&all)).unwrap();
        assert!(out.y.data().iter().all(|&v| v == 0.0), "y must be exactly 0 when every patch is masked");
        assert!(out.mass.iter().all(|&m| m == 0.0));
    }
}

#[test]
fn attention_rows_match_the_twin_and_the_other_outputs() {
    let gpu = gpu_or_skip!();
    let mut rng = common::Rng::new("attention rows");
    let f = rng.tensor([2, 16, 20, 3], -1.0, 1.0);
    let b = rng.tensor([2, 12, 12, 3], -1.0, 1.0);
    let mask = rng.hole(1, 12, 12);
    let params = Params { rate: 2, ..Default::default() };
    let queries = [(0, 0), (3, 9), (7, 4), (5, 0)];
    let twin =
        ContextualAttention::reference(params.clone()).unwrap().forward_inspect(&f, &b, Some(&mask), &queries).unwrap();
    let l = 36;
    let one_tile = ContextualAttention::new(gpu, params.clone()).unwrap();
    let whole = one_tile.plan(f.shape(), b.shape(), Some(mask.shape())).unwrap().tile_bytes;
    // Budgets that give one tile, tiles of a few rows, and tiles of one row, so the queries
    // land in different tiles.
    let mut most_tiles = 0;
    for budget in [whole, whole * 3 / 4, whole / 2, whole * 2 / 5, whole / 3] {
        let layer =
            ContextualAttention::new(gpu, Params { memory_budget: Some(budget.max(1)), ..params.clone() }).unwrap();
        let plan = match layer.plan(f.shape(), b.shape(), Some(mask.shape())) {
            Ok(p) => p,
            Err(_) => continue, // the 1-byte budget is refused; the smallest tiles come next
        };
        eprintln!("budget {budget}: {} tiles", plan.tiles.len());
        most_tiles = most_tiles.max(plan.tiles.len());
        // A call with fewer queries first: the next call's larger index tables must still fit.
        let first = layer.forward_inspect(&f, &b, Some(&mask), &queries[..1]).unwrap();
        assert_eq!(first.attention_rows.len(), 2 * l);
        let out = layer.forward_inspect(&f, &b, Some(&mask), &queries).unwrap();
        assert_eq!(out.attention_rows.len(), 2 * queries.len() * l);
        common::assert_close(
            "attention rows, GPU vs twin",
            &out.attention_rows,
            &common::to_f64(&twin.attention_rows),
            1e-6,
            1e-4,
        );
        for n in 0..2 {
            for (q, &(i, j)) in queries.iter().enumerate() {
                let row = &out.attention_rows[(n * queries.len() + q) * l..][..l];
                let at = n * 8 * 10 + i * 10 + j;
                let sum: f32 = row.iter().sum();
                assert!((sum - out.mass[at]).abs() <= 1e-5, "row sum {sum} vs mass {}", out.mass[at]);
                let best = row.iter().enumerate().fold(0, |b, (k, &v)| if v > row[b] { k } else { b });
                assert_eq!(best as u32, out.argmax[at], "row argmax vs argmax at item {n} query {:?}", (i, j));
            }
        }
    }
    assert!(most_tiles >= 4, "the budgets gave at most {most_tiles} tiles; the test needs queries spread over tiles");
    let layer = one_tile;
    let bad = layer.forward_inspect(&f, &b, Some(&mask), &[(8, 0)]);
    assert!(matches!(bad, Err(contextual_attention::Error::InvalidParam { name: "queries", .. })), "{bad:?}");
}

#[test]
fn every_option_is_tiling_invariant_on_the_gpu() {
    let gpu = gpu_or_skip!();
    let mut rng = common::Rng::new("tiling per option");
    let x = rng.tensor([1, 18, 12, 3], -1.0, 1.0);
    let hole = rng.hole(1, 18, 12);
    let base = Params { rate: 3, ..Default::default() };
    let options = [
        ("exact overlap", Params { overlap: Overlap::Exact, ..base.clone() }),
        ("paste kernel 4 at rate 3", Params { paste_kernel: Some(4), ..base.clone() }),
        ("paste kernel 9", Params { paste_kernel: Some(9), overlap: Overlap::Exact, ..base.clone() }),
        ("stride 2", Params { stride: 2, ..base.clone() }),
        ("exclude masking", Params { masking: Masking::Exclude, ..base.clone() }),
        ("spatial fuse", Params { fuse_mode: FuseMode::Spatial, ..base.clone() }),
        ("fuse_k 5", Params { fuse_k: 5, ..base.clone() }),
    ];
    for (name, params) in options {
        let layer = ContextualAttention::new(gpu, params.clone()).unwrap();
        let whole = layer.forward_with_tile_rows(6, &x, &x, Some(&hole)).unwrap();
        for rows in [1, 2, 4] {
            let tiled = layer.forward_with_tile_rows(rows, &x, &x, Some(&hole)).unwrap();
            assert_tensors_close(&format!("{name}, {rows}-row tiles vs one tile"), &tiled.y, &whole.y, 1e-6);
            assert_eq!(tiled.argmax, whole.argmax, "{name}: argmax with {rows}-row tiles");
        }
        let twin = ContextualAttention::reference(params).unwrap().forward(&x, &x, Some(&hole)).unwrap();
        assert_tensors_close(&format!("{name}, GPU vs twin"), &whole.y, &twin.y, 1e-5);
    }
}
