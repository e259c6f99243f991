//! Stage `attention_rows` (SPEC §E, outputs); GPU: `shaders/attention_rows.wgsl`.

/// Copies row `pairs[k].0` of `attention [rows, l]` into row `first_row + pairs[k].1` of
/// `attention_rows [?, l]` (f32, the output's type), for every pair.
pub fn attention_rows(attention: &[f64], l: usize, pairs: &[(u32, u32)], first_row: usize, out: &mut [f32]) {
    for &(src, dst) in pairs {
        let row = &attention[src as usize * l..][..l];
        let to = &mut out[(first_row + dst as usize) * l..][..l];
        to.iter_mut().zip(row).for_each(|(d, &a)| *d = a as f32);
    }
}
