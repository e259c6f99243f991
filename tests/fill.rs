//! The object-removal job (`contextual_attention::fill`): what it accepts and refuses, that it
//! keeps every pixel outside the hole and rebuilds the hole from the image's own patches, on
//! the CPU backend, the twin and the GPU, in grey and RGB.

mod common;

use common::square_hole;
use contextual_attention::fill::{fill, with_hole, FillParams, Finest};
use contextual_attention::{Backend, Error, Tensor};

/// Vertical stripes 4 pixels wide (0 and 200) with a little horizontal shading: a texture with
/// a structure the hole must continue.
fn stripes(h: usize, w: usize, c: usize) -> Tensor {
    Tensor::from_fn(
        [1, h, w, c],
        |_, y, x, ch| if (x / 4) % 2 == 0 { 20.0 + ch as f32 * 10.0 } else { 200.0 } + (y % 3) as f32,
    )
}

fn no_progress() -> impl FnMut(usize, usize) {
    |_, _| {}
}

#[test]
fn fill_refuses_a_batch_a_mask_of_another_size_a_full_hole_and_bad_parameters() {
    let p = FillParams::default();
    let image = Tensor::from_fn([2, 16, 16, 3], |n, y, x, c| (n + y * 3 + x * 5 + c) as f32);
    match fill(&Backend::Cpu, &image, &square_hole(16, 16, 4, 4, 6), &p, &mut no_progress()) {
        Err(Error::Shape { tensor, reason }) => {
            assert_eq!(tensor, "image");
            assert!(reason.contains("one image") && reason.contains("batch 2"), "{reason}");
        }
        other => panic!("a batch of 2 must be a shape error, got {:?}", other.map(|_| ())),
    }
    let image = stripes(16, 16, 3);
    match fill(&Backend::Cpu, &image, &square_hole(16, 12, 4, 4, 6), &p, &mut no_progress()) {
        Err(Error::Shape { tensor, reason }) => {
            assert_eq!(tensor, "mask");
            assert!(reason.contains("[1, 16, 16, 1]") && reason.contains("[1, 16, 12, 1]"), "{reason}");
        }
        other => panic!("a 16×12 mask on a 16×16 image must be a shape error, got {:?}", other.map(|_| ())),
    }
    let everything = Tensor::from_fn([1, 16, 16, 1], |_, _, _, _| 1.0);
    let err = fill(&Backend::Cpu, &image, &everything, &p, &mut no_progress()).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("whole image") && err.contains("nothing to copy from"), "{err}");
    for (bad, name) in [
        (FillParams { iterations: 0, ..p.clone() }, "iterations"),
        (FillParams { levels: Some(0), ..p.clone() }, "levels"),
        (FillParams { scale: (0.0, 10.0), ..p.clone() }, "scale"),
        (FillParams { block: 4, ..p.clone() }, "block"),
        (FillParams { fuse: vec![], ..p.clone() }, "fuse"),
        (FillParams { fuse: vec![3, 0], ..p.clone() }, "fuse"),
        (FillParams { compete_levels: 0, ..p.clone() }, "compete_levels"),
        (FillParams { compete_margin: 0.9, ..p.clone() }, "compete_margin"),
    ] {
        let err = fill(&Backend::Cpu, &image, &square_hole(16, 16, 4, 4, 6), &bad, &mut no_progress())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{name}: {err}");
    }
}

/// With two fuse kernels competing, each fills the coarse levels and the fill goes on with the
/// one of lower completion energy: its result, matches and start of the finest level are those
/// of a fill with that kernel alone, and the loser's layer calls are counted too.
#[test]
fn competing_fuse_kernels_give_the_fill_of_the_one_with_lower_energy() {
    let (h, w) = (96, 128);
    let image = stripes(h, w, 3);
    let hole = square_hole(h, w, 36, 52, 22);
    let both = FillParams { fuse: vec![3, 7], ..FillParams::default() };
    let competed = fill(&Backend::Cpu, &image, &hole, &both, &mut no_progress()).unwrap();
    // One level runs the layer: both kernels compete on it and the lower energy wins.
    assert_eq!(competed.energies.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(), [(0, 3), (0, 7)]);
    let lowest = competed.energies.iter().fold(competed.energies[0], |a, &b| if b.2 < a.2 { b } else { a });
    assert_eq!(competed.fuse_k, lowest.1, "energies {:?}", competed.energies);
    assert!(competed.energies.iter().all(|e| e.2.is_finite() && e.2 >= 0.0), "{:?}", competed.energies);

    let alone = FillParams { fuse: vec![competed.fuse_k], ..FillParams::default() };
    let single = fill(&Backend::Cpu, &image, &hole, &alone, &mut no_progress()).unwrap();
    assert!(single.energies.is_empty());
    assert_eq!(competed.result, single.result);
    assert_eq!(competed.coarse, single.coarse);
    assert_eq!(competed.shifts, single.shifts);
    // Two levels, the finest only copies: every layer call is on the level where the kernels
    // compete, so the competition makes twice the calls.
    assert_eq!(competed.levels, 2);
    assert_eq!(competed.calls, 2 * single.calls);
}

/// With three levels that run the layer (`Finest::Iterate`), the kernels compete on the first
/// two unless one drops out after the first: with a margin of 1 only the lowest goes on (and
/// the progress still ends at its total), with a wide margin both reach the choice on the
/// second level.
#[test]
fn a_kernel_above_the_margin_drops_out_before_the_choice() {
    let (h, w) = (192, 256);
    let image = stripes(h, w, 1);
    let hole = square_hole(h, w, 72, 104, 44);
    let base = FillParams { fuse: vec![3, 7], finest: Finest::Iterate, levels: Some(3), ..FillParams::default() };

    let strict = FillParams { compete_margin: 1.0, ..base.clone() };
    let mut told = Vec::new();
    let filled = fill(&Backend::Cpu, &image, &hole, &strict, &mut |d, t| told.push((d, t))).unwrap();
    assert_eq!(filled.levels, 3);
    let first: Vec<_> = filled.energies.iter().filter(|e| e.0 == 0).copied().collect();
    assert_eq!(first.iter().map(|e| e.1).collect::<Vec<_>>(), [3, 7]);
    assert_ne!(first[0].2, first[1].2, "a tie would keep both: {first:?}");
    let lowest = if first[0].2 < first[1].2 { first[0] } else { first[1] };
    assert!(filled.energies.iter().all(|e| e.0 == 0), "only one kernel reached level 1: {:?}", filled.energies);
    assert_eq!(filled.fuse_k, lowest.1);
    assert_eq!(told.last().map(|&(d, t)| d == t), Some(true), "progress ends at its total: {:?}", told.last());
    assert_eq!(told.len(), filled.calls);
    let alone = FillParams { fuse: vec![lowest.1], ..base.clone() };
    assert_eq!(filled.result, fill(&Backend::Cpu, &image, &hole, &alone, &mut no_progress()).unwrap().result);

    let wide = FillParams { compete_margin: 100.0, ..base };
    let filled = fill(&Backend::Cpu, &image, &hole, &wide, &mut no_progress()).unwrap();
    let levels_kernels: Vec<_> = filled.energies.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(levels_kernels, [(0, 3), (0, 7), (1, 3), (1, 7)]);
    let second = &filled.energies[2..];
    assert_eq!(filled.fuse_k, if second[1].2 < second[0].2 { 7 } else { 3 });
}

#[test]
fn an_empty_hole_returns_the_image_unchanged() {
    let image = stripes(24, 24, 3);
    let empty = Tensor::zeros([1, 24, 24, 1]);
    let filled = fill(&Backend::Cpu, &image, &empty, &FillParams::default(), &mut no_progress()).unwrap();
    assert_eq!(filled.result, image);
    assert_eq!((filled.levels, filled.calls), (0, 0));
}

/// Fills a hole in the stripes on `backend` (`size` 0: 48×64, one level, hole 10×12; 1:
/// 96×128, two levels, hole 20×24) and checks: outside untouched, inside close to the stripes
/// it hides (mean error well under the 90-level error of a flat grey guess), with the
/// progress told up to its total.
fn fills_the_stripes(backend: Backend, c: usize, size: usize) {
    let (h, w) = (48 << size, 64 << size);
    let (y0, x0) = (18 << size, 26 << size);
    let (y1, x1) = (y0 + (10 << size), x0 + (12 << size));
    let image = stripes(h, w, c);
    let hole =
        Tensor::from_fn([1, h, w, 1], |_, y, x, _| ((y0..y1).contains(&y) && (x0..x1).contains(&x)) as u8 as f32);
    let holed = with_hole(&image, &hole);
    let mut told = Vec::new();
    let filled = fill(&backend, &holed, &hole, &FillParams::default(), &mut |d, t| told.push((d, t))).unwrap();
    let (mut err, mut n) = (0.0f64, 0usize);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let got = filled.result.at(0, y, x, ch);
                if hole.at(0, y, x, 0) > 0.0 {
                    err += (got - image.at(0, y, x, ch)).abs() as f64;
                    n += 1;
                } else {
                    assert_eq!(got, image.at(0, y, x, ch), "outside the hole at ({y}, {x}, {ch})");
                }
            }
        }
    }
    let mean_err = err / n as f64;
    eprintln!(
        "stripes {c} channel(s): mean |error| in the hole {mean_err:.1} (levels {}, calls {})",
        filled.levels, filled.calls
    );
    assert!(mean_err < 10.0, "the hole does not continue the stripes: mean |error| {mean_err:.1}");
    let last = *told.last().expect("progress was told");
    assert_eq!(last.0, last.1, "progress ends at its total");
    assert_eq!(told.len(), filled.calls);
    assert!(filled.queries_computed > 0);
}

#[test]
fn fill_rebuilds_stripes_in_grey_and_rgb_on_the_cpu_backend() {
    fills_the_stripes(Backend::Cpu, 1, 0);
    fills_the_stripes(Backend::Cpu, 3, 0);
    fills_the_stripes(Backend::Cpu, 1, 1);
    fills_the_stripes(Backend::Cpu, 3, 1);
}

#[test]
fn fill_rebuilds_stripes_on_the_twin_and_the_gpu() {
    fills_the_stripes(Backend::Reference, 3, 0);
    let gpu = gpu_or_skip!();
    fills_the_stripes(Backend::Gpu(gpu.clone()), 3, 1);
}

#[test]
fn fill_works_only_near_the_hole() {
    // The same hole in a 16× larger image: the layer computes about the same number of queries
    // (its windows are a block of the image wide, so a little more where the image is wider).
    let hole_at = |h, w| {
        Tensor::from_fn([1, h, w, 1], |_, y, x, _| ((20..30).contains(&y) && (20..30).contains(&x)) as u8 as f32)
    };
    let p = FillParams { levels: Some(1), ..Default::default() };
    let small = fill(&Backend::Cpu, &stripes(64, 64, 1), &hole_at(64, 64), &p, &mut no_progress()).unwrap();
    let large = fill(&Backend::Cpu, &stripes(256, 256, 1), &hole_at(256, 256), &p, &mut no_progress()).unwrap();
    eprintln!("queries computed: 64² image {}, 256² image {}", small.queries_computed, large.queries_computed);
    assert!(large.queries_computed as f64 <= 1.2 * small.queries_computed as f64);
    assert!(large.queries_computed < 256 * 256 / 4 / 8, "{} queries for a 10×10 hole", large.queries_computed);
}

/// `Filled::shifts` says where each hole pixel came from: none outside the hole, and at the
/// finest level (which copies by default) the filled value is the source pixel's, and the
/// source lies outside the hole. The flow image is white outside the hole and coloured where a
/// pixel was copied from elsewhere.
#[test]
fn shifts_say_where_each_hole_pixel_was_copied_from() {
    let (h, w) = (96, 128);
    let image = stripes(h, w, 3);
    let hole = square_hole(h, w, 36, 52, 20);
    let filled = fill(&Backend::Cpu, &image, &hole, &FillParams::default(), &mut no_progress()).unwrap();
    assert!(filled.levels > 1, "the finest level copies only when there are coarser ones");
    assert_eq!(filled.shifts.len(), h * w);
    let in_hole = |y: usize, x: usize| hole.at(0, y, x, 0) > 0.5;
    let flow = filled.flow_image();
    assert_eq!(flow.len(), h * w * 3);
    let mut copied = 0;
    for y in 0..h {
        for x in 0..w {
            let p = y * w + x;
            match filled.shifts[p] {
                None => assert!(!in_hole(y, x) || flow[3 * p..3 * p + 3] == [255, 255, 255]),
                Some((dy, dx)) => {
                    assert!(in_hole(y, x), "a shift at ({y}, {x}), outside the hole");
                    let (sy, sx) = ((y as i32 + dy) as usize, (x as i32 + dx) as usize);
                    assert!(!in_hole(sy, sx), "({y}, {x}) copied from ({sy}, {sx}), inside the hole");
                    for c in 0..3 {
                        let (got, src) = (filled.result.at(0, y, x, c), image.at(0, sy, sx, c));
                        assert!((got - src).abs() < 1e-3, "({y}, {x}, {c}) is {got}, its source {src}");
                    }
                    assert_ne!(flow[3 * p..3 * p + 3], [255, 255, 255], "a copy drawn as no flow at ({y}, {x})");
                    copied += 1;
                }
            }
            if !in_hole(y, x) {
                assert_eq!(flow[3 * p..3 * p + 3], [255, 255, 255], "flow outside the hole at ({y}, {x})");
            }
        }
    }
    eprintln!("{copied} of {} hole pixels copied from outside the hole", 20 * 20);
    assert!(copied > 20 * 20 * 3 / 4, "only {copied} of 400 hole pixels were copied");
}
