//! The GPU path: the device context, the kernel contract and recorder, one module per stage,
//! and the forward pass that records the chain.

pub mod context;
pub(crate) mod forward;
pub mod kernel;
pub mod stages;

pub use kernel::{Access, KernelInfo, COMMON_WGSL};
pub use stages::KERNELS;
