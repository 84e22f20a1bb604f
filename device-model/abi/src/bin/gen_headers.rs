//! Writes the generated C headers into the repository.
//!
//! Usage: `cargo run -p xxcapture-abi --bin xxcap-gen-headers [REPO_ROOT]`
//! (default: the workspace root this crate lives in).

use std::path::PathBuf;
use std::process::ExitCode;

use xxcapture_abi::cgen;

fn main() -> ExitCode {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    for (rel, text) in [
        (cgen::UAPI_HEADER_PATH, cgen::uapi_header()),
        (cgen::DEVICE_HEADER_PATH, cgen::device_header()),
    ] {
        let path = root.join(rel);
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("xxcap-gen-headers: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
