//! Runs the real `xxcapd` binary on a temporary socket and talks to it the
//! way QEMU does, through vhost's own frontend implementation.

use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

const TIMEOUT: Duration = Duration::from_secs(20);

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xxcapd-it-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("xxcapd.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn xxcapd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xxcapd"));
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn spawn(socket: &Path) -> Child {
    spawn_with(socket, &[])
}

/// Starts xxcapd on `socket` with `extra` options; waits for the socket.
fn spawn_with(socket: &Path, extra: &[&str]) -> Child {
    let child = xxcapd()
        .arg("--socket")
        .arg(socket)
        .args(extra)
        .spawn()
        .expect("spawn");
    wait_for_socket(socket);
    child
}

fn wait_for_socket(socket: &Path) {
    let start = Instant::now();
    while !fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        assert!(start.elapsed() < TIMEOUT, "socket never appeared");
        sleep(Duration::from_millis(20));
    }
}

/// Waits for the child with a time limit; kills it on timeout.
fn finish(mut child: Child) -> (ExitStatus, String) {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let out = child.wait_with_output().expect("output");
            return (
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "xxcapd did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {}", child.id()))
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Negotiates as QEMU does and returns the connected frontend.
fn connect(socket: &Path) -> Frontend {
    let mut fe = Frontend::connect(socket, 2).expect("connect");
    fe.set_owner().expect("set_owner");
    let features = fe.get_features().expect("get_features");
    for bit in [32, 28, 30] {
        assert_ne!(features & (1 << bit), 0, "feature bit {bit} offered");
    }
    fe.set_features(features).expect("set_features");
    let proto = fe.get_protocol_features().expect("get_protocol_features");
    let want = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK;
    assert!(proto.contains(want), "protocol features {proto:?}");
    fe.set_protocol_features(want)
        .expect("set_protocol_features");
    assert_eq!(fe.get_queue_num().expect("get_queue_num"), 3);
    fe
}

fn read_config(fe: &mut Frontend) -> Vec<u8> {
    let (_, payload) = fe
        .get_config(0, 96, VhostUserConfigFlags::WRITABLE, &[0u8; 96])
        .expect("get_config");
    payload.to_vec()
}

#[test]
fn frontend_reads_config_and_disconnect_ends_the_daemon() {
    let dir = TempDir::new("config");
    let socket = dir.socket();
    let child = spawn_with(&socket, &["--exit-on-disconnect"]);
    let mut fe = connect(&socket);

    let config = read_config(&mut fe);
    assert_eq!(config.len(), 96);
    assert_eq!(&config[..4], b"XXCP");
    assert_eq!(&config[24..32], &(64u64 << 20).to_le_bytes());

    // A whole-config write, as QEMU sends, is accepted and changes nothing.
    fe.set_config(0, VhostUserConfigFlags::WRITABLE, &[0xa5; 96])
        .expect("set_config accepted");
    assert_eq!(read_config(&mut fe), config);
    // A partial read, as a guest's narrow access would be if QEMU forwarded it.
    let (_, part) = fe
        .get_config(4, 8, VhostUserConfigFlags::WRITABLE, &[0u8; 8])
        .expect("partial get_config");
    assert_eq!(&part[..], &config[4..12]);

    drop(fe);
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(stderr.contains("config_writes=1"), "{stderr}");
    assert!(!socket.exists(), "socket removed");
}

#[test]
fn sigterm_while_waiting_for_qemu_exits_cleanly() {
    let dir = TempDir::new("term-wait");
    let socket = dir.socket();
    let child = spawn(&socket);
    sigterm(&child);
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(stderr.contains("requests=0"), "{stderr}");
    assert!(!socket.exists(), "socket removed");
}

#[test]
fn sigterm_while_connected_exits_cleanly() {
    let dir = TempDir::new("term-conn");
    let socket = dir.socket();
    let child = spawn(&socket);
    let mut fe = connect(&socket);
    assert_eq!(&read_config(&mut fe)[..4], b"XXCP");
    sigterm(&child);
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(!socket.exists(), "socket removed");
    drop(fe);
}

#[test]
fn stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let socket = dir.socket();
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let child = spawn_with(&socket, &["--exit-on-disconnect"]);
    let mut fe = connect(&socket);
    assert_eq!(&read_config(&mut fe)[..4], b"XXCP");
    drop(fe);
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
}

fn run(args: &[&str]) -> Output {
    xxcapd().args(args).output().expect("run")
}

fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text:?}");
    text
}

#[test]
fn regular_file_at_the_socket_path_is_refused_and_kept() {
    let dir = TempDir::new("file");
    let socket = dir.socket();
    fs::write(&socket, b"precious").expect("write");
    let out = run(&["--socket", socket.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = one_line(&out.stderr);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(fs::read(&socket).expect("kept"), b"precious");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    for args in [
        &["--socket", "/tmp/x.sock", "--card-ram-size", "3M"][..],
        &["--socket", "/tmp/x.sock", "--card-ram-size", "64Q"],
        &["--socket", "/tmp/x.sock", "--serial", "0123456789abcdef"],
        &["--card-ram-size", "64M"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = one_line(&out.stderr);
        assert!(err.starts_with("xxcapd: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn capture_options_are_checked_with_one_line_errors() {
    let dir = TempDir::new("source");
    let small = dir.0.join("small.raw");
    fs::write(&small, [0u8; 1000]).expect("write");
    let not_y4m = dir.0.join("not.y4m");
    fs::write(&not_y4m, b"hello").expect("write");
    let (small, not_y4m) = (
        small.to_str().expect("utf8"),
        not_y4m.to_str().expect("utf8"),
    );
    let s = ["--socket", "/tmp/x.sock", "--print-qemu-args"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--source-file",
                "/nonexistent/a.y4m",
                "--source-format",
                "y4m",
            ],
            "/nonexistent/a.y4m",
        ),
        (
            vec!["--source-file", not_y4m, "--source-format", "y4m"],
            "not.y4m",
        ),
        (
            vec!["--source-file", small, "--source-format", "raw"],
            "--source-size",
        ),
        (
            vec![
                "--source-file",
                small,
                "--source-format",
                "raw",
                "--source-size",
                "640x480",
                "--source-pixel-format",
                "yuyv",
            ],
            "no complete frame",
        ),
        (vec!["--source-file", small], "--source-format"),
        (vec!["--source-format", "raw"], "--source-file"),
        (
            vec!["--source-format", "mp4", "--source-file", small],
            "mp4",
        ),
        (vec!["--source-size", "640x480"], "--source-file"),
        (vec!["--size", "641x480"], "641x480"),
        (vec!["--format", "mjpeg"], "mjpeg"),
        (vec!["--fps", "1001"], "1001"),
        (
            vec![
                "--card-ram-size",
                "4M",
                "--size",
                "3840x2160",
                "--format",
                "rgb24",
            ],
            "",
        ),
    ];
    for (extra, needle) in cases {
        let args: Vec<&str> = s.iter().copied().chain(extra.iter().copied()).collect();
        let out = run(&args);
        if needle.is_empty() {
            // Defaults that cannot form a ring only fail at capture start.
            assert!(out.status.success(), "{args:?}");
            continue;
        }
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = one_line(&out.stderr);
        assert!(err.starts_with("xxcapd: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A good raw file and defaults are accepted.
    let good = dir.0.join("good.raw");
    fs::write(&good, vec![0u8; 320 * 240 * 2 * 3]).expect("write");
    let out = run(&[
        "--socket",
        "/tmp/x.sock",
        "--print-qemu-args",
        "--fps",
        "0",
        "--size",
        "1280x720",
        "--format",
        "nv12",
        "--source-file",
        good.to_str().expect("utf8"),
        "--source-format",
        "raw",
        "--source-size",
        "320x240",
        "--source-pixel-format",
        "yuyv",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prints_the_qemu_options() {
    let out = run(&[
        "--socket",
        "/run/xx,cap.sock",
        "--virtio-id",
        "30",
        "--guest-ram-size",
        "512M",
        "--print-qemu-args",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "-object memory-backend-memfd,id=mem,size=512M,share=on\n\
         -numa node,memdev=mem\n\
         -m 512M\n\
         -chardev socket,id=xxcap0,path=/run/xx,,cap.sock\n\
         -device vhost-user-test-device-pci,id=card0,chardev=xxcap0,virtio-id=30,num_vqs=3,vq_size=256,config_size=96\n"
    );
    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("-device vhost-user-test-device-pci"));
}

/// Negotiates as [`connect`] does, with the SHMEM protocol feature too.
fn connect_shmem(socket: &Path) -> Frontend {
    let mut fe = Frontend::connect(socket, 2).expect("connect");
    fe.set_owner().expect("set_owner");
    let features = fe.get_features().expect("get_features");
    fe.set_features(features).expect("set_features");
    let want = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::SHMEM;
    fe.set_protocol_features(want)
        .expect("set_protocol_features");
    fe
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
fn wait_until_exited_or(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn serves_again_after_the_frontend_disconnects() {
    let dir = TempDir::new("again");
    let socket = dir.socket();
    let mut child = spawn_with(&socket, &["-v"]);
    for round in 0..3 {
        let mut fe = connect(&socket);
        let config = read_config(&mut fe);
        assert_eq!(&config[..4], b"XXCP", "round {round}");
        drop(fe);
        // Still there, and the socket still ours, for the next frontend.
        assert!(
            wait_until_exited_or(&mut child, Duration::from_millis(300)).is_none(),
            "xxcapd exited after connection {round}"
        );
        assert!(socket.exists(), "socket kept between connections");
    }
    sigterm(&child);
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(stderr.contains("connection 3"), "{stderr}");
    assert!(stderr.contains("waiting for the next frontend"), "{stderr}");
    assert!(!socket.exists(), "socket removed");
}

#[test]
fn reset_card_ram_on_reconnect_is_accepted_and_serves_again() {
    let dir = TempDir::new("again-reset");
    let socket = dir.socket();
    let mut child = spawn_with(&socket, &["--reset-card-ram-on-reconnect", "-v"]);
    for _ in 0..2 {
        let mut fe = connect(&socket);
        assert_eq!(&read_config(&mut fe)[..4], b"XXCP");
        drop(fe);
        assert!(wait_until_exited_or(&mut child, Duration::from_millis(300)).is_none());
    }
    sigterm(&child);
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(stderr.contains("card RAM cleared"), "{stderr}");
}

/// Runs `xxcapd` through `sh` with a listening socket as fd 3, the way a
/// service manager hands it over; `env` is evaluated by the shell, whose
/// pid xxcapd keeps across `exec`.
fn spawn_inherited(listener: &UnixListener, env: &str, args: &str) -> Child {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{env} exec \"$0\" {args}"))
        .arg(env!("CARGO_BIN_EXE_xxcapd"))
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    pass_as_fd3(&mut cmd, fd);
    cmd.spawn().expect("spawn")
}

/// Makes `fd` the child's descriptor 3, open across exec.
fn pass_as_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe and touch only
    // descriptors; the closure runs in the forked child before exec. dup2
    // leaves the new descriptor without FD_CLOEXEC; if `fd` already is 3,
    // dup2 does nothing and the flag is cleared instead.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn inherited_socket_serves(env: &str, args: &str, name: &str) {
    let dir = TempDir::new(name);
    let socket = dir.socket();
    let listener = UnixListener::bind(&socket).expect("bind");
    let child = spawn_inherited(&listener, env, args);
    drop(listener);
    for _ in 0..2 {
        let mut fe = connect(&socket);
        assert_eq!(&read_config(&mut fe)[..4], b"XXCP");
    }
    sigterm(&child);
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
    // The socket belongs to whoever passed it.
    assert!(socket.exists(), "an inherited socket's path is left alone");
}

#[test]
fn fd_option_serves_an_inherited_listening_socket() {
    inherited_socket_serves("", "--fd 3", "fd");
}

#[test]
fn systemd_socket_activation_is_honoured() {
    inherited_socket_serves("LISTEN_PID=$$ LISTEN_FDS=1", "", "activation");
}

#[test]
fn activation_for_another_process_is_ignored() {
    let dir = TempDir::new("activation-other");
    let listener = UnixListener::bind(dir.socket()).expect("bind");
    let child = spawn_inherited(&listener, "LISTEN_PID=1 LISTEN_FDS=1", "");
    let (status, stderr) = finish(child);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--socket-path"), "{stderr}");
}

#[test]
fn fd_that_is_not_a_listening_unix_socket_is_refused() {
    let dir = TempDir::new("fd-bad");
    let file = dir.0.join("plain");
    fs::write(&file, b"x").expect("write");
    let cases = [
        // A regular file as fd 3.
        (format!("--fd 3 3<{}", file.display()), "not a socket"),
        // Not open at all.
        ("--fd 9".to_owned(), "not open"),
        ("--fd 2".to_owned(), "stderr"),
    ];
    for (args, needle) in cases {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("exec \"$0\" {args}"))
            .arg(env!("CARGO_BIN_EXE_xxcapd"))
            .env_remove("RUST_LOG")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{args}");
        let err = one_line(&out.stderr);
        assert!(err.contains(needle), "{args}: {err}");
    }
    // A Unix socket that is bound but not listening.
    let unbound = dir.0.join("quiet.sock");
    let quiet = std::os::unix::net::UnixDatagram::bind(&unbound).expect("bind");
    let child = {
        let fd = quiet.as_raw_fd();
        let mut cmd = xxcapd();
        cmd.args(["--fd", "3"]);
        pass_as_fd3(&mut cmd, fd);
        cmd.spawn().expect("spawn")
    };
    let (status, stderr) = finish(child);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--fd 3"), "{stderr}");
}

#[test]
fn print_capabilities_is_json_and_ignores_other_options() {
    for args in [
        &["--print-capabilities"][..],
        &["--no-such-option", "--print-capabilities"],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}");
        let caps: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("capabilities are JSON");
        assert_eq!(caps["type"], "input");
        assert!(caps["features"].is_array());
    }
}

#[test]
fn the_descriptor_names_the_binary_and_the_capability_type() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("50-xxcapd.json");
    let text = fs::read_to_string(&path).expect("descriptor");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("descriptor is JSON");
    let caps: serde_json::Value =
        serde_json::from_slice(&run(&["--print-capabilities"]).stdout).expect("JSON");
    assert_eq!(doc["type"], caps["type"]);
    assert_eq!(doc["binary"], "/usr/bin/xxcapd");
    assert!(doc["description"].as_str().is_some_and(|d| !d.is_empty()));
    let keys: Vec<&String> = doc.as_object().expect("object").keys().collect();
    for key in keys {
        assert!(
            ["description", "type", "binary", "tags"].contains(&key.as_str()),
            "{key} is not in QEMU's VhostUserBackend schema"
        );
    }
}

#[test]
fn bad_configuration_is_refused_with_status_2() {
    let long = format!("/tmp/{}", "s".repeat(110));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--socket-path", "/tmp/x.sock", "--virtio-id", "44"],
            "QEMU",
        ),
        (
            vec!["--socket-path", "/tmp/x.sock", "--virtio-id", "0"],
            "QEMU",
        ),
        (
            vec!["--socket-path", "/tmp/x.sock", "--virtio-id", "46"],
            "QEMU",
        ),
        (
            vec!["--socket-path", "/tmp/x.sock", "--virtio-id", "14"],
            "QEMU",
        ),
        (vec!["--socket-path", &long], "107"),
        (vec!["--socket-path", &long, "--print-qemu-args"], "107"),
        (
            vec!["--socket-path", "/tmp/x.sock", "--card-ram-size", "3M"],
            "4194304",
        ),
        (
            vec!["--socket-path", "/tmp/x.sock", "--card-ram-size", "6146K"],
            "6146K",
        ),
        (
            vec!["--socket-path", "/tmp/x.sock", "--id", "2card"],
            "2card",
        ),
        (vec!["--socket-path", "/tmp/x.sock", "--fd", "3"], "--fd"),
        (vec!["--print-qemu-args"], "--socket-path"),
    ];
    for (args, needle) in cases {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = one_line(&out.stderr);
        assert!(err.starts_with("xxcapd: "), "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // A relative path is printed made absolute.
    assert!(run(&["--socket-path", "rel.sock", "--print-qemu-args"])
        .status
        .success());
}

#[test]
fn card_ram_need_not_be_a_power_of_two_the_bar_is() {
    let dir = TempDir::new("bar");
    let socket = dir.socket();
    let child = spawn_with(&socket, &["--card-ram-size", "6M", "--exit-on-disconnect"]);
    let mut fe = connect_shmem(&socket);
    let shmem = fe.get_shmem_config().expect("get_shmem_config");
    assert_eq!(shmem.nregions, 1);
    // 6 MiB of card RAM and the status page: an 8 MiB BAR.
    assert_eq!(shmem.memory_sizes[0], 8 << 20);
    drop(fe);
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
}

#[test]
fn prints_options_for_several_cards() {
    let out = run(&[
        "--socket-path",
        "/run/xxcap/card1.sock",
        "--id",
        "card1",
        "--print-qemu-args",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "-chardev socket,id=chr-card1,path=/run/xxcap/card1.sock\n\
         -device vhost-user-test-device-pci,id=card1,chardev=chr-card1,virtio-id=31,num_vqs=3,vq_size=256,config_size=96\n"
    );
}
