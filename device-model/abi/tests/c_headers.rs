//! The C headers must be exactly what the Rust definitions generate, and a C
//! compiler must see the same sizes, offsets and ioctl numbers as Rust.

use std::path::{Path, PathBuf};
use std::process::Command;

use xxcapture_abi::cgen;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn assert_generated(rel: &str, expected: &str) {
    let path = repo_root().join(rel);
    let actual = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        actual == expected,
        "{rel} has drifted from device-model/abi; run `cargo run -p xxcapture-abi --bin xxcap-gen-headers`"
    );
}

#[test]
fn uapi_header_matches_rust_definitions() {
    assert_generated(cgen::UAPI_HEADER_PATH, &cgen::uapi_header());
}

#[test]
fn device_header_matches_rust_definitions() {
    assert_generated(cgen::DEVICE_HEADER_PATH, &cgen::device_header());
}

#[test]
fn c_compiler_sees_rust_layout_and_ioctl_numbers() {
    let dir = std::env::temp_dir().join(format!("xxcap-abi-probe-{}", std::process::id()));
    let linux = dir.join("include/linux");
    std::fs::create_dir_all(&linux).expect("temp dir");
    std::fs::copy(
        repo_root().join(cgen::UAPI_HEADER_PATH),
        linux.join("xxcapture.h"),
    )
    .expect("copy header");
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, cgen::c_probe_source()).expect("write probe");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(dir.join("include"))
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .status()
        .unwrap_or_else(|e| panic!("cannot run C compiler `{cc}`: {e}"));
    assert!(status.success(), "the UAPI header does not compile");
    let output = Command::new(&bin).output().expect("run probe");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(printed, cgen::expected_probe_output());
    let _ = std::fs::remove_dir_all(&dir);
}
