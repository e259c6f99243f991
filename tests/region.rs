//! Regions (SPEC §R): a run restricted to a region of y gives the full run's y inside it, on
//! every backend, for random regions, both fuse modes and rates 1–3, alone and under forced
//! query and key tiles; outside it y is 0; the work counted scales with the region.

mod common;

use common::{assert_close, max_abs, random_case, Rng};
use contextual_attention::{
    Backend, ContextualAttention, FuseMode, Geometry, Masking, Output, Params, RunOptions, Tensor,
};

/// A random region at y's resolution: one rectangle, sometimes with scattered pixels.
fn random_region(rng: &mut Rng, h: usize, w: usize) -> Tensor {
    let rect = rng.hole(1, h, w);
    let scatter = rng.below(3) == 0;
    let data = rect.data().iter().map(|&v| if scatter && rng.below(40) == 0 { 1.0 } else { v }).collect();
    Tensor::new([1, h, w, 1], data).unwrap()
}

/// The backends under test: the fast CPU path, the twin and, unless skipped, the GPU.
fn backends() -> Vec<(&'static str, Backend)> {
    let mut v = vec![("cpu", Backend::Cpu), ("reference", Backend::Reference)];
    if let Some(gpu) = common::gpu() {
        v.push(("gpu", Backend::Gpu(gpu.clone())));
    }
    v
}

/// Checks `part` (run with `region`) against `full`: y inside the region within 1e-6 of max |y|,
/// y outside 0, argmax and mass equal on the query rows computed and 0 elsewhere.
fn check_region(what: &str, p: &Params, f: &Tensor, b: &Tensor, region: &Tensor, full: &Output, part: &Output) {
    let [batch, h, w, c] = full.y.shape();
    let ymax = max_abs(full.y.data()).max(1e-30);
    let inside = |n: usize, y: usize, x: usize| region.at(if region.shape()[0] > 1 { n } else { 0 }, y, x, 0) != 0.0;
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for n in 0..batch {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    if inside(n, y, x) {
                        want.push(full.y.at(n, y, x, ch) as f64);
                        got.push(part.y.at(n, y, x, ch));
                    } else {
                        assert_eq!(part.y.at(n, y, x, ch), 0.0, "{what}: y outside the region at ({n},{y},{x},{ch})");
                    }
                }
            }
        }
    }
    assert_close(&format!("{what}: y inside the region"), &got, &want, 1e-6 * ymax, 1e-6);
    let g = Geometry::new(p, f.shape(), b.shape(), None).unwrap();
    let needed = g.region_rows(region).unwrap();
    for q in 0..batch * g.queries() {
        if needed[q / g.wf % g.hf] {
            assert_eq!(part.argmax[q], full.argmax[q], "{what}: argmax of query {q}");
            assert!((part.mass[q] - full.mass[q]).abs() <= 1e-6 * full.mass[q].abs().max(1.0), "{what}: mass of {q}");
        } else {
            assert_eq!((part.argmax[q], part.mass[q]), (0, 0.0), "{what}: query {q} was not to be computed");
        }
    }
    let rows = needed.iter().filter(|&&r| r).count();
    assert_eq!(part.queries_computed, batch * g.wf * rows, "{what}: queries computed");
}

#[test]
fn region_matches_the_full_run_for_random_cases_on_every_backend() {
    let mut rng = Rng::new("region_random_cases");
    for case in 0..24 {
        let (p, f, b, mask) = random_case(&mut rng);
        let [_, h, w, _] = f.shape();
        let region = random_region(&mut rng, h, w);
        for (name, backend) in backends() {
            let layer = ContextualAttention::with_backend(backend, p.clone()).unwrap();
            let full = layer.run(&f, &b, mask.as_ref(), &RunOptions::new()).unwrap();
            let part = layer.run(&f, &b, mask.as_ref(), &RunOptions::new().region(&region)).unwrap();
            check_region(&format!("case {case} {name} {p:?}"), &p, &f, &b, &region, &full, &part);
        }
    }
}

#[test]
fn region_matches_the_full_run_for_rates_1_to_3_both_fuse_modes_and_forced_tiles() {
    let mut rng = Rng::new("region_rates_fuse_modes");
    for rate in 1..=3 {
        for fuse_mode in [FuseMode::Wrap, FuseMode::Spatial] {
            let p = Params { rate, fuse_mode, masking: Masking::Exclude, ..Default::default() };
            let (h, w) = (14 * rate, 12 * rate);
            let f = rng.tensor([2, h, w, 3], -1.0, 1.0);
            let mask = rng.hole(1, h, w);
            // Per-sample regions: a different rectangle for each item.
            let regions = [random_region(&mut rng, h, w), random_region(&mut rng, h, w)];
            let region = Tensor::new([2, h, w, 1], regions.iter().flat_map(|r| r.data().to_vec()).collect()).unwrap();
            for (name, backend) in backends() {
                let layer = ContextualAttention::with_backend(backend, p.clone()).unwrap();
                let full = layer.run(&f, &f, Some(&mask), &RunOptions::new()).unwrap();
                for (tiles, options) in [
                    ("one tile", RunOptions::new().region(&region)),
                    ("2-row query and key tiles", RunOptions::new().region(&region).tile_rows(2).key_rows(2)),
                ] {
                    let part = layer.run(&f, &f, Some(&mask), &options).unwrap();
                    let what = format!("rate {rate} {fuse_mode:?} {name} {tiles}");
                    check_region(&what, &p, &f, &f, &region, &full, &part);
                }
            }
        }
    }
}

#[test]
fn region_work_scales_with_the_region_and_an_empty_region_computes_nothing() {
    let mut rng = Rng::new("region_work");
    let p = Params { rate: 2, ..Default::default() };
    let (h, w) = (64, 64);
    let x = rng.tensor([1, h, w, 4], -1.0, 1.0);
    let layer = ContextualAttention::cpu(p).unwrap();
    let band = |rows: usize| Tensor::from_fn([1, h, w, 1], |_, y, _, _| (y < rows) as u8 as f32);
    let full = layer.forward(&x, &x, None).unwrap();
    assert_eq!(full.queries_computed, 32 * 32);
    let mut computed = Vec::new();
    for rows in [8, 16, 32] {
        let out = layer.run(&x, &x, None, &RunOptions::new().region(&band(rows))).unwrap();
        eprintln!("region of {rows}/{h} output rows: {} of {} queries computed", out.queries_computed, 32 * 32);
        computed.push(out.queries_computed);
    }
    // The query rows a band of output rows needs: its own rows/2 and one more for the paste's overlap.
    assert_eq!(computed, vec![5 * 32, 9 * 32, 17 * 32]);
    let empty = layer.run(&x, &x, None, &RunOptions::new().region(&band(0))).unwrap();
    assert_eq!(empty.queries_computed, 0);
    assert!(empty.y.data().iter().all(|&v| v == 0.0));
}

#[test]
fn a_region_of_the_wrong_shape_is_refused_with_the_shape_it_needs() {
    let x = Tensor::zeros([1, 8, 8, 2]);
    let layer = ContextualAttention::cpu(Params::default()).unwrap();
    let region = Tensor::zeros([1, 4, 4, 1]);
    let err = layer.run(&x, &x, None, &RunOptions::new().region(&region)).unwrap_err().to_string();
    assert!(err.contains("region") && err.contains("[1, 8, 8, 1]"), "{err}");
}
