//! The layer object callers use: parameters plus a backend, built once and reused.

use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::context::Gpu;
use crate::gpu::forward::{self, Workspace};
use crate::gpu::kernels::Kernels;
use crate::params::{Params, DEFAULT_MEMORY_BUDGET};
use crate::plan::Plan;
use crate::reference;
use crate::tensor::Tensor;

/// What one call produces. Equality compares the results, not `gpu_time_ms`.
#[derive(Clone, Debug)]
pub struct Output {
    /// The reconstruction, `[B, Hf, Wf, C]`.
    pub y: Tensor,
    /// Per query, the patch with the largest attention (first on ties), as a flat index
    /// `u·pw + v` into b's patch grid; `[B, hf, wf]` flattened.
    pub argmax: Vec<u32>,
    /// The same as (row, col) in b's patch grid: int32 `[B, hf, wf, 2]` flattened.
    pub offsets: Vec<i32>,
    /// Sum of the attention over the patches per query, `[B, hf, wf]` flattened. Below 1 where
    /// masked patches took mass (the original's 0-logit masking).
    pub mass: Vec<f32>,
    /// The query grid (hf, wf).
    pub grid: (usize, usize),
    /// b's patch grid (ph, pw).
    pub patch_grid: (usize, usize),
    /// The queries (i, j) whose attention rows were asked for ([`ContextualAttention::forward_inspect`]).
    pub queries: Vec<(usize, usize)>,
    /// Their attention over b's patches, `[B, queries, ph, pw]` flattened; empty unless asked for.
    pub attention_rows: Vec<f32>,
    /// Time the GPU spent in the layer's compute pass (timestamp queries), where the device
    /// supports them; `None` on the CPU backend. Excludes upload and readback.
    pub gpu_time_ms: Option<f64>,
}

impl PartialEq for Output {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.y,
            &self.argmax,
            &self.offsets,
            &self.mass,
            self.grid,
            self.patch_grid,
            &self.queries,
            &self.attention_rows,
        ) == (&o.y, &o.argmax, &o.offsets, &o.mass, o.grid, o.patch_grid, &o.queries, &o.attention_rows)
    }
}

impl Output {
    pub(crate) fn new(g: &Geometry, y: Tensor, argmax: Vec<u32>, mass: Vec<f32>) -> Output {
        let offsets = argmax.iter().flat_map(|&a| [(a as usize / g.pw) as i32, (a as usize % g.pw) as i32]).collect();
        Output {
            y,
            argmax,
            offsets,
            mass,
            grid: (g.hf, g.wf),
            patch_grid: (g.ph, g.pw),
            queries: Vec::new(),
            attention_rows: Vec::new(),
            gpu_time_ms: None,
        }
    }
}

/// Where the layer runs.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once per layer; boxing would buy nothing
pub enum Backend {
    /// WGSL compute shaders on a wgpu device.
    Gpu(Gpu),
    /// The CPU twin (f64 inside): slow, plain, the reference.
    Cpu,
}

/// The contextual attention layer, ready to run.
///
/// Builds its pipelines once (on the GPU) and keeps its buffers between calls of the same
/// sizes. Calls take `&self`; concurrent calls on one object are serialised.
///
/// ```no_run
/// use contextual_attention::{ContextualAttention, Gpu, Params, Tensor};
/// # fn main() -> contextual_attention::Result<()> {
/// let gpu = Gpu::new()?;
/// let layer = ContextualAttention::new(&gpu, Params { rate: 2, ..Default::default() })?;
/// let x = Tensor::from_fn([1, 32, 32, 8], |_, y, x, c| ((y * 7 + x * 3 + c) % 11) as f32 / 11.0);
/// let out = layer.forward(&x, &x, None)?;
/// assert_eq!(out.y.shape(), [1, 32, 32, 8]);
/// # Ok(()) }
/// ```
pub struct ContextualAttention {
    params: Params,
    backend: Backend,
    kernels: Option<Arc<Kernels>>,
    workspace: Mutex<Option<Workspace>>,
}

impl ContextualAttention {
    /// The layer on a GPU; compiles the pipelines now (once per [`Gpu`]).
    pub fn new(gpu: &Gpu, params: Params) -> Result<Self> {
        Self::with_backend(Backend::Gpu(gpu.clone()), params)
    }

    /// The layer on the CPU twin.
    pub fn cpu(params: Params) -> Result<Self> {
        Self::with_backend(Backend::Cpu, params)
    }

    /// The layer on the given backend.
    pub fn with_backend(backend: Backend, params: Params) -> Result<Self> {
        params.validate()?;
        let kernels = match &backend {
            Backend::Gpu(gpu) => Some(gpu.kernels()?),
            Backend::Cpu => None,
        };
        Ok(ContextualAttention { params, backend, kernels, workspace: Mutex::new(None) })
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// One line naming where the layer runs.
    pub fn describe_backend(&self) -> String {
        match &self.backend {
            Backend::Gpu(gpu) => gpu.describe(),
            Backend::Cpu => "CPU twin (f64)".to_string(),
        }
    }

    /// Runs the layer, blocking until the results are read back.
    ///
    /// `f` `[B, Hf, Wf, C]` are the queries (foreground), `b` `[B, Hb, Wb, C]` the patches
    /// (background); `mask` `[1 or B, Hb, Wb, 1]` marks with 1 the pixels of b that may not be
    /// used as a source.
    pub fn forward(&self, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Result<Output> {
        self.run(f, b, mask, &[], None, &mut |_, _| {})
    }

    /// [`forward`](Self::forward), calling `progress(done, total)` as the work advances (once
    /// per query tile of each batch item). Long calls are submitted to the GPU in parts, one per
    /// tile, so that no submission runs long enough for the operating system to reset the GPU.
    pub fn forward_with_progress(
        &self,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Output> {
        self.run(f, b, mask, &[], None, progress)
    }

    /// [`forward`](Self::forward), also returning the attention rows of the queries (i, j) of
    /// the hf×wf query grid in [`Output::attention_rows`] (for every batch item).
    pub fn forward_inspect(
        &self,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
        queries: &[(usize, usize)],
    ) -> Result<Output> {
        self.run(f, b, mask, queries, None, &mut |_, _| {})
    }

    /// [`forward`](Self::forward) as a future that resolves when the readback is mapped. A helper
    /// thread waits on the device, so the caller's executor is not blocked. On the CPU backend
    /// the work runs before the future is returned.
    pub async fn forward_async(&self, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Result<Output> {
        match &self.backend {
            Backend::Cpu => self.run(f, b, mask, &[], None, &mut |_, _| {}),
            Backend::Gpu(gpu) => self.submit(gpu, f, b, mask, &[], None)?.wait_async(gpu).await,
        }
    }

    /// Runs the layer in tiles of `rows_per_tile` query rows, whatever the memory budget says
    /// (for tests and experiments with tilings; the result does not depend on the tiling).
    pub fn forward_with_tile_rows(
        &self,
        rows_per_tile: usize,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Output> {
        self.run(f, b, mask, &[], Some(rows_per_tile), &mut |_, _| {})
    }

    /// The tile plan a call with these shapes would use.
    pub fn plan(&self, f: [usize; 4], b: [usize; 4], mask: Option<[usize; 4]>) -> Result<Plan> {
        Ok(self.prepare(f, b, mask, None)?.1)
    }

    /// Checks the shapes and plans the tiles: under the memory budget, or `rows_per_tile` rows.
    fn prepare(
        &self,
        f: [usize; 4],
        b: [usize; 4],
        mask: Option<[usize; 4]>,
        rows_per_tile: Option<usize>,
    ) -> Result<(Geometry, Plan)> {
        let g = Geometry::new(&self.params, f, b, mask)?;
        let plan = match (rows_per_tile, &self.backend) {
            (Some(rows), _) => Plan::with_rows(&g, rows),
            (None, backend) => {
                let max_binding = match backend {
                    Backend::Gpu(gpu) => gpu.max_binding(),
                    Backend::Cpu => u64::MAX,
                };
                match self.params.memory_budget {
                    Some(budget) => Plan::new(&g, budget, max_binding)?,
                    None => Plan::targeting(&g, DEFAULT_MEMORY_BUDGET.min(max_binding), max_binding)?,
                }
            }
        };
        Ok((g, plan))
    }

    fn submit(
        &self,
        gpu: &Gpu,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
        queries: &[(usize, usize)],
        rows_per_tile: Option<usize>,
    ) -> Result<forward::Pending> {
        let (g, plan) = self.prepare(f.shape(), b.shape(), mask.map(|m| m.shape()), rows_per_tile)?;
        let mut ws = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        gpu.checked(|| forward::submit(gpu, self.kernels(), &mut ws, &self.params, g, plan, f, b, mask, queries))
    }

    fn run(
        &self,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
        queries: &[(usize, usize)],
        rows_per_tile: Option<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Output> {
        match &self.backend {
            Backend::Cpu => {
                let (g, plan) = self.prepare(f.shape(), b.shape(), mask.map(|m| m.shape()), rows_per_tile)?;
                reference::forward(&self.params, &g, &plan, f, b, mask, queries, progress)
            }
            Backend::Gpu(gpu) => self.submit(gpu, f, b, mask, queries, rows_per_tile)?.wait(gpu, progress),
        }
    }

    fn kernels(&self) -> &Kernels {
        self.kernels.as_deref().expect("GPU backend has kernels")
    }
}
