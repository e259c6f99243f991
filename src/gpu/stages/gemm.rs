//! Stage `gemm` (SPEC §2.7, §2.10): the layer's two matrix products, one shader compiled twice
//! through its `TRANS_B` override: the matching scores `query_patches · matching_patchesᵀ` and
//! the paste `weights · raw_patches`, added to the accumulator (`ACCUMULATE`). Shader `shaders/gemm.wgsl`; twins
//! [`crate::reference::gemm_nt`] and [`crate::reference::gemm_nn`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
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

const STORAGE: &[Access] = &[Access::Read, Access::Read, Access::ReadWrite];
/// Output tile of one workgroup (BM = BN in the shader).
const TILE: u32 = 64;

/// `[m, k] · [n, k]ᵀ`: the matching scores.
pub(crate) static SCORES: Kernel<Params> = Kernel::new(
    "scores_gemm",
    "gemm.wgsl",
    include_str!("../../../shaders/gemm.wgsl"),
    STORAGE,
    [16, 16, 1],
    &[("TRANS_B", 1.0), ("ACCUMULATE", 0.0)],
);

/// `c += [m, k] · [k, n]`: the paste of a key tile into the query tile's accumulator.
pub(crate) static PASTE: Kernel<Params> = Kernel::new(
    "paste_gemm",
    "gemm.wgsl",
    include_str!("../../../shaders/gemm.wgsl"),
    STORAGE,
    [16, 16, 1],
    &[("TRANS_B", 0.0), ("ACCUMULATE", 1.0)],
);

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

/// `kernel` is [`SCORES`] or [`PASTE`].
pub(crate) fn record(
    rec: &mut Recorder,
    kernel: &'static Kernel<Params>,
    p: &Params,
    a: &wgpu::Buffer,
    b: &wgpu::Buffer,
    c: &wgpu::Buffer,
) -> Result<()> {
    rec.grid(kernel, p, [a, b, c], (p.n.div_ceil(TILE), p.m.div_ceil(TILE)))
}

/// `a [m, k] · b [n, k]ᵀ` (`trans_b`, the scores) or `a [m, k] · b [k, n]` (the paste, added
/// to zeros), alone on `gpu`.
pub fn run(gpu: &Gpu, a: &[f32], b: &[f32], m: usize, n: usize, k: usize, trans_b: bool) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let p = params(m, n, k, trans_b)?;
    // The scores overwrite their output (poisoned, so a missed element shows); the paste adds.
    let cb = if trans_b { s.poisoned(m * n) } else { s.input(&vec![0.0f32; (m * n).max(1)]) };
    let (ab, bb) = (s.input(a), s.input(b));
    record(&mut s.rec, if trans_b { &SCORES } else { &PASTE }, &p, &ab, &bb, &cb)?;
    Ok(floats(s.finish(&[(&cb, m * n)])?.remove(0)))
}
