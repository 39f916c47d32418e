use super::*;
use crate::engine::test_util::{assert_close, f32s, run_first};

#[test]
fn row_is_layernorm() {
    let ln = LayerNorm::new(
        4,
        0.0,
        Some(vec![1., 2., 1., 1.]),
        Some(vec![0., 0., 0., 10.]),
    )
    .expect("op");
    let mut x = [1f32, 2., 3., 4.];
    ln.row(&mut x);
    // mean 2.5, var 1.25
    let s = 1.25f32.sqrt();
    let want = [-1.5 / s, 2.0 * -0.5 / s, 0.5 / s, 1.5 / s + 10.0];
    for (a, b) in x.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{x:?}");
    }
}

/// The chain tract makes of an exported LayerNorm on `[rows, C]`, with `affine`
/// constants or not.
fn chain(rows: usize, c: usize, affine: bool) -> TypedModel {
    use tract_core::ops::math::{add, mul, sub};
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact([rows, c])).expect("source");
    let s = m
        .wire_node("sum", Reduce::new(tvec![1], Reducer::Sum), &[x])
        .expect("sum")[0];
    let r = m
        .add_const("recip", tensor2(&[[1.0 / c as f32]]))
        .expect("const");
    let mean = m.wire_node("mean", mul(), &[s, r]).expect("mean")[0];
    let d = m.wire_node("sub", sub(), &[x, mean]).expect("sub")[0];
    let rms = RmsNorm {
        axis: 1,
        eps: Arc::new(tensor0(1e-6f32)),
    };
    let mut y = m.wire_node("rms", rms, &[d]).expect("rms")[0];
    if affine {
        let g: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..c).map(|i| i as f32 * -0.02).collect();
        let g = m
            .add_const("g", Tensor::from_shape(&[1, c], &g).expect("g"))
            .expect("const");
        let b = m
            .add_const("b", Tensor::from_shape(&[1, c], &b).expect("b"))
            .expect("const");
        y = m.wire_node("scale", mul(), &[y, g]).expect("scale")[0];
        y = m.wire_node("shift", add(), &[y, b]).expect("shift")[0];
    }
    m.select_output_outlets(&[y]).expect("outputs");
    m
}

fn run(m: TypedModel, rows: usize, c: usize) -> Vec<f32> {
    let x: Vec<f32> = (0..rows * c)
        .map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.0)
        .collect();
    f32s(&run_first(
        m,
        [Tensor::from_shape(&[rows, c], &x).expect("x")],
    ))
}

#[test]
fn rewrite_matches_tracts_chain() {
    for (rows, c, affine) in [(7, 192, true), (3, 13, false), (1, 8, true)] {
        let want = run(chain(rows, c, affine), rows, c);
        let mut m = chain(rows, c, affine);
        assert_eq!(apply(&mut m).expect("apply"), 1);
        let m = m.into_decluttered().expect("declutter");
        assert!(m.nodes().iter().all(|n| n.op_as::<RmsNorm>().is_none()));
        assert_close(&run(m, rows, c), &want, 1e-5);
    }
}

#[test]
fn wrong_affine_width_is_an_error() {
    assert!(LayerNorm::new(4, 1e-6, Some(vec![1.0; 3]), None).is_err());
}
