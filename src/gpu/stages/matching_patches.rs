//! Stage `matching_patches` (SPEC §2.6): the normalised k×k patches of b′ and their norms.
//! Shader `shaders/matching_patches.wgsl`; twin [`crate::reference::matching_patches`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single, Source};
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
    pub src_off: u32,
    pub full_w: u32,
    pub map_rows: u32,
    pub map_cols: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "matching_patches",
    "matching_patches.wgsl",
    include_str!("../../../shaders/matching_patches.wgsl"),
    &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite],
    [64, 1, 1],
    &[],
);

/// The patches of `rows` patch-grid rows, listed at `rows_off` of the index table, read from `src`.
pub(crate) fn params(g: &Geometry, rows: usize, rows_off: u32, src: Source) -> Result<Params> {
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
        src_off: u32_of("matching patches", src.src_off)?,
        full_w: src.full_w as u32,
        map_rows: src.map_rows,
        map_cols: src.map_cols,
    })
}

pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    b: &wgpu::Buffer,
    index: &wgpu::Buffer,
    patches: &wgpu::Buffer,
    norms: &wgpu::Buffer,
) -> Result<()> {
    rec.linear(&KERNEL, p, [b, index, patches, norms], p.count as u64)
}

/// Normalised matching patches `[L, k·k·C]` and norms `[L]` of b′ `[hb, wb, C]`, alone on `gpu`
/// (b′ given as the image, read through identity maps).
pub fn run(gpu: &Gpu, downscaled_b: &[f32], g: &Geometry) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut s = Single::new(gpu);
    let l = g.patches();
    // Every patch row, then identity maps: b′ is given as the image.
    let mut index: Vec<u32> = (0..g.ph as u32).collect();
    let map_rows = index.len() as u32;
    index.extend(0..g.hb as u32);
    let map_cols = index.len() as u32;
    index.extend(0..g.wb as u32);
    let (src, index) = (s.input(downscaled_b), s.input(&index));
    let (patches, norms) = (s.poisoned(l * g.match_len()), s.poisoned(l));
    let p = params(g, g.ph, 0, Source { src_off: 0, full_w: g.wb, map_rows, map_cols })?;
    record(&mut s.rec, &p, &src, &index, &patches, &norms)?;
    let mut out = s.finish(&[(&patches, l * g.match_len()), (&norms, l)])?;
    let norms = floats(out.remove(1));
    Ok((floats(out.remove(0)), norms))
}
