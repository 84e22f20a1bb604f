//! Fault injection: faults armed by `--fault SPEC` or the control socket
//! ([`crate::control`]) and fired by counts, never by wall time, so that a
//! run with the same faults and the same guest behaves the same way.
//!
//! Every fault counts events of one unit from the moment it is armed
//! (1-based; units are counted only while some fault is armed): DMA transfers (a DMA command whose checks passed and whose
//! data is about to move), frame periods of the capture engine (one per
//! frame it sets out to produce, ring or stream), event records delivered
//! to the event queue, and command-queue requests taken off the queue.
//!
//! The grammar (`FaultSpec::from_str`):
//!
//! ```text
//! SPEC  := KIND ['=' VALUE] ['@' N ['..' M]] [',every=' P] [',times=' C]
//! dma-error@N          DMA transfer N fails: its command reports DMA_FAULT
//! dma-latency=DUR      every DMA transfer (or those of @N..M) waits DUR
//!                      (ns, us, ms or s; at most 10s) before moving data
//! corrupt-frame@N      frame period N produces a frame whose last byte is
//!                      flipped: its stamp's CRC no longer matches
//! drop-frames@N..M     frame periods N to M produce nothing: each is
//!                      counted in DROPPED_FRAMES with an OVERFLOW record
//! irq-lost@N           event record N is never delivered (a sequence gap)
//! irq-dup@N            event record N is delivered twice (when the buffer
//!                      has room for the copy)
//! irq-storm=K@N        with event record N, K extra used-buffer
//!                      notifications on the event queue (default 1000,
//!                      at most 100000)
//! stuck@N              command-queue request N is never completed
//! ```
//!
//! `@N..M` widens any of them to a range; `,every=P` repeats the window
//! every P units (so `dma-error@3,every=10` fails transfers 3, 13, 23...),
//! and `,times=C` ends it after C injections.
//! Every injected fault bumps one counter, shown in the FAULTS_INJECTED
//! register, and is logged (and traced).
//!
//! Cost when nothing is armed: one relaxed atomic load per hook.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::warn;
use thiserror::Error;

use crate::trace::Tracer;

/// Longest latency `dma-latency` accepts.
pub const MAX_LATENCY: Duration = Duration::from_secs(10);
/// Most notifications `irq-storm` sends per firing.
pub const MAX_STORM: u32 = 100_000;
/// Notifications of an `irq-storm` without `=K`.
pub const DEFAULT_STORM: u32 = 1000;
/// Most faults armed at once.
pub const MAX_ARMED: usize = 64;

/// What a fault counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unit {
    DmaTransfer,
    Frame,
    EventRecord,
    Request,
}

impl Unit {
    fn index(self) -> usize {
        match self {
            Unit::DmaTransfer => 0,
            Unit::Frame => 1,
            Unit::EventRecord => 2,
            Unit::Request => 3,
        }
    }

    /// The unit's name in logs and traces.
    pub fn name(self) -> &'static str {
        match self {
            Unit::DmaTransfer => "DMA transfer",
            Unit::Frame => "frame period",
            Unit::EventRecord => "event record",
            Unit::Request => "request",
        }
    }
}

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    DmaError,
    DmaLatency,
    CorruptFrame,
    DropFrames,
    IrqLost,
    IrqDup,
    IrqStorm,
    Stuck,
}

impl FaultKind {
    const ALL: [FaultKind; 8] = [
        FaultKind::DmaError,
        FaultKind::DmaLatency,
        FaultKind::CorruptFrame,
        FaultKind::DropFrames,
        FaultKind::IrqLost,
        FaultKind::IrqDup,
        FaultKind::IrqStorm,
        FaultKind::Stuck,
    ];

    /// The kind's name in the grammar.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::DmaError => "dma-error",
            FaultKind::DmaLatency => "dma-latency",
            FaultKind::CorruptFrame => "corrupt-frame",
            FaultKind::DropFrames => "drop-frames",
            FaultKind::IrqLost => "irq-lost",
            FaultKind::IrqDup => "irq-dup",
            FaultKind::IrqStorm => "irq-storm",
            FaultKind::Stuck => "stuck",
        }
    }

    /// What the kind counts.
    pub fn unit(self) -> Unit {
        match self {
            FaultKind::DmaError | FaultKind::DmaLatency => Unit::DmaTransfer,
            FaultKind::CorruptFrame | FaultKind::DropFrames => Unit::Frame,
            FaultKind::IrqLost | FaultKind::IrqDup | FaultKind::IrqStorm => Unit::EventRecord,
            FaultKind::Stuck => Unit::Request,
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// One fault: its kind, when it fires, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    /// First unit it fires at (1-based, counted from arming).
    pub first: u64,
    /// Last unit of the window (inclusive); `u64::MAX`: no end.
    pub last: u64,
    /// The window repeats every `every` units.
    pub every: Option<u64>,
    /// It fires at most `times` times.
    pub times: Option<u64>,
    /// `dma-latency`: the wait per transfer.
    pub latency: Duration,
    /// `irq-storm`: extra notifications per firing.
    pub storm: u32,
}

/// Why a SPEC is refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("fault {spec:?}: {why}")]
pub struct SpecError {
    pub spec: String,
    pub why: String,
}

fn kinds_list() -> String {
    FaultKind::ALL
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_count(text: &str, what: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err(format!("{what} counts from 1, not 0")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{what} {text:?} is not a positive whole number")),
    }
}

/// Parses `2ms`, `500us`, `1s`, `100ns` (a number, then the unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("duration {text:?} is not a number with ns, us, ms or s"))?;
    let d = match unit {
        "ns" => Duration::from_nanos(value),
        "us" => Duration::from_micros(value),
        "ms" => Duration::from_millis(value),
        "s" => Duration::from_secs(value),
        _ => return Err(format!("duration {text:?} needs a unit: ns, us, ms or s")),
    };
    if d > MAX_LATENCY {
        return Err(format!("duration {text:?} is above {MAX_LATENCY:?}"));
    }
    Ok(d)
}

impl FromStr for FaultSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let err = |why: String| SpecError {
            spec: text.to_owned(),
            why,
        };
        let mut parts = text.split(',');
        let body = parts.next().unwrap_or_default();
        let (mut every, mut times) = (None, None);
        for opt in parts {
            if let Some(p) = opt.strip_prefix("every=") {
                every = Some(parse_count(p, "every").map_err(err)?);
            } else if let Some(c) = opt.strip_prefix("times=") {
                times = Some(parse_count(c, "times").map_err(err)?);
            } else {
                return Err(err(format!("unknown option {opt:?} (every=P or times=C)")));
            }
        }
        let (head, at) = match body.split_once('@') {
            Some((head, at)) => (head, Some(at)),
            None => (body, None),
        };
        let (name, value) = match head.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (head, None),
        };
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| err(format!("unknown kind {name:?} (one of {})", kinds_list())))?;
        let (first, last) = match at {
            Some(at) => match at.split_once("..") {
                Some((n, m)) => {
                    let n = parse_count(n, "N").map_err(err)?;
                    let m = parse_count(m, "M").map_err(err)?;
                    if m < n {
                        return Err(err(format!("range {n}..{m} ends before it starts")));
                    }
                    (n, m)
                }
                None => {
                    let n = parse_count(at, "N").map_err(err)?;
                    (n, n)
                }
            },
            None if kind == FaultKind::DmaLatency => (1, u64::MAX),
            None => return Err(err(format!("{name} needs @N (when it fires)"))),
        };
        if every.is_some_and(|p| last != u64::MAX && p <= last - first) {
            return Err(err("every=P must be longer than the window N..M".into()));
        }
        let mut spec = FaultSpec {
            kind,
            first,
            last,
            every,
            times,
            latency: Duration::ZERO,
            storm: 0,
        };
        match (kind, value) {
            (FaultKind::DmaLatency, Some(v)) => spec.latency = parse_duration(v).map_err(err)?,
            (FaultKind::DmaLatency, None) => {
                return Err(err(
                    "dma-latency needs =DURATION (e.g. dma-latency=2ms)".into()
                ))
            }
            (FaultKind::IrqStorm, v) => {
                spec.storm = match v {
                    None => DEFAULT_STORM,
                    Some(v) => match v.parse::<u32>() {
                        Ok(k) if (1..=MAX_STORM).contains(&k) => k,
                        _ => return Err(err(format!("irq-storm={v}: K must be 1..={MAX_STORM}"))),
                    },
                }
            }
            (_, Some(_)) => return Err(err(format!("{name} takes no =VALUE"))),
            (_, None) => {}
        }
        Ok(spec)
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        match self.kind {
            FaultKind::DmaLatency => write!(f, "={}us", self.latency.as_micros())?,
            FaultKind::IrqStorm => write!(f, "={}", self.storm)?,
            _ => {}
        }
        match (self.first, self.last) {
            (1, u64::MAX) => {}
            (n, m) if n == m => write!(f, "@{n}")?,
            (n, u64::MAX) => write!(f, "@{n}..")?,
            (n, m) => write!(f, "@{n}..{m}")?,
        }
        if let Some(p) = self.every {
            write!(f, ",every={p}")?;
        }
        if let Some(c) = self.times {
            write!(f, ",times={c}")?;
        }
        Ok(())
    }
}

impl FaultSpec {
    /// Whether the `n`th unit since arming (1-based) is in the window.
    pub fn fires_at(&self, n: u64) -> bool {
        if n < self.first {
            return false;
        }
        let offset = n - self.first;
        let offset = match self.every {
            Some(p) => offset % p,
            None => offset,
        };
        offset <= self.last - self.first
    }

    /// Whether it can never fire after unit `n`.
    fn spent_after(&self, n: u64) -> bool {
        self.every.is_none() && n >= self.last
    }
}

/// What fired at one unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fired {
    kinds: u32,
    /// `dma-latency`: the wait.
    pub latency: Duration,
    /// `irq-storm`: extra notifications.
    pub storm: u32,
}

impl Fired {
    /// Nothing fired.
    pub const NONE: Fired = Fired {
        kinds: 0,
        latency: Duration::ZERO,
        storm: 0,
    };

    pub fn has(&self, kind: FaultKind) -> bool {
        self.kinds & kind.bit() != 0
    }

    pub fn any(&self) -> bool {
        self.kinds != 0
    }
}

/// An armed fault and what it did so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Armed {
    pub spec: FaultSpec,
    /// The unit count when it was armed.
    base: u64,
    /// Times it fired.
    pub injected: u64,
    /// It can fire no more.
    pub spent: bool,
}

#[derive(Default)]
struct State {
    counts: [u64; 4],
    armed: Vec<Armed>,
}

/// The card's armed faults and the count of faults injected.
#[derive(Default)]
pub struct Faults {
    /// Some fault that can still fire is armed: the hooks' one branch.
    live: AtomicBool,
    injected: AtomicU64,
    state: Mutex<State>,
    tracer: Mutex<Option<Arc<Tracer>>>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("live", &self.live.load(Ordering::Relaxed))
            .field("injected", &self.injected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Faults {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where injected faults are also traced.
    pub fn set_tracer(&self, tracer: Option<Arc<Tracer>>) {
        *self.tracer.lock().unwrap_or_else(PoisonError::into_inner) = tracer;
    }

    /// Whether a fault that can still fire is armed (cheap: hooks call
    /// [`Self::tick`] only then).
    #[inline]
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// Faults injected since the daemon started (FAULTS_INJECTED).
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Arms `spec`; its count starts now.
    pub fn arm(&self, spec: FaultSpec) -> Result<(), String> {
        let mut st = self.state();
        st.armed.retain(|a| !a.spent);
        if st.armed.len() >= MAX_ARMED {
            return Err(format!(
                "{MAX_ARMED} faults are armed already; clear some first"
            ));
        }
        let base = st.counts[spec.kind.unit().index()];
        log::info!("fault armed: {spec}");
        st.armed.push(Armed {
            spec,
            base,
            injected: 0,
            spent: false,
        });
        self.live.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Disarms every fault (FAULTS_INJECTED keeps its count).
    pub fn clear(&self) {
        let mut st = self.state();
        st.armed.clear();
        self.live.store(false, Ordering::Relaxed);
        log::info!("faults cleared");
    }

    /// The armed faults (spent ones included until the next arm or clear).
    pub fn list(&self) -> Vec<Armed> {
        self.state().armed.clone()
    }

    /// Counts one unit; returns the faults that fire at it (each counted,
    /// logged and traced as injected).
    pub fn tick(&self, unit: Unit, device_time_ns: u64) -> Fired {
        let mut fired = Fired::NONE;
        let mut names = Vec::new();
        {
            let mut st = self.state();
            st.counts[unit.index()] += 1;
            let count = st.counts[unit.index()];
            let mut live = false;
            for a in st.armed.iter_mut().filter(|a| !a.spent) {
                if a.spec.kind.unit() == unit {
                    let nth = count - a.base;
                    if a.spec.fires_at(nth) {
                        fired.kinds |= a.spec.kind.bit();
                        fired.latency = fired.latency.max(a.spec.latency);
                        fired.storm = fired.storm.saturating_add(a.spec.storm);
                        a.injected += 1;
                        names.push((a.spec.to_string(), nth));
                    }
                    a.spent =
                        a.spec.spent_after(nth) || a.spec.times.is_some_and(|c| a.injected >= c);
                }
                live |= !a.spent;
            }
            self.live.store(live, Ordering::Relaxed);
        }
        if !names.is_empty() {
            self.injected
                .fetch_add(names.len() as u64, Ordering::Relaxed);
            let tracer = self
                .tracer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for (spec, nth) in names {
                warn!("fault injected: {spec} ({} {nth})", unit.name());
                if let Some(t) = &tracer {
                    t.fault(device_time_ns, &spec, unit, nth);
                }
            }
        }
        fired
    }

    /// Units counted so far (tests).
    pub fn counted(&self, unit: Unit) -> u64 {
        self.state().counts[unit.index()]
    }
}

#[cfg(test)]
mod tests;
