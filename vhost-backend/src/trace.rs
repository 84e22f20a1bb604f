//! `--trace FILE`: what the card did, event by event, with device
//! timestamps (DEVICE_TIME_NS), for people and for tests.
//!
//! Events: `task_file` (one per executed task file: its request number,
//! commands, error and failing index), `register` (a register the task file
//! changed: old and new value), `dma` (one per DMA transfer: direction,
//! card-RAM offset, bytes, result), `irq` (one per event record written into
//! the event queue: cause, sequence, frame), `frame` (one per frame the
//! capture engine produced or dropped) and `fault` (one per injected fault).
//!
//! Two formats, chosen by the file name:
//!
//! - a name ending in `.json`: Chrome's `trace_event` JSON (an array of
//!   events, timestamps in microseconds), which ui.perfetto.dev and
//!   chrome://tracing open: one process "xxcapd", one track per source
//!   (`requests`, `dma`, `capture`, `interrupts`, `faults`), task files and
//!   DMA transfers as slices, the rest as instants, registers as counters;
//! - any other name: JSON lines, one object per event, `{"t_ns": ..,
//!   "event": "..", ...}`.
//!
//! `--trace` may be given twice (one file of each kind). Writes go through a
//! buffer under one lock; the file is complete once xxcapd has exited (the
//! trace-event array is closed then). With no `--trace` the hooks cost one
//! branch.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use serde_json::{json, Value};

use crate::faults::Unit;

/// One traced event: device time and what happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceEvent {
    /// Device time (DEVICE_TIME_NS) in nanoseconds.
    pub t_ns: u64,
    #[serde(flatten)]
    pub what: What,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    TaskFile {
        /// REQUEST_COUNT of the request.
        request: u64,
        commands: u32,
        /// `XXCAP_TF_*` name of the result.
        error: String,
        /// Index of the failing command (the command count on success).
        index: u32,
        dur_ns: u64,
    },
    Register {
        name: String,
        old: u64,
        new: u64,
    },
    Dma {
        direction: String,
        card_offset: u64,
        bytes: u64,
        ok: bool,
        dur_ns: u64,
    },
    Irq {
        cause: String,
        sequence: u64,
        frame: u64,
    },
    Frame {
        frame: u64,
        /// `done`, `corrupt` (injected), `dropped`, or `failed`.
        result: String,
    },
    Fault {
        spec: String,
        unit: String,
        n: u64,
    },
}

impl What {
    fn name(&self) -> &'static str {
        match self {
            What::TaskFile { .. } => "task_file",
            What::Register { .. } => "register",
            What::Dma { .. } => "dma",
            What::Irq { .. } => "irq",
            What::Frame { .. } => "frame",
            What::Fault { .. } => "fault",
        }
    }

    /// The trace-event track (thread id) of the event.
    fn track(&self) -> u32 {
        match self {
            What::TaskFile { .. } | What::Register { .. } => 1,
            What::Dma { .. } => 2,
            What::Frame { .. } => 3,
            What::Irq { .. } => 4,
            What::Fault { .. } => 5,
        }
    }
}

const TRACKS: [(u32, &str); 5] = [
    (1, "requests"),
    (2, "dma"),
    (3, "capture"),
    (4, "interrupts"),
    (5, "faults"),
];

/// The trace format of a file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    TraceEvent,
}

impl Format {
    pub fn of(path: &Path) -> Format {
        if path.extension().is_some_and(|e| e == "json") {
            Format::TraceEvent
        } else {
            Format::JsonLines
        }
    }
}

struct Sink {
    format: Format,
    out: BufWriter<File>,
    /// Trace-event: events written so far (for the separators).
    written: u64,
}

impl Sink {
    fn write(&mut self, event: &TraceEvent) -> io::Result<()> {
        match self.format {
            Format::JsonLines => {
                serde_json::to_writer(&mut self.out, event)?;
                self.out.write_all(b"\n")
            }
            Format::TraceEvent => {
                let value = trace_event(event);
                self.item(&value)
            }
        }
    }

    fn item(&mut self, value: &Value) -> io::Result<()> {
        self.out
            .write_all(if self.written == 0 { b"[\n" } else { b",\n" })?;
        serde_json::to_writer(&mut self.out, value)?;
        self.written += 1;
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.format == Format::TraceEvent {
            self.out
                .write_all(if self.written == 0 { b"[]\n" } else { b"\n]\n" })?;
            self.written = 0;
        }
        self.out.flush()
    }
}

/// The name of an event record's cause.
pub fn cause_name(cause: u32) -> &'static str {
    use xxcapture_abi::{event, irq};
    match cause {
        irq::FRAME_DONE => "FRAME_DONE",
        irq::DMA_DONE => "DMA_DONE",
        irq::DMA_ERROR => "DMA_ERROR",
        irq::OVERFLOW => "OVERFLOW",
        irq::TEST => "TEST",
        event::LOST => "LOST",
        _ => "UNKNOWN",
    }
}

/// The Chrome trace-event object of `event`.
pub fn trace_event(event: &TraceEvent) -> Value {
    let ts = event.t_ns as f64 / 1000.0;
    let tid = event.what.track();
    let mut args = serde_json::to_value(&event.what).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut args {
        map.remove("event");
    }
    match &event.what {
        What::TaskFile { dur_ns, error, .. } => json!({
            "name": format!("task file {error}"), "cat": "task_file", "ph": "X",
            "ts": ts, "dur": *dur_ns as f64 / 1000.0, "pid": 1, "tid": tid, "args": args,
        }),
        What::Dma {
            dur_ns, direction, ..
        } => json!({
            "name": format!("dma {direction}"), "cat": "dma", "ph": "X",
            "ts": ts, "dur": *dur_ns as f64 / 1000.0, "pid": 1, "tid": tid, "args": args,
        }),
        What::Register { name, new, .. } => json!({
            "name": name, "cat": "register", "ph": "C", "ts": ts, "pid": 1,
            "args": { "value": new },
        }),
        What::Irq { cause, .. } => json!({
            "name": cause, "cat": "irq", "ph": "i", "s": "t",
            "ts": ts, "pid": 1, "tid": tid, "args": args,
        }),
        What::Frame { result, .. } => json!({
            "name": format!("frame {result}"), "cat": "frame", "ph": "i", "s": "t",
            "ts": ts, "pid": 1, "tid": tid, "args": args,
        }),
        What::Fault { spec, .. } => json!({
            "name": format!("fault {spec}"), "cat": "fault", "ph": "i", "s": "p",
            "ts": ts, "pid": 1, "tid": tid, "args": args,
        }),
    }
}

/// Writes traced events to one or more files.
pub struct Tracer {
    sinks: Mutex<Vec<Sink>>,
    paths: Vec<PathBuf>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("paths", &self.paths)
            .finish()
    }
}

impl Tracer {
    /// Creates (truncates) the files.
    pub fn create(paths: &[PathBuf]) -> io::Result<Tracer> {
        let mut sinks = Vec::new();
        for path in paths {
            let file = File::create(path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
            })?;
            let mut sink = Sink {
                format: Format::of(path),
                out: BufWriter::new(file),
                written: 0,
            };
            if sink.format == Format::TraceEvent {
                sink.item(&json!({
                    "name": "process_name", "ph": "M", "pid": 1,
                    "args": { "name": "xxcapd" },
                }))?;
                for (tid, name) in TRACKS {
                    sink.item(&json!({
                        "name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                        "args": { "name": name },
                    }))?;
                }
            }
            sinks.push(sink);
        }
        Ok(Tracer {
            sinks: Mutex::new(sinks),
            paths: paths.to_vec(),
        })
    }

    /// The files written.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Traces `what` at device time `t_ns`.
    pub fn emit(&self, t_ns: u64, what: What) {
        let event = TraceEvent { t_ns, what };
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        for sink in sinks.iter_mut() {
            if let Err(e) = sink.write(&event) {
                log::warn!("trace: cannot write a {} event: {e}", event.what.name());
            }
        }
    }

    /// An injected fault.
    pub fn fault(&self, t_ns: u64, spec: &str, unit: Unit, n: u64) {
        self.emit(
            t_ns,
            What::Fault {
                spec: spec.to_owned(),
                unit: unit.name().to_owned(),
                n,
            },
        );
    }

    /// Flushes the files and closes the trace-event arrays (at exit).
    pub fn finish(&self) {
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        for sink in sinks.iter_mut() {
            if let Err(e) = sink.finish() {
                log::warn!("trace: cannot finish the file: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
