//! `reconstruct` and `fill` on the user's images, and the image helpers the demo shares.

use std::path::{Path, PathBuf};

use clap::Args;
use contextual_attention::{flow, io, Output, Tensor};
use image::imageops::FilterType;

use super::{check_writable, CliResult, LayerArgs};

#[derive(Args)]
pub struct ReconstructArgs {
    /// Image whose patches are used (b).
    #[arg(long)]
    pub source: PathBuf,
    /// Image to rebuild (f).
    #[arg(long)]
    pub target: PathBuf,
    /// Output image.
    #[arg(long)]
    pub out: PathBuf,
    /// Flow image (colour = where each patch came from).
    #[arg(long)]
    pub flow: Option<PathBuf>,
    #[command(flatten)]
    pub layer: LayerArgs,
}

#[derive(Args)]
pub struct FillArgs {
    /// Image with a hole.
    #[arg(long)]
    pub image: PathBuf,
    /// Mask image of the same size: white (> 127) = hole.
    #[arg(long)]
    pub mask: PathBuf,
    /// Output image.
    #[arg(long)]
    pub out: PathBuf,
    /// Flow image.
    #[arg(long)]
    pub flow: Option<PathBuf>,
    /// Write the coarse (diffusion) fill the layer starts from here.
    #[arg(long)]
    pub coarse: Option<PathBuf>,
    #[command(flatten)]
    pub layer: LayerArgs,
}

/// Resizes a `[1, H, W, C]` tensor of 0–255 values (C = 1 or 3) with a cubic filter.
pub fn resize(t: &Tensor, h: usize, w: usize) -> Tensor {
    let [_, th, tw, c] = t.shape();
    let (w32, h32) = (w as u32, h as u32);
    // The image crate clamps f32 pixels to 0..1, so resize in that range.
    let unit: Vec<f32> = t.data().iter().map(|v| v / 255.0).collect();
    let data = if c == 3 {
        let img =
            image::ImageBuffer::<image::Rgb<f32>, Vec<f32>>::from_raw(tw as u32, th as u32, unit).expect("sizes agree");
        image::imageops::resize(&img, w32, h32, FilterType::CatmullRom).into_raw()
    } else {
        let img = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(tw as u32, th as u32, unit)
            .expect("sizes agree");
        image::imageops::resize(&img, w32, h32, FilterType::CatmullRom).into_raw()
    };
    Tensor::new([1, h, w, c], data.into_iter().map(|v| v * 255.0).collect()).expect("sizes agree")
}

/// Crops `[1, H, W, C]` to the top-left `h × w`.
pub fn crop(t: &Tensor, h: usize, w: usize) -> Tensor {
    Tensor::from_fn([1, h, w, t.shape()[3]], |_, y, x, c| t.at(0, y, x, c))
}

/// Crops to multiples of `m` (the rate), as the original demo does.
pub fn crop_to_multiple(t: &Tensor, m: usize) -> CliResult<Tensor> {
    let [_, h, w, _] = t.shape();
    let (h2, w2) = (h / m * m, w / m * m);
    if h2 == 0 || w2 == 0 {
        return Err(format!("image of {w}×{h} pixels is smaller than the rate {m}").into());
    }
    Ok(crop(t, h2, w2))
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
    Tensor::new(img.shape(), cur.into_iter().map(|v| v as f32).collect()).expect("same shape")
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

/// Writes the flow image(s) of `out` to `path` (one per batch item: `_0`, `_1`, … when B > 1).
pub fn write_flow(path: &Path, out: &Output, stride: usize, rate: usize) -> CliResult {
    let (hf, wf) = out.grid;
    let batch = out.y.shape()[0];
    let images = flow::flow_image(&out.offsets, batch, hf, wf, stride, rate);
    for (n, rgb) in images.iter().enumerate() {
        let p = if batch > 1 { suffixed(path, n) } else { path.to_path_buf() };
        io::write_rgb8(&p, (wf * rate) as u32, (hf * rate) as u32, rgb)?;
    }
    Ok(())
}

/// `dir/name_N.ext` for `dir/name.ext`.
pub fn suffixed(path: &Path, n: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}_{n}.{}", ext.to_string_lossy()),
        None => format!("{stem}_{n}"),
    };
    path.with_file_name(name)
}

/// `contextual-attention reconstruct`.
pub fn reconstruct(a: ReconstructArgs) -> CliResult {
    check_writable(&a.out)?;
    if let Some(f) = &a.flow {
        check_writable(f)?;
    }
    let layer = a.layer.layer(2)?;
    let r = layer.params().rate;
    let b = crop_to_multiple(&io::read_image_rgb(&a.source)?, r)?;
    let f = crop_to_multiple(&io::read_image_rgb(&a.target)?, r)?;
    let out = super::run_layer(&layer, &f, &b, None, &[])?;
    io::write_image(&a.out, &out.y)?;
    if let Some(p) = &a.flow {
        write_flow(p, &out, layer.params().stride, r)?;
    }
    Ok(())
}

/// `contextual-attention fill`.
pub fn fill(a: FillArgs) -> CliResult {
    for p in [Some(&a.out), a.flow.as_ref(), a.coarse.as_ref()].into_iter().flatten() {
        check_writable(p)?;
    }
    let layer = a.layer.layer(2)?;
    let r = layer.params().rate;
    let img = io::read_image_rgb(&a.image)?;
    let mask = io::read_image_gray(&a.mask)?;
    if mask.shape()[1..3] != img.shape()[1..3] {
        return Err(format!(
            "{}: mask is {}×{} but the image is {}×{}; they must have the same size",
            a.mask.display(),
            mask.shape()[2],
            mask.shape()[1],
            img.shape()[2],
            img.shape()[1]
        )
        .into());
    }
    let mask = Tensor::from_fn(mask.shape(), |_, y, x, _| (mask.at(0, y, x, 0) > 127.0) as u8 as f32);
    let (img, mask) = (crop_to_multiple(&img, r)?, crop_to_multiple(&mask, r)?);
    let coarse = line_fill(&img, &mask);
    let out = super::run_layer(&layer, &coarse, &coarse, Some(&mask), &[])?;
    io::write_image(&a.out, &composite(&img, &out.y, &mask))?;
    if let Some(p) = &a.coarse {
        io::write_image(p, &coarse)?;
    }
    if let Some(p) = &a.flow {
        write_flow(p, &out, layer.params().stride, r)?;
    }
    Ok(())
}
