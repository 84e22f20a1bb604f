//! Measuring from the guest: sample percentiles and CPU accounts, shared
//! by the capture tools and the benchmarks.

use std::time::Duration;

/// Collected samples; percentiles by nearest rank.
#[derive(Clone, Debug, Default)]
pub struct Percentiles {
    samples: Vec<f64>,
    sorted: bool,
}

impl Percentiles {
    pub fn push(&mut self, value: f64) {
        self.samples.push(value);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.samples.sort_by(f64::total_cmp);
            self.sorted = true;
        }
    }

    /// The `p`th percentile (0..=100); NaN without samples.
    pub fn percentile(&mut self, p: f64) -> f64 {
        self.sort();
        if self.samples.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
    }

    pub fn max(&mut self) -> f64 {
        self.percentile(100.0)
    }

    pub fn mean(&self) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        self.samples.iter().sum::<f64>() / self.samples.len() as f64
    }
}

/// Busy (non-idle) CPU time of the whole guest, from /proc/stat, in
/// seconds. Under TCG this is the honest measure: it includes interrupt
/// handlers and kernel threads that a process's own counters miss.
pub fn busy_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    let total: u64 = ticks.iter().take(8).sum();
    // USER_HZ is 100 on Linux.
    Some((total - idle) as f64 / 100.0)
}

/// Guest CPU time this process has used, from the scheduler's own account
/// (`/proc/self/schedstat`), which also covers time spent in the kernel on
/// our behalf.
pub fn cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The whole guest's CPU account, from `/proc/uptime` (seconds up, and
/// seconds all CPUs spent idle). Busy time = wall time x CPUs - idle: it
/// includes kernel threads and interrupts, which a process's own account
/// misses (vivid renders its frames in a kernel thread).
#[derive(Clone, Copy, Debug)]
pub struct GuestCpu {
    up: f64,
    idle: f64,
    cpus: f64,
}

impl GuestCpu {
    pub fn now() -> Option<GuestCpu> {
        let text = std::fs::read_to_string("/proc/uptime").ok()?;
        let mut f = text.split_whitespace().map(|v| v.parse::<f64>().ok());
        let (up, idle) = (f.next()??, f.next()??);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Some(GuestCpu { up, idle, cpus })
    }

    /// Busy CPU seconds since `earlier`.
    pub fn busy_since(&self, earlier: &GuestCpu) -> f64 {
        ((self.up - earlier.up) * self.cpus - (self.idle - earlier.idle)).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut p = Percentiles::default();
        for v in 1..=100 {
            p.push(f64::from(v));
        }
        assert_eq!(p.percentile(50.0), 50.0);
        assert_eq!(p.percentile(99.0), 99.0);
        assert_eq!(p.max(), 100.0);
        assert_eq!(p.len(), 100);
        assert!(Percentiles::default().percentile(50.0).is_nan());
    }
}
