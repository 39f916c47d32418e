//! `maskd sparsify` and `maskd inspect` as a user runs them, on the sparsify fixture
//! (`tests/fixtures/make_sparsify.py`: external weights, a Gemm, a Conv, a 2:4 weight).

use crate::util::{repo, run, Dir};

fn fixture() -> String {
    repo()
        .join("tests/data/sparsify/model.onnx")
        .to_string_lossy()
        .into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "maskd failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no line for {label} in\n{text}"))
}

#[test]
fn sparsify_then_inspect_shows_matmul_layers() {
    let dir = Dir::new();
    let out_path = dir.join("sparse.onnx");
    let out = run(&[
        "sparsify",
        "--pattern",
        "2:4",
        &fixture(),
        &out_path.to_string_lossy(),
    ]);
    let text = stdout(&out);
    assert!(
        line(&text, "fc1").contains("1024/2048") && line(&text, "fc1").contains("8192 -> 4352"),
        "{text}"
    );
    assert!(
        line(&text, "patch").contains("skipped: first layer on the image"),
        "{text}"
    );
    assert!(
        line(&text, "head").contains("skipped: last layer"),
        "{text}"
    );
    assert!(line(&text, "conv").contains("not eligible: Conv"), "{text}");
    assert!(text.contains("summary: pruned 3 of 7 layers"), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[3/3] fc2"),
        "progress on stderr:\n{stderr}"
    );

    let text = stdout(&run(&["inspect", &out_path.to_string_lossy()]));
    assert!(text.contains("NmMatMul 3"), "{text}");
    let fc1 = line(&text, "fc1");
    assert!(
        fc1.contains("NmMatMul") && fc1.contains("2:4 ok") && fc1.contains("4352 / 8192 / 4352"),
        "{fc1}"
    );
    assert!(line(&text, "patch").contains(" no "), "{text}");
    assert!(
        text.contains("weight layers total: 7 layers, 3 obey 2:4, 3 NmMatMul"),
        "{text}"
    );
}

#[test]
fn dense_out_with_4_8_is_reported_by_inspect_as_dense() {
    let dir = Dir::new();
    let out_path = dir.join("dense.onnx");
    let out_path = out_path.to_string_lossy();
    let text = stdout(&run(&[
        "sparsify",
        "--pattern",
        "4:8",
        "--dense-out",
        "--no-default-skips",
        "--skip",
        "gemm",
        &fixture(),
        &out_path,
    ]));
    assert!(text.contains("pattern 4:8, dense weights"), "{text}");
    assert!(line(&text, "patch").contains("1024/2048"), "{text}");
    assert!(
        line(&text, "gemm").contains("skipped: --skip \"gemm\""),
        "{text}"
    );
    let text = stdout(&run(&["inspect", &out_path]));
    assert!(
        text.contains("MatMul 6,") && text.contains(", 0 NmMatMul;"),
        "{text}"
    );
    assert!(line(&text, "head").contains("MatMul"), "{text}");
}

#[test]
fn bad_arguments_give_clear_errors() {
    let dir = Dir::new();
    let out_path = dir.join("o.onnx");
    let out_path = out_path.to_string_lossy();
    for (pattern, needle) in [
        ("2:2", "need 1 <= N < M <= 16"),
        ("0:4", "invalid N:M pattern 0:4"),
        ("5:4", "invalid N:M pattern 5:4"),
        ("x", "expected N:M such as 2:4, got `x`"),
    ] {
        let out = run(&["sparsify", "--pattern", pattern, &fixture(), &out_path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{pattern}: {stderr}"
        );
    }
    let out = run(&["sparsify", "no/such.onnx", &out_path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("maskd: error: no/such.onnx: reading"),
        "{stderr}"
    );
}
