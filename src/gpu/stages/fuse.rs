//! Stage `fuse` (SPEC §2.8): one pass of the fuse step over a tile's score rows, in wrap
//! (original) or spatial mode. Shader `shaders/fuse.wgsl`; twin [`crate::reference::fuse_pass`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::{Error, Result};
use crate::geometry::{FusePass, Geometry};
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};
use crate::params::FuseMode;

/// The uniform block of `fuse.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub mode: u32,
    pub which: u32,
    pub hf: u32,
    pub wf: u32,
    pub ph: u32,
    pub pw: u32,
    pub fk: u32,
    pub p: u32,
    pub in_slots_off: u32,
    pub out_rows_off: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "fuse",
    "fuse.wgsl",
    include_str!("../../../shaders/fuse.wgsl"),
    &[Access::Read, Access::Read, Access::ReadWrite],
    [256, 1, 1],
    &[],
);

/// One pass writing `out_rows` rows; the index table holds the input's slot map at
/// `in_slots_off` and the output rows at `out_rows_off`.
pub(crate) fn params(
    g: &Geometry,
    pass: FusePass,
    out_rows: usize,
    in_slots_off: u32,
    out_rows_off: u32,
) -> Result<Params> {
    let fuse = g.fuse.ok_or_else(|| Error::param("fuse", "off", "a fuse pass needs fuse on"))?;
    Ok(Params {
        count: u32_of("fuse pass", out_rows * g.wf * g.patches())?,
        mode: (fuse.mode == FuseMode::Spatial) as u32,
        which: (pass == FusePass::Cols) as u32,
        hf: g.hf as u32,
        wf: g.wf as u32,
        ph: g.ph as u32,
        pw: g.pw as u32,
        fk: fuse.k as u32,
        p: fuse.p as u32,
        in_slots_off,
        out_rows_off,
    })
}

pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    scores: &wgpu::Buffer,
    index: &wgpu::Buffer,
    fused: &wgpu::Buffer,
) -> Result<()> {
    rec.linear(&KERNEL, p, [scores, index, fused], p.count as u64)
}

/// One fuse pass alone on `gpu`; `in_slots[row]` is the input slot of each grid row
/// (`u32::MAX` if absent), `out_rows` the grid rows to write.
pub fn run(
    gpu: &Gpu,
    input: &[f32],
    in_slots: &[u32],
    out_rows: &[usize],
    g: &Geometry,
    pass: FusePass,
) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let mut index: Vec<u32> = in_slots.to_vec();
    index.extend(out_rows.iter().map(|&r| r as u32));
    let p = params(g, pass, out_rows.len(), 0, in_slots.len() as u32)?;
    let (src, idx, dst) = (s.input(input), s.input(&index), s.poisoned(p.count as usize));
    record(&mut s.rec, &p, &src, &idx, &dst)?;
    Ok(floats(s.finish(&[(&dst, p.count as usize)])?.remove(0)))
}
