//! Goldens G1–G8: outputs of the original TensorFlow layer (tests/fixtures/README.md), on the
//! CPU twin, the fast CPU backend and the GPU: |Δy| ≤ 1e-5, identical argmax, attention mass within 1e-5.

mod common;

use common::golden::{cases, check};
use contextual_attention::ContextualAttention;

#[test]
fn goldens_on_cpu_twin() {
    let cases = cases();
    assert_eq!(cases.len(), 8);
    for case in &cases {
        let x = common::pattern(case.shape);
        let layer = ContextualAttention::reference(case.params.clone()).unwrap();
        let out = layer.forward(&x, &x, case.mask.as_ref()).unwrap();
        check(case, &out, "CPU twin");
    }
}

#[test]
fn goldens_on_cpu_backend() {
    let cases = cases();
    assert_eq!(cases.len(), 8);
    for case in &cases {
        let x = common::pattern(case.shape);
        let layer = ContextualAttention::cpu(case.params.clone()).unwrap();
        let out = layer.forward(&x, &x, case.mask.as_ref()).unwrap();
        check(case, &out, &layer.describe_backend());
    }
}

#[test]
fn goldens_on_gpu() {
    let gpu = gpu_or_skip!();
    let cases = cases();
    assert_eq!(cases.len(), 8);
    for case in &cases {
        let x = common::pattern(case.shape);
        let layer = ContextualAttention::new(gpu, case.params.clone()).unwrap();
        let out = layer.forward(&x, &x, case.mask.as_ref()).unwrap();
        check(case, &out, &gpu.describe());
    }
}
