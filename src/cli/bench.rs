//! `contextual-attention bench`: GPU against the CPU twin on the standard sizes.

use clap::Args;
use contextual_attention::bench::{standard_cases, BenchCase};
use contextual_attention::{ContextualAttention, Geometry, Gpu, Tensor};

use super::{ms, progress, timed, CliResult};

#[derive(Args)]
pub struct BenchArgs {
    /// One run per size and backend, no warm-up, DeepFill sizes only on the CPU twin (under 2 minutes on a software Vulkan).
    #[arg(long)]
    pub quick: bool,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Timed runs per size and backend (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Skip the CPU twin.
    #[arg(long)]
    pub no_cpu: bool,
}

struct Row {
    case: &'static str,
    size: String,
    backend: &'static str,
    adapter: String,
    median_ms: f64,
    /// median time of the compute pass alone (GPU rows, where timestamps exist)
    pass_ms: Option<f64>,
    gflops: f64,
    speedup: Option<f64>,
    /// max |y_GPU − y_CPU twin| (GPU rows, when the twin ran)
    max_abs_err: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median wall time in ms over `repeats` runs after `warmup` runs, the median time of the
/// compute pass (timestamp queries, where the device has them), and the last run's output.
fn measure(
    layer: &ContextualAttention,
    case: &BenchCase,
    warmup: usize,
    repeats: usize,
) -> CliResult<(f64, Option<f64>, Tensor)> {
    let (x, mask) = case.inputs();
    for _ in 0..warmup {
        layer.forward(&x, &x, mask.as_ref())?;
    }
    let mut times = Vec::with_capacity(repeats);
    let mut pass_times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats {
        let (r, t) = timed(|| layer.forward(&x, &x, mask.as_ref()));
        let out = r?;
        pass_times.extend(out.gpu_time_ms);
        last = Some(out.y);
        times.push(ms(t));
    }
    let pass = (pass_times.len() == repeats).then(|| median(pass_times));
    Ok((median(times), pass, last.expect("at least one run")))
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `contextual-attention bench`.
pub fn run(a: BenchArgs) -> CliResult {
    let gpu = Gpu::new()?;
    let adapter = gpu.describe();
    let (warmup, repeats) = if a.quick { (0, 1) } else { (1, a.repeats.max(1)) };
    let cases = standard_cases();
    let cpu_cases = |c: &BenchCase| !a.no_cpu && (!a.quick || c.name.starts_with("deepfill"));
    let runs = cases.iter().map(|c| 1 + cpu_cases(c) as u64).sum();
    let bar = progress(runs, "bench");
    let mut rows = Vec::new();
    for case in &cases {
        let (x, mask) = case.inputs();
        let g = Geometry::new(&case.params, x.shape(), x.shape(), mask.as_ref().map(|m| m.shape()))?;
        let gflop = g.flops() / 1e9;
        bar.set_message(format!("{} on GPU", case.name));
        let layer = ContextualAttention::new(&gpu, case.params.clone())?;
        let (gpu_ms, pass_ms, gpu_y) = measure(&layer, case, warmup, repeats)?;
        bar.inc(1);
        let cpu = if cpu_cases(case) {
            bar.set_message(format!("{} on CPU twin", case.name));
            let (t, _, y) = measure(&ContextualAttention::reference(case.params.clone())?, case, 0, repeats)?;
            bar.inc(1);
            Some((t, gpu_y.max_abs_diff(&y)? as f64))
        } else {
            None
        };
        let cpu_ms = cpu.map(|c| c.0);
        rows.push(Row {
            case: case.name,
            size: case.size_label(),
            backend: "gpu",
            adapter: adapter.clone(),
            median_ms: gpu_ms,
            pass_ms,
            gflops: gflop / (gpu_ms / 1e3),
            speedup: cpu_ms.map(|c| c / gpu_ms),
            max_abs_err: cpu.map(|c| c.1),
        });
        if let Some(c) = cpu_ms {
            rows.push(Row {
                case: case.name,
                size: case.size_label(),
                backend: "cpu",
                adapter: format!(
                    "CPU twin (f64, {} threads)",
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                ),
                median_ms: c,
                pass_ms: None,
                gflops: gflop / (c / 1e3),
                speedup: None,
                max_abs_err: None,
            });
        }
    }
    bar.finish_and_clear();
    if a.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"case\":{},\"size\":{},\"backend\":{},\"adapter\":{},\"median_ms\":{:.3},\"pass_ms\":{},\"gflops\":{:.3},\"speedup\":{},\"max_abs_err\":{}}}",
                    json_str(r.case),
                    json_str(&r.size),
                    json_str(r.backend),
                    json_str(&r.adapter),
                    r.median_ms,
                    r.pass_ms.map_or("null".to_string(), |p| format!("{p:.3}")),
                    r.gflops,
                    r.speedup.map_or("null".to_string(), |s| format!("{s:.3}")),
                    r.max_abs_err.map_or("null".to_string(), |e| format!("{e:e}"))
                )
            })
            .collect();
        println!("[{}]", items.join(","));
    } else {
        println!("adapter: {adapter}; {} timed run(s) per row, {} warm-up", repeats, warmup);
        println!("| case | size | backend | adapter | median ms | GPU pass ms | GFLOP/s | GPU speed-up | max abs err vs twin |");
        println!("|---|---|---|---|---:|---:|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {:.1} | {} | {:.2} | {} | {} |",
                r.case,
                r.size,
                r.backend,
                r.adapter,
                r.median_ms,
                r.pass_ms.map_or(String::new(), |p| format!("{p:.1}")),
                r.gflops,
                r.speedup.map_or(String::new(), |s| format!("{s:.2}×")),
                r.max_abs_err.map_or(String::new(), |e| format!("{e:.1e}"))
            );
        }
    }
    Ok(())
}
