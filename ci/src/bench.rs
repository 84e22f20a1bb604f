//! `xxvm bench`: DMA throughput and capture rates measured in the guest,
//! next to a host memcpy measured in the same run.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::vm::Step;

/// Host memcpy throughput in GB/s for `size`-byte copies (best of a few
/// runs of about 0.3 s each, the ceiling for the card's DMA copies).
pub fn host_memcpy_gbps(size: usize) -> f64 {
    let src = vec![0x5au8; size];
    let mut dst = vec![0u8; size];
    let mut best = 0.0f64;
    for _ in 0..3 {
        let started = Instant::now();
        let mut copies = 0u64;
        while started.elapsed() < Duration::from_millis(300) {
            dst.copy_from_slice(&src);
            std::hint::black_box(&mut dst);
            copies += 1;
        }
        let gbps = size as f64 * copies as f64 / started.elapsed().as_secs_f64() / 1e9;
        best = best.max(gbps);
    }
    best
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// Markdown report from the guest's bench steps.
pub fn report(steps: &[Step], memcpy_gbps: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## DMA throughput (guest, TCG, 1 vCPU)\n");
    let _ = writeln!(
        out,
        "Host memcpy of 64 MiB in the same run: **{memcpy_gbps:.2} GB/s**.\n"
    );
    let _ = writeln!(
        out,
        "| size | direction | GB/s | x host memcpy | µs per transfer | guest CPU µs per transfer |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|");
    for line in steps
        .iter()
        .filter(|s| s.name == "bench-dma")
        .flat_map(|s| s.output.iter())
        .filter(|l| l.starts_with("bench-dma:"))
    {
        let num = |k| {
            field(line, k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let size = num("size");
        let gbps = num("gbps");
        let size_text = if size >= 1048576.0 {
            format!("{} MiB", size / 1048576.0)
        } else {
            format!("{} KiB", size / 1024.0)
        };
        let _ = writeln!(
            out,
            "| {size_text} | {} | {gbps:.3} | {:.2} | {:.1} | {:.1} |",
            field(line, "dir").unwrap_or("?"),
            gbps / memcpy_gbps,
            num("us_per_transfer"),
            num("cpu_us_per_transfer"),
        );
    }
    let _ = writeln!(out, "\n## Capture (guest, TCG, 1 vCPU)\n");
    let _ = writeln!(out, "| run | result |");
    let _ = writeln!(out, "|---|---|");
    for step in steps.iter().filter(|s| s.name.starts_with("capture-")) {
        let summary = step
            .output
            .iter()
            .find_map(|l| l.find("capture: ").map(|at| &l[at + 9..]))
            .unwrap_or("(no summary)");
        let _ = writeln!(out, "| {} | {} |", step.name, summary);
    }
    out
}
