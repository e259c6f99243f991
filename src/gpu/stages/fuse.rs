//! Stage `fuse` (SPEC §2.8): one pass of the fuse step over a query tile × key tile of scores
//! (SPEC §T2), in wrap (original) or spatial mode. Shader `shaders/fuse.wgsl`; twin [`crate::reference::fuse_pass`].

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
    pub key_in_slots_off: u32,
    pub key_out_rows_off: u32,
    pub in_cols: u32,
    pub out_cols: u32,
}

/// Where one side's rows of a fuse pass are in the index table: the input's slot map (one
/// entry per grid row) and the output's row list.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Side {
    pub in_slots_off: u32,
    pub out_rows_off: u32,
    /// Rows of the input (slots) and of the output.
    pub in_rows: usize,
    pub out_rows: usize,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "fuse",
    "fuse.wgsl",
    include_str!("../../../shaders/fuse.wgsl"),
    &[Access::Read, Access::Read, Access::ReadWrite],
    [256, 1, 1],
    &[],
);

/// One pass from the `query` × `keys` rows of the input to those of the output.
pub(crate) fn params(g: &Geometry, pass: FusePass, query: Side, keys: Side) -> Result<Params> {
    let fuse = g.fuse.ok_or_else(|| Error::param("fuse", "off", "a fuse pass needs fuse on"))?;
    // The shader indexes the input in u32.
    u32_of("fuse pass", query.in_rows * g.wf * keys.in_rows * g.pw)?;
    Ok(Params {
        count: u32_of("fuse pass", query.out_rows * g.wf * keys.out_rows * g.pw)?,
        mode: (fuse.mode == FuseMode::Spatial) as u32,
        which: (pass == FusePass::Cols) as u32,
        hf: g.hf as u32,
        wf: g.wf as u32,
        ph: g.ph as u32,
        pw: g.pw as u32,
        fk: fuse.k as u32,
        p: fuse.p as u32,
        in_slots_off: query.in_slots_off,
        out_rows_off: query.out_rows_off,
        key_in_slots_off: keys.in_slots_off,
        key_out_rows_off: keys.out_rows_off,
        in_cols: u32_of("fuse pass", keys.in_rows * g.pw)?,
        out_cols: u32_of("fuse pass", keys.out_rows * g.pw)?,
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

/// One fuse pass alone on `gpu` over every patch; `in_slots[row]` is the input slot of each
/// query-grid row (`u32::MAX` if absent), `out_rows` the query-grid rows to write.
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
    let key_rows = index.len() as u32;
    // Every patch row, as both the input's slots and the output's rows.
    index.extend(0..g.ph as u32);
    let in_rows = in_slots.iter().filter(|&&s| s != u32::MAX).count();
    let query = Side { in_slots_off: 0, out_rows_off: in_slots.len() as u32, in_rows, out_rows: out_rows.len() };
    let keys = Side { in_slots_off: key_rows, out_rows_off: key_rows, in_rows: g.ph, out_rows: g.ph };
    let p = params(g, pass, query, keys)?;
    let (src, idx, dst) = (s.input(input), s.input(&index), s.poisoned(p.count as usize));
    record(&mut s.rec, &p, &src, &idx, &dst)?;
    Ok(floats(s.finish(&[(&dst, p.count as usize)])?.remove(0)))
}
