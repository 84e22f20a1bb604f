//! `xxcapd`: serves the emulated Double X capture card to QEMU over vhost-user.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use clap::{ArgAction, Parser};
use log::{debug, info};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use thiserror::Error;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use xxcapd::events::Events;
use xxcapd::options::{parse_frame_size, parse_pixel_format, parse_size, qemu_args, QEMU_VQ_SIZE};
use xxcapd::socket::{OwnedSocket, SocketError};
use xxcapd::vhu_xxcap::{Counters, XxcapBackend, TIMER_EVENT};
use xxcapture_abi::frame::PixelFormat;
use xxcapture_abi::regs::MAX_FRAME_RATE;
use xxcapture_abi::{queue, CONFIG_SIZE, VIRTIO_ID};
use xxcapture_model::{
    Card, CardConfig, ConfigError, FileKind, FileSource, FrameDefaults, FrameGeometry, VideoError,
    VideoSource, CAPTURE_CARD_CAPS,
};

/// Exit status for usage and configuration errors (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;

fn after_help() -> String {
    format!(
        "\
QEMU (10.2 or later) needs guest RAM shared with xxcapd and the generic
vhost-user device pointed at the socket; QEMU connects as a client, so start
xxcapd first:

  -object memory-backend-memfd,id=mem,size=<RAM>,share=on
  -numa node,memdev=mem -m <RAM>
  -chardev socket,id=xxcap0,path=<PATH>
  -device vhost-user-test-device-pci,id=card0,chardev=xxcap0,virtio-id={VIRTIO_ID},num_vqs={},vq_size={QEMU_VQ_SIZE},config_size={CONFIG_SIZE}

`xxcapd --socket PATH --print-qemu-args` prints these lines for PATH.
The guest sees PCI device 1af4:{:04x}.

Logging: -v (debug), -vv (trace); RUST_LOG overrides both.
SIGTERM/SIGINT: requests already taken off the command queue are completed
(and the guest notified) before the connection closes; no more are taken.
Exit status: 0 after SIGTERM/SIGINT or when QEMU disconnects, 1 on runtime
errors, 2 on usage or configuration errors.",
        queue::COUNT,
        0x1040 + VIRTIO_ID,
    )
}

/// Emulated Double X PCI video-capture card: a vhost-user backend for QEMU.
#[derive(Debug, Parser)]
#[command(name = "xxcapd", version, about, after_help = after_help())]
struct Cli {
    /// Unix socket to listen on (created; a stale socket is replaced).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,

    /// Card RAM size (K, M or G suffix), a multiple of 4K from 4M to 4G.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_card_ram)]
    card_ram_size: u64,

    /// Serial number reported in config space (at most 15 bytes).
    #[arg(long, default_value_t = CardConfig::default().serial)]
    serial: String,

    /// Hardware revision reported in config space.
    #[arg(long, default_value_t = CardConfig::default().revision)]
    revision: u32,

    /// Virtio device id for the printed QEMU options (a name in QEMU's table).
    #[arg(long, value_name = "N", default_value_t = VIRTIO_ID)]
    virtio_id: u32,

    /// Guest RAM size used in the printed QEMU options.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size_arg)]
    guest_ram_size: u64,

    /// Do not offer VIRTIO_RING_F_EVENT_IDX (notify on every completion).
    #[arg(long)]
    no_event_idx: bool,

    /// Reset value of FRAME_FORMAT: yuyv, nv12 or rgb24.
    #[arg(long, value_name = "FORMAT", default_value = "yuyv", value_parser = parse_pixel_format)]
    format: PixelFormat,

    /// Reset value of FRAME_WIDTH x FRAME_HEIGHT (even, 320..=3840 x 240..=2160).
    #[arg(long, value_name = "WxH", default_value = "640x480", value_parser = parse_frame_size)]
    size: (u32, u32),

    /// Reset value of FRAME_RATE in frames per second (0: free-running).
    #[arg(long, value_name = "N", default_value_t = FrameDefaults::default().fps,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_FRAME_RATE)))]
    fps: u32,

    /// Video file played when the guest selects FRAME_SOURCE = 1.
    #[arg(long, value_name = "PATH", requires = "source_format")]
    source_file: Option<PathBuf>,

    /// Kind of --source-file: raw (needs --source-size and
    /// --source-pixel-format) or y4m.
    #[arg(long, value_name = "KIND", value_parser = ["raw", "y4m"], requires = "source_file")]
    source_format: Option<String>,

    /// Frame size of a raw --source-file.
    #[arg(long, value_name = "WxH", value_parser = parse_frame_size)]
    source_size: Option<(u32, u32)>,

    /// Pixel format of a raw --source-file: yuyv, nv12 or rgb24.
    #[arg(long, value_name = "FORMAT", value_parser = parse_pixel_format)]
    source_pixel_format: Option<PixelFormat>,

    /// Print the QEMU options for this socket and exit.
    #[arg(long)]
    print_qemu_args: bool,

    /// More logging (repeatable).
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
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

#[derive(Debug, Error)]
enum DaemonError {
    #[error("invalid card configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("--source-file {0}")]
    Source(#[from] VideoError),
    #[error("cannot create card RAM: {0}")]
    CardRam(io::Error),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot start the vhost-user daemon: {0}")]
    Daemon(String),
    #[error("vhost-user connection failed: {0}")]
    Connection(String),
}

impl DaemonError {
    fn exit_code(&self) -> ExitCode {
        match self {
            DaemonError::Config(_) | DaemonError::Usage(_) | DaemonError::Source(_) => {
                ExitCode::from(EXIT_USAGE)
            }
            _ => ExitCode::FAILURE,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xxcapd: {e}");
            e.exit_code()
        }
    }
}

/// Prints help and version as clap does; squeezes errors onto one line.
fn usage_error(e: &clap::Error) -> ExitCode {
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,xxcapd=info",
        1 => "info,xxcapd=debug",
        2 => "debug,xxcapd=trace",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
}

/// Opens `--source-file` as the options describe it.
fn open_source(cli: &Cli) -> Result<Option<FileSource>, DaemonError> {
    let raw_only = cli.source_size.is_some() || cli.source_pixel_format.is_some();
    let Some(path) = &cli.source_file else {
        if raw_only {
            return Err(DaemonError::Usage(
                "--source-size and --source-pixel-format need --source-file with --source-format raw"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let kind = match cli.source_format.as_deref() {
        Some("raw") => match (cli.source_pixel_format, cli.source_size) {
            (Some(format), Some((width, height))) => FileKind::Raw {
                format,
                width,
                height,
            },
            _ => {
                return Err(DaemonError::Usage(
                    "--source-format raw needs --source-size WxH and --source-pixel-format".into(),
                ))
            }
        },
        Some("y4m") if raw_only => {
            return Err(DaemonError::Usage(
                "--source-size and --source-pixel-format apply to --source-format raw only (a Y4M file names its own)"
                    .into(),
            ))
        }
        Some("y4m") => FileKind::Y4m,
        _ => return Err(DaemonError::Usage("--source-file needs --source-format raw|y4m".into())),
    };
    Ok(Some(FileSource::open(path, kind)?))
}

fn run(cli: Cli) -> Result<(), DaemonError> {
    let source = open_source(&cli)?;
    let file_source = source.as_ref().map(|s| {
        let (format, width, height) = s.format();
        FrameGeometry {
            format,
            width,
            height,
        }
    });
    let config = CardConfig {
        card_ram_size: cli.card_ram_size,
        serial: cli.serial,
        revision: cli.revision,
        capabilities: CAPTURE_CARD_CAPS,
        defaults: FrameDefaults {
            geometry: FrameGeometry {
                format: cli.format,
                width: cli.size.0,
                height: cli.size.1,
            },
            fps: cli.fps,
        },
        file_source,
    };
    config.validate()?;

    if cli.print_qemu_args {
        let socket = std::path::absolute(&cli.socket).unwrap_or(cli.socket);
        for line in qemu_args(&socket, cli.virtio_id, cli.guest_ram_size) {
            println!("{line}");
        }
        return Ok(());
    }

    let card = Card::new(config)?;
    let (socket, listener) = OwnedSocket::bind(&cli.socket)?;
    let socket = Arc::new(socket);

    let backend =
        Arc::new(XxcapBackend::new(card, !cli.no_event_idx, source).map_err(DaemonError::CardRam)?);
    let counters = backend.counters();
    let events = backend.events();
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::default());
    let mut daemon = VhostUserDaemon::new("xxcapd".to_owned(), Arc::clone(&backend), mem)
        .map_err(|e| DaemonError::Daemon(e.to_string()))?;
    // The coalescing timer wakes the vring worker (see xxcapd::events).
    for handler in daemon.get_epoll_handlers() {
        handler
            .register_listener(backend.timer_fd(), EventSet::IN, u64::from(TIMER_EVENT))
            .map_err(|e| DaemonError::Daemon(format!("cannot watch the event timer: {e}")))?;
    }
    let shutdown = Arc::new(Shutdown::default());
    watch_signals(&shutdown, &socket, &counters, &events, &backend)?;

    info!(
        "listening on {} (card RAM {} bytes)",
        socket.path().display(),
        cli.card_ram_size
    );
    let mut listener = Listener::from(listener);
    let result = daemon
        .start(&mut listener)
        .map_err(|e| DaemonError::Connection(e.to_string()))
        .and_then(|()| {
            info!("frontend connected");
            shutdown.connected(daemon.shutdown_handle());
            wait(&mut daemon)
        });
    backend.shutdown();
    finish(&counters, &events, &socket);
    result
}

/// Waits for the connection to end; a disconnect is a normal end.
fn wait(daemon: &mut VhostUserDaemon<Arc<XxcapBackend>>) -> Result<(), DaemonError> {
    match daemon.wait() {
        Ok(()) => {
            info!("frontend disconnected");
            Ok(())
        }
        Err(vhost_user_backend::Error::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => {
            info!("frontend disconnected");
            Ok(())
        }
        Err(e) => Err(DaemonError::Connection(e.to_string())),
    }
}

fn finish(counters: &Counters, events: &Events, socket: &OwnedSocket) {
    info!("exiting: {}", counters.summary());
    info!("{}", events.summary());
    socket.remove();
}

/// Hands a signal to whichever of "still waiting for QEMU" and "connected"
/// the daemon is in.
#[derive(Default)]
struct Shutdown {
    state: Mutex<ShutdownState>,
}

#[derive(Default)]
struct ShutdownState {
    handle: Option<ShutdownHandle>,
    requested: bool,
}

impl Shutdown {
    /// Called once QEMU has connected.
    fn connected(&self, handle: Option<ShutdownHandle>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.requested {
            if let Some(h) = &handle {
                h.shutdown();
            }
        }
        state.handle = handle;
    }

    /// Called from the signal thread. Returns false if no connection exists
    /// yet, in which case the caller must end the process itself (the main
    /// thread is blocked in accept()).
    fn request(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requested = true;
        match &state.handle {
            Some(h) => {
                h.shutdown();
                true
            }
            None => false,
        }
    }
}

fn watch_signals(
    shutdown: &Arc<Shutdown>,
    socket: &Arc<OwnedSocket>,
    counters: &Arc<Counters>,
    events: &Arc<Events>,
    backend: &Arc<XxcapBackend>,
) -> Result<(), DaemonError> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(DaemonError::Signals)?;
    let (shutdown, socket, counters) = (shutdown.clone(), socket.clone(), counters.clone());
    let (events, backend) = (events.clone(), backend.clone());
    thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                info!("{name} received, shutting down");
                // Complete what was taken while QEMU still relays the
                // notifications; then close the connection.
                backend.quiesce();
                info!("requests in flight completed: {}", counters.summary());
                if !shutdown.request() {
                    debug!("no frontend connected yet");
                    finish(&counters, &events, &socket);
                    std::process::exit(0);
                }
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok(())
}
