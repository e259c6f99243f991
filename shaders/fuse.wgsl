// One pass of the fuse step (SPEC §2.8): out(x, y) = Σ_{d∈D} in(step_d(x), step_d(y)), the query
// x stepping on the hf×wf grid and the patch y on the ph×pw grid, a term being 0 where a step
// leaves its grid. The original (mode 0) steps in the flattened index, row-major in the first
// pass and column-major in the second, so steps wrap across grid rows / columns. The spatial
// mode (1) steps in 2-D with zero padding: horizontally, then vertically.
// Both sides are tiles (SPEC §T2): the output's query rows and patch rows are listed in `index`
// (out_rows_off, key_out_rows_off); the input's rows are found through slot maps (in_slots_off,
// key_in_slots_off: the slot of each grid row in `scores`, whose rows hold in_cols patches).

struct Params {
    count: u32,        // out query rows · wf · out_cols
    mode: u32,         // 0 = wrap (original), 1 = spatial
    which: u32,        // 0 = rows (first pass), 1 = cols (second pass)
    hf: u32,
    wf: u32,
    ph: u32,
    pw: u32,
    fk: u32,
    p: u32,            // offsets run over -p ..= fk-1-p
    in_slots_off: u32,
    out_rows_off: u32,
    key_in_slots_off: u32,
    key_out_rows_off: u32,
    in_cols: u32,      // patches per row of `scores`: input patch rows · pw
    out_cols: u32,     // patches per row of `fused`: output patch rows · pw
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> fused: array<f32>;

// Steps (i, j) on an h×w grid by d; .x = 1 if the step stays on the grid, then (.y, .z) = (i, j).
fn step(h: i32, w: i32, i: i32, j: i32, d: i32) -> vec3<i32> {
    if (P.mode == 0u) {
        if (P.which == 0u) {
            let a = i * w + j + d;
            if (a < 0 || a >= h * w) { return vec3<i32>(0, 0, 0); }
            return vec3<i32>(1, a / w, a % w);
        }
        let a = j * h + i + d;
        if (a < 0 || a >= h * w) { return vec3<i32>(0, 0, 0); }
        return vec3<i32>(1, a % h, a / h);
    }
    if (P.which == 0u) {
        if (j + d < 0 || j + d >= w) { return vec3<i32>(0, 0, 0); }
        return vec3<i32>(1, i, j + d);
    }
    if (i + d < 0 || i + d >= h) { return vec3<i32>(0, 0, 0); }
    return vec3<i32>(1, i + d, j);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li, WG);
    if (idx >= P.count) { return; }
    let beta = idx % P.out_cols;
    let q = idx / P.out_cols;
    let j = q % P.wf;
    let i = index[P.out_rows_off + q / P.wf];
    let u = index[P.key_out_rows_off + beta / P.pw];
    let v = beta % P.pw;
    var sum = 0.0;
    for (var t = 0u; t < P.fk; t++) {
        let d = i32(t) - i32(P.p);
        let sq = step(i32(P.hf), i32(P.wf), i32(i), i32(j), d);
        let sp = step(i32(P.ph), i32(P.pw), i32(u), i32(v), d);
        if (sq.x == 1 && sp.x == 1) {
            let slot = index[P.in_slots_off + u32(sq.y)];
            let key_slot = index[P.key_in_slots_off + u32(sp.y)];
            sum += scores[(slot * P.wf + u32(sq.z)) * P.in_cols + key_slot * P.pw + u32(sp.z)];
        }
    }
    fused[idx] = sum;
}
