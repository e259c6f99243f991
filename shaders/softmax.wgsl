// Masked scaled softmax over the patches of each query row, in place, with the argmax (first
// index on ties) and the attention mass (SPEC §2.9, §2.10). One workgroup per row.
// * masking 0 (original): logit = λ·(mm·s): masked patches get logit 0 and stay in the
//   denominator; attention = mm·softmax, so the mass of a row can be below 1.
// * masking 1 (exclude): masked patches get −∞; if no patch is valid the row is all 0.

struct Params {
    rows: u32,
    l: u32,
    scale: f32,
    masking: u32,
    out_off: u32,   // index of the tile's first query in `argmax` / `mass`
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read> validity: array<f32>;
@group(0) @binding(3) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(4) var<storage, read_write> mass: array<f32>;

const WG: u32 = 256u;
const LOWEST: f32 = -3.4028235e38;

var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_g: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;

fn logit(s: f32, m: f32) -> f32 {
    if (P.masking == 0u) { return P.scale * (s * m); }
    return P.scale * s; // only called for valid patches in exclude mode
}

fn valid(m: f32) -> bool {
    return P.masking == 0u || m != 0.0;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wg.y * nwg.x + wg.x; // uniform across the workgroup
    if (row >= P.rows) { return; }
    let base = row * P.l;

    // 1. max logit (and whether any patch is valid)
    var mx = LOWEST;
    var found = 0.0;
    for (var t = li; t < P.l; t += WG) {
        let m = validity[t];
        if (valid(m)) {
            mx = max(mx, logit(scores[base + t], m));
            found = 1.0;
        }
    }
    red_f[li] = mx;
    red_g[li] = found;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red_f[li] = max(red_f[li], red_f[li + s]);
            red_g[li] = max(red_g[li], red_g[li + s]);
        }
        workgroupBarrier();
    }
    let row_max = red_f[0];
    let has_valid = red_g[0] > 0.0;
    workgroupBarrier();

    // 2. denominator over all patches (masked ones add exp(0 − max) in the original mode)
    var sum = 0.0;
    for (var t = li; t < P.l; t += WG) {
        let m = validity[t];
        if (valid(m)) { sum += exp(logit(scores[base + t], m) - row_max); }
    }
    red_f[li] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) { red_f[li] += red_f[li + s]; }
        workgroupBarrier();
    }
    let denom = red_f[0];
    workgroupBarrier();

    // 3. attention, its argmax (first index on ties) and its mass
    var best = -1.0;
    var best_i = 0u;
    var total = 0.0;
    for (var t = li; t < P.l; t += WG) {
        let m = validity[t];
        var a = 0.0;
        if (has_valid && valid(m)) { a = m * (exp(logit(scores[base + t], m) - row_max) / denom); }
        scores[base + t] = a;
        total += a;
        if (a > best) { best = a; best_i = t; } // t ascends: the first index wins ties
    }
    red_f[li] = best;
    red_i[li] = best_i;
    red_g[li] = total;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            let o = li + s;
            if (red_f[o] > red_f[li] || (red_f[o] == red_f[li] && red_i[o] < red_i[li])) {
                red_f[li] = red_f[o];
                red_i[li] = red_i[o];
            }
            red_g[li] += red_g[o];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        argmax[P.out_off + row] = red_i[0];
        mass[P.out_off + row] = red_g[0];
    }
}
