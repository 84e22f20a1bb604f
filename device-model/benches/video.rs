//! Throughput of the video sources and of frame verification, on one core.
//!
//! `cargo bench -p xxcapture-model --bench video [FILTER]` prints frames/s,
//! GB/s (frame bytes produced or checked) and ms per frame for each case
//! whose name contains FILTER. No harness dependency: plain timing loops of
//! about `XXCAP_BENCH_SECS` seconds (default 1) per case, best of 3 rounds.

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use xxcapture_model::abi::frame::{self, PixelFormat};
use xxcapture_model::{FileKind, FileSource, TestPattern, VideoSource};

fn measure(name: &str, bytes_per_frame: usize, budget: Duration, mut step: impl FnMut(u64)) {
    // Warm up (page faults of the output buffer, caches).
    for n in 0..3 {
        step(n);
    }
    let mut best = f64::INFINITY;
    let mut n = 3u64;
    for _ in 0..3 {
        let start = Instant::now();
        let mut frames = 0u64;
        while start.elapsed() < budget / 3 {
            step(n);
            n += 1;
            frames += 1;
        }
        best = best.min(start.elapsed().as_secs_f64() / frames as f64);
    }
    println!(
        "{name:<40} {:>9.1} frames/s {:>7.2} GB/s {:>8.3} ms/frame",
        1.0 / best,
        bytes_per_frame as f64 / best / 1e9,
        best * 1e3
    );
}

type Case = (String, Box<dyn FnMut(u64)>, usize);

fn pattern_case(fmt: PixelFormat, w: u32, h: u32) -> Case {
    let mut p = TestPattern::new(fmt, w, h).expect("pattern");
    let mut out = vec![0u8; p.frame_size()];
    let size = out.len();
    (
        format!("pattern {fmt} {w}x{h}"),
        Box::new(move |n| {
            p.render(n, &mut out).expect("render");
            black_box(&out);
        }),
        size,
    )
}

fn main() {
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let secs: f64 = std::env::var("XXCAP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let budget = Duration::from_secs_f64(secs);
    let run = |name: &str, bytes: usize, step: &mut dyn FnMut(u64)| {
        if name.contains(&filter) {
            measure(name, bytes, budget, step);
        }
    };

    for (fmt, w, h) in [
        (PixelFormat::Yuyv, 1920, 1080),
        (PixelFormat::Nv12, 1920, 1080),
        (PixelFormat::Rgb24, 1920, 1080),
        (PixelFormat::Yuyv, 3840, 2160),
        (PixelFormat::Nv12, 3840, 2160),
        (PixelFormat::Rgb24, 3840, 2160),
    ] {
        let (name, mut step, size) = pattern_case(fmt, w, h);
        run(&name, size, &mut step);
    }

    for (fmt, w, h) in [
        (PixelFormat::Yuyv, 1920, 1080),
        (PixelFormat::Yuyv, 3840, 2160),
    ] {
        let mut p = TestPattern::new(fmt, w, h).expect("pattern");
        let mut out = vec![0u8; p.frame_size()];
        p.render(1, &mut out).expect("render");
        run(&format!("verify {fmt} {w}x{h}"), out.len(), &mut |_| {
            frame::verify(black_box(&out), fmt, w, h).expect("verify");
        });
    }

    // File sources, from the page cache: 4 frames of 1080p.
    let dir = tempfile::tempdir().expect("tempdir");
    let (w, h) = (1920u32, 1080u32);
    let mut pattern = TestPattern::new(PixelFormat::Yuyv, w, h).expect("pattern");
    let mut frame_buf = vec![0u8; pattern.frame_size()];
    let raw_path = dir.path().join("clip.yuyv");
    let y4m_path = dir.path().join("clip.y4m");
    {
        let mut raw = std::fs::File::create(&raw_path).expect("create");
        let mut y4m = std::fs::File::create(&y4m_path).expect("create");
        writeln!(y4m, "YUV4MPEG2 W{w} H{h} F30:1 C420").expect("write");
        for n in 0..4 {
            pattern.render(n, &mut frame_buf).expect("render");
            raw.write_all(&frame_buf).expect("write");
            y4m.write_all(b"FRAME\n").expect("write");
            y4m.write_all(&frame_buf[..(w * h * 3 / 2) as usize])
                .expect("write");
        }
    }
    for (name, kind) in [
        (
            "file raw yuyv 1920x1080",
            FileKind::Raw {
                format: PixelFormat::Yuyv,
                width: w,
                height: h,
            },
        ),
        ("file y4m 420->nv12 1920x1080", FileKind::Y4m),
    ] {
        let path = if kind == FileKind::Y4m {
            &y4m_path
        } else {
            &raw_path
        };
        let mut src = FileSource::open(path, kind).expect("open");
        let mut out = vec![0u8; src.frame_size()];
        let size = out.len();
        run(name, size, &mut |n| {
            src.render(n, &mut out).expect("render");
            black_box(&out);
        });
    }
}
