//! The QEMU options shown in the documentation are the ones `xxcapd` prints.
//!
//! Every Markdown file of the repository that shows the card's QEMU device
//! does so in a fenced block right after a marker naming the command that
//! produced it:
//!
//! ```text
//! <!-- qemu-args: xxcapd --print-qemu-args --socket-path /path/to/xxcapd.sock -->
//! ```
//!
//! This test runs each marked command and compares its output with the block,
//! and fails on any mention of the device's options outside a marked block, so
//! a user copying a command line from a README gets a working card.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const MARKER: &str = "<!-- qemu-args: xxcapd ";
const DEVICE: &str = "vhost-user-test-device-pci,";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vhost-backend has a parent directory")
        .to_path_buf()
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "corpus" {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") && name != "CHANGELOG.md" {
            out.push(path);
        }
    }
}

fn print_qemu_args(args: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xxcapd"))
        .args(args.split_whitespace())
        .output()
        .expect("run xxcapd");
    assert!(
        out.status.success(),
        "xxcapd {args} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("xxcapd prints UTF-8")
}

/// Checks one file; returns how many marked blocks it holds.
fn check_file(path: &Path) -> usize {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let mut covered = vec![false; lines.len()];
    let mut blocks = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim().strip_prefix(MARKER) else {
            continue;
        };
        let args = rest
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("{}:{}: unterminated marker", path.display(), i + 1))
            .trim();
        let open = i + 1;
        assert!(
            lines.get(open).is_some_and(|l| l.starts_with("```")),
            "{}:{}: a fenced block must follow the marker",
            path.display(),
            open + 1
        );
        let close = (open + 1..lines.len())
            .find(|&j| lines[j].starts_with("```"))
            .unwrap_or_else(|| panic!("{}:{}: unclosed block", path.display(), open + 1));
        let shown: Vec<&str> = lines[open + 1..close].to_vec();
        let printed = print_qemu_args(args);
        let printed: Vec<&str> = printed.lines().collect();
        assert_eq!(
            shown,
            printed,
            "{}:{}: the block differs from `xxcapd {args}`",
            path.display(),
            open + 2
        );
        covered[open..=close].iter_mut().for_each(|c| *c = true);
        blocks += 1;
    }
    for (i, line) in lines.iter().enumerate() {
        assert!(
            covered[i] || !line.contains(DEVICE),
            "{}:{}: the card's QEMU options outside a block marked with `{MARKER}...-->`",
            path.display(),
            i + 1
        );
    }
    blocks
}

#[test]
fn documented_qemu_options_are_what_xxcapd_prints() {
    let mut files = Vec::new();
    markdown_files(&repo_root(), &mut files);
    assert!(!files.is_empty(), "no Markdown files found");
    let blocks: usize = files.iter().map(|f| check_file(f)).sum();
    // The spec and the backend's README show the options at least.
    assert!(blocks >= 2, "only {blocks} marked blocks of QEMU options");
}
