//! `xxcap stream`: streaming capture into this process's own buffers, with
//! live statistics; every frame can be verified and written to Y4M.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use xxcapture::abi::frame::{verify, PixelFormat};
use xxcapture::{Access, Card, Error, FrameFormat};
use xxcapture_results::{Record, StreamSummary};

use crate::capture::{parse_format, parse_size, Y4mOut};
use xxcapture::measure::Percentiles;

#[derive(clap::Args)]
pub struct StreamArgs {
    /// Seconds to stream (ends earlier with --frames).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop after this many frames; the card gets buffers for this many
    /// and no more (periods a paced card drops after the last one, for want
    /// of a buffer, do not count as the stream's).
    #[arg(long)]
    frames: Option<u64>,
    /// Pixel format: yuyv, nv12 or rgb24.
    #[arg(long, default_value = "yuyv", value_parser = parse_format)]
    format: PixelFormat,
    /// Frame size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1920x1080", value_parser = parse_size)]
    size: (u32, u32),
    /// Frames per second; 0 runs the card as fast as buffers come back.
    #[arg(long, default_value_t = 30)]
    rate: u32,
    /// Buffers lent to the card (1 to 32).
    #[arg(long, default_value_t = 8)]
    buffers: usize,
    /// Capture from the file given to xxcapd --source-file.
    #[arg(long)]
    file_source: bool,
    /// Check every frame's stamp and checksum.
    #[arg(long)]
    verify: bool,
    /// Write the frames to a Y4M file.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write every record the stream received to FILE, one line each in
    /// the order the driver delivered them: cause, sequence, frame, device
    /// time, count, status (no guest times: a deterministic run gives the
    /// same file every time).
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// No progress line (for logs).
    #[arg(long)]
    quiet: bool,
    /// Also print the summary as a result record for scripts and the test
    /// harness: one line, `@xxcap-result ` and a JSON object.
    #[arg(long)]
    results: bool,
}

pub fn run(device: &str, args: StreamArgs) -> Result<ExitCode, Error> {
    let (w, h) = args.size;
    if args.output.is_some() && args.format == PixelFormat::Rgb24 {
        return Err(Error::BadFormat(
            "Y4M holds YUV only: stream yuyv or nv12 for -o".into(),
        ));
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        return Err(Error::BadFormat(format!(
            "--seconds {} is not a positive duration",
            args.seconds
        )));
    }
    let card = Card::open(device, Access::Control)?;
    let format = FrameFormat {
        pixel_format: args.format,
        width: w,
        height: h,
        fps: args.rate,
    };
    let mut y4m = args
        .output
        .as_deref()
        .map(|path| Y4mOut::create(path, args.format, w, h, args.rate))
        .transpose()?;

    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );

    let mut stream = card.start_stream(format, args.file_source, args.buffers)?;
    if args.events.is_some() {
        stream.keep_records();
    }
    let started = Instant::now();
    let cpu_started = xxcapture::measure::cpu_time();
    let limit = Duration::from_secs_f64(args.seconds);
    let mut wake = Percentiles::default();
    let mut corrupt = 0u64;
    let mut out_of_order = 0u64;
    let mut expected_next: Option<u64> = None;
    let mut skipped = 0u64;
    let mut first_error: Option<String> = None;
    let mut delivered = 0u64;
    let mut last_report = Instant::now();
    while started.elapsed() < limit && args.frames.is_none_or(|n| delivered < n) {
        let frame = stream.next_frame(Duration::from_secs(5))?;
        delivered += 1;
        wake.push(frame.wake_latency_ns() as f64 / 1e3);
        match expected_next {
            Some(n) if frame.number < n => out_of_order += 1,
            Some(n) => skipped += frame.number - n,
            None => {}
        }
        expected_next = Some(frame.number + 1);
        if args.verify {
            match verify(frame.data(), args.format, w, h) {
                Ok(stamp) if stamp.frame_number == frame.number => {}
                Ok(stamp) => {
                    corrupt += 1;
                    first_error.get_or_insert(format!(
                        "frame {} carries stamp {}",
                        frame.number, stamp.frame_number
                    ));
                }
                Err(e) => {
                    corrupt += 1;
                    first_error.get_or_insert(format!("frame {}: {e}", frame.number));
                }
            }
        }
        if let Some(out) = y4m.as_mut() {
            out.write(frame.data())?;
        }
        // With --frames, no buffer for a frame that would not be read: the
        // card produces exactly the frames asked for.
        if args
            .frames
            .is_none_or(|n| delivered + ((stream.queued() + stream.completed()) as u64) < n)
        {
            stream.requeue(frame)?;
        }
        if last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            let s = stream.stats();
            progress.set_message(format!(
                "{delivered} frames, {:.1} fps, dropped {}, corrupt {corrupt}, delivery p50 {:.0} us",
                delivered as f64 / started.elapsed().as_secs_f64().max(1e-9),
                s.dropped,
                wake.percentile(50.0)
            ));
            progress.tick();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_ms_per_frame = match (cpu_started, xxcapture::measure::cpu_time()) {
        (Some(a), Some(b)) => (b - a).as_secs_f64() * 1e3 / delivered.max(1) as f64,
        _ => f64::NAN,
    };
    if let Some(path) = &args.events {
        write_records(path, &stream.take_records())?;
    }
    // With --frames the card gets no buffer past the last frame, and a
    // paced card drops the periods from then until the stream stops: those
    // drops are not the stream's, and DROPPED_FRAMES counts them too.
    let dropped_while_reading = match (args.frames, expected_next) {
        (Some(_), Some(next)) => stream.dropped_before(next - 1),
        _ => stream.stats().dropped,
    };
    let dropped_register = card.read_register(xxcapture::abi::regs::DROPPED_FRAMES)?;
    let pinned_while_streaming = card.sysfs_attribute("pinned_pages").unwrap_or_default();
    let stats = stream.stop()?;
    progress.finish_and_clear();
    let pinned_after = card.sysfs_attribute("pinned_pages").unwrap_or_default();
    let r = StreamSummary {
        frames: delivered,
        width: w,
        height: h,
        format: args.format.to_string(),
        rate: args.rate,
        buffers: args.buffers as u32,
        seconds: elapsed,
        fps: delivered as f64 / elapsed.max(1e-9),
        verified: if args.verify { delivered - corrupt } else { 0 },
        corrupt,
        dropped: stats.dropped,
        dropped_register: u64::from(dropped_register),
        skipped,
        out_of_order,
        lost_records: stats.lost_records,
        buffer_errors: stats.buffer_errors,
        latency_p50_us: wake.percentile(50.0),
        latency_p99_us: wake.percentile(99.0),
        latency_max_us: wake.max(),
        cpu_ms_per_frame,
        pinned_while_streaming: pinned_while_streaming.trim().parse().ok(),
        pinned_after: pinned_after.trim().parse().ok(),
    };
    println!(
        "stream: {delivered} frames {w}x{h} {} @{} fps into {} buffers in {elapsed:.1} s: {:.1} fps, verified {}, corrupt {corrupt}, dropped {} (card register {dropped_register}), skipped {skipped}, out-of-order {out_of_order}, lost records {}, buffer errors {}, delivery latency (driver to process) p50 {:.0} us p99 {:.0} us max {:.0} us, {cpu_ms_per_frame:.2} ms CPU/frame, pinned pages streaming {pinned_while_streaming} after {pinned_after}",
        r.format,
        r.rate,
        r.buffers,
        r.fps,
        r.verified,
        r.dropped,
        r.lost_records,
        r.buffer_errors,
        r.latency_p50_us,
        r.latency_p99_us,
        r.latency_max_us,
    );
    if args.results {
        Record::Stream(r).print();
    }
    if let Some(e) = first_error {
        println!("stream: first bad frame: {e}");
    }
    let clean = corrupt == 0
        && dropped_while_reading == 0
        && (dropped_register == 0 || (args.frames.is_some() && args.rate != 0))
        && skipped == 0
        && out_of_order == 0
        && stats.lost_records == 0
        && stats.buffer_errors == 0
        && pinned_after == "0";
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--events`: one line per record, without guest times.
fn write_records(path: &std::path::Path, records: &[xxcapture::Event]) -> Result<(), Error> {
    use std::fmt::Write as _;
    let mut text = String::new();
    for r in records {
        let _ = writeln!(
            text,
            "{:?}{} seq={} frame={} device_ns={} count={} status={}",
            r.cause,
            if r.completion { " completion" } else { "" },
            r.sequence,
            r.frame_number,
            r.device_time_ns,
            r.count,
            r.status
        );
    }
    std::fs::write(path, text).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })
}
