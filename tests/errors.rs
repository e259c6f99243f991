//! Bad inputs give the right error, never a panic (SPEC §2.3, DESIGN.md "Errors"): every
//! precondition of the original as an `Error` variant with a message that names the problem,
//! through `Params::validate`, `Geometry::new`, the CPU twin and (one test) the GPU forward.
//! Also what is *not* an error: everything masked (output exactly 0), stride 2 (an extension
//! of this crate), odd sizes at rate 1, per-sample masks, fuse_k 0 with fuse off.

mod common;

use common::Rng;
use contextual_attention::{ContextualAttention, Error, Geometry, Params, Tensor};

/// One bad call: parameters, shapes of f, b and the mask.
struct Bad {
    what: &'static str,
    params: Params,
    f: [usize; 4],
    b: [usize; 4],
    mask: Option<[usize; 4]>,
    /// Checks the variant and its fields.
    variant: fn(&Error) -> bool,
    /// Words the message must contain (case-insensitive).
    words: &'static [&'static str],
}

fn r2() -> Params {
    Params { rate: 2, ..Default::default() }
}

fn bad_shapes() -> Vec<Bad> {
    vec![
        Bad {
            what: "f height not divisible by the rate",
            params: r2(),
            f: [1, 7, 8, 2],
            b: [1, 8, 8, 2],
            mask: None,
            variant: |e| matches!(e, Error::NotDivisible { tensor: "f", dim: "height", size: 7, rate: 2 }),
            words: &["`f`", "height = 7", "not divisible by rate 2"],
        },
        Bad {
            what: "f width not divisible by the rate",
            params: r2(),
            f: [1, 8, 9, 2],
            b: [1, 8, 8, 2],
            mask: None,
            variant: |e| matches!(e, Error::NotDivisible { tensor: "f", dim: "width", size: 9, rate: 2 }),
            words: &["`f`", "width = 9", "not divisible by rate 2"],
        },
        Bad {
            what: "b height not divisible by the rate",
            params: Params { rate: 3, ..Default::default() },
            f: [1, 9, 9, 2],
            b: [1, 10, 9, 2],
            mask: None,
            variant: |e| matches!(e, Error::NotDivisible { tensor: "b", dim: "height", size: 10, rate: 3 }),
            words: &["`b`", "height = 10", "not divisible by rate 3"],
        },
        Bad {
            what: "b width not divisible by the rate",
            params: r2(),
            f: [1, 8, 8, 2],
            b: [1, 8, 11, 2],
            mask: None,
            variant: |e| matches!(e, Error::NotDivisible { tensor: "b", dim: "width", size: 11, rate: 2 }),
            words: &["`b`", "width = 11", "not divisible by rate 2"],
        },
        Bad {
            what: "mask batch neither 1 nor B",
            params: r2(),
            f: [2, 8, 8, 2],
            b: [2, 8, 8, 2],
            mask: Some([3, 8, 8, 1]),
            variant: |e| matches!(e, Error::Shape { tensor, .. } if tensor == "mask"),
            words: &["mask", "batch", "3"],
        },
        Bad {
            what: "mask height differs from b's",
            params: r2(),
            f: [1, 8, 8, 2],
            b: [1, 8, 8, 2],
            mask: Some([1, 4, 8, 1]),
            variant: |e| matches!(e, Error::Shape { tensor, .. } if tensor == "mask"),
            words: &["mask", "4×8", "8×8"],
        },
        Bad {
            what: "mask width differs from b's",
            params: r2(),
            f: [1, 8, 8, 2],
            b: [1, 8, 6, 2],
            mask: Some([1, 8, 8, 1]),
            variant: |e| matches!(e, Error::Shape { tensor, .. } if tensor == "mask"),
            words: &["mask", "8×8", "8×6"],
        },
        Bad {
            what: "mask with 2 channels",
            params: r2(),
            f: [1, 8, 8, 2],
            b: [1, 8, 8, 2],
            mask: Some([1, 8, 8, 2]),
            variant: |e| matches!(e, Error::Shape { tensor, .. } if tensor == "mask"),
            words: &["mask", "2 channels"],
        },
        Bad {
            what: "channel mismatch C_f ≠ C_b",
            params: r2(),
            f: [1, 8, 8, 3],
            b: [1, 8, 8, 2],
            mask: None,
            variant: |e| matches!(e, Error::Shape { .. }),
            words: &["channels", "3", "2"],
        },
        Bad {
            what: "batch mismatch B_f ≠ B_b",
            params: r2(),
            f: [2, 8, 8, 2],
            b: [1, 8, 8, 2],
            mask: None,
            variant: |e| matches!(e, Error::Shape { .. }),
            words: &["batch", "2", "1"],
        },
        Bad {
            what: "zero height of f",
            params: r2(),
            f: [1, 0, 8, 2],
            b: [1, 8, 8, 2],
            mask: None,
            variant: |e| matches!(e, Error::Shape { tensor, .. } if tensor == "f"),
            words: &["zero dimension", "`f`"],
        },
        Bad {
            what: "zero channels of b",
            params: r2(),
            f: [1, 8, 8, 2],
            b: [1, 8, 8, 0],
            mask: None,
            variant: |e| matches!(e, Error::Shape { tensor, .. } if tensor == "b"),
            words: &["zero dimension", "`b`"],
        },
        Bad {
            what: "zero batch",
            params: r2(),
            f: [0, 8, 8, 2],
            b: [0, 8, 8, 2],
            mask: None,
            variant: |e| matches!(e, Error::Shape { .. }),
            words: &["zero dimension"],
        },
    ]
}

fn bad_params() -> Vec<(Params, &'static str)> {
    let d = Params::default();
    vec![
        (Params { ksize: 0, ..d.clone() }, "ksize"),
        (Params { stride: 0, ..d.clone() }, "stride"),
        (Params { rate: 0, ..d.clone() }, "rate"),
        (Params { fuse_k: 0, fuse: true, ..d.clone() }, "fuse_k"),
        (Params { softmax_scale: f32::NAN, ..d.clone() }, "softmax_scale"),
        (Params { softmax_scale: f32::INFINITY, ..d.clone() }, "softmax_scale"),
        (Params { softmax_scale: f32::NEG_INFINITY, ..d.clone() }, "softmax_scale"),
        (Params { rate: 3, paste_kernel: Some(2), ..d.clone() }, "paste_kernel"),
        (Params { rate: 2, paste_kernel: Some(0), ..d.clone() }, "paste_kernel"),
        (Params { memory_budget: Some(0), ..d.clone() }, "memory_budget"),
    ]
}

fn check_message(what: &str, e: &Error, words: &[&str]) {
    let msg = e.to_string();
    for w in words {
        assert!(msg.to_lowercase().contains(&w.to_lowercase()), "{what}: message {msg:?} does not mention {w:?}");
    }
}

fn inputs(rng: &mut Rng, bad: &Bad) -> (Tensor, Tensor, Option<Tensor>) {
    let f = rng.tensor(bad.f, -1.0, 1.0);
    let b = rng.tensor(bad.b, -1.0, 1.0);
    let mask = bad.mask.map(|m| Tensor::from_fn(m, |_, y, x, _| ((y + x) % 5 == 0) as u8 as f32));
    (f, b, mask)
}

#[test]
fn bad_shapes_give_the_right_error() {
    let mut rng = Rng::new("bad_shapes_give_the_right_error");
    for bad in bad_shapes() {
        let e = Geometry::new(&bad.params, bad.f, bad.b, bad.mask)
            .err()
            .unwrap_or_else(|| panic!("{}: Geometry::new accepted it", bad.what));
        assert!((bad.variant)(&e), "{}: wrong variant: {e:?}", bad.what);
        check_message(bad.what, &e, bad.words);

        // The CPU twin's layer gives the same error instead of panicking.
        let (f, b, mask) = inputs(&mut rng, &bad);
        let layer = ContextualAttention::reference(bad.params.clone()).unwrap();
        let e2 =
            layer.forward(&f, &b, mask.as_ref()).err().unwrap_or_else(|| panic!("{}: forward accepted it", bad.what));
        assert_eq!(e2.to_string(), e.to_string(), "{}: forward and Geometry::new disagree", bad.what);
        assert!((bad.variant)(&e2), "{}: wrong variant from forward: {e2:?}", bad.what);
    }
}

#[test]
fn bad_params_give_invalid_param() {
    let mut rng = Rng::new("bad_params_give_invalid_param");
    let x = rng.tensor([1, 12, 12, 2], -1.0, 1.0);
    for (params, name) in bad_params() {
        let what = format!("{name} in {params:?}");
        let e = params.validate().err().unwrap_or_else(|| panic!("{what}: validate accepted it"));
        assert!(matches!(&e, Error::InvalidParam { name: n, .. } if *n == name), "{what}: wrong variant {e:?}");
        check_message(&what, &e, &[name, "invalid parameter"]);
        let e = Geometry::new(&params, x.shape(), x.shape(), None)
            .err()
            .unwrap_or_else(|| panic!("{what}: Geometry::new accepted it"));
        assert!(matches!(&e, Error::InvalidParam { name: n, .. } if *n == name), "{what}: Geometry::new gave {e:?}");
        let e = ContextualAttention::reference(params.clone())
            .err()
            .unwrap_or_else(|| panic!("{what}: the CPU layer accepted it"));
        assert!(
            matches!(&e, Error::InvalidParam { name: n, .. } if *n == name),
            "{what}: ContextualAttention::cpu gave {e:?}"
        );
    }
    // The messages say what would be accepted.
    let e = Params { rate: 3, paste_kernel: Some(2), ..Default::default() }.validate().unwrap_err();
    check_message("paste_kernel < rate", &e, &["at least the rate (3)"]);
    let e = Params { softmax_scale: f32::NAN, ..Default::default() }.validate().unwrap_err();
    check_message("NaN softmax_scale", &e, &["finite"]);
}

#[test]
fn accepted_edge_cases() {
    let mut rng = Rng::new("accepted_edge_cases");
    // fuse_k 0 is only a problem with fuse on.
    assert!(Params { fuse_k: 0, fuse: false, ..Default::default() }.validate().is_ok());
    // paste kernel K = r is the smallest allowed.
    assert!(Params { rate: 3, paste_kernel: Some(3), ..Default::default() }.validate().is_ok());
    // A tiny but positive budget is a valid parameter; it fails later with MemoryBudget.
    assert!(Params { memory_budget: Some(1), ..Default::default() }.validate().is_ok());
    let x = rng.tensor([1, 8, 8, 2], -1.0, 1.0);
    let layer =
        ContextualAttention::reference(Params { rate: 2, memory_budget: Some(1), ..Default::default() }).unwrap();
    let e = layer.forward(&x, &x, None).expect_err("a 1-byte budget cannot fit a tile");
    assert!(matches!(e, Error::MemoryBudget { budget: 1, .. }), "{e:?}");
    check_message("1-byte budget", &e, &["memory budget", "raise"]);

    // Odd sizes at rate 1 (SPEC §9, G3), and f ≠ b sizes.
    let f = rng.tensor([1, 5, 7, 3], -1.0, 1.0);
    let b = rng.tensor([1, 6, 3, 3], -1.0, 1.0);
    let out = ContextualAttention::reference(Params::default()).unwrap().forward(&f, &b, None).unwrap();
    assert_eq!(out.y.shape(), [1, 5, 7, 3]);

    // Stride 2 is accepted (the original fails with a reshape error; SPEC §E extends it):
    // L = ceil(hb/2)·ceil(wb/2) patches.
    let params = Params { rate: 2, stride: 2, ..Default::default() };
    let f = rng.tensor([2, 8, 12, 2], -1.0, 1.0);
    let b = rng.tensor([2, 10, 6, 2], -1.0, 1.0);
    let g = Geometry::new(&params, f.shape(), b.shape(), None).unwrap();
    assert_eq!((g.ph, g.pw), (3, 2));
    let out = ContextualAttention::reference(params).unwrap().forward(&f, &b, None).unwrap();
    assert_eq!(out.patch_grid, (3, 2));
    assert!(out.y.data().iter().all(|v| v.is_finite()));
    assert!(out.argmax.iter().all(|&a| a < 6));
    assert!(out.y.data().iter().any(|&v| v != 0.0));

    // Per-sample masks [B, Hb, Wb, 1] are accepted as well as the shared [1, Hb, Wb, 1].
    let x = rng.tensor([2, 8, 8, 2], -1.0, 1.0);
    for mb in [1, 2] {
        let mask = rng.hole(mb, 8, 8);
        assert!(ContextualAttention::reference(Params { rate: 2, ..Default::default() })
            .unwrap()
            .forward(&x, &x, Some(&mask))
            .is_ok());
    }

    // Everything masked runs and gives exactly 0 (SPEC §2.3, not an error).
    for fuse in [true, false] {
        let params = Params { rate: 2, fuse, ..Default::default() };
        let mask = Tensor::from_fn([2, 8, 8, 1], |_, _, _, _| 1.0);
        let out = ContextualAttention::reference(params).unwrap().forward(&x, &x, Some(&mask)).unwrap();
        assert!(out.y.data().iter().all(|&v| v == 0.0), "fuse {fuse}: y not exactly 0 with everything masked");
        assert!(out.mass.iter().all(|&m| m == 0.0), "fuse {fuse}: mass not 0 with everything masked");
    }
}

#[test]
fn gpu_forward_returns_the_same_errors() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("gpu_forward_returns_the_same_errors");
    for bad in bad_shapes() {
        let (f, b, mask) = inputs(&mut rng, &bad);
        let cpu =
            ContextualAttention::reference(bad.params.clone()).unwrap().forward(&f, &b, mask.as_ref()).err().unwrap();
        let layer = ContextualAttention::new(gpu, bad.params.clone()).unwrap();
        let e = layer
            .forward(&f, &b, mask.as_ref())
            .err()
            .unwrap_or_else(|| panic!("{}: the GPU forward accepted it", bad.what));
        assert!((bad.variant)(&e), "{}: wrong variant on the GPU: {e:?}", bad.what);
        assert_eq!(e.to_string(), cpu.to_string(), "{}: GPU and CPU errors differ", bad.what);
        // The layer is still usable after a rejected call.
        let ok = rng.tensor([1, 12, 12, 2], -1.0, 1.0);
        let out = layer
            .forward(&ok, &ok, None)
            .unwrap_or_else(|e| panic!("{}: a good call after the error failed: {e}", bad.what));
        assert!(out.y.data().iter().all(|v| v.is_finite()));
    }
    for (params, name) in bad_params() {
        let e = ContextualAttention::new(gpu, params.clone())
            .err()
            .unwrap_or_else(|| panic!("{name}: the GPU layer accepted {params:?}"));
        assert!(matches!(&e, Error::InvalidParam { name: n, .. } if *n == name), "{name}: the GPU layer gave {e:?}");
    }
    let x = rng.tensor([1, 8, 8, 2], -1.0, 1.0);
    let layer =
        ContextualAttention::new(gpu, Params { rate: 2, memory_budget: Some(1), ..Default::default() }).unwrap();
    let e = layer.forward(&x, &x, None).expect_err("a 1-byte budget cannot fit a tile on the GPU either");
    assert!(matches!(e, Error::MemoryBudget { budget: 1, .. }), "{e:?}");
}
