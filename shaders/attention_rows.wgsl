// Copies the attention rows of chosen queries out of a tile's attention (SPEC §E, "outputs":
// attention rows for inspection). `index` holds (row in the tile's attention, destination
// row) pairs. One invocation per copied element.

struct Params {
    count: u32,     // pairs · L
    l: u32,         // patches per row
    pairs_off: u32, // offset of the pairs in `index`
    first_row: u32, // destination rows of this batch item start here
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> attention: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> attention_rows: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li, WG);
    if (idx >= P.count) { return; }
    let k = idx / P.l;
    let t = idx % P.l;
    let src_row = index[P.pairs_off + 2u * k];
    let dst_row = index[P.pairs_off + 2u * k + 1u];
    attention_rows[(P.first_row + dst_row) * P.l + t] = attention[src_row * P.l + t];
}
