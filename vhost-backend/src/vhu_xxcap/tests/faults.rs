//! Injected faults seen from the guest's side of the queues, and the trace
//! of a known scenario checked event by event.

use std::path::PathBuf;

use serde_json::Value;
use xxcapture_abi::frame::FrameError;
use xxcapture_abi::{dma_dir, SgEntry};

use super::*;
use crate::faults::FaultSpec;
use crate::trace::Tracer;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xxcapd-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn arm(b: &XxcapBackend, spec: &str) {
    let spec: FaultSpec = spec.parse().expect("spec");
    b.device().faults().arm(spec).expect("armed");
}

/// A task-file request with scatter-gather entries `sg`.
fn exec_sg(
    g: &mut Guest,
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    b: &XxcapBackend,
    tf: &TaskFile,
    sg: &[SgEntry],
) -> TaskFileResult {
    let req = VqRequest {
        req_type: req_type::EXEC_TASK_FILE.into(),
        sg_count: (sg.len() as u32).into(),
        ..VqRequest::default()
    };
    let body = tf.to_bytes();
    let mut bytes = req.as_bytes().to_vec();
    bytes.extend_from_slice(&body);
    for e in sg {
        bytes.extend_from_slice(e.as_bytes());
    }
    let raw = g.request(vq, b, &bytes, (body.len() + 16) as u32);
    let st = VqStatus::read_from_bytes(&raw[body.len()..]).expect("status");
    assert_eq!(st.status.get(), vq_status::OK);
    TaskFileResult::parse(&raw[..body.len()]).expect("result")
}

/// The trace's events without their times: (event, the fields that name it).
fn summary(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|e| {
            let f = |k: &str| e[k].to_string();
            match e["event"].as_str().expect("event") {
                "task_file" => format!(
                    "task_file {} {} {} {}",
                    f("request"),
                    f("commands"),
                    f("error"),
                    f("index")
                ),
                "register" => format!("register {} {}->{}", f("name"), f("old"), f("new")),
                "dma" => format!(
                    "dma {} {} {} {}",
                    f("direction"),
                    f("card_offset"),
                    f("bytes"),
                    f("ok")
                ),
                "fault" => format!("fault {} {} {}", f("spec"), f("unit"), f("n")),
                other => format!("{other} {e}"),
            }
            .replace('"', "")
        })
        .collect()
}

#[test]
fn dma_error_and_stuck_request_are_injected_and_traced() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let b = capture_backend();
    let dir = temp("dma");
    let path = dir.join("trace.jsonl");
    let tracer = Arc::new(Tracer::create(std::slice::from_ref(&path)).expect("trace"));
    b.device().set_tracer(Arc::clone(&tracer));
    arm(&b, "dma-error@2");
    arm(&b, "stuck@3");
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);

    // Request 1: a register write.
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 5);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);

    // Request 2: two transfers; the second gets the injected error.
    let mut tf = TaskFile::new();
    tf.dma(true, dma_dir::TO_CARD, 0, 0, 4096);
    tf.dma(true, dma_dir::TO_CARD, 1, 4096, 4096);
    let sg = [SgEntry::new(0x30_0000, 4096), SgEntry::new(0x30_1000, 4096)];
    let res = exec_sg(&mut g, &vq, &b, &tf, &sg);
    assert_eq!((res.error, res.index), (TfError::DmaFault, 1));

    // Request 3 is taken and never completed.
    let mut tf = TaskFile::new();
    tf.set_register(regs::SCRATCH, 6);
    let req = VqRequest {
        req_type: req_type::EXEC_TASK_FILE.into(),
        ..VqRequest::default()
    };
    let mut bytes = req.as_bytes().to_vec();
    bytes.extend_from_slice(&tf.to_bytes());
    g.request(&vq, &b, &bytes, 64);
    assert_eq!(used_idx(&mem, &vq), 2, "the stuck request completed");

    // Request 4 works, and the card counts both faults.
    let mut tf = TaskFile::new();
    let injected = tf.get_register(regs::FAULTS_INJECTED);
    let scratch = tf.get_register(regs::SCRATCH);
    let res = g.exec(&vq, &b, &tf);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(res.value(injected), Some(2));
    assert_eq!(res.value(scratch), Some(5), "the stuck request never ran");
    assert_eq!(used_idx(&mem, &vq), 3);
    assert!(!b.device().faults().is_live());

    tracer.finish();
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .expect("trace")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let got = summary(&lines);
    // Registers in offset order, after the task file that changed them.
    // DMA_DONE | DMA_ERROR latch in the failing request and show in
    // INT_STATUS from the next one (SPEC §10); FAULTS_INJECTED is brought
    // up to date at the start of a request (the stuck one never ran).
    let expected = [
        "task_file 1 1 OK 1",
        "register SCRATCH 0->5",
        "register REQUEST_COUNT 0->1",
        "register COMMAND_COUNT 0->1",
        "dma to_card 0 4096 true",
        "fault dma-error@2 DMA transfer 2",
        "dma to_card 4096 4096 false",
        "task_file 2 2 DMA_FAULT 1",
        "register REQUEST_COUNT 1->2",
        "fault stuck@3 request 3",
        "task_file 3 2 OK 2",
        "register INT_STATUS 0->6",
        "register REQUEST_COUNT 2->3",
        "register COMMAND_COUNT 1->3",
        "register FAULTS_INJECTED 0->2",
    ];
    assert_eq!(got, expected, "{lines:#?}");
    // Times are device times: non-decreasing per source.
    let times: Vec<u64> = lines
        .iter()
        .filter(|e| e["event"] == "task_file")
        .map(|e| e["t_ns"].as_u64().expect("t_ns"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_and_dropped_frames_are_injected_by_frame_count() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem");
    let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let evt = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let strq = MockSplitQueue::create(&mem, GuestAddress(0xc000), 16);
    let b = capture_backend();
    // Frame periods 2 and 3 are dropped (dropped frames use no number);
    // period 6 makes frame 3, corrupt.
    arm(&b, "drop-frames@2..3");
    arm(&b, "corrupt-frame@6");
    let mut g = Guest::new(&vq, &evt, &strq, &mem, &b);
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_FORMAT, xxcapture_abi::format::NV12);
    tf.set_register(regs::FRAME_RATE, 0);
    start_capture(&mut tf);
    assert_eq!(g.exec(&vq, &b, &tf).error, TfError::Ok);
    wait_frames(&b, 6);
    let mut tf = TaskFile::new();
    stop_capture(&mut tf);
    let dropped = tf.get_register(regs::DROPPED_FRAMES);
    let injected = tf.get_register(regs::FAULTS_INJECTED);
    let res = g.exec(&vq, &b, &tf);
    assert_eq!(res.value(dropped), Some(2));
    assert_eq!(res.value(injected), Some(3));
    let sb = b.device().card_ram().read_status().expect("status");
    assert_eq!(sb.dropped.get(), 2);
    for n in 0..6u64 {
        let slot = usize::try_from(n).expect("slot");
        assert_eq!(sb.slots[slot].frame_number.get(), n);
        let bytes = b
            .device()
            .card_ram()
            .read(u64::from(sb.slot_size.get()) * n, 460_800)
            .expect("slot");
        let verified = verify(&bytes, PixelFormat::Nv12, 640, 480);
        if n == 3 {
            assert!(
                matches!(verified, Err(FrameError::Corrupt { .. })),
                "{verified:?}"
            );
        } else {
            assert_eq!(verified.expect("intact").frame_number, n);
        }
    }
}
