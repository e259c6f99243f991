//! Stage `raw_patches` (SPEC §2.4): the K×K windows of full-resolution b the paste pastes.
//! Shader `shaders/raw_patches.wgsl`; twin [`crate::reference::raw_patches`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};

/// The uniform block of `raw_patches.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub src_off: u32,
    pub h: u32,
    pub w: u32,
    pub c: u32,
    pub k: u32,
    pub step: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub grid_w: u32,
    pub first: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "raw_patches",
    "raw_patches.wgsl",
    include_str!("../../../shaders/raw_patches.wgsl"),
    &[Access::Read, Access::ReadWrite],
    [64, 1, 1],
    &[],
);

/// Raw patches `patches` (a range of patch indices) of the batch item at element `src_off` of b.
pub(crate) fn params(g: &Geometry, src_off: usize, patches: std::ops::Range<usize>) -> Result<Params> {
    Ok(Params {
        count: u32_of("raw patches", patches.len() * g.raw_len())?,
        src_off: u32_of("raw patches", src_off)?,
        h: g.b_size.0 as u32,
        w: g.b_size.1 as u32,
        c: g.channels as u32,
        k: g.paste_kernel as u32,
        step: (g.rate * g.stride) as u32,
        pad_y: g.raw_pad.0 as u32,
        pad_x: g.raw_pad.1 as u32,
        grid_w: g.pw as u32,
        first: u32_of("raw patches", patches.start)?,
    })
}

pub(crate) fn record(rec: &mut Recorder, p: &Params, b: &wgpu::Buffer, raw_patches: &wgpu::Buffer) -> Result<()> {
    rec.linear(&KERNEL, p, [b, raw_patches], p.count as u64)
}

/// Raw patches `[L, K·K·C]` of full-resolution b `[Hb, Wb, C]`, alone on `gpu`.
pub fn run(gpu: &Gpu, b: &[f32], g: &Geometry) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let p = params(g, 0, 0..g.patches())?;
    let (src, dst) = (s.input(b), s.poisoned(p.count as usize));
    record(&mut s.rec, &p, &src, &dst)?;
    Ok(floats(s.finish(&[(&dst, p.count as usize)])?.remove(0)))
}
