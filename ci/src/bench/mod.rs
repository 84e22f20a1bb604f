//! `xxvm bench`: the guest's measurements of one benchmark VM run (ways to
//! reach the card, DMA, capture, the kernel's vivid driver), next to host
//! measurements taken in the same run (memcpy, the card's task-file
//! executor), turned into one report: markdown, JSON and a PNG plot of the
//! cost per command against the task file's length.
//!
//! [`run`] measures on the host, [`report`] is the model built from the
//! guest's result records, [`markdown`] and [`plot`] render it.

mod markdown;
mod plot;
mod report;
mod run;

pub use report::*;
pub use run::*;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use xxcapture_results::{CaptureSummary, Record};

    use super::*;
    use crate::vm::Step;

    fn step(name: &str, lines: &[String]) -> Step {
        Step {
            name: name.into(),
            rc: 0,
            output: lines.to_vec(),
            uptime: 0.0,
        }
    }

    /// A crossings record as the guest prints it.
    fn cross(method: &str, commands: u32, ops: u64, per_op: f64, median: f64) -> Crossing {
        Crossing {
            method: method.into(),
            commands,
            ops,
            per_op_us: per_op,
            per_cmd_us: per_op / f64::from(commands),
            median_op_us: median,
            pass: None,
            validated: None,
            value: None,
            bar: None,
            thread_cpu_us: None,
            guest_busy_us: None,
        }
    }

    fn line(c: Crossing) -> String {
        Record::Crossing(c).line()
    }

    #[test]
    fn crossover_interpolates_in_log_log() {
        // Ratio 1 at 1 command, 100 at 100: 10x is reached at 10.
        let c = crossover(&[(1, 1.0), (100, 100.0)], 10.0);
        let n = c.commands.expect("reached");
        assert!((n - 10.0).abs() < 1e-9, "{n}");
        assert_eq!(c.between, Some((1, 100)));
        let never = crossover(&[(1, 1.0), (4096, 50.0)], 100.0);
        assert_eq!(never.commands, None);
        assert_eq!(never.best_ratio, Some(50.0));
        let first = crossover(&[(1, 20.0), (2, 40.0)], 10.0);
        assert_eq!(first.commands, Some(1.0));
        assert_eq!(first.between, None);
    }

    #[test]
    fn completion_rows_against_config_space() {
        let cpu = |c: Crossing, thread: f64, busy: f64| Crossing {
            thread_cpu_us: Some(thread),
            guest_busy_us: Some(busy),
            ..c
        };
        let steps = vec![
            step(
                "bench-crossings",
                &[
                    line(cpu(cross("task-file", 1, 100, 150.0, 160.0), 40.0, 60.0)),
                    line(cpu(cross("task-file-poll", 1, 100, 30.0, 35.0), 30.0, 31.0)),
                    line(cpu(
                        cross("task-file-hybrid", 1, 100, 36.0, 40.0),
                        33.0,
                        35.0,
                    )),
                    // A second pass: fastest round and least CPU kept.
                    line(cpu(
                        cross("task-file-hybrid", 1, 100, 40.0, 41.0),
                        32.0,
                        36.0,
                    )),
                    line(cross("task-file-hybrid", 256, 20, 90.0, 95.0)),
                ],
            ),
            step(
                "bench-config-space",
                &[line(cross("config-space-register", 1, 500, 75.0, 80.0))],
            ),
        ];
        let r = BenchReport::new(&steps, 9.0, Vec::new(), Vec::new());
        let got: Vec<(u32, &str, f64)> = r
            .completion
            .iter()
            .map(|c| (c.commands, c.completion.as_str(), c.per_op_us))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "interrupt", 150.0),
                (1, "polled", 30.0),
                (1, "hybrid", 36.0),
                (256, "hybrid", 90.0),
            ]
        );
        assert_eq!(r.completion[0].vs_config_space, Some(2.0));
        assert_eq!(r.completion[2].thread_cpu_us, Some(32.0));
        assert_eq!(r.completion[2].guest_busy_us, Some(35.0));
        assert_eq!(r.completion[3].thread_cpu_us, None);
        let md = r.markdown();
        assert!(
            md.contains("| 1 | hybrid | 36.0 | 0.48x | 32.0 | 35.0 |"),
            "{md}"
        );
    }

    #[test]
    fn report_from_guest_lines() {
        let pass = |p: u32, c: Crossing| line(Crossing { pass: Some(p), ..c });
        let rejected = |commands: u32, per_op: f64, median: f64, validated: u32| {
            line(Crossing {
                validated: Some(validated),
                ..cross("task-file-rejected", commands, 20, per_op, median)
            })
        };
        let steps = vec![
            step(
                "bench-crossings",
                &[
                    "cross: passes=3 budget_ms=150 round_us=2000 statistic=fastest-round".into(),
                    pass(1, cross("ioctl-nop", 1, 2000, 1.5, 1.6)),
                    pass(2, cross("ioctl-nop", 1, 1000, 1.4, 1.9)),
                    pass(3, cross("ioctl-nop", 1, 1000, 1.45, 1.7)),
                    line(cross("task-file", 1, 2000, 200.0, 190.0)),
                    line(cross("task-file", 256, 20, 400.0, 390.0)),
                    line(cross("task-file", 4096, 20, 5120.0, 5000.0)),
                    Record::CrossingUnavailable(Unavailable {
                        method: "task-file-poll".into(),
                        reason: "driver lacks EXEC_POLL".into(),
                    })
                    .line(),
                    rejected(1, 20.0, 19.0, 1),
                    rejected(4096, 300.0, 290.0, 1),
                    rejected(4096, 1300.0, 1290.0, 4096),
                    line(cross("edu-register", 1, 2000, 0.25, 0.24)),
                ],
            ),
            step(
                "bench-config-space",
                &[line(Crossing {
                    value: Some(0x5043_5858),
                    bar: Some(2),
                    ..cross("config-space-register", 1, 500, 100.0, 90.0)
                })],
            ),
            step(
                "capture-1080p-60fps-dma",
                &[
                    "guest-uptime: before 10.00 8.00 cpus=1".into(),
                    Record::Capture(CaptureSummary {
                        frames: 120,
                        width: 1920,
                        height: 1080,
                        format: "yuyv".into(),
                        rate: 60,
                        mode: "dma".into(),
                        verified: 0,
                        corrupt: 0,
                        missed: 0,
                        card_dropped: 0,
                        fps: 60.1,
                        mb_per_s: 249.7,
                        cpu_ms_per_frame: 2.5,
                    })
                    .line(),
                    "guest-uptime: after 12.00 9.40 cpus=1".into(),
                ],
            ),
            step(
                "vivid-1080p60",
                &[Record::Vivid(xxcapture_results::VividRun {
                    driver: "vivid".into(),
                    width: 1920,
                    height: 1080,
                    format: "yuyv".into(),
                    timings_fps: 60.0,
                    frames: 120,
                    seconds: 4.0,
                    fps: 30.0,
                    skipped: 120,
                    repeated: 12,
                    short: 0,
                    cpu_ms_per_frame: 0.1,
                    guest_busy_ms_per_frame: 30.0,
                    frame_bytes: 4_147_200,
                })
                .line()],
            ),
            step(
                "v4l2-card-1080p60",
                &[Record::Vivid(xxcapture_results::VividRun {
                    driver: "xxcapture".into(),
                    width: 1920,
                    height: 1080,
                    format: "yuyv".into(),
                    timings_fps: 60.0,
                    frames: 120,
                    seconds: 4.0,
                    fps: 60.0,
                    skipped: 0,
                    repeated: 0,
                    short: 0,
                    cpu_ms_per_frame: 0.1,
                    guest_busy_ms_per_frame: 10.0,
                    frame_bytes: 4_147_200,
                })
                .line()],
            ),
        ];
        let exec = vec![ExecutorPoint {
            commands: 4096,
            us_per_task_file: 100.0,
            ns_per_command: 24.4,
        }];
        let r = BenchReport::new(&steps, 9.0, exec, Vec::new());
        assert_eq!(r.references.config_space_register_us, Some(100.0));
        // Passes merged: fastest round, median of medians, all operations.
        let nop = r
            .crossings
            .iter()
            .find(|c| c.method == "ioctl-nop")
            .expect("nop");
        assert_eq!((nop.per_op_us, nop.median_op_us, nop.ops), (1.4, 1.7, 4000));
        assert_eq!((nop.pass, nop.validated, nop.value), (None, None, None));
        assert_eq!(r.batch.len(), 3);
        // 256: 100 / 1.5625 = 64x: target missed; 4096: 1.25 > 0.25: missed.
        assert_eq!(r.targets[0].met, Some(false));
        assert_eq!(r.targets[1].met, Some(false));
        assert_eq!(r.targets[2].met, None);
        assert!(r.targets[2].measured.contains("driver lacks EXEC_POLL"));
        let ten = &r.crossovers[0];
        assert_eq!(ten.between, Some((1, 256)));
        assert_eq!(r.crossovers[1].commands, None);
        // Breakdown: 300 copy-in, 1000 validation, 180 round trip, 100
        // executor, the rest of 5120.
        let parts: Vec<f64> = r.breakdown_4096.iter().map(|b| b.us).collect();
        assert_eq!(&parts[..6], &[300.0, 1000.0, 180.0, 100.0, 3540.0, 5120.0]);
        let c = &r.capture[0];
        assert_eq!((c.width, c.height, c.rate, c.frames), (1920, 1080, 60, 120));
        let busy = c.guest_busy_ms_per_frame.expect("busy");
        assert!((busy - 0.6 * 1e3 / 120.0).abs() < 1e-9, "{busy}");
        let v = &r.vivid_comparison[0];
        assert_eq!(v.ours_step, "capture-1080p-60fps-dma");
        // 12 of 120 frames were catch-up repeats: 27 distinct frames/s.
        assert!((v.vivid_fps - 27.0).abs() < 1e-9);
        assert!((v.fps_ratio - 60.1 / 27.0).abs() < 1e-9);
        // The card's own V4L2 node, matched by size and rate; it is not a
        // vivid row of its own in the comparison.
        assert_eq!(r.vivid_comparison.len(), 1);
        assert_eq!(v.ours_v4l2_fps, Some(60.0));
        assert_eq!(v.v4l2_guest_cpu_ratio, Some(3.0));
        let md = r.markdown();
        assert!(md.contains("not reached"));
        assert!(
            md.contains("| v4l2-card-1080p60 (1920x1080 YUYV) | xxcapture |"),
            "{md}"
        );
        let doc = r.document("2026-01-01 00:00 UTC", "a test host");
        assert!(doc.starts_with("# Benchmarks\n"), "{doc}");
        assert!(doc
            .contains("Generated by `cargo xxvm bench` on 2026-01-01 00:00 UTC, on a test host."));
        assert!(doc.contains("](crossings.png)"));
        assert!(r
            .json()
            .expect("json")
            .contains("\"config_space_register_us\": 100.0"));
    }

    #[test]
    fn utc_now_is_a_date_and_time() {
        let now = utc_now();
        assert_eq!(now.len(), "2026-01-01 00:00 UTC".len(), "{now}");
        assert!(now.starts_with("20") && now.ends_with(" UTC"), "{now}");
    }

    #[test]
    fn clock_checks_pair_guest_uptime_with_host_time() {
        let console = vec![
            (
                Duration::from_secs(10),
                "XXCAP-STEP-END a rc=0 uptime=3.00".to_string(),
            ),
            (Duration::from_secs(11), "noise".to_string()),
            (
                Duration::from_secs(14),
                "XXCAP-STEP-END b rc=0 uptime=5.00".to_string(),
            ),
        ];
        let c = clock_checks(&console);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].step, "b");
        assert!((c[0].rate - 0.5).abs() < 1e-9);
    }

    #[test]
    fn plot_renders_a_png() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("p.png");
        let steps = vec![step(
            "bench-crossings",
            &[
                line(cross("task-file", 1, 2000, 200.0, 190.0)),
                line(cross("task-file", 4096, 20, 2048.0, 2000.0)),
                line(cross("edu-register", 1, 2000, 0.25, 0.24)),
            ],
        )];
        BenchReport::new(&steps, 9.0, Vec::new(), Vec::new())
            .plot(&path)
            .expect("plot");
        let bytes = std::fs::read(&path).expect("png");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
