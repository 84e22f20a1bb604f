//! `xxvm bench`: the guest's measurements of one benchmark VM run (ways to
//! reach the card, DMA, capture, the kernel's vivid driver), next to host
//! measurements taken in the same run (memcpy, the card's task-file
//! executor), turned into one report: markdown, JSON and a PNG plot of the
//! cost per command against the task file's length.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use xxcapture_results::{CaptureSummary, Record};

use crate::vm::Step;
use crate::{Error, Result};

/// Task-file lengths the guest measures (powers of two up to the maximum).
pub const BATCH_SIZES: [u32; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

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

/// The card's own share of a task file: `xxcapture-model` executing N
/// SCRATCH writes on this host, the work `xxcapd` does per request
/// (without the vhost-user transport). Best of five rounds.
#[derive(Clone, Debug, Serialize)]
pub struct ExecutorPoint {
    pub commands: u32,
    pub us_per_task_file: f64,
    pub ns_per_command: f64,
}

/// The host's load average, `/proc/loadavg`'s first three fields.
pub fn host_loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn host_executor() -> Vec<ExecutorPoint> {
    use xxcapture_model::abi::{regs, TaskFile, TfError};
    use xxcapture_model::{Card, CardConfig};
    let Ok(mut card) = Card::new(CardConfig::default()) else {
        return Vec::new();
    };
    let mut irq = card.interrupt_controller();
    BATCH_SIZES
        .iter()
        .filter_map(|&commands| {
            let mut tf = TaskFile::new();
            for i in 0..commands {
                tf.set_register(regs::SCRATCH, i);
            }
            let mut buf = tf.to_bytes();
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let started = Instant::now();
                let mut runs = 0u64;
                while started.elapsed() < Duration::from_millis(50) {
                    let outcome = card.execute(&mut buf, &mut irq, runs);
                    if outcome.error != TfError::Ok {
                        return None;
                    }
                    runs += 1;
                }
                best = best.min(started.elapsed().as_secs_f64() / runs as f64);
            }
            Some(ExecutorPoint {
                commands,
                us_per_task_file: best * 1e6,
                ns_per_command: best * 1e9 / f64::from(commands),
            })
        })
        .collect()
}

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

/// How far the guest's clock ran against the host's over one step: every
/// guest figure is timed with the guest's clock, which under TCG may drift
/// when the vCPU is saturated.
#[derive(Clone, Debug, Serialize)]
pub struct ClockCheck {
    pub step: String,
    pub host_s: f64,
    pub guest_s: f64,
    /// guest seconds per host second.
    pub rate: f64,
}

/// Pairs the guest's uptime at each step's end with the host time the line
/// arrived (console lines timed by the harness).
pub fn clock_checks(console: &[(Duration, String)]) -> Vec<ClockCheck> {
    let mut prev: Option<(f64, f64)> = None;
    let mut checks = Vec::new();
    for (at, line) in console {
        let Some(rest) = line.strip_prefix("XXCAP-STEP-END ") else {
            continue;
        };
        let uptime = rest
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("uptime="))
            .and_then(|v| v.parse::<f64>().ok());
        let Some(uptime) = uptime else {
            continue;
        };
        let host = at.as_secs_f64();
        if let Some((h0, g0)) = prev {
            let (host_s, guest_s) = (host - h0, uptime - g0);
            if host_s > 0.0 {
                checks.push(ClockCheck {
                    step: rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    host_s,
                    guest_s,
                    rate: guest_s / host_s,
                });
            }
        }
        prev = Some((host, uptime));
    }
    checks
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

        let breakdown_4096 = breakdown(&crossings, &executor);
        let capture: Vec<CaptureRow> = steps
            .iter()
            .filter(|s| s.name.starts_with("capture-"))
            .filter_map(capture)
            .collect();
        let vivid: Vec<VividRow> = steps
            .iter()
            .filter(|s| s.name.starts_with("vivid-"))
            .filter_map(vivid)
            .collect();
        let vivid_comparison = vivid
            .iter()
            .filter_map(|v| {
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
                })
            })
            .collect();
        BenchReport {
            host_load: String::new(),
            host_memcpy_gbps: memcpy_gbps,
            host_executor: executor,
            crossings,
            unavailable,
            references,
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
            "\n## vivid, the kernel's virtual capture driver (same VM, same run)\n"
        );
        if self.vivid.is_empty() {
            let _ = writeln!(out, "Not measured in this run.");
        } else {
            let _ = writeln!(
                out,
                "| run | preset fps | fps | distinct frames/s | periods skipped | catch-up frames | process CPU ms/frame | guest busy ms/frame |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
            for v in &self.vivid {
                let _ = writeln!(
                    out,
                    "| {} ({}x{} YUYV) | {:.2} | {:.1} | {:.1} | {} | {} | {:.2} | {:.2} |",
                    v.step,
                    v.width,
                    v.height,
                    v.timings_fps,
                    v.fps,
                    v.fps_distinct,
                    v.skipped,
                    v.repeated,
                    v.process_cpu_ms_per_frame,
                    v.guest_busy_ms_per_frame
                );
            }
            let _ = writeln!(out, "\n| size | vivid distinct frames/s | ours fps (same rate, DMA) | ours / vivid | ours free-running fps | vivid guest busy ms/frame | ours | vivid / ours |");
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
            for v in &self.vivid_comparison {
                let _ = writeln!(
                    out,
                    "| {}x{} | {:.1} | {:.1} | {:.2}x | {} | {:.2} | {} | {} |",
                    v.width,
                    v.height,
                    v.vivid_fps,
                    v.ours_fps,
                    v.fps_ratio,
                    opt(v.ours_free_fps, 1),
                    v.vivid_guest_busy_ms_per_frame,
                    opt(v.ours_guest_busy_ms_per_frame, 2),
                    v.guest_cpu_ratio.map_or("—".into(), |r| format!("{r:.2}x")),
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

    pub fn json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Step(format!("bench JSON: {e}")))
    }

    /// The PNG plot: µs per command against task-file length (log-log),
    /// with the single-access methods as horizontal lines.
    pub fn plot(&self, path: &Path) -> Result<()> {
        plot(self, path).map_err(|e| Error::Step(format!("plot {}: {e}", path.display())))
    }
}

fn plot(report: &BenchReport, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    use plotters::style::{register_font, FontStyle};

    // Text goes through ab_glyph with a bundled font: no system fonts.
    register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "the bundled DejaVu Sans font does not load")?;
    let r = &report.references;
    let curve: Vec<(f64, f64)> = report
        .batch
        .iter()
        .map(|b| (f64::from(b.commands), b.per_cmd_us))
        .collect();
    if curve.is_empty() {
        return Err("no task-file measurements to plot".into());
    }
    let executor: Vec<(f64, f64)> = report
        .host_executor
        .iter()
        .map(|e| (f64::from(e.commands), e.ns_per_command / 1e3))
        .collect();
    let levels: Vec<(String, f64, RGBColor)> = [
        (
            "config-space register",
            r.config_space_register_us,
            RGBColor(200, 30, 30),
        ),
        ("ioctl(NOP)", r.ioctl_nop_us, RGBColor(120, 120, 120)),
        (
            "edu register (in-process)",
            r.edu_register_us,
            RGBColor(20, 140, 40),
        ),
        (
            "status field via mmap",
            r.status_field_mmap_us,
            RGBColor(30, 90, 200),
        ),
    ]
    .into_iter()
    .filter_map(|(name, v, c)| Some((format!("{name}: {:.3} µs", v?), v?, c)))
    .collect();
    let all = curve
        .iter()
        .map(|p| p.1)
        .chain(executor.iter().map(|p| p.1))
        .chain(levels.iter().map(|l| l.1))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = (lo / 2.0, hi * 2.0);

    let root = BitMapBackend::new(path, (1100, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "xxcapture: cost per register command vs task-file length (guest, TCG)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((1f64..4096f64).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("commands per task file")
        .y_desc("µs per command")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            // Enough decimals for the tick's own magnitude (0.001, 0.01...).
            let decimals = if *v >= 1.0 {
                0
            } else {
                (-v.log10()).ceil().max(0.0) as usize
            };
            format!("{v:.decimals$}")
        })
        .label_style(("sans-serif", 15))
        .draw()?;

    if let Some(k) = r.config_space_register_us {
        for (factor, shade) in [(10.0, 160u8), (100.0, 200u8)] {
            let c = RGBColor(230, shade, shade);
            chart
                .draw_series(DashedLineSeries::new(
                    [(1.0, k / factor), (4096.0, k / factor)],
                    8,
                    6,
                    c.stroke_width(2),
                ))?
                .label(format!("config-space register / {factor:.0}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
    }
    for (name, v, c) in &levels {
        let c = *c;
        chart
            .draw_series(LineSeries::new(
                [(1.0, *v), (4096.0, *v)],
                c.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    if !executor.is_empty() {
        let c = RGBColor(150, 60, 170);
        chart
            .draw_series(LineSeries::new(executor.clone(), c.stroke_width(1)))?
            .label("the card's executor alone (host)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    let c = RGBColor(0, 0, 0);
    chart
        .draw_series(LineSeries::new(curve.clone(), c.stroke_width(3)))?
        .label("task file (EXEC, interrupt completion)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    chart.draw_series(curve.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    if let Some(p) = r.task_file_1_poll_us {
        let c = RGBColor(240, 140, 0);
        chart
            .draw_series([TriangleMarker::new((1.0, p), 8, c.filled())])?
            .label(format!("task file of 1, polled: {p:.1} µs"))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(r.markdown().contains("not reached"));
        assert!(r
            .json()
            .expect("json")
            .contains("\"config_space_register_us\": 100.0"));
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
