//! Stage `fold` (SPEC §2.11, §T): adds a tile's pasted columns into y, as a gather. Shader
//! `shaders/fold.wgsl`; twin [`crate::reference::fold`].

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::geometry::Geometry;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};

/// The uniform block of `fold.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub y_off: u32,
    pub row0: u32,
    pub out_w: u32,
    pub c: u32,
    pub hf: u32,
    pub wf: u32,
    pub rate: u32,
    pub kernel: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub r0: u32,
    pub r1: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "fold",
    "fold.wgsl",
    include_str!("../../../shaders/fold.wgsl"),
    &[Access::Read, Access::ReadWrite],
    [256, 1, 1],
    &[],
);

/// Output rows touched by the paste of query rows `rows`.
fn touched_rows(g: &Geometry, rows: &Range<usize>) -> Range<usize> {
    if rows.is_empty() {
        return 0..0;
    }
    let lo = (g.rate * rows.start).saturating_sub(g.paste_pad.0);
    let hi = (g.rate * (rows.end - 1) + g.paste_kernel).saturating_sub(g.paste_pad.0).min(g.f_size.0);
    lo..hi.max(lo)
}

/// The fold of query rows `rows` into batch item `item` of y.
pub(crate) fn params(g: &Geometry, rows: Range<usize>, item: usize) -> Result<Params> {
    let (hf_full, wf_full) = g.f_size;
    let c = g.channels;
    let out_rows = touched_rows(g, &rows);
    Ok(Params {
        count: u32_of("y", out_rows.len() * wf_full * c)?,
        y_off: u32_of("y", item * hf_full * wf_full * c)?,
        row0: out_rows.start as u32,
        out_w: wf_full as u32,
        c: c as u32,
        hf: g.hf as u32,
        wf: g.wf as u32,
        rate: g.rate as u32,
        kernel: g.paste_kernel as u32,
        pad_y: g.paste_pad.0 as u32,
        pad_x: g.paste_pad.1 as u32,
        r0: rows.start as u32,
        r1: rows.end as u32,
    })
}

pub(crate) fn record(rec: &mut Recorder, p: &Params, pasted_columns: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<()> {
    rec.linear(&KERNEL, p, [pasted_columns, y], p.count as u64)
}

/// Adds the pasted columns of query rows `rows` into `y [Hf, Wf, C]`, alone on `gpu`.
pub fn run(gpu: &Gpu, pasted_columns: &[f32], rows: Range<usize>, g: &Geometry, y: &[f32]) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let p = params(g, rows, 0)?;
    let (cb, yb) = (s.input(pasted_columns), s.input(y));
    record(&mut s.rec, &p, &cb, &yb)?;
    Ok(floats(s.finish(&[(&yb, y.len())])?.remove(0)))
}
