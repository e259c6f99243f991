// Mask validity (SPEC §2.7): mm(l) = 1 iff the mean of the downscaled mask over patch l's k×k
// window is exactly 0, the zero padding counting as valid. One invocation per patch.

struct Params {
    count: u32,  // patches L
    h: u32,      // downscaled mask height
    w: u32,      // downscaled mask width
    k: u32,      // ksize
    stride: u32, // distance between patches
    pad_y: u32,
    pad_x: u32,
    grid_w: u32, // patches per row, pw
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> downscaled_mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> validity: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let l = flat_index(wg, nwg, li, WG);
    if (l >= P.count) { return; }
    let origin = vec2<u32>((l / P.grid_w) * P.stride, (l % P.grid_w) * P.stride);
    var sum = 0.0;
    for (var dy = 0u; dy < P.k; dy++) {
        for (var dx = 0u; dx < P.k; dx++) {
            let p = window_pixel(origin, vec2<u32>(dy, dx), vec2<u32>(P.pad_y, P.pad_x), vec2<u32>(P.h, P.w));
            if (p >= 0) { sum += downscaled_mask[u32(p)]; }
        }
    }
    validity[l] = select(0.0, 1.0, sum / f32(P.k * P.k) == 0.0);
}
