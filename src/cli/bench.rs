//! `contextual-attention bench`: the backends on the standard sizes (or the `--case`s given),
//! with GFLOP/s, the fraction of this machine's f32 peak (CPU rows) and the process's peak memory.

use clap::{Args, ValueEnum};
use contextual_attention::bench::{cpu_peak_gflops, standard_cases, BenchCase, PeakMemory};
use contextual_attention::{Backend, ContextualAttention, Geometry, Gpu, Tensor};

use super::{ms, progress, timed, CliResult};

/// A backend to benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    /// WGSL compute shaders through wgpu.
    Gpu,
    /// The fast CPU path (f32).
    Cpu,
    /// The CPU twin (f64, slow: minutes at 128×128×128 rate 1).
    Reference,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Backends, comma-separated [default: gpu,cpu; gpu is left out with a note when there is no adapter].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub backend: Vec<BenchBackend>,
    /// Cases as HxWxC:RATE, each self-attention with a centred hole of half the size, fuse on
    /// (repeat the flag for several) [default: 64x64x128:2, 128x128x64:2, 128x128x128:1].
    #[arg(long = "case", value_parser = BenchCase::parse)]
    pub cases: Vec<BenchCase>,
    /// One run per case and backend, no warm-up.
    #[arg(long)]
    pub quick: bool,
    /// Print the rows as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Timed runs per case and backend (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Memory budget in MiB for every case (default: each backend's own).
    #[arg(long, value_name = "MIB")]
    pub memory_budget: Option<u64>,
}

struct Row {
    case: &'static str,
    size: String,
    backend: &'static str,
    adapter: String,
    median_ms: f64,
    /// Median time of the compute pass alone (GPU rows, where timestamps exist).
    pass_ms: Option<f64>,
    gflops: f64,
    /// GFLOP/s over the machine's estimated f32 peak (CPU rows).
    peak_fraction: Option<f64>,
    /// Process peak and peak − resident size before the runs, in bytes.
    memory: Option<(u64, u64)>,
    /// The reference's time over this row's (when the reference ran).
    speedup: Option<f64>,
    /// max |y − y_reference| (when the reference ran).
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

/// What [`measure`] found.
struct Measured {
    /// Median wall time in ms.
    median_ms: f64,
    /// Median time of the compute pass (timestamp queries, where the device has them).
    pass_ms: Option<f64>,
    /// Process peak and its growth during the runs, in bytes.
    memory: Option<(u64, u64)>,
    /// The last run's output.
    y: Tensor,
}

/// Times `repeats` runs after `warmup` runs.
fn measure(layer: &ContextualAttention, case: &BenchCase, warmup: usize, repeats: usize) -> CliResult<Measured> {
    let (x, mask) = case.inputs();
    let memory = PeakMemory::start();
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
    Ok(Measured {
        median_ms: median(times),
        pass_ms: pass,
        memory: memory.finish(),
        y: last.expect("at least one run"),
    })
}

/// `s` as a JSON string.
pub fn json_str(s: &str) -> String {
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

fn json_num(v: Option<f64>, digits: usize) -> String {
    v.map_or("null".to_string(), |v| format!("{v:.digits$}"))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `contextual-attention bench`.
pub fn run(a: BenchArgs) -> CliResult {
    let explicit = !a.backend.is_empty();
    let mut backends = if explicit { a.backend.clone() } else { vec![BenchBackend::Gpu, BenchBackend::Cpu] };
    let mut seen = Vec::new();
    backends.retain(|b| {
        !seen.contains(b) && {
            seen.push(*b);
            true
        }
    });
    let gpu = if backends.contains(&BenchBackend::Gpu) {
        match Gpu::new() {
            Ok(gpu) => Some(gpu),
            Err(e) if !explicit => {
                eprintln!("note: no GPU adapter ({e}); benchmarking the CPU backend only (--backend chooses)");
                backends.retain(|b| *b != BenchBackend::Gpu);
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    // The reference runs first, so that the other rows can be compared with it.
    backends.sort_by_key(|b| *b != BenchBackend::Reference);
    let peak = cpu_peak_gflops();
    let (warmup, repeats) = if a.quick { (0, 1) } else { (1, a.repeats.max(1)) };
    let mut cases = if a.cases.is_empty() { standard_cases() } else { a.cases.clone() };
    for case in &mut cases {
        case.params.memory_budget = a.memory_budget.map(|m| m << 20);
    }
    let bar = progress((cases.len() * backends.len()) as u64, "bench");
    let mut rows: Vec<Row> = Vec::new();
    for case in &cases {
        let (x, mask) = case.inputs();
        let g = Geometry::new(&case.params, x.shape(), x.shape(), mask.as_ref().map(|m| m.shape()))?;
        let gflop = g.flops() / 1e9;
        let mut reference: Option<(f64, Tensor)> = None;
        for &backend in &backends {
            let (name, layer_backend) = match backend {
                BenchBackend::Gpu => ("gpu", Backend::Gpu(gpu.clone().expect("GPU created above"))),
                BenchBackend::Cpu => ("cpu", Backend::Cpu),
                BenchBackend::Reference => ("reference", Backend::Reference),
            };
            bar.set_message(format!("{} {} on {name}", case.name, case.size_label()));
            let layer = ContextualAttention::with_backend(layer_backend, case.params.clone())?;
            // The reference is slow: one run, no warm-up.
            let (w, n) = if backend == BenchBackend::Reference { (0, 1) } else { (warmup, repeats) };
            let Measured { median_ms, pass_ms, memory, y } = measure(&layer, case, w, n)?;
            bar.inc(1);
            let gflops = gflop / (median_ms / 1e3);
            let on_cpu = backend != BenchBackend::Gpu;
            rows.push(Row {
                case: case.name,
                size: case.size_label(),
                backend: name,
                adapter: layer.describe_backend(),
                median_ms,
                pass_ms,
                gflops,
                peak_fraction: peak.as_ref().filter(|_| on_cpu).map(|(p, _)| gflops / p),
                memory,
                speedup: reference.as_ref().filter(|_| backend != BenchBackend::Reference).map(|r| r.0 / median_ms),
                max_abs_err: match &reference {
                    Some((_, ry)) if backend != BenchBackend::Reference => Some(y.max_abs_diff(ry)? as f64),
                    _ => None,
                },
            });
            if backend == BenchBackend::Reference {
                reference = Some((median_ms, y));
            }
        }
    }
    bar.finish_and_clear();
    if a.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"case\":{},\"size\":{},\"backend\":{},\"adapter\":{},\"median_ms\":{:.3},\"pass_ms\":{},\"gflops\":{:.3},\"peak_fraction\":{},\"peak_rss_mb\":{},\"op_mb\":{},\"speedup\":{},\"max_abs_err\":{}}}",
                    json_str(r.case),
                    json_str(&r.size),
                    json_str(r.backend),
                    json_str(&r.adapter),
                    r.median_ms,
                    json_num(r.pass_ms, 3),
                    r.gflops,
                    json_num(r.peak_fraction, 4),
                    json_num(r.memory.map(|m| mb(m.0)), 1),
                    json_num(r.memory.map(|m| mb(m.1)), 1),
                    json_num(r.speedup, 3),
                    r.max_abs_err.map_or("null".to_string(), |e| format!("{e:e}"))
                )
            })
            .collect();
        println!("[{}]", items.join(","));
    } else {
        println!("{} timed run(s) per row after {} warm-up (the reference: 1, none)", repeats, warmup);
        match &peak {
            Some((_, how)) => println!("f32 peak of this machine, estimated: {how}"),
            None => println!("f32 peak of this machine: unknown (no clock in /proc/cpuinfo)"),
        }
        println!("| case | size | backend | adapter | median ms | GPU pass ms | GFLOP/s | of f32 peak | peak MB | op MB | speed-up vs reference | max abs err vs reference |");
        println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {:.1} | {} | {:.2} | {} | {} | {} | {} | {} |",
                r.case,
                r.size,
                r.backend,
                r.adapter,
                r.median_ms,
                r.pass_ms.map_or(String::new(), |p| format!("{p:.1}")),
                r.gflops,
                r.peak_fraction.map_or(String::new(), |f| format!("{:.0} %", 100.0 * f)),
                r.memory.map_or(String::new(), |m| format!("{:.0}", mb(m.0))),
                r.memory.map_or(String::new(), |m| format!("{:.0}", mb(m.1))),
                r.speedup.map_or(String::new(), |s| format!("{s:.1}×")),
                r.max_abs_err.map_or(String::new(), |e| format!("{e:.1e}"))
            );
        }
    }
    if let Some(gpu) = &gpu {
        // With --json the rows are the whole of standard output; the choices go to standard error.
        let lines = gemm_choices(gpu);
        for line in lines {
            if a.json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// The GEMM variant the GPU chose for each shape class it ran, why, and the times it measured.
fn gemm_choices(gpu: &Gpu) -> Vec<String> {
    use contextual_attention::gpu::stages::gemm::{choices, VARIANTS};
    let mut lines = vec![format!("GEMM variants on {} (CA_GEMM_VARIANT forces one):", gpu.describe())];
    lines.push("| product | class m×n×k | variant | why | ms per product at the class size |".into());
    lines.push("|---|---|---|---|---|".into());
    for (class, choice) in choices(gpu) {
        let times: Vec<String> =
            choice.times_ms.iter().map(|(v, ms)| format!("{} {ms:.3}", VARIANTS[*v].name)).collect();
        lines.push(format!(
            "| {:?} | {}×{}×{} | {} | {} | {} |",
            class.kind,
            class.m,
            class.n,
            class.k,
            VARIANTS[choice.variant].name,
            choice.reason,
            times.join(", ")
        ));
    }
    lines
}
