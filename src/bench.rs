//! Standard benchmark sizes, shared by `contextual-attention bench` and the criterion benches,
//! with what a benchmark reports beside times: the machine's estimated f32 peak and the
//! process's peak memory.

use crate::params::Params;
use crate::tensor::Tensor;

/// One benchmark problem: self-attention on ReLU-like features with a square hole.
#[derive(Clone, Debug)]
pub struct BenchCase {
    /// Short name, e.g. `deepfill-v1-256`.
    pub name: &'static str,
    /// Feature shape `[B, H, W, C]` (f = b).
    pub shape: [usize; 4],
    /// Layer parameters.
    pub params: Params,
    /// Side of the centred square hole in feature pixels (0: no mask).
    pub hole: usize,
}

impl BenchCase {
    /// `HxWxC` with the rate, e.g. `64x64x128 r2`.
    pub fn size_label(&self) -> String {
        format!("{}x{}x{} r{}", self.shape[1], self.shape[2], self.shape[3], self.params.rate)
    }

    /// Deterministic inputs: features max(0, smooth pattern + noise) and the hole mask.
    pub fn inputs(&self) -> (Tensor, Option<Tensor>) {
        let mut state = 0x2545F4914F6CDD1Du64;
        let x = Tensor::from_fn(self.shape, |_, y, x, c| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let wave = ((y as f32 * 0.37 + c as f32 * 1.3).sin() + (x as f32 * 0.23 - c as f32 * 0.7).cos()) * 0.5;
            (wave + noise).max(0.0)
        });
        let mask = (self.hole > 0).then(|| {
            let (h, w) = (self.shape[1], self.shape[2]);
            let (y0, x0) = ((h - self.hole) / 2, (w - self.hole) / 2);
            Tensor::from_fn([1, h, w, 1], |_, y, x, _| {
                ((y0..y0 + self.hole).contains(&y) && (x0..x0 + self.hole).contains(&x)) as u8 as f32
            })
        });
        (x, mask)
    }
}

/// The standard sizes (issue 8), each self-attention with a centred hole of half the side and
/// fuse on: DeepFill v1 at a 256² input (64×64×128, rate 2), 128×128×64 at rate 2, and
/// 128×128×128 at rate 1 (16,384 queries × 16,384 patches).
pub fn standard_cases() -> Vec<BenchCase> {
    vec![
        BenchCase::sized("deepfill-v1-256", [64, 64, 128], 2),
        BenchCase::sized("features-128-r2", [128, 128, 64], 2),
        BenchCase::sized("features-128-r1", [128, 128, 128], 1),
    ]
}

impl BenchCase {
    /// A case of `[H, W, C]` at `rate`, hole of half the shorter side, default parameters otherwise.
    pub fn sized(name: &'static str, [h, w, c]: [usize; 3], rate: usize) -> BenchCase {
        BenchCase { name, shape: [1, h, w, c], params: Params { rate, ..Default::default() }, hole: h.min(w) / 2 }
    }

    /// Parses `HxWxC:RATE` (e.g. `64x64x128:2`).
    pub fn parse(text: &str) -> Result<BenchCase, String> {
        let bad = || format!("case `{text}`: expected HxWxC:RATE, e.g. 64x64x128:2");
        let (size, rate) = text.split_once(':').ok_or_else(bad)?;
        let dims: Vec<usize> =
            size.split('x').map(|d| d.trim().parse()).collect::<Result<_, _>>().map_err(|_| bad())?;
        let rate: usize = rate.trim().parse().map_err(|_| bad())?;
        if dims.len() != 3 || dims.contains(&0) || rate == 0 {
            return Err(bad());
        }
        Ok(BenchCase::sized("custom", [dims[0], dims[1], dims[2]], rate))
    }
}

/// This machine's f32 peak in GFLOP/s, estimated as threads × f32 SIMD lanes × 2 FMA units ×
/// 2 flops × clock, and how: the clock is /proc/cpuinfo's `cpu MHz` (what the kernel reports,
/// which on a virtual machine is usually the nominal clock). `None` where the clock is unknown.
pub fn cpu_peak_gflops() -> Option<(f64, String)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (simd, lanes) = crate::cpu::simd();
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    let peak = threads as f64 * lanes as f64 * 2.0 * 2.0 * mhz / 1e3;
    Some((
        peak,
        format!("{threads} threads × {lanes} f32 lanes ({simd}) × 2 FMA units × 2 flops × {:.2} GHz (/proc/cpuinfo) = {peak:.0} GFLOP/s", mhz / 1e3),
    ))
}

/// The process's peak resident memory, restartable: [`PeakMemory::start`] resets the kernel's
/// high-water mark (Linux: `/proc/self/clear_refs`), [`PeakMemory::finish`] reads it back.
/// Elsewhere both give `None`.
pub struct PeakMemory {
    baseline: Option<u64>,
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl PeakMemory {
    /// Resets the high-water mark to the present resident size and remembers that size.
    pub fn start() -> PeakMemory {
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        PeakMemory { baseline: if reset { status_kib("VmRSS:").map(|k| k << 10) } else { None } }
    }

    /// (process peak, peak − the resident size at start) in bytes since [`PeakMemory::start`].
    pub fn finish(&self) -> Option<(u64, u64)> {
        let baseline = self.baseline?;
        let peak = status_kib("VmHWM:")? << 10;
        Some((peak, peak.saturating_sub(baseline)))
    }
}
