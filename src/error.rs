//! The crate's one error type. User input never panics: every bad shape, parameter or
//! file becomes one of these variants, with a message that says what was wrong and what to do.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A layer parameter is out of its range (ksize 0, rate 0, a paste kernel smaller than the rate, …).
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParam {
        /// The parameter's name as in [`crate::Params`].
        name: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },

    /// A tensor has the wrong rank, or a dimension that does not fit the others.
    #[error("shape error in `{tensor}`: {reason}")]
    Shape {
        /// Which input: `f`, `b`, `mask`, or a file name.
        tensor: String,
        /// What is wrong, with the shapes involved.
        reason: String,
    },

    /// A spatial size is not a multiple of the rate (SPEC §2.3).
    #[error(
        "`{tensor}` has {dim} = {size}, which is not divisible by rate {rate}; \
         crop or pad it to a multiple of {rate} (the original layer requires this too)"
    )]
    NotDivisible {
        /// `f` or `b`.
        tensor: &'static str,
        /// `height` or `width`.
        dim: &'static str,
        /// The size given.
        size: usize,
        /// The rate.
        rate: usize,
    },

    /// Even a single query row per tile needs more memory than the budget allows (SPEC §T).
    #[error(
        "memory budget of {budget} bytes is too small: one tile of a single query row needs {needed} bytes; \
         raise the memory budget (Params::memory_budget / --memory-budget)"
    )]
    MemoryBudget {
        /// The budget in bytes.
        budget: u64,
        /// The smallest amount a tile needs.
        needed: u64,
    },

    /// A GPU buffer would exceed what the device can bind or allocate.
    #[error(
        "buffer `{name}` needs {size} bytes but the device allows at most {limit} bytes per {what}; \
         use smaller inputs, a smaller memory budget, or the CPU backend"
    )]
    BufferTooLarge {
        /// The buffer's role.
        name: &'static str,
        /// Requested size in bytes.
        size: u64,
        /// The device limit in bytes.
        limit: u64,
        /// `storage binding` or `buffer`.
        what: &'static str,
    },

    /// A dispatch would exceed the device's workgroup-count limit even after folding.
    #[error(
        "dispatch `{kernel}` needs {groups} workgroups, more than the device allows ({limit}²); use smaller inputs"
    )]
    DispatchTooLarge {
        /// The kernel.
        kernel: &'static str,
        /// Workgroups needed.
        groups: u64,
        /// Per-dimension limit.
        limit: u32,
    },

    /// No GPU adapter could be found (in the browser: no WebGPU, and the reason says how to get it).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        error(
            "no GPU adapter found ({0}); install a GPU driver, or a software Vulkan \
             (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`), or use the CPU backend (`--backend cpu`)"
        )
    )]
    #[cfg_attr(target_arch = "wasm32", error("no WebGPU adapter: {0}"))]
    NoAdapter(String),

    /// The adapter refused to create a device.
    #[error("could not create a GPU device: {0}")]
    RequestDevice(#[source] wgpu::RequestDeviceError),

    /// The GPU reported an error (validation, out of memory, device lost, a readback that failed).
    #[error("GPU error: {0}")]
    Gpu(String),

    /// A caller's buffer of a device-resident call cannot be used as given.
    #[error("device buffer `{name}`: {reason}")]
    DeviceBuffer {
        /// Its role: `f`, `b`, `mask`, `y`, `argmax` or `mass`.
        name: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },

    /// The call asks for something this backend or path does not do.
    #[error("{0}")]
    Unsupported(String),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A `.npy` file is malformed or has an unsupported dtype.
    #[error("{path}: {reason}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// The error of the `.npy` reader underneath, where there was one.
        #[source]
        source: Option<std::io::Error>,
    },

    /// An image could not be decoded or encoded.
    #[cfg(feature = "io")]
    #[error("{path}: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The image codec's error.
        #[source]
        source: image::ImageError,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn param(name: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::InvalidParam { name, value: value.to_string(), reason: reason.into() }
    }

    pub(crate) fn shape(tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Shape { tensor: tensor.into(), reason: reason.into() }
    }
}
