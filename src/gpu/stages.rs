//! Each GPU stage on its own, for the stage tests: inputs uploaded from slices, outputs
//! poisoned with NaN (or `u32::MAX`) before the dispatch, so an element a shader forgets to
//! write shows up. The parameter blocks are the ones the forward pass uses.

use std::sync::Arc;

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::geometry::{FusePass, Geometry};
use crate::gpu::context::Gpu;
use crate::gpu::forward::{
    downscale_params, fold_params, fuse_params, gemm_params, matching_params, query_params, raw_params, softmax_params,
    STORAGE,
};
use crate::gpu::kernels::{Kernel, Kernels, Recorder};
use crate::params::{Masking, Overlap};

/// Runs single stages on a [`Gpu`] (see the module docs).
pub struct Stages {
    gpu: Gpu,
    kernels: Arc<Kernels>,
}

impl Stages {
    /// Compiles (or reuses) the pipelines of `gpu`.
    pub fn new(gpu: &Gpu) -> Result<Stages> {
        Ok(Stages { gpu: gpu.clone(), kernels: gpu.kernels()? })
    }

    fn input<T: Pod>(&self, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let padded = if bytes.is_empty() { &[0u8; 4][..] } else { bytes };
        self.gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("stage input"),
            contents: padded,
            usage: STORAGE,
        })
    }

    fn poisoned(&self, len: usize) -> wgpu::Buffer {
        self.input(&vec![f32::NAN; len.max(1)])
    }

    /// Submits the recorded dispatches and reads back `outputs` (lengths in elements).
    fn run(&self, rec: Recorder, outputs: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<u32>>> {
        let device = &self.gpu.device;
        let (staging, idx, rx) = self.gpu.checked(|| {
            let mut encoder = rec.encode(device, &self.kernels, None, |_| {}).pop().expect("one part");
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
            let idx = self.gpu.queue.submit([encoder.finish()]);
            Ok((staging, idx, rx))
        })?;
        self.gpu.wait(idx)?;
        self.gpu.take_errors()?;
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

    fn floats(v: Vec<u32>) -> Vec<f32> {
        bytemuck::cast_slice(&v).to_vec()
    }

    fn rec(&self) -> Recorder {
        Recorder::new(&self.gpu.device)
    }

    /// Align-corners NN downscale of `[h, w, c]` with the given index maps.
    pub fn downscale(&self, x: &[f32], w: usize, c: usize, rows: &[u32], cols: &[u32]) -> Result<Vec<f32>> {
        let index: Vec<u32> = rows.iter().chain(cols).copied().collect();
        let (src, idx, dst) = (self.input(x), self.input(&index), self.poisoned(rows.len() * cols.len() * c));
        let p = downscale_params(0, w, c, 0, rows.len() as u32, rows.len(), cols.len())?;
        let mut rec = self.rec();
        rec.linear(Kernel::Downscale, &p, &[(1, &src), (2, &idx), (3, &dst)], p.count as u64)?;
        Ok(Self::floats(self.run(rec, &[(&dst, p.count as usize)])?.remove(0)))
    }

    /// Normalised matching patches `[L, k·k·C]` and norms `[L]` of b′ `[hb, wb, C]`.
    pub fn matching_patches(&self, bp: &[f32], g: &Geometry) -> Result<(Vec<f32>, Vec<f32>)> {
        let l = g.patches();
        let (src, dst, norms) = (self.input(bp), self.poisoned(l * g.match_len()), self.poisoned(l));
        let mut rec = self.rec();
        rec.linear(
            Kernel::MatchingPatches,
            &matching_params(g, g.channels),
            &[(1, &src), (2, &dst), (3, &norms)],
            l as u64,
        )?;
        let mut out = self.run(rec, &[(&dst, l * g.match_len()), (&norms, l)])?;
        let norms = Self::floats(out.remove(1));
        Ok((Self::floats(out.remove(0)), norms))
    }

    /// Mask validity `[L]` of the downscaled mask `[hb, wb]`.
    pub fn mask_validity(&self, mp: &[f32], g: &Geometry) -> Result<Vec<f32>> {
        let l = g.patches();
        let (src, dst) = (self.input(mp), self.poisoned(l));
        let mut rec = self.rec();
        rec.linear(Kernel::MaskValidity, &matching_params(g, 1), &[(1, &src), (2, &dst)], l as u64)?;
        Ok(Self::floats(self.run(rec, &[(&dst, l)])?.remove(0)))
    }

    /// Raw patches `[L, K·K·C]` of full-resolution b `[Hb, Wb, C]`.
    pub fn raw_patches(&self, b: &[f32], g: &Geometry) -> Result<Vec<f32>> {
        let p = raw_params(g, 0)?;
        let (src, dst) = (self.input(b), self.poisoned(p.count as usize));
        let mut rec = self.rec();
        rec.linear(Kernel::RawPatches, &p, &[(1, &src), (2, &dst)], p.count as u64)?;
        Ok(Self::floats(self.run(rec, &[(&dst, p.count as usize)])?.remove(0)))
    }

    /// Query patches `[rows·wf, k·k·C]` of f′ `[hf, wf, C]`.
    pub fn query_patches(&self, fp: &[f32], g: &Geometry, rows: &[usize]) -> Result<Vec<f32>> {
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let p = query_params(g, rows.len(), 0)?;
        let (src, idx, dst) = (self.input(fp), self.input(&index), self.poisoned(p.count as usize));
        let mut rec = self.rec();
        rec.linear(Kernel::QueryPatches, &p, &[(1, &src), (2, &dst), (4, &idx)], p.count as u64)?;
        Ok(Self::floats(self.run(rec, &[(&dst, p.count as usize)])?.remove(0)))
    }

    /// `a [m, k] · b [n, k]ᵀ` (`trans_b`, the scores) or `a [m, k] · b [k, n]` (the paste).
    pub fn gemm(&self, a: &[f32], b: &[f32], m: usize, n: usize, k: usize, trans_b: bool) -> Result<Vec<f32>> {
        let p = gemm_params(m, n, k, trans_b)?;
        let (ab, bb, cb) = (self.input(a), self.input(b), self.poisoned(m * n));
        let mut rec = self.rec();
        let kernel = if trans_b { Kernel::ScoresGemm } else { Kernel::PasteGemm };
        rec.gemm(kernel, &p, &[(1, &ab), (2, &bb), (3, &cb)])?;
        Ok(Self::floats(self.run(rec, &[(&cb, m * n)])?.remove(0)))
    }

    /// One fuse pass; `in_slots[row]` is the input slot of each grid row (`u32::MAX` if absent).
    pub fn fuse_pass(
        &self,
        input: &[f32],
        in_slots: &[u32],
        out_rows: &[usize],
        g: &Geometry,
        pass: FusePass,
    ) -> Result<Vec<f32>> {
        let mut index: Vec<u32> = in_slots.to_vec();
        index.extend(out_rows.iter().map(|&r| r as u32));
        let p = fuse_params(g, pass, out_rows.len(), 0, in_slots.len() as u32)?;
        let (src, idx, dst) = (self.input(input), self.input(&index), self.poisoned(p.count as usize));
        let mut rec = self.rec();
        rec.linear(Kernel::Fuse, &p, &[(1, &src), (2, &idx), (3, &dst)], p.count as u64)?;
        Ok(Self::floats(self.run(rec, &[(&dst, p.count as usize)])?.remove(0)))
    }

    /// Masked scaled softmax of `scores [rows, L]`: (attention, argmax, mass).
    pub fn softmax(
        &self,
        scores: &[f32],
        mm: &[f32],
        l: usize,
        scale: f32,
        masking: Masking,
    ) -> Result<(Vec<f32>, Vec<u32>, Vec<f32>)> {
        let rows = scores.len() / l;
        let p = softmax_params(rows, l, scale, masking, 0)?;
        let (s, m) = (self.input(scores), self.input(mm));
        let (am, mass) = (self.input(&vec![u32::MAX; rows.max(1)]), self.poisoned(rows));
        let mut rec = self.rec();
        let groups = rec.fold_groups(Kernel::Softmax, rows as u64)?;
        rec.dispatch(Kernel::Softmax, &p, &[(1, &s), (2, &m), (3, &am), (4, &mass)], groups);
        let mut out = self.run(rec, &[(&s, scores.len()), (&am, rows), (&mass, rows)])?;
        let mass = Self::floats(out.remove(2));
        let argmax = out.remove(1);
        Ok((Self::floats(out.remove(0)), argmax, mass))
    }

    /// Adds the pasted columns of query rows `rows` into `y [Hf, Wf, C]`.
    pub fn fold(&self, cols: &[f32], rows: std::ops::Range<usize>, g: &Geometry, y: &[f32]) -> Result<Vec<f32>> {
        let p = fold_params(g, rows, 0, Overlap::Quarter)?;
        let (cb, yb) = (self.input(cols), self.input(y));
        let mut rec = self.rec();
        rec.linear(Kernel::Fold, &p, &[(1, &cb), (2, &yb)], p.count as u64)?;
        Ok(Self::floats(self.run(rec, &[(&yb, y.len())])?.remove(0)))
    }

    /// Divides `y [Hf, Wf, C]` by the overlap divisor.
    pub fn normalize(&self, y: &[f32], g: &Geometry, overlap: Overlap) -> Result<Vec<f32>> {
        let p = fold_params(g, 0..0, 0, overlap)?;
        let yb = self.input(y);
        let mut rec = self.rec();
        rec.linear(Kernel::Normalize, &p, &[(2, &yb)], p.count as u64)?;
        Ok(Self::floats(self.run(rec, &[(&yb, y.len())])?.remove(0)))
    }
}
