use super::*;
use crate::engine::test_util::{assert_close, f32s, run_first};
use proptest::prelude::*;
use tract_core::ops::nn::resize::Nearest;

/// A graph of one tract `Resize` (linear, `coords`) of `shape` by `[1, 1, sy, sx]`.
fn resize_model(shape: &[usize], scale: (usize, usize), coords: CoordTransformer) -> TypedModel {
    let mut model = TypedModel::default();
    let src = model.add_source("x", f32::fact(shape)).expect("source");
    let scales = model
        .add_const(
            "scales",
            tensor1(&[1f32, 1., scale.0 as f32, scale.1 as f32]),
        )
        .expect("const");
    let op = Resize {
        coord_transformer: coords,
        interpolator: Interpolator::Linear,
        nearest: Nearest::Floor,
        optional_scales_input: Some(1),
        optional_sizes_input: None,
    };
    let y = model.wire_node("resize", op, &[src, scales]).expect("wire");
    model.select_output_outlets(&y).expect("outputs");
    model
}

fn run(model: TypedModel, x: &Tensor, rewrite: impl FnOnce(&mut TypedModel)) -> Tensor {
    let mut model = model.into_decluttered().expect("declutter");
    rewrite(&mut model);
    run_first(model, [x.clone()])
}

fn input(n: usize, c: usize, h: usize, w: usize, seed: u32) -> Tensor {
    let v: Vec<f32> = (0..n * c * h * w)
        .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) % 1000)
        .map(|u| u as f32 / 100.0 - 5.0)
        .collect();
    Tensor::from_shape(&[n, c, h, w], &v).expect("tensor")
}

fn assert_same(a: &Tensor, b: &Tensor) {
    assert_eq!(a.shape(), b.shape());
    assert_close(&f32s(a), &f32s(b), 1e-5);
}

/// The model's three upsamples and a few odd ones, through the rewrite.
fn check(n: usize, c: usize, h: usize, w: usize, scale: (usize, usize)) {
    for coords in [
        CoordTransformer::HalfPixel,
        CoordTransformer::PytorchHalfPixel,
    ] {
        let x = input(n, c, h, w, (h * 31 + w) as u32);
        let want = run(resize_model(x.shape(), scale, coords.clone()), &x, |_| ());
        let model = resize_model(x.shape(), scale, coords.clone());
        // PyTorch's variant maps a length-1 output elsewhere: left to tract.
        let rewritable = !(coords == CoordTransformer::PytorchHalfPixel
            && (h * scale.0 == 1 || w * scale.1 == 1));
        let got = run(model, &x, |m| {
            let before = m
                .nodes()
                .iter()
                .filter(|n| n.op_as::<Resize>().is_some())
                .count();
            let done = apply(m).expect("apply");
            assert_eq!(done, if rewritable { before } else { 0 });
        });
        assert_same(&got, &want);
    }
}

#[test]
fn matches_tract_resize_on_the_model_upsamples() {
    check(1, 96, 14, 14, (2, 2));
    check(1, 64, 28, 28, (2, 2));
    check(3, 64, 14, 14, (4, 4));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn matches_tract_resize_on_random_shapes(
        n in 1usize..3, c in 1usize..4, h in 1usize..9, w in 1usize..9,
        sy in 1usize..5, sx in 1usize..5,
    ) {
        check(n, c, h, w, (sy, sx));
    }
}

#[test]
fn nearest_and_non_integer_scales_keep_tract_resize() {
    let mut model = TypedModel::default();
    let src = model
        .add_source("x", f32::fact([1, 2, 4, 4]))
        .expect("source");
    let scales = model
        .add_const("scales", tensor1(&[1f32, 1., 1.5, 1.5]))
        .expect("const");
    let op = Resize {
        coord_transformer: CoordTransformer::HalfPixel,
        interpolator: Interpolator::Linear,
        nearest: Nearest::Floor,
        optional_scales_input: Some(1),
        optional_sizes_input: None,
    };
    let y = model
        .wire_node("resize", op.clone(), &[src, scales])
        .expect("wire");
    let near = Resize {
        interpolator: Interpolator::Nearest,
        ..op
    };
    let scales2 = model
        .add_const("scales2", tensor1(&[1f32, 1., 2., 2.]))
        .expect("const");
    let z = model
        .wire_node("near", near, &[src, scales2])
        .expect("wire");
    model.select_output_outlets(&[y[0], z[0]]).expect("outputs");
    assert_eq!(apply(&mut model).expect("apply"), 0);
}

#[test]
fn too_wide_or_empty_is_refused() {
    assert!(Upsample2d::new((4, 600), (1, 2)).is_err());
    assert!(Upsample2d::new((0, 4), (2, 2)).is_err());
    assert!(Upsample2d::new((4, 4), (0, 2)).is_err());
}
