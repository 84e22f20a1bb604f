//! Injected faults in a booted VM (DMA errors, requests that never
//! complete): xxcapd starts with a fault armed, the
//! guest checks the driver's documented reaction 20 times in a row in one
//! boot, then that the card still captures verified frames, that no page
//! stays pinned and that the kernel log is clean. xxcapd writes a Perfetto
//! trace of the run (`target/hil-logs/faults-dma-error/trace.json`, open
//! it in ui.perfetto.dev), which the test reads back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use xxcapture_hil::build::repo_root;
use xxcapture_hil::{Artifacts, FinishedRun, Mode, VmOptions};

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn injected_dma_errors_reach_user_space_as_dma_fault_and_the_card_recovers() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let log_name = "faults-dma-error";
    let trace = repo_root()
        .join("target/hil-logs")
        .join(log_name)
        .join("trace.json");
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
    let text =
        std::fs::read_to_string(&trace).unwrap_or_else(|e| panic!("{}: {e}", trace.display()));
    let events: Vec<Value> = serde_json::from_str(&text).expect("a trace-event JSON array");
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        let name = e["name"].as_str().unwrap_or("?");
        let key = match e["ph"].as_str() {
            Some("C") => "register change".to_owned(),
            _ => name.to_owned(),
        };
        *counts.entry(key).or_default() += 1;
    }
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
    // Device times never go backwards on a track.
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
