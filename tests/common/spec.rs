//! The layer once more, straight from SPEC's formulas (§2.2–§2.12, §E), in f64 and without the
//! library's `Geometry` or twin: the independent oracle that checks the twin itself (the GPU and
//! the twin share `Geometry`, so agreeing with each other alone would not catch a geometry bug).
//! Also the SPEC helpers other tests compare against: SAME padding, the align-corners index map,
//! the paste's coverage counts.

use contextual_attention::{FuseMode, Masking, Overlap, Params, Tensor};

/// TF "SAME" padding before, for length n, kernel k, stride s (SPEC §2.2).
pub fn same_pad_before(n: usize, k: usize, s: usize) -> usize {
    let out = n.div_ceil(s);
    let total = ((out - 1) * s + k).saturating_sub(n);
    total / 2
}

/// How many query positions (i in 0..n_out/r) paste their K×K patch onto each output row
/// P in 0..n_out (SPEC §2.11: 0 ≤ P − r·i + π < K with π the SAME pad before of (n_out, K, r)).
pub fn coverage(n_out: usize, r: usize, k: usize) -> Vec<usize> {
    let pi = same_pad_before(n_out, k, r) as isize;
    (0..n_out as isize)
        .map(|p| (0..(n_out / r) as isize).filter(|&i| (0..k as isize).contains(&(p - r as isize * i + pi))).count())
        .collect()
}

/// b̃(n, y, x, c): b with zero padding.
pub fn b_tilde(b: &Tensor, n: usize, y: isize, x: isize, c: usize) -> f64 {
    let s = b.shape();
    if y < 0 || x < 0 || y >= s[1] as isize || x >= s[2] as isize {
        0.0
    } else {
        b.at(n, y as usize, x as usize, c) as f64
    }
}

/// TF-1 align-corners nearest-neighbour source indices (SPEC §2.5), in f32 as the original.
pub fn spec_nn(input: usize, output: usize) -> Vec<usize> {
    let scale = if output > 1 { (input as f32 - 1.0) / (output as f32 - 1.0) } else { input as f32 / output as f32 };
    (0..output).map(|o| ((o as f32 * scale).round() as usize).min(input - 1)).collect()
}

pub struct Spec {
    pub y: Vec<f64>,
    pub argmax: Vec<u32>,
    pub mass: Vec<f64>,
}

pub fn spec_layer(p: &Params, f: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> Spec {
    let [bn, hff, wff, c] = f.shape();
    let [_, hbf, wbf, _] = b.shape();
    let (r, s, k, kk) = (p.rate, p.stride, p.ksize, p.paste_kernel.unwrap_or(2 * p.rate));
    let (hf, wf, hb, wb) = (hff / r, wff / r, hbf / r, wbf / r);
    let (ph, pw) = (hb.div_ceil(s), wb.div_ceil(s));
    let l = ph * pw;
    let (fr, fc, br, bc) = (spec_nn(hff, hf), spec_nn(wff, wf), spec_nn(hbf, hb), spec_nn(wbf, wb));
    let (qy, qx) = (same_pad_before(hf, k, 1) as isize, same_pad_before(wf, k, 1) as isize);
    let (my, mx) = (same_pad_before(hb, k, s) as isize, same_pad_before(wb, k, s) as isize);
    let (ry, rx) = (same_pad_before(hbf, kk, r * s) as isize, same_pad_before(wbf, kk, r * s) as isize);
    let (py_, px_) = (same_pad_before(hff, kk, r) as isize, same_pad_before(wff, kk, r) as isize);
    let lam = p.softmax_scale as f64;
    let mut out = Spec { y: Vec::new(), argmax: Vec::new(), mass: Vec::new() };
    for n in 0..bn {
        // Downscaled f′, b′, m′ with zero padding.
        let fp = |i: isize, j: isize, ch: usize| -> f64 {
            if i < 0 || j < 0 || i >= hf as isize || j >= wf as isize {
                0.0
            } else {
                f.at(n, fr[i as usize], fc[j as usize], ch) as f64
            }
        };
        let bp = |i: isize, j: isize, ch: usize| -> f64 {
            if i < 0 || j < 0 || i >= hb as isize || j >= wb as isize {
                0.0
            } else {
                b.at(n, br[i as usize], bc[j as usize], ch) as f64
            }
        };
        let mp = |i: isize, j: isize| -> f64 {
            match mask {
                Some(m) if i >= 0 && j >= 0 && i < hb as isize && j < wb as isize => {
                    m.at(if m.shape()[0] == 1 { 0 } else { n }, br[i as usize], bc[j as usize], 0) as f64
                }
                _ => 0.0,
            }
        };
        // Raw scores S[x][l] (§2.6, §2.7).
        let mut sc = vec![0.0f64; hf * wf * l];
        let mut mm = vec![0.0f64; l];
        for u in 0..ph {
            for v in 0..pw {
                let (y0, x0) = ((u * s) as isize - my, (v * s) as isize - mx);
                let mut norm2 = 0.0;
                let mut msum = 0.0;
                for dy in 0..k as isize {
                    for dx in 0..k as isize {
                        msum += mp(y0 + dy, x0 + dx);
                        for ch in 0..c {
                            norm2 += bp(y0 + dy, x0 + dx, ch).powi(2);
                        }
                    }
                }
                let denom = norm2.sqrt().max(1e-4);
                mm[u * pw + v] = (msum == 0.0) as u8 as f64;
                for i in 0..hf {
                    for j in 0..wf {
                        let mut dot = 0.0;
                        for dy in 0..k as isize {
                            for dx in 0..k as isize {
                                for ch in 0..c {
                                    dot +=
                                        fp(i as isize + dy - qy, j as isize + dx - qx, ch) * bp(y0 + dy, x0 + dx, ch);
                                }
                            }
                        }
                        sc[(i * wf + j) * l + u * pw + v] = dot / denom;
                    }
                }
            }
        }
        // Fuse (§2.8 closed form; §E spatial).
        let at = |i: usize, j: usize, u: usize, v: usize| sc[(i * wf + j) * l + u * pw + v];
        let fused: Vec<f64> = if !p.fuse {
            sc.clone()
        } else {
            let pp = ((p.fuse_k - 1) / 2) as isize;
            let dset: Vec<isize> = (0..p.fuse_k as isize).map(|t| t - pp).collect();
            // Flat steps: R (row-major) and C (column-major) on an h×w grid.
            let rstep = |h: usize, w: usize, (i, j): (usize, usize), d: isize| -> Option<(usize, usize)> {
                let a = (i * w + j) as isize + d;
                (a >= 0 && a < (h * w) as isize).then(|| (a as usize / w, a as usize % w))
            };
            let cstep = |h: usize, w: usize, (i, j): (usize, usize), e: isize| -> Option<(usize, usize)> {
                let a = (j * h + i) as isize + e;
                (a >= 0 && a < (h * w) as isize).then(|| (a as usize % h, a as usize / h))
            };
            let mut fz = vec![0.0f64; hf * wf * l];
            for i in 0..hf {
                for j in 0..wf {
                    for u in 0..ph {
                        for v in 0..pw {
                            let mut sum = 0.0;
                            for &e in &dset {
                                for &d in &dset {
                                    let term = match p.fuse_mode {
                                        FuseMode::Wrap => {
                                            let x = cstep(hf, wf, (i, j), e).and_then(|z| rstep(hf, wf, z, d));
                                            let y = cstep(ph, pw, (u, v), e).and_then(|z| rstep(ph, pw, z, d));
                                            x.zip(y).map(|((a, bq), (cu, cv))| at(a, bq, cu, cv))
                                        }
                                        FuseMode::Spatial => {
                                            let (a, bq, cu, cv) =
                                                (i as isize + e, j as isize + d, u as isize + e, v as isize + d);
                                            let ok = a >= 0
                                                && bq >= 0
                                                && cu >= 0
                                                && cv >= 0
                                                && a < hf as isize
                                                && bq < wf as isize
                                                && cu < ph as isize
                                                && cv < pw as isize;
                                            ok.then(|| at(a as usize, bq as usize, cu as usize, cv as usize))
                                        }
                                    };
                                    sum += term.unwrap_or(0.0);
                                }
                            }
                            fz[(i * wf + j) * l + u * pw + v] = sum;
                        }
                    }
                }
            }
            fz
        };
        // Masked scaled softmax (§2.9, §E exclude), argmax (first on ties), mass.
        let mut att = vec![0.0f64; hf * wf * l];
        for q in 0..hf * wf {
            let row = &fused[q * l..(q + 1) * l];
            let z: Vec<Option<f64>> = (0..l)
                .map(|t| match p.masking {
                    Masking::ZeroLogit => Some(lam * mm[t] * row[t]),
                    Masking::Exclude => (mm[t] != 0.0).then(|| lam * row[t]),
                })
                .collect();
            let zmax = z.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let (mut best, mut besta, mut total) = (0u32, f64::NEG_INFINITY, 0.0);
            if zmax > f64::NEG_INFINITY {
                let den: f64 = z.iter().flatten().map(|&v| (v - zmax).exp()).sum();
                for t in 0..l {
                    let a = z[t].map_or(0.0, |v| mm[t] * (v - zmax).exp() / den);
                    att[q * l + t] = a;
                    total += a;
                    if a > besta {
                        besta = a;
                        best = t as u32;
                    }
                }
            }
            out.argmax.push(best);
            out.mass.push(total);
        }
        // Paste (§2.4, §2.11, §E: raw patches at stride r·s, K×K, overlap divisor).
        let raw = |t: usize, ty: isize, tx: isize, ch: usize| -> f64 {
            let (u, v) = ((t / pw) as isize, (t % pw) as isize);
            b_tilde(b, n, u * (r * s) as isize + ty - ry, v * (r * s) as isize + tx - rx, ch)
        };
        for pyy in 0..hff as isize {
            for pxx in 0..wff as isize {
                let cover: Vec<(usize, usize)> = (0..hf)
                    .flat_map(|i| (0..wf).map(move |j| (i, j)))
                    .filter(|&(i, j)| {
                        (0..kk as isize).contains(&(pyy - (r * i) as isize + py_))
                            && (0..kk as isize).contains(&(pxx - (r * j) as isize + px_))
                    })
                    .collect();
                let div = match p.overlap {
                    Overlap::Quarter => (kk * kk) as f64 / (r * r) as f64,
                    Overlap::Exact => cover.len() as f64,
                };
                for ch in 0..c {
                    let mut acc = 0.0;
                    for &(i, j) in &cover {
                        let (ty, tx) = (pyy - (r * i) as isize + py_, pxx - (r * j) as isize + px_);
                        let q = i * wf + j;
                        for t in 0..l {
                            let a = att[q * l + t];
                            if a != 0.0 {
                                acc += a * raw(t, ty, tx, ch);
                            }
                        }
                    }
                    out.y.push(if div == 0.0 { 0.0 } else { acc / div });
                }
            }
        }
    }
    out
}
