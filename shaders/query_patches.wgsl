// Query patches (SPEC §2.7): the k×k patches of the downscaled f′ around every position of the
// listed query rows (stride 1, zero-padded, TF "SAME"), laid out [rows·wf, k·k·C] with element
// order (dy, dx, c). Not normalised: the original normalises only b's patches. f′ is not stored:
// its pixels are read from f through the NN index maps of the downscale (SPEC §2.5, §T2).
// One invocation per element.

struct Params {
    count: u32,    // rows · wf · k·k·C
    h: u32,        // hf
    w: u32,        // wf
    c: u32,        // channels
    k: u32,        // ksize
    pad_y: u32,
    pad_x: u32,
    rows_off: u32, // offset of the query-row list in `index`
    src_off: u32,  // element offset of the batch item in `f`
    full_w: u32,   // width of f
    map_rows: u32, // offset of the NN row map (f′ row → f row) in `index`
    map_cols: u32, // offset of the NN column map
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> f: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> query_patches: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li, WG);
    if (idx >= P.count) { return; }
    let len = P.k * P.k * P.c;
    let e = idx % len;
    let q = idx / len;
    let origin = vec2<u32>(index[P.rows_off + q / P.w], q % P.w);
    let ch = e % P.c;
    let t = e / P.c;
    let p = window_pixel(origin, vec2<u32>(t / P.k, t % P.k), vec2<u32>(P.pad_y, P.pad_x), vec2<u32>(P.h, P.w));
    var v = 0.0;
    if (p >= 0) {
        let y = index[P.map_rows + u32(p) / P.w];
        let x = index[P.map_cols + u32(p) % P.w];
        v = f[P.src_off + (y * P.full_w + x) * P.c + ch];
    }
    query_patches[idx] = v;
}
