// Raw patches (SPEC §2.4): the K×K windows of full-resolution b at stride r·s, zero-padded
// (TF "SAME"), laid out [L, K·K·C] with element order (dy, dx, c): the filters the paste
// (a transposed convolution) pastes. Only the patches first .. first + count / (K·K·C) are
// written (a key tile, SPEC §T2), from row 0 of `raw_patches`. One invocation per element.

struct Params {
    count: u32,   // patches written · K·K·C
    src_off: u32, // element offset of the batch item in `b`
    h: u32,       // Hb
    w: u32,       // Wb
    c: u32,       // channels
    k: u32,       // paste kernel K
    step: u32,    // r·s
    pad_y: u32,
    pad_x: u32,
    grid_w: u32,  // patches per row, pw
    first: u32,   // index of the first patch written
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> raw_patches: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li, WG);
    if (idx >= P.count) { return; }
    let len = P.k * P.k * P.c;
    let e = idx % len;
    let l = P.first + idx / len;
    let origin = vec2<u32>((l / P.grid_w) * P.step, (l % P.grid_w) * P.step);
    let ch = e % P.c;
    let t = e / P.c;
    let p = window_pixel(origin, vec2<u32>(t / P.k, t % P.k), vec2<u32>(P.pad_y, P.pad_x), vec2<u32>(P.h, P.w));
    var v = 0.0;
    if (p >= 0) { v = b[P.src_off + u32(p) * P.c + ch]; }
    raw_patches[idx] = v;
}
