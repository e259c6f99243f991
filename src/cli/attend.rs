//! `contextual-attention attend`: the layer on .npy tensors, for Python pipelines.

use std::path::PathBuf;

use clap::Args;
use contextual_attention::io;

use super::images::write_flow;
use super::{check_writable, CliResult, LayerArgs};

#[derive(Args)]
pub struct AttendArgs {
    /// Queries (foreground), float32 NHWC [B, Hf, Wf, C].
    #[arg(long, value_name = "F.npy")]
    pub f: PathBuf,
    /// Patches (background), float32 NHWC [B, Hb, Wb, C].
    #[arg(long, value_name = "B.npy")]
    pub b: PathBuf,
    /// Mask [1 or B, Hb, Wb, 1], 1 = hole (not usable as a source).
    #[arg(long, value_name = "M.npy")]
    pub mask: Option<PathBuf>,
    /// Output y, float32 NHWC [B, Hf, Wf, C].
    #[arg(long, value_name = "Y.npy")]
    pub out_y: PathBuf,
    /// Output offsets, int32 [B, hf, wf, 2]: (row, col) of the chosen patch in b's patch grid.
    #[arg(long, value_name = "O.npy")]
    pub out_offsets: Option<PathBuf>,
    /// Output attention mass, float32 [B, hf, wf].
    #[arg(long, value_name = "M.npy")]
    pub out_mass: Option<PathBuf>,
    /// Output flow image (one per batch item, suffixed _0, _1, … when B > 1).
    #[arg(long, value_name = "FLOW.png")]
    pub out_flow: Option<PathBuf>,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// `contextual-attention attend`.
pub fn run(a: AttendArgs) -> CliResult {
    for p in [Some(&a.out_y), a.out_offsets.as_ref(), a.out_mass.as_ref(), a.out_flow.as_ref()].into_iter().flatten() {
        check_writable(p)?;
    }
    let f = io::read_tensor_npy(&a.f, "f")?;
    let b = io::read_tensor_npy(&a.b, "b")?;
    let mask = a.mask.as_ref().map(|m| io::read_tensor_npy(m, "mask")).transpose()?;
    let layer = a.layer.layer(1)?;
    // Shapes are checked before the GPU is touched.
    contextual_attention::Geometry::new(layer.params(), f.shape(), b.shape(), mask.as_ref().map(|m| m.shape()))?;
    eprintln!("running on {}", layer.describe_backend());
    let (out, t) = super::timed(|| layer.forward(&f, &b, mask.as_ref()));
    let out = out?;
    eprintln!("layer: {:.1} ms", super::ms(t));
    let (hf, wf) = out.grid;
    let batch = f.shape()[0];
    io::write_npy_f32(&a.out_y, &out.y.shape(), out.y.data())?;
    if let Some(p) = &a.out_offsets {
        io::write_npy_i32(p, &[batch, hf, wf, 2], &out.offsets)?;
    }
    if let Some(p) = &a.out_mass {
        io::write_npy_f32(p, &[batch, hf, wf], &out.mass)?;
    }
    if let Some(p) = &a.out_flow {
        write_flow(p, &out, layer.params().stride, layer.params().rate)?;
    }
    Ok(())
}
