//! Device-resident calls (`record_on_device`, `run_on_device`): the layer on the caller's wgpu
//! buffers gives the host path's output bit for bit, at any 4-byte offset, in place, inside the
//! caller's encoder between the caller's own commands, on a device the caller created; bad
//! buffers and unsupported options are refused with errors that name them.

mod common;

use common::{bits, usable_hole, Rng};
use contextual_attention::{
    ContextualAttention, DeviceOutputs, DeviceTensor, Error, Gpu, Output, Params, RunOptions, Tensor,
};
use wgpu::util::DeviceExt;

const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// One buffer holding `tensors` one after the other, each `gap` bytes after the previous one's
/// end (the first `gap` bytes in); returns it with each tensor's byte offset.
fn pack(gpu: &Gpu, tensors: &[&Tensor], gap: usize) -> (wgpu::Buffer, Vec<u64>) {
    let mut words: Vec<f32> = Vec::new();
    let mut offsets = Vec::new();
    for t in tensors {
        words.extend(std::iter::repeat_n(f32::NAN, gap / 4)); // poison between tensors
        offsets.push(words.len() as u64 * 4);
        words.extend_from_slice(t.data());
    }
    words.extend(std::iter::repeat_n(f32::NAN, gap / 4));
    let contents = bytemuck::cast_slice(&words);
    let buffer =
        gpu.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents, usage: USAGE });
    (buffer, offsets)
}

fn zeroed(gpu: &Gpu, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage, mapped_at_creation: false })
}

/// `words` 4-byte words of `buffer` from byte `offset`, read back after everything submitted.
fn read_words(gpu: &Gpu, buffer: &wgpu::Buffer, offset: u64, words: usize) -> Vec<u32> {
    let bytes = words as u64 * 4;
    let staging = zeroed(gpu, bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, Some(bytes));
    gpu.queue().submit([encoder.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("readback maps"));
    gpu.device().poll(wgpu::PollType::wait_indefinitely()).expect("device poll");
    let view = staging.slice(..).get_mapped_range().expect("mapped readback");
    bytemuck::cast_slice(&view).to_vec()
}

/// The outputs of a device call, read back: y's bits, argmax, mass's bits.
struct DeviceResult {
    y: Vec<u32>,
    argmax: Vec<u32>,
    mass: Vec<u32>,
}

/// One buffer for y, argmax and mass at unaligned-to-256 offsets, with room for the three.
fn outputs_buffer(gpu: &Gpu, y_len: usize, nq: usize) -> (wgpu::Buffer, [u64; 3]) {
    let offsets = [12, 12 + 4 * y_len as u64 + 36, 12 + 4 * (y_len + nq) as u64 + 72];
    let size = offsets[2] + 4 * nq as u64 + 8;
    (zeroed(gpu, size, USAGE), offsets)
}

fn read_outputs(gpu: &Gpu, out: &wgpu::Buffer, at: [u64; 3], y_len: usize, nq: usize) -> DeviceResult {
    DeviceResult {
        y: read_words(gpu, out, at[0], y_len),
        argmax: read_words(gpu, out, at[1], nq),
        mass: read_words(gpu, out, at[2], nq),
    }
}

fn assert_same(what: &str, got: &DeviceResult, want: &Output) {
    assert_eq!(got.y, bits(want.y.data()), "{what}: y differs from the host path's");
    assert_eq!(got.argmax, want.argmax, "{what}: argmax differs from the host path's");
    assert_eq!(got.mass, bits(&want.mass), "{what}: mass differs from the host path's");
}

#[test]
fn device_calls_give_the_host_paths_bits() {
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("device_calls_give_the_host_paths_bits");
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let f = rng.tensor([2, 16, 20, 4], -1.0, 1.0);
    let b = rng.tensor([2, 12, 24, 4], -1.0, 1.0);
    let hole = usable_hole(&mut rng, &p, b.shape());
    // f, b and the mask in one buffer, at offsets that are multiples of 4 but not of 256.
    let (inputs, at) = pack(gpu, &[&f, &b, &hole], 20);
    let f_dev = DeviceTensor::new(&inputs, f.shape()).at(at[0]);
    let b_dev = DeviceTensor::new(&inputs, b.shape()).at(at[1]);
    let m_dev = DeviceTensor::new(&inputs, hole.shape()).at(at[2]);
    let (y_len, nq) = (f.data().len(), 2 * 8 * 10);

    for (label, options) in
        [("planned tiles", RunOptions::new()), ("2×3 tiles", RunOptions::new().tile_rows(2).key_rows(3))]
    {
        for mask in [Some((&m_dev, &hole)), None] {
            let what = format!("{label}, mask {}", mask.is_some());
            let want = layer.run(&f, &b, mask.map(|m| m.1), &options).unwrap();
            let (out, o) = outputs_buffer(gpu, y_len, nq);
            let outputs = DeviceOutputs::y_at(&out, o[0]).argmax(&out, o[1]).mass(&out, o[2]);

            // Recorded into the caller's encoder, which the caller submits.
            let mut encoder = gpu.device().create_command_encoder(&Default::default());
            layer.record_on_device(&mut encoder, &f_dev, &b_dev, mask.map(|m| m.0), &outputs, &options).unwrap();
            gpu.queue().submit([encoder.finish()]);
            assert_same(&format!("record_on_device, {what}"), &read_outputs(gpu, &out, o, y_len, nq), &want);

            // Submitted in parts by the layer.
            let (out, o) = outputs_buffer(gpu, y_len, nq);
            let outputs = DeviceOutputs::y_at(&out, o[0]).argmax(&out, o[1]).mass(&out, o[2]);
            let index = layer.run_on_device(&f_dev, &b_dev, mask.map(|m| m.0), &outputs, &options).unwrap();
            gpu.device()
                .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
                .expect("waiting for the call");
            assert_same(&format!("run_on_device, {what}"), &read_outputs(gpu, &out, o, y_len, nq), &want);
        }
    }
    // The inputs are left as they were.
    assert_eq!(read_words(gpu, &inputs, at[0], y_len), bits(f.data()));
}

#[test]
fn two_calls_in_one_encoder_each_get_their_own_result() {
    // Same shapes, so both calls run on the layer's same working buffers, recorded one after
    // the other before anything is submitted: the second may not see the first's inputs, nor
    // the first's outputs the second's.
    let gpu = gpu_or_skip!();
    let mut rng = Rng::new("two_calls_in_one_encoder");
    let p = Params { rate: 1, fuse_k: 3, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let calls: Vec<(Tensor, Tensor)> = (0..2)
        .map(|_| {
            let x = rng.tensor([1, 10, 12, 3], -1.0, 1.0);
            let hole = usable_hole(&mut rng, &p, x.shape());
            (x, hole)
        })
        .collect();
    let y_len = calls[0].0.data().len();
    let packed: Vec<(wgpu::Buffer, Vec<u64>)> = calls.iter().map(|(x, hole)| pack(gpu, &[x, hole], 4)).collect();
    let ys: Vec<wgpu::Buffer> = calls.iter().map(|_| zeroed(gpu, 4 * y_len as u64, USAGE)).collect();
    let mut encoder = gpu.device().create_command_encoder(&Default::default());
    for (((x, hole), (inputs, at)), y) in calls.iter().zip(&packed).zip(&ys) {
        let x_dev = DeviceTensor::new(inputs, x.shape()).at(at[0]);
        let m_dev = DeviceTensor::new(inputs, hole.shape()).at(at[1]);
        layer
            .record_on_device(&mut encoder, &x_dev, &x_dev, Some(&m_dev), &DeviceOutputs::y(y), &RunOptions::new())
            .unwrap();
    }
    gpu.queue().submit([encoder.finish()]);
    for (k, ((x, hole), y)) in calls.iter().zip(&ys).enumerate() {
        let want = layer.forward(x, x, Some(hole)).unwrap();
        assert_eq!(read_words(gpu, y, 0, y_len), bits(want.y.data()), "call {k} of the encoder");
    }
}

#[test]
fn in_place_between_the_callers_own_commands_on_the_callers_device() {
    // A device made by the caller, as a renderer or an ML framework would.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::from_env()
            .unwrap_or(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    if std::env::var("CA_SKIP_GPU_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped (CA_SKIP_GPU_TESTS=1)");
        return;
    }
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("a wgpu adapter (install mesa-vulkan-drivers for a software one)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let gpu = Gpu::from_device(device.clone(), queue.clone(), adapter.get_info());
    let mut rng = Rng::new("in_place_on_the_callers_device");
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(&gpu, p).unwrap();
    let x = rng.tensor([1, 16, 16, 8], -1.0, 1.0);
    let staged = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("the caller's upload"),
        contents: bytemuck::cast_slice(x.data()),
        usage: USAGE,
    });
    let bytes = 4 * x.data().len() as u64;
    let activations = zeroed(&gpu, bytes, USAGE);
    let after = zeroed(&gpu, bytes, USAGE);

    let mut encoder = device.create_command_encoder(&Default::default());
    // The caller's command before the layer: the layer must read what it wrote.
    encoder.copy_buffer_to_buffer(&staged, 0, &activations, 0, Some(bytes));
    let x_dev = DeviceTensor::new(&activations, x.shape());
    layer
        .record_on_device(&mut encoder, &x_dev, &x_dev, None, &DeviceOutputs::y(&activations), &RunOptions::new())
        .unwrap();
    // The caller's command after it: it must see y.
    encoder.copy_buffer_to_buffer(&activations, 0, &after, 0, Some(bytes));
    queue.submit([encoder.finish()]);

    let want = layer.forward(&x, &x, None).unwrap();
    let got = read_words(&gpu, &after, 0, x.data().len());
    assert_eq!(got, bits(want.y.data()), "y written in place and seen by the caller's next command");
    assert_ne!(got, bits(x.data()), "y must differ from x for this test to mean anything");
}

#[test]
fn bad_buffers_and_options_are_refused_by_name() {
    let gpu = gpu_or_skip!();
    let p = Params { rate: 2, ..Default::default() };
    let layer = ContextualAttention::new(gpu, p.clone()).unwrap();
    let shape = [1, 8, 8, 2];
    let bytes = 8 * 8 * 2 * 4;
    let good = zeroed(gpu, bytes, USAGE);
    let x = DeviceTensor::new(&good, shape);
    let y = DeviceOutputs::y(&good);
    let none = RunOptions::new();
    let message = |r: contextual_attention::Result<()>| r.unwrap_err().to_string();
    let record = |f: &DeviceTensor, out: &DeviceOutputs, options: &RunOptions| {
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        layer.record_on_device(&mut encoder, f, f, None, out, options)
    };

    let no_copy_src = zeroed(gpu, bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
    let m = message(record(&DeviceTensor::new(&no_copy_src, shape), &y, &none));
    assert!(m.contains("device buffer `f`") && m.contains("COPY_SRC"), "{m}");

    let no_copy_dst = zeroed(gpu, bytes, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
    let m = message(record(&x, &DeviceOutputs::y(&no_copy_dst), &none));
    assert!(m.contains("device buffer `y`") && m.contains("COPY_DST"), "{m}");

    let m = message(record(&x.at(4), &y, &none));
    assert!(m.contains("device buffer `f`") && m.contains(&format!("the buffer holds {bytes} bytes")), "{m}");

    let m = message(record(&x, &DeviceOutputs::y_at(&good, 2), &none));
    assert!(m.contains("device buffer `y`") && m.contains("not a multiple of 4"), "{m}");

    let small = zeroed(gpu, 16, USAGE);
    let m = message(record(&x, &y.argmax(&small, 0), &none));
    assert!(m.contains("device buffer `argmax`") && m.contains("needs 64 bytes"), "{m}");

    // Shapes are checked like the host path's.
    let m = message(record(&DeviceTensor::new(&good, [1, 7, 8, 2]), &y, &none));
    assert!(m.contains("not divisible by rate 2"), "{m}");

    let report = |_: usize, _: usize| {};
    for (what, options) in
        [("progress", RunOptions::new().progress(&report)), ("queries", RunOptions::new().queries(&[(0, 0)]))]
    {
        let m = message(record(&x, &y, &options));
        assert!(m.contains(&format!("RunOptions::{what}")) && m.contains("use run()"), "{m}");
    }
    let cpu = ContextualAttention::cpu(p).unwrap();
    let err = cpu.run_on_device(&x, &x, None, &y, &none).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)) && err.to_string().contains("need the GPU backend"), "{err}");
}
