//! `xxcap capture`: frames from the card to a Y4M file and/or a PNG
//! snapshot, verified against their stamps on request.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use xxcapture::abi::frame::{verify, PixelFormat};
use xxcapture::{Access, CaptureMode, Card, Error, FrameFormat};
use xxcapture_results::{CaptureSummary, Record};

#[derive(clap::Args)]
pub struct CaptureArgs {
    /// Frames to deliver.
    #[arg(long, default_value_t = 30)]
    frames: u64,
    /// Pixel format: yuyv, nv12 or rgb24.
    #[arg(long, default_value = "yuyv", value_parser = parse_format)]
    format: PixelFormat,
    /// Frame size, WIDTHxHEIGHT.
    #[arg(long, default_value = "640x480", value_parser = parse_size)]
    size: (u32, u32),
    /// Frames per second; 0 runs the card free (as fast as it can).
    #[arg(long, default_value_t = 30)]
    rate: u32,
    /// How frames reach this process: dma (a DMA task file per frame) or
    /// mmap (read from card RAM mapped into the process).
    #[arg(long, default_value = "dma", value_parser = ["dma", "mmap"])]
    mode: String,
    /// Capture from the file given to xxcapd --source-file instead of the test pattern.
    #[arg(long)]
    file_source: bool,
    /// Write the frames to a Y4M file (yuyv becomes 4:2:2, nv12 4:2:0).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write one frame as a PNG picture.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Which delivered frame (0-based) the PNG shows.
    #[arg(long, default_value_t = 0)]
    png_frame: u64,
    /// Check every frame's stamp and checksum; report corrupt frames.
    #[arg(long)]
    verify: bool,
    /// Seconds to wait for any one frame.
    #[arg(long, default_value_t = 5)]
    frame_timeout: u64,
    /// Also print the summary as a result record for scripts and the test
    /// harness: one line, `@xxcap-result ` and a JSON object.
    #[arg(long)]
    results: bool,
    /// No progress bar (on a serial console, drawing it costs guest CPU
    /// that would count in the CPU per frame).
    #[arg(long)]
    quiet: bool,
}

pub(crate) fn parse_format(s: &str) -> Result<PixelFormat, String> {
    PixelFormat::from_name(s)
        .ok_or_else(|| format!("unknown pixel format {s:?} (yuyv, nv12, rgb24)"))
}

pub(crate) fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size {s:?} is not WIDTHxHEIGHT"))?;
    let w = w.parse().map_err(|_| format!("bad width in {s:?}"))?;
    let h = h.parse().map_err(|_| format!("bad height in {s:?}"))?;
    if !PixelFormat::valid_size(w, h) {
        return Err(format!("{w}x{h}: sizes are even, 320x240 to 3840x2160"));
    }
    Ok((w, h))
}

/// A Y4M file being written, frame by frame (yuyv as 4:2:2, nv12 as
/// 4:2:0). Unbuffered: frames are whole planes, and every write error
/// surfaces at the frame that hit it.
pub(crate) struct Y4mOut {
    encoder: y4m::Encoder<File>,
    format: PixelFormat,
    width: usize,
    height: usize,
}

impl Y4mOut {
    pub(crate) fn create(
        path: &Path,
        format: PixelFormat,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<Self, Error> {
        if format == PixelFormat::Rgb24 {
            return Err(Error::BadFormat(
                "Y4M holds YUV only: use yuyv or nv12".into(),
            ));
        }
        let file = File::create(path).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let colorspace = if format == PixelFormat::Yuyv {
            y4m::Colorspace::C422
        } else {
            y4m::Colorspace::C420jpeg
        };
        let encoder = y4m::encode(
            width as usize,
            height as usize,
            y4m::Ratio::new(fps.max(1) as usize, 1),
        )
        .with_colorspace(colorspace)
        .write_header(file)
        .map_err(|e| Error::BadFormat(format!("Y4M header: {e:?}")))?;
        Ok(Y4mOut {
            encoder,
            format,
            width: width as usize,
            height: height as usize,
        })
    }

    pub(crate) fn write(&mut self, frame: &[u8]) -> Result<(), Error> {
        let planes = to_planes(self.format, self.width, self.height, frame)
            .ok_or_else(|| Error::BadFormat("Y4M holds YUV only".into()))?;
        self.encoder
            .write_frame(&y4m::Frame::new([&planes[0], &planes[1], &planes[2]], None))
            .map_err(|e| Error::BadFormat(format!("Y4M frame: {e:?}")))
    }
}

/// Packed YUYV or semi-planar NV12 to the planar Y, U, V that Y4M stores.
fn to_planes(fmt: PixelFormat, w: usize, h: usize, data: &[u8]) -> Option<[Vec<u8>; 3]> {
    match fmt {
        PixelFormat::Yuyv => {
            let mut y = Vec::with_capacity(w * h);
            let mut u = Vec::with_capacity(w * h / 2);
            let mut v = Vec::with_capacity(w * h / 2);
            for quad in data.chunks_exact(4) {
                y.push(quad[0]);
                u.push(quad[1]);
                y.push(quad[2]);
                v.push(quad[3]);
            }
            Some([y, u, v])
        }
        PixelFormat::Nv12 => {
            let (luma, chroma) = data.split_at(w * h);
            let u = chroma.iter().step_by(2).copied().collect();
            let v = chroma.iter().skip(1).step_by(2).copied().collect();
            Some([luma.to_vec(), u, v])
        }
        PixelFormat::Rgb24 => None,
    }
}

fn clamp(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// BT.601 limited range to RGB, for the PNG snapshot.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (f32::from(y) - 16.0) * 1.164;
    let d = f32::from(u) - 128.0;
    let e = f32::from(v) - 128.0;
    [
        clamp(c + 1.596 * e),
        clamp(c - 0.392 * d - 0.813 * e),
        clamp(c + 2.017 * d),
    ]
}

fn to_rgb(fmt: PixelFormat, w: usize, h: usize, data: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(w * h * 3);
    match fmt {
        PixelFormat::Rgb24 => rgb.extend_from_slice(&data[..w * h * 3]),
        PixelFormat::Yuyv => {
            for quad in data.chunks_exact(4) {
                rgb.extend_from_slice(&yuv_to_rgb(quad[0], quad[1], quad[3]));
                rgb.extend_from_slice(&yuv_to_rgb(quad[2], quad[1], quad[3]));
            }
        }
        PixelFormat::Nv12 => {
            let (luma, chroma) = data.split_at(w * h);
            for row in 0..h {
                for col in 0..w {
                    let c = (row / 2) * w + (col / 2) * 2;
                    rgb.extend_from_slice(&yuv_to_rgb(
                        luma[row * w + col],
                        chroma[c],
                        chroma[c + 1],
                    ));
                }
            }
        }
    }
    rgb
}

fn write_png(path: &PathBuf, w: u32, h: u32, rgb: &[u8]) -> Result<(), String> {
    let file = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(device: &str, args: CaptureArgs) -> Result<ExitCode, Error> {
    let (w, h) = args.size;
    if args.output.is_some() && args.format == PixelFormat::Rgb24 {
        return Err(Error::BadFormat(
            "Y4M holds YUV only: capture yuyv or nv12 for -o, or use --png".into(),
        ));
    }
    let card = Card::open(device, Access::Control)?;
    let mode = if args.mode == "mmap" {
        CaptureMode::Mapped
    } else {
        CaptureMode::Dma
    };
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
        ProgressBar::new(args.frames)
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} frames {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut capture = card.start_capture(format, args.file_source, mode)?;
    let started = Instant::now();
    let cpu_started = xxcapture::measure::cpu_time();
    let mut corrupt = 0u64;
    let mut bytes = 0u64;
    let mut first_error: Option<String> = None;
    for index in 0..args.frames {
        let frame = capture.next_frame_ref(Duration::from_secs(args.frame_timeout))?;
        bytes += frame.data.len() as u64;
        if args.verify {
            match verify(frame.data, args.format, w, h) {
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
            out.write(frame.data)?;
        }
        if args.png.is_some() && index == args.png_frame {
            let rgb = to_rgb(args.format, w as usize, h as usize, frame.data);
            if let Some(path) = &args.png {
                write_png(path, w, h, &rgb).map_err(Error::BadFormat)?;
            }
        }
        progress.inc(1);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_ms_per_frame = match (cpu_started, xxcapture::measure::cpu_time()) {
        (Some(a), Some(b)) => (b - a).as_secs_f64() * 1e3 / args.frames.max(1) as f64,
        _ => f64::NAN,
    };
    let stats = capture.stop()?;
    progress.finish_and_clear();
    let r = CaptureSummary {
        frames: stats.delivered,
        width: w,
        height: h,
        format: args.format.to_string(),
        rate: args.rate,
        mode: args.mode.clone(),
        verified: if args.verify {
            stats.delivered - corrupt
        } else {
            0
        },
        corrupt,
        missed: stats.missed,
        card_dropped: stats.card_dropped,
        fps: stats.delivered as f64 / elapsed.max(1e-9),
        mb_per_s: bytes as f64 / elapsed.max(1e-9) / 1e6,
        cpu_ms_per_frame,
    };
    println!(
        "capture: {} frames {}x{} {} @{} fps by {}: verified {}, corrupt {}, missed {}, card dropped {}, {:.1} fps, {:.1} MB/s, {:.2} ms CPU/frame",
        r.frames,
        w,
        h,
        r.format,
        r.rate,
        r.mode,
        r.verified,
        r.corrupt,
        r.missed,
        r.card_dropped,
        r.fps,
        r.mb_per_s,
        r.cpu_ms_per_frame
    );
    if args.results {
        Record::Capture(r).print();
    }
    if let Some(e) = first_error {
        println!("capture: first bad frame: {e}");
    }
    Ok(if corrupt == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
