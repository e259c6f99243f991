// The masked scaled softmax (SPEC §2.9) online over key tiles (SPEC §T2), with the argmax and
// the attention mass (SPEC §2.10). One workgroup per query row of the tile.
// * masking 0 (original): logit = λ·(mm·s): masked patches get logit 0 and stay in the
//   denominator; attention = mm·softmax, so the mass of a row can be below 1.
// * masking 1 (exclude): masked patches get −∞; if no patch is valid the row is all 0.
// Per query, `state` keeps the running maximum logit, the running sum of exp(z − max) over the
// counted patches, the same over valid patches weighted by mm (the mass), the best valid logit
// and its index (the first on ties, across tiles too: a later tile must be strictly greater).
// Phases:
// * 0 / 1 (the first / a later key tile): the tile's scores [rows, cols] become its paste
//   weights mm·exp(z − max) in place; the row of the paste accumulator `acc` is multiplied by
//   exp(max_old − max_new) (set to 0 on the first tile), so the paste GEMM can add to it.
// * 2 (after the last tile's paste): argmax and mass out, and `acc` divided by the sum.

struct Params {
    rows: u32,
    cols: u32,     // patches in the key tile
    scale: f32,
    masking: u32,
    first: u32,    // index of the tile's first patch (into `validity`, and for the argmax)
    phase: u32,
    acc_len: u32,  // floats per row of `acc` (K·K·C)
    out_off: u32,  // index of the tile's first query in `argmax` / `mass`
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> scores: array<f32>;
@group(0) @binding(2) var<storage, read> validity: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<u32>; // floats as their bits, so no bit pattern is ever taken for a float
@group(0) @binding(4) var<storage, read_write> acc: array<f32>;
@group(0) @binding(5) var<storage, read_write> argmax: array<u32>;
@group(0) @binding(6) var<storage, read_write> mass: array<f32>;

const WG: u32 = 256u;
// The lowest finite f32, written exactly: Tint (the browsers' WGSL compiler) rejects the
// decimal -3.4028235e38, which lies just beyond it before rounding; naga rounds it.
const LOWEST: f32 = -0x1.fffffep+127f;
// Fields of a row's state, and the flags of its last field.
const MAX: u32 = 0u;
const SUM: u32 = 1u;
const VALID_SUM: u32 = 2u;
const BEST: u32 = 3u;
const ARG: u32 = 4u;
const FLAGS: u32 = 5u;
const STATE: u32 = 6u;
const HAS_MAX: u32 = 1u;
const HAS_BEST: u32 = 2u;

var<workgroup> red_max: array<f32, 256>;
var<workgroup> red_best: array<f32, 256>;
var<workgroup> red_arg: array<u32, 256>;
var<workgroup> red_flags: array<u32, 256>;
var<workgroup> red_sum: array<f32, 256>;
var<workgroup> red_valid: array<f32, 256>;
var<workgroup> shared_flags: u32;

// Whether the softmax counts a patch of validity m (all of them with 0-logit masking).
fn counted(m: f32) -> bool {
    return P.masking == 0u || m != 0.0;
}

fn logit(s: f32, m: f32) -> f32 {
    if (P.masking == 0u) { return P.scale * (s * m); }
    return P.scale * s; // only called for counted patches in exclude mode
}

fn scale_acc(row: u32, li: u32, factor: f32, zero: bool) {
    let base = row * P.acc_len;
    for (var t = li; t < P.acc_len; t += WG) {
        if (zero) { acc[base + t] = 0.0; } else { acc[base + t] = acc[base + t] * factor; }
    }
}

fn finish(row: u32, li: u32) {
    let st = row * STATE;
    let sum = bitcast<f32>(state[st + SUM]);
    var inv = 0.0;
    var arg = 0u;
    var row_mass = 0.0;
    if (sum > 0.0) {
        inv = 1.0 / sum;
        let flags = state[st + FLAGS];
        var best_attention = 0.0;
        if ((flags & HAS_BEST) != 0u) { best_attention = exp(bitcast<f32>(state[st + BEST]) - bitcast<f32>(state[st + MAX])) / sum; }
        // Index 0 when every attention is 0, as in the original.
        if (best_attention > 0.0) { arg = state[st + ARG]; }
        row_mass = bitcast<f32>(state[st + VALID_SUM]) / sum;
    }
    scale_acc(row, li, inv, false);
    if (li == 0u) {
        argmax[P.out_off + row] = arg;
        mass[P.out_off + row] = row_mass;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = wg.y * nwg.x + wg.x; // uniform across the workgroup
    if (row >= P.rows) { return; }
    if (P.phase == 2u) {
        finish(row, li);
        return;
    }
    let base = row * P.cols;
    let st = row * STATE;

    // 1. The tile's maximum counted logit and its best valid logit (first index on ties).
    var mx = LOWEST;
    var best = LOWEST;
    var best_i = 0u;
    var flags = 0u;
    for (var t = li; t < P.cols; t += WG) {
        let m = validity[P.first + t];
        if (counted(m)) {
            let z = logit(scores[base + t], m);
            mx = max(mx, z);
            flags |= HAS_MAX;
            // t ascends: strict > keeps the first index.
            if (m != 0.0 && ((flags & HAS_BEST) == 0u || z > best)) {
                best = z;
                best_i = t;
                flags |= HAS_BEST;
            }
        }
    }
    red_max[li] = mx;
    red_best[li] = best;
    red_arg[li] = best_i;
    red_flags[li] = flags;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            let o = li + s;
            let fo = red_flags[o];
            if ((fo & HAS_MAX) != 0u) { red_max[li] = max(red_max[li], red_max[o]); }
            if ((fo & HAS_BEST) != 0u) {
                let take = (red_flags[li] & HAS_BEST) == 0u || red_best[o] > red_best[li]
                    || (red_best[o] == red_best[li] && red_arg[o] < red_arg[li]);
                if (take) {
                    red_best[li] = red_best[o];
                    red_arg[li] = red_arg[o];
                }
            }
            red_flags[li] = red_flags[li] | fo;
        }
        workgroupBarrier();
    }
    // Loaded as uniform values: the branch below skips barriers for the whole workgroup.
    let tile_flags = workgroupUniformLoad(&red_flags[0]);
    let tile_max = red_max[0];
    let tile_best = red_best[0];
    let tile_arg = red_arg[0];
    workgroupBarrier();

    // 2. The new running maximum, and what the earlier tiles' sums and paste are worth now.
    if (li == 0u) {
        shared_flags = 0u;
        if (P.phase == 1u) { shared_flags = state[st + FLAGS]; }
    }
    let old_flags = workgroupUniformLoad(&shared_flags);
    let had_max = (old_flags & HAS_MAX) != 0u;
    if (!had_max && (tile_flags & HAS_MAX) == 0u) {
        // Every patch so far excluded: nothing to weigh.
        for (var t = li; t < P.cols; t += WG) { scores[base + t] = 0.0; }
        scale_acc(row, li, 1.0, P.phase == 0u);
        if (li == 0u) {
            state[st + MAX] = bitcast<u32>(0.0);
            state[st + SUM] = bitcast<u32>(0.0);
            state[st + VALID_SUM] = bitcast<u32>(0.0);
            state[st + BEST] = bitcast<u32>(0.0);
            state[st + ARG] = 0u;
            state[st + FLAGS] = 0u;
        }
        return;
    }
    var new_max = tile_max;
    var rescale = 0.0;
    if (had_max) {
        let old_max = bitcast<f32>(state[st + MAX]);
        new_max = max(old_max, tile_max);
        rescale = exp(old_max - new_max);
    }

    // 3. Weights, and the tile's sums.
    var sum = 0.0;
    var valid_sum = 0.0;
    for (var t = li; t < P.cols; t += WG) {
        let m = validity[P.first + t];
        var w = 0.0;
        if (counted(m)) {
            let e = exp(logit(scores[base + t], m) - new_max);
            sum += e;
            w = e * m;
            valid_sum += w;
        }
        scores[base + t] = w;
    }
    red_sum[li] = sum;
    red_valid[li] = valid_sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red_sum[li] += red_sum[li + s];
            red_valid[li] += red_valid[li + s];
        }
        workgroupBarrier();
    }
    scale_acc(row, li, rescale, !had_max);
    if (li == 0u) {
        var total = red_sum[0];
        var valid_total = red_valid[0];
        var new_flags = old_flags | tile_flags;
        var best_all = tile_best;
        var arg_all = P.first + tile_arg;
        if (had_max) {
            total += bitcast<f32>(state[st + SUM]) * rescale;
            valid_total += bitcast<f32>(state[st + VALID_SUM]) * rescale;
        }
        // An earlier tile keeps the argmax unless this one is strictly greater.
        if ((old_flags & HAS_BEST) != 0u
            && ((tile_flags & HAS_BEST) == 0u || !(tile_best > bitcast<f32>(state[st + BEST])))) {
            best_all = bitcast<f32>(state[st + BEST]);
            arg_all = state[st + ARG];
        }
        state[st + MAX] = bitcast<u32>(new_max);
        state[st + SUM] = bitcast<u32>(total);
        state[st + VALID_SUM] = bitcast<u32>(valid_total);
        state[st + BEST] = bitcast<u32>(best_all);
        state[st + ARG] = arg_all;
        state[st + FLAGS] = new_flags;
    }
}
