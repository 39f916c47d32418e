//! Runs one `#[ignore]`d test of this binary in a child process, for tests that
//! touch process-global state (signal dispositions, environment, the logger).

use std::process::{Command, Output};

/// Set in the child's environment; child tests do nothing without it.
const CHILD_ENV: &str = "MASKD_TEST_CHILD";

/// True inside a child started by [`run`].
pub fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs the ignored test `name` (full path, e.g.
/// `lifecycle::signals::tests::child_x`) in a fresh copy of the test binary.
pub fn run(name: &str, configure: impl FnOnce(&mut Command)) -> Output {
    let exe = std::env::current_exe().expect("test binary path is readable");
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1");
    configure(&mut cmd);
    cmd.output().expect("test binary can be re-run")
}

/// Asserts that the child ran exactly one test and it passed.
pub fn assert_passed(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}
