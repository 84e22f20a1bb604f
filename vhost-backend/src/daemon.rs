//! The daemon's life: open the video source, build the card, listen on the
//! socket (its own or one a service manager passed), serve QEMU connections
//! one after the other (the card, card RAM included, lives on between them),
//! and shut down cleanly on SIGTERM or SIGINT (requests already taken are
//! completed first), or when QEMU disconnects with `--exit-on-disconnect`.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use log::{debug, error, info};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use thiserror::Error;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use xxcapture_model::{
    Card, CardConfig, ConfigError, FileKind, FileSource, FrameDefaults, FrameGeometry, VideoError,
    VideoSource, CAPTURE_CARD_CAPS,
};

use crate::clock::Clock;
use crate::control;
use crate::device::Counters;
use crate::events::Events;
use crate::options::{check_socket_path, qemu_args, Cli, EXIT_USAGE};
use crate::ring::RingStats;
use crate::socket::{activation_fd, inherited_listener, OwnedSocket, SocketError};
use crate::trace::Tracer;
use crate::vhu_xxcap::{XxcapBackend, TIMER_EVENT};

/// Why the daemon could not start or ended in error.
#[derive(Debug, Error)]
pub enum DaemonError {
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
    #[error("{0}")]
    BadSocket(SocketError),
    #[error("--trace: {0}")]
    Trace(io::Error),
    #[error("--control-socket: {0}")]
    Control(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("cannot start the vhost-user daemon: {0}")]
    Daemon(String),
    #[error("vhost-user connection failed: {0}")]
    Connection(String),
}

impl DaemonError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            DaemonError::Config(_)
            | DaemonError::Usage(_)
            | DaemonError::Source(_)
            | DaemonError::BadSocket(_) => ExitCode::from(EXIT_USAGE),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Logs to stderr at the level `-v`s ask for; RUST_LOG overrides it.
pub fn init_logging(verbose: u8) {
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

/// Where the daemon listens: a path of its own or an inherited socket.
enum Listen {
    Path(PathBuf),
    Fd(RawFd),
}

/// `--socket-path`, `--fd`, or a socket passed by systemd socket activation.
fn listen_on(cli: &Cli) -> Result<Listen, DaemonError> {
    if let Some(path) = &cli.socket_path {
        check_socket_path(path).map_err(DaemonError::Usage)?;
        return Ok(Listen::Path(path.clone()));
    }
    if let Some(fd) = cli.fd {
        return Ok(Listen::Fd(fd));
    }
    match activation_fd().map_err(DaemonError::BadSocket)? {
        Some(fd) => Ok(Listen::Fd(fd)),
        None => Err(DaemonError::Usage(
            "no socket: give --socket-path PATH or --fd FD (see --help)".into(),
        )),
    }
}

/// Opens the listening socket; the path is ours to remove on exit.
fn open_listener(listen: Listen) -> Result<(Option<OwnedSocket>, UnixListener), DaemonError> {
    match listen {
        Listen::Path(path) => {
            let (socket, listener) = OwnedSocket::bind(&path)?;
            Ok((Some(socket), listener))
        }
        Listen::Fd(fd) => {
            // The service manager's variables are for this process only
            // (removed before any thread of ours starts).
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
            let listener = inherited_listener(fd).map_err(DaemonError::BadSocket)?;
            Ok((None, listener))
        }
    }
}

/// Runs the daemon as `cli` says, until a signal ends it (or QEMU
/// disconnects, with `--exit-on-disconnect`); `--print-qemu-args`: prints
/// them and returns.
pub fn run(cli: Cli) -> Result<(), DaemonError> {
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
        serial: cli.serial.clone(),
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
        let Some(path) = &cli.socket_path else {
            return Err(DaemonError::Usage(
                "--print-qemu-args needs --socket-path (the path QEMU connects to)".into(),
            ));
        };
        let socket = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        check_socket_path(&socket).map_err(DaemonError::Usage)?;
        for line in qemu_args(
            &socket,
            cli.id.as_deref(),
            cli.virtio_id,
            cli.guest_ram_size,
        ) {
            println!("{line}");
        }
        return Ok(());
    }

    let listen = listen_on(&cli)?;
    let card = Card::new(config)?;
    let (socket, listener) = open_listener(listen)?;
    let socket = Arc::new(socket);

    let clock = match cli.clock.as_str() {
        "virtual" => Clock::virtual_time(),
        _ => Clock::host(),
    };
    let backend = Arc::new(
        XxcapBackend::with_clock(card, !cli.no_event_idx, source, clock)
            .map_err(DaemonError::CardRam)?,
    );
    let counters = backend.device().counters();
    let events = backend.device().events();
    let rings = backend.device().ring_stats();
    let extras = Arc::new(start_extras(&cli, &backend)?);
    let shutdown = Arc::new(Shutdown::default());
    watch_signals(&shutdown, &socket, &counters, &events, &backend, &extras)?;

    match socket.as_ref() {
        Some(s) => info!(
            "listening on {} (card RAM {} bytes)",
            s.path().display(),
            cli.card_ram_size
        ),
        None => info!(
            "listening on an inherited socket (card RAM {} bytes)",
            cli.card_ram_size
        ),
    }
    let mut listener = Listener::from(listener);
    let policy = Reconnect {
        exit_on_disconnect: cli.exit_on_disconnect,
        reset_card_ram: cli.reset_card_ram_on_reconnect,
    };
    let result = serve(&backend, &mut listener, &shutdown, policy);
    backend.device().shutdown();
    finish(&counters, &events, &rings, &socket, &extras);
    result
}

/// What the daemon runs besides the card: the control socket, the trace.
struct Extras {
    control: Option<OwnedSocket>,
    tracer: Option<Arc<Tracer>>,
}

impl Extras {
    fn finish(&self) {
        if let Some(control) = &self.control {
            control.remove();
        }
        if let Some(tracer) = &self.tracer {
            tracer.finish();
            for path in tracer.paths() {
                info!("trace written to {}", path.display());
            }
        }
    }
}

/// Arms `--fault`s, opens the `--trace` files, starts the control socket.
fn start_extras(cli: &Cli, backend: &XxcapBackend) -> Result<Extras, DaemonError> {
    let device = backend.device();
    let tracer = if cli.trace.is_empty() {
        None
    } else {
        let tracer = match device.clock().is_virtual() {
            true => Tracer::create_ordered(&cli.trace),
            false => Tracer::create(&cli.trace),
        };
        let tracer = Arc::new(tracer.map_err(DaemonError::Trace)?);
        device.set_tracer(Arc::clone(&tracer));
        Some(tracer)
    };
    let faults = device.faults();
    for spec in &cli.faults {
        faults.arm(spec.clone()).map_err(DaemonError::Usage)?;
    }
    let control = match &cli.control_socket {
        Some(path) => {
            check_socket_path(path).map_err(DaemonError::Usage)?;
            let (socket, listener) =
                OwnedSocket::bind(path).map_err(|e| DaemonError::Control(e.to_string()))?;
            control::serve(listener, faults)
                .map_err(|e| DaemonError::Control(format!("cannot start its thread: {e}")))?;
            info!("control socket on {}", socket.path().display());
            Some(socket)
        }
        None => None,
    };
    Ok(Extras { control, tracer })
}

/// What happens when a frontend goes away.
#[derive(Clone, Copy)]
struct Reconnect {
    exit_on_disconnect: bool,
    reset_card_ram: bool,
}

/// A vhost-user daemon for one connection: vrings, worker thread and the
/// protocol state are the connection's; the card is the backend's.
fn new_daemon(
    backend: &Arc<XxcapBackend>,
) -> Result<VhostUserDaemon<Arc<XxcapBackend>>, DaemonError> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::default());
    let daemon = VhostUserDaemon::new("xxcapd".to_owned(), Arc::clone(backend), mem)
        .map_err(|e| DaemonError::Daemon(e.to_string()))?;
    // The coalescing timer wakes the vring worker (see xxcapd::events).
    for handler in daemon.get_epoll_handlers() {
        handler
            .register_listener(
                backend.device().timer_fd(),
                EventSet::IN,
                u64::from(TIMER_EVENT),
            )
            .map_err(|e| DaemonError::Daemon(format!("cannot watch the event timer: {e}")))?;
    }
    Ok(daemon)
}

/// Serves frontends one after the other until a signal (or, with
/// `exit_on_disconnect`, the first disconnect) ends it. A connection that
/// fails is logged and the next one awaited, unless it was the only one
/// wanted.
fn serve(
    backend: &Arc<XxcapBackend>,
    listener: &mut Listener,
    shutdown: &Shutdown,
    policy: Reconnect,
) -> Result<(), DaemonError> {
    let mut connections = 0u64;
    loop {
        let mut daemon = new_daemon(backend)?;
        daemon
            .start(listener)
            .map_err(|e| DaemonError::Connection(e.to_string()))?;
        connections += 1;
        info!("frontend connected (connection {connections})");
        shutdown.connected(daemon.shutdown_handle());
        let result = wait(&mut daemon);
        let stopping = shutdown.disconnected();
        // Joins the connection's vring worker before the card is reset.
        drop(daemon);
        backend.disconnected(policy.reset_card_ram);
        if stopping || policy.exit_on_disconnect {
            return result;
        }
        if let Err(e) = result {
            error!("{e}");
        }
        info!("waiting for the next frontend");
    }
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

fn finish(
    counters: &Counters,
    events: &Events,
    rings: &RingStats,
    socket: &Option<OwnedSocket>,
    extras: &Extras,
) {
    info!("exiting: {}", counters.summary());
    info!("{}", events.summary());
    info!("{}", rings.summary());
    let injected = events.faults().injected();
    if injected > 0 {
        info!("faults injected: {injected}");
    }
    extras.finish();
    if let Some(socket) = socket {
        socket.remove();
    }
}

/// Hands a signal to whichever of "waiting for QEMU" and "connected" the
/// daemon is in.
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

    /// Called once the connection ended: drops its handle. Returns whether a
    /// shutdown was requested.
    fn disconnected(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.handle = None;
        state.requested
    }

    /// Called from the signal thread. Returns false if no connection exists
    /// (yet, or any more), in which case the caller must end the process
    /// itself (the main thread is blocked in accept(), or about to be).
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
    socket: &Arc<Option<OwnedSocket>>,
    counters: &Arc<Counters>,
    events: &Arc<Events>,
    backend: &Arc<XxcapBackend>,
    extras: &Arc<Extras>,
) -> Result<(), DaemonError> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(DaemonError::Signals)?;
    let (shutdown, socket, counters) = (shutdown.clone(), socket.clone(), counters.clone());
    let (events, backend, extras) = (events.clone(), backend.clone(), extras.clone());
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
                backend.device().quiesce();
                info!("requests in flight completed: {}", counters.summary());
                if !shutdown.request() {
                    debug!("no frontend connected");
                    let rings = backend.device().ring_stats();
                    finish(&counters, &events, &rings, &socket, &extras);
                    std::process::exit(0);
                }
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok(())
}
