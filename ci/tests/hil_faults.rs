//! Injected faults in a booted VM: xxcapd starts with faults armed, the
//! guest (`xxcap-test fault-loop`) checks the driver's documented reaction
//! to each 20 times in a row in one boot, then that the card still
//! captures verified frames, that no page stays pinned and that the kernel
//! log is clean.
//!
//! One boot per test: DMA errors; requests that never complete; and, in
//! one boot together, lost, duplicated and storming event records, corrupt
//! and dropped frames and DMA latency (each counts its own unit, and the
//! guest checks them in turn). xxcapd writes a Perfetto trace of the runs
//! (`target/hil-logs/faults-*/trace.json`, open it in ui.perfetto.dev),
//! which the tests read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use xxcapture_hil::build::repo_root;
use xxcapture_hil::{Artifacts, FinishedRun, Mode, VmOptions};

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn injected_dma_errors_reach_user_space_as_dma_fault_and_the_card_recovers() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let log_name = "faults-dma-error";
    let trace = trace_path(log_name);
    let opts = VmOptions {
        mode: Mode::Faults,
        kernel_args: vec!["xxcap.fault=dma-error".into()],
        xxcapd_args: vec![
            "--fault".into(),
            "dma-error@2,every=2,times=20".into(),
            "--trace".into(),
            trace.to_string_lossy().into_owned(),
        ],
        ..VmOptions::default()
    };
    let run = FinishedRun::boot(&artifacts, opts, log_name, Duration::from_secs(600));
    run.assert_steps_passed(&[
        "load-driver",
        "fault-loop",
        "info",
        "capture-after-faults",
        "pins",
        "kernel-log",
    ]);
    let out = run.step("fault-loop").output.join("\n");
    eprintln!("{out}");
    assert!(
        out.contains("fault-loop dma-error: 20 injected errors"),
        "{out}"
    );
    run.assert_clean_exit();
    assert!(
        run.backend_log
            .contains("fault injected: dma-error@2,every=2,times=20 (DMA transfer 2)"),
        "xxcapd did not log the first injected fault:\n{}",
        run.backend_log
    );

    // The trace: a closed trace-event array with every injected fault.
    let events = read_trace(&trace);
    let counts = count_names(&events);
    eprintln!("trace {}: {counts:#?}", trace.display());
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert_eq!(
        count("fault dma-error@2,every=2,times=20"),
        20,
        "{counts:?}"
    );
    assert_eq!(count("dma from_card"), 20, "{counts:?}");
    assert_eq!(count("dma to_card"), 21, "{counts:?}");
    assert_eq!(count("task file DMA_FAULT"), 20, "{counts:?}");
    assert!(count("frame done") >= 10, "{counts:?}");
    assert!(count("task file OK") > 20, "{counts:?}");
    assert_monotonic(&events);
}

fn trace_path(log_name: &str) -> PathBuf {
    repo_root()
        .join("target/hil-logs")
        .join(log_name)
        .join("trace.json")
}

/// The trace xxcapd closed at exit: a trace-event JSON array.
fn read_trace(trace: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(trace).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    serde_json::from_str(&text).expect("a trace-event JSON array")
}

/// Events by name (register changes counted together).
fn count_names(events: &[Value]) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let name = e["name"].as_str().unwrap_or("?");
        let key = match e["ph"].as_str() {
            Some("C") => "register change".to_owned(),
            _ => name.to_owned(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Device times never go backwards on a track.
fn assert_monotonic(events: &[Value]) {
    let mut last: BTreeMap<u64, f64> = BTreeMap::new();
    for e in events.iter().filter(|e| e["ph"] == "X") {
        let tid = e["tid"].as_u64().expect("tid");
        let ts = e["ts"].as_f64().expect("ts");
        let prev = last.insert(tid, ts).unwrap_or(0.0);
        assert!(ts >= prev, "track {tid} goes back in time at {e}");
    }
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn a_request_the_card_never_completes_times_out_and_the_next_one_works() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let opts = VmOptions {
        mode: Mode::Faults,
        kernel_args: vec!["xxcap.fault=stuck".into()],
        xxcapd_args: vec!["--fault".into(), "stuck@10,every=2,times=20".into()],
        ..VmOptions::default()
    };
    let run = FinishedRun::boot(&artifacts, opts, "faults-stuck", Duration::from_secs(600));
    run.assert_steps_passed(&[
        "load-driver",
        "fault-loop",
        "info",
        "capture-after-faults",
        "pins",
        "kernel-log",
    ]);
    let out = run.step("fault-loop").output.join("\n");
    eprintln!("{out}");
    assert!(
        out.contains("fault-loop stuck: 20 requests never answered"),
        "{out}"
    );
    run.assert_clean_exit();
    assert!(
        run.backend_log
            .contains("will never complete (injected stuck)"),
        "xxcapd did not log the stuck request:\n{}",
        run.backend_log
    );
}

/// The faults of the one boot that checks event records, frames and DMA
/// latency, each counted in its own unit from xxcapd's start (the guest
/// checks the kinds in this order: no frame or DMA transfer happens before
/// its kind's turn, and no event record before the first).
const EVENT_FRAME_LATENCY_FAULTS: [(&str, u64); 6] = [
    ("irq-lost@3,every=6,times=20", 20),
    ("irq-dup@4,every=6,times=20", 20),
    ("irq-storm=1000@6,every=6,times=20", 20),
    ("corrupt-frame@3,every=10,times=20", 20),
    ("drop-frames@6..7,every=10,times=40", 40),
    ("dma-latency=50000us@1..20", 20),
];

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn lost_duplicated_storming_records_corrupt_dropped_frames_and_dma_latency_are_seen_as_documented()
{
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let log_name = "faults-events-frames-latency";
    let trace = trace_path(log_name);
    let mut xxcapd_args = Vec::new();
    for (spec, _) in EVENT_FRAME_LATENCY_FAULTS {
        xxcapd_args.push("--fault".to_owned());
        xxcapd_args.push(spec.to_owned());
    }
    xxcapd_args.push("--trace".into());
    xxcapd_args.push(trace.to_string_lossy().into_owned());
    let opts = VmOptions {
        mode: Mode::Faults,
        kernel_args: vec!["xxcap.fault=events,frames,dma-latency".into()],
        xxcapd_args,
        ..VmOptions::default()
    };
    let run = FinishedRun::boot(&artifacts, opts, log_name, Duration::from_secs(600));
    let out = run.step("fault-loop").output.join("\n");
    eprintln!("{out}");
    run.assert_steps_passed(&[
        "load-driver",
        "fault-loop",
        "info",
        "capture-after-faults",
        "pins",
        "kernel-log",
    ]);
    for line in [
        "fault-loop events: 20 rounds of 6 TEST records, each received as sequence s, s+1, s+3, s+4, s+5",
        "fault-loop frames: 20 windows of 8 consecutive frames",
        "fault-loop dma-latency: 20 transfers each OK",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    run.assert_clean_exit();

    let events = read_trace(&trace);
    let counts = count_names(&events);
    eprintln!("trace {}: {counts:#?}", trace.display());
    let count = |k: &str| counts.get(k).copied().unwrap_or(0);
    for (spec, times) in EVENT_FRAME_LATENCY_FAULTS {
        assert_eq!(count(&format!("fault {spec}")), times, "{spec}: {counts:?}");
        assert!(
            run.backend_log.contains(&format!("fault injected: {spec}")),
            "xxcapd did not log {spec}:\n{}",
            run.backend_log
        );
    }
    assert_eq!(count("frame corrupt"), 20, "{counts:?}");
    assert_eq!(count("frame dropped"), 40, "{counts:?}");
    // The 20 delayed transfers are the trace's first 20, each at least the
    // latency long (the card's own clock).
    let dma: Vec<f64> = events
        .iter()
        .filter(|e| e["cat"] == "dma")
        .map(|e| e["dur"].as_f64().expect("dur"))
        .collect();
    assert!(dma.len() > 20, "{} DMA transfers traced", dma.len());
    assert!(
        dma[..20].iter().all(|&us| us >= 50_000.0),
        "DMA durations (us): {:?}",
        &dma[..21]
    );
    assert_monotonic(&events);
}
