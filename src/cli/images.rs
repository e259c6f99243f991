//! `reconstruct` and `fill` on the user's images, and the image helpers the demo shares.

use std::path::{Path, PathBuf};

use clap::Args;
use contextual_attention::fill::{fill as fill_hole, FillParams, Finest};
use contextual_attention::{flow, io, Output, Tensor};
use image::imageops::FilterType;

use super::{check_writable, BackendArg, CliResult, LayerArgs};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FinestArg {
    /// Each hole pixel copies what its match at the next coarser level points to.
    Copy,
    /// Iterate the layer at full resolution too.
    Iterate,
}

#[derive(Args)]
pub struct FillArgs {
    /// Image with something to remove (PNG, JPEG, …; RGB or grey).
    #[arg(long)]
    pub image: PathBuf,
    /// Mask image of the same size: every non-black pixel is hole.
    #[arg(long)]
    pub mask: PathBuf,
    /// Output image (PNG), written only when the fill succeeds.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the start of the finest level (the coarser levels' result, upsampled) here.
    #[arg(long)]
    pub coarse: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Pyramid levels [default: until the hole is at most 2·rate pixels deep].
    #[arg(long)]
    pub levels: Option<usize>,
    /// Iterations at the coarsest level (one fewer per finer level, at least one).
    #[arg(long, default_value_t = FillParams::default().iterations)]
    pub iterations: usize,
    /// Matching patch size (on the level downscaled by the rate).
    #[arg(long, default_value_t = FillParams::default().patch)]
    pub patch: usize,
    /// The layer's rate on the larger levels.
    #[arg(long, default_value_t = FillParams::default().rate)]
    pub rate: usize,
    /// Levels below the finest whose shorter side is under this many pixels match at rate 1.
    #[arg(long, value_name = "PIXELS", default_value_t = FillParams::default().rate_one_below)]
    pub rate_one_below: usize,
    /// Paste kernel as a multiple of the rate.
    #[arg(long, default_value_t = FillParams::default().paste)]
    pub paste: usize,
    /// The finest level: copy the coarser level's matches (sharp, fast) or iterate (smoother).
    #[arg(long, value_enum, default_value_t = FinestArg::Copy)]
    pub finest: FinestArg,
    /// Softmax scale at a level's first iteration.
    #[arg(long, default_value_t = FillParams::default().scale.0)]
    pub scale_start: f32,
    /// Softmax scale at a level's last iteration.
    #[arg(long, default_value_t = FillParams::default().scale.1)]
    pub scale_end: f32,
    /// Block side in pixels (each block with hole pixels is one layer call).
    #[arg(long, default_value_t = FillParams::default().block)]
    pub block: usize,
    /// Pixels of context around a block that patches are copied from.
    #[arg(long, default_value_t = FillParams::default().context)]
    pub context: usize,
    /// At the finest level, hole pixels this close to the hole's border re-choose their copies to
    /// continue their surroundings (0: off).
    #[arg(long, value_name = "PIXELS", default_value_t = FillParams::default().refine)]
    pub refine: usize,
    /// The layer's fuse kernels that compete on the coarse levels; the fill goes on with the one
    /// whose result has the lowest completion energy there (one kernel: no competition).
    #[arg(long, value_name = "K,K,..", value_delimiter = ',', default_values_t = FillParams::default().fuse)]
    pub fuse: Vec<usize>,
    /// How many levels, from the coarsest, the competing fuse kernels fill before one is chosen.
    #[arg(long, value_name = "LEVELS", default_value_t = FillParams::default().compete_levels)]
    pub compete_levels: usize,
    /// Before the choice, a kernel whose completion energy after a level is above this multiple
    /// of the lowest drops out.
    #[arg(long, value_name = "RATIO", default_value_t = FillParams::default().compete_margin)]
    pub compete_margin: f32,
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
    for p in [Some(&a.out), a.coarse.as_ref()].into_iter().flatten() {
        check_writable(p)?;
    }
    let params = FillParams {
        levels: a.levels,
        iterations: a.iterations,
        patch: a.patch,
        rate: a.rate,
        rate_one_below: a.rate_one_below,
        paste: a.paste,
        finest: match a.finest {
            FinestArg::Copy => Finest::Copy,
            FinestArg::Iterate => Finest::Iterate,
        },
        scale: (a.scale_start, a.scale_end),
        block: a.block,
        context: a.context,
        refine: a.refine,
        fuse: a.fuse,
        compete_levels: a.compete_levels,
        compete_margin: a.compete_margin,
    };
    params.validate()?;
    let img = io::read_image(&a.image)?;
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
    let hole = Tensor::from_fn(mask.shape(), |_, y, x, _| (mask.at(0, y, x, 0) > 0.0) as u8 as f32);
    let backend = super::backend(a.backend)?;
    let hole_pixels = hole.data().iter().filter(|&&v| v > 0.0).count();
    if hole_pixels == 0 {
        eprintln!("{}: the mask has no hole pixel (all black); writing the image unchanged", a.mask.display());
    }
    let bar = super::progress(0, "layer calls");
    bar.disable_steady_tick();
    let (filled, t) = super::timed(|| {
        fill_hole(&backend, &img, &hole, &params, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
    });
    bar.finish_and_clear();
    let filled = filled?;
    let chosen = if filled.energies.is_empty() {
        String::new()
    } else {
        let energies: Vec<String> =
            filled.energies.iter().map(|(level, k, e)| format!("level {level} kernel {k}: {e:.5}")).collect();
        format!("; fuse kernel {} chosen (completion energies {})", filled.fuse_k, energies.join(", "))
    };
    eprintln!(
        "filled {hole_pixels} pixels in {:.0} ms on {}: {} levels, {} layer calls, {} queries{chosen}",
        super::ms(t),
        backend.describe(),
        filled.levels,
        filled.calls,
        filled.queries_computed
    );
    io::write_image(&a.out, &filled.result)?;
    if let Some(p) = &a.coarse {
        io::write_image(p, &filled.coarse)?;
    }
    Ok(())
}
