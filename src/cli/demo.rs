//! `contextual-attention demo` (the default command): the layer on the bundled images.

use std::path::{Path, PathBuf};

use clap::Args;
use contextual_attention::{io, Backend, ContextualAttention, Gpu, Output, Overlap, Params, Tensor};

use super::images::{crop_to_multiple, resize, write_flow};
use super::{ms, progress, timed, BackendArg, CliResult};
use contextual_attention::fill::{composite, line_fill, with_hole};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets");

#[derive(Args)]
pub struct DemoArgs {
    /// Longer side of the demo images in pixels (larger is slower: the work grows with its 4th power).
    #[arg(long, default_value_t = 160)]
    pub size: usize,
    /// Folder for the PNGs.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Where to run the layer (the CPU twin runs too, for the comparison, unless --no-compare).
    #[arg(long, value_enum, default_value_t = BackendArg::Gpu)]
    pub backend: BackendArg,
    /// Skip the comparison with the CPU twin.
    #[arg(long)]
    pub no_compare: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs { size: 160, out: PathBuf::from("out"), backend: BackendArg::Gpu, no_compare: false }
    }
}

struct Runner {
    layer_backend: Backend,
    compare: bool,
}

impl Runner {
    /// Runs the layer on the chosen backend and, if asked, on the CPU twin; prints times and the difference.
    fn run(&self, name: &str, params: Params, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> CliResult<Output> {
        let layer = ContextualAttention::with_backend(self.layer_backend.clone(), params.clone())?;
        let (out, t) = timed(|| layer.forward(f, b, mask));
        let out = out?;
        let [_, h, w, c] = f.shape();
        print!(
            "{name}: {w}×{h}×{c}, {}: {:.0} ms",
            match self.layer_backend {
                Backend::Gpu(_) => "GPU",
                Backend::Cpu => "CPU",
                Backend::Reference => "CPU twin",
            },
            ms(t)
        );
        let compared = match self.layer_backend {
            Backend::Gpu(_) => Some("GPU − CPU"),
            Backend::Cpu => Some("CPU − twin"),
            Backend::Reference => None,
        };
        if let Some(label) = compared.filter(|_| self.compare) {
            let cpu = ContextualAttention::reference(params)?;
            let (twin, tc) = timed(|| cpu.forward(f, b, mask));
            let twin = twin?;
            let agree = out.argmax.iter().zip(&twin.argmax).filter(|(a, b)| a == b).count();
            print!(
                ", CPU twin: {:.0} ms, max |{label}| = {:.3e} (values 0–255), argmax agrees at {}/{} queries",
                ms(tc),
                out.y.max_abs_diff(&twin.y)?,
                agree,
                out.argmax.len()
            );
        }
        println!();
        Ok(out)
    }
}

/// A bundled image: from `./assets` when run from the crate root (or a copy of it), else from
/// the folder the program was built in.
fn asset(name: &str) -> PathBuf {
    let local = Path::new("assets").join(name);
    if local.is_file() {
        local
    } else {
        Path::new(ASSETS).join(name)
    }
}

/// `contextual-attention demo`.
pub fn run(a: DemoArgs) -> CliResult {
    if a.size < 16 {
        return Err(format!("--size {} is too small; use at least 16", a.size).into());
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("{}: cannot create the output folder: {e}", a.out.display()))?;
    let layer_backend = match a.backend {
        BackendArg::Gpu => {
            let gpu = Gpu::new()?;
            println!("adapter: {}", gpu.describe());
            Backend::Gpu(gpu)
        }
        BackendArg::Cpu => {
            println!("backend: {}", contextual_attention::cpu::describe());
            Backend::Cpu
        }
        BackendArg::Reference => {
            println!("backend: CPU twin");
            Backend::Reference
        }
    };
    let runner = Runner { layer_backend, compare: !a.no_compare };
    let bar = progress(3, "demo");
    let out = |name: &str| a.out.join(name);

    // 1. Reconstruction (SPEC §3): rebuild the cat from the astronaut's patches; rate 2, fuse
    //    off, 0–255 values, no mask, the other parameters at the original's defaults.
    let target = io::read_image_rgb(&asset("chelsea.png"))?;
    let [_, th, tw, _] = target.shape();
    let scale = a.size as f64 / th.max(tw) as f64;
    let target = crop_to_multiple(
        &resize(&target, (th as f64 * scale).round() as usize, (tw as f64 * scale).round() as usize),
        2,
    )?;
    let side = (a.size * 2 / 3).max(8) / 2 * 2;
    let source = resize(&io::read_image_rgb(&asset("astronaut.png"))?, side, side);
    let params = Params { rate: 2, fuse: false, ..Default::default() };
    let rec = bar.suspend(|| runner.run("reconstruction", params, &target, &source, None))?;
    io::write_image(&out("reconstruction_target.png"), &target)?;
    io::write_image(&out("reconstruction_source.png"), &source)?;
    io::write_image(&out("reconstruction.png"), &rec.y)?;
    write_flow(&out("reconstruction_flow.png"), &rec, 1, 2)?;
    bar.inc(1);

    // 2. Hole filling on a texture: a coarse fill (interpolation across the hole along the
    //    texture's courses), then the layer with f = b = the coarse image and the hole as mask,
    //    as the models call it (rate 2, fuse on): the hole is rebuilt from sharp patches.
    let brick = io::read_image_gray(&asset("brick.png"))?;
    let brick = crop_to_multiple(&resize(&brick, a.size, a.size), 2)?;
    let [_, h, w, _] = brick.shape();
    let (hh, hw) = (h / 4, w / 3);
    let (y0, x0) = ((h - hh) / 2, (w - hw) / 2);
    let mask = Tensor::from_fn([1, h, w, 1], |_, y, x, _| {
        ((y0..y0 + hh).contains(&y) && (x0..x0 + hw).contains(&x)) as u8 as f32
    });
    let coarse = line_fill(&brick, &mask);
    let params = Params { rate: 2, ..Default::default() };
    let filled = bar.suspend(|| runner.run("hole filling", params, &coarse, &coarse, Some(&mask)))?;
    io::write_image(&out("fill_input.png"), &with_hole(&brick, &mask))?;
    io::write_image(&out("fill_coarse.png"), &coarse)?;
    io::write_image(&out("fill_result.png"), &composite(&brick, &filled.y, &mask))?;
    write_flow(&out("fill_flow.png"), &filled, 1, 2)?;
    bar.inc(1);
    // 3. The seed's identity experiment: f = b, no mask, fuse off, softmax scale 1000, so the
    //    attention is one-hot on each query's own patch and y should reproduce b. |y − b| maps
    //    show where the original's constant divisor is wrong, and that exact overlap is not.
    let side = (a.size / 2).max(12) / 6 * 6; // divisible by rates 2 and 3
    let cat = crop_to_multiple(&io::read_image_gray(&asset("chelsea.png")).map(|t| resize(&t, side, side))?, 6)?;
    for (name, rate, kernel, overlap) in [
        ("identity_quarter_r2k4", 2, 4, Overlap::Quarter),
        ("identity_quarter_r3k4", 3, 4, Overlap::Quarter),
        ("identity_exact_r3k4", 3, 4, Overlap::Exact),
    ] {
        let params = Params {
            rate,
            paste_kernel: Some(kernel),
            overlap,
            fuse: false,
            softmax_scale: 1000.0,
            ..Default::default()
        };
        let res = bar.suspend(|| runner.run(name, params, &cat, &cat, None))?;
        let diff = Tensor::from_fn(cat.shape(), |_, y, x, c| (res.y.at(0, y, x, c) - cat.at(0, y, x, c)).abs());
        let max = diff.data().iter().copied().fold(0.0f32, f32::max);
        println!("  {name}: max |y − b| = {max:.3e} (values 0–255)");
        io::write_image(&out(&format!("{name}.png")), &diff)?;
    }
    bar.inc(1);
    bar.finish_and_clear();
    println!(
        "wrote {}/{{reconstruction,reconstruction_target,reconstruction_source,reconstruction_flow,fill_input,fill_coarse,fill_result,fill_flow,identity_*}}.png",
        a.out.display()
    );
    Ok(())
}
