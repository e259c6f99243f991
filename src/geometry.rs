//! Every derived size of the layer, computed once on the host and shared by the CPU twin and
//! the GPU path: TF "SAME" padding (SPEC §2.2), the align-corners nearest-neighbour index maps
//! (SPEC §2.5), grid and patch sizes, and the fuse steps (SPEC §2.8).

use crate::error::{Error, Result};
use crate::params::{FuseMode, Overlap, Params};
use crate::tensor::Tensor;

/// TF "SAME" padding for length `n`, kernel `k`, stride `s`: `(out, pad_before, pad_after)`.
/// An odd total puts the extra zero at the end (SPEC §2.2).
pub fn same_padding(n: usize, k: usize, s: usize) -> (usize, usize, usize) {
    let out = n.div_ceil(s);
    let total = ((out.saturating_sub(1)) * s + k).saturating_sub(n);
    let before = total / 2;
    (out, before, total - before)
}

/// Source indices of TF-1 `resize_nearest_neighbor(align_corners=True)` from length `input`
/// to `output`: `min(roundf(o · f32(in−1)/f32(out−1)), in−1)`, all in f32, halves away from
/// zero (SPEC §2.5). Not "every r-th pixel": 6 → 3 gives [0, 3, 5].
pub fn nn_indices(input: usize, output: usize) -> Vec<u32> {
    let scale = if output > 1 { (input as f32 - 1.0) / (output as f32 - 1.0) } else { input as f32 / output as f32 };
    (0..output)
        .map(|o| {
            let src = (o as f32 * scale).round() as usize; // f32::round: half away from zero
            src.min(input - 1) as u32
        })
        .collect()
}

/// All sizes of one layer call (per batch item; the batch is `batch`).
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// Batch size B.
    pub batch: usize,
    /// Channels C.
    pub channels: usize,
    /// Full-resolution f: Hf, Wf.
    pub f_size: (usize, usize),
    /// Full-resolution b: Hb, Wb.
    pub b_size: (usize, usize),
    /// Rate r.
    pub rate: usize,
    /// Stride s.
    pub stride: usize,
    /// Matching patch size k.
    pub ksize: usize,
    /// Paste kernel K.
    pub paste_kernel: usize,
    /// Downscaled f (query grid): hf, wf.
    pub hf: usize,
    /// Downscaled f width.
    pub wf: usize,
    /// Downscaled b: hb, wb.
    pub hb: usize,
    /// Downscaled b width.
    pub wb: usize,
    /// Patch grid of b: ph = ceil(hb/s).
    pub ph: usize,
    /// Patch grid width pw = ceil(wb/s).
    pub pw: usize,
    /// Pad before of the query convolution (f′, k, stride 1): rows, cols.
    pub query_pad: (usize, usize),
    /// Pad before of the matching patches on b′ (k, stride s): rows, cols.
    pub match_pad: (usize, usize),
    /// Pad before of the raw patches on b (K, stride r·s): rows, cols.
    pub raw_pad: (usize, usize),
    /// Pad before of the paste (transposed conv, output Hf×Wf, K, stride r): rows, cols.
    pub paste_pad: (usize, usize),
    /// NN index maps: f rows, f cols, b rows, b cols.
    pub f_rows: Vec<u32>,
    /// f column map.
    pub f_cols: Vec<u32>,
    /// b row map.
    pub b_rows: Vec<u32>,
    /// b column map.
    pub b_cols: Vec<u32>,
    /// Whether the fuse step runs, and how.
    pub fuse: Option<Fuse>,
    /// Mask batch: 0 (no mask), 1 (shared) or B (per sample).
    pub mask_batch: usize,
}

/// The fuse step's kernel offsets and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fuse {
    /// fk.
    pub k: usize,
    /// p = ⌊(fk−1)/2⌋: offsets run over −p ..= fk−1−p.
    pub p: usize,
    /// Wrap-around (original) or spatial.
    pub mode: FuseMode,
}

impl Fuse {
    /// The offsets D = {−p, …, fk−1−p} in ascending order.
    pub fn offsets(&self) -> impl Iterator<Item = isize> + Clone {
        let p = self.p as isize;
        (0..self.k as isize).map(move |i| i - p)
    }
}

/// Which pass of the fuse step: the first acts along rows, the second along columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusePass {
    /// Row-major flat step (wrap) or horizontal step (spatial).
    Rows,
    /// Column-major flat step (wrap) or vertical step (spatial).
    Cols,
}

impl Geometry {
    /// Checks shapes against the parameters (SPEC §2.3) and derives every size.
    ///
    /// `f` and `b` are `[B, H, W, C]`; `mask`, if any, is `[1 or B, Hb, Wb, 1]`.
    pub fn new(params: &Params, f: [usize; 4], b: [usize; 4], mask: Option<[usize; 4]>) -> Result<Self> {
        params.validate()?;
        let r = params.rate;
        for (name, t) in [("f", f), ("b", b)] {
            if t.contains(&0) {
                return Err(Error::shape(name, format!("shape {t:?} has a zero dimension")));
            }
        }
        if f[0] != b[0] {
            return Err(Error::shape(
                "b",
                format!("batch {} of b differs from batch {} of f; f and b must have the same batch size", b[0], f[0]),
            ));
        }
        if f[3] != b[3] {
            return Err(Error::shape(
                "b",
                format!("b has {} channels but f has {}; both must have the same number of channels", b[3], f[3]),
            ));
        }
        for (name, t) in [("f", f), ("b", b)] {
            if t[1] % r != 0 {
                return Err(Error::NotDivisible { tensor: name, dim: "height", size: t[1], rate: r });
            }
            if t[2] % r != 0 {
                return Err(Error::NotDivisible { tensor: name, dim: "width", size: t[2], rate: r });
            }
        }
        let mask_batch = match mask {
            None => 0,
            Some(m) => {
                if m[0] != 1 && m[0] != b[0] {
                    return Err(Error::shape(
                        "mask",
                        format!(
                            "mask batch is {} but must be 1 (shared by the batch) or {} (one per sample)",
                            m[0], b[0]
                        ),
                    ));
                }
                if m[1] != b[1] || m[2] != b[2] {
                    return Err(Error::shape(
                        "mask",
                        format!(
                            "mask is {}×{} but b is {}×{}; give the mask at b's resolution",
                            m[1], m[2], b[1], b[2]
                        ),
                    ));
                }
                if m[3] != 1 {
                    return Err(Error::shape("mask", format!("mask has {} channels; it must have 1 (1 = hole)", m[3])));
                }
                m[0]
            }
        };
        let (s, k, kp) = (params.stride, params.ksize, params.paste_kernel());
        let (hf, wf, hb, wb) = (f[1] / r, f[2] / r, b[1] / r, b[2] / r);
        let pad = |n, k, s| same_padding(n, k, s).1;
        let geometry = Geometry {
            batch: f[0],
            channels: f[3],
            f_size: (f[1], f[2]),
            b_size: (b[1], b[2]),
            rate: r,
            stride: s,
            ksize: k,
            paste_kernel: kp,
            hf,
            wf,
            hb,
            wb,
            ph: hb.div_ceil(s),
            pw: wb.div_ceil(s),
            query_pad: (pad(hf, k, 1), pad(wf, k, 1)),
            match_pad: (pad(hb, k, s), pad(wb, k, s)),
            raw_pad: (pad(b[1], kp, r * s), pad(b[2], kp, r * s)),
            paste_pad: (pad(f[1], kp, r), pad(f[2], kp, r)),
            f_rows: nn_indices(f[1], hf),
            f_cols: nn_indices(f[2], wf),
            b_rows: nn_indices(b[1], hb),
            b_cols: nn_indices(b[2], wb),
            fuse: params.fuse.then(|| Fuse { k: params.fuse_k, p: (params.fuse_k - 1) / 2, mode: params.fuse_mode }),
            mask_batch,
        };
        Ok(geometry)
    }

    /// Number of query positions Nf = hf·wf.
    pub fn queries(&self) -> usize {
        self.hf * self.wf
    }

    /// Number of patches L = ph·pw.
    pub fn patches(&self) -> usize {
        self.ph * self.pw
    }

    /// Length of one matching patch, k·k·C.
    pub fn match_len(&self) -> usize {
        self.ksize * self.ksize * self.channels
    }

    /// Length of one raw (paste) patch, K·K·C.
    pub fn raw_len(&self) -> usize {
        self.paste_kernel * self.paste_kernel * self.channels
    }

    /// The query rows i (of the hf×wf grid) whose pasted patches cover output row `y`, and
    /// likewise for a column: the i with 0 ≤ y − r·i + pad < K, clipped to `0..n`.
    pub fn covering(y: usize, n: usize, rate: usize, pad: usize, kernel: usize) -> std::ops::Range<usize> {
        let t = y + pad; // 0 ≤ t − r·i < K  ⇔  (t−K)/r < i ≤ t/r
        let lo = if t + 1 > kernel { (t + 1 - kernel).div_ceil(rate) } else { 0 };
        let hi = (t / rate + 1).min(n);
        lo.min(hi)..hi
    }

    /// The per-pixel divisor of the paste (SPEC §2.11, §E): the constant (K/r)², or the coverage count.
    pub fn overlap_divisor(&self, overlap: Overlap, y: usize, x: usize) -> f32 {
        match overlap {
            Overlap::Quarter => (self.paste_kernel * self.paste_kernel) as f32 / (self.rate * self.rate) as f32,
            Overlap::Exact => {
                let rows = Self::covering(y, self.hf, self.rate, self.paste_pad.0, self.paste_kernel).len();
                let cols = Self::covering(x, self.wf, self.rate, self.paste_pad.1, self.paste_kernel).len();
                (rows * cols) as f32
            }
        }
    }

    /// One fuse step from position `(i, j)` of an `h×w` grid by `d` (SPEC §2.8): `None` when it
    /// leaves the grid. Wrap mode steps in the flat index (row-major for [`FusePass::Rows`],
    /// column-major for [`FusePass::Cols`]); spatial mode steps in 2-D with zero padding.
    pub fn fuse_step(
        mode: FuseMode,
        pass: FusePass,
        h: usize,
        w: usize,
        i: usize,
        j: usize,
        d: isize,
    ) -> Option<(usize, usize)> {
        let (h, w, i, j) = (h as isize, w as isize, i as isize, j as isize);
        let (ni, nj) = match (mode, pass) {
            (FuseMode::Wrap, FusePass::Rows) => {
                let a = i * w + j + d;
                if a < 0 || a >= h * w {
                    return None;
                }
                (a / w, a % w)
            }
            (FuseMode::Wrap, FusePass::Cols) => {
                let a = j * h + i + d;
                if a < 0 || a >= h * w {
                    return None;
                }
                (a % h, a / h)
            }
            (FuseMode::Spatial, FusePass::Rows) => {
                if j + d < 0 || j + d >= w {
                    return None;
                }
                (i, j + d)
            }
            (FuseMode::Spatial, FusePass::Cols) => {
                if i + d < 0 || i + d >= h {
                    return None;
                }
                (i + d, j)
            }
        };
        Some((ni as usize, nj as usize))
    }
}

impl Geometry {
    /// Checks that every query (i, j) lies on the hf×wf query grid.
    pub fn check_queries(&self, queries: &[(usize, usize)]) -> Result<()> {
        for &(i, j) in queries {
            if i >= self.hf || j >= self.wf {
                return Err(Error::param(
                    "queries",
                    format!("({i},{j})"),
                    format!(
                        "outside the {}×{} query grid (f downscaled by the rate); rows 0..{}, columns 0..{}",
                        self.hf, self.wf, self.hf, self.wf
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The query rows (of the hf×wf grid) whose pastes cover a pixel of `region` (SPEC §R), a
    /// mask `[1 or B, Hf, Wf, 1]` at y's resolution (non-zero: wanted); the union over its items.
    pub fn region_rows(&self, region: &Tensor) -> Result<Vec<bool>> {
        let (hf_full, wf_full) = self.f_size;
        let [n, h, w, c] = region.shape();
        if (n != 1 && n != self.batch) || h != hf_full || w != wf_full || c != 1 {
            let items = if self.batch > 1 { format!("1 or {}", self.batch) } else { "1".to_string() };
            return Err(Error::shape(
                "region",
                format!(
                    "a region is a mask at y's resolution, [{items}, {hf_full}, {wf_full}, 1]; got {:?}",
                    region.shape()
                ),
            ));
        }
        let mut needed = vec![false; self.hf];
        for (row, pixels) in region.data().chunks(wf_full).enumerate() {
            if pixels.iter().any(|&v| v != 0.0) {
                let py = row % hf_full;
                for i in Geometry::covering(py, self.hf, self.rate, self.paste_pad.0, self.paste_kernel) {
                    needed[i] = true;
                }
            }
        }
        Ok(needed)
    }

    /// Floating-point operations of one call, counted as in SPEC §2.13: per batch item
    /// 2·Nf·L·k²C (matching) + 2·fk·Nf·L (fuse) + 2·Nf·L·K²C (paste).
    pub fn flops(&self) -> f64 {
        let (nf, l) = (self.queries() as f64, self.patches() as f64);
        let fuse = self.fuse.map_or(0.0, |f| 2.0 * f.k as f64 * nf * l);
        self.batch as f64 * (2.0 * nf * l * self.match_len() as f64 + fuse + 2.0 * nf * l * self.raw_len() as f64)
    }
}
