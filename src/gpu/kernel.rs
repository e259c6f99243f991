//! What the host and a shader agree on, stated once: [`KernelInfo`] (the shader file, its
//! uniform struct's size, the access of each storage binding, the workgroup size and the
//! override constants), the pipelines built from it, and the [`Recorder`] that collects a call's
//! dispatches and encodes them.
//!
//! Every stage module in [`super::stages`] declares its kernel as a `static` [`Kernel`]; the
//! table [`super::stages::KERNELS`] lists them all. Bindings are positional: binding 0 is the
//! stage's uniform `Params`, bindings 1..=n its storage buffers in the order of
//! [`KernelInfo::storage`], which is also the order a stage's `record` passes its buffers in.
//! The bind group layouts are built from that table rather than from the shader, so the table
//! is the contract; the test `tests/reflection.rs` checks every shader against it with naga.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use bytemuck::Pod;

use crate::error::{Error, Result};

/// Helpers every shader may call (index folding, padded windows, coverage); prepended to each
/// stage's source, since WGSL has no includes.
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

/// How a kernel uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// The host side of one compute kernel: everything the host and the shader must agree on.
#[derive(Debug)]
pub struct KernelInfo {
    /// The kernel's name (labels, errors).
    pub name: &'static str,
    /// The shader's file name in `shaders/`.
    pub file: &'static str,
    /// The shader's source, without [`COMMON_WGSL`]; the entry point is `main`.
    pub source: &'static str,
    /// Size in bytes of the uniform `Params` struct at binding 0.
    pub params_size: usize,
    /// Access of the storage bindings 1, 2, …, in order.
    pub storage: &'static [Access],
    /// `@workgroup_size` of the entry point.
    pub workgroup_size: [u32; 3],
    /// Values of the shader's `override` constants for this kernel.
    pub constants: &'static [(&'static str, f64)],
}

impl KernelInfo {
    /// The source the pipeline is compiled from: the common helpers, then the stage.
    pub fn full_source(&self) -> String {
        format!("{COMMON_WGSL}\n{}", self.source)
    }

    /// Invocations per workgroup.
    pub fn invocations(&self) -> u32 {
        self.workgroup_size.iter().product()
    }
}

/// A kernel whose uniform block has the host type `P` (so a stage cannot record another
/// stage's parameters).
#[derive(Debug)]
pub struct Kernel<P> {
    /// The contract.
    pub info: KernelInfo,
    params: PhantomData<fn(P)>,
}

impl<P> Kernel<P> {
    /// Declares a kernel; `params_size` is taken from `P`.
    pub(crate) const fn new(
        name: &'static str,
        file: &'static str,
        source: &'static str,
        storage: &'static [Access],
        workgroup_size: [u32; 3],
        constants: &'static [(&'static str, f64)],
    ) -> Kernel<P> {
        let info = KernelInfo { name, file, source, params_size: size_of::<P>(), storage, workgroup_size, constants };
        Kernel { info, params: PhantomData }
    }
}

/// The pipelines of the kernels of [`super::stages::KERNELS`], by name, each compiled on its
/// first use: a call needs two of the ten GEMM kernels, and compiling the others up front cost
/// a browser on a software adapter most of a first call's 34 s.
pub(crate) struct Kernels {
    device: wgpu::Device,
    modules: HashMap<&'static str, OnceLock<wgpu::ShaderModule>>,
    pipelines: HashMap<&'static str, OnceLock<wgpu::ComputePipeline>>,
}

impl Kernels {
    pub(crate) fn new(device: &wgpu::Device) -> Kernels {
        let kernels = super::stages::KERNELS;
        Kernels {
            device: device.clone(),
            modules: kernels.iter().map(|info| (info.file, OnceLock::new())).collect(),
            pipelines: kernels.iter().map(|info| (info.name, OnceLock::new())).collect(),
        }
    }

    /// The kernel's pipeline, compiled now if this is its first use. Callers record inside the
    /// GPU's error scopes, which catch a compilation error here.
    fn pipeline(&self, info: &KernelInfo) -> &wgpu::ComputePipeline {
        // Every kernel is in the table the maps were built from.
        self.pipelines[info.name].get_or_init(|| {
            let device = &self.device;
            let module = self.modules[info.file].get_or_init(|| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(info.file),
                    source: wgpu::ShaderSource::Wgsl(info.full_source().into()),
                })
            });
            let entries: Vec<wgpu::BindGroupLayoutEntry> = std::iter::once(wgpu::BufferBindingType::Uniform)
                .chain(info.storage.iter().map(|a| wgpu::BufferBindingType::Storage { read_only: *a == Access::Read }))
                .enumerate()
                .map(|(binding, ty)| wgpu::BindGroupLayoutEntry {
                    binding: binding as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
                    count: None,
                })
                .collect();
            let group_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(info.name),
                entries: &entries,
            });
            let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(info.name),
                bind_group_layouts: &[Some(&group_layout)],
                immediate_size: 0,
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(info.name),
                layout: Some(&layout),
                module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: info.constants,
                    ..Default::default()
                },
                cache: None,
            })
        })
    }
}

/// Offset alignment of the parameter blocks in the shared uniform buffer.
const UNIFORM_ALIGN: usize = 256;

struct Op {
    kernel: &'static KernelInfo,
    uniform_offset: u64,
    uniform_size: u64,
    buffers: Vec<wgpu::Buffer>,
    groups: (u32, u32),
}

/// Collects dispatches, then encodes them into compute passes.
pub(crate) struct Recorder {
    ops: Vec<Op>,
    /// Op indices where a new submission starts.
    breaks: Vec<usize>,
    uniforms: Vec<u8>,
    max_groups: u32,
}

/// Converts a size to the `u32` the shaders index with, or says it is too large.
pub(crate) fn u32_of(name: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::BufferTooLarge {
        name,
        size: v as u64 * 4,
        limit: u32::MAX as u64 * 4,
        what: "index range",
    })
}

impl Recorder {
    pub(crate) fn new(device: &wgpu::Device) -> Recorder {
        Recorder {
            ops: Vec::new(),
            breaks: Vec::new(),
            uniforms: Vec::new(),
            max_groups: device.limits().max_compute_workgroups_per_dimension,
        }
    }

    /// A dispatch of `groups` workgroups of `kernel`; `storage` are its storage buffers, bound
    /// to bindings 1, 2, … in order.
    pub(crate) fn dispatch<P: Pod, const N: usize>(
        &mut self,
        kernel: &'static Kernel<P>,
        params: &P,
        storage: [&wgpu::Buffer; N],
        groups: (u32, u32),
    ) {
        let info = &kernel.info;
        debug_assert_eq!(N, info.storage.len(), "kernel {}: buffers against its storage table", info.name);
        let offset = self.uniforms.len();
        let bytes = bytemuck::bytes_of(params);
        self.uniforms.extend_from_slice(bytes);
        let size = bytes.len().div_ceil(16) * 16;
        self.uniforms.resize(offset + size.max(UNIFORM_ALIGN).div_ceil(UNIFORM_ALIGN) * UNIFORM_ALIGN, 0);
        self.ops.push(Op {
            kernel: info,
            uniform_offset: offset as u64,
            uniform_size: size as u64,
            buffers: storage.iter().map(|b| (*b).clone()).collect(),
            groups,
        });
    }

    /// Splits `groups` workgroups into an (x, y) grid under the per-dimension limit (the
    /// shaders' `flat_index` undoes it).
    pub(crate) fn fold_groups(&self, kernel: &KernelInfo, groups: u64) -> Result<(u32, u32)> {
        let max = self.max_groups as u64;
        if groups == 0 {
            return Ok((0, 0));
        }
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::DispatchTooLarge { kernel: kernel.name, groups, limit: self.max_groups });
        }
        Ok((x as u32, y as u32))
    }

    /// A 1-D dispatch over `count` invocations, folded into a 2-D grid.
    pub(crate) fn linear<P: Pod, const N: usize>(
        &mut self,
        kernel: &'static Kernel<P>,
        params: &P,
        storage: [&wgpu::Buffer; N],
        count: u64,
    ) -> Result<()> {
        let groups = self.fold_groups(&kernel.info, count.div_ceil(kernel.info.invocations() as u64))?;
        self.dispatch(kernel, params, storage, groups);
        Ok(())
    }

    /// A 2-D dispatch of `gx × gy` workgroups, unfolded (the GEMM's tile grid).
    pub(crate) fn grid<P: Pod, const N: usize>(
        &mut self,
        kernel: &'static Kernel<P>,
        params: &P,
        storage: [&wgpu::Buffer; N],
        (gx, gy): (u32, u32),
    ) -> Result<()> {
        if gx > self.max_groups || gy > self.max_groups {
            let groups = gx as u64 * gy as u64;
            return Err(Error::DispatchTooLarge { kernel: kernel.info.name, groups, limit: self.max_groups });
        }
        self.dispatch(kernel, params, storage, (gx, gy));
        Ok(())
    }

    /// Ends the current submission here: the dispatches recorded next go into a new command
    /// buffer. Long calls are split at tile boundaries, so that no single submission runs for
    /// long (operating systems reset GPUs that stay busy for seconds) and progress can be told.
    pub(crate) fn split(&mut self) {
        if self.breaks.last() != Some(&self.ops.len()) {
            self.breaks.push(self.ops.len());
        }
    }

    /// Encodes the recorded dispatches, in order, one compute pass per submission part, and
    /// returns one encoder per part. `prelude` is recorded first in the first part;
    /// `timestamps`, if given, records the start of the first pass and the end of the last one
    /// in queries 0 and 1.
    pub(crate) fn encode(
        self,
        device: &wgpu::Device,
        kernels: &Kernels,
        timestamps: Option<&wgpu::QuerySet>,
        prelude: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Vec<wgpu::CommandEncoder> {
        let new_encoder =
            || device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("contextual attention") });
        let mut first = new_encoder();
        prelude(&mut first);
        if self.ops.is_empty() {
            return vec![first];
        }
        let bind_groups = self.bind_groups(device, kernels);
        // Part boundaries: 0, the splits strictly inside, the end.
        let mut bounds = vec![0];
        bounds.extend(self.breaks.iter().copied().filter(|&b| b > 0 && b < self.ops.len()));
        bounds.push(self.ops.len());
        let parts = bounds.len() - 1;
        let mut encoders = Vec::with_capacity(parts);
        let mut first = Some(first);
        for (k, w) in bounds.windows(2).enumerate() {
            let mut encoder = first.take().unwrap_or_else(new_encoder);
            let timestamp_writes = timestamps.and_then(|query_set| {
                let (begin, end) = ((k == 0).then_some(0), (k + 1 == parts).then_some(1));
                (begin.is_some() || end.is_some()).then_some(wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: begin,
                    end_of_pass_write_index: end,
                })
            });
            self.pass(&mut encoder, kernels, &bind_groups, w[0]..w[1], timestamp_writes);
            encoders.push(encoder);
        }
        encoders
    }

    /// Encodes every recorded dispatch into `encoder` as one compute pass, whatever the
    /// splits: the caller's encoder is one submission.
    pub(crate) fn encode_into(self, device: &wgpu::Device, kernels: &Kernels, encoder: &mut wgpu::CommandEncoder) {
        if self.ops.is_empty() {
            return;
        }
        let bind_groups = self.bind_groups(device, kernels);
        self.pass(encoder, kernels, &bind_groups, 0..self.ops.len(), None);
    }

    /// One bind group per dispatch: its slice of the uniform buffer, then its storage buffers.
    fn bind_groups(&self, device: &wgpu::Device, kernels: &Kernels) -> Vec<wgpu::BindGroup> {
        let uniforms = wgpu::util::DeviceExt::create_buffer_init(
            device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("parameters"),
                contents: &self.uniforms,
                usage: wgpu::BufferUsages::UNIFORM,
            },
        );
        self.ops
            .iter()
            .map(|op| {
                let params = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &uniforms,
                    offset: op.uniform_offset,
                    size: wgpu::BufferSize::new(op.uniform_size),
                });
                let entries: Vec<wgpu::BindGroupEntry> = std::iter::once(params)
                    .chain(op.buffers.iter().map(|b| b.as_entire_binding()))
                    .enumerate()
                    .map(|(binding, resource)| wgpu::BindGroupEntry { binding: binding as u32, resource })
                    .collect();
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(op.kernel.name),
                    layout: &kernels.pipeline(op.kernel).get_bind_group_layout(0),
                    entries: &entries,
                })
            })
            .collect()
    }

    /// The dispatches `ops` as one compute pass of `encoder`.
    fn pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernels: &Kernels,
        bind_groups: &[wgpu::BindGroup],
        ops: std::ops::Range<usize>,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("contextual attention"), timestamp_writes });
        for (op, bg) in self.ops[ops.clone()].iter().zip(&bind_groups[ops]) {
            if op.groups.0 == 0 || op.groups.1 == 0 {
                continue;
            }
            pass.set_pipeline(kernels.pipeline(op.kernel));
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(op.groups.0, op.groups.1, 1);
        }
    }
}
