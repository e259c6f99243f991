//! `contextual_attention._native`: the layer for Python, on numpy arrays (pyo3 + rust-numpy).
//! The Python package `contextual_attention` wraps it with keyword defaults, dtype conversion
//! and docstrings; this module only moves arrays in and out and maps errors.
//!
//! One GPU context is shared by every GPU layer of the process: creating a device and compiling
//! the pipelines costs far more than a small call, and a `Gpu` is cheap to share.

use std::sync::Mutex;

use contextual_attention::{
    gpu::context::{describe_adapter, list_adapters},
    Backend, ContextualAttention, Error, FuseMode, Gpu, Masking, Overlap, Params, Tensor,
};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Our errors as Python's: what the caller passed wrong is a `ValueError`, what the machine
/// could not do (no adapter, a GPU error, a device limit) a `RuntimeError`; the message is ours.
fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidParam { .. }
        | Error::Shape { .. }
        | Error::NotDivisible { .. }
        | Error::MemoryBudget { .. }
        | Error::DeviceBuffer { .. }
        | Error::Unsupported(_) => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// The process's GPU context, created on first use (a failed creation is retried next time).
fn shared_gpu() -> Result<Gpu, Error> {
    static GPU: Mutex<Option<Gpu>> = Mutex::new(None);
    let mut gpu = GPU.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(g) = gpu.as_ref() {
        return Ok(g.clone());
    }
    let g = Gpu::new()?;
    *gpu = Some(g.clone());
    Ok(g)
}

fn choice<T: Copy>(name: &str, value: &str, options: &[(&str, T)]) -> PyResult<T> {
    let wanted = value.replace('-', "_").to_lowercase();
    options.iter().find(|(n, _)| *n == wanted).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        PyValueError::new_err(format!("{name}={value:?} is not one of {names:?}"))
    })
}

/// A host tensor from a C-contiguous float32 array (the Python side converts to one).
fn tensor(name: &str, a: &PyReadonlyArray4<f32>) -> PyResult<Tensor> {
    let data = a.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))?;
    let s = a.shape();
    Tensor::new([s[0], s[1], s[2], s[3]], data.to_vec()).map_err(to_py)
}

/// The layer with its parameters and backend, kept between calls (pipelines, buffers).
#[pyclass(module = "contextual_attention._native", frozen)]
struct Layer {
    layer: ContextualAttention,
}

#[pymethods]
impl Layer {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (backend, ksize, stride, rate, fuse_k, softmax_scale, fuse, paste_kernel, overlap, masking, fuse_mode, memory_budget))]
    fn new(
        backend: &str,
        ksize: usize,
        stride: usize,
        rate: usize,
        fuse_k: usize,
        softmax_scale: f32,
        fuse: bool,
        paste_kernel: Option<usize>,
        overlap: &str,
        masking: &str,
        fuse_mode: &str,
        memory_budget: Option<u64>,
    ) -> PyResult<Self> {
        let params = Params {
            ksize,
            stride,
            rate,
            fuse_k,
            softmax_scale,
            fuse,
            paste_kernel,
            overlap: choice("overlap", overlap, &[("quarter", Overlap::Quarter), ("exact", Overlap::Exact)])?,
            masking: choice("masking", masking, &[("zero_logit", Masking::ZeroLogit), ("exclude", Masking::Exclude)])?,
            fuse_mode: choice("fuse_mode", fuse_mode, &[("wrap", FuseMode::Wrap), ("spatial", FuseMode::Spatial)])?,
            memory_budget,
        };
        // The GPU is only asked for when chosen, so the choice holds how to make the backend.
        type MakeBackend = fn() -> PyResult<Backend>;
        let make: MakeBackend = choice(
            "backend",
            backend,
            &[
                ("gpu", (|| Ok(Backend::Gpu(shared_gpu().map_err(to_py)?))) as MakeBackend),
                ("cpu", || Ok(Backend::Cpu)),
                ("reference", || Ok(Backend::Reference)),
            ],
        )?;
        Ok(Layer { layer: ContextualAttention::with_backend(make()?, params).map_err(to_py)? })
    }

    /// One line naming where the layer runs.
    fn describe_backend(&self) -> String {
        self.layer.describe_backend()
    }

    /// Runs the layer; returns a dict of numpy arrays: y, offsets, argmax, mass.
    #[pyo3(signature = (f, b, mask=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        f: PyReadonlyArray4<'py, f32>,
        b: PyReadonlyArray4<'py, f32>,
        mask: Option<PyReadonlyArray4<'py, f32>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let (f, b) = (tensor("f", &f)?, tensor("b", &b)?);
        let mask = mask.as_ref().map(|m| tensor("mask", m)).transpose()?;
        // The work runs without the GIL: other Python threads go on meanwhile.
        let out = py.detach(|| self.layer.forward(&f, &b, mask.as_ref())).map_err(to_py)?;
        let [n, h, w, c] = out.y.shape();
        let (hf, wf) = out.grid;
        let dict = PyDict::new(py);
        dict.set_item("y", PyArray1::from_vec(py, out.y.into_data()).reshape([n, h, w, c])?)?;
        dict.set_item("offsets", PyArray1::from_vec(py, out.offsets).reshape([n, hf, wf, 2])?)?;
        dict.set_item("argmax", PyArray1::from_vec(py, out.argmax).reshape([n, hf, wf])?)?;
        dict.set_item("mass", PyArray1::from_vec(py, out.mass).reshape([n, hf, wf])?)?;
        Ok(dict)
    }
}

/// Every adapter wgpu sees (`WGPU_BACKEND` honoured), one line each.
#[pyfunction]
fn adapters() -> Vec<String> {
    list_adapters().iter().map(describe_adapter).collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Layer>()?;
    m.add_function(wrap_pyfunction!(adapters, m)?)?;
    Ok(())
}
