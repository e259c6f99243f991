//! Random configurations of every parameter (rate, stride, ksize, fuse and its mode, paste
//! kernel, overlap, masking, softmax scale, batch, channels, f and b sizes, shared and
//! per-sample masks, query and key tile sizes), GPU against the CPU twin. Errors must agree too.

mod common;

use contextual_attention::{ContextualAttention, RunOptions};

#[test]
fn random_configurations_agree_with_the_twin() {
    let gpu = gpu_or_skip!();
    let mut rng = common::Rng::new("fuzz");
    let mut checked = 0;
    for it in 0..150 {
        let (params, f, b, mask) = common::random_case(&mut rng);
        let rows = 1 + rng.below(3);
        // One key tile of every patch row, or tiles of 1 to 3 patch rows (SPEC §T2).
        let key_rows = [usize::MAX, 1, 2, 3][rng.below(4)];
        let what = format!(
            "case {it}: {params:?}, f {:?}, b {:?}, mask {:?}, {rows}-row tiles × {key_rows}-row key tiles",
            f.shape(),
            b.shape(),
            mask.as_ref().map(|m| m.shape())
        );
        let options = RunOptions::new().tile_rows(rows).key_rows(key_rows);
        let on_gpu = ContextualAttention::new(gpu, params.clone()).unwrap().run(&f, &b, mask.as_ref(), &options);
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
