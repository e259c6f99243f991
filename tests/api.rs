//! How the layer is called: `run` with `RunOptions` (progress, inspected queries and tile rows
//! together), the async variants, one object reused across shapes, a device the caller owns,
//! and the compute pass's timing.

mod common;

use common::compare::{compare, twin_rows};
use common::{assert_tensors_close, concat_batch, usable_hole, Rng};
use contextual_attention::{ContextualAttention, Output, Params, RunOptions, Tensor};

#[test]
fn forward_async_matches_forward() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("forward_async_matches_forward");
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let f = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let b = rng.tensor([2, 16, 12, 3], -1.0, 1.0);
    let hole = usable_hole(&mut rng, &p, b.shape());
    let sync = layer.forward(&f, &b, Some(&hole)).unwrap();
    let asynchronous = pollster::block_on(layer.forward_async(&f, &b, Some(&hole))).unwrap();
    assert_eq!(sync, asynchronous, "forward_async differs from forward");
    // And both are right.
    let cpu = ContextualAttention::reference(p.clone()).unwrap().forward(&f, &b, Some(&hole)).unwrap();
    let (dy, dm, agree, total) =
        compare("forward_async vs twin", &asynchronous, &cpu, &twin_rows(&p, &f, &b, Some(&hole)));
    // The CPU backend's future gives the twin's result.
    let cpu_async =
        pollster::block_on(ContextualAttention::reference(p).unwrap().forward_async(&f, &b, Some(&hole))).unwrap();
    assert_eq!(cpu_async, cpu);
    eprintln!(
        "forward_async: identical to forward; vs twin max|Δy| {dy:.2e}, max|Δmass| {dm:.2e}, argmax {agree}/{total}"
    );
}

/// `run_async` with a region and one query row per tile: `run`'s output, and progress told per
/// tile as the tiles finish (as `run` tells it), not once at the end.
#[test]
fn run_async_with_region_and_tiles_matches_run() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("run_async_with_region_and_tiles_matches_run");
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let f = rng.tensor([1, 16, 20, 4], -1.0, 1.0);
    let hole = common::square_hole(16, 20, 3, 5, 7);
    let (sync_told, async_told) = (std::cell::RefCell::new(Vec::new()), std::cell::RefCell::new(Vec::new()));
    let report_sync = |done: usize, total: usize| sync_told.borrow_mut().push((done, total));
    let report_async = |done: usize, total: usize| async_told.borrow_mut().push((done, total));
    let options = RunOptions::new().region(&hole).tile_rows(1);
    let sync = layer.run(&f, &f, Some(&hole), &options.progress(&report_sync)).unwrap();
    let asynchronous =
        pollster::block_on(layer.run_async(&f, &f, Some(&hole), &options.progress(&report_async))).unwrap();
    assert_eq!(sync, asynchronous, "run_async differs from run");
    assert!(sync.queries_computed < 8 * 10, "the region did not restrict the work: {}", sync.queries_computed);
    let tiles = sync_told.borrow().len();
    assert!(tiles > 1, "one query row per tile should make several tiles, got {tiles}");
    assert_eq!(*async_told.borrow(), (1..=tiles).map(|k| (k, tiles)).collect::<Vec<_>>());
    assert_eq!(*async_told.borrow(), *sync_told.borrow());
}

#[test]
fn layer_reuse_across_shapes() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("layer_reuse_across_shapes");
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let cpu = ContextualAttention::reference(p.clone()).unwrap();
    let fa = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let ba = rng.tensor([2, 16, 12, 3], -1.0, 1.0);
    let ma = usable_hole(&mut rng, &p, ba.shape());
    let fb = rng.tensor([1, 10, 8, 5], -1.0, 1.0);
    let fa2 = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let ma2 = concat_batch(&[usable_hole(&mut rng, &p, ba.shape()), usable_hole(&mut rng, &p, ba.shape())]);
    let ma3 = usable_hole(&mut rng, &p, ba.shape());
    let calls: Vec<(&str, &Tensor, &Tensor, Option<&Tensor>)> = vec![
        ("A", &fa, &ba, Some(&ma)),
        ("B (other shape, no mask)", &fb, &fb, None),
        ("A again", &fa, &ba, Some(&ma)),
        ("A shape, new f", &fa2, &ba, Some(&ma)),
        ("A shape, new shared mask", &fa2, &ba, Some(&ma3)),
        ("A shape, per-sample mask", &fa, &ba, Some(&ma2)),
        ("A shape, no mask", &fa, &ba, None),
        ("A again", &fa, &ba, Some(&ma)),
    ];
    let mut first_a: Option<Output> = None;
    for (name, f, b, m) in calls {
        let out = layer.forward(f, b, m).unwrap();
        let want = cpu.forward(f, b, m).unwrap();
        let (dy, _, agree, total) = compare(&format!("reuse: {name}"), &out, &want, &twin_rows(&p, f, b, m));
        eprintln!("reuse {name}: max|Δy| {dy:.2e}, argmax {agree}/{total}");
        if name.starts_with("A again") || name == "A" {
            match &first_a {
                None => first_a = Some(out),
                Some(a) => assert_eq!(&out, a, "reuse: {name}: differs from the first call of A"),
            }
        }
    }
}

#[test]
fn layer_runs_on_a_device_the_caller_owns() {
    let _ = gpu_or_skip!(); // an adapter exists
                            // A device made by the caller (as a renderer or an ML framework would), then shared.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::from_env()
            .unwrap_or(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let gpu = contextual_attention::Gpu::from_device(device.clone(), queue, adapter.get_info());
    let mut rng = common::Rng::new("own device");
    let x = rng.tensor([1, 12, 12, 3], -1.0, 1.0);
    let params = Params { rate: 2, ..Default::default() };
    let out = ContextualAttention::new(&gpu, params.clone()).unwrap().forward(&x, &x, None).unwrap();
    let twin = ContextualAttention::reference(params).unwrap().forward(&x, &x, None).unwrap();
    assert_tensors_close("caller's device vs twin", &out.y, &twin.y, 1e-5);
    // The caller's device still works for its own work afterwards.
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    assert_eq!(buf.size(), 16);
}

#[test]
fn the_compute_pass_is_timed_where_the_device_has_timestamps() {
    let gpu = gpu_or_skip!();
    let mut rng = common::Rng::new("timestamps");
    let x = rng.tensor([1, 16, 16, 4], -1.0, 1.0);
    let layer = ContextualAttention::new(gpu, Params { rate: 2, ..Default::default() }).unwrap();
    let start = std::time::Instant::now();
    let out = layer.forward(&x, &x, None).unwrap();
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    if gpu.device().features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        let t = out.gpu_time_ms.expect("a device with timestamps reports the pass time");
        eprintln!("pass {t:.3} ms of {wall_ms:.3} ms wall");
        assert!(t > 0.0 && t <= wall_ms, "pass time {t} ms must lie in (0, {wall_ms}] ms");
    } else {
        assert_eq!(out.gpu_time_ms, None);
    }
    let cpu = ContextualAttention::reference(Params { rate: 2, ..Default::default() })
        .unwrap()
        .forward(&x, &x, None)
        .unwrap();
    assert_eq!(cpu.gpu_time_ms, None);
}

#[test]
fn progress_is_reported_per_tile_and_changes_nothing() {
    let gpu = gpu_or_skip!();
    let mut rng = common::Rng::new("progress");
    let x = rng.tensor([2, 16, 16, 3], -1.0, 1.0);
    let hole = rng.hole(1, 16, 16);
    let params = Params { rate: 2, ..Default::default() };
    let whole = ContextualAttention::new(gpu, params.clone())
        .unwrap()
        .plan(x.shape(), x.shape(), Some(hole.shape()))
        .unwrap()
        .tile_bytes;
    for backend in [contextual_attention::Backend::Gpu(gpu.clone()), contextual_attention::Backend::Reference] {
        let tiled =
            ContextualAttention::with_backend(backend, Params { memory_budget: Some(whole * 2 / 3), ..params.clone() })
                .unwrap();
        let tiles = tiled.plan(x.shape(), x.shape(), Some(hole.shape())).unwrap().tiles.len();
        assert!(tiles >= 2);
        let mut seen = Vec::new();
        let out =
            tiled.forward_with_progress(&x, &x, Some(&hole), &mut |done, total| seen.push((done, total))).unwrap();
        let total = seen.last().expect("progress was reported").1;
        assert!(total >= 2 * tiles, "{} reports {total} steps for 2 items of {tiles} tiles", tiled.describe_backend());
        assert_eq!(seen, (1..=total).map(|d| (d, total)).collect::<Vec<_>>(), "progress counts up by one to the total");
        let plain = tiled.forward(&x, &x, Some(&hole)).unwrap();
        assert!(out.y == plain.y && out.argmax == plain.argmax && out.mass == plain.mass, "progress changes nothing");
    }
}

#[test]
fn run_options_combine_progress_queries_and_tile_rows() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("run_options_combine");
    let p = Params { rate: 2, ..Default::default() };
    let f = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let b = rng.tensor([2, 16, 12, 3], -1.0, 1.0);
    let hole = usable_hole(&mut rng, &p, b.shape());
    let queries = [(0, 0), (5, 7), (2, 3)];
    for backend in [contextual_attention::Backend::Gpu(gpu.clone()), contextual_attention::Backend::Reference] {
        let layer = ContextualAttention::with_backend(backend, p.clone()).unwrap();
        let name = layer.describe_backend();
        // hf = 6 query rows in tiles of 2: 3 tiles per item, 6 in all.
        let seen = std::cell::RefCell::new(Vec::new());
        let report = |done: usize, total: usize| seen.borrow_mut().push((done, total));
        let options = RunOptions::new().progress(&report).queries(&queries).tile_rows(2);
        let out = layer.run(&f, &b, Some(&hole), &options).unwrap();
        assert_eq!(seen.borrow().clone(), (1..=6).map(|d| (d, 6)).collect::<Vec<_>>(), "{name}: progress");
        // The same as asking for each option alone.
        let inspected = layer.forward_inspect(&f, &b, Some(&hole), &queries).unwrap();
        assert_eq!(out.queries, queries.to_vec(), "{name}: queries");
        assert_eq!(out.attention_rows.len(), 2 * queries.len() * out.patch_grid.0 * out.patch_grid.1);
        assert_tensors_close(&format!("{name}: y, options vs forward_inspect"), &out.y, &inspected.y, 1e-6);
        assert_eq!(out.argmax, inspected.argmax, "{name}: argmax");
        let rows_close = out.attention_rows.iter().zip(&inspected.attention_rows).all(|(a, b)| (a - b).abs() <= 1e-6);
        assert!(rows_close, "{name}: attention rows differ between tilings");
        // run_async takes the same options and tells progress once, at the end.
        seen.borrow_mut().clear();
        let later = pollster::block_on(layer.run_async(&f, &b, Some(&hole), &options)).unwrap();
        assert_eq!(later, out, "{name}: run_async differs from run");
        assert_eq!(seen.borrow().last(), Some(&(6, 6)), "{name}: run_async progress");
    }
}
