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
    /// Output attention rows of the --queries, float32 [B, Q, ph, pw] (attention over b's patch grid).
    #[arg(long, value_name = "A.npy", requires = "queries")]
    pub out_attention: Option<PathBuf>,
    /// Queries to inspect, as "i,j;i,j" on the downscaled query grid (row i, column j).
    #[arg(long, value_name = "\"i,j;i,j\"", requires = "out_attention")]
    pub queries: Option<String>,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// Parses "i,j;i,j".
fn parse_queries(s: &str) -> CliResult<Vec<(usize, usize)>> {
    s.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let mut it = p.split(',').map(|v| v.trim().parse::<usize>());
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(i)), Some(Ok(j)), None) => Ok((i, j)),
                _ => Err(format!(
                    "--queries: cannot read {p:?}; write queries as \"i,j;i,j\" with non-negative integers"
                )
                .into()),
            }
        })
        .collect()
}

/// `contextual-attention attend`.
pub fn run(a: AttendArgs) -> CliResult {
    for p in
        [Some(&a.out_y), a.out_offsets.as_ref(), a.out_mass.as_ref(), a.out_flow.as_ref(), a.out_attention.as_ref()]
            .into_iter()
            .flatten()
    {
        check_writable(p)?;
    }
    let queries = a.queries.as_deref().map(parse_queries).transpose()?.unwrap_or_default();
    let f = io::read_tensor_npy(&a.f, "f")?;
    let b = io::read_tensor_npy(&a.b, "b")?;
    let mask = a.mask.as_ref().map(|m| io::read_tensor_npy(m, "mask")).transpose()?;
    // Shapes are checked before the GPU is touched.
    let g = contextual_attention::Geometry::new(
        &a.layer.params(1),
        f.shape(),
        b.shape(),
        mask.as_ref().map(|m| m.shape()),
    )?;
    g.check_queries(&queries)?;
    let layer = a.layer.layer(1)?;
    let out = super::run_layer(&layer, &f, &b, mask.as_ref(), &queries)?;
    let (hf, wf) = out.grid;
    let batch = f.shape()[0];
    io::write_npy_f32(&a.out_y, &out.y.shape(), out.y.data())?;
    if let Some(p) = &a.out_offsets {
        io::write_npy_i32(p, &[batch, hf, wf, 2], &out.offsets)?;
    }
    if let Some(p) = &a.out_mass {
        io::write_npy_f32(p, &[batch, hf, wf], &out.mass)?;
    }
    if let Some(p) = &a.out_attention {
        let (ph, pw) = out.patch_grid;
        io::write_npy_f32(p, &[batch, queries.len(), ph, pw], &out.attention_rows)?;
    }
    if let Some(p) = &a.out_flow {
        write_flow(p, &out, layer.params().stride, layer.params().rate)?;
    }
    Ok(())
}
