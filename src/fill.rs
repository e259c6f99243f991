//! Hole filling with the layer, as the inpainting models call it: a coarse guess of the hole,
//! then the layer with f = b = the guess and the hole as mask (rate 2, fuse on by default), so
//! the hole is rebuilt from sharp patches of the rest of the image. Images are `[1, H, W, C]`
//! tensors (any value range); a hole mask is `[1, H, W, 1]`, hole where it is above 0.5.

use crate::error::{Error, Result};
use crate::layer::{ContextualAttention, RunOptions};
use crate::output::Output;
use crate::tensor::Tensor;

/// What [`fill`] produces.
#[derive(Clone, Debug)]
pub struct Filled {
    /// The coarse guess the layer started from ([`line_fill`]).
    pub coarse: Tensor,
    /// The layer's output on the coarse guess.
    pub output: Output,
    /// The image with its hole replaced by the layer's reconstruction ([`composite`]).
    pub result: Tensor,
}

/// Fills the hole of `image` `[1, H, W, C]` marked by `hole` `[1, H, W, 1]` (> 0.5): a coarse
/// [`line_fill`], the layer on it with the hole as mask, and the [`composite`]. H and W must be
/// multiples of the layer's rate.
pub fn fill(layer: &ContextualAttention, image: &Tensor, hole: &Tensor, options: &RunOptions) -> Result<Filled> {
    let [n, h, w, _] = image.shape();
    if n != 1 {
        return Err(Error::shape("image", format!("fill takes one image, [1, H, W, C]; got batch {n}")));
    }
    if hole.shape() != [1, h, w, 1] {
        return Err(Error::shape(
            "mask",
            format!("the hole mask must be [1, {h}, {w}, 1] like the image, got {:?}", hole.shape()),
        ));
    }
    let coarse = line_fill(image, hole);
    let output = layer.run(&coarse, &coarse, Some(hole), options)?;
    let result = composite(image, &output.y, hole);
    Ok(Filled { coarse, output, result })
}

/// A coarse fill of the hole (mask > 0.5): repeated 4-neighbour averaging (diffusion from the
/// hole's border), the kind of blurry guess the layer then sharpens.
pub fn diffuse_fill(img: &Tensor, mask: &Tensor) -> Tensor {
    let [_, h, w, c] = img.shape();
    let hole = |y: usize, x: usize| mask.at(0, y, x, 0) > 0.5;
    let known: Vec<f64> = (0..h * w)
        .filter(|&i| !hole(i / w, i % w))
        .flat_map(|i| (0..c).map(move |ch| (i, ch)))
        .map(|(i, ch)| img.at(0, i / w, i % w, ch) as f64)
        .collect();
    let mean = known.iter().sum::<f64>() / known.len().max(1) as f64;
    let mut cur: Vec<f64> =
        img.data().iter().enumerate().map(|(i, &v)| if hole(i / c / w, i / c % w) { mean } else { v as f64 }).collect();
    let iterations = 4 * h.max(w);
    for _ in 0..iterations {
        let prev = cur.clone();
        for y in 0..h {
            for x in 0..w {
                if !hole(y, x) {
                    continue;
                }
                for ch in 0..c {
                    let mut sum = 0.0;
                    let mut n = 0.0;
                    for (dy, dx) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
                        let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                        if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
                            sum += prev[(yy as usize * w + xx as usize) * c + ch];
                            n += 1.0;
                        }
                    }
                    cur[(y * w + x) * c + ch] = sum / n;
                }
            }
        }
    }
    Tensor::from_fn(img.shape(), |_, y, x, ch| cur[(y * w + x) * c + ch] as f32)
}

/// A coarse fill along lines: each run of hole pixels in a line is interpolated linearly between
/// the known pixels at its two ends (the 1-D diffusion along the line). The lines run along
/// the image's dominant structure — rows if the known pixels change less along x than along y,
/// columns otherwise — so straight structures (a texture's courses, a horizon) cross the hole.
/// Lines that are hole from edge to edge fall back to [`diffuse_fill`].
pub fn line_fill(img: &Tensor, mask: &Tensor) -> Tensor {
    let [_, h, w, c] = img.shape();
    let hole = |y: usize, x: usize| mask.at(0, y, x, 0) > 0.5;
    // Mean absolute difference between known neighbours along x and along y.
    let (mut gx, mut gy, mut nx, mut ny) = (0.0f64, 0.0f64, 0usize, 0usize);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                if x + 1 < w && !hole(y, x) && !hole(y, x + 1) {
                    gx += (img.at(0, y, x + 1, ch) - img.at(0, y, x, ch)).abs() as f64;
                    nx += 1;
                }
                if y + 1 < h && !hole(y, x) && !hole(y + 1, x) {
                    gy += (img.at(0, y + 1, x, ch) - img.at(0, y, x, ch)).abs() as f64;
                    ny += 1;
                }
            }
        }
    }
    let along_rows = gx / nx.max(1) as f64 <= gy / ny.max(1) as f64;
    // Line k, position t → pixel (y, x).
    let (lines, len) = if along_rows { (h, w) } else { (w, h) };
    let at = |k: usize, t: usize| if along_rows { (k, t) } else { (t, k) };
    let fallback = diffuse_fill(img, mask);
    let mut out = img.clone();
    let data = out.data_mut();
    for k in 0..lines {
        let mut t = 0;
        while t < len {
            let (y, x) = at(k, t);
            if !hole(y, x) {
                t += 1;
                continue;
            }
            let t0 = t;
            while t < len && hole(at(k, t).0, at(k, t).1) {
                t += 1;
            }
            let (before, after) = (t0.checked_sub(1), (t < len).then_some(t));
            for tt in t0..t {
                let (y, x) = at(k, tt);
                for ch in 0..c {
                    let value = |p: usize| img.at(0, at(k, p).0, at(k, p).1, ch);
                    data[(y * w + x) * c + ch] = match (before, after) {
                        (Some(a), Some(b)) => {
                            let f = (tt - a) as f32 / (b - a) as f32;
                            value(a) * (1.0 - f) + value(b) * f
                        }
                        (Some(a), None) => value(a),
                        (None, Some(b)) => value(b),
                        (None, None) => fallback.at(0, y, x, ch),
                    };
                }
            }
        }
    }
    out
}

/// `y` inside the hole, `img` outside.
pub fn composite(img: &Tensor, y: &Tensor, mask: &Tensor) -> Tensor {
    Tensor::from_fn(
        img.shape(),
        |_, yy, x, c| {
            if mask.at(0, yy, x, 0) > 0.5 {
                y.at(0, yy, x, c)
            } else {
                img.at(0, yy, x, c)
            }
        },
    )
}

/// `img` with the hole painted white.
pub fn with_hole(img: &Tensor, mask: &Tensor) -> Tensor {
    Tensor::from_fn(img.shape(), |_, y, x, c| if mask.at(0, y, x, 0) > 0.5 { 255.0 } else { img.at(0, y, x, c) })
}
