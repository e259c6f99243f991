//! The demo page's bindings (wasm-bindgen): [`init_gpu`] asks the browser for its WebGPU adapter,
//! [`fill`] removes what the page's mask covers with `contextual_attention::fill` and returns
//! the result and its flow image as RGBA bytes, ready for a canvas's `ImageData`.
//!
//! Written here rather than generated: the page needs three calls, and a handful of lines of
//! byte conversion is all that stands between canvas pixels and the library's tensors.

use std::cell::RefCell;

use contextual_attention::fill::{fill_async, FillParams};
use contextual_attention::{Backend, Gpu, Tensor};
use wasm_bindgen::prelude::*;

thread_local! {
    /// Where fills run: the browser's WebGPU once [`init_gpu`] found it, or the CPU after
    /// [`use_cpu`]. One per page, so the pipelines are compiled once.
    static BACKEND: RefCell<Option<Backend>> = const { RefCell::new(None) };
}

/// Asks the browser for its WebGPU adapter (once per page) and returns its name; rejects with
/// the reason, saying how to get WebGPU, when the browser has none.
#[wasm_bindgen]
pub async fn init_gpu() -> Result<String, JsError> {
    if let Some(backend) = BACKEND.with(|b| b.borrow().clone()) {
        return Ok(backend.describe());
    }
    let gpu = Gpu::new_async().await.map_err(|e| JsError::new(&e.to_string()))?;
    let name = gpu.describe();
    BACKEND.with(|b| *b.borrow_mut() = Some(Backend::Gpu(gpu)));
    Ok(name)
}

/// Whether the adapter [`init_gpu`] found is a software one (SwiftShader, say): there the
/// CPU path is faster, and the page says so.
#[wasm_bindgen]
pub fn adapter_is_software() -> bool {
    BACKEND.with(|b| match &*b.borrow() {
        Some(Backend::Gpu(gpu)) => gpu.adapter_info().device_type == wgpu::DeviceType::Cpu,
        _ => false,
    })
}

/// Runs fills on the CPU instead (one thread; the page runs this module in a worker, so it
/// stays responsive): the way out on a browser without WebGPU. Returns the CPU path's name.
#[wasm_bindgen]
pub fn use_cpu() -> String {
    BACKEND.with(|b| *b.borrow_mut() = Some(Backend::Cpu));
    Backend::Cpu.describe()
}

/// What [`fill`] returns: the filled image and the flow image, RGBA, `width·height·4` bytes each.
#[wasm_bindgen]
pub struct Filled {
    result: Vec<u8>,
    flow: Vec<u8>,
    /// Layer calls made.
    pub calls: usize,
    /// Pyramid levels used.
    pub levels: usize,
}

#[wasm_bindgen]
impl Filled {
    /// The image with its hole filled (RGBA; alpha 255).
    #[wasm_bindgen(getter)]
    pub fn result(&self) -> Vec<u8> {
        self.result.clone()
    }

    /// Where each hole pixel was copied from, in the flow colour code (RGBA; white: not copied).
    #[wasm_bindgen(getter)]
    pub fn flow(&self) -> Vec<u8> {
        self.flow.clone()
    }
}

/// Fills the pixels of `rgba` (`width·height·4` bytes, a canvas's `ImageData`) where `hole`
/// (`width·height` bytes) is non-zero, on the backend [`init_gpu`] or [`use_cpu`] chose, calling
/// `progress(done, total)` after each layer call. The colour channels are filled; alpha is
/// kept as it was.
#[wasm_bindgen]
pub async fn fill(
    rgba: Vec<u8>,
    hole: Vec<u8>,
    width: usize,
    height: usize,
    progress: js_sys::Function,
) -> Result<Filled, JsError> {
    let backend = BACKEND
        .with(|b| b.borrow().clone())
        .ok_or_else(|| JsError::new("call init_gpu() (or use_cpu()) before fill()"))?;
    let pixels = width * height;
    if rgba.len() != pixels * 4 || hole.len() != pixels {
        return Err(JsError::new(&format!(
            "a {width}×{height} image needs {} RGBA bytes and {pixels} mask bytes; got {} and {}",
            pixels * 4,
            rgba.len(),
            hole.len()
        )));
    }
    let image = Tensor::from_fn([1, height, width, 3], |_, y, x, c| rgba[(y * width + x) * 4 + c] as f32);
    let mask = Tensor::from_fn([1, height, width, 1], |_, y, x, _| (hole[y * width + x] != 0) as u8 as f32);
    let mut report = |done: usize, total: usize| {
        // A throwing callback must not stop the fill; the page sees the result either way.
        let _ = progress.call2(&JsValue::NULL, &done.into(), &total.into());
    };
    let filled = fill_async(&backend, &image, &mask, &FillParams::default(), &mut report)
        .await
        .map_err(|e| JsError::new(&e.to_string()))?;
    let mut result = rgba;
    for (p, px) in result.chunks_exact_mut(4).enumerate() {
        for (c, v) in px[..3].iter_mut().enumerate() {
            *v = filled.result.data()[p * 3 + c].round().clamp(0.0, 255.0) as u8;
        }
    }
    let flow = filled.flow_image().chunks_exact(3).flat_map(|rgb| [rgb[0], rgb[1], rgb[2], 255]).collect();
    Ok(Filled { result, flow, calls: filled.calls, levels: filled.levels })
}
