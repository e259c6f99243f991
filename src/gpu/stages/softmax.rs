//! Stage `softmax` (SPEC §2.9, §2.10): the masked scaled softmax of each query row, in place,
//! with its argmax and attention mass. Shader `shaders/softmax.wgsl`; twin
//! [`crate::reference::softmax`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};
use crate::params::Masking;

/// The uniform block of `softmax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub rows: u32,
    pub l: u32,
    pub scale: f32,
    pub masking: u32,
    pub out_off: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "softmax",
    "softmax.wgsl",
    include_str!("../../../shaders/softmax.wgsl"),
    &[Access::ReadWrite, Access::Read, Access::ReadWrite, Access::ReadWrite],
    [256, 1, 1],
    &[],
);

/// `rows` rows of `l` scores; their argmax and mass go to `out_off..out_off + rows`.
pub(crate) fn params(rows: usize, l: usize, scale: f32, masking: Masking, out_off: usize) -> Result<Params> {
    Ok(Params {
        rows: u32_of("softmax rows", rows)?,
        l: u32_of("patches", l)?,
        scale,
        masking: (masking == Masking::Exclude) as u32,
        out_off: u32_of("argmax", out_off)?,
    })
}

/// One workgroup per row.
pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    scores: &wgpu::Buffer,
    validity: &wgpu::Buffer,
    argmax: &wgpu::Buffer,
    mass: &wgpu::Buffer,
) -> Result<()> {
    let groups = rec.fold_groups(&KERNEL.info, p.rows as u64)?;
    rec.dispatch(&KERNEL, p, [scores, validity, argmax, mass], groups);
    Ok(())
}

/// Masked scaled softmax of `scores [rows, L]` alone on `gpu`: (attention, argmax, mass).
pub fn run(
    gpu: &Gpu,
    scores: &[f32],
    validity: &[f32],
    l: usize,
    scale: f32,
    masking: Masking,
) -> Result<(Vec<f32>, Vec<u32>, Vec<f32>)> {
    let mut s = Single::new(gpu);
    let rows = scores.len() / l;
    let p = params(rows, l, scale, masking, 0)?;
    let (sb, vb) = (s.input(scores), s.input(validity));
    let (am, mass) = (s.input(&vec![u32::MAX; rows.max(1)]), s.poisoned(rows));
    record(&mut s.rec, &p, &sb, &vb, &am, &mass)?;
    let mut out = s.finish(&[(&sb, scores.len()), (&am, rows), (&mass, rows)])?;
    let mass = floats(out.remove(2));
    let argmax = out.remove(1);
    Ok((floats(out.remove(0)), argmax, mass))
}
