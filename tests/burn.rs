//! The layer on burn tensors (feature `burn`): on burn's own device, shared through
//! `init_device`, in both layouts, equal bit for bit to the host path on the same device; the
//! inputs untouched; burn's next operation reads the layer's output; errors by name.
//!
//! One burn device per test binary: burn registers a wgpu runtime once per process.

mod common;

use std::sync::OnceLock;

use burn::prelude::*;
use common::{bits, usable_hole, Rng};
use contextual_attention::burn::{init_device, Layer, Layout};
use contextual_attention::{ContextualAttention, Params, Tensor as HostTensor};

fn device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| {
        init_device().unwrap_or_else(|e| {
            panic!("the burn tests need a wgpu adapter (apt-get install mesa-vulkan-drivers libvulkan1): {e}")
        })
    })
}

/// The layer on the host path, on burn's device: the reference.
fn host_layer(params: &Params) -> ContextualAttention {
    let gpu = contextual_attention::burn::gpu_of(device()).unwrap();
    ContextualAttention::new(&gpu, params.clone()).unwrap()
}

/// burn tensor from a host NHWC tensor, in `layout`.
fn to_burn(t: &HostTensor, layout: Layout, device: &Device) -> Tensor<4> {
    let x = Tensor::<4>::from_data(TensorData::new(t.data().to_vec(), t.shape()), device);
    match layout {
        Layout::Nchw => x.permute([0, 3, 1, 2]),
        Layout::Nhwc => x,
    }
}

fn f32s(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn i32s(t: Tensor<4, Int>) -> Vec<i32> {
    t.into_data().convert::<i32>().try_to_vec::<i32>().unwrap()
}

#[test]
fn burn_tensors_give_the_host_paths_bits_in_both_layouts() {
    let device = device();
    let mut rng = Rng::new("burn_tensors");
    let p = Params { rate: 2, ..Default::default() };
    let f = rng.tensor([2, 12, 16, 4], -1.0, 1.0);
    let b = rng.tensor([2, 16, 12, 4], -1.0, 1.0);
    let hole = usable_hole(&mut rng, &p, b.shape());
    let want = host_layer(&p).forward(&f, &b, Some(&hole)).unwrap();
    for layout in [Layout::Nhwc, Layout::Nchw] {
        let layer = Layer::new(p.clone(), layout).unwrap();
        let (fb, bb, mb) = (to_burn(&f, layout, device), to_burn(&b, layout, device), to_burn(&hole, layout, device));
        let out = layer.forward(fb.clone(), bb, Some(mb)).unwrap();
        // Back to NHWC on burn's side for the comparison.
        let (y, offsets) = match layout {
            Layout::Nchw => (out.y.permute([0, 2, 3, 1]), out.offsets.permute([0, 2, 3, 1])),
            Layout::Nhwc => (out.y, out.offsets),
        };
        assert_eq!(y.dims(), f.shape(), "{layout:?}: y's shape");
        assert_eq!(bits(&f32s(y)), bits(want.y.data()), "{layout:?}: y differs from the host path's");
        assert_eq!(i32s(offsets), want.offsets, "{layout:?}: offsets differ from the host path's");
        // The inputs are burn's buffers, read in place and left as they were.
        let f_back = match layout {
            Layout::Nchw => fb.permute([0, 2, 3, 1]),
            Layout::Nhwc => fb,
        };
        assert_eq!(bits(&f32s(f_back)), bits(f.data()), "{layout:?}: f changed");
    }
}

#[test]
fn burns_work_before_and_after_the_layer_is_ordered() {
    // The layer's input is burn's result of a moment ago, its output feeds burn's next op.
    let device = device();
    let mut rng = Rng::new("burn_ordering");
    let p = Params { rate: 1, ..Default::default() };
    let x = rng.tensor([1, 10, 8, 3], 0.0, 1.0);
    let doubled: Vec<f32> = x.data().iter().map(|v| v * 2.0).collect();
    let x2 = HostTensor::new(x.shape(), doubled).unwrap();
    let want = host_layer(&p).forward(&x2, &x2, None).unwrap();
    let layer = Layer::new(p, Layout::Nhwc).unwrap();
    let xb = to_burn(&x, Layout::Nhwc, device) * 2.0; // pending in burn's queue
    let out = layer.forward(xb.clone(), xb, None).unwrap();
    let plus_one = f32s(out.y + 1.0);
    let want_plus_one: Vec<f32> = want.y.data().iter().map(|v| v + 1.0).collect();
    assert_eq!(bits(&plus_one), bits(&want_plus_one));
}

#[test]
fn errors_name_the_problem() {
    let device = device();
    let layer = Layer::new(Params { rate: 2, ..Default::default() }, Layout::Nchw).unwrap();
    let odd = Tensor::<4>::zeros([1, 2, 7, 8], device);
    let e = layer.forward(odd.clone(), odd, None).unwrap_err().to_string();
    assert!(e.contains("not divisible by rate 2"), "{e}");
    let x = Tensor::<4>::zeros([1, 2, 8, 8], device);
    let wrong_mask = Tensor::<4>::zeros([1, 2, 8, 8], device); // two channels
    let e = layer.forward(x.clone(), x, Some(wrong_mask)).unwrap_err().to_string();
    assert!(e.contains("mask"), "{e}");
    let e = Layer::new(Params { ksize: 0, ..Default::default() }, Layout::Nchw).err().unwrap().to_string();
    assert!(e.contains("ksize"), "{e}");
}
