//! Stage `softmax` (SPEC §2.9, §2.10, §T2): the masked scaled softmax of each query row, online
//! over key tiles, with its argmax and attention mass. Each key tile's scores become paste
//! weights in place and the query's paste accumulator is rescaled to the new maximum; after the
//! last tile the accumulator is divided by the sum. Shader `shaders/softmax.wgsl`; twin
//! [`crate::reference::softmax`].

use bytemuck::{Pod, Zeroable};

use super::{floats, gemm, Single};
use crate::error::Result;
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{u32_of, Access, Kernel, Recorder};
use crate::params::Masking;
use crate::plan::SOFTMAX_STATE_WORDS;

/// The uniform block of `softmax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct Params {
    pub rows: u32,
    pub cols: u32,
    pub scale: f32,
    pub masking: u32,
    pub first: u32,
    pub phase: u32,
    pub acc_len: u32,
    pub out_off: u32,
}

/// What one dispatch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A key tile of `cols` patches starting at patch `first`; `first_tile` starts the state.
    Update { first: usize, cols: usize, first_tile: bool },
    /// After the last key tile's paste: argmax and mass out, the accumulator divided by the sum.
    Finish,
}

pub(crate) static KERNEL: Kernel<Params> = Kernel::new(
    "softmax",
    "softmax.wgsl",
    include_str!("../../../shaders/softmax.wgsl"),
    &[Access::ReadWrite, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::ReadWrite, Access::ReadWrite],
    [256, 1, 1],
    &[],
);

/// `rows` query rows, whose accumulator rows hold `acc_len` floats and whose argmax and mass go
/// to `out_off..out_off + rows`.
pub(crate) fn params(
    rows: usize,
    phase: Phase,
    acc_len: usize,
    scale: f32,
    masking: Masking,
    out_off: usize,
) -> Result<Params> {
    let (first, cols, phase) = match phase {
        Phase::Update { first, cols, first_tile } => (first, cols, if first_tile { 0 } else { 1 }),
        Phase::Finish => (0, 0, 2),
    };
    Ok(Params {
        rows: u32_of("softmax rows", rows)?,
        cols: u32_of("patches", cols)?,
        scale,
        masking: (masking == Masking::Exclude) as u32,
        first: u32_of("patches", first)?,
        phase,
        acc_len: u32_of("pasted columns", acc_len)?,
        out_off: u32_of("argmax", out_off)?,
    })
}

/// One workgroup per row.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    rec: &mut Recorder,
    p: &Params,
    scores: &wgpu::Buffer,
    validity: &wgpu::Buffer,
    state: &wgpu::Buffer,
    acc: &wgpu::Buffer,
    argmax: &wgpu::Buffer,
    mass: &wgpu::Buffer,
) -> Result<()> {
    let groups = rec.fold_groups(&KERNEL.info, p.rows as u64)?;
    rec.dispatch(&KERNEL, p, [scores, validity, state, acc, argmax, mass], groups);
    Ok(())
}

/// Masked scaled softmax of `scores [rows, L]` alone on `gpu`, as one key tile: (attention,
/// argmax, mass). The attention comes out the way the layer uses it: the weights pasted through
/// an identity matrix by the paste GEMM, then divided by the sum in the finish phase.
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
    let identity: Vec<f32> = (0..l * l).map(|i| if i / l == i % l { 1.0 } else { 0.0 }).collect();
    let (sb, vb, ib) = (s.input(scores), s.input(validity), s.input(&identity));
    let state = s.input(&vec![u32::MAX; (rows * SOFTMAX_STATE_WORDS).max(1)]);
    // Poisoned: the first tile must set the accumulator to 0 before the paste adds to it.
    let acc = s.poisoned(rows * l);
    let (am, mass) = (s.input(&vec![u32::MAX; rows.max(1)]), s.poisoned(rows));
    let update = Phase::Update { first: 0, cols: l, first_tile: true };
    let p = params(rows, update, l, scale, masking, 0)?;
    record(&mut s.rec, &p, &sb, &vb, &state, &acc, &am, &mass)?;
    let g = gemm::params(rows, l, l, false)?;
    gemm::record(&mut s.rec, gemm::Kind::Paste, gemm::DEFAULT, &g, &sb, &ib, &acc)?;
    let p = params(rows, Phase::Finish, l, scale, masking, 0)?;
    record(&mut s.rec, &p, &sb, &vb, &state, &acc, &am, &mass)?;
    let mut out = s.finish(&[(&acc, rows * l), (&am, rows), (&mass, rows)])?;
    let mass = floats(out.remove(2));
    let argmax = out.remove(1);
    Ok((floats(out.remove(0)), argmax, mass))
}
