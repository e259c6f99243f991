// The layer's two GEMMs (SPEC §10 c, f):
// * matching scores  S[M, N] = Pf[M, K] · Pb[N, K]ᵀ   (TRANS_B = true)
// * pasted columns   C[M, N] += A[M, K] · Raw[K, N]   (TRANS_B = false, ACCUMULATE = true:
//   the paste of each key tile is added to the query tile's accumulator, SPEC §T2)
// 64×64 output tile per workgroup, 16×16 invocations with a 4×4 register tile each, K in steps
// of 16 through workgroup memory. All loads are bounds-checked, so any M, N, K works.

override TRANS_B: bool = false;
override ACCUMULATE: bool = false;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
}

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

var<workgroup> tile_a: array<f32, 1024>; // [BK][BM]
var<workgroup> tile_b: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < P.k; k0 += BK) {
        for (var t = 0u; t < 4u; t++) {
            let e = li + t * 256u;
            // A tile: BM rows × BK columns, consecutive invocations along K.
            let am = e / BK;
            let ak = e % BK;
            let gm = row0 + am;
            let gk = k0 + ak;
            var va = 0.0;
            if (gm < P.m && gk < P.k) { va = a[gm * P.lda + gk]; }
            tile_a[ak * BM + am] = va;
            var vb = 0.0;
            if (TRANS_B) {
                let bn = e / BK;
                let bk = e % BK;
                let gn = col0 + bn;
                let gkb = k0 + bk;
                if (gn < P.n && gkb < P.k) { vb = b[gn * P.ldb + gkb]; }
                tile_b[bk * BN + bn] = vb;
            } else {
                let bk = e / BN;
                let bn = e % BN;
                let gn = col0 + bn;
                let gkb = k0 + bk;
                if (gn < P.n && gkb < P.k) { vb = b[gkb * P.ldb + gn]; }
                tile_b[bk * BN + bn] = vb;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var ra: array<f32, 4>;
            var rb: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                ra[i] = tile_a[kk * BM + lid.y + 16u * i];
                rb[i] = tile_b[kk * BN + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(ra[i], rb[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let gm = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let gn = col0 + lid.x + 16u * j;
            if (gm < P.m && gn < P.n) {
                let at = gm * P.ldc + gn;
                if (ACCUMULATE) { c[at] = c[at] + acc[i * 4u + j]; } else { c[at] = acc[i * 4u + j]; }
            }
        }
    }
}
