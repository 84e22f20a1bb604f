//! Bad flags, values and devices: one clear line on stderr and a non-zero
//! exit, never a panic or a backtrace. Runs on the host: none of these
//! reach a card.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xxcap"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run xxcap");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], expect: &str) {
    let (code, _, err) = run(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(!err.contains("backtrace"), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err:?}");
    assert!(lines[0].starts_with("xxcap: "), "{args:?}: {err:?}");
    assert!(
        lines[0].contains(expect),
        "{args:?}: {:?} does not mention {expect:?}",
        lines[0]
    );
}

#[test]
fn bad_flags_and_values_are_one_line_usage_errors() {
    assert_one_line_error(&["--bogus"], "--bogus");
    assert_one_line_error(&["no-such-command"], "no-such-command");
    assert_one_line_error(&["capture", "--size", "1x1"], "1x1");
    assert_one_line_error(&["capture", "--size", "wide"], "WIDTHxHEIGHT");
    assert_one_line_error(&["capture", "--format", "mjpeg"], "mjpeg");
    assert_one_line_error(&["capture", "--mode", "telepathy"], "telepathy");
    assert_one_line_error(&["stream", "--rate", "fast"], "fast");
    assert_one_line_error(&["regs", "get"], "required");
    let (code, _, _) = run(&["--bogus"]);
    assert_eq!(code, 2, "usage errors exit with 2");
}

#[test]
fn missing_devices_and_bad_values_are_one_line_runtime_errors() {
    assert_one_line_error(
        &["--device", "/nonexistent/xxcapture9", "info"],
        "/nonexistent/xxcapture9",
    );
    assert_one_line_error(
        &[
            "--device",
            "/nonexistent/xxcapture9",
            "stream",
            "--seconds",
            "1",
        ],
        "/nonexistent/xxcapture9",
    );
    assert_one_line_error(&["stream", "--seconds=0"], "--seconds");
    assert_one_line_error(&["--device", "/dev/null", "info"], "GET_INFO");
    assert_one_line_error(&["regs", "get", "NO_SUCH_REGISTER"], "NO_SUCH_REGISTER");
}

#[test]
fn help_and_version_succeed() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("stream"));
    // Tests and benchmarks live in xxcap-test, not in the user's tool.
    for test_only in [
        "selftest",
        "bench",
        "fuzz-driver",
        "canary-test",
        "irq-test",
    ] {
        assert!(!out.contains(test_only), "--help lists {test_only}:\n{out}");
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("xxcap "));
}

/// A reader that has gone away ends the tool like any Unix filter (killed
/// by SIGPIPE), with no panic on stderr.
#[test]
fn a_closed_pipe_ends_the_tool_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    // The read end is closed before the tool starts: its first write fails.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    drop(read_end);
    let out = Command::new(env!("CARGO_BIN_EXE_xxcap"))
        .args(["regs", "list"])
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .output()
        .expect("run xxcap");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(nix::libc::SIGPIPE), "{err}");
}
