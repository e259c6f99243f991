//! A tiny inpainting network on burn tensors (feature `burn`): conv → contextual attention →
//! conv, run forward on an image with a hole, every tensor staying on the GPU.
//!
//! ```sh
//! cargo run --release --features burn --example burn_inpaint
//! ```
//!
//! The weights are burn's random initialisation: the network is untrained, so the output is not
//! a good fill. What it shows is the plumbing: burn's device shared with the layer, NCHW tensors
//! in and out, the hole as the layer's mask, and the layer's result used by burn's next conv.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use contextual_attention::burn::{init_device, Layer, Layout};
use contextual_attention::Params;

/// Features in, the layer in the middle, an image out.
#[derive(Module, Debug)]
struct Net {
    encode: Conv2d,
    decode: Conv2d,
}

impl Net {
    fn new(device: &Device) -> Net {
        let conv =
            |c_in, c_out| Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Same).init(device);
        Net { encode: conv(3, 16), decode: conv(16, 3) }
    }

    /// `image` `[B, 3, H, W]`, `hole` `[1, 1, H, W]` (1 inside the hole).
    fn forward(&self, attention: &Layer, image: Tensor<4>, hole: Tensor<4>) -> contextual_attention::Result<Tensor<4>> {
        let features = burn::tensor::activation::relu(self.encode.forward(image));
        // Self-attention: the hole's queries attend to patches outside the hole.
        let attended = attention.forward(features.clone(), features, Some(hole))?;
        Ok(self.decode.forward(attended.y))
    }
}

fn main() -> contextual_attention::Result<()> {
    let device = init_device()?;
    let (h, w) = (64, 64);
    // A smooth test image with a square hole in the middle.
    let pixels: Vec<f32> = (0..3 * h * w)
        .map(|i| {
            let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
            ((x as f32 * 0.2 + c as f32).sin() * (y as f32 * 0.15).cos() + 1.0) * 0.5
        })
        .collect();
    let image = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, h, w]), &device);
    let hole = Tensor::<4>::zeros([1, 1, h, w], &device).slice_fill(s![.., .., 24..40, 24..40], 1.0);

    let net = Net::new(&device);
    let attention = Layer::new(Params { rate: 2, ..Default::default() }, Layout::Nchw)?;
    let start = std::time::Instant::now();
    let out = net.forward(&attention, image.clone() * (hole.clone().neg() + 1.0), hole)?;
    let values = out.into_data().try_to_vec::<f32>().expect("f32 output");
    println!(
        "forward of conv → contextual attention → conv on a [1, 3, {h}, {w}] image: {:.1} ms, output {} values, \
         mean {:.4}, all finite: {}",
        start.elapsed().as_secs_f64() * 1e3,
        values.len(),
        values.iter().sum::<f32>() / values.len() as f32,
        values.iter().all(|v| v.is_finite())
    );
    Ok(())
}
