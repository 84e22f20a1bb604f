//! The command line of `xxcapd`: its options and help text ([`Cli`]),
//! usage errors, the values they take (sizes with suffixes, frame sizes,
//! pixel formats) and the QEMU options that go with a socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgAction, Parser};
use thiserror::Error;
use xxcapture_abi::frame::PixelFormat;
use xxcapture_abi::regs::MAX_FRAME_RATE;
use xxcapture_abi::{queue, regs, CONFIG_SIZE, VIRTIO_ID};
use xxcapture_model::{CardConfig, FrameDefaults};

use crate::faults::FaultSpec;

/// The `vq_size` xxcapd asks QEMU for (the backend accepts up to 1024).
pub const QEMU_VQ_SIZE: u32 = 256;

/// Exit status for usage and configuration errors (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;

fn after_help() -> String {
    format!(
        "\
QEMU (10.2 or later) needs guest RAM shared with xxcapd and the generic
vhost-user device pointed at the socket; QEMU connects as a client, so start
xxcapd first. One card:

  -chardev socket,id=xxcap0,path=<PATH>
  -device vhost-user-test-device-pci,id=card0,chardev=xxcap0,virtio-id={VIRTIO_ID},num_vqs={},vq_size={QEMU_VQ_SIZE},config_size={CONFIG_SIZE}

plus shared guest RAM, for instance:

  -object memory-backend-memfd,id=mem,size=<RAM>,share=on
  -numa node,memdev=mem -m <RAM>

`xxcapd --socket-path PATH --print-qemu-args` prints the card's options for
PATH (`--id ID` names them so that several cards fit one command line;
`--guest-ram-size SIZE` adds the memory options). The guest sees PCI device
1af4:{:04x}. One xxcapd serves one card: run one per card.

The socket: --socket-path PATH (created; removed on exit), or --fd FD, a
listening socket handed in by a service manager; with neither, a socket
passed by systemd socket activation (LISTEN_FDS=1, LISTEN_PID) is used.
After QEMU disconnects (QEMU restart, chardev removal) xxcapd waits for the
next connection; card RAM keeps its contents unless
--reset-card-ram-on-reconnect. --exit-on-disconnect serves one connection.

Logging: -v (debug), -vv (trace); RUST_LOG overrides both.
SIGTERM/SIGINT: requests already taken off the command queue are completed
(and the guest notified) before the connection closes; no more are taken.
Exit status: 0 after SIGTERM/SIGINT (or, with --exit-on-disconnect, when QEMU
disconnects), 1 on runtime errors, 2 on usage or configuration errors.",
        queue::COUNT,
        0x1040 + VIRTIO_ID,
    )
}

/// Emulated Double X PCI video-capture card: a vhost-user backend for QEMU.
#[derive(Debug, Parser)]
#[command(name = "xxcapd", version, about, after_help = after_help())]
pub struct Cli {
    /// Unix socket to listen on (created; a stale socket is replaced;
    /// at most 107 bytes).
    #[arg(
        long = "socket-path",
        visible_alias = "socket",
        value_name = "PATH",
        conflicts_with = "fd"
    )]
    pub socket_path: Option<PathBuf>,

    /// Listen on FD, a listening Unix socket inherited from a service
    /// manager (systemd socket activation: 3).
    #[arg(long, value_name = "FD")]
    pub fd: Option<i32>,

    /// Print the backend's capabilities as JSON (QEMU's vhost-user backend
    /// conventions) and exit; other options are ignored.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Card RAM size (K, M or G suffix), a multiple of 4K from 4M to 4G.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_card_ram)]
    pub card_ram_size: u64,

    /// Zero card RAM whenever a frontend disconnects (by default it keeps
    /// its contents for the next connection, as across guest resets).
    #[arg(long)]
    pub reset_card_ram_on_reconnect: bool,

    /// Exit when the frontend disconnects instead of waiting for the next.
    #[arg(long)]
    pub exit_on_disconnect: bool,

    /// Serial number reported in config space (at most 15 bytes).
    #[arg(long, default_value_t = CardConfig::default().serial)]
    pub serial: String,

    /// Hardware revision reported in config space.
    #[arg(long, default_value_t = CardConfig::default().revision)]
    pub revision: u32,

    /// Virtio device id for the printed QEMU options: one QEMU names
    /// (1-13, 16-41, 45; QEMU aborts on others).
    #[arg(long, value_name = "N", default_value_t = VIRTIO_ID, value_parser = parse_virtio_id)]
    pub virtio_id: u32,

    /// QEMU id of the card in the printed options: `-device ...,id=ID`,
    /// `-chardev ...,id=chr-ID` (default: card0 and xxcap0).
    #[arg(long, value_name = "ID", value_parser = parse_qemu_id)]
    pub id: Option<String>,

    /// Also print shared guest RAM options (memfd backend, -numa, -m) for a
    /// guest of SIZE with --print-qemu-args.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub guest_ram_size: Option<u64>,

    /// Do not offer VIRTIO_RING_F_EVENT_IDX (notify on every completion).
    #[arg(long)]
    pub no_event_idx: bool,

    /// Reset value of FRAME_FORMAT: yuyv, nv12 or rgb24.
    #[arg(long, value_name = "FORMAT", default_value = "yuyv", value_parser = parse_pixel_format)]
    pub format: PixelFormat,

    /// Reset value of FRAME_WIDTH x FRAME_HEIGHT (even, 320..=3840 x 240..=2160).
    #[arg(long, value_name = "WxH", default_value = "640x480", value_parser = parse_frame_size)]
    pub size: (u32, u32),

    /// Reset value of FRAME_RATE in frames per second (0: free-running).
    #[arg(long, value_name = "N", default_value_t = FrameDefaults::default().fps,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_FRAME_RATE)))]
    pub fps: u32,

    /// Video file played when the guest selects FRAME_SOURCE = 1.
    #[arg(long, value_name = "PATH", requires = "source_format")]
    pub source_file: Option<PathBuf>,

    /// Kind of --source-file: raw (needs --source-size and
    /// --source-pixel-format) or y4m.
    #[arg(long, value_name = "KIND", value_parser = ["raw", "y4m"], requires = "source_file")]
    pub source_format: Option<String>,

    /// Frame size of a raw --source-file.
    #[arg(long, value_name = "WxH", value_parser = parse_frame_size)]
    pub source_size: Option<(u32, u32)>,

    /// Pixel format of a raw --source-file: yuyv, nv12 or rgb24.
    #[arg(long, value_name = "FORMAT", value_parser = parse_pixel_format)]
    pub source_pixel_format: Option<PixelFormat>,

    /// Arm a fault at start (repeatable), triggered by counts:
    /// dma-error@N, dma-latency=DUR[@N..M], corrupt-frame@N,
    /// drop-frames@N..M, irq-lost@N, irq-dup@N, irq-storm=K@N, stuck@N;
    /// `,every=P` repeats it every P (see the README).
    #[arg(long = "fault", value_name = "SPEC", value_parser = parse_fault)]
    pub faults: Vec<FaultSpec>,

    /// Listen for fault commands on this Unix socket (`xxcapd ctl`).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Trace task files, register changes, DMA transfers, event records,
    /// frames and injected faults into FILE: Chrome trace-event JSON when
    /// FILE ends in .json (opens in ui.perfetto.dev), else JSON lines.
    /// Repeatable.
    #[arg(long = "trace", value_name = "FILE")]
    pub trace: Vec<PathBuf>,

    /// Print the card's QEMU options for --socket-path and exit.
    #[arg(long)]
    pub print_qemu_args: bool,

    /// Print the manual page (roff) and exit.
    #[arg(long, hide = true)]
    pub print_man: bool,

    /// More logging (repeatable).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The `type` xxcapd reports in its capabilities and descriptor. QEMU's
/// schema (`docs/interop/vhost-user.json`) lists device types only, none of
/// them a capture card; "input" is the nearest (a video input device) and
/// one that management software does not pick for anything else of ours: a
/// type outside the list makes libvirt refuse every descriptor on the host,
/// and "gpu" or "fs" would offer xxcapd as a GPU or virtiofs backend.
pub const BACKEND_TYPE: &str = "input";

/// What `--print-capabilities` prints: the type and no optional features
/// (the schema's "input" features are evdev options xxcapd does not have).
pub fn capabilities_json() -> String {
    format!("{{\n  \"type\": \"{BACKEND_TYPE}\",\n  \"features\": []\n}}")
}

/// The virtio device ids QEMU 11.1 has a name for (`virtio_device_names` in
/// hw/virtio/virtio.c). QEMU aborts at start on any other id.
pub const QEMU_NAMED_VIRTIO_IDS: [std::ops::RangeInclusive<u32>; 3] = [1..=13, 16..=41, 45..=45];

/// Whether QEMU knows virtio device id `id` by name.
pub fn qemu_names_virtio_id(id: u32) -> bool {
    QEMU_NAMED_VIRTIO_IDS.iter().any(|r| r.contains(&id))
}

fn parse_virtio_id(text: &str) -> Result<u32, String> {
    let id: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("virtio id {text:?} is not a number"))?;
    if !qemu_names_virtio_id(id) {
        return Err(format!(
            "virtio id {id} has no name in QEMU's table (QEMU aborts on it); use 1-13, 16-41 or 45"
        ));
    }
    Ok(id)
}

/// Accepts an id QEMU takes for `-device id=` and `-chardev id=`: a letter,
/// then letters, digits, `-`, `.` or `_`; short enough for the derived
/// chardev id.
fn parse_qemu_id(text: &str) -> Result<String, String> {
    let mut chars = text.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !well_formed || text.len() > 64 {
        return Err(format!(
            "id {text:?} is not a QEMU id (a letter, then letters, digits, '-', '.' or '_'; at most 64)"
        ));
    }
    Ok(text.to_owned())
}

/// Room in `sockaddr_un.sun_path` for a path (108 bytes with the NUL).
pub const SUN_PATH_MAX: usize = 107;

/// Refuses a socket path `bind` or QEMU's `connect` could not use.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let len = path.as_os_str().as_bytes().len();
    if len > SUN_PATH_MAX {
        return Err(format!(
            "socket path {} is {len} bytes, longer than a Unix socket address holds ({SUN_PATH_MAX})",
            path.display()
        ));
    }
    if len == 0 {
        return Err("socket path is empty".into());
    }
    Ok(())
}

fn parse_fault(text: &str) -> Result<FaultSpec, String> {
    text.parse().map_err(|e: crate::faults::SpecError| e.why)
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn parse_card_ram(text: &str) -> Result<u64, String> {
    let size = parse_size_arg(text)?;
    let probe = CardConfig {
        card_ram_size: size,
        ..CardConfig::default()
    };
    probe.validate().map_err(|e| e.to_string())?;
    Ok(size)
}

/// Prints help and version as clap does; squeezes errors onto one line.
pub fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        print!("{}", e.render());
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    let line = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("xxcapd: {line} (see --help)");
    ExitCode::from(EXIT_USAGE)
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("size {0:?} is empty")]
    Empty(String),
    #[error("size {0:?} is not a number with an optional K, M or G suffix")]
    Malformed(String),
    #[error("size {0:?} does not fit in 64 bits")]
    Overflow(String),
}

/// Parses `123`, `64K`, `64M`, `4G` (binary units; `KiB`/`MiB`/`GiB` and a
/// trailing `B` are accepted too, case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty(text.to_owned()));
    }
    let upper = trimmed.to_ascii_uppercase();
    let digits_end = upper
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(upper.len());
    let (digits, suffix) = upper.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Malformed(text.to_owned()));
    }
    let shift = match suffix {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(SizeError::Malformed(text.to_owned())),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_owned()))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_owned()))
}

/// Parses a frame size `WxH` the card accepts (even, 320..=3840 x 240..=2160).
pub fn parse_frame_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("frame size {text:?} is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| v.trim().parse::<u32>().ok();
    let (Some(width), Some(height)) = (parse(w), parse(h)) else {
        return Err(format!("frame size {text:?} is not WIDTHxHEIGHT"));
    };
    if !PixelFormat::valid_size(width, height) {
        return Err(format!(
            "frame size {width}x{height} is not one the card accepts (even, {}..={} x {}..={})",
            regs::MIN_WIDTH,
            regs::MAX_WIDTH,
            regs::MIN_HEIGHT,
            regs::MAX_HEIGHT
        ));
    }
    Ok((width, height))
}

/// Parses a pixel-format name: `yuyv`, `nv12` or `rgb24`.
pub fn parse_pixel_format(text: &str) -> Result<PixelFormat, String> {
    PixelFormat::from_name(text)
        .ok_or_else(|| format!("pixel format {text:?} is not yuyv, nv12 or rgb24"))
}

/// Formats a byte count the way QEMU's `size=` and `-m` accept it.
pub fn qemu_size(bytes: u64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Doubles commas, as QEMU's option parser needs inside a value.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// The QEMU options for one card served on `socket`, one option with its
/// argument per line, in the order QEMU needs them. `id` names the device
/// (`id=ID`) and its chardev (`chr-ID`); without one they are `card0` and
/// `xxcap0`. With `guest_ram`, the shared guest-RAM options come first
/// (memory backend `mem`; one per VM, not per card).
pub fn qemu_args(
    socket: &Path,
    id: Option<&str>,
    virtio_id: u32,
    guest_ram: Option<u64>,
) -> Vec<String> {
    let path = qemu_escape(&socket.to_string_lossy());
    let (chardev, device) = match id {
        Some(id) => (format!("chr-{id}"), id.to_owned()),
        None => ("xxcap0".to_owned(), "card0".to_owned()),
    };
    let mut args = Vec::new();
    if let Some(bytes) = guest_ram {
        let ram = qemu_size(bytes);
        args.push(format!(
            "-object memory-backend-memfd,id=mem,size={ram},share=on"
        ));
        args.push("-numa node,memdev=mem".to_owned());
        args.push(format!("-m {ram}"));
    }
    args.push(format!("-chardev socket,id={chardev},path={path}"));
    args.push(format!(
        "-device vhost-user-test-device-pci,id={device},chardev={chardev},virtio-id={virtio_id},num_vqs={},vq_size={QEMU_VQ_SIZE},config_size={CONFIG_SIZE}",
        queue::COUNT
    ));
    args
}

#[cfg(test)]
mod tests;
