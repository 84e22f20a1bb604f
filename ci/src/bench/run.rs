//! Host measurements of a bench run: memcpy, the card's executor, the
//! host's load, and the guest's clock against the host's.

use std::time::{Duration, Instant};

use serde::Serialize;

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

/// The host a bench ran on, for the generated document: CPU model and
/// count, kernel, QEMU version and accelerator.
pub fn host_description(qemu_version: &str, accel: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{cpu} ({cpus} CPUs), Linux {kernel}, QEMU {qemu_version} ({accel})")
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}
