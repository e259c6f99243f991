//! The layer on [burn](https://burn.dev) tensors (feature `burn`, burn 0.22): burn's wgpu runtime
//! and this crate share one wgpu device, and the layer reads burn's buffers and writes new burn
//! tensors in place, with no copy through the host.
//!
//! ```no_run
//! use burn::prelude::*;
//! use contextual_attention::burn::{init_device, Layer, Layout};
//! use contextual_attention::Params;
//! # fn main() -> contextual_attention::Result<()> {
//! let device = init_device()?; // burn's wgpu device, shared with the layer
//! let x = Tensor::<4>::random([1, 16, 64, 64], burn::tensor::Distribution::Default, &device); // NCHW
//! let hole = Tensor::<4>::zeros([1, 1, 64, 64], &device).slice_fill(s![.., .., 20..44, 20..44], 1.0);
//! let layer = Layer::new(Params { rate: 2, ..Default::default() }, Layout::Nchw)?;
//! let out = layer.forward(x.clone(), x, Some(hole))?;
//! assert_eq!(out.y.dims(), [1, 16, 64, 64]);
//! assert_eq!(out.offsets.dims(), [1, 2, 32, 32]); // (row, col) of the chosen patch, channels first
//! # Ok(()) }
//! ```
//!
//! **Sharing the device.** burn keeps no handle to a wgpu device it creates on its own, so the
//! device is created through burn with [`init_device`] (burn's features and limits, burn's
//! `Device::wgpu_options().init_with_setup()`), which hands its wgpu device and queue to this
//! crate too; an application that calls `init_with_setup` itself passes the setup to
//! [`register`]. Tensors on a device not shared this way are refused with an error saying so.
//!
//! **In place.** Inputs are burn's own buffers (made contiguous by burn first where they are
//! views, e.g. after a `permute`); the outputs are new burn tensors whose buffers the layer writes.
//! The layer's work is submitted on the shared queue after burn's pending work, so it sees what
//! burn computed before, and burn's later work sees its results.
//!
//! **burn's `fusion` feature must be off** (it is on among burn's default features: depend on burn
//! with `default-features = false`). With fusion, burn tensors are handles into a lazy graph
//! rather than buffers, and this module does not compile (`CubeTensor` expected, `FusionTensor`
//! found). Autodiff tensors are refused at run time (the layer has no backward pass).

use std::collections::HashMap;
use std::sync::Mutex;

use ::burn::backend::wgpu::{CubeTensor, WgpuResource, WgpuSetup};
use ::burn::backend::{Cube, CubeDevice};
use ::burn::cubecl::wgpu::{AutoCompiler, WgpuServer};
use ::burn::prelude::{Device, Int, Shape, Tensor};
use ::burn::tensor::DType;

use crate::error::{Error, Result};
use crate::gpu::context::Gpu;
use crate::gpu::resident::{DeviceOutputs, DeviceTensor};
use crate::layer::{ContextualAttention, RunOptions};
use crate::params::Params;

/// The storage server of burn's wgpu runtime, whose buffers the layer reads.
type Server = WgpuServer<AutoCompiler>;

/// How the burn tensors are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `[batch, channels, height, width]`, burn's own convention (its `Conv2d` takes it): the
    /// default. The mask is `[1 or B, 1, H, W]`, the offsets `[B, 2, hf, wf]`.
    #[default]
    Nchw,
    /// `[batch, height, width, channels]`, the original layer's: the mask is `[1 or B, H, W, 1]`,
    /// the offsets `[B, hf, wf, 2]`.
    Nhwc,
}

/// What a call returns, as burn tensors on the inputs' device.
#[derive(Clone, Debug)]
pub struct BurnOutput {
    /// The reconstruction, in the layout of the inputs (f's shape).
    pub y: Tensor<4>,
    /// (row, col) of each query's chosen patch in b's patch grid: `[B, 2, hf, wf]` (NCHW) or
    /// `[B, hf, wf, 2]` (NHWC).
    pub offsets: Tensor<4, Int>,
}

/// The wgpu devices shared between burn and the layer: burn's device, and the layer's context on
/// the same wgpu device.
static SHARED: Mutex<Vec<(CubeDevice, Gpu)>> = Mutex::new(Vec::new());

/// Creates burn's wgpu device (burn's adapter choice, features and limits) and shares it with
/// the layer. Call it once, before burn creates a wgpu device of its own, and use the returned
/// device for the model's tensors.
pub fn init_device() -> Result<Device> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| Error::NoAdapter(format!("burn could not create its wgpu device: {e}")))?;
    register(&device, &setup)?;
    Ok(device)
}

/// Shares a burn device created with `Device::wgpu_options().init_with_setup()` with the layer;
/// `setup` is what that call returned. Returns the layer's context on it (for
/// [`ContextualAttention::new`] and the device-resident calls).
pub fn register(device: &Device, setup: &WgpuSetup) -> Result<Gpu> {
    let gpu = Gpu::from_device(setup.device.clone(), setup.queue.clone(), setup.adapter.get_info());
    let cube = cube_device(device)?;
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    shared.retain(|(d, _)| *d != cube);
    shared.push((cube, gpu.clone()));
    Ok(gpu)
}

/// The layer's context on a burn device shared with it ([`init_device`], [`register`]): for
/// [`ContextualAttention`]'s own calls (host tensors, device-resident calls) on burn's device.
pub fn gpu_of(device: &Device) -> Result<Gpu> {
    shared_gpu(&cube_device(device)?)
}

/// The runtime's cube device behind a burn device: burn's device names its runtime, and a
/// tensor on it carries the cube device.
fn cube_device(device: &Device) -> Result<CubeDevice> {
    Ok(cube_tensor("the device's probe", Tensor::<4>::zeros([1, 1, 1, 1], device))?.device)
}

/// The layer's context on the wgpu device of `device`.
fn shared_gpu(device: &CubeDevice) -> Result<Gpu> {
    let shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    shared.iter().find(|(d, _)| d == device).map(|(_, g)| g.clone()).ok_or_else(|| {
        Error::Unsupported(format!(
            "the burn tensors are on {device:?}, a device not shared with the layer; create the device with \
             contextual_attention::burn::init_device() (or pass Device::wgpu_options().init_with_setup()'s setup \
             to contextual_attention::burn::register): burn keeps no handle to a wgpu device it creates on its own"
        ))
    })
}

/// The burn primitive of a float tensor on burn's wgpu runtime, contiguous, f32.
fn cube_tensor(name: &str, t: Tensor<4>) -> Result<CubeTensor> {
    let cube: CubeTensor = t.try_into_primitive::<Cube>().map_err(|e| {
        Error::Unsupported(format!(
            "`{name}` is not a tensor of burn's wgpu backend ({e:?}); the layer runs on burn's wgpu runtime, \
             without autodiff (it has no backward pass): use .inner() or a non-autodiff device"
        ))
    })?;
    if !matches!(cube.device, CubeDevice::Wgpu(_)) {
        return Err(Error::Unsupported(format!("`{name}` is on {:?}, not a wgpu device", cube.device)));
    }
    if cube.dtype != DType::F32 {
        return Err(Error::Unsupported(format!(
            "`{name}` holds {:?}; the layer takes f32: convert it with .cast(DType::F32)",
            cube.dtype
        )));
    }
    Ok(burn_cubecl::kernel::into_contiguous(cube))
}

/// A checked input: its burn primitive (kept alive while the layer uses its buffer), its
/// NHWC shape.
struct Input {
    cube: CubeTensor,
    shape: [usize; 4],
}

impl Input {
    fn new(name: &str, t: Tensor<4>, layout: Layout) -> Result<Input> {
        let t = match layout {
            Layout::Nchw => t.permute([0, 2, 3, 1]),
            Layout::Nhwc => t,
        };
        let cube = cube_tensor(name, t)?;
        let s = cube.meta.shape();
        let shape = [s[0], s[1], s[2], s[3]];
        Ok(Input { cube, shape })
    }
}

/// The layer on burn tensors, with fixed parameters and layout; keeps one
/// [`ContextualAttention`] per device (pipelines and buffers stay between calls).
pub struct Layer {
    params: Params,
    layout: Layout,
    layers: Mutex<HashMap<CubeDevice, std::sync::Arc<ContextualAttention>>>,
}

impl Layer {
    /// The layer with these parameters, for tensors in `layout`.
    pub fn new(params: Params, layout: Layout) -> Result<Layer> {
        params.validate()?;
        Ok(Layer { params, layout, layers: Mutex::default() })
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Runs the layer on burn tensors: `f` the queries, `b` the patches, `mask` (optional, 1 =
    /// not a source) in the layer's [`Layout`]. All three must be f32 tensors on a device
    /// shared with the layer ([`init_device`]). The call is submitted before it returns; the
    /// outputs are ordinary burn tensors that later burn work reads after it.
    pub fn forward(&self, f: Tensor<4>, b: Tensor<4>, mask: Option<Tensor<4>>) -> Result<BurnOutput> {
        let f = Input::new("f", f, self.layout)?;
        let b = Input::new("b", b, self.layout)?;
        let mask = mask.map(|m| Input::new("mask", m, self.layout)).transpose()?;
        let device = f.cube.device.clone();
        for (name, t) in [("b", Some(&b)), ("mask", mask.as_ref())] {
            if let Some(t) = t {
                if t.cube.device != device {
                    return Err(Error::Unsupported(format!(
                        "`{name}` is on {:?} but `f` on {device:?}; move them to one device",
                        t.cube.device
                    )));
                }
            }
        }
        let layer = self.layer_on(&device)?;
        let g = crate::Geometry::new(&self.params, f.shape, b.shape, mask.as_ref().map(|m| m.shape))?;

        // The outputs: new buffers of burn's, on its device.
        let client = f.cube.client.clone();
        let empty = |shape: Shape, dtype: DType| {
            let bytes = client.empty(shape.num_elements() * 4);
            CubeTensor::new_contiguous(client.clone(), device.clone(), shape, bytes, dtype)
        };
        let y = empty(Shape::new(f.shape), DType::F32);
        let argmax = empty(Shape::new([g.batch, g.hf, g.wf]), DType::I32);

        // Pinning burn's buffers (get_resource) also submits burn's pending work on the queue, so
        // the layer's submission comes after it.
        let resource = |t: &CubeTensor| {
            client
                .get_resource::<Server>(t.handle.clone())
                .map_err(|e| Error::Gpu(format!("burn could not hand over a buffer: {e:?}")))
        };
        let (f_res, b_res, y_res, argmax_res) =
            (resource(&f.cube)?, resource(&b.cube)?, resource(&y)?, resource(&argmax)?);
        let mask_res = mask.as_ref().map(|m| resource(&m.cube)).transpose()?;
        client.flush().map_err(|e| Error::Gpu(format!("burn could not submit its pending work: {e:?}")))?;
        fn tensor(r: &WgpuResource, shape: [usize; 4]) -> DeviceTensor<'_> {
            DeviceTensor { buffer: &r.buffer, offset: r.offset, shape }
        }
        let (f_dev, b_dev) = (tensor(f_res.resource(), f.shape), tensor(b_res.resource(), b.shape));
        let mask_dev = mask.as_ref().zip(mask_res.as_ref()).map(|(m, r)| tensor(r.resource(), m.shape));
        let (y_r, a_r) = (y_res.resource(), argmax_res.resource());
        let outputs = DeviceOutputs::y_at(&y_r.buffer, y_r.offset).argmax(&a_r.buffer, a_r.offset);
        layer.run_on_device(&f_dev, &b_dev, mask_dev.as_ref(), &outputs, &RunOptions::new())?;
        // The pins may go now: burn's later work on these buffers is queued after the layer's.
        drop((f_res, b_res, y_res, argmax_res, mask_res));

        let y = Tensor::<4>::from_primitive::<Cube>(y);
        let argmax = Tensor::<3, Int>::from_primitive::<Cube>(argmax);
        let pw = g.pw as i32;
        // argmax is the flat index u·pw + v (u32 values below 2³¹, the same bits as i32).
        let offsets = Tensor::stack::<4>(vec![argmax.clone().div_scalar(pw), argmax.remainder_scalar(pw)], 3);
        Ok(match self.layout {
            Layout::Nchw => BurnOutput { y: y.permute([0, 3, 1, 2]), offsets: offsets.permute([0, 3, 1, 2]) },
            Layout::Nhwc => BurnOutput { y, offsets },
        })
    }

    /// The layer on `device`'s shared context, built on first use.
    fn layer_on(&self, device: &CubeDevice) -> Result<std::sync::Arc<ContextualAttention>> {
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = layers.get(device) {
            return Ok(l.clone());
        }
        let layer = std::sync::Arc::new(ContextualAttention::new(&shared_gpu(device)?, self.params.clone())?);
        layers.insert(device.clone(), layer.clone());
        Ok(layer)
    }
}

/// The layer once on NCHW burn tensors: `Layer::new(params.clone(), Layout::Nchw)?.forward(f, b,
/// mask)`. Keep a [`Layer`] for repeated calls.
pub fn contextual_attention(
    f: Tensor<4>,
    b: Tensor<4>,
    mask: Option<Tensor<4>>,
    params: &Params,
) -> Result<BurnOutput> {
    Layer::new(params.clone(), Layout::Nchw)?.forward(f, b, mask)
}
