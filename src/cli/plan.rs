//! `contextual-attention plan`: the tiles and every buffer the GPU path would allocate for
//! given shapes, without running anything (no device needed), as text or JSON.

use clap::Args;
use contextual_attention::params::DEFAULT_MEMORY_BUDGET;
use contextual_attention::plan::{BufferKind, Plan};
use contextual_attention::Geometry;

use super::bench::json_str;
use super::{CliResult, LayerArgs};

/// WebGPU's default largest storage binding, the limit assumed without a device.
const WEBGPU_MAX_BINDING_MIB: u64 = 128;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Shape of f (the queries), NHWC.
    #[arg(long, value_name = "B,H,W,C", value_parser = parse_shape)]
    pub f_shape: [usize; 4],
    /// Shape of b (the patches), NHWC [default: f's].
    #[arg(long, value_name = "B,H,W,C", value_parser = parse_shape)]
    pub b_shape: Option<[usize; 4]>,
    /// Shape of the mask, [1 or B, Hb, Wb, 1] [default: no mask].
    #[arg(long, value_name = "M,H,W,1", value_parser = parse_shape)]
    pub mask_shape: Option<[usize; 4]>,
    /// Largest storage binding of the device in MiB [default: 128, WebGPU's default].
    #[arg(long, value_name = "MIB")]
    pub max_binding: Option<u64>,
    /// Print JSON: {"tiles", "buffers": [{"name", "bytes", "kind"}], "working_bytes", …}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// Parses `B,H,W,C`.
fn parse_shape(s: &str) -> Result<[usize; 4], String> {
    let dims: Vec<usize> = s
        .split(',')
        .map(|d| d.trim().parse::<usize>().map_err(|_| format!("{s:?}: expected four sizes like 1,64,64,128")))
        .collect::<Result<_, _>>()?;
    <[usize; 4]>::try_from(dims).map_err(|d| format!("{s:?}: expected four sizes (B,H,W,C), got {}", d.len()))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// `contextual-attention plan`.
pub fn run(a: PlanArgs) -> CliResult {
    let params = a.layer.params(1);
    params.validate()?;
    let b_shape = a.b_shape.unwrap_or(a.f_shape);
    let g = Geometry::new(&params, a.f_shape, b_shape, a.mask_shape)?;
    let max_binding = a.max_binding.unwrap_or(WEBGPU_MAX_BINDING_MIB) << 20;
    // As a GPU call plans: an explicit budget is a limit, the default one a target.
    let (plan, budget) = match params.memory_budget {
        Some(budget) => (Plan::new(&g, budget, max_binding)?, budget),
        None => {
            let budget = DEFAULT_MEMORY_BUDGET.min(max_binding);
            (Plan::targeting(&g, budget, max_binding)?, budget)
        }
    };
    let buffers = plan.buffers(&g, a.mask_shape.is_some(), 0);
    let working: u64 = buffers.iter().filter(|b| b.kind == BufferKind::Working).map(|b| b.bytes).sum();
    let largest = buffers.iter().filter(|b| b.kind == BufferKind::Working).max_by_key(|b| b.bytes);
    if a.json {
        let side = |count: usize, rows: usize, grid: usize| {
            format!("{{\"count\": {count}, \"rows_per_tile\": {rows}, \"grid_rows\": {grid}}}")
        };
        let list: Vec<String> = buffers
            .iter()
            .map(|b| {
                format!(
                    "{{\"name\": {}, \"bytes\": {}, \"kind\": {}}}",
                    json_str(b.name),
                    b.bytes,
                    json_str(b.kind.name())
                )
            })
            .collect();
        println!(
            "{{\"tiles\": {{\"query\": {}, \"keys\": {}}}, \"buffers\": [{}], \"working_bytes\": {working}, \"budget_bytes\": {budget}, \"max_binding_bytes\": {max_binding}}}",
            side(plan.tiles.len(), plan.rows_per_tile, g.hf),
            side(plan.keys.len(), plan.key_rows_per_tile, g.ph),
            list.join(", ")
        );
        return Ok(());
    }
    println!(
        "queries: {} × {} ({} query tiles of {} rows); patches: {} × {} ({} key tiles of {} rows)",
        g.hf,
        g.wf,
        plan.tiles.len(),
        plan.rows_per_tile,
        g.ph,
        g.pw,
        plan.keys.len(),
        plan.key_rows_per_tile
    );
    for kind in [BufferKind::Input, BufferKind::Working, BufferKind::Output] {
        for b in buffers.iter().filter(|b| b.kind == kind) {
            println!("  {:<8} {:<18} {:>10.2} MiB", kind.name(), b.name, mib(b.bytes));
        }
    }
    let (name, bytes) = largest.map_or(("none", 0), |b| (b.name, b.bytes));
    println!(
        "working set {:.1} MiB (budget {:.0} MiB); largest working buffer: {name}, {:.1} MiB (binding limit {:.0} MiB)",
        mib(working),
        mib(budget),
        mib(bytes),
        mib(max_binding)
    );
    Ok(())
}
