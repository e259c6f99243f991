//! The layer in the browser (feature `webgpu`, target wasm32-unknown-unknown), run by
//! `wasm-bindgen-test` in headless Chromium: goldens G1–G8 on the browser's WebGPU adapter and
//! on the CPU backend (single-threaded there), a tiling that must not change a bit, `fill`, and
//! the errors a web caller can meet. `scripts/web-test.sh` runs them; natively this file is empty.
//!
//! No adapter is a failure, never a skip: every GPU test starts with [`gpu`], which panics
//! saying what the browser lacked.
#![cfg(target_arch = "wasm32")]

mod common;

use common::golden::{cases_from, check};
use contextual_attention::fill::{fill_async, with_hole, FillParams};
use contextual_attention::{Backend, ContextualAttention, Error, Gpu, Params, RunOptions, Tensor};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

const GOLDENS: &str = include_str!("fixtures/contextual_attention_g1_g8.json");

/// The browser's WebGPU adapter, named on the console (the runner prints it with
/// `--nocapture`, which is how CI's log shows the adapter the tests ran on).
async fn gpu() -> Gpu {
    match Gpu::new_async().await {
        Ok(gpu) => {
            web_sys::console::log_1(&format!("browser tests run on: {}", gpu.describe()).into());
            gpu
        }
        Err(e) => panic!(
            "the browser offered no WebGPU adapter: {e}. Chromium needs --enable-unsafe-webgpu \
             (and, without a GPU, --use-webgpu-adapter=swiftshader): see webdriver.json"
        ),
    }
}

#[wasm_bindgen_test]
async fn goldens_on_the_browsers_webgpu() {
    let gpu = gpu().await;
    let cases = cases_from(GOLDENS);
    assert_eq!(cases.len(), 8);
    for case in &cases {
        let x = common::pattern(case.shape);
        let layer = ContextualAttention::new(&gpu, case.params.clone()).unwrap();
        let out = layer.forward_async(&x, &x, case.mask.as_ref()).await.unwrap();
        check(case, &out, &gpu.describe());
    }
}

#[wasm_bindgen_test]
fn goldens_on_the_cpu_backend_single_threaded() {
    let cases = cases_from(GOLDENS);
    for case in &cases {
        let x = common::pattern(case.shape);
        let layer = ContextualAttention::cpu(case.params.clone()).unwrap();
        let out = layer.forward(&x, &x, case.mask.as_ref()).unwrap();
        check(case, &out, &layer.describe_backend());
    }
}

/// Query tiles of one row each (eight submissions, each awaited for progress) give the
/// one-tile call's bits.
#[wasm_bindgen_test]
async fn tiling_changes_no_bit_and_progress_counts_the_tiles() {
    let gpu = gpu().await;
    let layer = ContextualAttention::new(&gpu, Params { rate: 2, ..Default::default() }).unwrap();
    let f = Tensor::from_fn([1, 16, 24, 5], |_, y, x, c| ((y * 5 + x * 3 + c * 7) % 17) as f32 / 17.0 - 0.4);
    let b = Tensor::from_fn([1, 16, 24, 5], |_, y, x, c| ((y * 3 + x * 11 + c) % 13) as f32 / 13.0 - 0.5);
    let hole = common::square_hole(16, 24, 4, 6, 8);
    let whole = layer.run_async(&f, &b, Some(&hole), &RunOptions::new().tile_rows(8)).await.unwrap();
    let told = std::cell::RefCell::new(Vec::new());
    let report = |done: usize, total: usize| told.borrow_mut().push((done, total));
    let options = RunOptions::new().tile_rows(1).progress(&report);
    let tiled = layer.run_async(&f, &b, Some(&hole), &options).await.unwrap();
    assert_eq!(common::bits(tiled.y.data()), common::bits(whole.y.data()), "y changed with the tiling");
    assert_eq!(tiled.argmax, whole.argmax);
    assert_eq!(common::bits(&tiled.mass), common::bits(&whole.mass));
    assert_eq!(*told.borrow(), (1..=8).map(|k| (k, 8)).collect::<Vec<_>>());
}

#[wasm_bindgen_test]
async fn errors_a_web_caller_can_meet() {
    let gpu = gpu().await;
    let layer = ContextualAttention::new(&gpu, Params { rate: 2, ..Default::default() }).unwrap();
    // A size the rate does not divide: the shape error, before anything reaches the device.
    let odd = Tensor::zeros([1, 15, 16, 3]);
    match layer.forward_async(&odd, &odd, None).await {
        Err(Error::NotDivisible { tensor, size: 15, rate: 2, .. }) => assert_eq!(tensor, "f"),
        other => panic!("expected a shape error for 15 rows at rate 2, got {other:?}"),
    }
    // A blocking call on the GPU: refused, naming the async call to use.
    let x = Tensor::zeros([1, 16, 16, 3]);
    match layer.forward(&x, &x, None) {
        Err(Error::Unsupported(msg)) => assert!(msg.contains("forward_async"), "{msg}"),
        other => panic!("expected the blocking call to be refused, got {other:?}"),
    }
}

/// `fill` on the browser's GPU: the hole (painted white, a value the checkerboard does not
/// hold) is written and comes close to the checkerboard it hides; nothing outside it changes.
/// (A fill can rebuild a periodic texture exactly, so the hole must not hold the truth.)
#[wasm_bindgen_test]
async fn fill_changes_the_hole_only() {
    let gpu = gpu().await;
    let truth = Tensor::from_fn([1, 64, 64, 3], |_, y, x, c| (((x / 4 + y / 4) % 2) * 200 + 20 * c) as f32);
    let hole = common::square_hole(64, 64, 24, 20, 16);
    let image = with_hole(&truth, &hole);
    let mut calls = 0;
    let filled =
        fill_async(&Backend::Gpu(gpu), &image, &hole, &FillParams::default(), &mut |_, _| calls += 1).await.unwrap();
    assert!(calls > 0, "progress was never told");
    let (mut changed, mut kept, mut error) = (0, 0, 0.0f64);
    for (((&a, &b), &t), i) in filled.result.data().iter().zip(image.data()).zip(truth.data()).zip(0..) {
        if hole.data()[i / 3] > 0.5 {
            changed += (a != b) as usize;
            error += (a - t).abs() as f64;
        } else {
            assert_eq!(a, b, "element {i} outside the hole changed");
            kept += 1;
        }
    }
    assert_eq!(changed, 16 * 16 * 3, "hole values left white");
    assert_eq!(kept, (64 * 64 - 16 * 16) * 3);
    // A flat guess would be about 100 off on average.
    let mean_error = error / changed as f64;
    assert!(mean_error < 30.0, "the hole does not continue the checkerboard: mean |error| {mean_error:.1}");
}
