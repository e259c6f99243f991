// The attention rows of chosen queries (SPEC §E, "outputs": attention rows for inspection),
// built over key tiles (SPEC §T2). `index` holds (row in the query tile, destination row) pairs.
// * phase 0: copies the tile's fused scores [rows, cols] of those rows into columns
//   col0 .. col0 + cols of their destination rows;
// * phase 1 (after the last key tile, cols = L): turns each copied score into its attention
//   with the row's final softmax state (see softmax.wgsl): mm·exp(z − max) / sum.
// One invocation per element.

struct Params {
    count: u32,     // pairs · cols
    l: u32,         // patches per destination row
    pairs_off: u32, // offset of the pairs in `index`
    first_row: u32, // destination rows of this batch item start here
    cols: u32,      // columns of this dispatch
    col0: u32,      // first destination column
    phase: u32,
    masking: u32,
    scale: f32,
}

const WG: u32 = 256u;
// Fields of a row of `state`, as in softmax.wgsl.
const MAX: u32 = 0u;
const SUM: u32 = 1u;
const STATE: u32 = 6u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> attention_rows: array<f32>;
@group(0) @binding(4) var<storage, read> state: array<u32>;
@group(0) @binding(5) var<storage, read> validity: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li, WG);
    if (idx >= P.count) { return; }
    let k = idx / P.cols;
    let t = idx % P.cols;
    let src_row = index[P.pairs_off + 2u * k];
    let dst = (P.first_row + index[P.pairs_off + 2u * k + 1u]) * P.l + P.col0 + t;
    if (P.phase == 0u) {
        attention_rows[dst] = scores[src_row * P.cols + t];
        return;
    }
    let m = validity[t];
    let sum = bitcast<f32>(state[src_row * STATE + SUM]);
    var a = 0.0;
    if (sum > 0.0 && m != 0.0) {
        var z = P.scale * attention_rows[dst];
        if (P.masking == 0u) { z = P.scale * (attention_rows[dst] * m); }
        a = exp(z - bitcast<f32>(state[src_row * STATE + MAX])) / sum;
    }
    attention_rows[dst] = a;
}
