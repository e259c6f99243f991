//! Stage `query_patches` (SPEC §2.7): the k×k patches of f′ around the queries of a tile's rows.
//! Shader `shaders/query_patches.wgsl`; twin [`crate::reference::query_patches`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single, Source};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};

/// The uniform block of `query_patches.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub h: u32,
    pub w: u32,
    pub c: u32,
    pub k: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub rows_off: u32,
    pub src_off: u32,
    pub full_w: u32,
    pub map_rows: u32,
    pub map_cols: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "query_patches",
    "query_patches.wgsl",
    include_str!("../../../shaders/query_patches.wgsl"),
    &[Access::Read, Access::Read, Access::ReadWrite],
    [64, 1, 1],
    &[],
);

/// Query patches of `rows` grid rows, listed at `rows_off` of the index table, read from `src`.
pub(crate) fn params(g: &Geometry, rows: usize, rows_off: u32, src: Source) -> Result<Params> {
    Ok(Params {
        count: u32_of("query patches", rows * g.wf * g.match_len())?,
        h: g.hf as u32,
        w: g.wf as u32,
        c: g.channels as u32,
        k: g.ksize as u32,
        pad_y: g.query_pad.0 as u32,
        pad_x: g.query_pad.1 as u32,
        rows_off,
        src_off: u32_of("query patches", src.src_off)?,
        full_w: src.full_w as u32,
        map_rows: src.map_rows,
        map_cols: src.map_cols,
    })
}

pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    f: &wgpu::Buffer,
    index: &wgpu::Buffer,
    query_patches: &wgpu::Buffer,
) -> Result<()> {
    rec.linear(&KERNEL, p, [f, index, query_patches], p.count as u64)
}

/// Query patches `[rows·wf, k·k·C]` of f′ `[hf, wf, C]` for the grid rows `rows`, alone on `gpu`
/// (f′ given as the image, read through identity maps).
pub fn run(gpu: &Gpu, downscaled_f: &[f32], g: &Geometry, rows: &[usize]) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let mut index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let map_rows = index.len() as u32;
    index.extend(0..g.hf as u32);
    let map_cols = index.len() as u32;
    index.extend(0..g.wf as u32);
    let p = params(g, rows.len(), 0, Source { src_off: 0, full_w: g.wf, map_rows, map_cols })?;
    let (src, idx, dst) = (s.input(downscaled_f), s.input(&index), s.poisoned(p.count as usize));
    record(&mut s.rec, &p, &src, &idx, &dst)?;
    Ok(floats(s.finish(&[(&dst, p.count as usize)])?.remove(0)))
}
