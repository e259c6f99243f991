//! The layer's parameters: the original function's, with its defaults, plus the extended
//! options of SPEC §E, each defaulting to the original's behaviour.

use crate::error::{Error, Result};

/// How the pasted (transposed-convolution) result is normalised (SPEC §2.11, §E).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overlap {
    /// The original: divide every output pixel by the constant (K/r)², which is 4 for the
    /// default paste kernel K = 2r. Right in the interior; darkens the borders.
    #[default]
    Quarter,
    /// Divide each output pixel by the number of query positions whose pasted K×K patch covers
    /// it (0 where nothing covers it). Exact at the borders and for uneven overlap.
    Exact,
}

/// How masked patches enter the softmax (SPEC §2.9, §E).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Masking {
    /// The original: masked scores become logit 0 and stay in the denominator; the attention
    /// over valid patches then sums to less than 1.
    #[default]
    ZeroLogit,
    /// Masked patches get −∞: the softmax runs over valid patches only and sums to 1. If every
    /// patch is masked the attention is 0 (never NaN).
    Exclude,
}

/// How the fuse step propagates scores (SPEC §2.8, §E).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FuseMode {
    /// The original: identity convolution on the flattened score matrix, row-major then
    /// column-major, wrapping across grid rows and columns.
    #[default]
    Wrap,
    /// The same fk×fk diagonal sum on the 2-D grids with zero padding, no wrap-around.
    Spatial,
}

/// Parameters of the contextual attention layer.
///
/// `Params::default()` is the original function's defaults: ksize 3, stride 1, rate 1,
/// fuse_k 3, softmax_scale 10, fuse on, paste kernel 2·rate, `/4` overlap, 0-logit masking,
/// wrap-around fuse. The models call it with `rate = 2`:
///
/// ```
/// let p = contextual_attention::Params { rate: 2, ..Default::default() };
/// assert_eq!(p.paste_kernel(), 4);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Matching patch size k on the downscaled grids (default 3).
    pub ksize: usize,
    /// Distance between matching patches on the downscaled b (default 1; the original only
    /// works with 1, see SPEC §E for other values).
    pub stride: usize,
    /// Downscale factor for matching and the paste stride r (default 1).
    pub rate: usize,
    /// Size of the fuse kernel fk (default 3).
    pub fuse_k: usize,
    /// Softmax scale λ (default 10).
    pub softmax_scale: f32,
    /// Whether to fuse scores (default true).
    pub fuse: bool,
    /// Paste kernel K; `None` means the original 2·rate. Must be at least `rate`.
    pub paste_kernel: Option<usize>,
    /// Overlap normalisation (default: the original's constant).
    pub overlap: Overlap,
    /// Masking in the softmax (default: the original's 0 logits).
    pub masking: Masking,
    /// Fuse propagation (default: the original's wrap-around).
    pub fuse_mode: FuseMode,
    /// Bytes allowed for one query tile's working set (score rows, query patches, pasted
    /// columns on the GPU; Gram block, score and paste panels on the CPU; SPEC §T), a hard
    /// limit: a call that cannot fit one query row in it fails with [`crate::Error::MemoryBudget`]. `None`: aim for the smaller of 256 MiB and the device's
    /// largest storage binding (on the CPU backend, [`crate::cpu::default_budget`], which also
    /// tiles the patches), and use one-row tiles if even those need more. The result does not
    /// depend on it beyond f32 rounding (≤ 1e-6 relative).
    pub memory_budget: Option<u64>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            ksize: 3,
            stride: 1,
            rate: 1,
            fuse_k: 3,
            softmax_scale: 10.0,
            fuse: true,
            paste_kernel: None,
            overlap: Overlap::Quarter,
            masking: Masking::ZeroLogit,
            fuse_mode: FuseMode::Wrap,
            memory_budget: None,
        }
    }
}

/// Default budget when neither the caller nor the device says otherwise: 256 MiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

impl Params {
    /// The paste kernel K actually used (2·rate unless set).
    pub fn paste_kernel(&self) -> usize {
        self.paste_kernel.unwrap_or(2 * self.rate)
    }

    /// Checks the parameters on their own (shapes are checked by [`crate::Geometry::new`]).
    pub fn validate(&self) -> Result<()> {
        if self.ksize == 0 {
            return Err(Error::param("ksize", self.ksize, "must be at least 1 (the original uses 3)"));
        }
        if self.stride == 0 {
            return Err(Error::param("stride", self.stride, "must be at least 1 (the original uses 1)"));
        }
        if self.rate == 0 {
            return Err(Error::param("rate", self.rate, "must be at least 1 (the models use 2)"));
        }
        if self.fuse && self.fuse_k == 0 {
            return Err(Error::param(
                "fuse_k",
                self.fuse_k,
                "must be at least 1 when fuse is on (the original uses 3)",
            ));
        }
        if !self.softmax_scale.is_finite() {
            return Err(Error::param(
                "softmax_scale",
                self.softmax_scale,
                "must be a finite number (the original uses 10)",
            ));
        }
        let k = self.paste_kernel();
        if k < self.rate {
            return Err(Error::param(
                "paste_kernel",
                k,
                format!(
                    "must be at least the rate ({}); a smaller kernel at stride {} leaves pixels that no patch covers",
                    self.rate, self.rate
                ),
            ));
        }
        if let Some(b) = self.memory_budget {
            if b == 0 {
                return Err(Error::param("memory_budget", b, "must be more than 0 bytes"));
            }
        }
        Ok(())
    }
}
