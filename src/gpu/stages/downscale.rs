//! Stage `downscale` (SPEC §2.5): align-corners nearest-neighbour downscale through host index
//! maps. Shader `shaders/downscale.wgsl`; twin [`crate::reference::downscale`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};

/// The uniform block of `downscale.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub src_off: u32,
    pub src_w: u32,
    pub out_w: u32,
    pub c: u32,
    pub rows_off: u32,
    pub cols_off: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "downscale",
    "downscale.wgsl",
    include_str!("../../../shaders/downscale.wgsl"),
    &[Access::Read, Access::Read, Access::ReadWrite],
    [256, 1, 1],
    &[],
);

/// Downscale of the `[?, src_w, c]` item at element `src_off` to `out_h × out_w`, through the
/// row and column maps at `rows_off` and `cols_off` of the index table.
pub(crate) fn params(
    src_off: usize,
    src_w: usize,
    c: usize,
    (rows_off, cols_off): (u32, u32),
    (out_h, out_w): (usize, usize),
) -> Result<Params> {
    Ok(Params {
        count: u32_of("downscale", out_h * out_w * c)?,
        src_off: u32_of("downscale", src_off)?,
        src_w: src_w as u32,
        out_w: out_w as u32,
        c: c as u32,
        rows_off,
        cols_off,
    })
}

pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    src: &wgpu::Buffer,
    index: &wgpu::Buffer,
    dst: &wgpu::Buffer,
) -> Result<()> {
    rec.linear(&KERNEL, p, [src, index, dst], p.count as u64)
}

/// Align-corners NN downscale of `x` `[h, w, c]` with the given index maps, alone on `gpu`.
pub fn run(gpu: &Gpu, x: &[f32], w: usize, c: usize, rows: &[u32], cols: &[u32]) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let index: Vec<u32> = rows.iter().chain(cols).copied().collect();
    let p = params(0, w, c, (0, rows.len() as u32), (rows.len(), cols.len()))?;
    let (src, idx, dst) = (s.input(x), s.input(&index), s.poisoned(p.count as usize));
    record(&mut s.rec, &p, &src, &idx, &dst)?;
    Ok(floats(s.finish(&[(&dst, p.count as usize)])?.remove(0)))
}
