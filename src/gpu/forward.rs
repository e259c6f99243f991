//! The whole layer on the GPU: the buffers of a call, the index tables, and the chain of stages
//! ([`crate::chain`]) recorded as dispatches, submitted one query tile at a time, and read back
//! once.

use crate::chain::{self, inspected_in, Input, Stages, TileAt};
use crate::error::{Error, Result};
use crate::geometry::{FusePass, Geometry};
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{Kernels, Recorder};
use crate::gpu::stages::{
    attention_rows, downscale, fold, fuse, gemm, mask_validity, matching_patches, normalize, query_patches,
    raw_patches, softmax, STORAGE,
};
use crate::output::Output;
use crate::params::Params;
use crate::plan::{Plan, Tile};
use crate::tensor::Tensor;

/// Creates a storage buffer of `len` 4-byte elements after checking it against the device limits.
pub(crate) fn storage(gpu: &Gpu, name: &'static str, len: usize) -> Result<wgpu::Buffer> {
    let size = (len.max(1) * 4) as u64;
    let limit = gpu.max_binding();
    if size > limit {
        return Err(Error::BufferTooLarge { name, size, limit, what: "storage binding" });
    }
    Ok(gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size,
        usage: STORAGE,
        mapped_at_creation: false,
    }))
}

/// Offsets of one tile's row lists and slot maps in the index buffer.
struct TileIndex {
    raw_rows: u32,
    raw_slots: u32,
    pass1_rows: u32,
    pass1_slots: u32,
    rows: u32,
    /// (row in the tile's attention, row in the output) of each inspected query in the tile.
    pairs: u32,
    pairs_len: usize,
}

/// The u32 tables the shaders read: NN index maps, then per tile its row lists and slot maps.
struct IndexTable {
    data: Vec<u32>,
    f_rows: u32,
    f_cols: u32,
    b_rows: u32,
    b_cols: u32,
    tiles: Vec<TileIndex>,
}

impl IndexTable {
    fn new(g: &Geometry, plan: &Plan, queries: &[(usize, usize)]) -> IndexTable {
        let mut data = Vec::new();
        let push = |data: &mut Vec<u32>, v: &[u32]| -> u32 {
            let at = data.len() as u32;
            data.extend_from_slice(v);
            at
        };
        let as_u32 = |v: &[usize]| -> Vec<u32> { v.iter().map(|&x| x as u32).collect() };
        let f_rows = push(&mut data, &g.f_rows);
        let f_cols = push(&mut data, &g.f_cols);
        let b_rows = push(&mut data, &g.b_rows);
        let b_cols = push(&mut data, &g.b_cols);
        let tiles = plan
            .tiles
            .iter()
            .map(|t| {
                let pairs: Vec<u32> = inspected_in(t, g.wf, queries).into_iter().flat_map(|(a, b)| [a, b]).collect();
                TileIndex {
                    raw_rows: push(&mut data, &as_u32(&t.raw_rows)),
                    raw_slots: push(&mut data, &Tile::slot_map(&t.raw_rows, g.hf)),
                    pass1_rows: push(&mut data, &as_u32(&t.pass1_rows)),
                    pass1_slots: push(&mut data, &Tile::slot_map(&t.pass1_rows, g.hf)),
                    rows: push(&mut data, &as_u32(&t.rows.clone().collect::<Vec<_>>())),
                    pairs: push(&mut data, &pairs),
                    pairs_len: pairs.len() / 2,
                }
            })
            .collect();
        IndexTable { data, f_rows, f_cols, b_rows, b_cols, tiles }
    }
}

/// Every buffer a call keeps between calls of the same sizes, named for what it holds.
struct Buffers {
    f: wgpu::Buffer,
    b: wgpu::Buffer,
    mask: wgpu::Buffer,
    downscaled_f: wgpu::Buffer,
    downscaled_b: wgpu::Buffer,
    downscaled_mask: wgpu::Buffer,
    matching_patches: wgpu::Buffer,
    patch_norms: wgpu::Buffer,
    validity: wgpu::Buffer,
    raw_patches: wgpu::Buffer,
    query_patches: wgpu::Buffer,
    /// The raw scores of a tile's rows; after the fuse's second pass (or at once without fuse)
    /// the tile's scores, which the softmax turns into its attention in place.
    raw_scores: wgpu::Buffer,
    first_fuse_pass: wgpu::Buffer,
    pasted_columns: wgpu::Buffer,
    y: wgpu::Buffer,
    argmax: wgpu::Buffer,
    mass: wgpu::Buffer,
}

/// What identifies a call's buffer sizes: buffers are reused while it stays the same.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WorkspaceKey {
    geometry: Geometry,
    plan: Plan,
}

/// Buffers kept between calls of the same sizes.
pub(crate) struct Workspace {
    key: WorkspaceKey,
    buffers: Buffers,
}

impl Buffers {
    fn new(gpu: &Gpu, g: &Geometry, plan: &Plan) -> Result<Buffers> {
        let (c, l) = (g.channels, g.patches());
        let (hf_full, wf_full) = g.f_size;
        let (hb_full, wb_full) = g.b_size;
        let max_raw = plan.tiles.iter().map(|t| t.raw_rows.len()).max().unwrap_or(0);
        let max_pass1 = plan.tiles.iter().map(|t| t.pass1_rows.len()).max().unwrap_or(0);
        let max_rows = plan.tiles.iter().map(|t| t.rows.len()).max().unwrap_or(0);
        let y_len = g.batch * hf_full * wf_full * c;
        let nq = g.batch * g.queries();
        Ok(Buffers {
            f: storage(gpu, "f", y_len)?,
            b: storage(gpu, "b", g.batch * hb_full * wb_full * c)?,
            mask: storage(gpu, "mask", g.mask_batch.max(1) * hb_full * wb_full)?,
            downscaled_f: storage(gpu, "downscaled f", g.queries() * c)?,
            downscaled_b: storage(gpu, "downscaled b", g.hb * g.wb * c)?,
            downscaled_mask: storage(gpu, "downscaled mask", g.hb * g.wb)?,
            matching_patches: storage(gpu, "matching patches", l * g.match_len())?,
            patch_norms: storage(gpu, "patch norms", l)?,
            validity: storage(gpu, "mask validity", l)?,
            raw_patches: storage(gpu, "raw patches", l * g.raw_len())?,
            query_patches: storage(gpu, "query patches", max_raw * g.wf * g.match_len())?,
            raw_scores: storage(gpu, "raw scores", max_raw * g.wf * l)?,
            first_fuse_pass: storage(gpu, "first fuse pass", max_pass1 * g.wf * l)?,
            pasted_columns: storage(gpu, "pasted columns", max_rows * g.wf * g.raw_len())?,
            y: storage(gpu, "y", y_len)?,
            argmax: storage(gpu, "argmax", nq)?,
            mass: storage(gpu, "attention mass", nq)?,
        })
    }
}

/// The chain recorded as dispatches: the kept buffers, the call's own index tables and
/// attention rows, and the recorder.
struct Recording<'a> {
    rec: Recorder,
    g: &'a Geometry,
    params: &'a Params,
    bufs: &'a Buffers,
    index: &'a IndexTable,
    index_buf: &'a wgpu::Buffer,
    attention_rows: &'a wgpu::Buffer,
    /// Number of inspected queries (destination rows per batch item).
    queries: usize,
}

impl Stages for Recording<'_> {
    fn downscale(&mut self, input: Input, n: usize) -> Result<()> {
        let (g, bufs, ix) = (self.g, self.bufs, self.index);
        let (c, (hf_full, wf_full), (hb_full, wb_full)) = (g.channels, g.f_size, g.b_size);
        let (p, src, dst) = match input {
            Input::F => {
                let p = downscale::params(n * hf_full * wf_full * c, wf_full, c, (ix.f_rows, ix.f_cols), (g.hf, g.wf))?;
                (p, &bufs.f, &bufs.downscaled_f)
            }
            Input::B => {
                let p = downscale::params(n * hb_full * wb_full * c, wb_full, c, (ix.b_rows, ix.b_cols), (g.hb, g.wb))?;
                (p, &bufs.b, &bufs.downscaled_b)
            }
            Input::Mask => {
                let p = downscale::params(n * hb_full * wb_full, wb_full, 1, (ix.b_rows, ix.b_cols), (g.hb, g.wb))?;
                (p, &bufs.mask, &bufs.downscaled_mask)
            }
        };
        downscale::record(&mut self.rec, &p, src, self.index_buf, dst)
    }

    fn matching_patches(&mut self) -> Result<()> {
        let b = self.bufs;
        let p = matching_patches::params(self.g)?;
        matching_patches::record(&mut self.rec, &p, &b.downscaled_b, &b.matching_patches, &b.patch_norms)
    }

    fn mask_validity(&mut self) -> Result<()> {
        let p = mask_validity::params(self.g)?;
        mask_validity::record(&mut self.rec, &p, &self.bufs.downscaled_mask, &self.bufs.validity)
    }

    fn raw_patches(&mut self, n: usize) -> Result<()> {
        let g = self.g;
        let p = raw_patches::params(g, n * g.b_size.0 * g.b_size.1 * g.channels)?;
        raw_patches::record(&mut self.rec, &p, &self.bufs.b, &self.bufs.raw_patches)
    }

    fn query_patches(&mut self, t: TileAt) -> Result<()> {
        let p = query_patches::params(self.g, t.tile.raw_rows.len(), self.index.tiles[t.index].raw_rows)?;
        query_patches::record(&mut self.rec, &p, &self.bufs.downscaled_f, self.index_buf, &self.bufs.query_patches)
    }

    fn scores(&mut self, t: TileAt) -> Result<()> {
        let (g, b) = (self.g, self.bufs);
        let p = gemm::params(t.tile.raw_rows.len() * g.wf, g.patches(), g.match_len(), true)?;
        gemm::record(&mut self.rec, &gemm::SCORES, &p, &b.query_patches, &b.matching_patches, &b.raw_scores)
    }

    fn fuse(&mut self, t: TileAt, pass: FusePass) -> Result<()> {
        let (g, b, ti) = (self.g, self.bufs, &self.index.tiles[t.index]);
        // The second pass writes into the raw scores' buffer, free once the first pass has read it.
        let (p, src, dst) = match pass {
            FusePass::Rows => {
                let p = fuse::params(g, pass, t.tile.pass1_rows.len(), ti.raw_slots, ti.pass1_rows)?;
                (p, &b.raw_scores, &b.first_fuse_pass)
            }
            FusePass::Cols => {
                let p = fuse::params(g, pass, t.tile.rows.len(), ti.pass1_slots, ti.rows)?;
                (p, &b.first_fuse_pass, &b.raw_scores)
            }
        };
        fuse::record(&mut self.rec, &p, src, self.index_buf, dst)
    }

    fn softmax(&mut self, t: TileAt, n: usize) -> Result<()> {
        let (g, b, pr) = (self.g, self.bufs, self.params);
        let rows = t.tile.rows.len() * g.wf;
        let out_off = n * g.queries() + t.tile.rows.start * g.wf;
        let p = softmax::params(rows, g.patches(), pr.softmax_scale, pr.masking, out_off)?;
        softmax::record(&mut self.rec, &p, &b.raw_scores, &b.validity, &b.argmax, &b.mass)
    }

    fn attention_rows(&mut self, t: TileAt, n: usize) -> Result<()> {
        let ti = &self.index.tiles[t.index];
        // Destination rows are numbered per call; item n's start at n·Q.
        let p = attention_rows::params(ti.pairs_len, self.g.patches(), ti.pairs, n * self.queries)?;
        attention_rows::record(&mut self.rec, &p, &self.bufs.raw_scores, self.index_buf, self.attention_rows)
    }

    fn paste(&mut self, t: TileAt) -> Result<()> {
        let (g, b) = (self.g, self.bufs);
        let p = gemm::params(t.tile.rows.len() * g.wf, g.raw_len(), g.patches(), false)?;
        gemm::record(&mut self.rec, &gemm::PASTE, &p, &b.raw_scores, &b.raw_patches, &b.pasted_columns)
    }

    fn fold(&mut self, t: TileAt, n: usize) -> Result<()> {
        let p = fold::params(self.g, t.tile.rows.clone(), n)?;
        fold::record(&mut self.rec, &p, &self.bufs.pasted_columns, &self.bufs.y)
    }

    fn end_tile(&mut self, _: TileAt, _: usize) -> Result<()> {
        self.rec.split();
        Ok(())
    }

    fn normalize(&mut self, n: usize) -> Result<()> {
        let p = normalize::params(self.g, n, self.params.overlap)?;
        normalize::record(&mut self.rec, &p, &self.bufs.y)
    }
}

/// A submitted call whose results are not read back yet.
pub(crate) struct Pending {
    /// Byte offset of the pass's two timestamps in the readback, where the device has them.
    timestamp_at: Option<usize>,
    geometry: Geometry,
    queries: Vec<(usize, usize)>,
    staging: wgpu::Buffer,
    /// One submission per part of the call (tiles), the last one with the readback.
    submissions: Vec<wgpu::SubmissionIndex>,
    receiver: futures_intrusive::channel::shared::OneshotReceiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// Uploads, records and submits one call with its checked geometry and plan.
#[allow(clippy::too_many_arguments)]
pub(crate) fn submit(
    gpu: &Gpu,
    kernels: &Kernels,
    workspace: &mut Option<Workspace>,
    params: &Params,
    g: Geometry,
    plan: Plan,
    f: &Tensor,
    b: &Tensor,
    mask: Option<&Tensor>,
    queries: &[(usize, usize)],
) -> Result<Pending> {
    g.check_queries(queries)?;
    let index = IndexTable::new(&g, &plan, queries);
    let key = WorkspaceKey { geometry: g.clone(), plan: plan.clone() };
    if workspace.as_ref().map(|w| &w.key) != Some(&key) {
        *workspace = None; // free the old buffers before allocating new ones
        let buffers = Buffers::new(gpu, &g, &plan)?;
        *workspace = Some(Workspace { key, buffers });
    }
    let bufs = &workspace.as_ref().expect("just set").buffers;

    let queue = &gpu.queue;
    queue.write_buffer(&bufs.f, 0, bytemuck::cast_slice(f.data()));
    queue.write_buffer(&bufs.b, 0, bytemuck::cast_slice(b.data()));
    match mask {
        Some(m) => queue.write_buffer(&bufs.mask, 0, bytemuck::cast_slice(m.data())),
        None => queue.write_buffer(&bufs.validity, 0, bytemuck::cast_slice(&vec![1.0f32; g.patches()])),
    }

    // The index tables (their length depends on the inspected queries) and the attention rows
    // belong to the call, like the readback.
    let index_buf = storage(gpu, "index tables", index.data.len())?;
    queue.write_buffer(&index_buf, 0, bytemuck::cast_slice(&index.data));
    let rows_len = g.batch * queries.len() * g.patches();
    let rows = storage(gpu, "attention rows", rows_len)?;
    let mut recording = Recording {
        rec: Recorder::new(&gpu.device),
        g: &g,
        params,
        bufs,
        index: &index,
        index_buf: &index_buf,
        attention_rows: &rows,
        queries: queries.len(),
    };
    chain::run(&mut recording, &g, &plan, mask.is_some(), queries)?;
    let rec = recording.rec;

    // GPU time of the pass from timestamp queries, where the device has them.
    let timestamps = gpu.device.features().contains(wgpu::Features::TIMESTAMP_QUERY).then(|| {
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("pass time"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pass time"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        (set, resolve)
    });
    let mut parts = rec
        .encode(&gpu.device, kernels, timestamps.as_ref().map(|t| &t.0), |first| first.clear_buffer(&bufs.y, 0, None));
    let mut encoder = parts.pop().expect("at least one part");
    // The readback buffer belongs to the call, so a call still being read back is never
    // overwritten by the next one.
    let nq_bytes = (g.batch * g.queries() * 4) as u64;
    let y_len = (g.batch * g.f_size.0 * g.f_size.1 * g.channels * 4) as u64;
    let rows_bytes = (rows_len * 4) as u64;
    let ts_at = (y_len + 2 * nq_bytes + rows_bytes).div_ceil(8) * 8;
    let out_bytes = ts_at + if timestamps.is_some() { 16 } else { 0 };
    let limit = gpu.device.limits().max_buffer_size;
    if out_bytes > limit {
        return Err(Error::BufferTooLarge { name: "readback", size: out_bytes, limit, what: "buffer" });
    }
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: out_bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(&bufs.y, 0, &staging, 0, Some(y_len));
    encoder.copy_buffer_to_buffer(&bufs.argmax, 0, &staging, y_len, Some(nq_bytes));
    encoder.copy_buffer_to_buffer(&bufs.mass, 0, &staging, y_len + nq_bytes, Some(nq_bytes));
    if rows_bytes > 0 {
        encoder.copy_buffer_to_buffer(&rows, 0, &staging, y_len + 2 * nq_bytes, Some(rows_bytes));
    }
    if let Some((set, resolve)) = &timestamps {
        encoder.resolve_query_set(set, 0..2, resolve, 0);
        encoder.copy_buffer_to_buffer(resolve, 0, &staging, ts_at, Some(16));
    }
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    encoder.map_buffer_on_submit(&staging, wgpu::MapMode::Read, .., move |r| {
        sender.send(r).ok();
    });
    let mut submissions: Vec<wgpu::SubmissionIndex> = parts.into_iter().map(|e| queue.submit([e.finish()])).collect();
    submissions.push(queue.submit([encoder.finish()]));
    let timestamp_at = timestamps.is_some().then_some(ts_at as usize);
    Ok(Pending { geometry: g, queries: queries.to_vec(), staging, submissions, receiver, timestamp_at })
}

impl Pending {
    /// Blocks until the results are mapped, then reads them; `progress(done, total)` is told
    /// as each query tile's submission finishes. Every tile ends a submission, and one more
    /// carries the tail (the last normalisation and the readback copies), which is not a tile
    /// and so is not counted: both backends count the same steps.
    pub(crate) fn wait(self, gpu: &Gpu, progress: &mut dyn FnMut(usize, usize)) -> Result<Output> {
        let tiles = self.submissions.len() - 1;
        for (k, s) in self.submissions.iter().enumerate() {
            gpu.wait(s.clone())?;
            if k < tiles {
                progress(k + 1, tiles);
            }
        }
        let mapped = pollster::block_on(self.receiver.receive());
        self.read(gpu, mapped)
    }

    /// Awaits the mapping while a helper thread waits on the device.
    pub(crate) async fn wait_async(self, gpu: &Gpu) -> Result<Output> {
        let device = gpu.device.clone();
        let submission = self.submissions.last().expect("at least one submission").clone();
        std::thread::spawn(move || {
            let _ = device.poll(wgpu::PollType::Wait { submission_index: Some(submission), timeout: None });
        });
        let mapped = self.receiver.receive().await;
        self.read(gpu, mapped)
    }

    fn read(self, gpu: &Gpu, mapped: Option<std::result::Result<(), wgpu::BufferAsyncError>>) -> Result<Output> {
        gpu.take_errors()?;
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::Gpu(format!("reading the results back failed: {e}"))),
            None => return Err(Error::Gpu("the readback was dropped before it completed".into())),
        }
        let g = &self.geometry;
        let y_len = g.batch * g.f_size.0 * g.f_size.1 * g.channels;
        let nq = g.batch * g.queries();
        let rows_len = g.batch * self.queries.len() * g.patches();
        let (y, argmax, mass, rows, ticks) = {
            let view = self
                .staging
                .get_mapped_range(..)
                .map_err(|e| Error::Gpu(format!("mapping the readback failed: {e}")))?;
            let words: &[u32] = bytemuck::cast_slice(&view[..(y_len + 2 * nq + rows_len) * 4]);
            let y: Vec<f32> = bytemuck::cast_slice(&words[..y_len]).to_vec();
            let argmax = words[y_len..y_len + nq].to_vec();
            let mass: Vec<f32> = bytemuck::cast_slice(&words[y_len + nq..y_len + 2 * nq]).to_vec();
            let rows: Vec<f32> = bytemuck::cast_slice(&words[y_len + 2 * nq..]).to_vec();
            let ticks = self.timestamp_at.map(|at| {
                let t: &[u64] = bytemuck::cast_slice(&view[at..at + 16]);
                t[1].saturating_sub(t[0])
            });
            (y, argmax, mass, rows, ticks)
        };
        self.staging.unmap();
        let y = Tensor::new([g.batch, g.f_size.0, g.f_size.1, g.channels], y)?;
        let mut out = Output::new(g, y, argmax, mass);
        out.queries = self.queries;
        out.attention_rows = rows;
        out.gpu_time_ms = ticks.map(|t| t as f64 * gpu.queue.get_timestamp_period() as f64 / 1e6);
        Ok(out)
    }
}
