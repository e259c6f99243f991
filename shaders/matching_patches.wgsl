// Matching patches (SPEC §2.6): the k×k patches of the downscaled b′ at stride s, zero-padded
// (TF "SAME", pad before from the host), each divided by max(‖patch‖, 1e-4) with the norm taken
// over the padded window. Element order inside a patch is (dy, dx, c). Only the patches of the
// patch-grid rows listed in `index` (a key tile with its fuse halo, SPEC §T2) are written, as a
// panel [rows·pw, k·k·C]. b′ is not stored: its pixels are read from b through the NN index
// maps of the downscale (SPEC §2.5, §T2). One invocation per patch; it also writes the patch's
// norm.

struct Params {
    count: u32,  // patches in the listed rows
    h: u32,      // b′ height
    w: u32,      // b′ width
    c: u32,      // channels
    k: u32,      // ksize
    stride: u32, // distance between patches on b′
    pad_y: u32,  // zero padding before, rows
    pad_x: u32,  // zero padding before, columns
    grid_w: u32, // patches per row, pw
    rows_off: u32, // offset of the patch-row list in `index`
    src_off: u32,  // element offset of the batch item in `b`
    full_w: u32,   // width of b
    map_rows: u32, // offset of the NN row map (b′ row → b row) in `index`
    map_cols: u32, // offset of the NN column map
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> patches: array<f32>;
@group(0) @binding(4) var<storage, read_write> norms: array<f32>;

fn fetch(origin: vec2<u32>, dy: u32, dx: u32, ch: u32) -> f32 {
    let p = window_pixel(origin, vec2<u32>(dy, dx), vec2<u32>(P.pad_y, P.pad_x), vec2<u32>(P.h, P.w));
    if (p < 0) { return 0.0; }
    let y = index[P.map_rows + u32(p) / P.w];
    let x = index[P.map_cols + u32(p) % P.w];
    return b[P.src_off + (y * P.full_w + x) * P.c + ch];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let l = flat_index(wg, nwg, li, WG);
    if (l >= P.count) { return; }
    let origin = vec2<u32>(index[P.rows_off + l / P.grid_w] * P.stride, (l % P.grid_w) * P.stride);
    var sum = 0.0;
    for (var dy = 0u; dy < P.k; dy++) {
        for (var dx = 0u; dx < P.k; dx++) {
            for (var ch = 0u; ch < P.c; ch++) {
                let v = fetch(origin, dy, dx, ch);
                sum += v * v;
            }
        }
    }
    let norm = sqrt(sum);
    norms[l] = norm;
    let denom = max(norm, 1e-4);
    let len = P.k * P.k * P.c;
    for (var dy = 0u; dy < P.k; dy++) {
        for (var dx = 0u; dx < P.k; dx++) {
            for (var ch = 0u; ch < P.c; ch++) {
                // A division, as in the original, not a multiplication by the inverse.
                patches[l * len + (dy * P.k + dx) * P.c + ch] = fetch(origin, dy, dx, ch) / denom;
            }
        }
    }
}
