//! One module per shader, named as the shader and as its twin in [`crate::reference`]: the
//! stage's uniform struct, its [`Kernel`](super::kernel::Kernel) declaration, the builder of its
//! parameters, its `record` (what the forward pass calls) and its `run` (the stage alone on a
//! [`Gpu`], for the stage tests: inputs uploaded from slices, outputs poisoned with NaN or
//! `u32::MAX` first, so an element a shader forgets to write shows up).

pub mod attention_rows;
pub mod downscale;
pub mod fold;
pub mod fuse;
pub mod gemm;
pub mod mask_validity;
pub mod matching_patches;
pub mod normalize;
pub mod query_patches;
pub mod raw_patches;
pub mod softmax;

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use super::kernel::{KernelInfo, Recorder};
use crate::error::{Error, Result};
use crate::gpu::context::Gpu;

/// Every kernel of the layer: the one table the pipelines are built from and the reflection
/// test checks.
pub static KERNELS: &[&KernelInfo] = &[
    &downscale::KERNEL.info,
    &matching_patches::KERNEL.info,
    &mask_validity::KERNEL.info,
    &raw_patches::KERNEL.info,
    &query_patches::KERNEL.info,
    &gemm::KERNELS[0].info,
    &gemm::KERNELS[1].info,
    &gemm::KERNELS[2].info,
    &gemm::KERNELS[3].info,
    &gemm::KERNELS[4].info,
    &gemm::KERNELS[5].info,
    &gemm::KERNELS[6].info,
    &gemm::KERNELS[7].info,
    &gemm::KERNELS[8].info,
    &gemm::KERNELS[9].info,
    &gemm::KERNELS[10].info,
    &gemm::KERNELS[11].info,
    &gemm::KERNELS[12].info,
    &gemm::KERNELS[13].info,
    &gemm::KERNELS[14].info,
    &gemm::KERNELS[15].info,
    &gemm::KERNELS[16].info,
    &gemm::KERNELS[17].info,
    &gemm::KERNELS[18].info,
    &gemm::KERNELS[19].info,
    &fuse::KERNEL.info,
    &softmax::KERNEL.info,
    &attention_rows::KERNEL.info,
    &fold::KERNEL.info,
    &normalize::KERNEL.info,
];

/// Where a stage reads the downscaled image from: the full-resolution image at element
/// `src_off` (its batch item), `full_w` wide, through the NN maps at `map_rows` and `map_cols`
/// of the index table (SPEC §2.5).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Source {
    pub src_off: usize,
    pub full_w: usize,
    pub map_rows: u32,
    pub map_cols: u32,
}

/// Usage of every working buffer.
pub(crate) const STORAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST).union(wgpu::BufferUsages::COPY_SRC);

/// One stage run alone: its input and output buffers, its dispatches, one submission.
pub(crate) struct Single<'g> {
    gpu: &'g Gpu,
    pub(crate) rec: Recorder,
}

impl<'g> Single<'g> {
    pub(crate) fn new(gpu: &'g Gpu) -> Single<'g> {
        Single { gpu, rec: Recorder::new(&gpu.device) }
    }

    /// A buffer holding `data`.
    pub(crate) fn input<T: Pod>(&self, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let padded = if bytes.is_empty() { &[0u8; 4][..] } else { bytes };
        self.gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("stage input"),
            contents: padded,
            usage: STORAGE,
        })
    }

    /// A buffer of `len` NaNs.
    pub(crate) fn poisoned(&self, len: usize) -> wgpu::Buffer {
        self.input(&vec![f32::NAN; len.max(1)])
    }

    /// Submits the recorded dispatches and reads back `outputs` (lengths in elements).
    pub(crate) fn finish(self, outputs: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<u32>>> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::Unsupported(
                "a stage run alone blocks on its readback, which the browser forbids; the layer's \
                 run_async runs every stage there"
                    .into(),
            ));
        }
        let gpu = self.gpu;
        let device = &gpu.device;
        let kernels = gpu.kernels();
        let (staging, idx, rx) = gpu.checked(|| {
            let mut encoder = self.rec.encode(device, &kernels, None, |_| {}).pop().expect("one part");
            let total: usize = outputs.iter().map(|(_, n)| n.max(&1)).sum();
            let staging = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("stage readback"),
                size: (total * 4) as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut at = 0u64;
            for (buf, n) in outputs {
                let bytes = (n.max(&1) * 4) as u64;
                encoder.copy_buffer_to_buffer(buf, 0, &staging, at, Some(bytes));
                at += bytes;
            }
            let (tx, rx) = std::sync::mpsc::channel();
            encoder.map_buffer_on_submit(&staging, wgpu::MapMode::Read, .., move |r| {
                tx.send(r).ok();
            });
            let idx = gpu.queue.submit([encoder.finish()]);
            Ok((staging, idx, rx))
        })?;
        gpu.wait(idx)?;
        gpu.take_errors()?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback did not run".into()))?
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let view = staging.get_mapped_range(..).map_err(|e| Error::Gpu(e.to_string()))?;
        let words: &[u32] = bytemuck::cast_slice(&view);
        let mut out = Vec::new();
        let mut at = 0;
        for (_, n) in outputs {
            out.push(words[at..at + n].to_vec());
            at += n.max(&1);
        }
        Ok(out)
    }
}

/// Reinterprets read-back words as floats.
pub(crate) fn floats(v: Vec<u32>) -> Vec<f32> {
    bytemuck::cast_slice(&v).to_vec()
}
