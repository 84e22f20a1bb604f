//! The bench report as markdown.

use std::fmt::Write as _;

use super::report::{BenchReport, Crossing};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".into(), |v| format!("{v:.digits$}"))
}

/// Human description of a crossings method.
fn describe(c: &Crossing) -> String {
    match c.method.as_str() {
        "edu-register" => {
            "edu register, BAR mapped from user space (QEMU in-process device)".into()
        }
        "status-field-mmap" => "one status-block field through mmap (no crossing)".into(),
        "status-snapshot-mmap" => "whole status block through mmap (seqlock copy, ~1 KiB)".into(),
        "ioctl-nop" => "`ioctl(NOP)`: the floor of a kernel crossing".into(),
        "sysfs-read" => "sysfs attribute read (open + read + close)".into(),
        "config-space-register" => {
            "config-space register, BAR mapped from user space (one GET_CONFIG to xxcapd)".into()
        }
        "task-file" => format!("task file, {} command(s)", c.commands),
        "task-file-poll" => format!("task file, {} command(s), polled completion", c.commands),
        "task-file-hybrid" => format!(
            "task file, {} command(s), hybrid completion (spin, then sleep)",
            c.commands
        ),
        "task-file-rejected" => format!(
            "task file of {} refused by the driver after validating {} (never reaches the card)",
            c.commands,
            c.validated.map_or("?".to_string(), |v| v.to_string())
        ),
        "task-file-library" => format!(
            "`Card::run` of {} commands (build + execute + parse)",
            c.commands
        ),
        "task-file-build" => format!("building {} commands' bytes (user space only)", c.commands),
        other => other.to_string(),
    }
}

impl BenchReport {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let r = &self.references;
        let _ = writeln!(
            out,
            "## Crossings: cost per operation (guest user space, TCG, 1 vCPU)\n"
        );
        let _ = writeln!(
            out,
            "Fastest round of about 2 ms over 3 passes (other load on the host only adds time); the median round alongside. Host load average during the run: {}.\n",
            self.host_load
        );
        let _ = writeln!(
            out,
            "| method | µs per operation | µs per command | config-space register ÷ this | this ÷ edu register | median round, µs per operation |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        let order = [
            "edu-register",
            "status-field-mmap",
            "ioctl-nop",
            "status-snapshot-mmap",
            "sysfs-read",
            "config-space-register",
            "task-file-poll",
            "task-file-hybrid",
            "task-file",
        ];
        let rank = |m: &str| order.iter().position(|o| *o == m).unwrap_or(order.len());
        let mut rows: Vec<&Crossing> = self
            .crossings
            .iter()
            .filter(|c| rank(&c.method) < order.len())
            .collect();
        rows.sort_by_key(|c| (rank(&c.method), c.commands));
        for c in rows {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.3} | {} | {} | {:.2} |",
                describe(c),
                c.per_op_us,
                c.per_cmd_us,
                r.config_space_register_us
                    .map_or("—".into(), |k| format!("{:.1}x", k / c.per_cmd_us)),
                r.edu_register_us
                    .map_or("—".into(), |e| format!("{:.2}x", c.per_cmd_us / e)),
                c.median_op_us,
            );
        }
        for u in &self.unavailable {
            let _ = writeln!(
                out,
                "| {}: unavailable ({}) | — | — | — | — | — |",
                u.method, u.reason
            );
        }
        let _ = writeln!(
            out,
            "\n### Batch length at which a task file beats one config-space register access\n"
        );
        for c in &self.crossovers {
            let text = match (c.commands, c.between) {
                (Some(n), Some((a, b))) => format!(
                    "about **{n:.0} commands** (interpolated between the measured {a} and {b})"
                ),
                (Some(n), None) => format!("**{n:.0} command(s)**: already the shortest task file"),
                (None, _) => format!(
                    "**not reached** up to 4096 commands (best {}x)",
                    opt(c.best_ratio, 1)
                ),
            };
            let _ = writeln!(out, "- {:.0}x cheaper per command: {text}", c.factor);
        }
        if let (Some(one), Some(m)) = (r.task_file_1_us, r.marginal_per_cmd_us) {
            let _ = writeln!(
                out,
                "\nA task file costs about {one:.1} µs + {m:.3} µs per command (fixed: a task file of 1; per command: (T(4096) - T(1)) / 4095){}.",
                r.config_space_register_us.map_or(String::new(), |k| format!(
                    "; 100x below a config-space register is {:.3} µs per command",
                    k / 100.0
                ))
            );
        }
        if !self.completion.is_empty() {
            let _ = writeln!(
                out,
                "\n### Completion of a synchronous task file: interrupt, polled, hybrid, ring\n"
            );
            let _ = writeln!(
                out,
                "Fastest round; guest CPU per task file over the whole measurement: the calling thread's own (schedstat) and the whole guest's busy time (wall x vCPUs - idle, which also counts interrupts). `hybrid` is the driver's `exec_wait=hybrid`: it spins for up to twice the round trip it learned, then sleeps. `ring` is the shared submission and completion rings with the card's SQ poller: no system call, the guest thread spins on the completion ring (the host poller's CPU is not in these columns; `bench-ring` reports it).\n"
            );
            let _ = writeln!(
                out,
                "| commands | completion | µs per task file | this ÷ config-space register | thread CPU µs | guest busy µs |"
            );
            let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|");
            for c in &self.completion {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {} | {} | {} |",
                    c.commands,
                    c.completion,
                    c.per_op_us,
                    c.vs_config_space.map_or("—".into(), |r| format!("{r:.2}x")),
                    opt(c.thread_cpu_us, 1),
                    opt(c.guest_busy_us, 1),
                );
            }
        }
        let _ = writeln!(out, "\n### Targets\n");
        let _ = writeln!(out, "| goal | measured | met |");
        let _ = writeln!(out, "|---|---|---|");
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(out, "| {} | {} | {met} |", t.goal, t.measured);
        }
        if !self.breakdown_4096.is_empty() {
            let _ = writeln!(
                out,
                "\n### Where the time of a 4096-command task file goes\n"
            );
            let _ = writeln!(out, "| part | µs | share |");
            let _ = writeln!(out, "|---|---:|---:|");
            for b in &self.breakdown_4096 {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.0}% |",
                    b.part,
                    b.us,
                    b.share * 100.0
                );
            }
        }
        let others: Vec<&Crossing> = self
            .crossings
            .iter()
            .filter(|c| rank(&c.method) == order.len())
            .collect();
        if !others.is_empty() {
            let _ = writeln!(out, "\nMeasurements behind the breakdown:\n");
            let _ = writeln!(out, "| measurement | µs per operation |");
            let _ = writeln!(out, "|---|---:|");
            for c in others {
                let _ = writeln!(out, "| {} | {:.1} |", describe(c), c.per_op_us);
            }
        }
        if !self.host_executor.is_empty() {
            let _ = writeln!(
                out,
                "\n### The card's executor on the host (xxcapture-model, same run)\n"
            );
            let _ = writeln!(out, "| commands | µs per task file | ns per command |");
            let _ = writeln!(out, "|---:|---:|---:|");
            for e in &self.host_executor {
                let _ = writeln!(
                    out,
                    "| {} | {:.2} | {:.1} |",
                    e.commands, e.us_per_task_file, e.ns_per_command
                );
            }
        }

        let _ = writeln!(out, "\n## DMA throughput (guest, TCG, 1 vCPU)\n");
        let _ = writeln!(
            out,
            "Host memcpy of 64 MiB in the same run: **{:.2} GB/s**.\n",
            self.host_memcpy_gbps
        );
        let _ = writeln!(
            out,
            "| size | direction | GB/s | x host memcpy | µs per transfer | guest CPU µs per transfer |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|");
        for d in &self.dma {
            let size = if d.size_bytes >= 1 << 20 {
                format!("{} MiB", d.size_bytes >> 20)
            } else {
                format!("{} KiB", d.size_bytes >> 10)
            };
            let _ = writeln!(
                out,
                "| {size} | {} | {:.3} | {:.2} | {:.1} | {:.1} |",
                d.direction,
                d.gbps,
                d.vs_host_memcpy,
                d.us_per_transfer,
                d.guest_cpu_us_per_transfer
            );
        }

        let _ = writeln!(out, "\n## Capture (guest, TCG, 1 vCPU)\n");
        let _ = writeln!(
            out,
            "| run | fps | missed | card dropped | process CPU ms/frame | guest busy ms/frame |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for c in &self.capture {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} | {} | {:.2} | {} |",
                c.step,
                c.fps,
                c.missed,
                c.card_dropped,
                c.process_cpu_ms_per_frame,
                opt(c.guest_busy_ms_per_frame, 2)
            );
        }
        let _ = writeln!(
            out,
            "\n## vivid, the kernel's virtual capture driver, and the card through V4L2 (same VM, same run)\n"
        );
        if self.vivid.is_empty() {
            let _ = writeln!(out, "Not measured in this run.");
        } else {
            let _ = writeln!(
                out,
                "| run | driver | fps asked | fps | distinct frames/s | periods skipped | catch-up frames | process CPU ms/frame | guest busy ms/frame |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
            for v in &self.vivid {
                let _ = writeln!(
                    out,
                    "| {} ({}x{} YUYV) | {} | {:.2} | {:.1} | {:.1} | {} | {} | {:.2} | {:.2} |",
                    v.step,
                    v.width,
                    v.height,
                    v.driver,
                    v.timings_fps,
                    v.fps,
                    v.fps_distinct,
                    v.skipped,
                    v.repeated,
                    v.process_cpu_ms_per_frame,
                    v.guest_busy_ms_per_frame
                );
            }
            let _ = writeln!(out, "\n| size | vivid distinct frames/s | ours fps (same rate, DMA) | ours / vivid | ours free-running fps | vivid guest busy ms/frame | ours | vivid / ours | ours by V4L2: frames/s | guest busy ms/frame | vivid / ours by V4L2 |");
            let _ = writeln!(
                out,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for v in &self.vivid_comparison {
                let _ = writeln!(
                    out,
                    "| {}x{} | {:.1} | {:.1} | {:.2}x | {} | {:.2} | {} | {} | {} | {} | {} |",
                    v.width,
                    v.height,
                    v.vivid_fps,
                    v.ours_fps,
                    v.fps_ratio,
                    opt(v.ours_free_fps, 1),
                    v.vivid_guest_busy_ms_per_frame,
                    opt(v.ours_guest_busy_ms_per_frame, 2),
                    v.guest_cpu_ratio.map_or("—".into(), |r| format!("{r:.2}x")),
                    opt(v.ours_v4l2_fps, 1),
                    opt(v.ours_v4l2_guest_busy_ms_per_frame, 2),
                    v.v4l2_guest_cpu_ratio
                        .map_or("—".into(), |r| format!("{r:.2}x")),
                );
            }
        }
        if !self.clock.is_empty() {
            let (host, guest) = self
                .clock
                .iter()
                .fold((0.0, 0.0), |(h, g), c| (h + c.host_s, g + c.guest_s));
            let (lo, hi) = self
                .clock
                .iter()
                .filter(|c| c.host_s >= 1.0)
                .fold((f64::INFINITY, 0.0f64), |(lo, hi), c| {
                    (lo.min(c.rate), hi.max(c.rate))
                });
            let _ = writeln!(
                out,
                "\nGuest clock against the host's (every figure above is timed by the guest): {guest:.1} guest s in {host:.1} host s over the steps (rate {:.3}; steps of 1 s or more: {lo:.3} to {hi:.3}).",
                guest / host.max(1e-9)
            );
        }
        out.push('\n');
        out.push_str(&self.interrupts.markdown());
        if !self.failed_steps.is_empty() {
            let _ = writeln!(
                out,
                "\nFailed guest steps: {}",
                self.failed_steps.join(", ")
            );
        }
        out
    }
}

impl BenchReport {
    /// `docs/benchmarks.md`: the report under a header saying what
    /// generated it, when and on what host, with the plot beside it
    /// (`crossings.png`).
    pub fn document(&self, when: &str, host: &str) -> String {
        format!(
            "# Benchmarks\n\n\
             <!-- Generated by `cargo xxvm bench`: edit the generator (ci/src/bench/), not this file. -->\n\n\
             Generated by `cargo xxvm bench` on {when}, on {host}. Every guest figure is \
             measured in one benchmark VM run; host figures in the same run. Run it again to \
             refresh this page and the plot.\n\n\
             ![µs per command against the task file's length](crossings.png)\n\n{}",
            self.markdown()
        )
    }
}
