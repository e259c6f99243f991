//! Stage `matching_patches` (SPEC §2.6): the normalised k×k patches of b′ and their norms.
//! Shader `shaders/matching_patches.wgsl`; twin [`crate::reference::matching_patches`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};

/// The uniform block of `matching_patches.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub h: u32,
    pub w: u32,
    pub c: u32,
    pub k: u32,
    pub stride: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub grid_w: u32,
    pub rows_off: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "matching_patches",
    "matching_patches.wgsl",
    include_str!("../../../shaders/matching_patches.wgsl"),
    &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
    [64, 1, 1],
    &[],
);

/// The patches of `rows` patch-grid rows, listed at `rows_off` of the index table.
pub(crate) fn params(g: &Geometry, rows: usize, rows_off: u32) -> Result<Params> {
    Ok(Params {
        count: u32_of("matching patches", rows * g.pw)?,
        h: g.hb as u32,
        w: g.wb as u32,
        c: g.channels as u32,
        k: g.ksize as u32,
        stride: g.stride as u32,
        pad_y: g.match_pad.0 as u32,
        pad_x: g.match_pad.1 as u32,
        grid_w: g.pw as u32,
        rows_off,
    })
}

pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    downscaled_b: &wgpu::Buffer,
    index: &wgpu::Buffer,
    patches: &wgpu::Buffer,
    norms: &wgpu::Buffer,
) -> Result<()> {
    rec.linear(&KERNEL, p, [downscaled_b, index, patches, norms], p.count as u64)
}

/// Normalised matching patches `[L, k·k·C]` and norms `[L]` of b′ `[hb, wb, C]`, alone on `gpu`.
pub fn run(gpu: &Gpu, downscaled_b: &[f32], g: &Geometry) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut s = Single::new(gpu);
    let l = g.patches();
    let rows: Vec<u32> = (0..g.ph as u32).collect();
    let (src, index) = (s.input(downscaled_b), s.input(&rows));
    let (patches, norms) = (s.poisoned(l * g.match_len()), s.poisoned(l));
    record(&mut s.rec, &params(g, g.ph, 0)?, &src, &index, &patches, &norms)?;
    let mut out = s.finish(&[(&patches, l * g.match_len()), (&norms, l)])?;
    let norms = floats(out.remove(1));
    Ok((floats(out.remove(0)), norms))
}
