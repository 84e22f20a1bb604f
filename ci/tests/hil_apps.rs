//! Standard capture applications against the card, in the Debian image:
//! `ffmpeg -f v4l2` and a GStreamer `v4l2src ! filesink` pipeline each
//! capture 1080p YUYV and NV12 at 30 fps onto a raw disk of their own, and
//! every frame is checked here on the host by the card's stamp (CRC-32 of
//! the whole frame, format, size) with frame numbers consecutive;
//! `v4l2-ctl` streams 3840x2160 at 60 fps by mmap and its buffers'
//! sequence numbers are checked against the card's drops, and a reader
//! that pauses sees the frames the card dropped as sequence gaps; the C
//! library installed in the guest is found by `pkg-config` and an example
//! built against it captures.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xxcapture_abi::frame::{verify, PixelFormat};
use xxcapture_hil::build::repo_root;
use xxcapture_hil::image::{output_disk_args, tools_disk, DebianImage};
use xxcapture_hil::{Artifacts, FinishedRun, Mode, Step, VmOptions};

/// Frames each ffmpeg and GStreamer capture takes, and their size and rate.
const FRAMES: u64 = 300;
const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
const FPS: u32 = 30;
/// The v4l2-ctl stream at 3840x2160.
const UHD_FRAMES: u64 = 600;
const UHD_FPS: u32 = 60;

/// The captures: output disk (virtio serial `xxcap-<name>`), format.
const CAPTURES: &[(&str, PixelFormat)] = &[
    ("ffmpeg-yuyv", PixelFormat::Yuyv),
    ("ffmpeg-nv12", PixelFormat::Nv12),
    ("gst-yuyv", PixelFormat::Yuyv),
    ("gst-nv12", PixelFormat::Nv12),
];

/// The Debian release the test boots (`XXCAP_APPS_DIST`, default bookworm).
fn dist() -> String {
    std::env::var("XXCAP_APPS_DIST").unwrap_or_else(|_| "bookworm".into())
}

/// What the frames on one output disk showed.
#[derive(Debug)]
struct DiskFrames {
    frames: u64,
    first: u64,
}

/// Reads `disk` frame by frame from its start until a frame-sized block
/// without the stamp's magic (the disk was all zeros), verifies each frame
/// (stamp, CRC-32 of the whole frame, format and size) and checks that the
/// frame numbers follow each other.
fn check_disk(disk: &Path, fmt: PixelFormat, width: u32, height: u32) -> DiskFrames {
    let size = fmt.frame_size(width, height).expect("valid frame size");
    let mut reader = BufReader::with_capacity(
        size,
        File::open(disk).unwrap_or_else(|e| panic!("{}: {e}", disk.display())),
    );
    let mut frame = vec![0u8; size];
    let mut frames = 0u64;
    let mut first = None;
    loop {
        match reader.read_exact(&mut frame) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("{}: {e}", disk.display()),
        }
        if frame[..4].iter().all(|&b| b == 0) {
            break;
        }
        let stamp = verify(&frame, fmt, width, height).unwrap_or_else(|e| {
            panic!(
                "{}: frame {frames} (byte {}) does not verify: {e}",
                disk.display(),
                frames * size as u64
            )
        });
        let first = *first.get_or_insert(stamp.frame_number);
        assert_eq!(
            stamp.frame_number,
            first + frames,
            "{}: frame {frames} has the card's number {} after {}",
            disk.display(),
            stamp.frame_number,
            first + frames - 1
        );
        frames += 1;
    }
    DiskFrames {
        frames,
        first: first.unwrap_or(0),
    }
}

/// The `seq:` numbers v4l2-ctl printed for the buffers it dequeued.
fn sequences(step: &Step) -> Vec<u64> {
    step.output
        .iter()
        .filter_map(|l| l.split("seq:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The `ts:` timestamps (seconds) v4l2-ctl printed, in order.
fn timestamps(step: &Step) -> Vec<f64> {
    step.output
        .iter()
        .filter_map(|l| l.split("ts:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The card's FRAME_COUNTER and DROPPED_FRAMES as `xxcap regs get` printed
/// them in `step`.
fn card_counters(step: &Step) -> (u64, u64) {
    let value = |name: &str| -> u64 {
        step.output
            .iter()
            .find_map(|l| {
                // `NAME 0xHEX (DECIMAL)`
                let mut words = l.split_whitespace();
                if !words.next()?.eq_ignore_ascii_case(name) {
                    return None;
                }
                let v = words.next()?;
                match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => v.parse().ok(),
                }
            })
            .unwrap_or_else(|| panic!("{}: no {name} in {:?}", step.name, step.output))
    };
    (value("frame_counter"), value("dropped_frames"))
}

#[test]
#[ignore = "boots a VM with the Debian image: ci/test runs it with --ignored"]
fn standard_applications_capture_verified_frames() {
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let image = DebianImage::build(&dist()).unwrap_or_else(|e| panic!("{e}"));
    let log_dir = repo_root().join("target/hil-logs/apps");
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let tools = log_dir.join("tools.img");
    tools_disk(&artifacts, &tools).unwrap_or_else(|e| panic!("{e}"));

    let script = log_dir.join("run.sh");
    std::fs::write(
        &script,
        format!(
            "FRAMES={FRAMES}\nWIDTH={WIDTH}\nHEIGHT={HEIGHT}\nFPS={FPS}\n\
             UHD_FRAMES={UHD_FRAMES}\nUHD_FPS={UHD_FPS}\n{}",
            include_str!("../guest/debian-apps")
        ),
    )
    .expect("run script");

    let mut extra = Vec::new();
    let mut disks: Vec<(PathBuf, PixelFormat, &str)> = Vec::new();
    for &(name, fmt) in CAPTURES {
        let disk = log_dir.join(format!("{name}.img"));
        let size = fmt.frame_size(WIDTH, HEIGHT).expect("frame size") as u64;
        // Room for one frame more than asked for, so an extra one shows.
        let bytes = ((FRAMES + 1) * size).div_ceil(1 << 20) << 20;
        let file = File::create(&disk).expect("output disk");
        file.set_len(bytes).expect("output disk size");
        extra.extend(output_disk_args(&disk, &format!("xxcap-{name}")));
        disks.push((disk, fmt, name));
    }
    let mut boot = image.boot_target(&tools, Some(&script));
    boot.qemu_args.extend(extra);
    let opts = VmOptions {
        mode: Mode::Run,
        guest_memory_mib: 1024,
        boot: Some(boot),
        ..VmOptions::default()
    };
    let started = Instant::now();
    let run = FinishedRun::boot(&artifacts, opts, "apps", Duration::from_secs(1500));
    eprintln!(
        "apps: Debian {} (Linux {}), VM run {:.0} s",
        image.dist,
        image.kernel_abi,
        started.elapsed().as_secs_f64()
    );
    for s in &run.steps {
        eprintln!("apps: step {} rc={} uptime={:.1}", s.name, s.rc, s.uptime);
    }
    run.assert_steps_passed(&["v4l2-node", "sequence-gaps", "ffmpeg-version"]);
    eprintln!("{}", run.step("ffmpeg-version").output.join("\n"));

    for (disk, fmt, name) in &disks {
        let step = run.step(name);
        let (made, dropped) = card_counters(run.step(&format!("{name}-card")));
        assert_eq!(step.rc, 0, "{name} failed:\n{}", step.output.join("\n"));
        let got = check_disk(disk, *fmt, WIDTH, HEIGHT);
        eprintln!(
            "apps: {name}: {} frames of {WIDTH}x{HEIGHT} {} verified on the host, card numbers {}..={} consecutive; the card made {made} and dropped {dropped}",
            got.frames,
            fmt.name(),
            got.first,
            got.first + got.frames.saturating_sub(1),
        );
        assert_eq!(got.frames, FRAMES, "{name}: frames on the disk");
        // Verified: the disks are large, keep only the log.
        let _ = std::fs::remove_file(disk);
    }

    let uhd = run.step("v4l2-ctl-2160p");
    let seqs = sequences(uhd);
    let ts = timestamps(uhd);
    let (made, dropped) = card_counters(uhd);
    let gaps: u64 = seqs.windows(2).map(|w| w[1].saturating_sub(w[0] + 1)).sum();
    let fps = match (ts.first(), ts.last()) {
        (Some(a), Some(b)) if b > a => (ts.len() - 1) as f64 / (b - a),
        _ => 0.0,
    };
    eprintln!(
        "apps: v4l2-ctl 3840x2160 YUYV at {UHD_FPS} fps, mmap: {} buffers, sequence gaps {gaps}, {fps:.1} fps by the buffers' timestamps; the card made {made} frames and dropped {dropped}",
        seqs.len()
    );
    assert_eq!(uhd.rc, 0, "v4l2-ctl failed:\n{}", uhd.output.join("\n"));
    assert_eq!(seqs.len() as u64, UHD_FRAMES, "v4l2-ctl buffers");
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "2160p sequence numbers do not increase: {seqs:?}"
    );
    assert!(
        gaps <= dropped,
        "2160p: {gaps} sequence gaps but the card dropped {dropped}"
    );

    // A reader that sleeps: the card drops frames, the sequence shows them.
    let drops = run.step("v4l2-ctl-drops");
    let seqs = sequences(drops);
    let (made, dropped) = card_counters(drops);
    let gaps = seqs.last().map_or(0, |last| last + 1 - seqs.len() as u64);
    eprintln!(
        "apps: v4l2-ctl with pauses: {} buffers, sequence {}..={}, gaps {gaps}; the card made {made} frames and dropped {dropped}",
        seqs.len(),
        seqs.first().copied().unwrap_or(0),
        seqs.last().copied().unwrap_or(0)
    );
    assert_eq!(drops.rc, 0, "v4l2-ctl failed:\n{}", drops.output.join("\n"));
    assert_eq!(seqs.len(), 60, "v4l2-ctl buffers");
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "sequence numbers do not increase: {seqs:?}"
    );
    assert!(
        dropped > 0,
        "the card dropped nothing while the reader slept"
    );
    // Every drop before the last buffer is a gap; drops after it are not.
    assert!(
        gaps > 0 && gaps <= dropped,
        "{gaps} sequence gaps for {dropped} frames the card dropped"
    );

    let capi = run.step("capi-pkg-config");
    eprintln!("{}", capi.output.join("\n"));
    run.assert_steps_passed(&["capi-pkg-config", "kernel-log"]);
    run.assert_clean_exit();
}
