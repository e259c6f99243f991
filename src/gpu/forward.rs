//! The whole layer on the GPU: upload, per batch item the b-side stages, per query tile the
//! scores → fuse → softmax → paste → fold chain, normalisation, and one readback.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::geometry::{FusePass, Geometry};
use crate::gpu::context::Gpu;
use crate::gpu::kernels::{
    u32_of, DownscaleParams, FoldParams, FuseParams, GemmParams, Kernel, Kernels, PatchParams, Recorder, RowsParams,
    SoftmaxParams,
};
use crate::layer::Output;
use crate::params::{FuseMode, Masking, Overlap, Params};
use crate::plan::{Plan, Tile};
use crate::tensor::Tensor;

/// Usage of every working buffer.
pub(crate) const STORAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_DST).union(wgpu::BufferUsages::COPY_SRC);

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
                let pairs: Vec<u32> = queries
                    .iter()
                    .enumerate()
                    .filter(|(_, (i, _))| t.rows.contains(i))
                    .flat_map(|(q, &(i, j))| [((i - t.rows.start) * g.wf + j) as u32, q as u32])
                    .collect();
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

/// Every buffer of one call.
struct Buffers {
    f: wgpu::Buffer,
    b: wgpu::Buffer,
    mask: wgpu::Buffer,
    fp: wgpu::Buffer,
    bp: wgpu::Buffer,
    mp: wgpu::Buffer,
    pb: wgpu::Buffer,
    norms: wgpu::Buffer,
    mm: wgpu::Buffer,
    raw: wgpu::Buffer,
    pf: wgpu::Buffer,
    scores: wgpu::Buffer,
    pass1: wgpu::Buffer,
    cols: wgpu::Buffer,
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
            fp: storage(gpu, "downscaled f", g.queries() * c)?,
            bp: storage(gpu, "downscaled b", g.hb * g.wb * c)?,
            mp: storage(gpu, "downscaled mask", g.hb * g.wb)?,
            pb: storage(gpu, "matching patches", l * g.match_len())?,
            norms: storage(gpu, "patch norms", l)?,
            mm: storage(gpu, "mask validity", l)?,
            raw: storage(gpu, "raw patches", l * g.raw_len())?,
            pf: storage(gpu, "query patches", max_raw * g.wf * g.match_len())?,
            scores: storage(gpu, "raw scores", max_raw * g.wf * l)?,
            pass1: storage(gpu, "first fuse pass", max_pass1 * g.wf * l)?,
            cols: storage(gpu, "pasted columns", max_rows * g.wf * g.raw_len())?,
            y: storage(gpu, "y", y_len)?,
            argmax: storage(gpu, "argmax", nq)?,
            mass: storage(gpu, "attention mass", nq)?,
        })
    }
}

/// The buffers one call records into: the kept workspace, and the call's own index tables and
/// attention rows (with the number of inspected queries).
struct Call<'a> {
    bufs: &'a Buffers,
    index: &'a wgpu::Buffer,
    rows: &'a wgpu::Buffer,
    queries: usize,
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

/// Output rows touched by the paste of query rows `rows`.
fn touched_rows(g: &Geometry, rows: &Range<usize>) -> Range<usize> {
    let lo = (g.rate * rows.start).saturating_sub(g.paste_pad.0);
    let hi = (g.rate * (rows.end - 1) + g.paste_kernel).saturating_sub(g.paste_pad.0).min(g.f_size.0);
    lo..hi.max(lo)
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
        None => queue.write_buffer(&bufs.mm, 0, bytemuck::cast_slice(&vec![1.0f32; g.patches()])),
    }

    // The index tables (their length depends on the inspected queries) and the attention rows
    // belong to the call, like the readback.
    let index_buf = storage(gpu, "index tables", index.data.len())?;
    queue.write_buffer(&index_buf, 0, bytemuck::cast_slice(&index.data));
    let rows_len = g.batch * queries.len() * g.patches();
    let rows = storage(gpu, "attention rows", rows_len)?;
    let mut rec = Recorder::new(&gpu.device);
    for n in 0..g.batch {
        let call = Call { bufs, index: &index_buf, rows: &rows, queries: queries.len() };
        record_item(&mut rec, &call, &index, params, &g, &plan, n, mask.is_some())?;
    }

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

// Parameter blocks of each stage, shared by the forward pass and the single-stage runners.

pub(crate) fn downscale_params(
    src_off: usize,
    src_w: usize,
    ch: usize,
    rows: u32,
    cols: u32,
    h: usize,
    w: usize,
) -> Result<DownscaleParams> {
    Ok(DownscaleParams {
        count: u32_of("downscale", h * w * ch)?,
        src_off: u32_of("downscale", src_off)?,
        src_w: src_w as u32,
        out_w: w as u32,
        c: ch as u32,
        rows_off: rows,
        cols_off: cols,
        dst_off: 0,
    })
}

/// Matching patches (and, with `c = 1`, mask validity) on the downscaled b grid.
pub(crate) fn matching_params(g: &Geometry, channels: usize) -> PatchParams {
    PatchParams {
        count: g.patches() as u32,
        h: g.hb as u32,
        w: g.wb as u32,
        c: channels as u32,
        k: g.ksize as u32,
        step: g.stride as u32,
        pad_y: g.match_pad.0 as u32,
        pad_x: g.match_pad.1 as u32,
        grid_w: g.pw as u32,
        ..Default::default()
    }
}

pub(crate) fn raw_params(g: &Geometry, src_off: usize) -> Result<PatchParams> {
    Ok(PatchParams {
        count: u32_of("raw patches", g.patches() * g.raw_len())?,
        src_off: u32_of("raw patches", src_off)?,
        h: g.b_size.0 as u32,
        w: g.b_size.1 as u32,
        c: g.channels as u32,
        k: g.paste_kernel as u32,
        step: (g.rate * g.stride) as u32,
        pad_y: g.raw_pad.0 as u32,
        pad_x: g.raw_pad.1 as u32,
        grid_w: g.pw as u32,
        index_off: 0,
        dst_off: 0,
    })
}

pub(crate) fn query_params(g: &Geometry, rows: usize, index_off: u32) -> Result<PatchParams> {
    Ok(PatchParams {
        count: u32_of("query patches", rows * g.wf * g.match_len())?,
        h: g.hf as u32,
        w: g.wf as u32,
        c: g.channels as u32,
        k: g.ksize as u32,
        step: 1,
        pad_y: g.query_pad.0 as u32,
        pad_x: g.query_pad.1 as u32,
        grid_w: g.wf as u32,
        index_off,
        ..Default::default()
    })
}

/// `[m, k] · [n, k]ᵀ` (`trans_b`) or `[m, k] · [k, n]`, all contiguous.
pub(crate) fn gemm_params(m: usize, n: usize, k: usize, trans_b: bool) -> Result<GemmParams> {
    Ok(GemmParams {
        m: u32_of("GEMM rows", m)?,
        n: u32_of("GEMM columns", n)?,
        k: u32_of("GEMM depth", k)?,
        a_off: 0,
        b_off: 0,
        c_off: 0,
        lda: k as u32,
        ldb: if trans_b { k as u32 } else { n as u32 },
        ldc: n as u32,
    })
}

pub(crate) fn fuse_params(
    g: &Geometry,
    pass: FusePass,
    out_rows: usize,
    in_slots_off: u32,
    out_rows_off: u32,
) -> Result<FuseParams> {
    let fuse = g.fuse.expect("fuse parameters without fuse");
    Ok(FuseParams {
        count: u32_of("fuse pass", out_rows * g.wf * g.patches())?,
        mode: (fuse.mode == FuseMode::Spatial) as u32,
        which: (pass == FusePass::Cols) as u32,
        hf: g.hf as u32,
        wf: g.wf as u32,
        ph: g.ph as u32,
        pw: g.pw as u32,
        fk: fuse.k as u32,
        p: fuse.p as u32,
        in_slots_off,
        out_rows_off,
        _pad: 0,
    })
}

pub(crate) fn softmax_params(
    rows: usize,
    l: usize,
    scale: f32,
    masking: Masking,
    out_off: usize,
) -> Result<SoftmaxParams> {
    Ok(SoftmaxParams {
        rows: u32_of("softmax rows", rows)?,
        l: u32_of("patches", l)?,
        scale,
        masking: (masking == Masking::Exclude) as u32,
        mm_off: 0,
        out_off: u32_of("argmax", out_off)?,
        _pad: [0; 2],
    })
}

/// Fold of the query rows `rows` (output rows `touched_rows`), or with `rows = 0..0` the
/// normalisation of the whole item.
pub(crate) fn fold_params(g: &Geometry, rows: Range<usize>, item: usize, overlap: Overlap) -> Result<FoldParams> {
    let (hf_full, wf_full) = g.f_size;
    let c = g.channels;
    let out_rows = if rows.is_empty() { 0..hf_full } else { touched_rows(g, &rows) };
    Ok(FoldParams {
        count: u32_of("y", out_rows.len() * wf_full * c)?,
        y_off: u32_of("y", item * hf_full * wf_full * c)?,
        row0: out_rows.start as u32,
        out_w: wf_full as u32,
        c: c as u32,
        hf: g.hf as u32,
        wf: g.wf as u32,
        rate: g.rate as u32,
        kernel: g.paste_kernel as u32,
        pad_y: g.paste_pad.0 as u32,
        pad_x: g.paste_pad.1 as u32,
        r0: rows.start as u32,
        r1: rows.end as u32,
        overlap: (overlap == Overlap::Exact) as u32,
        divisor: g.overlap_divisor(Overlap::Quarter, 0, 0),
        _pad: 0,
    })
}

pub(crate) fn rows_params(pairs: usize, l: usize, pairs_off: u32, first_row: usize) -> Result<RowsParams> {
    Ok(RowsParams {
        count: u32_of("attention rows", pairs * l)?,
        l: l as u32,
        pairs_off,
        first_row: u32_of("attention rows", first_row)?,
    })
}

/// Records the stages of batch item `n`.
#[allow(clippy::too_many_arguments)]
fn record_item(
    rec: &mut Recorder,
    call: &Call,
    index: &IndexTable,
    params: &Params,
    g: &Geometry,
    plan: &Plan,
    n: usize,
    has_mask: bool,
) -> Result<()> {
    let bufs = call.bufs;
    let c = g.channels;
    let (hf_full, wf_full) = g.f_size;
    let (hb_full, wb_full) = g.b_size;
    let l = g.patches() as u64;

    let p = downscale_params(n * hf_full * wf_full * c, wf_full, c, index.f_rows, index.f_cols, g.hf, g.wf)?;
    rec.linear(Kernel::Downscale, &p, &[(1, &bufs.f), (2, call.index), (3, &bufs.fp)], p.count as u64)?;
    let p = downscale_params(n * hb_full * wb_full * c, wb_full, c, index.b_rows, index.b_cols, g.hb, g.wb)?;
    rec.linear(Kernel::Downscale, &p, &[(1, &bufs.b), (2, call.index), (3, &bufs.bp)], p.count as u64)?;

    rec.linear(Kernel::MatchingPatches, &matching_params(g, c), &[(1, &bufs.bp), (2, &bufs.pb), (3, &bufs.norms)], l)?;
    if has_mask && (g.mask_batch > 1 || n == 0) {
        let m = if g.mask_batch > 1 { n } else { 0 };
        let p = downscale_params(m * hb_full * wb_full, wb_full, 1, index.b_rows, index.b_cols, g.hb, g.wb)?;
        rec.linear(Kernel::Downscale, &p, &[(1, &bufs.mask), (2, call.index), (3, &bufs.mp)], p.count as u64)?;
        rec.linear(Kernel::MaskValidity, &matching_params(g, 1), &[(1, &bufs.mp), (2, &bufs.mm)], l)?;
    }
    let p = raw_params(g, n * hb_full * wb_full * c)?;
    rec.linear(Kernel::RawPatches, &p, &[(1, &bufs.b), (2, &bufs.raw)], p.count as u64)?;

    for (tile, ti) in plan.tiles.iter().zip(&index.tiles) {
        record_tile(rec, call, params, g, tile, ti, n)?;
    }

    let p = fold_params(g, 0..0, n, params.overlap)?;
    rec.linear(Kernel::Normalize, &p, &[(2, &bufs.y)], p.count as u64)
}

/// Records one query tile: query patches, scores, fuse, softmax, paste GEMM, fold.
fn record_tile(
    rec: &mut Recorder,
    call: &Call,
    params: &Params,
    g: &Geometry,
    tile: &Tile,
    ti: &TileIndex,
    n: usize,
) -> Result<()> {
    let bufs = call.bufs;
    let (l, wf) = (g.patches(), g.wf);
    let p = query_params(g, tile.raw_rows.len(), ti.raw_rows)?;
    rec.linear(Kernel::QueryPatches, &p, &[(1, &bufs.fp), (2, &bufs.pf), (4, call.index)], p.count as u64)?;
    let p = gemm_params(tile.raw_rows.len() * wf, l, g.match_len(), true)?;
    rec.gemm(Kernel::ScoresGemm, &p, &[(1, &bufs.pf), (2, &bufs.pb), (3, &bufs.scores)])?;

    // The second fuse pass writes into the raw scores' buffer, free once the first pass has
    // read it; the softmax then turns those rows into attention in place.
    let attention = &bufs.scores;
    if g.fuse.is_some() {
        let p = fuse_params(g, FusePass::Rows, tile.pass1_rows.len(), ti.raw_slots, ti.pass1_rows)?;
        rec.linear(Kernel::Fuse, &p, &[(1, &bufs.scores), (2, call.index), (3, &bufs.pass1)], p.count as u64)?;
        let p = fuse_params(g, FusePass::Cols, tile.rows.len(), ti.pass1_slots, ti.rows)?;
        rec.linear(Kernel::Fuse, &p, &[(1, &bufs.pass1), (2, call.index), (3, attention)], p.count as u64)?;
    }

    let rows_m = tile.rows.len() * wf;
    let p = softmax_params(rows_m, l, params.softmax_scale, params.masking, n * g.queries() + tile.rows.start * wf)?;
    let groups = rec.fold_groups(Kernel::Softmax, rows_m as u64)?;
    rec.dispatch(Kernel::Softmax, &p, &[(1, attention), (2, &bufs.mm), (3, &bufs.argmax), (4, &bufs.mass)], groups);

    if ti.pairs_len > 0 {
        // Destination rows are numbered per call; item n's start at n·Q.
        let p = rows_params(ti.pairs_len, l, ti.pairs, n * call.queries)?;
        rec.linear(Kernel::CopyRows, &p, &[(1, attention), (2, call.index), (3, call.rows)], p.count as u64)?;
    }

    let p = gemm_params(rows_m, g.raw_len(), l, false)?;
    rec.gemm(Kernel::PasteGemm, &p, &[(1, attention), (2, &bufs.raw), (3, &bufs.cols)])?;

    let p = fold_params(g, tile.rows.clone(), n, params.overlap)?;
    rec.linear(Kernel::Fold, &p, &[(1, &bufs.cols), (2, &bufs.y)], p.count as u64)?;
    rec.split();
    Ok(())
}

impl Pending {
    /// Blocks until the results are mapped, then reads them; `progress(done, total)` is told
    /// after each submitted part has finished.
    pub(crate) fn wait(self, gpu: &Gpu, progress: &mut dyn FnMut(usize, usize)) -> Result<Output> {
        let total = self.submissions.len();
        for (k, s) in self.submissions.iter().enumerate() {
            gpu.wait(s.clone())?;
            progress(k + 1, total);
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
