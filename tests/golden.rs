//! Goldens G1–G8: outputs of the original TensorFlow layer (tests/fixtures/README.md), on the
//! CPU twin, the fast CPU backend and the GPU: |Δy| ≤ 1e-5, identical argmax, attention mass within 1e-5.

mod common;

use contextual_attention::{ContextualAttention, Output, Params, Tensor};
use serde_json::Value;

struct Case {
    name: String,
    shape: [usize; 4],
    mask: Option<Tensor>,
    params: Params,
    y: Vec<f64>,
    argmax: Vec<u32>,
    mass: Vec<f64>,
}

fn cases() -> Vec<Case> {
    // The crate root at run time (cargo sets it; scripts/gpu-check.sh too), else where it was built.
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let text = std::fs::read_to_string(format!("{root}/tests/fixtures/contextual_attention_g1_g8.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let nums = |v: &Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = nums(&c["input_shape"]);
            let shape = [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize];
            let mask = c["mask_rect"].as_array().map(|r| {
                let r: Vec<usize> = r.iter().map(|x| x.as_u64().unwrap() as usize).collect();
                Tensor::from_fn([1, shape[1], shape[2], 1], |_, y, x, _| {
                    ((r[0]..r[1]).contains(&y) && (r[2]..r[3]).contains(&x)) as u8 as f32
                })
            });
            let p = &c["params"];
            let params = Params {
                ksize: p["ksize"].as_u64().unwrap() as usize,
                stride: p["stride"].as_u64().unwrap() as usize,
                rate: p["rate"].as_u64().unwrap() as usize,
                fuse_k: p["fuse_k"].as_u64().unwrap() as usize,
                softmax_scale: p["softmax_scale"].as_f64().unwrap() as f32,
                fuse: p["fuse"].as_bool().unwrap(),
                ..Default::default()
            };
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                shape,
                mask,
                params,
                y: nums(&c["y"]),
                argmax: nums(&c["argmax"]).into_iter().map(|v| v as u32).collect(),
                mass: nums(&c["attention_mass"]),
            }
        })
        .collect()
}

fn check(case: &Case, out: &Output, backend: &str) {
    let what = format!("{} on {backend}", case.name);
    let dy = out.y.data().iter().zip(&case.y).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
    let dm = out.mass.iter().zip(&case.mass).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
    eprintln!(
        "{what}: max |Δy| {dy:.2e}, max |Δmass| {dm:.2e}, argmax {}",
        if out.argmax == case.argmax { "identical" } else { "DIFFERENT" }
    );
    common::assert_close(&format!("{what}: y"), out.y.data(), &case.y, 1e-5, 0.0);
    assert_eq!(out.argmax, case.argmax, "{what}: argmax differs from the original");
    common::assert_close(&format!("{what}: attention mass"), &out.mass, &case.mass, 1e-5, 0.0);
}

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
