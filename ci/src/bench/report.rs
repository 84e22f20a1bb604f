//! The bench report's model: the guest's result records and the host's
//! measurements of one run, merged, compared and judged against the
//! targets.

use serde::Serialize;
use xxcapture_results::{CaptureSummary, Record};

use super::run::{ClockCheck, ExecutorPoint};
use crate::vm::Step;
use crate::{Error, Result};

pub use xxcapture_results::{Crossing, Unavailable};

#[derive(Clone, Debug, Serialize)]
pub struct DmaRow {
    pub size_bytes: u64,
    pub direction: String,
    pub gbps: f64,
    pub vs_host_memcpy: f64,
    pub us_per_transfer: f64,
    pub guest_cpu_us_per_transfer: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaptureRow {
    pub step: String,
    pub width: u32,
    pub height: u32,
    /// Requested rate; 0: free-running.
    pub rate: u32,
    pub mode: String,
    pub frames: u64,
    pub fps: f64,
    pub missed: u64,
    pub card_dropped: u64,
    /// The capturing process's own CPU (schedstat).
    pub process_cpu_ms_per_frame: f64,
    /// The whole guest's busy time over the step (wall x CPUs - idle).
    pub guest_busy_ms_per_frame: Option<f64>,
    /// All the guest reported.
    pub summary: CaptureSummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct VividRow {
    pub step: String,
    /// `vivid`, or `xxcapture` for the card's own V4L2 node.
    pub driver: String,
    pub width: u32,
    pub height: u32,
    /// Frame rate of the DV timings preset vivid was given.
    pub timings_fps: f64,
    pub frames: u64,
    pub fps: f64,
    /// Distinct frame periods delivered per second: `fps` without the
    /// catch-up frames (vivid renders those back to back under a frame
    /// number it already delivered).
    pub fps_distinct: f64,
    /// Frame periods vivid missed (sequence gaps) while we captured.
    pub skipped: u64,
    /// Frames vivid rendered back to back to catch up (same sequence).
    pub repeated: u64,
    pub process_cpu_ms_per_frame: f64,
    pub guest_busy_ms_per_frame: f64,
}

/// Our capture against vivid at one size, both at 60 fps.
#[derive(Clone, Debug, Serialize)]
pub struct VividComparison {
    pub width: u32,
    pub height: u32,
    pub vivid_fps: f64,
    pub ours_fps: f64,
    pub ours_step: String,
    /// Ours free-running (flow-controlled), by DMA, if measured.
    pub ours_free_fps: Option<f64>,
    pub fps_ratio: f64,
    pub vivid_guest_busy_ms_per_frame: f64,
    pub ours_guest_busy_ms_per_frame: Option<f64>,
    /// vivid's guest CPU per frame / ours.
    pub guest_cpu_ratio: Option<f64>,
    /// The card's V4L2 node at the same size and rate, measured by the
    /// same streaming loop as vivid: its distinct frames per second.
    pub ours_v4l2_fps: Option<f64>,
    pub ours_v4l2_guest_busy_ms_per_frame: Option<f64>,
    /// vivid's guest CPU per frame / the card's V4L2 node's.
    pub v4l2_guest_cpu_ratio: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BatchPoint {
    pub commands: u32,
    pub per_op_us: f64,
    pub per_cmd_us: f64,
    /// Config-space register cost / this per-command cost.
    pub config_space_over_this: Option<f64>,
    /// This per-command cost / edu's per-register cost.
    pub this_over_edu: Option<f64>,
}

/// The batch length at which a task file's per-command cost is `factor`
/// times below one config-space register access.
#[derive(Clone, Debug, Serialize)]
pub struct Crossover {
    pub factor: f64,
    /// Interpolated on the measured points (log-log); `None` if never reached.
    pub commands: Option<f64>,
    /// The measured lengths around it.
    pub between: Option<(u32, u32)>,
    /// Best measured ratio, for when it is never reached.
    pub best_ratio: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub goal: String,
    pub measured: String,
    /// `None`: could not be measured in this run.
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BreakdownRow {
    pub part: String,
    pub us: f64,
    pub share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct References {
    pub config_space_register_us: Option<f64>,
    pub edu_register_us: Option<f64>,
    pub ioctl_nop_us: Option<f64>,
    pub status_field_mmap_us: Option<f64>,
    pub task_file_1_us: Option<f64>,
    pub task_file_1_poll_us: Option<f64>,
    /// What one more command adds to a task file: (T(4096) - T(1)) / 4095.
    pub marginal_per_cmd_us: Option<f64>,
}

/// One way of completing a synchronous task file (EXEC) at one length.
#[derive(Clone, Debug, Serialize)]
pub struct CompletionRow {
    pub commands: u32,
    /// `interrupt`, `polled` (EXEC_POLL), `hybrid` (the driver spins for
    /// the expected time, then sleeps) or `ring` (the shared rings, the
    /// card's SQ poller and the caller spinning).
    pub completion: String,
    pub per_op_us: f64,
    /// This ÷ one config-space register access of the same run.
    pub vs_config_space: Option<f64>,
    /// Guest CPU per task file: the caller's thread, and the whole guest.
    pub thread_cpu_us: Option<f64>,
    pub guest_busy_us: Option<f64>,
}

/// Completion rows for the lengths the guest compares, in the order
/// interrupt, polled, hybrid.
fn completion(crossings: &[Crossing], config: Option<f64>) -> Vec<CompletionRow> {
    let mut rows = Vec::new();
    for commands in [1, 256] {
        for (method, name) in [
            ("task-file", "interrupt"),
            ("task-file-poll", "polled"),
            ("task-file-hybrid", "hybrid"),
            ("task-file-ring", "ring"),
        ] {
            if let Some(c) = crossings
                .iter()
                .find(|c| c.method == method && c.commands == commands)
            {
                rows.push(CompletionRow {
                    commands,
                    completion: name.into(),
                    per_op_us: c.per_op_us,
                    vs_config_space: config.map(|k| c.per_op_us / k),
                    thread_cpu_us: c.thread_cpu_us,
                    guest_busy_us: c.guest_busy_us,
                });
            }
        }
    }
    rows
}

/// Everything one `cargo xxvm bench` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The host's load average (1, 5, 15 min) before and after the VM run:
    /// other engineers' VMs share its two cores.
    pub host_load: String,
    pub host_memcpy_gbps: f64,
    pub host_executor: Vec<ExecutorPoint>,
    pub crossings: Vec<Crossing>,
    pub unavailable: Vec<Unavailable>,
    pub references: References,
    pub batch: Vec<BatchPoint>,
    pub crossovers: Vec<Crossover>,
    /// Interrupt, polled and hybrid completion of short and long task files.
    pub completion: Vec<CompletionRow>,
    pub breakdown_4096: Vec<BreakdownRow>,
    pub targets: Vec<Target>,
    pub dma: Vec<DmaRow>,
    pub capture: Vec<CaptureRow>,
    pub vivid: Vec<VividRow>,
    pub vivid_comparison: Vec<VividComparison>,
    pub clock: Vec<ClockCheck>,
    /// Interrupt latency and synchronous vs asynchronous I/O.
    pub interrupts: crate::bench_events::InterruptReport,
    pub failed_steps: Vec<String>,
}

/// The guest's crossings records, one per method (and length) per pass,
/// merged over the passes: the fastest round of any pass, the median of
/// the passes' medians, all operations counted.
fn crossings(records: &[Record]) -> (Vec<Crossing>, Vec<Unavailable>) {
    let mut found: Vec<Crossing> = Vec::new();
    let mut medians: Vec<Vec<f64>> = Vec::new();
    let mut missing: Vec<Unavailable> = Vec::new();
    for record in records {
        let c = match record {
            Record::Crossing(c) => Crossing {
                pass: None,
                ..c.clone()
            },
            Record::CrossingUnavailable(u) => {
                if !missing.iter().any(|m| m.method == u.method) {
                    missing.push(u.clone());
                }
                continue;
            }
            _ => continue,
        };
        let same = found.iter().position(|f| {
            f.method == c.method
                && f.commands == c.commands
                && (f.validated, f.value, f.bar) == (c.validated, c.value, c.bar)
        });
        match same {
            Some(i) => {
                let f = &mut found[i];
                f.ops += c.ops;
                if c.per_op_us < f.per_op_us {
                    f.per_op_us = c.per_op_us;
                    f.per_cmd_us = c.per_cmd_us;
                }
                // CPU too: other load only ever adds to it.
                let least = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                f.thread_cpu_us = least(f.thread_cpu_us, c.thread_cpu_us);
                f.guest_busy_us = least(f.guest_busy_us, c.guest_busy_us);
                medians[i].push(c.median_op_us);
            }
            None => {
                medians.push(vec![c.median_op_us]);
                found.push(c);
            }
        }
    }
    for (f, mut m) in found.iter_mut().zip(medians) {
        m.sort_by(f64::total_cmp);
        f.median_op_us = m[m.len() / 2];
    }
    (found, missing)
}

fn dma(steps: &[Step], memcpy_gbps: f64) -> Vec<DmaRow> {
    steps
        .iter()
        .filter(|s| s.name == "bench-dma")
        .flat_map(Step::records)
        .filter_map(|r| match r {
            Record::DmaThroughput(d) => Some(DmaRow {
                size_bytes: d.size_bytes,
                direction: d.direction,
                gbps: d.gbps,
                vs_host_memcpy: d.gbps / memcpy_gbps,
                us_per_transfer: d.us_per_transfer,
                guest_cpu_us_per_transfer: d.cpu_us_per_transfer,
            }),
            _ => None,
        })
        .collect()
}

/// Busy CPU seconds between the `guest-uptime: before|after UP IDLE cpus=N`
/// lines the guest's `with_cpu` prints around a step.
fn guest_busy(step: &Step) -> Option<f64> {
    let reading = |tag: &str| {
        step.output.iter().find_map(|l| {
            let rest = l.strip_prefix("guest-uptime: ")?.strip_prefix(tag)?;
            let mut f = rest.split_whitespace();
            let up: f64 = f.next()?.parse().ok()?;
            let idle: f64 = f.next()?.parse().ok()?;
            let cpus: f64 = rest
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("cpus="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1.0);
            Some((up, idle, cpus))
        })
    };
    let (up0, idle0, cpus) = reading("before")?;
    let (up1, idle1, _) = reading("after")?;
    Some(((up1 - up0) * cpus - (idle1 - idle0)).max(0.0))
}

fn capture(step: &Step) -> Option<CaptureRow> {
    let c = step.records().into_iter().find_map(|r| match r {
        Record::Capture(c) => Some(c),
        _ => None,
    })?;
    Some(CaptureRow {
        step: step.name.clone(),
        width: c.width,
        height: c.height,
        rate: c.rate,
        mode: c.mode.clone(),
        frames: c.frames,
        fps: c.fps,
        missed: c.missed,
        card_dropped: c.card_dropped,
        process_cpu_ms_per_frame: c.cpu_ms_per_frame,
        guest_busy_ms_per_frame: guest_busy(step).map(|s| s * 1e3 / c.frames.max(1) as f64),
        summary: c,
    })
}

fn vivid(step: &Step) -> Option<VividRow> {
    let v = step.records().into_iter().find_map(|r| match r {
        Record::Vivid(v) => Some(v),
        _ => None,
    })?;
    let frames = v.frames as f64;
    Some(VividRow {
        step: step.name.clone(),
        driver: v.driver.clone(),
        width: v.width,
        height: v.height,
        timings_fps: v.timings_fps,
        frames: v.frames,
        fps: v.fps,
        fps_distinct: v.fps * (frames - v.repeated as f64).max(0.0) / frames.max(1.0),
        skipped: v.skipped,
        repeated: v.repeated,
        process_cpu_ms_per_frame: v.cpu_ms_per_frame,
        guest_busy_ms_per_frame: v.guest_busy_ms_per_frame,
    })
}

/// The batch length where `ratio` (measured at `points`, increasing
/// lengths) first reaches `factor`, interpolated linearly in log-log.
pub fn crossover(points: &[(u32, f64)], factor: f64) -> Crossover {
    let best_ratio = points.iter().map(|p| p.1).reduce(f64::max);
    let mut prev: Option<(u32, f64)> = None;
    for &(n, r) in points {
        if r >= factor {
            let (commands, between) = match prev {
                Some((n0, r0)) if r0 > 0.0 && r > r0 => {
                    let t = (factor.ln() - r0.ln()) / (r.ln() - r0.ln());
                    let ln = f64::from(n0).ln() + t * (f64::from(n).ln() - f64::from(n0).ln());
                    (ln.exp(), Some((n0, n)))
                }
                Some((n0, _)) => (f64::from(n), Some((n0, n))),
                None => (f64::from(n), None),
            };
            return Crossover {
                factor,
                commands: Some(commands),
                between,
                best_ratio,
            };
        }
        prev = Some((n, r));
    }
    Crossover {
        factor,
        commands: None,
        between: None,
        best_ratio,
    }
}

impl BenchReport {
    /// Builds the report from the guest's steps and the host measurements.
    pub fn new(
        steps: &[Step],
        memcpy_gbps: f64,
        executor: Vec<ExecutorPoint>,
        clock: Vec<ClockCheck>,
    ) -> Self {
        let records: Vec<Record> = steps.iter().flat_map(Step::records).collect();
        let (crossings, unavailable) = crossings(&records);
        let find = |method: &str, commands: u32| {
            crossings
                .iter()
                .find(|c| c.method == method && c.commands == commands)
        };
        let per_op = |method: &str, commands: u32| find(method, commands).map(|c| c.per_op_us);
        let config = per_op("config-space-register", 1);
        let edu = per_op("edu-register", 1);
        let references = References {
            config_space_register_us: config,
            edu_register_us: edu,
            ioctl_nop_us: per_op("ioctl-nop", 1),
            status_field_mmap_us: per_op("status-field-mmap", 1),
            task_file_1_us: per_op("task-file", 1),
            task_file_1_poll_us: per_op("task-file-poll", 1),
            marginal_per_cmd_us: per_op("task-file", 4096)
                .zip(per_op("task-file", 1))
                .map(|(long, one)| (long - one) / 4095.0),
        };
        let batch: Vec<BatchPoint> = crossings
            .iter()
            .filter(|c| c.method == "task-file")
            .map(|c| BatchPoint {
                commands: c.commands,
                per_op_us: c.per_op_us,
                per_cmd_us: c.per_cmd_us,
                config_space_over_this: config.map(|k| k / c.per_cmd_us),
                this_over_edu: edu.map(|e| c.per_cmd_us / e),
            })
            .collect();
        let ratios: Vec<(u32, f64)> = batch
            .iter()
            .filter_map(|b| Some((b.commands, b.config_space_over_this?)))
            .collect();
        let crossovers = if ratios.is_empty() {
            Vec::new()
        } else {
            vec![crossover(&ratios, 10.0), crossover(&ratios, 100.0)]
        };
        let at = |n: u32| batch.iter().find(|b| b.commands == n);

        let mut targets = Vec::new();
        targets.push(match (at(256), config) {
            (Some(b), Some(k)) => {
                let r = k / b.per_cmd_us;
                Target {
                    goal: "a task file of 256 commands costs >= 100x less per command than one config-space register".into(),
                    measured: format!("{r:.1}x ({:.3} µs vs {k:.1} µs)", b.per_cmd_us),
                    met: Some(r >= 100.0),
                }
            }
            _ => Target {
                goal: "a task file of 256 commands costs >= 100x less per command than one config-space register".into(),
                measured: "not measured".into(),
                met: None,
            },
        });
        targets.push(match (at(4096), edu) {
            (Some(b), Some(e)) => Target {
                goal:
                    "a task file of 4096 commands costs <= edu's per-register MMIO cost per command"
                        .into(),
                measured: format!(
                    "{:.3} µs vs {e:.3} µs ({:.2}x edu)",
                    b.per_cmd_us,
                    b.per_cmd_us / e
                ),
                met: Some(b.per_cmd_us <= e),
            },
            _ => Target {
                goal:
                    "a task file of 4096 commands costs <= edu's per-register MMIO cost per command"
                        .into(),
                measured: "not measured".into(),
                met: None,
            },
        });
        let poll_goal =
            "a one-command task file with polled completion costs <= one config-space register"
                .to_string();
        targets.push(match (references.task_file_1_poll_us, config) {
            (Some(p), Some(k)) => Target {
                goal: poll_goal,
                measured: format!("{p:.1} µs vs {k:.1} µs ({:.2}x)", p / k),
                met: Some(p <= k),
            },
            (None, Some(k)) => Target {
                goal: poll_goal,
                measured: format!(
                    "polled: {}; interrupt-driven: {}",
                    unavailable
                        .iter()
                        .find(|u| u.method == "task-file-poll")
                        .map_or("not measured".to_string(), |u| format!(
                            "unavailable ({})",
                            u.reason
                        )),
                    references
                        .task_file_1_us
                        .map_or("not measured".into(), |t| format!(
                            "{t:.1} µs vs {k:.1} µs ({:.2}x)",
                            t / k
                        )),
                ),
                met: None,
            },
            _ => Target {
                goal: poll_goal,
                measured: "config-space register not measured".into(),
                met: None,
            },
        });

        let ring_goal =
            "a one-command task file by the shared rings: at most 10 µs round trip".to_string();
        targets.push(match per_op("task-file-ring", 1) {
            Some(r) => Target {
                goal: ring_goal,
                measured: format!(
                    "{r:.1} µs{}",
                    references
                        .task_file_1_poll_us
                        .map_or(String::new(), |p| format!(" (EXEC polled: {p:.1} µs)"))
                ),
                met: Some(r <= 10.0),
            },
            None => Target {
                goal: ring_goal,
                measured: "not measured".into(),
                met: None,
            },
        });
        let ring_batch_goal = "a task file of 256 commands by the shared rings costs >= 100x less per command than one config-space register".to_string();
        targets.push(match (per_op("task-file-ring", 256), config) {
            (Some(r), Some(k)) => {
                let x = k / (r / 256.0);
                Target {
                    goal: ring_batch_goal,
                    measured: format!("{x:.1}x ({:.3} µs vs {k:.1} µs)", r / 256.0),
                    met: Some(x >= 100.0),
                }
            }
            _ => Target {
                goal: ring_batch_goal,
                measured: "not measured".into(),
                met: None,
            },
        });

        let breakdown_4096 = breakdown(&crossings, &executor);
        let capture: Vec<CaptureRow> = steps
            .iter()
            .filter(|s| s.name.starts_with("capture-"))
            .filter_map(capture)
            .collect();
        let vivid: Vec<VividRow> = steps
            .iter()
            .filter(|s| s.name.starts_with("vivid-") || s.name.starts_with("v4l2-"))
            .filter_map(vivid)
            .collect();
        let vivid_comparison = vivid
            .iter()
            .filter(|v| v.driver == "vivid")
            .filter_map(|v| {
                let node = vivid.iter().find(|n| {
                    n.driver == "xxcapture"
                        && (n.width, n.height) == (v.width, v.height)
                        && n.timings_fps.round() == v.timings_fps.round()
                });
                let same = |c: &&CaptureRow| c.width == v.width && c.height == v.height;
                let ours = capture
                    .iter()
                    .filter(same)
                    .filter(|c| c.mode == "dma" && f64::from(c.rate) == v.timings_fps.round())
                    .min_by_key(|c| c.step.contains("verify"))?;
                let free = capture
                    .iter()
                    .filter(same)
                    .find(|c| c.mode == "dma" && c.rate == 0)
                    .map(|c| c.fps);
                Some(VividComparison {
                    width: v.width,
                    height: v.height,
                    vivid_fps: v.fps_distinct,
                    ours_fps: ours.fps,
                    ours_step: ours.step.clone(),
                    ours_free_fps: free,
                    fps_ratio: ours.fps / v.fps_distinct,
                    vivid_guest_busy_ms_per_frame: v.guest_busy_ms_per_frame,
                    ours_guest_busy_ms_per_frame: ours.guest_busy_ms_per_frame,
                    guest_cpu_ratio: ours
                        .guest_busy_ms_per_frame
                        .map(|o| v.guest_busy_ms_per_frame / o),
                    ours_v4l2_fps: node.map(|n| n.fps_distinct),
                    ours_v4l2_guest_busy_ms_per_frame: node.map(|n| n.guest_busy_ms_per_frame),
                    v4l2_guest_cpu_ratio: node
                        .map(|n| v.guest_busy_ms_per_frame / n.guest_busy_ms_per_frame),
                })
            })
            .collect();
        let completion_rows = completion(&crossings, config);
        BenchReport {
            host_load: String::new(),
            host_memcpy_gbps: memcpy_gbps,
            host_executor: executor,
            crossings,
            unavailable,
            references,
            completion: completion_rows,
            batch,
            crossovers,
            breakdown_4096,
            targets,
            dma: dma(steps, memcpy_gbps),
            capture,
            vivid,
            vivid_comparison,
            clock,
            interrupts: crate::bench_events::InterruptReport::new(&records),
            failed_steps: steps
                .iter()
                .filter(|s| s.rc != 0)
                .map(|s| s.name.clone())
                .collect(),
        }
    }
}

/// Where the time of a 4096-command task file goes, from measurements that
/// differ by one part each: refused task files never reach the card (the
/// driver's copy and validation alone), a 1-command task file is the fixed
/// round trip, and the host executor is the card's own work.
fn breakdown(crossings: &[Crossing], executor: &[ExecutorPoint]) -> Vec<BreakdownRow> {
    let get = |method: &str, commands: u32, validated: Option<u32>| {
        crossings
            .iter()
            .find(|c| {
                c.method == method
                    && c.commands == commands
                    && validated.is_none_or(|v| c.validated == Some(v))
            })
            .map(|c| c.per_op_us)
    };
    let (Some(full), Some(refused_first), Some(refused_last), Some(one), Some(one_refused)) = (
        get("task-file", 4096, None),
        get("task-file-rejected", 4096, Some(1)),
        get("task-file-rejected", 4096, Some(4096)),
        get("task-file", 1, None),
        get("task-file-rejected", 1, Some(1)),
    ) else {
        return Vec::new();
    };
    let exec = executor
        .iter()
        .find(|e| e.commands == 4096)
        .map_or(0.0, |e| e.us_per_task_file);
    let validation = refused_last - refused_first;
    let round_trip = one - one_refused;
    let rest = full - refused_last - round_trip - exec;
    let mut rows = vec![
        (
            "ioctl, allocation, copy-in of 128 KiB, header copy-out (driver; refused at command 0)"
                .to_string(),
            refused_first,
        ),
        (
            format!(
                "driver validation of the other 4095 commands ({:.0} ns each)",
                validation * 1e3 / 4095.0
            ),
            validation,
        ),
        (
            "fixed round trip to the card and back (1-command task file minus its refusal: doorbell, QEMU, xxcapd, interrupt, wake-up)".into(),
            round_trip,
        ),
        (
            format!(
                "the card executing 4096 commands (host executor, this run: {:.1} ns each)",
                exec * 1e3 / 4096.0
            ),
            exec,
        ),
        (
            "the rest, growing with length: scatterlists, xxcapd reading 128 KiB and writing it back, copy-out to user space".into(),
            rest,
        ),
    ];
    rows.push(("total: task file of 4096 commands".into(), full));
    if let (Some(lib), Some(build)) = (
        get("task-file-library", 4096, None),
        get("task-file-build", 4096, None),
    ) {
        rows.push((
            format!(
                "for comparison: the library's Card::run (builds, executes, parses): {:.0} µs, of which serializing {build:.0} µs",
                lib
            ),
            lib,
        ));
    }
    rows.into_iter()
        .map(|(part, us)| BreakdownRow {
            part,
            us,
            share: us / full,
        })
        .collect()
}

impl BenchReport {
    pub fn json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Step(format!("bench JSON: {e}")))
    }
}
