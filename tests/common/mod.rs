//! Shared test support: one GPU context per test binary, random inputs and masks, comparisons
//! that name the worst element, the goldens' input pattern; `spec` re-derives the layer from
//! SPEC's formulas, independently of the library.
#![allow(dead_code)]

pub mod compare;
pub mod golden;
pub mod spec;

use contextual_attention::{reference, Geometry, Params, Tensor};

/// The GPU context shared by the tests of one binary (natively; the browser's tests await
/// theirs). Fails (never silently passes) when no
/// adapter exists, unless `CA_SKIP_GPU_TESTS=1`, in which case it says so and returns `None`.
#[cfg(not(target_arch = "wasm32"))]
pub fn gpu() -> Option<&'static contextual_attention::Gpu> {
    use contextual_attention::Gpu;
    static GPU: std::sync::OnceLock<Option<Gpu>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| {
        if std::env::var("CA_SKIP_GPU_TESTS").as_deref() == Ok("1") {
            eprintln!("CA_SKIP_GPU_TESTS=1: GPU tests are SKIPPED");
            return None;
        }
        match Gpu::new() {
            Ok(g) => {
                eprintln!("GPU tests run on: {}", g.describe());
                Some(g)
            }
            Err(e) => panic!(
                "GPU tests need a wgpu adapter and none was found: {e}\n\
                 On Linux without a GPU install a software Vulkan: apt-get install mesa-vulkan-drivers libvulkan1\n\
                 (or set CA_SKIP_GPU_TESTS=1 to skip GPU tests explicitly)"
            ),
        }
    })
    .as_ref()
}

/// Returns the shared GPU or, when skipping is asked for, returns from the test after saying so.
#[macro_export]
macro_rules! gpu_or_skip {
    () => {
        match common::gpu() {
            Some(g) => g,
            None => {
                eprintln!("skipped (CA_SKIP_GPU_TESTS=1)");
                return;
            }
        }
    };
}

/// A small deterministic generator (SplitMix64) seeded per test run; the seed is printed so a
/// failure can be replayed with `CA_TEST_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn new(label: &str) -> Rng {
        let seed = std::env::var("CA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{label}: CA_TEST_SEED={seed}");
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn tensor(&mut self, shape: [usize; 4], lo: f32, hi: f32) -> Tensor {
        Tensor::new(shape, self.vec(shape.iter().product(), lo, hi)).unwrap()
    }
    /// A {0,1} mask with one random rectangle of ones.
    pub fn hole(&mut self, batch: usize, h: usize, w: usize) -> Tensor {
        let (y0, x0) = (self.below(h / 2 + 1), self.below(w / 2 + 1));
        let (y1, x1) = (y0 + 1 + self.below(h - y0), x0 + 1 + self.below(w - x0));
        Tensor::from_fn([batch, h, w, 1], |_, y, x, _| ((y0..y1).contains(&y) && (x0..x1).contains(&x)) as u8 as f32)
    }
}

/// Prints a line of a test's report: on stderr natively, on the browser's console (which the
/// wasm-bindgen runner shows with `--nocapture`) in the browser.
pub fn log(line: &str) {
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{line}");
    #[cfg(target_arch = "wasm32")]
    web_sys::console::log_1(&line.into());
}

/// The goldens' input: value(n,y,x,c) = ((7y + 3x + 5c + 11n) mod 13 − 6) · 0.125 (SPEC §9).
pub fn pattern(shape: [usize; 4]) -> Tensor {
    Tensor::from_fn(shape, |n, y, x, c| ((((7 * y + 3 * x + 5 * c + 11 * n) % 13) as i64 - 6) as f32) * 0.125)
}

/// Asserts `|got − want| ≤ atol + rtol·|want|` everywhere (`got` in f32 or f64); on failure
/// names the worst element, the max and the mean |Δ|. NaN in `got` always fails.
pub fn assert_close<G: Copy + Into<f64> + std::fmt::Display>(
    what: &str,
    got: &[G],
    want: &[f64],
    atol: f64,
    rtol: f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ ({} vs {})", got.len(), want.len());
    let mut worst = (0usize, f64::NEG_INFINITY, 0.0f64); // index, excess over tolerance, |Δ|
    let (mut max_d, mut sum_d, mut bad) = (0.0f64, 0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g.into() - w).abs();
        let d = if d.is_nan() { f64::INFINITY } else { d };
        let excess = d - (atol + rtol * w.abs());
        if excess > 0.0 {
            bad += 1;
        }
        if excess > worst.1 {
            worst = (i, excess, d);
        }
        max_d = max_d.max(d);
        sum_d += d.min(1e300);
    }
    let mean = sum_d / got.len().max(1) as f64;
    assert!(
        bad == 0,
        "{what}: {bad} of {} elements off (atol {atol:e}, rtol {rtol:e}); worst at {}: got {} want {} (|Δ| {:e}); max |Δ| {:e}, mean |Δ| {:e}",
        got.len(),
        worst.0,
        got[worst.0],
        want[worst.0],
        worst.2,
        max_d,
        mean
    );
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts two tensors agree within `rtol` of the largest |want| (absolute, everywhere).
pub fn assert_tensors_close(what: &str, got: &Tensor, want: &Tensor, rtol: f64) {
    let scale = want.data().iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    assert_close(what, got.data(), &to_f64(want.data()), rtol * scale.max(1e-30), 0.0);
}

/// The smallest fraction, over the mask's items, of b's patches that the mask leaves usable
/// (SPEC §2.7), with the library's index maps: used only to choose test inputs.
pub fn valid_fraction(p: &Params, b_shape: [usize; 4], mask: &Tensor) -> f64 {
    let g = Geometry::new(p, b_shape, b_shape, Some(mask.shape())).unwrap();
    (0..mask.shape()[0])
        .map(|n| {
            let m: Vec<f64> = mask.item(n).data().iter().map(|&v| v as f64).collect();
            let mp = reference::downscale(&m, g.b_size.1, 1, &g.b_rows, &g.b_cols);
            let mm = reference::mask_validity(&mp, &g);
            mm.iter().sum::<f64>() / mm.len() as f64
        })
        .fold(1.0, f64::min)
}

/// A random rectangular hole ([`Rng::hole`], one item) that leaves at least 30 % of b's patches
/// usable, so that masked comparisons are not trivially all zero.
pub fn usable_hole(rng: &mut Rng, p: &Params, b_shape: [usize; 4]) -> Tensor {
    loop {
        let m = rng.hole(1, b_shape[1], b_shape[2]);
        if valid_fraction(p, b_shape, &m) >= 0.3 {
            return m;
        }
    }
}

/// Approximately N(0,1) (Box–Muller).
pub fn normal(rng: &mut Rng) -> f32 {
    let u1 = rng.uniform(1e-7, 1.0) as f64;
    let u2 = rng.uniform(0.0, 1.0) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// The largest |v|.
pub fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()))
}

/// The largest |a − b|.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
}

/// ‖got − want‖₂ / ‖want‖₂.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The bit patterns, for bit-identity checks.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// ReLU-like features max(0, N(0,1)).
pub fn relu_features(rng: &mut Rng, shape: [usize; 4]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::new(shape, (0..n).map(|_| normal(rng).max(0.0)).collect()).unwrap()
}

/// A `[1, h, w, 1]` mask with a `side`×`side` square of ones at (y0, x0).
pub fn square_hole(h: usize, w: usize, y0: usize, x0: usize, side: usize) -> Tensor {
    Tensor::from_fn([1, h, w, 1], |_, y, x, _| {
        ((y0..y0 + side).contains(&y) && (x0..x0 + side).contains(&x)) as u8 as f32
    })
}

/// Concatenates per-item tensors along the batch.
pub fn concat_batch(items: &[Tensor]) -> Tensor {
    let s = items[0].shape();
    let data: Vec<f32> = items.iter().flat_map(|t| t.data().iter().copied()).collect();
    Tensor::new([items.len(), s[1], s[2], s[3]], data).unwrap()
}

/// A random configuration of every parameter (rate, stride, ksize, fuse and its mode, paste
/// kernel, overlap, masking, softmax scale) with random batch, channels, f and b sizes and a
/// shared, per-sample or no mask: what the GPU and the CPU backend are fuzzed with.
#[allow(dead_code)]
pub fn random_case(rng: &mut Rng) -> (contextual_attention::Params, Tensor, Tensor, Option<Tensor>) {
    use contextual_attention::{FuseMode, Masking, Overlap, Params};
    let rate = 1 + rng.below(3);
    let stride = if rng.below(3) == 0 { 1 + rng.below(3) } else { 1 };
    let params = Params {
        rate,
        stride,
        ksize: 1 + rng.below(5),
        fuse: rng.below(4) != 0,
        fuse_k: 1 + rng.below(5),
        paste_kernel: (rng.below(3) == 0).then(|| rate + rng.below(2 * rate + 1)),
        overlap: if rng.below(2) == 0 { Overlap::Quarter } else { Overlap::Exact },
        masking: if rng.below(2) == 0 { Masking::ZeroLogit } else { Masking::Exclude },
        fuse_mode: if rng.below(2) == 0 { FuseMode::Wrap } else { FuseMode::Spatial },
        softmax_scale: [0.5, 10.0, 100.0][rng.below(3)],
        ..Default::default()
    };
    let (batch, c) = (1 + rng.below(2), 1 + rng.below(4));
    let mut side = || (1 + rng.below(7)) * rate;
    let (hf, wf, hb, wb) = (side(), side(), side(), side());
    let f = rng.tensor([batch, hf, wf, c], -1.0, 1.0);
    let b = rng.tensor([batch, hb, wb, c], -1.0, 1.0);
    let mask_batch = if rng.below(2) == 0 { 1 } else { batch };
    let mask = (rng.below(3) != 0).then(|| {
        let ones: Vec<f32> = (0..mask_batch * hb * wb).map(|_| (rng.below(4) == 0) as u8 as f32).collect();
        Tensor::new([mask_batch, hb, wb, 1], ones).unwrap()
    });
    (params, f, b, mask)
}
