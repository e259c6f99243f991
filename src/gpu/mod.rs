//! The GPU path: context, pipelines, the forward pass and single-stage runners.

pub mod context;
pub(crate) mod forward;
pub(crate) mod kernels;
pub mod stages;

pub use kernels::SHADERS;
