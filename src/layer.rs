//! The layer object callers use: parameters plus a backend, built once and reused.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use crate::cpu;
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::gpu::context::Gpu;
use crate::gpu::forward::{self, Workspace};
use crate::gpu::kernel::Kernels;
use crate::gpu::resident::{DeviceIo, DeviceOutputs, DeviceTensor};
use crate::output::Output;
use crate::params::{Params, DEFAULT_MEMORY_BUDGET};
use crate::plan::Plan;
use crate::reference;
use crate::tensor::Tensor;

/// How one call runs, beyond its inputs: every option combines with every other.
///
/// ```
/// use contextual_attention::RunOptions;
/// let report = |done: usize, total: usize| eprintln!("{done}/{total} tiles");
/// let options = RunOptions::new().progress(&report).queries(&[(0, 0), (3, 5)]).tile_rows(4);
/// assert_eq!(options.tile_rows, Some(4));
/// ```
#[derive(Clone, Copy, Default)]
pub struct RunOptions<'a> {
    /// Told `(done, total)` as query tiles finish (per batch item and tile).
    pub progress: Option<&'a dyn Fn(usize, usize)>,
    /// Queries (i, j) of the hf×wf query grid whose attention rows the output carries in
    /// [`Output::attention_rows`] (for every batch item).
    pub queries: &'a [(usize, usize)],
    /// Query rows per tile, whatever the memory budget says (for tests and experiments with
    /// tilings; the result does not depend on the tiling). `None`: planned under the budget.
    pub tile_rows: Option<usize>,
    /// Patch rows per key tile (SPEC §T2), whatever the memory budget says, on the GPU and the
    /// CPU backend (the twin always takes all patches at once). With only one of `tile_rows`
    /// and `key_rows` set, the other side is one tile.
    pub key_rows: Option<usize>,
    /// Computes y only inside this mask `[1 or B, Hf, Wf, 1]` at y's resolution (non-zero:
    /// wanted; SPEC §R): only the query rows whose pastes cover it, with their fuse halos, are
    /// computed. Inside the region y equals the full run's (within 1e-6 relative); outside it
    /// y is 0, and queries not computed have argmax 0 and mass 0.
    /// [`Output::queries_computed`] tells the work done. (`run_async` blocks like `run` when a
    /// region is set.)
    pub region: Option<&'a Tensor>,
}

impl std::fmt::Debug for RunOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("progress", &self.progress.map(|_| "callback"))
            .field("queries", &self.queries)
            .field("tile_rows", &self.tile_rows)
            .field("key_rows", &self.key_rows)
            .field("region", &self.region.map(|r| r.shape()))
            .finish()
    }
}

impl<'a> RunOptions<'a> {
    /// No progress, no inspected queries, tiles planned under the memory budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports `(done, total)` query tiles to `progress`.
    pub fn progress(self, progress: &'a dyn Fn(usize, usize)) -> Self {
        RunOptions { progress: Some(progress), ..self }
    }

    /// Also returns the attention rows of these queries (i, j).
    pub fn queries(self, queries: &'a [(usize, usize)]) -> Self {
        RunOptions { queries, ..self }
    }

    /// Tiles of `rows` query rows.
    pub fn tile_rows(self, rows: usize) -> Self {
        RunOptions { tile_rows: Some(rows), ..self }
    }

    /// Key tiles of `rows` patch rows.
    pub fn key_rows(self, rows: usize) -> Self {
        RunOptions { key_rows: Some(rows), ..self }
    }

    /// Computes y only inside `region` (see [`RunOptions::region`]).
    pub fn region(self, region: &'a Tensor) -> Self {
        RunOptions { region: Some(region), ..self }
    }

    /// The fixed (query rows, key rows) of the options, if any is set.
    fn fixed_tiles(&self, g: &Geometry) -> Option<(usize, usize)> {
        match (self.tile_rows, self.key_rows) {
            (None, None) => None,
            (q, k) => Some((q.unwrap_or(g.hf), k.unwrap_or(g.ph))),
        }
    }

    fn report(&self, done: usize, total: usize) {
        if let Some(p) = self.progress {
            p(done, total)
        }
    }
}

/// Where the layer runs.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once per layer; boxing would buy nothing
pub enum Backend {
    /// WGSL compute shaders on a wgpu device.
    Gpu(Gpu),
    /// The fast CPU path (f32, packed GEMMs, all cores; [`crate::cpu`]).
    Cpu,
    /// The CPU twin (f64 plain loops, one function per GPU stage): slow, the reference the
    /// other backends are tested against.
    Reference,
}

impl Backend {
    /// One line naming where the layer runs: the adapter, or the CPU path and its threads.
    pub fn describe(&self) -> String {
        match self {
            Backend::Gpu(gpu) => gpu.describe(),
            Backend::Cpu => cpu::describe(),
            Backend::Reference => "CPU twin (f64)".to_string(),
        }
    }
}

/// Where [`ContextualAttention::start`] leaves a call.
enum Start {
    /// Compute it on this geometry, restricted to these query rows where there is a region.
    Compute(Geometry, Option<Vec<bool>>),
    /// Nothing to compute (a region covering no pixel).
    Done(Output),
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
    cpu_workspace: Mutex<cpu::Workspace>,
}

impl ContextualAttention {
    /// The layer on a GPU; compiles the pipelines now (once per [`Gpu`]).
    pub fn new(gpu: &Gpu, params: Params) -> Result<Self> {
        Self::with_backend(Backend::Gpu(gpu.clone()), params)
    }

    /// The layer on the fast CPU path ([`Backend::Cpu`]).
    pub fn cpu(params: Params) -> Result<Self> {
        Self::with_backend(Backend::Cpu, params)
    }

    /// The layer on the CPU twin ([`Backend::Reference`]).
    pub fn reference(params: Params) -> Result<Self> {
        Self::with_backend(Backend::Reference, params)
    }

    /// The layer on the given backend.
    pub fn with_backend(backend: Backend, params: Params) -> Result<Self> {
        params.validate()?;
        let kernels = match &backend {
            Backend::Gpu(gpu) => Some(gpu.kernels()),
            Backend::Cpu | Backend::Reference => None,
        };
        Ok(ContextualAttention {
            params,
            backend,
            kernels,
            workspace: Mutex::new(None),
            cpu_workspace: Mutex::new(cpu::Workspace::default()),
        })
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
        self.backend.describe()
    }

    /// Runs the layer, blocking until the results are read back.
    ///
    /// `f` `[B, Hf, Wf, C]` are the queries (foreground), `b` `[B, Hb, Wb, C]` the patches
    /// (background); `mask` `[1 or B, Hb, Wb, 1]` marks with 1 the pixels of b that may not be
    /// used as a source. `options` adds progress, inspected queries and a fixed tiling. Long
    /// calls are submitted to the GPU in parts, one per tile, so that no submission runs long
    /// enough for the operating system to reset the GPU.
    pub fn run(&self, f: &Tensor, b: &Tensor, mask: Option<&Tensor>, options: &RunOptions) -> Result<Output> {
        let mut progress = |done, total| options.report(done, total);
        let (g, needed) = match self.start(f, b, mask, options)? {
            Start::Compute(g, needed) => (g, needed),
            Start::Done(out) => return Ok(out),
        };
        let out = match &self.backend {
            Backend::Cpu => {
                // Query and key tiles of its own (SPEC §T2), under the budget or cpu::default_budget.
                let mut tiling = match (options.tile_rows, options.key_rows) {
                    (q, Some(k)) => cpu::Tiling::with_rows(&g, q.unwrap_or(g.hf), k),
                    (q, None) => cpu::Tiling::for_call(&g, self.params.memory_budget, q)?,
                };
                if let Some(needed) = &needed {
                    tiling = tiling.restricted(&g, needed);
                }
                let mut ws = self.cpu_workspace.lock().unwrap_or_else(|p| p.into_inner());
                cpu::forward(&self.params, &g, &tiling, &mut ws, f, b, mask, options.queries, &mut progress)?
            }
            Backend::Reference => {
                let plan = self.prepare(&g, needed.as_deref(), options)?;
                reference::forward(&self.params, &g, &plan, f, b, mask, options.queries, &mut progress)?
            }
            #[cfg(not(target_arch = "wasm32"))]
            Backend::Gpu(gpu) => {
                let plan = self.prepare(&g, needed.as_deref(), options)?;
                self.submit(gpu, g.clone(), plan, f, b, mask, options.queries)?.wait(gpu, &mut progress)?
            }
            #[cfg(target_arch = "wasm32")]
            Backend::Gpu(_) => {
                return Err(Error::Unsupported(
                    "in the browser nothing may block, so the GPU backend has no blocking calls: use \
                     run_async or forward_async"
                        .into(),
                ))
            }
        };
        Ok(Self::finish(out, &g, options, needed.as_deref()))
    }

    /// What every call does first: the geometry (shapes and parameters checked) and, with a
    /// region, the query rows it needs; a call whose region covers no pixel is done here.
    fn start(&self, f: &Tensor, b: &Tensor, mask: Option<&Tensor>, options: &RunOptions) -> Result<Start> {
        let g = Geometry::new(&self.params, f.shape(), b.shape(), mask.map(|m| m.shape()))?;
        let needed = options.region.map(|r| g.region_rows(r)).transpose()?;
        if needed.as_ref().is_some_and(|n| !n.contains(&true)) {
            return Ok(Start::Done(Self::empty_region(&g)));
        }
        Ok(Start::Compute(g, needed))
    }

    /// What every call does last: outside a region, y is the input's (SPEC §R).
    fn finish(mut out: Output, g: &Geometry, options: &RunOptions, needed: Option<&[bool]>) -> Output {
        if let (Some(region), Some(needed)) = (options.region, needed) {
            out.keep_region(g, region, needed);
        }
        out
    }

    /// The output of a call whose region covers no pixel: nothing computed, everything 0.
    fn empty_region(g: &Geometry) -> Output {
        let y = Tensor::zeros([g.batch, g.f_size.0, g.f_size.1, g.channels]);
        let mut out = Output::new(g, y, vec![0; g.batch * g.queries()], vec![0.0; g.batch * g.queries()]);
        out.queries_computed = 0;
        out
    }

    /// [`run`](Self::run) as a future that resolves when the readback is mapped, with the same
    /// options (progress told as each query tile finishes). The one way to run on the GPU in
    /// the browser (feature `webgpu`), where the page's event loop drives it; natively a helper
    /// thread waits on the device, so the caller's executor is not blocked. On the CPU backends
    /// the work runs before the future is returned.
    pub async fn run_async(
        &self,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
        options: &RunOptions<'_>,
    ) -> Result<Output> {
        let Backend::Gpu(gpu) = &self.backend else {
            return self.run(f, b, mask, options);
        };
        let (g, needed) = match self.start(f, b, mask, options)? {
            Start::Compute(g, needed) => (g, needed),
            Start::Done(out) => return Ok(out),
        };
        let plan = self.prepare(&g, needed.as_deref(), options)?;
        let pending = self.submit(gpu, g.clone(), plan, f, b, mask, options.queries)?;
        let out = pending.wait_async(gpu, &mut |done, total| options.report(done, total)).await?;
        Ok(Self::finish(out, &g, options, needed.as_deref()))
    }

    /// [`run`](Self::run) with default options.
    pub fn forward(&self, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Result<Output> {
        self.run(f, b, mask, &RunOptions::new())
    }

    /// [`run`](Self::run), calling `progress(done, total)` once per query tile of each item.
    pub fn forward_with_progress(
        &self,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Output> {
        let progress = RefCell::new(progress);
        self.run(f, b, mask, &RunOptions::new().progress(&|done, total| (progress.borrow_mut())(done, total)))
    }

    /// [`run`](Self::run) with the attention rows of `queries` (see [`RunOptions::queries`]).
    pub fn forward_inspect(
        &self,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
        queries: &[(usize, usize)],
    ) -> Result<Output> {
        self.run(f, b, mask, &RunOptions::new().queries(queries))
    }

    /// [`run_async`](Self::run_async) with default options.
    pub async fn forward_async(&self, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Result<Output> {
        self.run_async(f, b, mask, &RunOptions::new()).await
    }

    /// [`run`](Self::run) in tiles of `rows_per_tile` query rows (see [`RunOptions::tile_rows`]).
    pub fn forward_with_tile_rows(
        &self,
        rows_per_tile: usize,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Output> {
        self.run(f, b, mask, &RunOptions::new().tile_rows(rows_per_tile))
    }

    /// Records the layer into the caller's `encoder`, on tensors that stay on the GPU: f, b
    /// and the mask are read from the caller's buffers and y (and, if asked for, argmax and
    /// mass) written to theirs, with no copy through the host. Nothing is submitted: the
    /// results are in the output buffers once the caller submits `encoder` on this layer's
    /// queue ([`Gpu::queue`]) and it completes.
    ///
    /// The buffers must belong to this layer's device ([`Gpu::from_device`] wraps a device
    /// the caller already has). Inputs need [`wgpu::BufferUsages::COPY_SRC`], outputs
    /// [`wgpu::BufferUsages::COPY_DST`], offsets a multiple of 4 bytes; y may be f's own range
    /// (in place). Shapes, sizes, usages and offsets are checked here, with an error naming
    /// the buffer. The whole call is one compute pass of `encoder`: for a very large call,
    /// whose work could run into the operating system's GPU timeout,
    /// [`run_on_device`](Self::run_on_device) submits it in parts. Of `options`, the tiling
    /// (`tile_rows`, `key_rows`) applies; progress, inspected queries and regions need the
    /// host path ([`run`](Self::run)) and are refused.
    ///
    /// ```no_run
    /// use contextual_attention::{ContextualAttention, DeviceOutputs, DeviceTensor, Gpu, Params, RunOptions};
    /// use wgpu::util::DeviceExt;
    /// # fn main() -> contextual_attention::Result<()> {
    /// let gpu = Gpu::new()?;
    /// let layer = ContextualAttention::new(&gpu, Params { rate: 2, ..Default::default() })?;
    /// let shape = [1, 32, 32, 8];
    /// let values: Vec<f32> = (0..32 * 32 * 8).map(|i| (i % 17) as f32 / 17.0).collect();
    /// let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    /// // A tensor that lives on the GPU, e.g. the output of the previous layer; y replaces it.
    /// let x = gpu.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
    ///     label: Some("x"),
    ///     contents: bytemuck::cast_slice(&values),
    ///     usage,
    /// });
    /// let mut encoder = gpu.device().create_command_encoder(&Default::default());
    /// // ... the previous layer's passes ...
    /// let x_t = DeviceTensor::new(&x, shape);
    /// layer.record_on_device(&mut encoder, &x_t, &x_t, None, &DeviceOutputs::y(&x), &RunOptions::new())?;
    /// // ... the next layer's passes read x ...
    /// gpu.queue().submit([encoder.finish()]);
    /// # Ok(()) }
    /// ```
    pub fn record_on_device(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        f: &DeviceTensor,
        b: &DeviceTensor,
        mask: Option<&DeviceTensor>,
        outputs: &DeviceOutputs,
        options: &RunOptions,
    ) -> Result<()> {
        let io = DeviceIo { f, b, mask, out: outputs };
        self.device_call(io, options, |gpu, kernels, ws, g, plan| {
            forward::record_on_device(gpu, kernels, ws, &self.params, g, plan, io, encoder)
        })
    }

    /// [`record_on_device`](Self::record_on_device), submitted on the layer's queue in parts
    /// (one per query tile, as [`run`](Self::run) does). Returns without waiting: the index of
    /// the last submission, which the caller can wait for with
    /// `gpu.device().poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })`,
    /// or simply submit later work that reads the outputs on the same queue.
    pub fn run_on_device(
        &self,
        f: &DeviceTensor,
        b: &DeviceTensor,
        mask: Option<&DeviceTensor>,
        outputs: &DeviceOutputs,
        options: &RunOptions,
    ) -> Result<wgpu::SubmissionIndex> {
        let io = DeviceIo { f, b, mask, out: outputs };
        self.device_call(io, options, |gpu, kernels, ws, g, plan| {
            forward::submit_on_device(gpu, kernels, ws, &self.params, g, plan, io)
        })
    }

    /// A device-resident call: checked ([`prepare_device_call`](Self::prepare_device_call)),
    /// then `call` on the layer's workspace inside the GPU's error scopes.
    fn device_call<T>(
        &self,
        io: DeviceIo,
        options: &RunOptions,
        call: impl FnOnce(&Gpu, &Kernels, &mut Option<Workspace>, &Geometry, &Plan) -> Result<T>,
    ) -> Result<T> {
        let (gpu, g, plan) = self.prepare_device_call(io, options)?;
        let mut ws = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        gpu.checked(|| call(gpu, self.kernels(), &mut ws, &g, &plan))
    }

    /// The checks of a device-resident call: GPU backend, supported options, shapes, buffers.
    fn prepare_device_call(&self, io: DeviceIo, options: &RunOptions) -> Result<(&Gpu, Geometry, Plan)> {
        let Backend::Gpu(gpu) = &self.backend else {
            return Err(Error::Unsupported(format!(
                "device-resident calls need the GPU backend, and this layer runs on {}; \
                 build it with ContextualAttention::new(&gpu, params), or use run() with host tensors",
                self.backend.describe()
            )));
        };
        let refused = [
            (options.progress.is_some(), "progress"),
            (!options.queries.is_empty(), "queries"),
            (options.region.is_some(), "region"),
        ];
        if let Some((_, what)) = refused.iter().find(|r| r.0) {
            return Err(Error::Unsupported(format!(
                "RunOptions::{what} is not available on a device-resident call (it needs the results on the host); \
                 use run() for it, or leave it unset"
            )));
        }
        let g = Geometry::new(&self.params, io.f.shape, io.b.shape, io.mask.map(|m| m.shape))?;
        io.check(&g)?;
        let plan = self.prepare(&g, None, options)?;
        Ok((gpu, g, plan))
    }

    /// The tile plan a call with these shapes would use on the GPU or the twin (the CPU backend
    /// also tiles the patches: [`cpu::Tiling::for_call`]).
    pub fn plan(&self, f: [usize; 4], b: [usize; 4], mask: Option<[usize; 4]>) -> Result<Plan> {
        let g = Geometry::new(&self.params, f, b, mask)?;
        self.prepare(&g, None, &RunOptions::new())
    }

    /// Plans the tiles: under the memory budget, or as `options` fix them; restricted to the
    /// `needed` query rows of a region.
    fn prepare(&self, g: &Geometry, needed: Option<&[bool]>, options: &RunOptions) -> Result<Plan> {
        let plan = match (options.fixed_tiles(g), &self.backend) {
            (Some((rows, key_rows)), _) => Plan::with_tiles(g, rows, key_rows),
            (None, backend) => {
                let max_binding = match backend {
                    Backend::Gpu(gpu) => gpu.max_binding(),
                    Backend::Cpu | Backend::Reference => u64::MAX,
                };
                match self.params.memory_budget {
                    Some(budget) => Plan::new(g, budget, max_binding)?,
                    None => Plan::targeting(g, DEFAULT_MEMORY_BUDGET.min(max_binding), max_binding)?,
                }
            }
        };
        Ok(match needed {
            Some(needed) => plan.restricted(g, needed),
            None => plan,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        gpu: &Gpu,
        g: Geometry,
        plan: Plan,
        f: &Tensor,
        b: &Tensor,
        mask: Option<&Tensor>,
        queries: &[(usize, usize)],
    ) -> Result<forward::Pending> {
        let mut ws = self.workspace.lock().unwrap_or_else(|p| p.into_inner());
        gpu.checked(|| forward::submit(gpu, self.kernels(), &mut ws, &self.params, g, plan, f, b, mask, queries))
    }

    fn kernels(&self) -> &Kernels {
        self.kernels.as_deref().expect("GPU backend has kernels")
    }
}
