//! Hole filling driven by the layer: a non-learned completion in the manner of Wexler et al.
//! and PatchMatch-based content-aware fill, with the layer's soft patch voting in place of
//! nearest-neighbour search.
//!
//! The image goes down a pyramid (halving, hole-aware averages) until the hole is a few
//! patches wide. At the coarsest level the hole starts as a diffusion of its border. At each
//! level, a few iterations of: attend (every query whose paste reaches the hole against the
//! patches of its surroundings that do not touch the hole: `exclude` masking, spatial fuse,
//! exact overlap, a paste kernel of 3·rate), paste, write the result back into the hole. At
//! the coarsest level the softmax scale grows from iteration to iteration so the votes sharpen
//! from the diffusion's averages to copies; the finer levels start from copies and keep the
//! last scale (averaging a copy again at a low scale would make it as smooth as the
//! diffusion, and the next level would then match smooth sources). Small levels match at
//! rate 1, larger ones at the layer's rate. A level starts from the coarser one's matches
//! carried up (each hole pixel copies the pixel at twice its coarse displacement) where they
//! point outside the hole, and from its upsampled result elsewhere; by default the finest
//! level does only that, with the carried matches made coherent first and the copies next to
//! the hole's border re-chosen to continue what surrounds them ([`Finest::Copy`],
//! [`FillParams::refine`]).
//!
//! Which fuse kernel (the layer's `fuse_k`: how far along a diagonal a match must agree with
//! its neighbours') suits an image depends on it: photographs want short coherent pieces, a
//! regular texture such as a brick wall wants its courses continued over longer runs. So the
//! kernels of [`FillParams::fuse`] compete: each fills the coarse levels, and the fill goes on
//! with the one whose result has the lowest completion energy there ([`Filled::energies`]:
//! the objective of Wexler et al. with the search limited to what was copied); a kernel far
//! behind after a level drops out early to save time.
//!
//! The layer matches by `f·b/|b|`, which ignores a patch's brightness (a dark flat patch
//! matches a bright flat one). Each pixel gets one more channel holding the constant
//! [`ANCHOR`]; with it large next to the pixel values, `f·b/|b|` is a constant minus
//! `|f − b|²/(2·ANCHOR·√n)` (n pixels per patch) up to terms of order `(|b|/ANCHOR)²`, so
//! the layer ranks patches by their sum of squared differences, as PatchMatch does. The extra
//! channel is dropped from the paste.
//!
//! Work is limited to the hole (SPEC §R): a level is cut into blocks, and for each block
//! holding hole pixels the layer runs on a window around it (queries) against a larger window
//! of context (patches), with the block's hole as its region, so the cost follows the hole's
//! area, not the image's.
//!
//! Images are `[1, H, W, C]` tensors of any value range and channel count (RGB, grey); a hole
//! mask is `[1, H, W, 1]`, hole where it is above 0.5.

use crate::error::{Error, Result};
use crate::layer::{Backend, ContextualAttention, RunOptions};
use crate::params::{FuseMode, Masking, Overlap, Params};
use crate::tensor::Tensor;

/// How [`fill`] works; the defaults are what the README's evaluation measured.
#[derive(Clone, Debug, PartialEq)]
pub struct FillParams {
    /// Pyramid levels (1: the full resolution only). `None`: halve until the hole is at most
    /// `2·rate` pixels from its border (or the image is 32 pixels on its short side).
    pub levels: Option<usize>,
    /// Iterations at the coarsest level; each finer level does one fewer, at least one.
    pub iterations: usize,
    /// Matching patch size (the layer's `ksize`, on the grid downscaled by `rate`).
    pub patch: usize,
    /// The layer's rate on the finest level and on levels whose shorter side is at least
    /// `rate_one_below` pixels: matching on the level downscaled by it.
    pub rate: usize,
    /// Levels below the finest whose shorter side is under this many pixels match at rate 1
    /// (every pixel): they are small, and matching there decides what the hole is made of.
    pub rate_one_below: usize,
    /// The paste kernel as a multiple of the level's rate (the layer's K = `paste`·rate;
    /// each pixel is the average of `paste`² votes).
    pub paste: usize,
    /// What the finest level does (with more than one level).
    pub finest: Finest,
    /// How sharply the votes prefer close patches at the coarsest level's first and last
    /// iteration (geometric in between; the finer levels use the last): a patch's weight is
    /// `exp(−scale · d)`, d its mean squared difference per pixel to the query's patch (values
    /// divided by 255, summed over channels, and over the fuse's neighbours).
    pub scale: (f32, f32),
    /// Side in pixels of the blocks a level is cut into (one layer call per block with hole).
    pub block: usize,
    /// Pixels of context around a block whose patches may be copied into it.
    pub context: usize,
    /// At the finest level ([`Finest::Copy`]), the hole pixels this close to a known pixel
    /// re-choose their copies to continue their surroundings (window `2·refine + 1`; 0: off).
    pub refine: usize,
    /// The layer's fuse kernels (`fuse_k`) that compete: each fills the coarsest
    /// [`FillParams::compete_levels`] levels (unless it drops out, see
    /// [`FillParams::compete_margin`]), and the fill goes on with the one whose result there
    /// has the lowest completion energy ([`Filled::energies`]). A small kernel suits
    /// photographs (short coherent pieces), a larger one regular textures (a brick wall's
    /// courses kept straight over longer runs). One kernel: no competition.
    pub fuse: Vec<usize>,
    /// How many levels, from the coarsest, the [`FillParams::fuse`] kernels fill before one is
    /// chosen: at most all the levels that run the layer but the last (the largest, which takes
    /// most of the time), or that one when it is the only one.
    pub compete_levels: usize,
    /// After each level before the choice, a kernel whose energy is above this multiple of
    /// the lowest drops out (it saves the next levels' time; ≥ 1).
    pub compete_margin: f32,
}

/// What [`fill`] does at the finest level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finest {
    /// Each hole pixel copies the pixel its match at the next coarser level points to (the
    /// displacement doubled), as PatchMatch carries its offsets up the pyramid: full-resolution
    /// detail, no layer call at the largest size. The coarser level's matches are first made
    /// coherent (a mode filter): a cell whose 3×3 neighbourhood agrees more on another
    /// displacement than on its own takes that one, so the copies come in whole pieces
    /// rather than a speckle of 2×2 pixel blocks from unrelated places. Then the copies within
    /// [`FillParams::refine`] pixels of the hole's border are re-chosen against the known
    /// pixels around them (PatchMatch-style propagation and a one-pixel search).
    Copy,
    /// The finest level iterates like the others (smoother, about twice the time).
    Iterate,
}

impl Default for FillParams {
    /// The defaults the README's evaluation measured.
    fn default() -> Self {
        FillParams {
            levels: None,
            iterations: 3,
            patch: 3,
            rate: 2,
            rate_one_below: 300,
            paste: 3,
            finest: Finest::Copy,
            scale: (100.0, 1000.0),
            block: 32,
            context: 64,
            refine: 3,
            fuse: vec![3, 7],
            compete_levels: 2,
            compete_margin: 1.1,
        }
    }
}

impl FillParams {
    /// Checks the parameters; the error names the one out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: String, reason: &str| Err(Error::param(name, value, reason.to_string()));
        if self.levels == Some(0) {
            return bad("levels", "0".into(), "at least 1 (the full resolution)");
        }
        if self.iterations == 0 {
            return bad("iterations", "0".into(), "at least 1");
        }
        if self.rate == 0 || self.patch == 0 || self.paste == 0 {
            let value = format!("{}/{}/{}", self.rate, self.patch, self.paste);
            return bad("rate/patch/paste", value, "each at least 1");
        }
        if !(self.scale.0 > 0.0 && self.scale.1 > 0.0 && self.scale.0.is_finite() && self.scale.1.is_finite()) {
            return bad("scale", format!("{:?}", self.scale), "two positive finite numbers");
        }
        if self.block < 4 * self.rate {
            return bad("block", self.block.to_string(), "at least 4·rate pixels");
        }
        if self.fuse.is_empty() || self.fuse.contains(&0) {
            return bad("fuse", format!("{:?}", self.fuse), "one or more kernel sizes, each at least 1");
        }
        if self.compete_levels == 0 {
            return bad("compete_levels", "0".into(), "at least 1");
        }
        if !(self.compete_margin >= 1.0 && self.compete_margin.is_finite()) {
            return bad("compete_margin", self.compete_margin.to_string(), "a finite number, at least 1");
        }
        Ok(())
    }

    /// The rate of a level whose shorter side is `side` pixels.
    fn rate_at(&self, side: usize, finest: bool) -> usize {
        if side < self.rate_one_below && !finest {
            1
        } else {
            self.rate
        }
    }

    /// The layer's parameters for weights `exp(−scale · d)` (see [`FillParams::scale`]):
    /// the layer's score is `−|f − b|²/(2·ANCHOR·√n)` up to a constant, d = `|f − b|²/n`.
    fn layer(&self, scale: f32, rate: usize, fuse_k: usize, backend: &Backend) -> Params {
        let n = (self.patch * self.patch) as f32;
        Params {
            ksize: self.patch,
            fuse_k,
            rate,
            paste_kernel: Some(self.paste * rate),
            softmax_scale: scale * 2.0 * ANCHOR / n.sqrt(),
            fuse: true,
            fuse_mode: FuseMode::Spatial,
            masking: Masking::Exclude,
            overlap: Overlap::Exact,
            // See CPU_FILL_BUDGET; the other backends keep their default.
            memory_budget: matches!(backend, Backend::Cpu).then_some(CPU_FILL_BUDGET),
            ..Params::default()
        }
    }
}

/// The constant of the extra channel that turns the layer's `f·b/|b|` into a ranking by
/// squared differences (see the module's header): large next to the centred pixel values
/// (|v| ≤ 1), small enough that f32 keeps the differences (scores ≈ ANCHOR·√n ≈ 24).
pub const ANCHOR: f32 = 8.0;

/// The memory budget of the fill's layer calls on the CPU backend. Its default follows the size
/// of a call's inputs (8 MiB at least, [`crate::cpu::default_budget`]); the fill's calls are
/// small windows, so that would cut a call's scores into many key tiles, each recomputing its
/// fuse halo. Measured on the astronaut's first brush mask (2 vCPUs): 8, 16, 32 and 64 MiB took
/// 3.7, 3.2, 3.0 and 3.0 s, the same result.
const CPU_FILL_BUDGET: u64 = 64 << 20;

/// Sweeps of the border refinement ([`FillParams::refine`]): two each way.
const REFINE_SWEEPS: usize = 4;

/// Half the side of the windows the completion energy compares ([`Level::energy`]): 5×5.
const ENERGY_RADIUS: usize = 2;

/// What [`fill`] produces.
#[derive(Clone, Debug)]
pub struct Filled {
    /// The image with its hole filled; every pixel outside the hole is the input's.
    pub result: Tensor,
    /// The start of the finest level: the coarser levels' result, upsampled (the coarsest
    /// level's diffusion when there is one level).
    pub coarse: Tensor,
    /// Pyramid levels used (0 when the mask has no hole pixel and the image is returned as is).
    pub levels: usize,
    /// Layer calls made, and the queries they computed (SPEC §R).
    pub calls: usize,
    /// See `calls`.
    pub queries_computed: usize,
    /// Where each pixel of the hole was copied from, as (rows, columns) from the pixel (`None`
    /// outside the hole and where the last step averaged rather than copied), row-major `H·W`.
    pub shifts: Vec<Option<(i32, i32)>>,
    /// The fuse kernel the fill went on with (see [`FillParams::fuse`]).
    pub fuse_k: usize,
    /// The competition of the fuse kernels: (level, counted from the coarsest from 0; kernel;
    /// its completion energy there) for each kernel still in at each level before the choice.
    /// The energy is the mean squared difference per pixel and channel (values divided by
    /// 255) between each hole pixel's 5×5 window and the best of the source windows its
    /// neighbours copy from: low where the fill is made of whole pieces that meet without
    /// seams. Empty with one kernel.
    pub energies: Vec<(usize, usize, f64)>,
}

impl Filled {
    /// The shifts drawn as a flow image (RGB8, `H·W·3`, the Middlebury colour code of
    /// [`crate::flow`]: hue the direction, saturation the length over the longest): white where
    /// nothing was copied.
    pub fn flow_image(&self) -> Vec<u8> {
        let [_, h, w, _] = self.result.shape();
        let offsets: Vec<i32> = (0..h * w)
            .flat_map(|p| {
                let (dy, dx) = self.shifts[p].unwrap_or((0, 0));
                [(p / w) as i32 + dy, (p % w) as i32 + dx]
            })
            .collect();
        crate::flow::flow_colors(&offsets, 1, h, w, 1)
    }
}

/// Fills the hole of `image` `[1, H, W, C]` marked by `hole` `[1, H, W, 1]` (> 0.5) on
/// `backend` (see the module's header). `progress(done, total)` is told after each layer call.
///
/// An empty hole returns the image unchanged (`levels` 0); a hole covering every pixel is an
/// error (nothing to copy from).
///
/// ```
/// use contextual_attention::fill::{fill, FillParams};
/// use contextual_attention::{Backend, Tensor};
/// let image = Tensor::from_fn([1, 48, 48, 1], |_, y, x, _| ((x / 4 + y / 4) % 2) as f32 * 255.0);
/// let hole = Tensor::from_fn([1, 48, 48, 1], |_, y, x, _| ((20..28).contains(&y) && (16..30).contains(&x)) as u8 as f32);
/// let filled = fill(&Backend::Cpu, &image, &hole, &FillParams::default(), &mut |_, _| {}).unwrap();
/// assert_eq!(filled.result.at(0, 0, 0, 0), image.at(0, 0, 0, 0));
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn fill(
    backend: &Backend,
    image: &Tensor,
    hole: &Tensor,
    params: &FillParams,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Filled> {
    pollster::block_on(fill_async(backend, image, hole, params, progress))
}

/// [`fill`] as a future: each layer call on the GPU is awaited ([`ContextualAttention::run_async`]),
/// so in the browser (feature `webgpu`), where this is the only way to fill, the page stays
/// responsive and `progress` can update it between calls. Natively it is what [`fill`] blocks on.
pub async fn fill_async(
    backend: &Backend,
    image: &Tensor,
    hole: &Tensor,
    params: &FillParams,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Filled> {
    params.validate()?;
    let [n, h, w, c] = image.shape();
    if n != 1 {
        return Err(Error::shape("image", format!("fill takes one image, [1, H, W, C]; got batch {n}")));
    }
    if hole.shape() != [1, h, w, 1] {
        return Err(Error::shape(
            "mask",
            format!("the hole mask must be [1, {h}, {w}, 1] like the image, got {:?}", hole.shape()),
        ));
    }
    let holes: Vec<bool> = hole.data().iter().map(|&v| v > 0.5).collect();
    let hole_pixels = holes.iter().filter(|&&x| x).count();
    if hole_pixels == 0 {
        let shifts = vec![None; h * w];
        return Ok(Filled {
            result: image.clone(),
            coarse: image.clone(),
            levels: 0,
            calls: 0,
            queries_computed: 0,
            shifts,
            fuse_k: params.fuse[0],
            energies: Vec::new(),
        });
    }
    if hole_pixels == h * w {
        return Err(Error::shape("mask", "the hole covers the whole image: there is nothing to copy from".to_string()));
    }
    // Centre each channel on the known pixels' mean and bring 0–255 to within ±1, so that
    // the softmax scale means the same for every image.
    let mut mean = vec![0.0f64; c];
    for (pixel, _) in image.data().chunks(c).zip(&holes).filter(|(_, &is_hole)| !is_hole) {
        for (m, &v) in mean.iter_mut().zip(pixel) {
            *m += v as f64;
        }
    }
    let known = (h * w - hole_pixels) as f64;
    let mean: Vec<f32> = mean.iter().map(|m| (m / known) as f32).collect();
    let scaled = Level {
        img: image.data().iter().enumerate().map(|(i, &v)| (v - mean[i % c]) / 255.0).collect(),
        hole: holes,
        h,
        w,
        c,
    };

    let mut pyramid = vec![scaled];
    loop {
        let top = pyramid.last().expect("non-empty");
        let enough = match params.levels {
            Some(levels) => pyramid.len() >= levels,
            None => top.hole_radius() <= 2 * params.rate,
        };
        if enough || top.h.min(top.w) / 2 < 32.max(4 * params.rate) {
            break;
        }
        let down = top.down();
        if down.hole.iter().all(|&x| x) {
            break;
        }
        pyramid.push(down);
    }
    let levels = pyramid.len();
    // Iterations of the level k steps above the coarsest.
    let iterations = |k: usize| match params.finest {
        Finest::Copy if levels > 1 && k + 1 == levels => 0,
        _ => params.iterations.saturating_sub(k).max(1),
    };
    // The competing fuse kernels fill the levels up to `decide` each (see FillParams::fuse),
    // not the last that runs the layer (the largest, most of the time) unless it is the only one.
    let layer_levels = (0..levels).filter(|&k| iterations(k) > 0).count();
    let decide = params.compete_levels.min(layer_levels.saturating_sub(1).max(1)) - 1;
    let competing = |k: usize| if k <= decide { params.fuse.len() } else { 1 };
    // Layer calls of one branch per level.
    let level_calls: Vec<usize> =
        pyramid.iter().rev().enumerate().map(|(k, l)| iterations(k) * l.blocks(params.block).len()).collect();
    let mut work = Work {
        done: 0,
        total: level_calls.iter().enumerate().map(|(k, calls)| competing(k) * calls).sum(),
        calls: 0,
        queries_computed: 0,
    };
    let mut branches: Vec<Branch> =
        params.fuse.iter().map(|&fuse_k| Branch { fuse_k, current: None, coarse: Vec::new() }).collect();
    let mut energies = Vec::new();
    for (k, level) in pyramid.iter().rev().enumerate() {
        // The coarsest level's start, the same for every branch.
        let diffused = (k == 0).then(|| level.diffused());
        for branch in &mut branches {
            let mut shifts = vec![None; level.h * level.w];
            let mut x = match &branch.current {
                None => diffused.clone().expect("only the coarsest level has no coarser one"),
                Some((prev, prev_shifts)) => {
                    let coarser = &pyramid[levels - k];
                    if iterations(k) == 0 {
                        // A level that only copies (Finest::Copy) copies coherent pieces, and
                        // its border continues the surroundings.
                        let carried = coherent(prev_shifts, coarser.h, coarser.w);
                        let mut x = level.upsampled_into(prev, &carried, coarser, &mut shifts);
                        level.refine_border(&mut x, &mut shifts, params.refine);
                        x
                    } else {
                        level.upsampled_into(prev, prev_shifts, coarser, &mut shifts)
                    }
                }
            };
            if k + 1 == levels {
                branch.coarse = x.clone();
            }
            let rate = params.rate_at(level.h.min(level.w), k + 1 == levels);
            let ramp = k == 0;
            let setup = LevelRun { params, backend, rate, fuse_k: branch.fuse_k, iterations: iterations(k), ramp };
            level.iterate(&setup, (&mut x, &mut shifts), &mut work, progress).await?;
            branch.current = Some((x, shifts));
        }
        if k <= decide && branches.len() > 1 {
            let measured: Vec<f64> = branches
                .iter()
                .map(|branch| {
                    let (x, shifts) = branch.current.as_ref().expect("the level is done");
                    level.energy(x, shifts, ENERGY_RADIUS)
                })
                .collect();
            energies.extend(branches.iter().zip(&measured).map(|(branch, &e)| (k, branch.fuse_k, e)));
            // The lowest energy; the first listed of equals.
            let best = (0..measured.len()).min_by(|&a, &b| measured[a].total_cmp(&measured[b])).expect("branches");
            if k == decide {
                branches.swap(0, best);
                branches.truncate(1);
            } else {
                let bound = params.compete_margin as f64 * measured[best];
                let mut index = 0..;
                branches.retain(|_| {
                    let i = index.next().expect("unbounded");
                    i == best || measured[i] <= bound
                });
                // The dropped kernels' calls on the levels up to the choice will not be made.
                let dropped = measured.len() - branches.len();
                work.total -= dropped * level_calls[k + 1..=decide].iter().sum::<usize>();
            }
        }
    }
    let Branch { fuse_k, current, coarse } = branches.pop().expect("one branch left");
    let (x, shifts) = current.expect("at least one level");
    let back = |v: &[f32]| -> Tensor {
        let data = v.iter().enumerate().map(|(i, &x)| x * 255.0 + mean[i % c]).collect();
        Tensor::new([1, h, w, c], data).expect("sizes agree")
    };
    let filled = back(&x);
    let result = composite(image, &filled, hole);
    Ok(Filled {
        result,
        coarse: back(&coarse),
        levels,
        calls: work.calls,
        queries_computed: work.queries_computed,
        shifts,
        fuse_k,
        energies,
    })
}

/// One competing fuse kernel's way through the pyramid (see [`FillParams::fuse`]).
struct Branch {
    fuse_k: usize,
    /// The image of the level done last, and where each of its hole pixels was copied from.
    current: Option<(Vec<f32>, Vec<Shift>)>,
    /// The start of the finest level, once reached.
    coarse: Vec<f32>,
}

/// The layer calls of a fill: how many are done of the total (for the progress), made, and
/// the queries they computed.
struct Work {
    done: usize,
    total: usize,
    calls: usize,
    queries_computed: usize,
}

/// How one level of one competing branch runs.
struct LevelRun<'a> {
    params: &'a FillParams,
    backend: &'a Backend,
    rate: usize,
    fuse_k: usize,
    /// Layer passes over the level's hole (0: the level only copies).
    iterations: usize,
    /// Whether the softmax scale ramps over the iterations (the coarsest level), see
    /// [`FillParams::scale`].
    ramp: bool,
}

/// Where a hole pixel's value was copied from, as (rows, columns) from the pixel: the
/// displacement from its query to the patch with the largest attention. `None`: not filled yet.
type Shift = Option<(i32, i32)>;

/// One level of the pyramid: the centred image `[h, w, c]` (hole pixels hold no information)
/// and its hole.
struct Level {
    img: Vec<f32>,
    hole: Vec<bool>,
    h: usize,
    w: usize,
    c: usize,
}

/// A rectangle `y0..y1 × x0..x1` of a level.
#[derive(Clone, Copy, Debug)]
struct Rect {
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
}

impl Level {
    /// The completion energy of `x` (Wexler et al.'s objective, with the search limited to
    /// what the fill copied): per hole pixel, the least sum of squared differences between the
    /// `(2·radius+1)²` window around it in `x` and a source window (inside the level, no hole
    /// pixel) at one of the shifts found in that window; the mean over hole pixels and
    /// channels. A window inside one copied piece costs nothing, one across a seam between
    /// pieces (or between the fill and the known pixels) costs what the best of its pieces
    /// fails to explain. Hole pixels without a usable shift in their window are left out.
    fn energy(&self, x: &[f32], shifts: &[Shift], radius: usize) -> f64 {
        let (h, w, r) = (self.h as i64, self.w as i64, radius as i64);
        let source_ok = self.source_windows(radius);
        let (mut total, mut n) = (0.0f64, 0usize);
        let mut candidates: Vec<(i32, i32)> = Vec::new();
        for p in (0..self.h * self.w).filter(|&i| self.hole[i]) {
            let (y, xx) = ((p / self.w) as i64, (p % self.w) as i64);
            candidates.clear();
            for py in (y - r).max(0)..(y + r + 1).min(h) {
                for px in (xx - r).max(0)..(xx + r + 1).min(w) {
                    if let Some(s) = shifts[(py * w + px) as usize] {
                        if !candidates.contains(&s) {
                            candidates.push(s);
                        }
                    }
                }
            }
            let least = candidates
                .iter()
                .map(|&(dy, dx)| (y + dy as i64, xx + dx as i64))
                .filter(|&(sy, sx)| source_ok(sy, sx))
                .map(|from| self.window_cost(x, (y, xx), from, radius, false))
                .min_by(f32::total_cmp);
            if let Some(cost) = least {
                total += cost as f64;
                n += 1;
            }
        }
        total / (n.max(1) * self.c) as f64
    }

    /// Whether the `(2·radius+1)²` window around a pixel can be copied from: inside the level,
    /// no hole pixel.
    fn source_windows(&self, radius: usize) -> impl Fn(i64, i64) -> bool {
        let (h, w, r) = (self.h as i64, self.w as i64, radius as i64);
        // 1 where a pixel's window of this radius holds a hole pixel.
        let near_hole = self.source_mask(radius);
        move |y, x| y >= r && x >= r && y + r < h && x + r < w && near_hole[(y * w + x) as usize] == 0.0
    }

    /// The sum of squared differences between the `(2·radius+1)²` window around `at` in `x`
    /// and the one around `from` in the level's known pixels (a source window), over the
    /// former's pixels inside the level, or only over its known ones.
    fn window_cost(&self, x: &[f32], at: (i64, i64), from: (i64, i64), radius: usize, known_only: bool) -> f32 {
        let (h, w, c, r) = (self.h as i64, self.w as i64, self.c, radius as i64);
        let mut cost = 0.0f32;
        for oy in -r..=r {
            for ox in -r..=r {
                let (py, px) = (at.0 + oy, at.1 + ox);
                if !(0..h).contains(&py) || !(0..w).contains(&px) || known_only && self.hole[(py * w + px) as usize] {
                    continue;
                }
                let a = (py * w + px) as usize * c;
                let b = ((from.0 + oy) * w + from.1 + ox) as usize * c;
                cost += x[a..a + c].iter().zip(&self.img[b..b + c]).map(|(u, v)| (u - v) * (u - v)).sum::<f32>();
            }
        }
        cost
    }

    /// The next coarser level: sizes halved (rounded up); a pixel is the mean of the known
    /// pixels of its 2×2, and hole only if all of them are (so the hole shrinks level by level
    /// and what is known stays an average of known pixels).
    fn down(&self) -> Level {
        let (h, w, c) = (self.h.div_ceil(2), self.w.div_ceil(2), self.c);
        let mut img = vec![0.0; h * w * c];
        let mut hole = vec![false; h * w];
        for y in 0..h {
            for x in 0..w {
                let fine: Vec<usize> = [(2 * y, 2 * x), (2 * y, 2 * x + 1), (2 * y + 1, 2 * x), (2 * y + 1, 2 * x + 1)]
                    .into_iter()
                    .filter(|&(yy, xx)| yy < self.h && xx < self.w)
                    .map(|(yy, xx)| yy * self.w + xx)
                    .collect();
                let known: Vec<usize> = fine.iter().copied().filter(|&i| !self.hole[i]).collect();
                hole[y * w + x] = known.is_empty();
                for ch in 0..c {
                    img[(y * w + x) * c + ch] =
                        known.iter().map(|&i| self.img[i * c + ch]).sum::<f32>() / known.len().max(1) as f32;
                }
            }
        }
        Level { img, hole, h, w, c }
    }

    /// The largest chessboard distance from a hole pixel to the nearest known pixel.
    fn hole_radius(&self) -> usize {
        self.distances().into_iter().max().unwrap_or(0)
    }

    /// Per pixel, the chessboard distance to the nearest known pixel (0 for known pixels).
    fn distances(&self) -> Vec<usize> {
        let (h, w) = (self.h, self.w);
        let mut dist: Vec<usize> = self.hole.iter().map(|&x| if x { usize::MAX } else { 0 }).collect();
        let mut frontier: Vec<usize> = (0..h * w).filter(|&i| !self.hole[i]).collect();
        let mut d = 0;
        while !frontier.is_empty() {
            d += 1;
            let mut next = Vec::new();
            for i in frontier {
                let (y, x) = (i / w, i % w);
                for yy in y.saturating_sub(1)..(y + 2).min(h) {
                    for xx in x.saturating_sub(1)..(x + 2).min(w) {
                        let j = yy * w + xx;
                        if dist[j] == usize::MAX {
                            dist[j] = d;
                            next.push(j);
                        }
                    }
                }
            }
            frontier = next;
        }
        dist
    }

    /// b's mask for the layer (1: not a source): the hole grown by `by` pixels (chessboard),
    /// so that no patch pasted into the hole overlaps it, whichever pixel of a `rate` cell the
    /// layer's downscale picks.
    fn source_mask(&self, by: usize) -> Vec<f32> {
        let (h, w) = (self.h, self.w);
        let mut out: Vec<f32> = self.hole.iter().map(|&x| x as u8 as f32).collect();
        for y in 0..h {
            for x in 0..w {
                if self.hole[y * w + x] {
                    for yy in y.saturating_sub(by)..(y + by + 1).min(h) {
                        out[yy * w + x.saturating_sub(by)..yy * w + (x + by + 1).min(w)].fill(1.0);
                    }
                }
            }
        }
        out
    }

    /// The layer passes of one level over its hole, each block of the hole one call written
    /// back into `x` (and where each pixel was copied from into `shifts`) before the next.
    async fn iterate(
        &self,
        run: &LevelRun<'_>,
        (x, shifts): (&mut [f32], &mut [Shift]),
        work: &mut Work,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        let LevelRun { params, backend, rate, fuse_k, iterations, ramp } = *run;
        // The layer sees b's mask through its downscale by the rate, one pixel of each rate×rate
        // cell: growing the hole by rate − 1 pixels keeps every pasted pixel out of it.
        let source_mask = self.source_mask(rate - 1);
        let blocks = self.blocks(params.block);
        for t in 0..iterations {
            let ramp = if ramp && iterations > 1 { t as f32 / (iterations - 1) as f32 } else { 1.0 };
            let scale = params.scale.0 * (params.scale.1 / params.scale.0).powf(ramp);
            let layer = ContextualAttention::with_backend(backend.clone(), params.layer(scale, rate, fuse_k, backend))?;
            for block in &blocks {
                work.queries_computed +=
                    self.attend(&layer, params, rate, (&mut *x, &mut *shifts), &source_mask, *block).await?;
                work.calls += 1;
                work.done += 1;
                progress(work.done, work.total);
            }
        }
        Ok(())
    }

    /// The blocks of `side` pixels that hold hole pixels.
    fn blocks(&self, side: usize) -> Vec<Rect> {
        let mut blocks = Vec::new();
        for y0 in (0..self.h).step_by(side) {
            for x0 in (0..self.w).step_by(side) {
                let r = Rect { y0, y1: (y0 + side).min(self.h), x0, x1: (x0 + side).min(self.w) };
                if (r.y0..r.y1).any(|y| self.hole[y * self.w + r.x0..y * self.w + r.x1].contains(&true)) {
                    blocks.push(r);
                }
            }
        }
        blocks
    }

    /// The starting guess of the coarsest level: known pixels as they are, the hole by
    /// diffusion from its border.
    fn diffused(&self) -> Vec<f32> {
        let img = Tensor::new([1, self.h, self.w, self.c], self.img.clone()).expect("sizes agree");
        let mask = Tensor::new([1, self.h, self.w, 1], self.hole.iter().map(|&x| x as u8 as f32).collect())
            .expect("sizes agree");
        diffuse_fill(&img, &mask).into_data()
    }

    /// This level's known pixels, with the hole started from the next coarser level: where the
    /// coarse pixel was copied from a known place (`shifts`), the pixel at twice that
    /// displacement here if it is known (sharp, as PatchMatch carries its offsets up the
    /// pyramid), its displacement recorded in `copied`; else `coarse` (`[coarser.h,
    /// coarser.w, c]`) upsampled bilinearly.
    fn upsampled_into(&self, coarse: &[f32], shifts: &[Shift], coarser: &Level, copied: &mut [Shift]) -> Vec<f32> {
        let (c, cw, ch) = (self.c, coarser.w, coarser.h);
        let mut out = self.img.clone();
        for y in 0..self.h {
            let fy = ((y as f32 + 0.5) / 2.0 - 0.5).clamp(0.0, (ch - 1) as f32);
            let (y0, ty) = (fy.floor() as usize, fy.fract());
            let y1 = (y0 + 1).min(ch - 1);
            for x in 0..self.w {
                if !self.hole[y * self.w + x] {
                    continue;
                }
                let fx = ((x as f32 + 0.5) / 2.0 - 0.5).clamp(0.0, (cw - 1) as f32);
                let (x0, tx) = (fx.floor() as usize, fx.fract());
                let x1 = (x0 + 1).min(cw - 1);
                let cell = (y / 2).min(ch - 1) * cw + (x / 2).min(cw - 1);
                if let Some((dy, dx)) = shifts[cell] {
                    let (sy, sx) = (y as i64 + 2 * dy as i64, x as i64 + 2 * dx as i64);
                    if (0..self.h as i64).contains(&sy) && (0..self.w as i64).contains(&sx) {
                        let src = sy as usize * self.w + sx as usize;
                        if !self.hole[src] {
                            let at = (y * self.w + x) * c;
                            out[at..at + c].copy_from_slice(&self.img[src * c..src * c + c]);
                            copied[y * self.w + x] = Some((2 * dy, 2 * dx));
                            continue;
                        }
                    }
                }
                for k in 0..c {
                    let at = |yy: usize, xx: usize| coarse[(yy * cw + xx) * c + k];
                    let top = at(y0, x0) * (1.0 - tx) + at(y0, x1) * tx;
                    let bottom = at(y1, x0) * (1.0 - tx) + at(y1, x1) * tx;
                    out[(y * self.w + x) * c + k] = top * (1.0 - ty) + bottom * ty;
                }
            }
        }
        out
    }

    /// Re-chooses where the hole pixels within `radius` pixels (chessboard) of a known pixel
    /// copy from, so that the fill continues what surrounds the hole: the carried copies come
    /// from matches on the coarser level (even displacements, chosen against a blurred
    /// neighbourhood), and at the hole's border they can be off by a pixel or a piece. In the
    /// manner of PatchMatch's propagation and search, [`REFINE_SWEEPS`] sweeps in alternating
    /// scan order; each pixel tries its own displacement, that one moved by one pixel in each
    /// direction (reaching the odd displacements) and those of its two neighbours visited just
    /// before, and keeps the one whose source's (2·radius+1)² window differs least (sum of
    /// squared differences) from the pixel's own window over the latter's known pixels. A
    /// source's window must be inside the level and hold no hole pixel. Pixels deeper in the
    /// hole keep their copies (no known pixel to compare with). `radius` 0: nothing changes.
    fn refine_border(&self, x: &mut [f32], shifts: &mut [Shift], radius: usize) {
        if radius == 0 {
            return;
        }
        let (h, w, c) = (self.h as i64, self.w as i64, self.c);
        let source_ok = self.source_windows(radius);
        let distances = self.distances();
        let border: Vec<usize> = (0..self.h * self.w).filter(|&i| (1..=radius).contains(&distances[i])).collect();
        let mut candidates: Vec<(i32, i32)> = Vec::with_capacity(7);
        for sweep in 0..REFINE_SWEEPS {
            let forward = sweep % 2 == 0;
            let back: i64 = if forward { -1 } else { 1 };
            for n in 0..border.len() {
                let p = border[if forward { n } else { border.len() - 1 - n }];
                let (y, xx) = ((p / self.w) as i64, (p % self.w) as i64);
                candidates.clear();
                if let Some((dy, dx)) = shifts[p] {
                    candidates.extend([(dy, dx), (dy - 1, dx), (dy + 1, dx), (dy, dx - 1), (dy, dx + 1)]);
                }
                for (ny, nx) in [(y + back, xx), (y, xx + back)] {
                    if (0..h).contains(&ny) && (0..w).contains(&nx) {
                        candidates.extend(shifts[(ny * w + nx) as usize]);
                    }
                }
                let mut best: Option<((i32, i32), f32)> = None;
                for &(dy, dx) in &candidates {
                    let (sy, sx) = (y + dy as i64, xx + dx as i64);
                    if !source_ok(sy, sx) {
                        continue;
                    }
                    // Known pixels of x are the level's own.
                    let cost = self.window_cost(x, (y, xx), (sy, sx), radius, true);
                    if best.is_none_or(|(_, least)| cost < least) {
                        best = Some(((dy, dx), cost));
                    }
                }
                if let Some(((dy, dx), _)) = best {
                    let src = ((y + dy as i64) * w + xx + dx as i64) as usize * c;
                    x[p * c..p * c + c].copy_from_slice(&self.img[src..src + c]);
                    shifts[p] = Some((dy, dx));
                }
            }
        }
    }

    /// `block` grown by `margin` on every side, then to sides that are multiples of `rate`
    /// within the level (the layer's requirement), keeping the block inside where it can.
    fn window(&self, block: Rect, margin: usize, rate: usize) -> Rect {
        let span = |lo: usize, hi: usize, n: usize| -> (usize, usize) {
            let (a, b) = (lo.saturating_sub(margin), (hi + margin).min(n));
            let len = ((b - a).div_ceil(rate) * rate).min(n / rate * rate);
            let a = a.min(n - len);
            (a, a + len)
        };
        let (y0, y1) = span(block.y0, block.y1, self.h);
        let (x0, x1) = span(block.x0, block.x1, self.w);
        Rect { y0, y1, x0, x1 }
    }

    /// `values` (`channels` per pixel, at this level's width) inside `r`, as a tensor.
    fn crop(&self, values: &[f32], channels: usize, r: Rect) -> Tensor {
        Tensor::from_fn([1, r.y1 - r.y0, r.x1 - r.x0, channels], |_, y, x, k| {
            values[((r.y0 + y) * self.w + r.x0 + x) * channels + k]
        })
    }

    /// The image inside `r` with the [`ANCHOR`] channel appended.
    fn crop_anchored(&self, values: &[f32], r: Rect) -> Tensor {
        let c = self.c;
        Tensor::from_fn([1, r.y1 - r.y0, r.x1 - r.x0, c + 1], |_, y, x, k| {
            if k == c {
                ANCHOR
            } else {
                values[((r.y0 + y) * self.w + r.x0 + x) * c + k]
            }
        })
    }

    /// One layer call for `block`: the queries of a window around it against the patches of
    /// its context that do not touch the hole (`source_mask`: 1 where b may not be read, see
    /// [`Level::source_mask`]), the block's hole as region; the
    /// result is written into the block's hole pixels of `x`, and where each was copied from
    /// into `shifts`. Returns the queries computed.
    async fn attend(
        &self,
        layer: &ContextualAttention,
        params: &FillParams,
        rate: usize,
        (x, shifts): (&mut [f32], &mut [Shift]),
        source_mask: &[f32],
        block: Rect,
    ) -> Result<usize> {
        // Enough margin for the paste (2·rate) and the fuse's halo around the block's queries.
        let f_win = self.window(block, 4 * rate, rate);
        let mut context = params.context.max(params.block);
        let region = Tensor::from_fn([1, f_win.y1 - f_win.y0, f_win.x1 - f_win.x0, 1], |_, y, xx, _| {
            let (yy, xx) = (f_win.y0 + y, f_win.x0 + xx);
            let inside = (block.y0..block.y1).contains(&yy) && (block.x0..block.x1).contains(&xx);
            (inside && self.hole[yy * self.w + xx]) as u8 as f32
        });
        let f = self.crop_anchored(x, f_win);
        let mut computed = 0;
        loop {
            let b_win = self.window(block, context, rate);
            let b = self.crop_anchored(x, b_win);
            let mask = self.crop(source_mask, 1, b_win);
            let whole_level =
                b_win.y1 - b_win.y0 == self.h / rate * rate && b_win.x1 - b_win.x0 == self.w / rate * rate;
            let out = layer.run_async(&f, &b, Some(&mask), &RunOptions::new().region(&region)).await?;
            computed += out.queries_computed;
            // A query of the region with no usable patch in its context (mass 0) would paste
            // nothing: widen the context, up to the whole level.
            if region_queries_starved(&out, &region, rate) && !whole_level {
                context *= 2;
                continue;
            }
            let (fw, c) = (f_win.x1 - f_win.x0, self.c);
            // y has the anchor channel last: pixels are c + 1 apart.
            for yy in block.y0.max(f_win.y0)..block.y1.min(f_win.y1) {
                for xx in block.x0.max(f_win.x0)..block.x1.min(f_win.x1) {
                    if self.hole[yy * self.w + xx] {
                        let src = ((yy - f_win.y0) * fw + xx - f_win.x0) * (c + 1);
                        x[(yy * self.w + xx) * c..][..c].copy_from_slice(&out.y.data()[src..src + c]);
                        let q = (yy - f_win.y0) / rate * out.grid.1 + (xx - f_win.x0) / rate;
                        let (u, v) = (out.offsets[2 * q] as usize, out.offsets[2 * q + 1] as usize);
                        let from = (b_win.y0 + rate * u, b_win.x0 + rate * v);
                        let to = (f_win.y0 + (yy - f_win.y0) / rate * rate, f_win.x0 + (xx - f_win.x0) / rate * rate);
                        shifts[yy * self.w + xx] = Some((from.0 as i32 - to.0 as i32, from.1 as i32 - to.1 as i32));
                    }
                }
            }
            return Ok(computed);
        }
    }
}

/// `shifts` (`h × w`, row-major) with each cell's shift replaced by the one most common in its
/// 3×3 neighbourhood when that one is more common there than the cell's own (a mode filter on
/// the nearest-neighbour field, in the spirit of Wexler et al.'s mode-seeking votes: it
/// removes isolated matches and extends the coherent ones). Cells without a shift keep none.
fn coherent(shifts: &[Shift], h: usize, w: usize) -> Vec<Shift> {
    let mut out = shifts.to_vec();
    let mut votes: Vec<((i32, i32), usize)> = Vec::with_capacity(9);
    for y in 0..h {
        for x in 0..w {
            let Some(own) = shifts[y * w + x] else { continue };
            votes.clear();
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    if let Some(shift) = shifts[yy * w + xx] {
                        match votes.iter_mut().find(|(v, _)| *v == shift) {
                            Some((_, n)) => *n += 1,
                            None => votes.push((shift, 1)),
                        }
                    }
                }
            }
            // The first of the most common in scan order; the cell's own wins ties.
            let own_count = votes.iter().find(|(v, _)| *v == own).map_or(0, |v| v.1);
            let (best, count) = votes.iter().fold(votes[0], |a, &b| if b.1 > a.1 { b } else { a });
            if count > own_count {
                out[y * w + x] = Some(best);
            }
        }
    }
    out
}

/// Whether a query at a region pixel's own position found no usable patch (mass 0).
fn region_queries_starved(out: &crate::Output, region: &Tensor, rate: usize) -> bool {
    let (hf, wf) = out.grid;
    let [_, h, w, _] = region.shape();
    (0..h).any(|y| {
        (0..w).any(|x| {
            region.at(0, y, x, 0) != 0.0 && {
                let q = (y / rate).min(hf - 1) * wf + (x / rate).min(wf - 1);
                out.mass[q] == 0.0
            }
        })
    })
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

#[cfg(test)]
mod tests {
    use super::{coherent, Level};

    /// Vertical stripes of period 3 along x: 0, 0.5, 1.
    fn stripe(x: usize) -> f32 {
        [0.0, 0.5, 1.0][x % 3]
    }

    /// An `h × w` level of [`stripe`]s, one channel, with a 4×4 hole at rows 4..8, columns
    /// 8..12 (its pixels hold −9, no information).
    fn striped_level(h: usize, w: usize) -> Level {
        let hole: Vec<bool> = (0..h * w).map(|i| (4..8).contains(&(i / w)) && (8..12).contains(&(i % w))).collect();
        let img = (0..h * w).map(|i| if hole[i] { -9.0 } else { stripe(i % w) }).collect();
        Level { img, hole, h, w, c: 1 }
    }

    /// Vertical stripes of period 3 (0, 0.5, 1 along x) with a 4×4 hole whose pixels all copy
    /// from 7 columns to the right: a displacement off by one column from the stripes' phase,
    /// as the even displacements carried up from a coarser level can be. The pixels next to
    /// the known ones (the ring, distance 1) find the aligned displacement (0, 6) among their
    /// candidates (own shift moved by one column), which matches their known neighbours
    /// exactly; the 2×2 inside (distance 2) is beyond a radius of 1 and keeps its copies.
    #[test]
    fn refine_border_aligns_the_ring_and_keeps_the_inside() {
        let (h, w) = (12, 20);
        let level = striped_level(h, w);
        let (img, hole) = (&level.img, &level.hole);
        let off = (0, 7);
        let shifts: Vec<_> = hole.iter().map(|&x| x.then_some(off)).collect();
        // The carried copies: each hole pixel holds the value 7 columns to its right.
        let x: Vec<f32> = (0..h * w).map(|i| if hole[i] { stripe(i % w + 7) } else { img[i] }).collect();

        let (mut refined, mut refined_shifts) = (x.clone(), shifts.clone());
        level.refine_border(&mut refined, &mut refined_shifts, 1);
        let inside = |i: usize| (5..7).contains(&(i / w)) && (9..11).contains(&(i % w));
        for i in (0..h * w).filter(|&i| hole[i]) {
            if inside(i) {
                assert_eq!((refined_shifts[i], refined[i]), (Some(off), x[i]), "pixel {i}");
            } else {
                assert_eq!((refined_shifts[i], refined[i]), (Some((0, 6)), stripe(i % w)), "pixel {i}");
            }
        }
        // Known pixels are never written.
        assert!((0..h * w).filter(|&i| !hole[i]).all(|i| refined[i] == img[i]));

        // Radius 0 leaves everything as it was.
        let (mut same, mut same_shifts) = (x.clone(), shifts.clone());
        level.refine_border(&mut same, &mut same_shifts, 0);
        assert_eq!((same, same_shifts), (x, shifts));
    }

    /// Stripes of period 3 with a 4×4 hole (the source windows 6 or 7 columns to the right of
    /// its pixels are inside the level and clear of it). Filled with the stripes themselves and
    /// shift (0, 6) (a whole period twice), every window is an exact copy: energy 0. Filled with
    /// the copies at (0, 7), off by one column from the stripes' phase, the windows reaching
    /// known pixels cost what those pixels differ from the source: the energy is the mean of
    /// those sums, counted here by a plain loop.
    #[test]
    fn energy_is_zero_for_a_seamless_copy_and_counts_the_seams_of_a_shifted_one() {
        let (h, w) = (12, 24);
        let level = striped_level(h, w);
        let (img, hole) = (&level.img, &level.hole);

        let seamless: Vec<f32> = (0..h * w).map(|i| stripe(i % w)).collect();
        let shifts: Vec<_> = hole.iter().map(|&x| x.then_some((0, 6))).collect();
        assert_eq!(level.energy(&seamless, &shifts, 2), 0.0);

        let shifted: Vec<f32> = (0..h * w).map(|i| if hole[i] { stripe(i % w + 7) } else { img[i] }).collect();
        let shifts: Vec<_> = hole.iter().map(|&x| x.then_some((0, 7))).collect();
        let (mut sum, mut n) = (0.0f64, 0);
        for p in (0..h * w).filter(|&i| hole[i]) {
            let (y, x) = (p / w, p % w);
            for yy in y - 2..=y + 2 {
                for xx in x - 2..=x + 2 {
                    let d = shifted[yy * w + xx] - img[yy * w + xx + 7];
                    sum += (d * d) as f64;
                }
            }
            n += 1;
        }
        let expected = sum / n as f64;
        assert!(expected > 0.0);
        assert!((level.energy(&shifted, &shifts, 2) - expected).abs() < 1e-9, "{expected}");
    }

    /// A 4×4 field: a coherent region of (0, 5) with an isolated (3, −2) inside it, a column
    /// of (1, 1) on the right, and one cell without a match.
    #[test]
    fn coherent_replaces_isolated_matches_and_keeps_regions_and_ties() {
        let (a, b, c) = (Some((0, 5)), Some((3, -2)), Some((1, 1)));
        #[rustfmt::skip]
        let field = vec![
            a, a, a, c,
            a, b, a, c,
            a, a, None, c,
            a, a, a, c,
        ];
        let out = coherent(&field, 4, 4);
        // The isolated match takes its neighbourhood's: a×7, b×1 around (1, 1).
        assert_eq!(out[5], a);
        // A cell without a match keeps none.
        assert_eq!(out[10], None);
        // The column of c keeps its own: (0, 3) sees a×2, c×2 (a tie), (1, 3) and (2, 3) a×2, c×3.
        assert_eq!([out[3], out[7], out[11], out[15]], [c, c, c, c]);
        // The region around the column keeps its own: (1, 2) sees a×4, c×3, b×1.
        assert_eq!(out[6], a);
        assert_eq!(out.iter().filter(|&&s| s == a).count(), 11);
        // A tie keeps the own shift: each of the two cells sees one a and one c.
        let tie = vec![a, c];
        assert_eq!(coherent(&tie, 1, 2), tie);
    }
}
