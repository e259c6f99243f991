//! The command-line program's pieces; all the work is done by the library.

pub mod attend;
pub mod bench;
pub mod demo;
pub mod images;
pub mod plan;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use contextual_attention::gpu::context::{describe_adapter, list_adapters};
use contextual_attention::{Backend, ContextualAttention, FuseMode, Gpu, Masking, Overlap, Params, RunOptions};

/// Errors of the program: the library's, or a message of its own.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum BackendArg {
    /// WGSL compute shaders through wgpu (Vulkan, Metal, DX12).
    #[default]
    Gpu,
    /// The fast CPU path (f32, packed GEMMs, all cores).
    Cpu,
    /// The CPU twin (f64 plain loops, slow): the reference the others are tested against.
    Reference,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OverlapArg {
    /// Divide by the constant (K/r)², 4 by default (the original).
    Quarter,
    /// Divide each pixel by its coverage count.
    Exact,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MaskingArg {
    /// Masked patches get logit 0 (the original).
    ZeroLogit,
    /// Masked patches get −∞.
    Exclude,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FuseModeArg {
    /// Flattened identity convolution with wrap-around (the original).
    Wrap,
    /// 2-D diagonal sum with zero padding.
    Spatial,
}

/// The layer's parameters as flags; defaults are the original function's.
#[derive(Args, Clone, Debug)]
pub struct LayerArgs {
    /// Matching patch size.
    #[arg(long, default_value_t = 3)]
    pub ksize: usize,
    /// Distance between matching patches (the original supports only 1).
    #[arg(long, default_value_t = 1)]
    pub stride: usize,
    /// Downscale factor for matching and paste stride [default: 1 for attend, 2 for images].
    #[arg(long)]
    pub rate: Option<usize>,
    /// Fuse kernel size.
    #[arg(long, default_value_t = 3)]
    pub fuse_k: usize,
    /// Do not fuse the scores.
    #[arg(long)]
    pub no_fuse: bool,
    /// Softmax scale.
    #[arg(long, default_value_t = 10.0)]
    pub softmax_scale: f32,
    /// Memory budget of the working buffers in MiB; tiles are planned to fit it (`plan` shows
    /// them) [default: min(256, the device's largest binding)].
    #[arg(long, value_name = "MIB")]
    pub memory_budget: Option<u64>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendArg::Gpu)]
    pub backend: BackendArg,
    /// Overlap normalisation of the paste.
    #[arg(long, value_enum, default_value_t = OverlapArg::Quarter)]
    pub overlap: OverlapArg,
    /// Paste kernel K (≥ rate) [default: 2·rate].
    #[arg(long, value_name = "K")]
    pub paste_kernel: Option<usize>,
    /// How masked patches enter the softmax.
    #[arg(long, value_enum, default_value_t = MaskingArg::ZeroLogit)]
    pub masking: MaskingArg,
    /// How the fuse step propagates scores.
    #[arg(long, value_enum, default_value_t = FuseModeArg::Wrap)]
    pub fuse_mode: FuseModeArg,
}

impl LayerArgs {
    /// The parameters, with `rate` defaulting to `default_rate`.
    pub fn params(&self, default_rate: usize) -> Params {
        Params {
            ksize: self.ksize,
            stride: self.stride,
            rate: self.rate.unwrap_or(default_rate),
            fuse_k: self.fuse_k,
            softmax_scale: self.softmax_scale,
            fuse: !self.no_fuse,
            paste_kernel: self.paste_kernel,
            overlap: match self.overlap {
                OverlapArg::Quarter => Overlap::Quarter,
                OverlapArg::Exact => Overlap::Exact,
            },
            masking: match self.masking {
                MaskingArg::ZeroLogit => Masking::ZeroLogit,
                MaskingArg::Exclude => Masking::Exclude,
            },
            fuse_mode: match self.fuse_mode {
                FuseModeArg::Wrap => FuseMode::Wrap,
                FuseModeArg::Spatial => FuseMode::Spatial,
            },
            memory_budget: self.memory_budget.map(|m| m << 20),
        }
    }

    /// The layer on the chosen backend.
    pub fn layer(&self, default_rate: usize) -> CliResult<ContextualAttention> {
        let params = self.params(default_rate);
        params.validate()?;
        Ok(ContextualAttention::with_backend(backend(self.backend)?, params)?)
    }
}

/// The backend named on the command line (opens the GPU for `gpu`).
pub fn backend(arg: BackendArg) -> CliResult<Backend> {
    Ok(match arg {
        BackendArg::Gpu => Backend::Gpu(Gpu::new()?),
        BackendArg::Cpu => Backend::Cpu,
        BackendArg::Reference => Backend::Reference,
    })
}

/// Checks before any long work that `path` can be written: its folder exists.
pub fn check_writable(path: &Path) -> CliResult {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!("{}: the folder {} does not exist; create it first", path.display(), dir.display()).into());
    }
    Ok(())
}

/// Runs `f` and returns its result with the wall time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// A progress bar on a terminal (hidden otherwise) over `n` steps.
pub fn progress(n: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs the layer with a progress bar over its tiles (on a terminal), saying where it runs and
/// how long it took on standard error.
pub fn run_layer(
    layer: &ContextualAttention,
    f: &contextual_attention::Tensor,
    b: &contextual_attention::Tensor,
    mask: Option<&contextual_attention::Tensor>,
    queries: &[(usize, usize)],
) -> CliResult<contextual_attention::Output> {
    with_progress(layer, queries, |options| layer.run(f, b, mask, options), |out| out)
}

/// Runs `work` (one layer call, given its options) with a progress bar over the tiles and the
/// attention rows of `queries`, then reports the time of the call (`output` finds its layer
/// output).
pub fn with_progress<T>(
    layer: &ContextualAttention,
    queries: &[(usize, usize)],
    work: impl FnOnce(&RunOptions) -> contextual_attention::Result<T>,
    output: impl Fn(&T) -> &contextual_attention::Output,
) -> CliResult<T> {
    eprintln!("running on {}", layer.describe_backend());
    let bar = progress(0, "tiles");
    bar.disable_steady_tick(); // drawn when the first tile is done, not before
    let report = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let (result, t) = timed(|| work(&RunOptions::new().progress(&report).queries(queries)));
    bar.finish_and_clear();
    let result = result?;
    eprintln!(
        "layer: {:.1} ms{}",
        ms(t),
        output(&result).gpu_time_ms.map_or(String::new(), |g| format!(" (GPU compute pass {g:.1} ms)"))
    );
    Ok(result)
}

/// `contextual-attention adapters`.
pub fn adapters() -> CliResult {
    let adapters = list_adapters();
    if adapters.is_empty() {
        return Err(contextual_attention::Error::NoAdapter("wgpu lists no adapter".into()).into());
    }
    for info in &adapters {
        println!("{}", describe_adapter(info));
    }
    Ok(())
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
