//! Stage `normalize` (SPEC §2.11, §E "overlap"): divides the folded y of one batch item by the
//! constant (K/r)² or by the exact coverage. Shader `shaders/normalize.wgsl`; twin
//! [`crate::reference::normalize`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};
use crate::params::Overlap;

/// The uniform block of `normalize.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub y_off: u32,
    pub out_w: u32,
    pub c: u32,
    pub hf: u32,
    pub wf: u32,
    pub rate: u32,
    pub kernel: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub exact: u32,
    pub divisor: f32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "normalize",
    "normalize.wgsl",
    include_str!("../../../shaders/normalize.wgsl"),
    &[Access::ReadWrite],
    [256, 1, 1],
    &[],
);

/// Normalisation of batch item `item` of y.
pub(crate) fn params(g: &Geometry, item: usize, overlap: Overlap) -> Result<Params> {
    let (hf_full, wf_full) = g.f_size;
    let c = g.channels;
    Ok(Params {
        count: u32_of("y", hf_full * wf_full * c)?,
        y_off: u32_of("y", item * hf_full * wf_full * c)?,
        out_w: wf_full as u32,
        c: c as u32,
        hf: g.hf as u32,
        wf: g.wf as u32,
        rate: g.rate as u32,
        kernel: g.paste_kernel as u32,
        pad_y: g.paste_pad.0 as u32,
        pad_x: g.paste_pad.1 as u32,
        exact: (overlap == Overlap::Exact) as u32,
        divisor: g.overlap_divisor(Overlap::Quarter, 0, 0),
    })
}

pub(crate) fn record(rec: &mut Recorder, p: &Params, y: &wgpu::Buffer) -> Result<()> {
    rec.linear(&KERNEL, p, [y], p.count as u64)
}

/// Divides `y [Hf, Wf, C]` by the overlap divisor, alone on `gpu`.
pub fn run(gpu: &Gpu, y: &[f32], g: &Geometry, overlap: Overlap) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let p = params(g, 0, overlap)?;
    let yb = s.input(y);
    record(&mut s.rec, &p, &yb)?;
    Ok(floats(s.finish(&[(&yb, y.len())])?.remove(0)))
}
