//! The GPU path: the device context, the kernel contract and recorder, one module per stage,
//! the forward pass that records the chain, and device-resident calls on the caller's buffers.

pub mod context;
pub(crate) mod forward;
pub mod kernel;
pub mod resident;
pub mod stages;

pub use kernel::{Access, KernelInfo, COMMON_WGSL};
pub use stages::KERNELS;
