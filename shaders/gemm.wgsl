// The layer's two GEMMs (SPEC §10 c, f):
// * matching scores  S[M, N] = Pf[M, K] · Pb[N, K]ᵀ   (TRANS_B = true)
// * pasted columns   C[M, N] += A[M, K] · Raw[K, N]   (TRANS_B = false, ACCUMULATE = true:
//   the paste of each key tile is added to the query tile's accumulator, SPEC §T2)
// 16×16 invocations per workgroup, each with a TM×4 register tile: a (16·TM)×64 output tile,
// K in steps of BK through workgroup memory. The variants (TM, BK, CHECKED) are override
// constants, so every variant is this one source; the host times them on the device and keeps
// the fastest per shape class (src/gpu/stages/gemm.rs). CHECKED = false drops every bounds check
// and is used only where M, N and K are multiples of the tile sizes.

override TRANS_B: bool = false;
override ACCUMULATE: bool = false;
override TM: u32 = 4u;      // rows per invocation: 4 or 8
override BK: u32 = 16u;     // depth per step: 8, 16 or 32, with BK·16·TM ≤ 2048
override CHECKED: bool = true;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
}

const TN: u32 = 4u;
const BN: u32 = 64u;
// The largest BK·BM and BK·BN of any variant: 2 × 8 KiB, WebGPU's default 16 KiB in all.
const TILE_FLOATS: u32 = 2048u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

var<workgroup> tile_a: array<f32, TILE_FLOATS>; // [BK][BM]
var<workgroup> tile_b: array<f32, TILE_FLOATS>; // [BK][BN]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let bm = 16u * TM;
    let row0 = wg.y * bm;
    let col0 = wg.x * BN;
    var acc: array<f32, 32>; // TM·TN used
    for (var i = 0u; i < TM * TN; i++) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < P.k; k0 += BK) {
        // A tile: BM rows × BK columns, consecutive invocations along K.
        for (var e = li; e < bm * BK; e += 256u) {
            let am = e / BK;
            let ak = e % BK;
            let gm = row0 + am;
            let gk = k0 + ak;
            var va = 0.0;
            if (!CHECKED || (gm < P.m && gk < P.k)) { va = a[gm * P.lda + gk]; }
            tile_a[ak * bm + am] = va;
        }
        for (var e = li; e < BN * BK; e += 256u) {
            var bk: u32;
            var bn: u32;
            if (TRANS_B) { bn = e / BK; bk = e % BK; } else { bk = e / BN; bn = e % BN; }
            let gn = col0 + bn;
            let gk = k0 + bk;
            var vb = 0.0;
            if (!CHECKED || (gn < P.n && gk < P.k)) {
                if (TRANS_B) { vb = b[gn * P.ldb + gk]; } else { vb = b[gk * P.ldb + gn]; }
            }
            tile_b[bk * BN + bn] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var ra: array<f32, 8>;
            var rb: array<f32, 4>;
            for (var i = 0u; i < TM; i++) { ra[i] = tile_a[kk * bm + lid.y + 16u * i]; }
            for (var j = 0u; j < TN; j++) { rb[j] = tile_b[kk * BN + lid.x + 16u * j]; }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(ra[i], rb[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let gm = row0 + lid.y + 16u * i;
        for (var j = 0u; j < TN; j++) {
            let gn = col0 + lid.x + 16u * j;
            if (!CHECKED || (gm < P.m && gn < P.n)) {
                let at = gm * P.ldc + gn;
                if (ACCUMULATE) { c[at] = c[at] + acc[i * TN + j]; } else { c[at] = acc[i * TN + j]; }
            }
        }
    }
}
