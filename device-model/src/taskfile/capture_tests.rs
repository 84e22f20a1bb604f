//! The capture state machine: start/stop, ring geometry, BUSY, the file
//! source.

use xxcapture_abi::frame::PixelFormat;
use xxcapture_abi::{control, format, regs, source, status, TaskFile, TaskFileResult, TfError};

use crate::{Card, CardConfig, FrameGeometry, CAPTURE_CARD_CAPS};

fn file() -> FrameGeometry {
    FrameGeometry {
        format: PixelFormat::Nv12,
        width: 1280,
        height: 720,
    }
}

fn card_with(file_source: Option<FrameGeometry>) -> Card {
    Card::new(CardConfig {
        capabilities: CAPTURE_CARD_CAPS,
        file_source,
        ..CardConfig::default()
    })
    .expect("card")
}

fn run(card: &mut Card, tf: &TaskFile) -> TaskFileResult {
    let mut bytes = tf.to_bytes();
    card.execute(&mut bytes, &mut card.interrupt_controller(), 1_000);
    TaskFileResult::parse(&bytes).expect("result parses")
}

fn start(tf: &mut TaskFile) -> usize {
    tf.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE)
}

fn stop(tf: &mut TaskFile) -> usize {
    tf.set_to_register(regs::CONTROL, 0, control::CAPTURE)
}

#[test]
fn start_sets_the_ring_and_stop_clears_capturing() {
    let mut c = card_with(None);
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_WIDTH, 1920);
    tf.set_register(regs::FRAME_HEIGHT, 1080);
    start(&mut tf);
    let slots = tf.get_register(regs::RING_SLOTS);
    let slot_size = tf.get_register(regs::RING_SLOT_SIZE);
    let st = tf.get_register(regs::STATUS);
    let res = run(&mut c, &tf);
    assert_eq!(res.error, TfError::Ok);
    // 1920x1080 YUYV = 4147200 bytes = 1012.5 pages -> 1013 pages.
    assert_eq!(res.value(slot_size), Some(1013 * 4096));
    assert_eq!(res.value(slots), Some((64 << 20) / (1013 * 4096)));
    assert_eq!(
        res.value(st),
        Some(u64::from(status::READY | status::CAPTURING))
    );
    let session = c.capture_session().expect("capturing");
    assert_eq!(session.generation, 1);
    assert_eq!(session.fps, 30);
    assert_eq!(session.ring.frame_size, 4_147_200);
    assert_eq!(
        c.identity().status.get() & status::CAPTURING,
        status::CAPTURING
    );

    c.set_capture_progress(1, 17, 2);
    let mut tf = TaskFile::new();
    let frames = tf.get_register(regs::FRAME_COUNTER);
    let dropped = tf.get_register(regs::DROPPED_FRAMES);
    stop(&mut tf);
    let st = tf.get_register(regs::STATUS);
    let res = run(&mut c, &tf);
    assert_eq!(res.value(frames), Some(17));
    assert_eq!(res.value(dropped), Some(2));
    assert_eq!(res.value(st), Some(u64::from(status::READY)));
    assert_eq!(c.capture_session(), None);
    // The final count of a stopped session still lands; after a reset not.
    c.set_capture_progress(1, 18, 2);
    assert_eq!(c.registers().peek(regs::FRAME_COUNTER), 18);
    c.set_capture_progress(0, 99, 99);
    assert_eq!(c.registers().peek(regs::FRAME_COUNTER), 18);
    let mut reset = c.clone();
    reset.reset(0);
    reset.set_capture_progress(1, 99, 99);
    assert_eq!(reset.registers().peek(regs::FRAME_COUNTER), 0);

    // A new start zeroes the counters and gets a new generation.
    let mut tf = TaskFile::new();
    start(&mut tf);
    let frames = tf.get_register(regs::FRAME_COUNTER);
    let res = run(&mut c, &tf);
    assert_eq!(res.value(frames), Some(0));
    assert_eq!(c.capture_session().map(|s| s.generation), Some(2));
    c.set_capture_progress(1, 99, 99);
    assert_eq!(c.registers().peek(regs::FRAME_COUNTER), 0);
    // Setting CAPTURE again while running changes nothing.
    let mut tf = TaskFile::new();
    start(&mut tf);
    run(&mut c, &tf);
    assert_eq!(c.capture_session().map(|s| s.generation), Some(2));
}

#[test]
fn frame_registers_are_busy_while_capturing() {
    let mut c = card_with(Some(file()));
    let mut tf = TaskFile::new();
    start(&mut tf);
    assert_eq!(run(&mut c, &tf).error, TfError::Ok);
    for (reg, value) in [
        (regs::FRAME_FORMAT, format::NV12),
        (regs::FRAME_FORMAT, format::YUYV), // same value: still busy
        (regs::FRAME_WIDTH, 800),
        (regs::FRAME_HEIGHT, 600),
        (regs::FRAME_RATE, 60),
        (regs::FRAME_SOURCE, source::FILE),
    ] {
        let mut tf = TaskFile::new();
        tf.set_register(regs::SCRATCH, 5);
        tf.set_register(reg, value);
        let res = run(&mut c, &tf);
        assert_eq!((res.error, res.index), (TfError::Busy, 1), "reg {reg:#x}");
        let mut tf = TaskFile::new();
        tf.clear_register(reg);
        let err = run(&mut c, &tf).error;
        assert!(matches!(err, TfError::Busy | TfError::BadValue), "{err:?}");
    }
    assert_eq!(c.registers().peek(regs::SCRATCH), 0);
    // A bad value is still BAD_VALUE (check 8 before BUSY).
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_WIDTH, 801);
    assert_eq!(run(&mut c, &tf).error, TfError::BadValue);
    // Stop, change, start again in one task file.
    let mut tf = TaskFile::new();
    stop(&mut tf);
    tf.set_register(regs::FRAME_FORMAT, format::RGB24);
    tf.set_register(regs::FRAME_RATE, 0);
    start(&mut tf);
    assert_eq!(run(&mut c, &tf).error, TfError::Ok);
    let s = c.capture_session().expect("capturing");
    assert_eq!(
        (s.geometry.format, s.fps, s.generation),
        (PixelFormat::Rgb24, 0, 2)
    );
}

#[test]
fn too_big_for_two_slots_is_bad_value_on_the_control_write() {
    let mut c = Card::new(CardConfig {
        card_ram_size: 16 << 20,
        capabilities: CAPTURE_CARD_CAPS,
        ..CardConfig::default()
    })
    .expect("card");
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_FORMAT, format::RGB24);
    tf.set_register(regs::FRAME_WIDTH, 3840);
    tf.set_register(regs::FRAME_HEIGHT, 2160);
    start(&mut tf);
    let res = run(&mut c, &tf);
    assert_eq!((res.error, res.index), (TfError::BadValue, 3));
    assert_eq!(c.capture_session(), None);
    assert_eq!(
        c.registers().peek(regs::FRAME_FORMAT),
        u64::from(format::YUYV)
    );
}

#[test]
fn file_source_needs_a_file_and_brings_its_geometry() {
    let mut c = card_with(None);
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_SOURCE, source::FILE);
    assert_eq!(run(&mut c, &tf).error, TfError::BadValue);
    let mut tf = TaskFile::new();
    tf.set_to_register(regs::FRAME_SOURCE, 1, 1);
    assert_eq!(run(&mut c, &tf).error, TfError::BadValue);

    let mut c = card_with(Some(file()));
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_SOURCE, source::FILE);
    let f = tf.get_register(regs::FRAME_FORMAT);
    let w = tf.get_register(regs::FRAME_WIDTH);
    let h = tf.get_register(regs::FRAME_HEIGHT);
    let res = run(&mut c, &tf);
    assert_eq!(res.error, TfError::Ok);
    assert_eq!(
        (res.value(f), res.value(w), res.value(h)),
        (Some(u64::from(format::NV12)), Some(1280), Some(720))
    );
    // Changing the geometry away from the file's makes the start fail.
    let mut tf = TaskFile::new();
    tf.set_register(regs::FRAME_WIDTH, 640);
    start(&mut tf);
    let res = run(&mut c, &tf);
    assert_eq!((res.error, res.index), (TfError::BadValue, 1));
    let mut tf = TaskFile::new();
    start(&mut tf);
    assert_eq!(run(&mut c, &tf).error, TfError::Ok);
    let s = c.capture_session().expect("capturing");
    assert!(s.uses_file());
    assert_eq!(s.geometry, file());
}

#[test]
fn reset_stops_capture() {
    let mut c = card_with(None);
    let mut tf = TaskFile::new();
    start(&mut tf);
    run(&mut c, &tf);
    assert!(c.capture_session().is_some());
    c.reset(0);
    assert_eq!(c.capture_session(), None);
    assert_eq!(c.registers().peek(regs::STATUS), u64::from(status::READY));
    // Generations keep increasing across resets.
    let mut tf = TaskFile::new();
    start(&mut tf);
    run(&mut c, &tf);
    assert_eq!(c.capture_session().map(|s| s.generation), Some(2));
}
