//! Flow colouring and the align-corners bilinear upscale.

use contextual_attention::flow::{color_wheel, flow_colors, flow_image, upscale_bilinear_align_corners};

/// The colour of a single 1×1 item whose offset is `(dy, dx)` (position (0, 0), stride 1).
fn single(dy: i32, dx: i32) -> [u8; 3] {
    let c = flow_colors(&[dy, dx], 1, 1, 1, 1);
    [c[0], c[1], c[2]]
}

#[test]
fn unit_offsets_have_the_reference_colours() {
    let table: [((i32, i32), [u8; 3]); 9] = [
        ((1, 0), [255, 0, 0]),
        ((-1, 0), [0, 209, 255]),
        ((0, 1), [255, 229, 0]),
        ((0, -1), [88, 0, 255]),
        ((1, -1), [219, 0, 255]),
        ((-1, 1), [32, 255, 0]),
        ((1, 1), [255, 114, 0]),
        ((-1, -1), [0, 52, 255]),
        ((0, 0), [255, 255, 255]),
    ];
    for ((dy, dx), want) in table {
        assert_eq!(single(dy, dx), want, "offset ({dy}, {dx})");
    }
}

#[test]
fn maxrad_is_a_running_maximum_over_the_batch() {
    // Item 0: flow (2, 0); item 1: flow (1, 0), normalised by item 0's radius 2.
    let c = flow_colors(&[2, 0, 1, 0], 2, 1, 1, 1);
    assert_eq!(&c[0..3], &[255, 0, 0]);
    assert_eq!(&c[3..6], &[255, 127, 127]);
    // In the other order, item 0 is normalised by its own radius only.
    let c = flow_colors(&[1, 0, 2, 0], 2, 1, 1, 1);
    assert_eq!(&c[0..3], &[255, 0, 0]);
    assert_eq!(&c[3..6], &[255, 0, 0]);
}

#[test]
fn negative_zero_trap() {
    // Flow (+1, 0): atan2(−0.0, −1) = −π picks the first wheel entry (pure red); computing
    // 0.0 − v would give +π and the last wheel entry (255, 0, 43), a pinkish red.
    assert_eq!(single(1, 0), [255, 0, 0]);
    // Also in a larger grid: position (0, 1) pointing at patch (1, 1) has flow (1, 0).
    let offsets = [0, 0, 1, 1];
    let c = flow_colors(&offsets, 1, 1, 2, 1);
    assert_eq!(&c[0..3], &[255, 255, 255]);
    assert_eq!(&c[3..6], &[255, 0, 0]);
}

#[test]
fn zero_offsets_are_white() {
    let (h, w) = (3, 4);
    let mut offsets = Vec::new();
    for i in 0..h {
        for j in 0..w {
            offsets.push(i);
            offsets.push(j);
        }
    }
    let c = flow_colors(&offsets, 1, h as usize, w as usize, 1);
    assert_eq!(c.len(), 3 * 4 * 3);
    assert!(c.iter().all(|&b| b == 255));
    let imgs = flow_image(&offsets, 1, h as usize, w as usize, 1, 2);
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0].len(), 6 * 8 * 3);
    assert!(imgs[0].iter().all(|&b| b == 255));
}

#[test]
fn stride_scales_the_patch_grid() {
    // Stride 2: patch (1, 0) at position (1, 0) is flow (2·1 − 1, 0) = (1, 0) → red.
    let offsets = [0, 0, 1, 0];
    let c = flow_colors(&offsets, 1, 2, 1, 2);
    assert_eq!(&c[0..3], &[255, 255, 255]);
    assert_eq!(&c[3..6], &[255, 0, 0]);
}

#[test]
fn huge_offsets_count_as_zero_flow() {
    let c = flow_colors(&[i32::MAX, 0], 1, 1, 1, 10);
    assert_eq!(c, vec![255, 255, 255]);
}

#[test]
fn empty_input_gives_empty_output() {
    assert!(flow_colors(&[], 2, 0, 3, 1).is_empty());
    let imgs = flow_image(&[], 2, 0, 3, 1, 2);
    assert_eq!(imgs.len(), 2);
    assert!(imgs.iter().all(|i| i.is_empty()));
}

#[test]
fn color_wheel_layout() {
    let wheel = color_wheel();
    assert_eq!(wheel.len(), 55);
    assert_eq!(wheel[0], [255, 0, 0]);
    assert_eq!(wheel[1], [255, 17, 0]);
    assert_eq!(wheel[2], [255, 34, 0]);
    assert_eq!(wheel[14], [255, 238, 0]);
    assert_eq!(wheel[15], [255, 255, 0]); // start of yellow → green
    assert_eq!(wheel[21], [0, 255, 0]); // start of green → cyan
    assert_eq!(wheel[25], [0, 255, 255]); // start of cyan → blue
    assert_eq!(wheel[36], [0, 0, 255]); // start of blue → magenta
    assert_eq!(wheel[49], [255, 0, 255]); // start of magenta → red
    assert_eq!(wheel[54], [255, 0, 43]);
}

/// A small deterministic pseudo-random generator (xorshift), values in [−1, 1).
fn random_values(n: usize, mut state: u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

#[test]
fn upscale_matches_a_direct_f64_formula() {
    for &(h, w, ch, oh, ow) in
        &[(3usize, 5usize, 3usize, 6usize, 10usize), (4, 4, 1, 12, 12), (2, 7, 2, 8, 14), (5, 3, 3, 1, 9)]
    {
        let img = random_values(h * w * ch, 0x9E37_79B9_7F4A_7C15 ^ (h * 131 + w) as u64);
        let got = upscale_bilinear_align_corners(&img, h, w, ch, oh, ow);
        assert_eq!(got.len(), oh * ow * ch);
        let coord = |o: usize, input: usize, output: usize| -> f64 {
            if output > 1 {
                o as f64 * (input as f64 - 1.0) / (output as f64 - 1.0)
            } else {
                o as f64 * input as f64 / output as f64
            }
        };
        let mut max_diff = 0f64;
        for oy in 0..oh {
            let sy = coord(oy, h, oh);
            let y0 = sy.floor() as usize;
            let y1 = (y0 + 1).min(h - 1);
            let fy = sy - y0 as f64;
            for ox in 0..ow {
                let sx = coord(ox, w, ow);
                let x0 = sx.floor() as usize;
                let x1 = (x0 + 1).min(w - 1);
                let fx = sx - x0 as f64;
                for c in 0..ch {
                    let px = |y: usize, x: usize| img[(y * w + x) * ch + c] as f64;
                    let expect = px(y0, x0) * (1.0 - fy) * (1.0 - fx)
                        + px(y0, x1) * (1.0 - fy) * fx
                        + px(y1, x0) * fy * (1.0 - fx)
                        + px(y1, x1) * fy * fx;
                    let d = (got[(oy * ow + ox) * ch + c] as f64 - expect).abs();
                    max_diff = max_diff.max(d);
                }
            }
        }
        assert!(max_diff <= 1e-4, "{h}x{w}x{ch} → {oh}x{ow}: max |Δ| = {max_diff}");
    }
}

#[test]
fn upscale_keeps_the_corners_exactly() {
    for &(h, w, rate) in &[(3usize, 5usize, 2usize), (4, 4, 4), (2, 3, 3), (6, 7, 2)] {
        let ch = 3;
        let img = random_values(h * w * ch, 12345 + (h * w * rate) as u64);
        let (oh, ow) = (h * rate, w * rate);
        let got = upscale_bilinear_align_corners(&img, h, w, ch, oh, ow);
        for &((iy, ix), (oy, ox)) in &[
            ((0, 0), (0, 0)),
            ((0, w - 1), (0, ow - 1)),
            ((h - 1, 0), (oh - 1, 0)),
            ((h - 1, w - 1), (oh - 1, ow - 1)),
        ] {
            for c in 0..ch {
                assert_eq!(
                    got[(oy * ow + ox) * ch + c].to_bits(),
                    img[(iy * w + ix) * ch + c].to_bits(),
                    "{h}x{w} rate {rate}: corner ({iy}, {ix}) channel {c}"
                );
            }
        }
    }
}

#[test]
fn flow_image_upscales_each_item() {
    // Two items of 2×2 with distinct colours; rate 2 gives 4×4 images whose corners are the
    // un-upscaled corner colours.
    let offsets = [1, 0, 0, 0, 1, 1, 1, 0, /* item 1 */ 0, 0, 0, 1, 1, 0, 1, 1];
    let colors = flow_colors(&offsets, 2, 2, 2, 1);
    let imgs = flow_image(&offsets, 2, 2, 2, 1, 2);
    assert_eq!(imgs.len(), 2);
    for (n, img) in imgs.iter().enumerate() {
        assert_eq!(img.len(), 4 * 4 * 3);
        let item = &colors[n * 12..(n + 1) * 12];
        for &((iy, ix), (oy, ox)) in &[((0, 0), (0, 0)), ((0, 1), (0, 3)), ((1, 0), (3, 0)), ((1, 1), (3, 3))] {
            assert_eq!(&img[(oy * 4 + ox) * 3..][..3], &item[(iy * 2 + ix) * 3..][..3]);
        }
    }
    // Rate 1 returns the colours unchanged.
    let same = flow_image(&offsets, 2, 2, 2, 1, 1);
    assert_eq!(same.concat(), colors);
}
