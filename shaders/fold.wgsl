// The paste's fold (SPEC §2.11, §T): the transposed convolution written as a gather. Each output
// element (P, Q, c) of the output rows the tile's pastes touch adds, in ascending (i, j) order,
// the pasted-column entries of the tile's queries (i, j) whose K×K window covers it. Tiles of
// whole query rows are added in ascending order, so the sums do not depend on the tiling. No
// atomics: every invocation owns one output element. Normalisation is its own stage
// (normalize.wgsl), after the last tile.

struct Params {
    count: u32,  // output elements of this dispatch: touched rows · Wf · C
    y_off: u32,  // element offset of the batch item in `y`
    row0: u32,   // first output row of this dispatch
    out_w: u32,  // Wf
    c: u32,
    hf: u32,     // query grid
    wf: u32,
    rate: u32,
    kernel: u32, // K
    pad_y: u32,
    pad_x: u32,
    r0: u32,     // the tile's query rows r0..r1
    r1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> pasted_columns: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li, WG);
    if (idx >= P.count) { return; }
    let ch = idx % P.c;
    let t = idx / P.c;
    let px = t % P.out_w;
    let py = P.row0 + t / P.out_w;
    let ir = covering(py, P.hf, P.pad_y, P.kernel, P.rate);
    let jr = covering(px, P.wf, P.pad_x, P.kernel, P.rate);
    let i0 = max(ir.x, P.r0);
    let i1 = min(ir.y, P.r1);
    let len = P.kernel * P.kernel * P.c;
    let at = P.y_off + (py * P.out_w + px) * P.c + ch;
    var acc = y[at];
    for (var i = i0; i < i1; i++) {
        let ty = py + P.pad_y - P.rate * i;
        for (var j = jr.x; j < jr.y; j++) {
            let tx = px + P.pad_x - P.rate * j;
            acc += pasted_columns[((i - P.r0) * P.wf + j) * len + (ty * P.kernel + tx) * P.c + ch];
        }
    }
    y[at] = acc;
}
