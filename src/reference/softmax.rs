//! Stage `softmax` (SPEC §2.9, §2.10); GPU: `shaders/softmax.wgsl`.

use crate::params::Masking;

/// Masked scaled softmax over each row of `scores [rows, L]`, in place (SPEC §2.9), with the
/// argmax (first index on ties) and the attention mass of each row.
pub fn softmax(scores: &mut [f64], validity: &[f64], l: usize, scale: f64, masking: Masking) -> (Vec<u32>, Vec<f64>) {
    let rows = scores.len() / l;
    let mut argmax = Vec::with_capacity(rows);
    let mut mass = Vec::with_capacity(rows);
    for row in scores.chunks_mut(l) {
        let logit = |s: f64, m: f64| match masking {
            Masking::ZeroLogit => scale * (s * m),
            Masking::Exclude => {
                if m != 0.0 {
                    scale * s
                } else {
                    f64::NEG_INFINITY
                }
            }
        };
        let max = row.iter().zip(validity).map(|(&s, &m)| logit(s, m)).fold(f64::NEG_INFINITY, f64::max);
        if max == f64::NEG_INFINITY {
            // Only possible with `Exclude` and every patch masked: no attention at all.
            row.iter_mut().for_each(|a| *a = 0.0);
            argmax.push(0);
            mass.push(0.0);
            continue;
        }
        let denom: f64 = row.iter().zip(validity).map(|(&s, &m)| (logit(s, m) - max).exp()).sum();
        let (mut best, mut best_a, mut total) = (0u32, f64::NEG_INFINITY, 0.0);
        for (idx, (a, &m)) in row.iter_mut().zip(validity).enumerate() {
            *a = m * (logit(*a, m) - max).exp() / denom;
            total += *a;
            if *a > best_a {
                best_a = *a;
                best = idx as u32;
            }
        }
        argmax.push(best);
        mass.push(total);
    }
    (argmax, mass)
}
