// The paste's fold and overlap normalisation (SPEC §2.11, §E, §T). The transposed convolution
// is written as a gather: each output pixel (P, Q, c) adds, in ascending (i, j) order, the
// pasted-column entries of the queries (i, j) of the current tile whose K×K patch covers it.
// Tiles of whole query rows are added in ascending order, so the sums do not depend on the
// tiling. No atomics: every invocation owns one output element.

struct Params {
    count: u32,     // output elements of this dispatch
    y_off: u32,     // element offset of the batch item in `y`
    row0: u32,      // first output row of this dispatch
    out_w: u32,     // Wf
    c: u32,
    hf: u32,
    wf: u32,
    rate: u32,
    kernel: u32,    // K
    pad_y: u32,
    pad_x: u32,
    r0: u32,        // the tile's query rows r0..r1
    r1: u32,
    overlap: u32,   // normalize: 0 = constant divisor, 1 = exact coverage
    divisor: f32,   // normalize: the constant (K/r)²
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> cols: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

fn linear_id(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + li;
}

// Query indices along one axis whose patches cover output coordinate `o`: lo..hi.
fn covering(o: u32, n: u32, pad: u32) -> vec2<u32> {
    let t = o + pad;
    var lo = 0u;
    if (t + 1u > P.kernel) { lo = (t + 1u - P.kernel + P.rate - 1u) / P.rate; }
    let hi = min(t / P.rate + 1u, n);
    return vec2<u32>(min(lo, hi), hi);
}

@compute @workgroup_size(256)
fn fold(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = linear_id(wg, nwg, li);
    if (idx >= P.count) { return; }
    let ch = idx % P.c;
    let t = idx / P.c;
    let px = t % P.out_w;
    let py = P.row0 + t / P.out_w;
    let ir = covering(py, P.hf, P.pad_y);
    let jr = covering(px, P.wf, P.pad_x);
    let i0 = max(ir.x, P.r0);
    let i1 = min(ir.y, P.r1);
    let len = P.kernel * P.kernel * P.c;
    let at = P.y_off + (py * P.out_w + px) * P.c + ch;
    var acc = y[at];
    for (var i = i0; i < i1; i++) {
        let ty = py + P.pad_y - P.rate * i;
        for (var j = jr.x; j < jr.y; j++) {
            let tx = px + P.pad_x - P.rate * j;
            acc += cols[((i - P.r0) * P.wf + j) * len + (ty * P.kernel + tx) * P.c + ch];
        }
    }
    y[at] = acc;
}

@compute @workgroup_size(256)
fn normalize(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let idx = linear_id(wg, nwg, li);
    if (idx >= P.count) { return; }
    let t = idx / P.c;
    let px = t % P.out_w;
    let py = t / P.out_w;
    var div = P.divisor;
    if (P.overlap == 1u) {
        let ir = covering(py, P.hf, P.pad_y);
        let jr = covering(px, P.wf, P.pad_x);
        div = f32((ir.y - ir.x) * (jr.y - jr.x));
    }
    let at = P.y_off + idx;
    if (div == 0.0) { y[at] = 0.0; } else { y[at] = y[at] / div; }
}
