// Patch extraction (SPEC §2.4, §2.6, §2.7). Every window reads its grid with zero padding (TF
// "SAME"; the pad before is computed on the host). Element order inside a patch is (dy, dx, c).
//
// * matching_patches: k×k patches of b′ at stride s, divided by max(‖patch‖, 1e-4), the norm
//   including the padding; one invocation per patch. Also writes the norms.
// * mask_validity: mm(l) = 1 iff the mean of the downscaled mask over the window is exactly 0.
// * query_patches: k×k patches of f′ around every position of the listed query rows (stride 1).
// * raw_patches: K×K patches of full-resolution b at stride r·s (the paste filters).

struct Params {
    count: u32,     // invocations doing work
    src_off: u32,   // element offset of the batch item in `src`
    h: u32,         // source grid height
    w: u32,         // source grid width
    c: u32,         // channels
    k: u32,         // window size
    step: u32,      // distance between windows (stride) on the source grid
    pad_y: u32,     // zero padding before, rows
    pad_x: u32,     // zero padding before, columns
    grid_w: u32,    // windows per row (patch grid width, or wf for queries)
    index_off: u32, // query_patches: offset of the row list in `index`
    dst_off: u32,   // element offset in `dst`
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read_write> norms: array<f32>;
@group(0) @binding(4) var<storage, read> index: array<u32>;

fn linear_id(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 64u + li;
}

// Source element at window origin (y0, x0) + (dy, dx), channel ch; zero outside the grid.
fn fetch(y0: u32, x0: u32, dy: u32, dx: u32, ch: u32) -> f32 {
    let y = i32(y0 + dy) - i32(P.pad_y);
    let x = i32(x0 + dx) - i32(P.pad_x);
    if (y < 0 || x < 0 || y >= i32(P.h) || x >= i32(P.w)) { return 0.0; }
    return src[P.src_off + (u32(y) * P.w + u32(x)) * P.c + ch];
}

@compute @workgroup_size(64)
fn matching_patches(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let l = linear_id(wg, nwg, li);
    if (l >= P.count) { return; }
    let y0 = (l / P.grid_w) * P.step;
    let x0 = (l % P.grid_w) * P.step;
    var sum = 0.0;
    for (var dy = 0u; dy < P.k; dy++) {
        for (var dx = 0u; dx < P.k; dx++) {
            for (var ch = 0u; ch < P.c; ch++) {
                let v = fetch(y0, x0, dy, dx, ch);
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
                dst[P.dst_off + l * len + (dy * P.k + dx) * P.c + ch] = fetch(y0, x0, dy, dx, ch) / denom;
            }
        }
    }
}

@compute @workgroup_size(64)
fn mask_validity(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let l = linear_id(wg, nwg, li);
    if (l >= P.count) { return; }
    let y0 = (l / P.grid_w) * P.step;
    let x0 = (l % P.grid_w) * P.step;
    var sum = 0.0;
    for (var dy = 0u; dy < P.k; dy++) {
        for (var dx = 0u; dx < P.k; dx++) {
            sum += fetch(y0, x0, dy, dx, 0u);
        }
    }
    dst[P.dst_off + l] = select(0.0, 1.0, sum / f32(P.k * P.k) == 0.0);
}

@compute @workgroup_size(64)
fn query_patches(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let idx = linear_id(wg, nwg, li);
    if (idx >= P.count) { return; }
    let len = P.k * P.k * P.c;
    let e = idx % len;
    let q = idx / len;
    let j = q % P.grid_w;
    let row = index[P.index_off + q / P.grid_w];
    let ch = e % P.c;
    let t = e / P.c;
    dst[P.dst_off + idx] = fetch(row, j, t / P.k, t % P.k, ch);
}

@compute @workgroup_size(64)
fn raw_patches(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let idx = linear_id(wg, nwg, li);
    if (idx >= P.count) { return; }
    let len = P.k * P.k * P.c;
    let e = idx % len;
    let l = idx / len;
    let ch = e % P.c;
    let t = e / P.c;
    dst[P.dst_off + idx] = fetch((l / P.grid_w) * P.step, (l % P.grid_w) * P.step, t / P.k, t % P.k, ch);
}
