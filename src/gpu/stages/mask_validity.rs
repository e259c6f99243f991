//! Stage `mask_validity` (SPEC §2.7): which patches of b may be used as a source (mm).
//! Shader `shaders/mask_validity.wgsl`; twin [`crate::reference::mask_validity`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};

/// The uniform block of `mask_validity.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub h: u32,
    pub w: u32,
    pub k: u32,
    pub stride: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub grid_w: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "mask_validity",
    "mask_validity.wgsl",
    include_str!("../../../shaders/mask_validity.wgsl"),
    &[Access::Read, Access::ReadWrite],
    [64, 1, 1],
    &[],
);

pub(crate) fn params(g: &Geometry) -> Result<Params> {
    Ok(Params {
        count: u32_of("mask validity", g.patches())?,
        h: g.hb as u32,
        w: g.wb as u32,
        k: g.ksize as u32,
        stride: g.stride as u32,
        pad_y: g.match_pad.0 as u32,
        pad_x: g.match_pad.1 as u32,
        grid_w: g.pw as u32,
    })
}

pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    downscaled_mask: &wgpu::Buffer,
    validity: &wgpu::Buffer,
) -> Result<()> {
    rec.linear(&KERNEL, p, [downscaled_mask, validity], p.count as u64)
}

/// Mask validity `[L]` of the downscaled mask `[hb, wb]`, alone on `gpu`.
pub fn run(gpu: &Gpu, downscaled_mask: &[f32], g: &Geometry) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let l = g.patches();
    let (src, dst) = (s.input(downscaled_mask), s.poisoned(l));
    record(&mut s.rec, &params(g)?, &src, &dst)?;
    Ok(floats(s.finish(&[(&dst, l)])?.remove(0)))
}
