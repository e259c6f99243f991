//! Stage `gemm` (SPEC §2.7, §2.10): the layer's two matrix products, one shader compiled per
//! kind and variant through its override constants: the matching scores
//! `query_patches · matching_patchesᵀ` and the paste `weights · raw_patches`, added to the
//! accumulator. Shader `shaders/gemm.wgsl`; twins [`crate::reference::gemm_nt`] and
//! [`crate::reference::gemm_nn`].
//!
//! The variants differ in register tile (4×4 or 8×4 per invocation, so a 64×64 or 128×64 tile per
//! workgroup) and depth per step (BK 8, 16, 32); each also comes without bounds checks, used only
//! where the sizes are multiples of its tiles. Every variant adds the products in the same order
//! (ascending k), so all give the same bits. The best differs between devices, so the layer times
//! them on its own device, on first use per kind and shape class ([`choose`]), with timestamp
//! queries, and keeps the fastest in the [`Gpu`]. A CPU device (a software Vulkan) is timed once
//! per kind at 256×256×256, as its ranking hardly depends on the size and larger runs would take
//! seconds. Where timing is impossible (no timestamp queries), the [`DEFAULT`] variant is used;
//! `CA_GEMM_VARIANT` (a name from [`VARIANTS`]) forces one.

use std::collections::BTreeMap;

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::{floats, Single, STORAGE as WORKING};
use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};

/// The uniform block of `gemm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub lda: u32,
    pub ldb: u32,
    pub ldc: u32,
}

/// Which product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `[m, k] · [n, k]ᵀ`: the matching scores.
    Scores,
    /// `c += [m, k] · [k, n]`: the paste of a key tile into the query tile's accumulator.
    Paste,
}

/// One variant: rows per invocation (`tm`, times 4 columns) and depth per step (`bk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// Its name, as `CA_GEMM_VARIANT` takes it: `<tile rows>x64-bk<depth>`.
    pub name: &'static str,
    /// Output rows per invocation (the workgroup's tile has 16·tm rows and 64 columns).
    pub tm: u32,
    /// Depth of K per step through workgroup memory.
    pub bk: u32,
}

impl Variant {
    /// Rows of the workgroup's output tile.
    pub fn tile_rows(&self) -> u32 {
        16 * self.tm
    }
}

/// Every variant, in the order of the kernel table.
pub const VARIANTS: [Variant; 5] = [
    Variant { name: "64x64-bk8", tm: 4, bk: 8 },
    Variant { name: "64x64-bk16", tm: 4, bk: 16 },
    Variant { name: "64x64-bk32", tm: 4, bk: 32 },
    Variant { name: "128x64-bk8", tm: 8, bk: 8 },
    Variant { name: "128x64-bk16", tm: 8, bk: 16 },
];

/// The variant used where none is timed: the layer's first GEMM (64×64 tiles, BK 16).
pub const DEFAULT: usize = 1;

/// Columns of every variant's output tile.
const TILE_COLS: u32 = 64;

const STORAGE: &[Access] = &[Access::Read, Access::Read, Access::ReadWrite];
const SOURCE: &str = include_str!("../../../shaders/gemm.wgsl");

macro_rules! kernel {
    ($name:literal, $trans:literal, $acc:literal, $tm:literal, $bk:literal, $checked:literal) => {
        Kernel::new(
            $name,
            "gemm.wgsl",
            SOURCE,
            STORAGE,
            [16, 16, 1],
            &[("TRANS_B", $trans), ("ACCUMULATE", $acc), ("TM", $tm), ("BK", $bk), ("CHECKED", $checked)],
        )
    };
}

/// Per kind (scores, paste), per variant of [`VARIANTS`]: the bounds-checked kernel, then the
/// kernel without checks.
pub(crate) static KERNELS: [Kernel<Params>; 20] = [
    kernel!("scores_gemm_64x64_bk8", 1.0, 0.0, 4.0, 8.0, 1.0),
    kernel!("scores_gemm_64x64_bk8_exact", 1.0, 0.0, 4.0, 8.0, 0.0),
    kernel!("scores_gemm_64x64_bk16", 1.0, 0.0, 4.0, 16.0, 1.0),
    kernel!("scores_gemm_64x64_bk16_exact", 1.0, 0.0, 4.0, 16.0, 0.0),
    kernel!("scores_gemm_64x64_bk32", 1.0, 0.0, 4.0, 32.0, 1.0),
    kernel!("scores_gemm_64x64_bk32_exact", 1.0, 0.0, 4.0, 32.0, 0.0),
    kernel!("scores_gemm_128x64_bk8", 1.0, 0.0, 8.0, 8.0, 1.0),
    kernel!("scores_gemm_128x64_bk8_exact", 1.0, 0.0, 8.0, 8.0, 0.0),
    kernel!("scores_gemm_128x64_bk16", 1.0, 0.0, 8.0, 16.0, 1.0),
    kernel!("scores_gemm_128x64_bk16_exact", 1.0, 0.0, 8.0, 16.0, 0.0),
    kernel!("paste_gemm_64x64_bk8", 0.0, 1.0, 4.0, 8.0, 1.0),
    kernel!("paste_gemm_64x64_bk8_exact", 0.0, 1.0, 4.0, 8.0, 0.0),
    kernel!("paste_gemm_64x64_bk16", 0.0, 1.0, 4.0, 16.0, 1.0),
    kernel!("paste_gemm_64x64_bk16_exact", 0.0, 1.0, 4.0, 16.0, 0.0),
    kernel!("paste_gemm_64x64_bk32", 0.0, 1.0, 4.0, 32.0, 1.0),
    kernel!("paste_gemm_64x64_bk32_exact", 0.0, 1.0, 4.0, 32.0, 0.0),
    kernel!("paste_gemm_128x64_bk8", 0.0, 1.0, 8.0, 8.0, 1.0),
    kernel!("paste_gemm_128x64_bk8_exact", 0.0, 1.0, 8.0, 8.0, 0.0),
    kernel!("paste_gemm_128x64_bk16", 0.0, 1.0, 8.0, 16.0, 1.0),
    kernel!("paste_gemm_128x64_bk16_exact", 0.0, 1.0, 8.0, 16.0, 0.0),
];

/// Whether `p`'s sizes are multiples of `v`'s tiles, so the kernel without checks may run.
fn exact(v: &Variant, p: &Params) -> bool {
    p.m.is_multiple_of(v.tile_rows()) && p.n.is_multiple_of(TILE_COLS) && p.k.is_multiple_of(v.bk)
}

/// The kernel of `kind` and variant `v` (an index into [`VARIANTS`]) for `p`'s sizes.
fn kernel(kind: Kind, v: usize, p: &Params) -> &'static Kernel<Params> {
    let unchecked = exact(&VARIANTS[v], p) as usize;
    &KERNELS[(kind as usize) * 2 * VARIANTS.len() + 2 * v + unchecked]
}

/// `[m, k] · [n, k]ᵀ` (`trans_b`) or `[m, k] · [k, n]`, all contiguous.
pub(crate) fn params(m: usize, n: usize, k: usize, trans_b: bool) -> Result<Params> {
    Ok(Params {
        m: u32_of("GEMM rows", m)?,
        n: u32_of("GEMM columns", n)?,
        k: u32_of("GEMM depth", k)?,
        lda: k as u32,
        ldb: if trans_b { k as u32 } else { n as u32 },
        ldc: n as u32,
    })
}

/// The product of `kind` with variant `v` (an index into [`VARIANTS`]).
pub(crate) fn record(
    rec: &mut Recorder,
    kind: Kind,
    v: usize,
    p: &Params,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    c: &wgpu::Buffer,
) -> Result<()> {
    let groups = (p.n.div_ceil(TILE_COLS), p.m.div_ceil(VARIANTS[v].tile_rows()));
    rec.grid(kernel(kind, v, p), p, [a, b, c], groups)
}

/// `a [m, k] · b [n, k]ᵀ` (the scores) or `a [m, k] · b [k, n]` (the paste, added to zeros) with
/// variant `v`, alone on `gpu`.
#[allow(clippy::too_many_arguments)]
pub fn run(gpu: &Gpu, kind: Kind, v: usize, a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let p = params(m, n, k, kind == Kind::Scores)?;
    // The scores overwrite their output (poisoned, so a missed element shows); the paste adds.
    let cb = match kind {
        Kind::Scores => s.poisoned(m * n),
        Kind::Paste => s.input(&vec![0.0f32; (m * n).max(1)]),
    };
    let (ab, bb) = (s.input(a), s.input(b));
    record(&mut s.rec, kind, v, &p, &ab, &bb, &cb)?;
    Ok(floats(s.finish(&[(&cb, m * n)])?.remove(0)))
}

/// A shape class: the kind and the sizes rounded up to powers of two (m and n at most 2048,
/// the size the timing runs at; on a CPU device one class per kind, 256×256×256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShapeClass {
    /// Which product.
    pub kind: Kind,
    /// Rows, columns and depth, rounded up.
    pub m: usize,
    /// Columns.
    pub n: usize,
    /// Depth.
    pub k: usize,
}

impl ShapeClass {
    fn of(gpu: &Gpu, kind: Kind, m: usize, n: usize, k: usize) -> ShapeClass {
        if gpu.adapter_info().device_type == wgpu::DeviceType::Cpu {
            return ShapeClass { kind, m: CPU_DEVICE_SIZE, n: CPU_DEVICE_SIZE, k: CPU_DEVICE_SIZE };
        }
        let round = |x: usize, cap: usize| x.max(1).next_power_of_two().min(cap);
        ShapeClass { kind, m: round(m, TIMED_MAX), n: round(n, TIMED_MAX), k: round(k, usize::MAX) }
    }
}

/// The largest m and n a timing run uses on a GPU: enough to fill a large one, small enough to
/// take milliseconds.
const TIMED_MAX: usize = 2048;
/// m, n and k of the one timing run per kind on a CPU device.
const CPU_DEVICE_SIZE: usize = 256;

/// What the layer decided for one shape class.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Index of the variant used, into [`VARIANTS`].
    pub variant: usize,
    /// Why: "timed", "forced by CA_GEMM_VARIANT", or why the default is used.
    pub reason: String,
    /// Milliseconds per product of each variant at the class's size, where timed.
    pub times_ms: Vec<(usize, f64)>,
}

/// The choices made on one device, by shape class.
pub(crate) type Choices = BTreeMap<ShapeClass, Choice>;

/// The variant to use for a product of `kind` with these sizes on `gpu`: forced by
/// `CA_GEMM_VARIANT`, cached, timed now (and cached), or the default.
pub fn choose(gpu: &Gpu, kind: Kind, m: usize, n: usize, k: usize) -> Result<usize> {
    let class = ShapeClass::of(gpu, kind, m, n, k);
    if let Some(c) = gpu.gemm_choices().get(&class) {
        return Ok(c.variant);
    }
    let choice = match std::env::var("CA_GEMM_VARIANT") {
        Ok(name) => {
            let variant = VARIANTS.iter().position(|v| v.name == name).ok_or_else(|| {
                let names: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
                Error::param("CA_GEMM_VARIANT", &name, format!("must be one of {}", names.join(", ")))
            })?;
            Choice { variant, reason: "forced by CA_GEMM_VARIANT".into(), times_ms: Vec::new() }
        }
        Err(_) => {
            if cfg!(target_arch = "wasm32") {
                // Timing reads back inside this synchronous call, which the browser cannot do.
                let reason = "default (in the browser: not timed)".into();
                Choice { variant: DEFAULT, reason, times_ms: Vec::new() }
            } else if !gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
                let reason = "default (no timestamp queries: not timed)".into();
                Choice { variant: DEFAULT, reason, times_ms: Vec::new() }
            } else {
                let times_ms = time_variants(gpu, class)?;
                let best = times_ms.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map_or(DEFAULT, |t| t.0);
                Choice { variant: best, reason: "timed".into(), times_ms }
            }
        }
    };
    let variant = choice.variant;
    gpu.gemm_choices().insert(class, choice);
    Ok(variant)
}

/// Every choice made on `gpu` so far, by shape class (what `bench` prints).
pub fn choices(gpu: &Gpu) -> Vec<(ShapeClass, Choice)> {
    gpu.gemm_choices().iter().map(|(c, v)| (*c, v.clone())).collect()
}

/// Times every variant on `class`'s sizes: one warm-up, then three products between two
/// timestamps, per variant; milliseconds per product.
pub fn time_variants(gpu: &Gpu, class: ShapeClass) -> Result<Vec<(usize, f64)>> {
    let device = &gpu.device;
    let (m, n, k) = (class.m, class.n, class.k);
    let p = params(m, n, k, class.kind == Kind::Scores)?;
    let buffer = |len: usize| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("GEMM timing"),
            contents: bytemuck::cast_slice(&vec![0.5f32; len.max(1)]),
            usage: WORKING,
        })
    };
    let (a, b, c) = (buffer(m * k), buffer(n * k), buffer(m * n));
    let kernels = gpu.kernels();
    let mut times = Vec::new();
    for v in 0..VARIANTS.len() {
        let ticks = gpu.checked(|| {
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("GEMM timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("GEMM timing"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("GEMM timing"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut warm = Recorder::new(device);
            record(&mut warm, class.kind, v, &p, &a, &b, &c)?;
            let mut encoders = warm.encode(device, &kernels, None, |_| {});
            let mut timed = Recorder::new(device);
            for _ in 0..3 {
                record(&mut timed, class.kind, v, &p, &a, &b, &c)?;
            }
            encoders.extend(timed.encode(device, &kernels, Some(&set), |_| {}));
            let mut last = encoders.pop().expect("the timed part");
            last.resolve_query_set(&set, 0..2, &resolve, 0);
            last.copy_buffer_to_buffer(&resolve, 0, &staging, 0, Some(16));
            let (tx, rx) = std::sync::mpsc::channel();
            last.map_buffer_on_submit(&staging, wgpu::MapMode::Read, .., move |r| {
                tx.send(r).ok();
            });
            for e in encoders {
                gpu.queue.submit([e.finish()]);
            }
            let idx = gpu.queue.submit([last.finish()]);
            gpu.wait(idx)?;
            rx.recv()
                .map_err(|_| Error::Gpu("GEMM timing readback did not run".into()))?
                .map_err(|e| Error::Gpu(e.to_string()))?;
            let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu(e.to_string()))?;
            let t: &[u64] = bytemuck::cast_slice(&view);
            Ok(t[1].saturating_sub(t[0]))
        })?;
        times.push((v, ticks as f64 * gpu.queue.get_timestamp_period() as f64 / 1e6 / 3.0));
    }
    Ok(times)
}
