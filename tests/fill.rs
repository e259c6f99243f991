//! The object-removal job in the library (`contextual_attention::fill`): what it accepts, and
//! that the result keeps every pixel outside the hole and takes the layer's output inside it.

mod common;

use common::square_hole;
use contextual_attention::fill::fill;
use contextual_attention::{ContextualAttention, Error, Params, RunOptions, Tensor};

fn layer() -> ContextualAttention {
    ContextualAttention::reference(Params { rate: 2, ..Default::default() }).unwrap()
}

#[test]
fn fill_refuses_a_batch_and_a_mask_of_another_size() {
    let image = Tensor::from_fn([2, 16, 16, 3], |n, y, x, c| (n + y * 3 + x * 5 + c) as f32);
    match fill(&layer(), &image, &square_hole(16, 16, 4, 4, 6), &RunOptions::new()) {
        Err(Error::Shape { tensor, reason }) => {
            assert_eq!(tensor, "image");
            assert!(reason.contains("one image") && reason.contains("batch 2"), "{reason}");
        }
        other => panic!("a batch of 2 must be a shape error, got {:?}", other.map(|_| ())),
    }
    let image = Tensor::from_fn([1, 16, 16, 3], |_, y, x, c| (y * 3 + x * 5 + c) as f32);
    match fill(&layer(), &image, &square_hole(16, 12, 4, 4, 6), &RunOptions::new()) {
        Err(Error::Shape { tensor, reason }) => {
            assert_eq!(tensor, "mask");
            assert!(reason.contains("[1, 16, 16, 1]") && reason.contains("[1, 16, 12, 1]"), "{reason}");
        }
        other => panic!("a 16×12 mask on a 16×16 image must be a shape error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn fill_keeps_the_outside_and_takes_the_layer_inside() {
    let image = Tensor::from_fn([1, 16, 20, 3], |_, y, x, c| ((y * 7 + x * 3 + c * 11) % 17) as f32 * 15.0);
    let hole = square_hole(16, 20, 5, 7, 6);
    let filled = fill(&layer(), &image, &hole, &RunOptions::new()).unwrap();
    assert_eq!(filled.result.shape(), image.shape());
    let mut inside = 0;
    for y in 0..16 {
        for x in 0..20 {
            let in_hole = (5..11).contains(&y) && (7..13).contains(&x);
            inside += in_hole as usize;
            for c in 0..3 {
                let want = if in_hole { filled.output.y.at(0, y, x, c) } else { image.at(0, y, x, c) };
                assert_eq!(filled.result.at(0, y, x, c), want, "pixel ({y}, {x}, {c}), in hole: {in_hole}");
                // The coarse guess, too, leaves the known pixels alone.
                if !in_hole {
                    assert_eq!(filled.coarse.at(0, y, x, c), image.at(0, y, x, c), "coarse at ({y}, {x}, {c})");
                }
            }
        }
    }
    assert_eq!(inside, 36);
}
