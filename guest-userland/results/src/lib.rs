//! The records the guest tools (`xxcap`, `xxcap-test`) report to the host,
//! defined once for both ends.
//!
//! A record travels as one line of the guest's output: [`MARKER`] followed
//! by the record as a JSON object whose `kind` names its type. The guest
//! prints it with [`Record::print`] next to its line for people; the host
//! finds it with [`Record::find`] wherever it sits in a line (a progress
//! bar on the serial console may share it).
//!
//! Every floating-point field may be NaN when the guest could not measure
//! it; JSON has no NaN, so it travels as `null` and reads back as NaN.

use serde::{Deserialize, Deserializer, Serialize};

/// What starts a record in the guest's output.
pub const MARKER: &str = "@xxcap-result ";

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The cost of one way of reaching the card (`xxcap-test bench-crossings`,
/// `bench-config-space`): rounds of operations, the fastest and the median.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Crossing {
    pub method: String,
    /// Register commands per operation (task files: their length).
    pub commands: u32,
    pub ops: u64,
    /// Fastest round, µs per operation (other load on the host only adds
    /// time, so this is the estimate of the cost itself).
    #[serde(deserialize_with = "nan_if_null")]
    pub per_op_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub per_cmd_us: f64,
    /// Median round, µs per operation.
    #[serde(deserialize_with = "nan_if_null")]
    pub median_op_us: f64,
    /// Which pass over the list of methods measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<u32>,
    /// Refused task files: commands the driver validated before refusing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validated: Option<u32>,
    /// Config-space reads: the value read and the BAR it was read through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bar: Option<u8>,
    /// Guest CPU per operation over the whole measurement, in µs: the
    /// measuring thread's own (schedstat) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_cpu_us: Option<f64>,
    /// ... and the whole guest's busy time (wall x vCPUs - idle), which
    /// also counts interrupts and what a spin takes from other threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_busy_us: Option<f64>,
}

/// A measurement that could not be taken, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unavailable {
    pub method: String,
    pub reason: String,
}

/// DMA throughput at one transfer size and direction (`bench-dma`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DmaThroughput {
    pub size_bytes: u64,
    /// `to-card` or `from-card`, as the guest names it.
    pub direction: String,
    pub transfers: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub gbps: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub us_per_transfer: f64,
    /// This process's CPU per transfer.
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_us_per_transfer: f64,
}

/// One `xxcap capture` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureSummary {
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// Requested rate; 0: free-running.
    pub rate: u32,
    /// `dma` or `mmap`.
    pub mode: String,
    /// Frames whose stamp verified (0 without `--verify`).
    pub verified: u64,
    pub corrupt: u64,
    pub missed: u64,
    pub card_dropped: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub fps: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub mb_per_s: f64,
    /// The capturing process's own CPU (schedstat).
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_ms_per_frame: f64,
}

/// One `xxcap stream` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub rate: u32,
    pub buffers: u32,
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub fps: f64,
    /// Frames whose stamp verified (0 without `--verify`).
    pub verified: u64,
    pub corrupt: u64,
    pub dropped: u64,
    /// The card's DROPPED_FRAMES register at the end.
    pub dropped_register: u64,
    pub skipped: u64,
    pub out_of_order: u64,
    pub lost_records: u64,
    pub buffer_errors: u64,
    /// Driver to process delivery latency.
    #[serde(deserialize_with = "nan_if_null")]
    pub latency_p50_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub latency_p99_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub latency_max_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_ms_per_frame: f64,
    /// The driver's pinned pages while streaming and after the stop.
    pub pinned_while_streaming: Option<u64>,
    pub pinned_after: Option<u64>,
}

fn vivid_driver() -> String {
    "vivid".into()
}

/// One V4L2 streaming run (`bench-vivid`): the kernel's vivid driver, or
/// the card's own V4L2 node measured the same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VividRun {
    /// `vivid` or `xxcapture`.
    #[serde(default = "vivid_driver")]
    pub driver: String,
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// Frame rate of the DV timings preset vivid was given.
    #[serde(deserialize_with = "nan_if_null")]
    pub timings_fps: f64,
    pub frames: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub fps: f64,
    /// Frame periods vivid missed (sequence gaps) while we captured.
    pub skipped: u64,
    /// Frames vivid rendered back to back to catch up (same sequence).
    pub repeated: u64,
    /// Buffers shorter than a frame.
    pub short: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_ms_per_frame: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub guest_busy_ms_per_frame: f64,
    pub frame_bytes: u64,
}

/// Interrupt latency to a user thread along one path (`bench-irq`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IrqLatency {
    pub method: String,
    pub events: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p50_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p99_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub max_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_us: f64,
}

/// The sustained event-record rate to one reader (`bench-irq`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IrqSustained {
    pub raised: u64,
    pub received: u64,
    pub lost: u64,
    pub gaps: u64,
    #[serde(deserialize_with = "nan_if_null")]
    pub events_per_s: f64,
    /// TEST raises per task file.
    #[serde(default)]
    pub burst: u64,
    /// Records raised and not yet read the run allowed at most.
    #[serde(default)]
    pub unread_limit: u64,
}

/// TEST interrupts raised and received (`irq-test`): every count as each
/// side saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IrqTestSummary {
    pub raised: u64,
    pub singles: u32,
    pub bursts: u32,
    pub burst_size: u32,
    pub received: u64,
    pub extra: u64,
    pub gaps: u64,
    pub out_of_order: u64,
    pub lost: u64,
    pub other: u64,
    /// Growth of the card's EVENT_COUNT and EVENTS_LOST registers.
    pub event_count_delta: u64,
    pub events_lost_delta: u64,
    /// Growth of the driver's `events` sysfs counter, if readable.
    pub driver_events_delta: Option<u64>,
}

/// One row of synchronous against asynchronous DMA (`bench-sync-async`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncAsyncRow {
    /// `sync` or `async`.
    pub model: String,
    /// Requests per second asked for; `None`: as fast as possible.
    pub target_per_s: Option<u32>,
    #[serde(deserialize_with = "nan_if_null")]
    pub achieved_per_s: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub cpu_us_per_request: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p50_us: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p99_us: f64,
}

/// The lowest rate at which the asynchronous model wins, as the guest
/// judged it (`max` or a number); `None`: it never did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncAsyncCrossover {
    pub rate: Option<String>,
}

/// The end of `selftest`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelftestSummary {
    pub passed: u32,
    pub failed: u32,
}

/// The end of `fuzz-driver`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FuzzSummary {
    pub operations: u64,
    pub processes: u32,
    pub threads: u32,
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    /// The card's ID register read after the run.
    pub card_id: u32,
}

/// The end of `completion-flood`: an open's record queue overflowed by
/// device events while task files and capture buffers were outstanding,
/// and what came back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompletionFlood {
    /// The open's event_queue_depth during the flood.
    pub depth: u64,
    pub rounds: u32,
    pub task_files_submitted: u64,
    pub task_files_completed: u64,
    /// Task files whose completion carried an error.
    pub task_file_errors: u64,
    /// Completions whose request id was not one submitted (or came twice).
    pub task_file_strays: u64,
    pub buffers_queued: u64,
    pub buffers_returned: u64,
    /// Buffer completions whose request id was not one queued (or came twice).
    pub buffer_strays: u64,
    /// Buffers returned holding a frame (the rest came back CANCELLED).
    pub frames: u64,
    /// TEST records raised, received, and counted lost by LOST records.
    pub raised: u64,
    pub received: u64,
    pub lost: u64,
    /// The driver's events_dropped counter, over the run.
    pub events_dropped_delta: u64,
    /// The card's EVENTS_LOST register, over the run (its own backlog).
    pub card_events_lost_delta: u64,
    /// pinned_pages once every record was read (None: unreadable).
    pub pinned_pages_after: Option<u64>,
    /// With 64 completed task files unread, the 65th SUBMIT failed ENOSPC.
    pub enospc_with_64_unread: bool,
    /// ... and succeeded once one record was read.
    pub submit_after_one_read: bool,
}

/// Every record a guest tool reports to the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Record {
    Crossing(Crossing),
    CrossingUnavailable(Unavailable),
    DmaThroughput(DmaThroughput),
    Capture(CaptureSummary),
    Stream(StreamSummary),
    Vivid(VividRun),
    VividUnavailable(Unavailable),
    IrqLatency(IrqLatency),
    IrqUnavailable(Unavailable),
    IrqSustained(IrqSustained),
    IrqTest(IrqTestSummary),
    SyncAsync(SyncAsyncRow),
    SyncAsyncCrossover(SyncAsyncCrossover),
    Selftest(SelftestSummary),
    FuzzDriver(FuzzSummary),
    CompletionFlood(CompletionFlood),
}

impl Record {
    /// The record as one line of output: the marker, then JSON.
    pub fn line(&self) -> String {
        // A record holds only strings, numbers and options: it always
        // serializes.
        let json = serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        format!("{MARKER}{json}")
    }

    /// Prints [`Record::line`] on standard output.
    pub fn print(&self) {
        println!("{}", self.line());
    }

    /// The record in `line`, if it holds one (anywhere in the line); an
    /// error if it holds a marker followed by something unreadable.
    pub fn find(line: &str) -> Option<Result<Record, serde_json::Error>> {
        let at = line.find(MARKER)?;
        Some(serde_json::from_str(line[at + MARKER.len()..].trim_end()))
    }

    /// Every record in `lines`, in order; lines without one are skipped and
    /// so are unreadable ones (a console line cut short).
    pub fn all<'a>(lines: impl IntoIterator<Item = &'a String>) -> Vec<Record> {
        lines
            .into_iter()
            .filter_map(|l| Record::find(l)?.ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_line_and_nan_travels_as_null() {
        let r = Record::Capture(CaptureSummary {
            frames: 300,
            width: 1920,
            height: 1080,
            format: "yuyv".into(),
            rate: 60,
            mode: "dma".into(),
            verified: 300,
            corrupt: 0,
            missed: 1,
            card_dropped: 2,
            fps: 59.9,
            mb_per_s: 248.0,
            cpu_ms_per_frame: f64::NAN,
        });
        let line = r.line();
        assert!(
            line.starts_with("@xxcap-result {\"kind\":\"capture\","),
            "{line}"
        );
        assert!(line.contains("\"cpu_ms_per_frame\":null"), "{line}");
        let back = Record::find(&format!("[=====>   ] 12/300 {line}"))
            .expect("found")
            .expect("parsed");
        let Record::Capture(c) = back else {
            panic!("not a capture: {back:?}")
        };
        assert_eq!((c.frames, c.missed, c.card_dropped), (300, 1, 2));
        assert!(c.cpu_ms_per_frame.is_nan());
    }

    #[test]
    fn lines_without_a_record_are_skipped_and_bad_ones_reported() {
        assert!(Record::find("capture: 300 frames").is_none());
        assert!(matches!(
            Record::find("@xxcap-result {\"kind\":"),
            Some(Err(_))
        ));
        let lines = vec![
            "noise".to_string(),
            Record::Selftest(SelftestSummary {
                passed: 20,
                failed: 0,
            })
            .line(),
            "@xxcap-result {cut".to_string(),
        ];
        assert_eq!(
            Record::all(&lines),
            vec![Record::Selftest(SelftestSummary {
                passed: 20,
                failed: 0
            })]
        );
    }
}
