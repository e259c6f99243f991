//! Stage `attention_rows` (SPEC §E, outputs): the attention rows of inspected queries, copied
//! from each key tile's fused scores and turned into attention after the last key tile. Shader `shaders/attention_rows.wgsl`; twin
//! [`crate::reference::attention_rows`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};
use crate::params::Masking;

/// The uniform block of `attention_rows.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub l: u32,
    pub pairs_off: u32,
    pub first_row: u32,
    pub cols: u32,
    pub col0: u32,
    pub phase: u32,
    pub masking: u32,
    pub scale: f32,
}

/// What one dispatch does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Phase {
    /// Copies the scores of a key tile of `cols` patches starting at patch `col0`.
    Copy { col0: usize, cols: usize },
    /// Turns the copied scores of whole rows into attention.
    Finish { scale: f32, masking: Masking },
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "attention_rows",
    "attention_rows.wgsl",
    include_str!("../../../shaders/attention_rows.wgsl"),
    &[Access::Read, Access::Read, Access::ReadWrite, Access::Read, Access::Read],
    [256, 1, 1],
    &[],
);

/// `pairs` rows, listed at `pairs_off` of the index table, into destination rows of `l` numbered
/// from `first_row`.
pub(crate) fn params(pairs: usize, l: usize, pairs_off: u32, first_row: usize, phase: Phase) -> Result<Params> {
    let (col0, cols, phase, masking, scale) = match phase {
        Phase::Copy { col0, cols } => (col0, cols, 0, 0, 0.0),
        Phase::Finish { scale, masking } => (0, l, 1, (masking == Masking::Exclude) as u32, scale),
    };
    Ok(Params {
        count: u32_of("attention rows", pairs * cols)?,
        l: l as u32,
        pairs_off,
        first_row: u32_of("attention rows", first_row)?,
        cols: cols as u32,
        col0: col0 as u32,
        phase,
        masking,
        scale,
    })
}

/// `state` and `validity` are read in the finish phase only (the softmax's state, the mask validity).
pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    scores: &wgpu::Buffer,
    index: &wgpu::Buffer,
    attention_rows: &wgpu::Buffer,
    state: &wgpu::Buffer,
    validity: &wgpu::Buffer,
) -> Result<()> {
    rec.linear(&KERNEL, p, [scores, index, attention_rows, state, validity], p.count as u64)
}

/// Copies the rows `pairs[k].0` of `attention [rows, l]` to rows `pairs[k].1` of a
/// `[dst_rows, l]` result (other rows NaN), alone on `gpu` (the copy phase, as one key tile).
pub fn run(gpu: &Gpu, attention: &[f32], l: usize, pairs: &[(u32, u32)], dst_rows: usize) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let index: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let p = params(pairs.len(), l, 0, 0, Phase::Copy { col0: 0, cols: l })?;
    let (src, idx, dst) = (s.input(attention), s.input(&index), s.poisoned(dst_rows * l));
    // Not read by the copy phase.
    let unused = s.poisoned(1);
    record(&mut s.rec, &p, &src, &idx, &dst, &unused, &unused)?;
    Ok(floats(s.finish(&[(&dst, dst_rows * l)])?.remove(0)))
}
