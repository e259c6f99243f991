//! Device-resident calls: the layer reads its inputs from, and writes its outputs to, wgpu
//! buffers the caller owns, so a model that keeps its tensors on the GPU never sends them
//! through the host ([`ContextualAttention::record_on_device`],
//! [`ContextualAttention::run_on_device`]).
//!
//! The layer copies f, b and the mask into its own working buffers and copies y, argmax and
//! mass out, all on the device (`copy_buffer_to_buffer`). The copies are what lets a caller's
//! tensor start at any 4-byte offset (a storage binding would need the adapter's
//! `min_storage_buffer_offset_alignment`, 256 bytes on most GPUs), lets y overwrite f in place,
//! and keeps the shaders' bindings the same as on the host path; they cost one read and one
//! write of each tensor at memory bandwidth, small beside the matching GEMM.
//!
//! [`ContextualAttention::record_on_device`]: crate::ContextualAttention::record_on_device
//! [`ContextualAttention::run_on_device`]: crate::ContextualAttention::run_on_device

use crate::error::{Error, Result};
use crate::geometry::Geometry;

/// An f32 tensor, NHWC and contiguous, in a caller's wgpu buffer from byte `offset` on.
///
/// The buffer must have been created on the layer's device with
/// [`wgpu::BufferUsages::COPY_SRC`]; `offset` must be a multiple of 4.
#[derive(Clone, Copy, Debug)]
pub struct DeviceTensor<'a> {
    /// The buffer holding the tensor.
    pub buffer: &'a wgpu::Buffer,
    /// Where the tensor starts, in bytes.
    pub offset: u64,
    /// `[batch, height, width, channels]`.
    pub shape: [usize; 4],
}

impl<'a> DeviceTensor<'a> {
    /// The tensor at the start of `buffer`.
    pub fn new(buffer: &'a wgpu::Buffer, shape: [usize; 4]) -> Self {
        DeviceTensor { buffer, offset: 0, shape }
    }

    /// The same tensor starting `offset` bytes into the buffer.
    pub fn at(self, offset: u64) -> Self {
        DeviceTensor { offset, ..self }
    }

    fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * 4
    }
}

/// A place in a caller's buffer that receives an output: `buffer` from byte `offset` on.
#[derive(Clone, Copy, Debug)]
pub struct DeviceTarget<'a> {
    /// The buffer written to (created with [`wgpu::BufferUsages::COPY_DST`]).
    pub buffer: &'a wgpu::Buffer,
    /// Where the output starts, in bytes (a multiple of 4).
    pub offset: u64,
}

/// Where a device-resident call writes its outputs.
///
/// * `y`: f32, NHWC, f's shape.
/// * `argmax` (optional): one u32 per query, `[B, hf, wf]` row-major, the flat index of the
///   winning patch (as [`crate::Output::argmax`]).
/// * `mass` (optional): one f32 per query, the softmax mass on valid patches
///   (as [`crate::Output::mass`]).
///
/// ```no_run
/// # fn demo(y: &wgpu::Buffer, argmax: &wgpu::Buffer) {
/// use contextual_attention::DeviceOutputs;
/// let outputs = DeviceOutputs::y(y).argmax(argmax, 0);
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct DeviceOutputs<'a> {
    /// Receives y.
    pub y: DeviceTarget<'a>,
    /// Receives the argmax, if given.
    pub argmax: Option<DeviceTarget<'a>>,
    /// Receives the attention mass, if given.
    pub mass: Option<DeviceTarget<'a>>,
}

impl<'a> DeviceOutputs<'a> {
    /// y at the start of `buffer`, nothing else.
    pub fn y(buffer: &'a wgpu::Buffer) -> Self {
        Self::y_at(buffer, 0)
    }

    /// y from byte `offset` of `buffer`, nothing else.
    pub fn y_at(buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        DeviceOutputs { y: DeviceTarget { buffer, offset }, argmax: None, mass: None }
    }

    /// Also writes the argmax from byte `offset` of `buffer`.
    pub fn argmax(self, buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        DeviceOutputs { argmax: Some(DeviceTarget { buffer, offset }), ..self }
    }

    /// Also writes the attention mass from byte `offset` of `buffer`.
    pub fn mass(self, buffer: &'a wgpu::Buffer, offset: u64) -> Self {
        DeviceOutputs { mass: Some(DeviceTarget { buffer, offset }), ..self }
    }
}

/// The caller's buffers of one call, checked against the geometry.
#[derive(Clone, Copy)]
pub(crate) struct DeviceIo<'a> {
    pub f: &'a DeviceTensor<'a>,
    pub b: &'a DeviceTensor<'a>,
    pub mask: Option<&'a DeviceTensor<'a>>,
    pub out: &'a DeviceOutputs<'a>,
}

/// Checks that `bytes` from `offset` fit in `buffer` and that it allows `usage`.
fn check_range(
    name: &'static str,
    buffer: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
    usage: wgpu::BufferUsages,
) -> Result<()> {
    let problem = |reason: String| Err(Error::DeviceBuffer { name, reason });
    if !offset.is_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT) {
        return problem(format!("offset {offset} is not a multiple of 4 bytes; start the tensor on a 4-byte boundary"));
    }
    if !buffer.usage().contains(usage) {
        return problem(format!(
            "the buffer was created with usages {:?}, without {usage:?}; add BufferUsages::{} when creating it",
            buffer.usage(),
            if usage == wgpu::BufferUsages::COPY_SRC { "COPY_SRC" } else { "COPY_DST" }
        ));
    }
    let end = offset.saturating_add(bytes);
    if end > buffer.size() {
        return problem(format!(
            "needs {bytes} bytes from offset {offset} (up to byte {end}), but the buffer holds {} bytes",
            buffer.size()
        ));
    }
    Ok(())
}

/// Bytes of an output with one 4-byte value per query (argmax, mass).
fn per_query_bytes(g: &Geometry) -> u64 {
    (g.batch * g.queries()) as u64 * 4
}

impl DeviceIo<'_> {
    /// Checks every range against the buffers and the geometry (shapes are checked by
    /// [`Geometry::new`] before).
    pub(crate) fn check(&self, g: &Geometry) -> Result<()> {
        let src = wgpu::BufferUsages::COPY_SRC;
        let dst = wgpu::BufferUsages::COPY_DST;
        check_range("f", self.f.buffer, self.f.offset, self.f.bytes(), src)?;
        check_range("b", self.b.buffer, self.b.offset, self.b.bytes(), src)?;
        if let Some(m) = self.mask {
            check_range("mask", m.buffer, m.offset, m.bytes(), src)?;
        }
        let out = self.out;
        check_range("y", out.y.buffer, out.y.offset, self.f.bytes(), dst)?;
        let per_query = per_query_bytes(g);
        if let Some(t) = out.argmax {
            check_range("argmax", t.buffer, t.offset, per_query, dst)?;
        }
        if let Some(t) = out.mass {
            check_range("mass", t.buffer, t.offset, per_query, dst)?;
        }
        Ok(())
    }

    /// Copies the inputs into the layer's working buffers.
    pub(crate) fn copy_in(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        f: &wgpu::Buffer,
        b: &wgpu::Buffer,
        mask: &wgpu::Buffer,
    ) {
        let mut copy = |t: &DeviceTensor, to: &wgpu::Buffer| {
            encoder.copy_buffer_to_buffer(t.buffer, t.offset, to, 0, Some(t.bytes()));
        };
        copy(self.f, f);
        copy(self.b, b);
        if let Some(m) = self.mask {
            copy(m, mask);
        }
    }

    /// Copies the outputs from the layer's working buffers into the caller's.
    pub(crate) fn copy_out(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        g: &Geometry,
        y: &wgpu::Buffer,
        argmax: &wgpu::Buffer,
        mass: &wgpu::Buffer,
    ) {
        let out = self.out;
        encoder.copy_buffer_to_buffer(y, 0, out.y.buffer, out.y.offset, Some(self.f.bytes()));
        let per_query = per_query_bytes(g);
        for (from, to) in [(argmax, out.argmax), (mass, out.mass)] {
            if let Some(t) = to {
                encoder.copy_buffer_to_buffer(from, 0, t.buffer, t.offset, Some(per_query));
            }
        }
    }
}
