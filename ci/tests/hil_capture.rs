//! Capture for real, in a booted VM: 1080p YUYV by DMA and from mapped card
//! RAM, every frame verified by its stamp in the guest; a small Y4M and a
//! PNG written in the guest are read back here by independent decoders.

use std::io::Read;
use std::time::Duration;

use xxcapture_abi::frame::{verify, PixelFormat};
use xxcapture_hil::build::repo_root;
use xxcapture_hil::results::{CaptureSummary, Record};
use xxcapture_hil::{Artifacts, FinishedRun, Mode, Step, VmOptions};

/// The capture summary the guest reported for `step`.
fn capture_summary(step: &Step) -> CaptureSummary {
    step.record("capture", |r| match r {
        Record::Capture(c) => Some(c),
        _ => None,
    })
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn capture_end_to_end_in_vm() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let log_dir = repo_root().join("target/hil-logs/capture");
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let disk = log_dir.join("out.img");
    std::fs::write(&disk, vec![0u8; 16 << 20]).expect("output disk");
    let opts = VmOptions {
        mode: Mode::Capture,
        output_disk: Some(disk.clone()),
        ..VmOptions::default()
    };
    let run = FinishedRun::boot(&artifacts, opts, "capture", Duration::from_secs(900));
    run.assert_steps_passed(&[
        "load-driver",
        "capture-dma-1080p",
        "capture-mmap-1080p",
        "capture-realtime-30fps",
        "capture-files",
        "export-files",
        "selftest-after-capture",
        "kernel-log",
    ]);
    for name in [
        "capture-dma-1080p",
        "capture-mmap-1080p",
        "capture-realtime-30fps",
    ] {
        let CaptureSummary {
            frames,
            corrupt,
            missed,
            card_dropped: dropped,
            fps,
            ..
        } = capture_summary(run.step(name));
        eprintln!("{name}: {frames} frames verified, {corrupt} corrupt, {missed} missed by the reader, {dropped} dropped by the card, {fps:.1} fps");
        assert!(frames >= 60, "{name}: only {frames} frames");
        assert_eq!(corrupt, 0, "{name}: corrupt frames");
    }

    // The files the guest wrote, read back by independent decoders.
    let mut archive = tar::Archive::new(std::fs::File::open(&disk).expect("disk"));
    let mut y4m_bytes = Vec::new();
    let mut png_bytes = Vec::new();
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        match name.as_str() {
            "out.y4m" => entry.read_to_end(&mut y4m_bytes).expect("read y4m"),
            "snap.png" => entry.read_to_end(&mut png_bytes).expect("read png"),
            _ => 0,
        };
    }
    assert!(!y4m_bytes.is_empty(), "no out.y4m in the guest's archive");
    std::fs::write(log_dir.join("snap.png"), &png_bytes).expect("keep png");

    let mut decoder = y4m::Decoder::new(&y4m_bytes[..]).expect("Y4M header");
    assert_eq!((decoder.get_width(), decoder.get_height()), (320, 240));
    assert!(
        matches!(decoder.get_colorspace(), y4m::Colorspace::C422),
        "Y4M colourspace is not 4:2:2"
    );
    let mut frames = 0u64;
    loop {
        let frame = match decoder.read_frame() {
            Ok(f) => f,
            Err(y4m::Error::EOF) => break,
            Err(e) => panic!("Y4M frame {frames}: {e:?}"),
        };
        // Repack planar 4:2:2 to YUYV and check the card's stamp survived.
        let (y, u, v) = (
            frame.get_y_plane(),
            frame.get_u_plane(),
            frame.get_v_plane(),
        );
        let mut yuyv = Vec::with_capacity(320 * 240 * 2);
        for i in 0..u.len() {
            yuyv.extend_from_slice(&[y[2 * i], u[i], y[2 * i + 1], v[i]]);
        }
        verify(&yuyv, PixelFormat::Yuyv, 320, 240)
            .unwrap_or_else(|e| panic!("Y4M frame {frames} does not verify: {e}"));
        frames += 1;
    }
    assert_eq!(frames, 10, "Y4M frame count");

    let png = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = png.read_info().expect("PNG header");
    let mut rgb = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgb).expect("PNG data");
    assert_eq!((info.width, info.height), (320, 240));
    // The pattern's leftmost bar, below the stamp rows, is 75% white.
    let px = |x: usize, y: usize| &rgb[(y * 320 + x) * 3..(y * 320 + x) * 3 + 3];
    let white = px(10, 120);
    assert!(
        white.iter().all(|&c| (170..=205).contains(&c)),
        "first bar is not 75% white: {white:?}"
    );
    let last = px(315, 120);
    assert!(last != white, "the picture has no bars");

    run.assert_clean_exit();
}
