//! The whole layer on the GPU (SPEC §2, §T2): the buffers of a call, the index tables, and the
//! dispatches of every query tile × key tile, submitted one query tile at a time and read back
//! once. Per batch item: the mask's downscale and validity; per query tile its query patches;
//! per key tile the tile's matching patches, the scores GEMM, the two fuse passes, the online
//! softmax (which rescales the paste accumulator), the tile's raw patches and the paste GEMM
//! added into the accumulator; per query tile the softmax's finish and the fold; per item the
//! normalisation. The downscaled f′ and b′ are never stored: the patch gathers read f and b
//! through the NN index maps. Beyond the inputs and y only L-sized vectors (the downscaled mask,
//! the validity) grow with the image: the per-tile buffers are bounded by the [`Plan`].

use crate::chain::inspected_in;
use crate::error::{Error, Result};
use crate::geometry::{FusePass, Geometry};
use crate::gpu::context::Gpu;
use crate::gpu::kernel::{Kernels, Recorder};
use crate::gpu::resident::DeviceIo;
use crate::gpu::stages::{
    attention_rows, downscale, fold, fuse, gemm, mask_validity, matching_patches, normalize, query_patches,
    raw_patches, softmax, Source, STORAGE,
};
use crate::output::Output;
use crate::params::Params;
use crate::plan::{largest, readback_bytes, Plan, Tile};
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

/// Offsets of one tile's row lists and slot maps in the index buffer (query or key tile).
struct TileIndex {
    raw_rows: u32,
    raw_slots: u32,
    pass1_rows: u32,
    pass1_slots: u32,
    rows: u32,
}

/// The u32 tables the shaders read: NN index maps, then per query tile and per key tile its
/// row lists and slot maps, then per query tile the inspected queries' pairs.
struct IndexTable {
    data: Vec<u32>,
    f_rows: u32,
    f_cols: u32,
    b_rows: u32,
    b_cols: u32,
    query: Vec<TileIndex>,
    keys: Vec<TileIndex>,
    /// Per query tile: offset of its (row in the tile, row in the output) pairs, and their count.
    pairs: Vec<(u32, usize)>,
}

impl IndexTable {
    fn new(g: &Geometry, plan: &Plan, queries: &[(usize, usize)]) -> IndexTable {
        let mut data = Vec::with_capacity(plan.index_len(g, queries.len()));
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
        let side = |data: &mut Vec<u32>, tiles: &[Tile], h: usize| -> Vec<TileIndex> {
            tiles
                .iter()
                .map(|t| TileIndex {
                    raw_rows: push(data, &as_u32(&t.raw_rows)),
                    raw_slots: push(data, &Tile::slot_map(&t.raw_rows, h)),
                    pass1_rows: push(data, &as_u32(&t.pass1_rows)),
                    pass1_slots: push(data, &Tile::slot_map(&t.pass1_rows, h)),
                    rows: push(data, &as_u32(&t.rows.clone().collect::<Vec<_>>())),
                })
                .collect()
        };
        let query = side(&mut data, &plan.tiles, g.hf);
        let keys = side(&mut data, &plan.keys, g.ph);
        let pairs = plan
            .tiles
            .iter()
            .map(|t| {
                let pairs: Vec<u32> = inspected_in(t, g.wf, queries).into_iter().flat_map(|(a, b)| [a, b]).collect();
                (push(&mut data, &pairs), pairs.len() / 2)
            })
            .collect();
        debug_assert_eq!(data.len(), plan.index_len(g, queries.len()));
        IndexTable { data, f_rows, f_cols, b_rows, b_cols, query, keys, pairs }
    }
}

/// Every buffer a call keeps between calls of the same sizes, named for what it holds; sized by
/// [`Plan::working_buffers`], the list `plan` prints.
struct Buffers {
    f: wgpu::Buffer,
    b: wgpu::Buffer,
    mask: wgpu::Buffer,
    downscaled_mask: wgpu::Buffer,
    validity: wgpu::Buffer,
    query_patches: wgpu::Buffer,
    matching_patches: wgpu::Buffer,
    patch_norms: wgpu::Buffer,
    /// The raw scores of a query tile × key tile; after the fuse's second pass (or at once
    /// without fuse) the tile's scores, which the softmax turns into paste weights in place.
    scores: wgpu::Buffer,
    first_fuse_pass: wgpu::Buffer,
    raw_patches: wgpu::Buffer,
    /// The query tile's paste, accumulated over key tiles.
    pasted_columns: wgpu::Buffer,
    softmax_state: wgpu::Buffer,
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
        let working = Plan::working_buffers(g, &plan.tiles, &plan.keys);
        let buffer = |name: &'static str| -> Result<wgpu::Buffer> {
            let len = working.iter().find(|w| w.0 == name).expect("every working buffer is listed").1;
            storage(gpu, name, len as usize)
        };
        let ((hf_full, wf_full), (hb_full, wb_full)) = (g.f_size, g.b_size);
        let y_len = g.batch * hf_full * wf_full * g.channels;
        let nq = g.batch * g.queries();
        Ok(Buffers {
            f: storage(gpu, "f", y_len)?,
            b: storage(gpu, "b", g.batch * hb_full * wb_full * g.channels)?,
            mask: storage(gpu, "mask", g.mask_batch.max(1) * hb_full * wb_full)?,
            downscaled_mask: buffer("downscaled mask")?,
            validity: buffer("mask validity")?,
            query_patches: buffer("query patches")?,
            matching_patches: buffer("matching patches")?,
            patch_norms: buffer("patch norms")?,
            scores: buffer("scores")?,
            first_fuse_pass: buffer("first fuse pass")?,
            raw_patches: buffer("raw patches")?,
            pasted_columns: buffer("pasted columns")?,
            softmax_state: buffer("softmax state")?,
            y: storage(gpu, "y", y_len)?,
            argmax: storage(gpu, "argmax", nq)?,
            mass: storage(gpu, "attention mass", nq)?,
        })
    }
}

/// Records every dispatch of one call.
struct Recording<'a> {
    rec: Recorder,
    g: &'a Geometry,
    params: &'a Params,
    plan: &'a Plan,
    bufs: &'a Buffers,
    index: &'a IndexTable,
    index_buf: &'a wgpu::Buffer,
    attention_rows: &'a wgpu::Buffer,
    /// Number of inspected queries (destination rows per batch item).
    queries: usize,
    /// The GEMM variants of the scores and of the paste ([`gemm::choose`]).
    variants: (usize, usize),
}

impl Recording<'_> {
    fn item(&mut self, n: usize, has_mask: bool) -> Result<()> {
        let (g, bufs, ix) = (self.g, self.bufs, self.index);
        let (hb_full, wb_full) = g.b_size;
        // A shared mask once, a per-sample mask once per item; without one, validity stays all ones.
        if has_mask && (g.mask_batch > 1 || n == 0) {
            let m = if g.mask_batch > 1 { n } else { 0 };
            let p = downscale::params(m * hb_full * wb_full, wb_full, 1, (ix.b_rows, ix.b_cols), (g.hb, g.wb))?;
            downscale::record(&mut self.rec, &p, &bufs.mask, self.index_buf, &bufs.downscaled_mask)?;
            let p = mask_validity::params(g)?;
            mask_validity::record(&mut self.rec, &p, &bufs.downscaled_mask, &bufs.validity)?;
        }
        for t in 0..self.plan.tiles.len() {
            self.query_tile(n, t)?;
            self.rec.split();
        }
        let p = normalize::params(g, n, self.params.overlap)?;
        normalize::record(&mut self.rec, &p, &bufs.y)
    }

    /// Query tile `t` of item `n` against every key tile, then its fold into y.
    fn query_tile(&mut self, n: usize, t: usize) -> Result<()> {
        let (g, bufs, pr) = (self.g, self.bufs, self.params);
        let (qt, qi) = (&self.plan.tiles[t], &self.index.query[t]);
        let (wf, pw, p) = (g.wf, g.pw, g.raw_len());
        let nq = qt.rows.len() * wf;
        let (pairs_off, pairs) = self.index.pairs[t];
        let first_row = n * self.queries;
        let (ix, c) = (self.index, g.channels);
        let f_src = Source {
            src_off: n * g.f_size.0 * g.f_size.1 * c,
            full_w: g.f_size.1,
            map_rows: ix.f_rows,
            map_cols: ix.f_cols,
        };
        let b_src = Source {
            src_off: n * g.b_size.0 * g.b_size.1 * c,
            full_w: g.b_size.1,
            map_rows: ix.b_rows,
            map_cols: ix.b_cols,
        };
        let qp = query_patches::params(g, qt.raw_rows.len(), qi.raw_rows, f_src)?;
        query_patches::record(&mut self.rec, &qp, &bufs.f, self.index_buf, &bufs.query_patches)?;
        for (k, kt) in self.plan.keys.iter().enumerate() {
            let ki = &self.index.keys[k];
            let (nk, nk_raw) = (kt.rows.len() * pw, kt.raw_rows.len() * pw);
            let mp = matching_patches::params(g, kt.raw_rows.len(), ki.raw_rows, b_src)?;
            let (index, norms) = (self.index_buf, &bufs.patch_norms);
            matching_patches::record(&mut self.rec, &mp, &bufs.b, index, &bufs.matching_patches, norms)?;
            let sp = gemm::params(qt.raw_rows.len() * wf, nk_raw, g.match_len(), true)?;
            let (queries, matching) = (&bufs.query_patches, &bufs.matching_patches);
            gemm::record(&mut self.rec, gemm::Kind::Scores, self.variants.0, &sp, queries, matching, &bufs.scores)?;
            if g.fuse.is_some() {
                let side = |i: &TileIndex, t: &Tile, pass: FusePass| match pass {
                    FusePass::Rows => fuse::Side {
                        in_slots_off: i.raw_slots,
                        out_rows_off: i.pass1_rows,
                        in_rows: t.raw_rows.len(),
                        out_rows: t.pass1_rows.len(),
                    },
                    FusePass::Cols => fuse::Side {
                        in_slots_off: i.pass1_slots,
                        out_rows_off: i.rows,
                        in_rows: t.pass1_rows.len(),
                        out_rows: t.rows.len(),
                    },
                };
                // The second pass writes into the raw scores' buffer, free once the first has read it.
                for (pass, src, dst) in [
                    (FusePass::Rows, &bufs.scores, &bufs.first_fuse_pass),
                    (FusePass::Cols, &bufs.first_fuse_pass, &bufs.scores),
                ] {
                    let fp = fuse::params(g, pass, side(qi, qt, pass), side(ki, kt, pass))?;
                    fuse::record(&mut self.rec, &fp, src, self.index_buf, dst)?;
                }
            }
            let first = kt.rows.start * pw;
            if pairs > 0 {
                // The fused scores, before the softmax turns them into weights.
                let ap = attention_rows::params(
                    pairs,
                    g.patches(),
                    pairs_off,
                    first_row,
                    attention_rows::Phase::Copy { col0: first, cols: nk },
                )?;
                let (state, validity) = (&bufs.softmax_state, &bufs.validity);
                attention_rows::record(&mut self.rec, &ap, &bufs.scores, index, self.attention_rows, state, validity)?;
            }
            let phase = softmax::Phase::Update { first, cols: nk, first_tile: k == 0 };
            self.softmax(n, t, phase)?;
            let rp = raw_patches::params(g, b_src.src_off, first..first + nk)?;
            raw_patches::record(&mut self.rec, &rp, &bufs.b, &bufs.raw_patches)?;
            let pp = gemm::params(nq, p, nk, false)?;
            let (weights, raw, acc) = (&bufs.scores, &bufs.raw_patches, &bufs.pasted_columns);
            gemm::record(&mut self.rec, gemm::Kind::Paste, self.variants.1, &pp, weights, raw, acc)?;
        }
        self.softmax(n, t, softmax::Phase::Finish)?;
        if pairs > 0 {
            let finish = attention_rows::Phase::Finish { scale: pr.softmax_scale, masking: pr.masking };
            let ap = attention_rows::params(pairs, g.patches(), pairs_off, first_row, finish)?;
            let (state, validity) = (&bufs.softmax_state, &bufs.validity);
            attention_rows::record(
                &mut self.rec,
                &ap,
                &bufs.scores,
                self.index_buf,
                self.attention_rows,
                state,
                validity,
            )?;
        }
        let fp = fold::params(g, qt.rows.clone(), n)?;
        fold::record(&mut self.rec, &fp, &bufs.pasted_columns, &bufs.y)
    }

    fn softmax(&mut self, n: usize, t: usize, phase: softmax::Phase) -> Result<()> {
        let (g, b, pr) = (self.g, self.bufs, self.params);
        let qt = &self.plan.tiles[t];
        let out_off = n * g.queries() + qt.rows.start * g.wf;
        let p = softmax::params(qt.rows.len() * g.wf, phase, g.raw_len(), pr.softmax_scale, pr.masking, out_off)?;
        let (state, acc) = (&b.softmax_state, &b.pasted_columns);
        softmax::record(&mut self.rec, &p, &b.scores, &b.validity, state, acc, &b.argmax, &b.mass)
    }
}

/// The GEMM variants for the plan's largest tiles: scores, paste.
fn gemm_variants(gpu: &Gpu, g: &Geometry, plan: &Plan) -> Result<(usize, usize)> {
    let (nq, _, nq_raw) = largest(&plan.tiles, g.wf);
    let (nk, _, nk_raw) = largest(&plan.keys, g.pw);
    let scores = gemm::choose(gpu, gemm::Kind::Scores, nq_raw as usize, nk_raw as usize, g.match_len())?;
    let paste = gemm::choose(gpu, gemm::Kind::Paste, nq as usize, g.raw_len(), nk as usize)?;
    Ok((scores, paste))
}

/// A submitted call whose results are not read back yet.
pub(crate) struct Pending {
    /// Byte offset of the pass's two timestamps in the readback, where the device has them.
    timestamp_at: Option<usize>,
    geometry: Geometry,
    queries: Vec<(usize, usize)>,
    staging: wgpu::Buffer,
    /// One submission per part of the call (tiles), the last one with the readback. (Waited
    /// on natively; the browser has nothing to wait with.)
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    submissions: Vec<wgpu::SubmissionIndex>,
    /// Resolved as each tile's submission finishes, for progress without blocking.
    tiles_done: Vec<futures_intrusive::channel::shared::OneshotReceiver<()>>,
    receiver: futures_intrusive::channel::shared::OneshotReceiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// The buffers of a recorded call besides the workspace's: they belong to the call, so that a
/// call recorded but not yet submitted is never changed by the next one.
struct CallBuffers {
    /// The attention rows of the inspected queries.
    rows: wgpu::Buffer,
    rows_len: usize,
    /// All ones, copied into the validity when there is no mask.
    ones: Option<wgpu::Buffer>,
}

/// Records every dispatch of one call against the workspace's buffers, allocated for `g` and
/// `plan` or reused. Everything the recording needs from the host is in buffers created with
/// their contents, not queue writes, so the recording stays valid until it is submitted.
#[allow(clippy::too_many_arguments)]
fn record_call<'w>(
    gpu: &Gpu,
    workspace: &'w mut Option<Workspace>,
    params: &Params,
    g: &Geometry,
    plan: &Plan,
    has_mask: bool,
    queries: &[(usize, usize)],
) -> Result<(Recorder, &'w Buffers, CallBuffers)> {
    g.check_queries(queries)?;
    let index = IndexTable::new(g, plan, queries);
    let key = WorkspaceKey { geometry: g.clone(), plan: plan.clone() };
    if workspace.as_ref().map(|w| &w.key) != Some(&key) {
        *workspace = None; // free the old buffers before allocating new ones
        let buffers = Buffers::new(gpu, g, plan)?;
        *workspace = Some(Workspace { key, buffers });
    }
    let bufs = &workspace.as_ref().expect("just set").buffers;
    let index_buf = storage_init(gpu, "index tables", bytemuck::cast_slice(&index.data))?;
    let ones = (!has_mask).then(|| storage_init(gpu, "all valid", bytemuck::cast_slice(&vec![1.0f32; g.patches()])));
    let rows_len = g.batch * queries.len() * g.patches();
    let rows = storage(gpu, "attention rows", rows_len)?;
    let mut recording = Recording {
        rec: Recorder::new(&gpu.device),
        g,
        params,
        plan,
        bufs,
        index: &index,
        index_buf: &index_buf,
        attention_rows: &rows,
        queries: queries.len(),
        variants: gemm_variants(gpu, g, plan)?,
    };
    for n in 0..g.batch {
        recording.item(n, has_mask)?;
    }
    Ok((recording.rec, bufs, CallBuffers { rows, rows_len, ones: ones.transpose()? }))
}

/// A storage buffer created with `contents`, after checking it against the device limits.
fn storage_init(gpu: &Gpu, name: &'static str, contents: &[u8]) -> Result<wgpu::Buffer> {
    let limit = gpu.max_binding();
    if contents.len() as u64 > limit {
        return Err(Error::BufferTooLarge { name, size: contents.len() as u64, limit, what: "storage binding" });
    }
    // A binding may not be empty.
    let contents = if contents.is_empty() { &[0u8; 4][..] } else { contents };
    Ok(wgpu::util::DeviceExt::create_buffer_init(
        &gpu.device,
        &wgpu::util::BufferInitDescriptor { label: Some(name), contents, usage: STORAGE },
    ))
}

impl CallBuffers {
    /// What every call's first part does before the dispatches, after the inputs are in place:
    /// all-valid patches when there is no mask, and a zero y for the fold to add into.
    fn prelude(&self, encoder: &mut wgpu::CommandEncoder, bufs: &Buffers) {
        if let Some(ones) = &self.ones {
            encoder.copy_buffer_to_buffer(ones, 0, &bufs.validity, 0, None);
        }
        encoder.clear_buffer(&bufs.y, 0, None);
    }
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
    let (rec, bufs, call) = record_call(gpu, workspace, params, &g, &plan, mask.is_some(), queries)?;
    let queue = &gpu.queue;
    queue.write_buffer(&bufs.f, 0, bytemuck::cast_slice(f.data()));
    queue.write_buffer(&bufs.b, 0, bytemuck::cast_slice(b.data()));
    if let Some(m) = mask {
        queue.write_buffer(&bufs.mask, 0, bytemuck::cast_slice(m.data()));
    }
    let rows_len = call.rows_len;

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
    let mut parts =
        rec.encode(&gpu.device, kernels, timestamps.as_ref().map(|t| &t.0), |first| call.prelude(first, bufs));
    let mut encoder = parts.pop().expect("at least one part");
    // The readback buffer belongs to the call, so a call still being read back is never
    // overwritten by the next one.
    let (y_words, nq_words) = ((g.batch * g.f_size.0 * g.f_size.1 * g.channels) as u64, (g.batch * g.queries()) as u64);
    let (y_len, nq_bytes, rows_bytes) = (4 * y_words, 4 * nq_words, 4 * rows_len as u64);
    let ts_at = readback_bytes(y_words, nq_words, rows_len as u64, false);
    let out_bytes = readback_bytes(y_words, nq_words, rows_len as u64, timestamps.is_some());
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
        encoder.copy_buffer_to_buffer(&call.rows, 0, &staging, y_len + 2 * nq_bytes, Some(rows_bytes));
    }
    if let Some((set, resolve)) = &timestamps {
        encoder.resolve_query_set(set, 0..2, resolve, 0);
        encoder.copy_buffer_to_buffer(resolve, 0, &staging, ts_at, Some(16));
    }
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    encoder.map_buffer_on_submit(&staging, wgpu::MapMode::Read, .., move |r| {
        sender.send(r).ok();
    });
    let mut submissions = Vec::with_capacity(parts.len() + 1);
    let mut tiles_done = Vec::with_capacity(parts.len());
    for part in parts {
        submissions.push(queue.submit([part.finish()]));
        let (done, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        queue.on_submitted_work_done(move || {
            done.send(()).ok();
        });
        tiles_done.push(receiver);
    }
    submissions.push(queue.submit([encoder.finish()]));
    let timestamp_at = timestamps.is_some().then_some(ts_at as usize);
    Ok(Pending { geometry: g, queries: queries.to_vec(), staging, submissions, tiles_done, receiver, timestamp_at })
}

/// Records one call into the caller's `encoder`: the inputs copied from the caller's buffers,
/// every dispatch as one compute pass, the outputs copied into the caller's buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_on_device(
    gpu: &Gpu,
    kernels: &Kernels,
    workspace: &mut Option<Workspace>,
    params: &Params,
    g: &Geometry,
    plan: &Plan,
    io: DeviceIo,
    encoder: &mut wgpu::CommandEncoder,
) -> Result<()> {
    let (rec, bufs, call) = record_call(gpu, workspace, params, g, plan, io.mask.is_some(), &[])?;
    io.copy_in(encoder, &bufs.f, &bufs.b, &bufs.mask);
    call.prelude(encoder, bufs);
    rec.encode_into(&gpu.device, kernels, encoder);
    io.copy_out(encoder, g, &bufs.y, &bufs.argmax, &bufs.mass);
    Ok(())
}

/// Records one call like [`record_on_device`] but in parts (one per query tile, like the host
/// path) and submits them on the queue; returns the last part's submission.
#[allow(clippy::too_many_arguments)]
pub(crate) fn submit_on_device(
    gpu: &Gpu,
    kernels: &Kernels,
    workspace: &mut Option<Workspace>,
    params: &Params,
    g: &Geometry,
    plan: &Plan,
    io: DeviceIo,
) -> Result<wgpu::SubmissionIndex> {
    let (rec, bufs, call) = record_call(gpu, workspace, params, g, plan, io.mask.is_some(), &[])?;
    let mut parts = rec.encode(&gpu.device, kernels, None, |first| {
        io.copy_in(first, &bufs.f, &bufs.b, &bufs.mask);
        call.prelude(first, bufs);
    });
    let last = parts.last_mut().expect("at least one part");
    io.copy_out(last, g, &bufs.y, &bufs.argmax, &bufs.mass);
    let submissions: Vec<wgpu::SubmissionIndex> = parts.into_iter().map(|e| gpu.queue.submit([e.finish()])).collect();
    Ok(submissions.into_iter().last().expect("at least one part"))
}

impl Pending {
    /// Blocks until the results are mapped, then reads them; `progress(done, total)` is told
    /// as each query tile's submission finishes. Every tile ends a submission, and one more
    /// carries the tail (the last normalisation and the readback copies), which is not a tile
    /// and so is not counted: both backends count the same steps.
    #[cfg(not(target_arch = "wasm32"))]
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

    /// Awaits the mapping, telling `progress` as each tile finishes like [`wait`](Self::wait).
    /// Natively a helper thread waits on the device (whose callbacks resolve the futures); in
    /// the browser the page's event loop does.
    pub(crate) async fn wait_async(mut self, gpu: &Gpu, progress: &mut dyn FnMut(usize, usize)) -> Result<Output> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let device = gpu.device.clone();
            let submission = self.submissions.last().expect("at least one submission").clone();
            std::thread::spawn(move || {
                let _ = device.poll(wgpu::PollType::Wait { submission_index: Some(submission), timeout: None });
            });
        }
        let tiles_done = std::mem::take(&mut self.tiles_done);
        let tiles = tiles_done.len();
        for (k, done) in tiles_done.into_iter().enumerate() {
            done.receive().await;
            progress(k + 1, tiles);
        }
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
