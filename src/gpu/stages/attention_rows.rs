//! Stage `attention_rows` (SPEC §E, outputs): copies the attention rows of inspected queries
//! out of a tile's attention. Shader `shaders/attention_rows.wgsl`; twin
//! [`crate::reference::attention_rows`].

use bytemuck::{Pod, Zeroable};

use super::{floats, Single};
use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};

/// The uniform block of `attention_rows.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub count: u32,
    pub l: u32,
    pub pairs_off: u32,
    pub first_row: u32,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "attention_rows",
    "attention_rows.wgsl",
    include_str!("../../../shaders/attention_rows.wgsl"),
    &[Access::Read, Access::Read, Access::ReadWrite],
    [256, 1, 1],
    &[],
);

/// Copies `pairs` rows of `l`, listed at `pairs_off` of the index table, to destination rows
/// numbered from `first_row`.
pub(crate) fn params(pairs: usize, l: usize, pairs_off: u32, first_row: usize) -> Result<Params> {
    Ok(Params {
        count: u32_of("attention rows", pairs * l)?,
        l: l as u32,
        pairs_off,
        first_row: u32_of("attention rows", first_row)?,
    })
}

pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    attention: &wgpu::Buffer,
    index: &wgpu::Buffer,
    attention_rows: &wgpu::Buffer,
) -> Result<()> {
    rec.linear(&KERNEL, p, [attention, index, attention_rows], p.count as u64)
}

/// Copies the rows `pairs[k].0` of `attention [rows, l]` to rows `pairs[k].1` of a
/// `[dst_rows, l]` result (other rows NaN), alone on `gpu`.
pub fn run(gpu: &Gpu, attention: &[f32], l: usize, pairs: &[(u32, u32)], dst_rows: usize) -> Result<Vec<f32>> {
    let mut s = Single::new(gpu);
    let index: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let p = params(pairs.len(), l, 0, 0)?;
    let (src, idx, dst) = (s.input(attention), s.input(&index), s.poisoned(dst_rows * l));
    record(&mut s.rec, &p, &src, &idx, &dst)?;
    Ok(floats(s.finish(&[(&dst, dst_rows * l)])?.remove(0)))
}
