//! # contextual-attention
//!
//! The contextual attention layer of image inpainting (Yu et al., "Generative Image Inpainting
//! with Contextual Attention", CVPR 2018) as WGSL compute shaders on wgpu, for any Vulkan,
//! Metal or DX12 GPU, with the original TensorFlow layer's numbers: align-corners nearest
//! downscaling with its f32 rounding, b-only patch normalisation, the wrap-around fuse, 0-logit
//! masking and the constant division by 4 of the paste. Every GPU stage has a CPU twin in
//! [`mod@reference`], which is also a backend of its own.
//!
//! Queries are processed in tiles of whole rows under a memory budget, so the score matrix
//! (which grows with the square of the image area) never has to fit in memory at once.
//!
//! ```no_run
//! use contextual_attention::{ContextualAttention, Gpu, Params, Tensor};
//! # fn main() -> contextual_attention::Result<()> {
//! let gpu = Gpu::new()?; // WGPU_BACKEND / WGPU_ADAPTER_NAME are honoured
//! println!("running on {}", gpu.describe());
//! // The models' call: self-attention at rate 2, fuse on, ksize 3, softmax scale 10.
//! let layer = ContextualAttention::new(&gpu, Params { rate: 2, ..Default::default() })?;
//! let x = Tensor::from_fn([1, 64, 64, 16], |_, y, x, c| ((y * 7 + x * 3 + c * 5) % 13) as f32 / 13.0);
//! let hole = Tensor::from_fn([1, 64, 64, 1], |_, y, x, _| ((20..40).contains(&y) && (20..40).contains(&x)) as u8 as f32);
//! let out = layer.forward(&x, &x, Some(&hole))?;
//! assert_eq!(out.y.shape(), [1, 64, 64, 16]);
//! assert_eq!(out.offsets.len(), 32 * 32 * 2); // (row, col) of the chosen patch per query
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod bench;
#[cfg(feature = "burn")]
pub mod burn;
pub mod chain;
pub mod cpu;
pub mod error;
pub mod fill;
pub mod flow;
pub mod geometry;
pub mod gpu;
#[cfg(feature = "io")]
pub mod io;
mod layer;
pub mod output;
pub mod params;
pub mod plan;
pub mod reference;
pub mod tensor;

pub use error::{Error, Result};
pub use geometry::Geometry;
pub use gpu::context::Gpu;
pub use gpu::resident::{DeviceOutputs, DeviceTarget, DeviceTensor};
pub use layer::{Backend, ContextualAttention, RunOptions};
pub use output::Output;
pub use params::{FuseMode, Masking, Overlap, Params};
pub use plan::Plan;
pub use tensor::Tensor;

/// The README's Rust example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
