//! Random configurations of every parameter (rate, stride, ksize, fuse and its mode, paste
//! kernel, overlap, masking, softmax scale, batch, channels, f and b sizes, shared and
//! per-sample masks, tile size), GPU against the CPU twin. Errors must agree too.

mod common;

use contextual_attention::{ContextualAttention, FuseMode, Masking, Overlap, Params, Tensor};

#[test]
fn random_configurations_agree_with_the_twin() {
    let gpu = gpu_or_skip!();
    let mut rng = common::Rng::new("fuzz");
    let mut checked = 0;
    for it in 0..150 {
        let rate = 1 + rng.below(3);
        let stride = if rng.below(3) == 0 { 1 + rng.below(3) } else { 1 };
        let params = Params {
            rate,
            stride,
            ksize: 1 + rng.below(5),
            fuse: rng.below(4) != 0,
            fuse_k: 1 + rng.below(5),
            paste_kernel: (rng.below(3) == 0).then(|| rate + rng.below(2 * rate + 1)),
            overlap: if rng.below(2) == 0 { Overlap::Quarter } else { Overlap::Exact },
            masking: if rng.below(2) == 0 { Masking::ZeroLogit } else { Masking::Exclude },
            fuse_mode: if rng.below(2) == 0 { FuseMode::Wrap } else { FuseMode::Spatial },
            softmax_scale: [0.5, 10.0, 100.0][rng.below(3)],
            ..Default::default()
        };
        let (batch, c) = (1 + rng.below(2), 1 + rng.below(4));
        let mut side = || (1 + rng.below(7)) * rate;
        let (hf, wf, hb, wb) = (side(), side(), side(), side());
        let f = rng.tensor([batch, hf, wf, c], -1.0, 1.0);
        let b = rng.tensor([batch, hb, wb, c], -1.0, 1.0);
        let mask_batch = if rng.below(2) == 0 { 1 } else { batch };
        let mask = (rng.below(3) != 0).then(|| {
            let ones: Vec<f32> = (0..mask_batch * hb * wb).map(|_| (rng.below(4) == 0) as u8 as f32).collect();
            Tensor::new([mask_batch, hb, wb, 1], ones).unwrap()
        });
        let rows = 1 + rng.below(3);
        let what = format!(
            "case {it}: {params:?}, f {:?}, b {:?}, mask {:?}, {rows}-row tiles",
            f.shape(),
            b.shape(),
            mask.as_ref().map(|m| m.shape())
        );
        let on_gpu =
            ContextualAttention::new(gpu, params.clone()).unwrap().forward_with_tile_rows(rows, &f, &b, mask.as_ref());
        let on_cpu = ContextualAttention::reference(params).unwrap().forward(&f, &b, mask.as_ref());
        match (on_gpu, on_cpu) {
            (Ok(g), Ok(t)) => {
                let scale = t.y.data().iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) as f64;
                common::assert_close(&format!("{what}: y"), g.y.data(), &common::to_f64(t.y.data()), 1e-4 * scale, 0.0);
                common::assert_close(&format!("{what}: mass"), &g.mass, &common::to_f64(&t.mass), 1e-4, 0.0);
                checked += 1;
            }
            (Err(e1), Err(e2)) => assert_eq!(e1.to_string(), e2.to_string(), "{what}: the backends fail differently"),
            (g, t) => panic!("{what}: only one backend failed: GPU {:?}, twin {:?}", g.err(), t.err()),
        }
    }
    assert_eq!(checked, 150, "every random case is valid and ran");
}
