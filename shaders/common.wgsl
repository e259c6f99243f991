// Helpers shared by every stage. The host prepends this file to each stage's source before
// compiling it (WGSL has no includes), so a stage may call these functions as its own.

// The flat index of an invocation in a 1-D dispatch. Large dispatches are folded into a 2-D
// grid on the host (no dimension may exceed 65535 workgroups), row-major: (wg.y · nwg.x + wg.x)
// is the workgroup's number; `group_size` is the stage's @workgroup_size.
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, li: u32, group_size: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * group_size + li;
}

// The pixel (y, x) = origin + (dy, dx) − pad of a window on an h×w grid, as the row-major
// pixel index, or −1 outside the grid: the windows read zeros there (TF "SAME" padding, SPEC §2.4).
fn window_pixel(origin: vec2<u32>, d: vec2<u32>, pad: vec2<u32>, size: vec2<u32>) -> i32 {
    let y = i32(origin.x + d.x) - i32(pad.x);
    let x = i32(origin.y + d.y) - i32(pad.y);
    if (y < 0 || x < 0 || y >= i32(size.x) || x >= i32(size.y)) { return -1; }
    return y * i32(size.y) + x;
}

// The query indices lo..hi along one axis whose K-wide paste windows, placed every `rate`
// pixels from −pad, cover output coordinate `o` (SPEC §2.11); `n` queries along the axis.
fn covering(o: u32, n: u32, pad: u32, kernel: u32, rate: u32) -> vec2<u32> {
    let t = o + pad;
    var lo = 0u;
    if (t + 1u > kernel) { lo = (t + 1u - kernel + rate - 1u) / rate; }
    let hi = min(t / rate + 1u, n);
    return vec2<u32>(min(lo, hi), hi);
}
