//! Stage `downscale` (SPEC §2.5); GPU: `shaders/downscale.wgsl`.

/// Align-corners nearest-neighbour downscale `[h, w, c]` → `[rows.len(), cols.len(), c]` (SPEC §2.5),
/// in f64 here and in f32 in the fast CPU path.
pub fn downscale<T: Copy>(x: &[T], w: usize, c: usize, rows: &[u32], cols: &[u32]) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * cols.len() * c);
    for &sy in rows {
        for &sx in cols {
            let base = (sy as usize * w + sx as usize) * c;
            out.extend_from_slice(&x[base..base + c]);
        }
    }
    out
}
