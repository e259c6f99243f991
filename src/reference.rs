//! The CPU twin: every GPU stage in plain f64 loops, with the same stage boundaries and buffer
//! layouts as the shaders, and the whole layer built from them. It is the oracle of the GPU
//! tests and a backend of its own ([`crate::Backend::Cpu`]).
//!
//! Layouts (per batch item, row-major, f64 here and f32 on the GPU):
//! * downscaled f′ `[hf, wf, C]`, b′ `[hb, wb, C]`, mask m′ `[hb, wb]`;
//! * matching patches `[L, k·k·C]` (normalised) and their norms `[L]`; validity mm `[L]`;
//! * raw patches `[L, K·K·C]`;
//! * query patches and scores of a tile's rows: `[rows·wf, k·k·C]` and `[rows·wf, L]`;
//! * pasted columns `[rows·wf, K·K·C]`; y `[Hf, Wf, C]`.
//!
//! Element order inside a patch is (dy, dx, c); patches are row-major over the patch grid.

use crate::error::Result;
use crate::geometry::{FusePass, Geometry};
use crate::layer::Output;
use crate::params::{Masking, Overlap, Params};
use crate::plan::{Plan, Tile};
use crate::tensor::Tensor;

/// Reads `x[(y·w + x)·c + ch]` with zero padding outside `h×w`.
#[inline]
fn padded(x: &[f64], h: usize, w: usize, c: usize, y: isize, xx: isize, ch: usize) -> f64 {
    if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
        0.0
    } else {
        x[(y as usize * w + xx as usize) * c + ch]
    }
}

/// Align-corners nearest-neighbour downscale `[h, w, c]` → `[rows.len(), cols.len(), c]` (SPEC §2.5).
pub fn downscale(x: &[f64], w: usize, c: usize, rows: &[u32], cols: &[u32]) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * c);
    for &sy in rows {
        for &sx in cols {
            let base = (sy as usize * w + sx as usize) * c;
            out.extend_from_slice(&x[base..base + c]);
        }
    }
    out
}

/// Matching patches of b′ divided by `max(‖patch‖, 1e-4)`, norms including the zero padding
/// (SPEC §2.6). Returns `(patches [L, k·k·C], norms [L])`.
pub fn matching_patches(bp: &[f64], g: &Geometry) -> (Vec<f64>, Vec<f64>) {
    let (k, c, d) = (g.ksize, g.channels, g.match_len());
    let mut patches = vec![0.0; g.patches() * d];
    let mut norms = vec![0.0; g.patches()];
    for u in 0..g.ph {
        for v in 0..g.pw {
            let l = u * g.pw + v;
            let p = &mut patches[l * d..(l + 1) * d];
            for dy in 0..k {
                for dx in 0..k {
                    let y = (u * g.stride + dy) as isize - g.match_pad.0 as isize;
                    let x = (v * g.stride + dx) as isize - g.match_pad.1 as isize;
                    for ch in 0..c {
                        p[(dy * k + dx) * c + ch] = padded(bp, g.hb, g.wb, c, y, x, ch);
                    }
                }
            }
            let norm = p.iter().map(|v| v * v).sum::<f64>().sqrt();
            norms[l] = norm;
            let denom = norm.max(1e-4);
            p.iter_mut().for_each(|v| *v /= denom);
        }
    }
    (patches, norms)
}

/// Mask validity mm `[L]`: 1 where the mean of the downscaled mask over the patch window is
/// exactly 0, padding counting as valid (SPEC §2.7).
pub fn mask_validity(mp: &[f64], g: &Geometry) -> Vec<f64> {
    let k = g.ksize;
    let mut mm = vec![0.0; g.patches()];
    for u in 0..g.ph {
        for v in 0..g.pw {
            let mut sum = 0.0;
            for dy in 0..k {
                for dx in 0..k {
                    let y = (u * g.stride + dy) as isize - g.match_pad.0 as isize;
                    let x = (v * g.stride + dx) as isize - g.match_pad.1 as isize;
                    sum += padded(mp, g.hb, g.wb, 1, y, x, 0);
                }
            }
            mm[u * g.pw + v] = if sum / (k * k) as f64 == 0.0 { 1.0 } else { 0.0 };
        }
    }
    mm
}

/// Raw (paste) patches `[L, K·K·C]` from full-resolution b `[Hb, Wb, C]`: K×K windows at
/// stride r·s with TF SAME padding (SPEC §2.4).
pub fn raw_patches(b: &[f64], g: &Geometry) -> Vec<f64> {
    let (kk, c, p) = (g.paste_kernel, g.channels, g.raw_len());
    let (hb, wb) = g.b_size;
    let step = g.rate * g.stride;
    let mut raw = vec![0.0; g.patches() * p];
    for u in 0..g.ph {
        for v in 0..g.pw {
            let l = u * g.pw + v;
            for ty in 0..kk {
                for tx in 0..kk {
                    let y = (u * step + ty) as isize - g.raw_pad.0 as isize;
                    let x = (v * step + tx) as isize - g.raw_pad.1 as isize;
                    for ch in 0..c {
                        raw[l * p + (ty * kk + tx) * c + ch] = padded(b, hb, wb, c, y, x, ch);
                    }
                }
            }
        }
    }
    raw
}

/// Query patches `[rows·wf, k·k·C]` of f′ for the given grid rows (SAME, stride 1).
pub fn query_patches(fp: &[f64], g: &Geometry, rows: &[usize]) -> Vec<f64> {
    let (k, c, d) = (g.ksize, g.channels, g.match_len());
    let mut out = vec![0.0; rows.len() * g.wf * d];
    for (slot, &i) in rows.iter().enumerate() {
        for j in 0..g.wf {
            let q = &mut out[(slot * g.wf + j) * d..(slot * g.wf + j + 1) * d];
            for dy in 0..k {
                for dx in 0..k {
                    let y = (i + dy) as isize - g.query_pad.0 as isize;
                    let x = (j + dx) as isize - g.query_pad.1 as isize;
                    for ch in 0..c {
                        q[(dy * k + dx) * c + ch] = padded(fp, g.hf, g.wf, c, y, x, ch);
                    }
                }
            }
        }
    }
    out
}

/// `a [m, k] · b [n, k]ᵀ → [m, n]`: the matching scores as a GEMM (SPEC §2.7).
pub fn gemm_nt(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for_each_row(&mut out, n, |i, oi| {
        let ai = &a[i * k..(i + 1) * k];
        for (j, o) in oi.iter_mut().enumerate() {
            *o = ai.iter().zip(&b[j * k..(j + 1) * k]).map(|(x, y)| x * y).sum();
        }
    });
    out
}

/// Calls `f(row index, row)` for every `row_len`-long row of `out`, rows split over the
/// machine's cores. Each row is computed by one thread in the same order as a plain loop
/// would, so the result does not depend on the number of threads.
fn for_each_row(out: &mut [f64], row_len: usize, f: impl Fn(usize, &mut [f64]) + Sync) {
    let rows = out.len() / row_len.max(1);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows).max(1);
    if threads == 1 || out.len() < 1 << 14 {
        out.chunks_mut(row_len.max(1)).enumerate().for_each(|(i, r)| f(i, r));
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        for (t, chunk) in out.chunks_mut(per * row_len).enumerate() {
            let f = &f;
            scope.spawn(move || chunk.chunks_mut(row_len).enumerate().for_each(|(i, r)| f(t * per + i, r)));
        }
    });
}

/// `a [m, k] · b [k, n] → [m, n]`: attention × raw patches, the paste as a GEMM.
pub fn gemm_nn(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for_each_row(&mut out, n, |i, oi| {
        for t in 0..k {
            let x = a[i * k + t];
            if x != 0.0 {
                for (o, y) in oi.iter_mut().zip(&b[t * n..(t + 1) * n]) {
                    *o += x * y;
                }
            }
        }
    });
    out
}

/// One fuse pass (SPEC §2.8): for every output row `out_rows[o]`, column j and patch β,
/// the sum over d ∈ D of the input at the query and the patch each stepped by d on its own
/// grid. `in_slots[row]` is the input slot of a grid row (`u32::MAX` if the input lacks it,
/// which a correct plan never asks for).
pub fn fuse_pass(input: &[f64], in_slots: &[u32], out_rows: &[usize], g: &Geometry, pass: FusePass) -> Vec<f64> {
    let fuse = g.fuse.expect("fuse_pass without fuse");
    let l = g.patches();
    let mut out = vec![0.0; out_rows.len() * g.wf * l];
    // One output row per query (o, j).
    for_each_row(&mut out, l, |q, row| {
        let (i, j) = (out_rows[q / g.wf], q % g.wf);
        for u in 0..g.ph {
            for v in 0..g.pw {
                let mut sum = 0.0;
                for d in fuse.offsets() {
                    let qs = Geometry::fuse_step(fuse.mode, pass, g.hf, g.wf, i, j, d);
                    let ps = Geometry::fuse_step(fuse.mode, pass, g.ph, g.pw, u, v, d);
                    if let (Some((qi, qj)), Some((pu, pv))) = (qs, ps) {
                        let slot = in_slots[qi];
                        assert!(slot != u32::MAX, "fuse pass reads row {qi} that the tile did not compute");
                        sum += input[(slot as usize * g.wf + qj) * l + pu * g.pw + pv];
                    }
                }
                row[u * g.pw + v] = sum;
            }
        }
    });
    out
}

/// Masked scaled softmax over each row of `scores [rows, L]`, in place (SPEC §2.9), with the
/// argmax (first index on ties) and the attention mass of each row.
pub fn softmax(scores: &mut [f64], mm: &[f64], l: usize, scale: f64, masking: Masking) -> (Vec<u32>, Vec<f64>) {
    let rows = scores.len() / l;
    let mut argmax = Vec::with_capacity(rows);
    let mut mass = Vec::with_capacity(rows);
    for row in scores.chunks_mut(l) {
        let logit = |s: f64, m: f64| match masking {
            Masking::ZeroLogit => scale * (s * m),
            Masking::Exclude => {
                if m != 0.0 {
                    scale * s
                } else {
                    f64::NEG_INFINITY
                }
            }
        };
        let max = row.iter().zip(mm).map(|(&s, &m)| logit(s, m)).fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            // Only possible with `Exclude` and every patch masked: no attention at all.
            row.iter_mut().for_each(|a| *a = 0.0);
            argmax.push(0);
            mass.push(0.0);
            continue;
        }
        let denom: f64 = row.iter().zip(mm).map(|(&s, &m)| (logit(s, m) - max).exp()).sum();
        let (mut best, mut best_a, mut total) = (0u32, f64::NEG_INFINITY, 0.0);
        for (idx, (a, &m)) in row.iter_mut().zip(mm).enumerate() {
            *a = m * (logit(*a, m) - max).exp() / denom;
            total += *a;
            if *a > best_a {
                best_a = *a;
                best = idx as u32;
            }
        }
        argmax.push(best);
        mass.push(total);
    }
    (argmax, mass)
}

/// Adds the pasted columns `[tile rows·wf, K·K·C]` of the queries in `rows` into the
/// unnormalised output `y [Hf, Wf, C]` (the fold of the transposed convolution, as a gather).
/// Each pixel adds its covering queries in ascending (i, j) order, so tiles of whole rows
/// added in ascending order give the same sums as one tile.
pub fn fold(cols: &[f64], rows: std::ops::Range<usize>, g: &Geometry, y: &mut [f64]) {
    let (hf_full, wf_full) = g.f_size;
    let (kk, c, p, r) = (g.paste_kernel, g.channels, g.raw_len(), g.rate);
    for py in 0..hf_full {
        let irange = Geometry::covering(py, g.hf, r, g.paste_pad.0, kk);
        let (i0, i1) = (irange.start.max(rows.start), irange.end.min(rows.end));
        if i0 >= i1 {
            continue;
        }
        for px in 0..wf_full {
            let jrange = Geometry::covering(px, g.wf, r, g.paste_pad.1, kk);
            for ch in 0..c {
                let mut acc = y[(py * wf_full + px) * c + ch];
                for i in i0..i1 {
                    let ty = py + g.paste_pad.0 - r * i;
                    for j in jrange.clone() {
                        let tx = px + g.paste_pad.1 - r * j;
                        acc += cols[((i - rows.start) * g.wf + j) * p + (ty * kk + tx) * c + ch];
                    }
                }
                y[(py * wf_full + px) * c + ch] = acc;
            }
        }
    }
}

/// Divides the folded output by the overlap divisor (SPEC §2.11, §E); 0 coverage gives 0.
pub fn normalize(y: &mut [f64], g: &Geometry, overlap: Overlap) {
    let (hf_full, wf_full) = g.f_size;
    let c = g.channels;
    for py in 0..hf_full {
        for px in 0..wf_full {
            let div = g.overlap_divisor(overlap, py, px) as f64;
            for v in &mut y[(py * wf_full + px) * c..(py * wf_full + px + 1) * c] {
                *v = if div == 0.0 { 0.0 } else { *v / div };
            }
        }
    }
}

/// The whole layer on the CPU, f64 inside, with a checked geometry and a tile plan (see
/// [`crate::ContextualAttention::forward`]); `queries` (i, j) of the query grid get their
/// attention rows in [`Output::attention_rows`]; `progress(done, total)` is told after each tile.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    params: &Params,
    g: &Geometry,
    plan: &Plan,
    f: &Tensor,
    b: &Tensor,
    mask: Option<&Tensor>,
    queries: &[(usize, usize)],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Output> {
    g.check_queries(queries)?;
    let (l, c) = (g.patches(), g.channels);
    let (hf_full, wf_full) = g.f_size;
    let wb_full = g.b_size.1;
    let nq = g.queries();
    let mut y_all = Vec::with_capacity(g.batch * hf_full * wf_full * c);
    let mut argmax_all = Vec::with_capacity(g.batch * nq);
    let mut mass_all = Vec::with_capacity(g.batch * nq);
    let mut rows_all = vec![0.0f32; g.batch * queries.len() * l];
    let (mut done, total) = (0, g.batch * plan.tiles.len());
    let item = |t: &Tensor, n: usize| -> Vec<f64> { t.item(n).data().iter().map(|&v| v as f64).collect() };
    for n in 0..g.batch {
        let f_n = item(f, n);
        let b_n = item(b, n);
        let fp = downscale(&f_n, wf_full, c, &g.f_rows, &g.f_cols);
        let bp = downscale(&b_n, wb_full, c, &g.b_rows, &g.b_cols);
        let (pb, _) = matching_patches(&bp, g);
        let mm = match mask {
            Some(m) => {
                let m_n = item(m, if g.mask_batch == 1 { 0 } else { n });
                let mp = downscale(&m_n, wb_full, 1, &g.b_rows, &g.b_cols);
                mask_validity(&mp, g)
            }
            None => vec![1.0; l],
        };
        let raw = raw_patches(&b_n, g);
        let mut y = vec![0.0; hf_full * wf_full * c];
        for tile in &plan.tiles {
            let attention = tile_attention(params, g, tile, &fp, &pb, &mm, &mut argmax_all, &mut mass_all);
            for (q, &(i, j)) in queries.iter().enumerate().filter(|(_, (i, _))| tile.rows.contains(i)) {
                let row = &attention[((i - tile.rows.start) * g.wf + j) * l..][..l];
                rows_all[(n * queries.len() + q) * l..][..l].iter_mut().zip(row).for_each(|(d, &a)| *d = a as f32);
            }
            let cols = gemm_nn(&attention, &raw, tile.rows.len() * g.wf, g.raw_len(), l);
            fold(&cols, tile.rows.clone(), g, &mut y);
            done += 1;
            progress(done, total);
        }
        normalize(&mut y, g, params.overlap);
        y_all.extend(y.iter().map(|&v| v as f32));
    }
    let y = Tensor::new([g.batch, hf_full, wf_full, c], y_all).expect("sizes agree");
    let mut out = Output::new(g, y, argmax_all, mass_all.into_iter().map(|m| m as f32).collect());
    out.queries = queries.to_vec();
    out.attention_rows = rows_all;
    Ok(out)
}

/// Scores, fuse and softmax of one tile: the attention rows `[tile rows·wf, L]`.
#[allow(clippy::too_many_arguments)]
fn tile_attention(
    params: &Params,
    g: &Geometry,
    tile: &Tile,
    fp: &[f64],
    pb: &[f64],
    mm: &[f64],
    argmax: &mut Vec<u32>,
    mass: &mut Vec<f64>,
) -> Vec<f64> {
    let l = g.patches();
    let pf = query_patches(fp, g, &tile.raw_rows);
    let raw_scores = gemm_nt(&pf, pb, tile.raw_rows.len() * g.wf, l, g.match_len());
    let mut scores = if g.fuse.is_some() {
        let pass1 = fuse_pass(&raw_scores, &Tile::slot_map(&tile.raw_rows, g.hf), &tile.pass1_rows, g, FusePass::Rows);
        let rows: Vec<usize> = tile.rows.clone().collect();
        fuse_pass(&pass1, &Tile::slot_map(&tile.pass1_rows, g.hf), &rows, g, FusePass::Cols)
    } else {
        raw_scores
    };
    let (a, m) = softmax(&mut scores, mm, l, params.softmax_scale as f64, params.masking);
    argmax.extend(a);
    mass.extend(m);
    scores
}
