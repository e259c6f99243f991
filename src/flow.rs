//! Offsets → colour-coded flow image, computed the way the original layer does it (CPU, `f64`).
//!
//! The contextual attention layer reports, for every foreground position `(i, j)`, the patch
//! `(row, col)` of the background it attended to most. The displacement `(dy, dx) = (row·s − i,
//! col·s − j)` is drawn with the Middlebury optical-flow colour code: the hue comes from the
//! direction and the saturation from the length relative to the largest length seen so far.
//!
//! The original normalises batch item `n` by the largest displacement over items `0..=n` (a
//! running maximum), and upscales the colour image by the rate with TF1
//! `resize_bilinear(align_corners=True)`; both quirks are reproduced here.

/// Segment lengths of the colour wheel: red→yellow, yellow→green, green→cyan, cyan→blue,
/// blue→magenta, magenta→red.
const SEGMENTS: [usize; 6] = [15, 6, 4, 11, 13, 6];

/// Number of colours in the wheel.
pub const NCOLS: usize = 55;

/// Offsets whose magnitude exceeds this are treated as unknown (drawn as zero flow).
const UNKNOWN_FLOW: f64 = 1e7;

/// The 55-colour Middlebury wheel (`make_color_wheel` of the original code), RGB.
pub fn color_wheel() -> [[u8; 3]; NCOLS] {
    let mut wheel = [[0u8; 3]; NCOLS];
    let ramp = |i: usize, n: usize| (255 * i / n) as u8; // floor(255·i/n)
    let [ry, yg, gc, cb, bm, mr] = SEGMENTS;
    let mut k = 0;
    for i in 0..ry {
        wheel[k] = [255, ramp(i, ry), 0];
        k += 1;
    }
    for i in 0..yg {
        wheel[k] = [255 - ramp(i, yg), 255, 0];
        k += 1;
    }
    for i in 0..gc {
        wheel[k] = [0, 255, ramp(i, gc)];
        k += 1;
    }
    for i in 0..cb {
        wheel[k] = [0, 255 - ramp(i, cb), 255];
        k += 1;
    }
    for i in 0..bm {
        wheel[k] = [ramp(i, bm), 0, 255];
        k += 1;
    }
    for i in 0..mr {
        wheel[k] = [255, 0, 255 - ramp(i, mr)];
        k += 1;
    }
    debug_assert_eq!(k, NCOLS);
    wheel
}

/// Colour of one normalised flow vector `(u, v)` (`compute_color` of the original).
fn color_of(u: f64, v: f64, wheel: &[[f64; 3]; NCOLS]) -> [u8; 3] {
    if u.is_nan() || v.is_nan() {
        // The original zeroes NaN flow and then multiplies the colour by (1 − nan) = 0.
        return [0, 0, 0];
    }
    let rad = (u * u + v * v).sqrt();
    // Negate (not 0.0 − x) so that −0.0 keeps its sign: atan2(−0.0, −1) = −π.
    let a = (-v).atan2(-u) / std::f64::consts::PI;
    let fk = (a + 1.0) / 2.0 * (NCOLS as f64 - 1.0) + 1.0;
    let k0 = (fk.floor() as usize).clamp(1, NCOLS);
    let k1 = if k0 + 1 == NCOLS + 1 { 1 } else { k0 + 1 };
    let f = fk - k0 as f64;
    let mut out = [0u8; 3];
    for (ch, px) in out.iter_mut().enumerate() {
        let col0 = wheel[k0 - 1][ch];
        let col1 = wheel[k1 - 1][ch];
        let mut col = (1.0 - f) * col0 + f * col1;
        if rad <= 1.0 {
            col = 1.0 - rad * (1.0 - col);
        } else {
            col *= 0.75;
        }
        // floor, then the uint8 cast (saturating here; the values are within 0..=255 anyway).
        *px = (255.0 * col).floor() as u8;
    }
    out
}

/// Colours an offsets array as flow, exactly as the original layer's `flow_to_image`.
///
/// `offsets` is int32 `[batch, h, w, 2]` (row-major), channel 0 the row and channel 1 the column
/// of the chosen patch in the background's patch grid; `stride` scales the grid position, so the
/// flow at `(i, j)` is `(row·stride − i, col·stride − j)`. Returns RGB8 `[batch, h, w, 3]`.
///
/// Item `n` is normalised by the largest flow length over items `0..=n`, as the original does.
///
/// # Panics
/// If `offsets.len() != batch·h·w·2`.
pub fn flow_colors(offsets: &[i32], batch: usize, h: usize, w: usize, stride: usize) -> Vec<u8> {
    let per = h * w;
    assert_eq!(
        offsets.len(),
        batch * per * 2,
        "flow_colors: offsets hold {} values but [batch {batch}, h {h}, w {w}, 2] needs {}",
        offsets.len(),
        batch * per * 2
    );
    let wheel_u8 = color_wheel();
    let mut wheel = [[0f64; 3]; NCOLS];
    for (dst, src) in wheel.iter_mut().zip(wheel_u8.iter()) {
        for ch in 0..3 {
            dst[ch] = src[ch] as f64 / 255.0;
        }
    }
    let s = stride as f64;
    let eps = f64::EPSILON;
    let mut maxrad = -1.0f64;
    let mut out = Vec::with_capacity(batch * per * 3);
    let mut u = vec![0f64; per];
    let mut v = vec![0f64; per];
    for n in 0..batch {
        let item = &offsets[n * per * 2..(n + 1) * per * 2];
        for i in 0..h {
            for j in 0..w {
                let p = i * w + j;
                let mut du = item[p * 2] as f64 * s - i as f64;
                let mut dv = item[p * 2 + 1] as f64 * s - j as f64;
                if du.abs() > UNKNOWN_FLOW || dv.abs() > UNKNOWN_FLOW {
                    du = 0.0;
                    dv = 0.0;
                }
                u[p] = du;
                v[p] = dv;
            }
        }
        for p in 0..per {
            let rad = (u[p] * u[p] + v[p] * v[p]).sqrt();
            // Python's max(maxrad, np.max(rad)): a NaN radius would not replace maxrad here.
            if rad > maxrad {
                maxrad = rad;
            }
        }
        for p in 0..per {
            let nu = u[p] / (maxrad + eps);
            let nv = v[p] / (maxrad + eps);
            out.extend_from_slice(&color_of(nu, nv, &wheel));
        }
    }
    out
}

/// Resizes an `h × w × ch` (HWC, row-major) float image to `out_h × out_w` as TF1
/// `resize_bilinear(align_corners=True)` does, in `f32` arithmetic.
///
/// Per axis: `scale = (in − 1)/(out − 1)` (or `in/out` when `out == 1`), source coordinate
/// `src = o·scale`, `lo = floor(src)`, `hi = min(lo + 1, in − 1)`, `t = src − lo`; the value is
/// interpolated along x on rows `lo` and `hi`, then along y.
///
/// # Panics
/// If `img.len() != h·w·ch`, or if the input is empty while the output is not.
pub fn upscale_bilinear_align_corners(
    img: &[f32],
    h: usize,
    w: usize,
    ch: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(img.len(), h * w * ch, "upscale: image holds {} values, expected {h}·{w}·{ch}", img.len());
    if out_h == 0 || out_w == 0 || ch == 0 {
        return Vec::new();
    }
    assert!(h > 0 && w > 0, "upscale: cannot resize an empty {h}×{w} image to {out_h}×{out_w}");

    /// (lo, hi, t) per output coordinate along one axis.
    fn axis(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
        let scale = if output > 1 { (input - 1) as f32 / (output - 1) as f32 } else { input as f32 / output as f32 };
        (0..output)
            .map(|o| {
                let src = o as f32 * scale;
                let lo_f = src.floor();
                let lo = (lo_f as usize).min(input - 1);
                let hi = (lo + 1).min(input - 1);
                (lo, hi, src - lo_f)
            })
            .collect()
    }

    let ys = axis(h, out_h);
    let xs = axis(w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w * ch);
    for &(y0, y1, ty) in &ys {
        for &(x0, x1, tx) in &xs {
            for c in 0..ch {
                let at = |y: usize, x: usize| img[(y * w + x) * ch + c];
                let (tl, tr) = (at(y0, x0), at(y0, x1));
                let (bl, br) = (at(y1, x0), at(y1, x1));
                let top = tl + (tr - tl) * tx;
                let bottom = bl + (br - bl) * tx;
                out.push(top + (bottom - top) * ty);
            }
        }
    }
    out
}

/// Rounds half away from zero and saturates to `0..=255` (NaN → 0).
fn round_u8(v: f32) -> u8 {
    v.round() as u8
}

/// The flow images of an offsets array: one RGB8 image (`(h·rate) × (w·rate) × 3`, row-major)
/// per batch item.
///
/// Colours come from [`flow_colors`]; for `rate > 1` each colour image is upscaled with
/// [`upscale_bilinear_align_corners`] on 0–255 floats and rounded back to bytes (half away from
/// zero, saturated).
///
/// # Panics
/// If `rate == 0` or `offsets.len() != batch·h·w·2`.
pub fn flow_image(offsets: &[i32], batch: usize, h: usize, w: usize, stride: usize, rate: usize) -> Vec<Vec<u8>> {
    assert!(rate >= 1, "flow_image: rate must be at least 1");
    let colors = flow_colors(offsets, batch, h, w, stride);
    let per = h * w * 3;
    (0..batch)
        .map(|n| {
            let item = &colors[n * per..(n + 1) * per];
            if rate == 1 {
                item.to_vec()
            } else {
                let as_float: Vec<f32> = item.iter().map(|&b| b as f32).collect();
                upscale_bilinear_align_corners(&as_float, h, w, 3, h * rate, w * rate)
                    .into_iter()
                    .map(round_u8)
                    .collect()
            }
        })
        .collect()
}
