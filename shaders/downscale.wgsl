// Align-corners nearest-neighbour downscale (SPEC §2.5). The source indices
// roundf(o · f32(in−1)/f32(out−1)) are computed once on the host (geometry.rs) and passed in
// `index`, so the f32 rounding rule lives in one place. One invocation per output element.

struct Params {
    count: u32,    // elements of the output
    src_off: u32,  // element offset of the batch item in `src`
    src_w: u32,    // source width
    out_w: u32,    // output width
    c: u32,        // channels
    rows_off: u32, // offset of the row map in `index`
    cols_off: u32, // offset of the column map in `index`
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li, WG);
    if (idx >= P.count) { return; }
    let ch = idx % P.c;
    let t = idx / P.c;
    let sy = index[P.rows_off + t / P.out_w];
    let sx = index[P.cols_off + t % P.out_w];
    dst[idx] = src[P.src_off + (sy * P.src_w + sx) * P.c + ch];
}
