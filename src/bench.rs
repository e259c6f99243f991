//! Standard benchmark sizes, shared by `contextual-attention bench` and the criterion benches.

use crate::params::Params;
use crate::tensor::Tensor;

/// One benchmark problem: self-attention on ReLU-like features with a square hole.
#[derive(Clone, Debug)]
pub struct BenchCase {
    /// Short name, e.g. `deepfill-v1-256`.
    pub name: &'static str,
    /// Feature shape `[B, H, W, C]` (f = b).
    pub shape: [usize; 4],
    /// Layer parameters.
    pub params: Params,
    /// Side of the centred square hole in feature pixels (0: no mask).
    pub hole: usize,
}

impl BenchCase {
    /// `HxWxC` with the rate, e.g. `64x64x128 r2`.
    pub fn size_label(&self) -> String {
        format!("{}x{}x{} r{}", self.shape[1], self.shape[2], self.shape[3], self.params.rate)
    }

    /// Deterministic inputs: features max(0, smooth pattern + noise) and the hole mask.
    pub fn inputs(&self) -> (Tensor, Option<Tensor>) {
        let mut state = 0x2545F4914F6CDD1Du64;
        let x = Tensor::from_fn(self.shape, |_, y, x, c| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let wave = ((y as f32 * 0.37 + c as f32 * 1.3).sin() + (x as f32 * 0.23 - c as f32 * 0.7).cos()) * 0.5;
            (wave + noise).max(0.0)
        });
        let mask = (self.hole > 0).then(|| {
            let (h, w) = (self.shape[1], self.shape[2]);
            let (y0, x0) = ((h - self.hole) / 2, (w - self.hole) / 2);
            Tensor::from_fn([1, h, w, 1], |_, y, x, _| {
                ((y0..y0 + self.hole).contains(&y) && (x0..x0 + self.hole).contains(&x)) as u8 as f32
            })
        });
        (x, mask)
    }
}

/// The standard sizes: DeepFill v1 at a 256² input (64×64×128, rate 2, fuse, 32×32 hole),
/// DeepFill v2 (64×64×96), and 128×128×64 at rate 2.
pub fn standard_cases() -> Vec<BenchCase> {
    let model = Params { rate: 2, ..Default::default() };
    vec![
        BenchCase { name: "deepfill-v1-256", shape: [1, 64, 64, 128], params: model.clone(), hole: 32 },
        BenchCase { name: "deepfill-v2-256", shape: [1, 64, 64, 96], params: model.clone(), hole: 32 },
        BenchCase { name: "features-128", shape: [1, 128, 128, 64], params: model, hole: 64 },
    ]
}
