//! Host tensors: dense NHWC `f32` in one `Vec`.
//!
//! Why not `ndarray`: the layer only ever needs contiguous rank-4 NHWC data that is uploaded to the
//! GPU as one byte slice (`bytemuck::cast_slice`), indexed by a handful of loops. A plain
//! `Vec<f32>` with its shape does exactly that, keeps the public API free of a third-party type
//! and costs no dependency. Converting from or to `ndarray` is one line for callers who use it
//! (`Tensor::new(a.shape().try_into()?, a.into_raw_vec())`).

use crate::error::{Error, Result};

/// A dense rank-4 tensor in NHWC order: `[batch, height, width, channels]`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: [usize; 4],
    data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data` (NHWC, row-major) with `shape`; errors if the lengths disagree.
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "tensor",
                format!("shape {shape:?} holds {n} elements but {} were given", data.len()),
            ));
        }
        Ok(Tensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: [usize; 4]) -> Self {
        Tensor { shape, data: vec![0.0; shape.iter().product()] }
    }

    /// A tensor whose element `(n, y, x, c)` is `f(n, y, x, c)`.
    pub fn from_fn(shape: [usize; 4], mut f: impl FnMut(usize, usize, usize, usize) -> f32) -> Self {
        let mut data = Vec::with_capacity(shape.iter().product());
        for n in 0..shape[0] {
            for y in 0..shape[1] {
                for x in 0..shape[2] {
                    for c in 0..shape[3] {
                        data.push(f(n, y, x, c));
                    }
                }
            }
        }
        Tensor { shape, data }
    }

    /// `[batch, height, width, channels]`.
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The elements in NHWC order.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements in NHWC order, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Takes the elements out.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Flat index of `(n, y, x, c)`.
    #[inline]
    pub fn index(&self, n: usize, y: usize, x: usize, c: usize) -> usize {
        ((n * self.shape[1] + y) * self.shape[2] + x) * self.shape[3] + c
    }

    /// Element `(n, y, x, c)`.
    #[inline]
    pub fn at(&self, n: usize, y: usize, x: usize, c: usize) -> f32 {
        self.data[self.index(n, y, x, c)]
    }

    /// Batch item `n` as its own `[1, H, W, C]` tensor.
    pub fn item(&self, n: usize) -> Tensor {
        let per: usize = self.shape[1] * self.shape[2] * self.shape[3];
        Tensor {
            shape: [1, self.shape[1], self.shape[2], self.shape[3]],
            data: self.data[n * per..(n + 1) * per].to_vec(),
        }
    }

    /// The largest absolute element-wise difference to `other` (NaN counts as infinite); an
    /// error if the shapes differ.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f32> {
        if self.shape != other.shape {
            return Err(Error::shape(
                "other",
                format!("max_abs_diff compares tensors of one shape, got {:?} and {:?}", self.shape, other.shape),
            ));
        }
        Ok(self
            .data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| {
                let d = (a - b).abs();
                if d.is_nan() {
                    f32::INFINITY
                } else {
                    d
                }
            })
            .fold(0.0, f32::max))
    }
}
