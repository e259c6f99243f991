//! The compute pipelines (one per stage, built once) and a recorder that collects the
//! dispatches of a call, packs their parameters into one uniform buffer and encodes them.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};

/// WGSL sources, one file per stage.
pub const SHADERS: [(&str, &str); 7] = [
    ("downscale.wgsl", include_str!("../../shaders/downscale.wgsl")),
    ("patches.wgsl", include_str!("../../shaders/patches.wgsl")),
    ("gemm.wgsl", include_str!("../../shaders/gemm.wgsl")),
    ("fuse.wgsl", include_str!("../../shaders/fuse.wgsl")),
    ("softmax.wgsl", include_str!("../../shaders/softmax.wgsl")),
    ("fold.wgsl", include_str!("../../shaders/fold.wgsl")),
    ("rows.wgsl", include_str!("../../shaders/rows.wgsl")),
];

/// The kernels, in the order of [`Kernels::pipelines`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Downscale,
    MatchingPatches,
    MaskValidity,
    QueryPatches,
    RawPatches,
    ScoresGemm,
    PasteGemm,
    Fuse,
    Softmax,
    Fold,
    Normalize,
    CopyRows,
}

impl Kernel {
    /// (shader file index, entry point, TRANS_B override or none)
    fn source(self) -> (usize, &'static str, Option<bool>) {
        match self {
            Kernel::Downscale => (0, "main", None),
            Kernel::MatchingPatches => (1, "matching_patches", None),
            Kernel::MaskValidity => (1, "mask_validity", None),
            Kernel::QueryPatches => (1, "query_patches", None),
            Kernel::RawPatches => (1, "raw_patches", None),
            Kernel::ScoresGemm => (2, "main", Some(true)),
            Kernel::PasteGemm => (2, "main", Some(false)),
            Kernel::Fuse => (3, "main", None),
            Kernel::Softmax => (4, "main", None),
            Kernel::Fold => (5, "fold", None),
            Kernel::Normalize => (5, "normalize", None),
            Kernel::CopyRows => (6, "main", None),
        }
    }

    const ALL: [Kernel; 12] = [
        Kernel::Downscale,
        Kernel::MatchingPatches,
        Kernel::MaskValidity,
        Kernel::QueryPatches,
        Kernel::RawPatches,
        Kernel::ScoresGemm,
        Kernel::PasteGemm,
        Kernel::Fuse,
        Kernel::Softmax,
        Kernel::Fold,
        Kernel::Normalize,
        Kernel::CopyRows,
    ];

    /// Invocations per workgroup of the 1-D kernels.
    pub(crate) fn workgroup_size(self) -> u64 {
        match self {
            Kernel::MatchingPatches | Kernel::MaskValidity | Kernel::QueryPatches | Kernel::RawPatches => 64,
            _ => 256,
        }
    }
}

/// Compiled pipelines for every stage.
pub(crate) struct Kernels {
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Kernels {
    pub(crate) fn new(device: &wgpu::Device) -> Result<Kernels> {
        let modules: Vec<wgpu::ShaderModule> = SHADERS
            .iter()
            .map(|(name, src)| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(name),
                    source: wgpu::ShaderSource::Wgsl((*src).into()),
                })
            })
            .collect();
        let pipelines = Kernel::ALL
            .iter()
            .map(|k| {
                let (file, entry, trans_b) = k.source();
                let constants: Vec<(&str, f64)> =
                    trans_b.map(|t| ("TRANS_B", if t { 1.0 } else { 0.0 })).into_iter().collect();
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel_name(*k)),
                    layout: None,
                    module: &modules[file],
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        ..Default::default()
                    },
                    cache: None,
                })
            })
            .collect();
        Ok(Kernels { pipelines })
    }

    fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        &self.pipelines[k as usize]
    }
}

// Parameter blocks, laid out as the WGSL structs of the same name (all 4-byte scalars).

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct DownscaleParams {
    pub count: u32,
    pub src_off: u32,
    pub src_w: u32,
    pub out_w: u32,
    pub c: u32,
    pub rows_off: u32,
    pub cols_off: u32,
    pub dst_off: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub(crate) struct PatchParams {
    pub count: u32,
    pub src_off: u32,
    pub h: u32,
    pub w: u32,
    pub c: u32,
    pub k: u32,
    pub step: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub grid_w: u32,
    pub index_off: u32,
    pub dst_off: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub a_off: u32,
    pub b_off: u32,
    pub c_off: u32,
    pub lda: u32,
    pub ldb: u32,
    pub ldc: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct FuseParams {
    pub count: u32,
    pub mode: u32,
    pub which: u32,
    pub hf: u32,
    pub wf: u32,
    pub ph: u32,
    pub pw: u32,
    pub fk: u32,
    pub p: u32,
    pub in_slots_off: u32,
    pub out_rows_off: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct SoftmaxParams {
    pub rows: u32,
    pub l: u32,
    pub scale: f32,
    pub masking: u32,
    pub mm_off: u32,
    pub out_off: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug, Default)]
pub(crate) struct FoldParams {
    pub count: u32,
    pub y_off: u32,
    pub row0: u32,
    pub out_w: u32,
    pub c: u32,
    pub hf: u32,
    pub wf: u32,
    pub rate: u32,
    pub kernel: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub r0: u32,
    pub r1: u32,
    pub overlap: u32,
    pub divisor: f32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub(crate) struct RowsParams {
    pub count: u32,
    pub l: u32,
    pub pairs_off: u32,
    pub first_row: u32,
}

/// Offset alignment of the parameter blocks in the shared uniform buffer.
const UNIFORM_ALIGN: usize = 256;

struct Op {
    kernel: Kernel,
    uniform_offset: u64,
    uniform_size: u64,
    buffers: Vec<(u32, wgpu::Buffer)>,
    groups: (u32, u32),
}

/// Collects dispatches, then encodes them into one compute pass.
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

    /// A dispatch of `groups` workgroups; `buffers` are (binding, buffer), binding 0 being the parameters.
    pub(crate) fn dispatch<P: Pod>(
        &mut self,
        kernel: Kernel,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32),
    ) {
        let offset = self.uniforms.len();
        let bytes = bytemuck::bytes_of(params);
        self.uniforms.extend_from_slice(bytes);
        let size = bytes.len().div_ceil(16) * 16;
        self.uniforms.resize(offset + size.max(UNIFORM_ALIGN).div_ceil(UNIFORM_ALIGN) * UNIFORM_ALIGN, 0);
        self.ops.push(Op {
            kernel,
            uniform_offset: offset as u64,
            uniform_size: size as u64,
            buffers: buffers.iter().map(|(b, buf)| (*b, (*buf).clone())).collect(),
            groups,
        });
    }

    /// Splits `groups` workgroups into an (x, y) grid under the per-dimension limit.
    pub(crate) fn fold_groups(&self, kernel: Kernel, groups: u64) -> Result<(u32, u32)> {
        let max = self.max_groups as u64;
        if groups == 0 {
            return Ok((0, 0));
        }
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::DispatchTooLarge { kernel: kernel_name(kernel), groups, limit: self.max_groups });
        }
        Ok((x as u32, y as u32))
    }

    /// A 1-D dispatch over `count` elements, folded into a 2-D grid.
    pub(crate) fn linear<P: Pod>(
        &mut self,
        kernel: Kernel,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        count: u64,
    ) -> Result<()> {
        let groups = self.fold_groups(kernel, count.div_ceil(kernel.workgroup_size()))?;
        self.dispatch(kernel, params, buffers, groups);
        Ok(())
    }

    /// A GEMM dispatch: 64×64 output tiles.
    pub(crate) fn gemm(&mut self, kernel: Kernel, params: &GemmParams, buffers: &[(u32, &wgpu::Buffer)]) -> Result<()> {
        let (gx, gy) = (params.n.div_ceil(64), params.m.div_ceil(64));
        if gx > self.max_groups || gy > self.max_groups {
            return Err(Error::DispatchTooLarge {
                kernel: kernel_name(kernel),
                groups: gx as u64 * gy as u64,
                limit: self.max_groups,
            });
        }
        self.dispatch(kernel, params, buffers, (gx, gy));
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
        let uniforms = wgpu::util::DeviceExt::create_buffer_init(
            device,
            &wgpu::util::BufferInitDescriptor {
                label: Some("parameters"),
                contents: &self.uniforms,
                usage: wgpu::BufferUsages::UNIFORM,
            },
        );
        let bind_groups: Vec<wgpu::BindGroup> = self
            .ops
            .iter()
            .map(|op| {
                let pipeline = kernels.pipeline(op.kernel);
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniforms,
                        offset: op.uniform_offset,
                        size: wgpu::BufferSize::new(op.uniform_size),
                    }),
                }];
                entries.extend(op.buffers.iter().map(|(binding, buf)| wgpu::BindGroupEntry {
                    binding: *binding,
                    resource: buf.as_entire_binding(),
                }));
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(kernel_name(op.kernel)),
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                })
            })
            .collect();
        // Part boundaries: 0, the splits strictly inside, the end.
        let mut bounds = vec![0];
        bounds.extend(self.breaks.iter().copied().filter(|&b| b > 0 && b < self.ops.len()));
        bounds.push(self.ops.len());
        let parts = bounds.len() - 1;
        let mut encoders = Vec::with_capacity(parts);
        let mut first = Some(first);
        for (k, w) in bounds.windows(2).enumerate() {
            let mut encoder = first.take().unwrap_or_else(new_encoder);
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("contextual attention"),
                    timestamp_writes: timestamps.and_then(|query_set| {
                        let (begin, end) = ((k == 0).then_some(0), (k + 1 == parts).then_some(1));
                        (begin.is_some() || end.is_some()).then_some(wgpu::ComputePassTimestampWrites {
                            query_set,
                            beginning_of_pass_write_index: begin,
                            end_of_pass_write_index: end,
                        })
                    }),
                });
                for (op, bg) in self.ops[w[0]..w[1]].iter().zip(&bind_groups[w[0]..w[1]]) {
                    if op.groups.0 == 0 || op.groups.1 == 0 {
                        continue;
                    }
                    pass.set_pipeline(kernels.pipeline(op.kernel));
                    pass.set_bind_group(0, bg, &[]);
                    pass.dispatch_workgroups(op.groups.0, op.groups.1, 1);
                }
            }
            encoders.push(encoder);
        }
        encoders
    }
}

fn kernel_name(k: Kernel) -> &'static str {
    match k {
        Kernel::Downscale => "downscale",
        Kernel::MatchingPatches => "matching_patches",
        Kernel::MaskValidity => "mask_validity",
        Kernel::QueryPatches => "query_patches",
        Kernel::RawPatches => "raw_patches",
        Kernel::ScoresGemm => "scores_gemm",
        Kernel::PasteGemm => "paste_gemm",
        Kernel::Fuse => "fuse",
        Kernel::Softmax => "softmax",
        Kernel::Fold => "fold",
        Kernel::Normalize => "normalize",
        Kernel::CopyRows => "copy_rows",
    }
}
