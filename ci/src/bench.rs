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

/// The crossings table: cost per operation and per command of each way to
/// reach the card, with the ratios the seed's guidance turns on.
fn crossings(steps: &[Step], out: &mut String) {
    let rows: Vec<(String, f64, f64)> = steps
        .iter()
        .filter(|s| s.name == "bench-crossings")
        .flat_map(|s| s.output.iter())
        .filter(|l| l.starts_with("cross:") && l.contains("per_op_us="))
        .filter_map(|l| {
            let num = |k| field(l, k).and_then(|v| v.parse::<f64>().ok());
            Some((
                field(l, "method")?.to_string(),
                num("per_op_us")?,
                num("per_cmd_us")?,
            ))
        })
        .collect();
    let per = |m: &str| rows.iter().find(|r| r.0 == m).map(|r| r.2);
    let config = per("config-space-register");
    let edu = per("edu-register");
    let _ = writeln!(
        out,
        "## Crossings: cost per operation (guest, TCG, 1 vCPU)\n"
    );
    let _ = writeln!(out, "| method | µs per operation | µs per command | config-space register / this | this / edu register |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (method, per_op, per_cmd) in &rows {
        let vs_config = config.map_or(String::from("-"), |c| format!("{:.1}x", c / per_cmd));
        let vs_edu = edu.map_or(String::from("-"), |e| format!("{:.2}x", per_cmd / e));
        let _ = writeln!(
            out,
            "| {method} | {per_op:.2} | {per_cmd:.3} | {vs_config} | {vs_edu} |"
        );
    }
    if let Some(c) = config {
        for factor in [10.0, 100.0] {
            let first = rows
                .iter()
                .filter(|r| r.0.starts_with("task-file-") && c / r.2 >= factor)
                .map(|r| r.0.trim_start_matches("task-file-").to_string())
                .next();
            let _ = writeln!(
                out,
                "\nSmallest measured batch at least {factor}x cheaper per command than a config-space register: {}",
                first.unwrap_or_else(|| "none of 1, 16, 256, 4096".into())
            );
        }
    }
    out.push('\n');
}

/// Markdown report from the guest's bench steps.
pub fn report(steps: &[Step], memcpy_gbps: f64) -> String {
    let mut out = String::new();
    crossings(steps, &mut out);
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
