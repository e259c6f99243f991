//! Goldens G1–G8 (tests/fixtures/README.md): the cases and the check every backend must pass
//! (|Δy| ≤ 1e-5, identical argmax, attention mass within 1e-5). Shared by the native tests and
//! the browser's.

use contextual_attention::{Output, Params, Tensor};
use serde_json::Value;

/// One golden case: the input's shape (the input is [`super::pattern`]), the mask, the
/// parameters and the original's outputs.
pub struct Case {
    pub name: String,
    pub shape: [usize; 4],
    pub mask: Option<Tensor>,
    pub params: Params,
    pub y: Vec<f64>,
    pub argmax: Vec<u32>,
    pub mass: Vec<f64>,
}

/// The cases, read from the fixture at run time (the crate root from cargo, else where the
/// tests were built).
#[cfg(not(target_arch = "wasm32"))]
pub fn cases() -> Vec<Case> {
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    cases_from(&std::fs::read_to_string(format!("{root}/tests/fixtures/contextual_attention_g1_g8.json")).unwrap())
}

/// The cases of the fixture's JSON text.
pub fn cases_from(text: &str) -> Vec<Case> {
    let json: Value = serde_json::from_str(text).unwrap();
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

/// Checks one case's output against the original's, saying how close it is.
pub fn check(case: &Case, out: &Output, backend: &str) {
    let what = format!("{} on {backend}", case.name);
    let dy = out.y.data().iter().zip(&case.y).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
    let dm = out.mass.iter().zip(&case.mass).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
    super::log(&format!(
        "{what}: max |Δy| {dy:.2e}, max |Δmass| {dm:.2e}, argmax {}",
        if out.argmax == case.argmax { "identical" } else { "DIFFERENT" }
    ));
    super::assert_close(&format!("{what}: y"), out.y.data(), &case.y, 1e-5, 0.0);
    assert_eq!(out.argmax, case.argmax, "{what}: argmax differs from the original");
    super::assert_close(&format!("{what}: attention mass"), &out.mass, &case.mass, 1e-5, 0.0);
}
