// Overlap normalisation (SPEC §2.11, §E "overlap"): divides the folded output of one batch
// item by the original's constant (K/r)² (4 at K = 2r), or by each pixel's exact coverage
// count; a pixel no window covers becomes 0. One invocation per element.

struct Params {
    count: u32,   // Hf · Wf · C
    y_off: u32,   // element offset of the batch item in `y`
    out_w: u32,   // Wf
    c: u32,
    hf: u32,      // query grid
    wf: u32,
    rate: u32,
    kernel: u32,  // K
    pad_y: u32,
    pad_x: u32,
    exact: u32,   // 0 = the constant divisor, 1 = exact coverage
    divisor: f32, // the constant (K/r)²
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let idx = flat_index(wg, nwg, li, WG);
    if (idx >= P.count) { return; }
    let t = idx / P.c;
    let px = t % P.out_w;
    let py = t / P.out_w;
    var div = P.divisor;
    if (P.exact == 1u) {
        let ir = covering(py, P.hf, P.pad_y, P.kernel, P.rate);
        let jr = covering(px, P.wf, P.pad_x, P.kernel, P.rate);
        div = f32((ir.y - ir.x) * (jr.y - jr.x));
    }
    let at = P.y_off + idx;
    if (div == 0.0) { y[at] = 0.0; } else { y[at] = y[at] / div; }
}
