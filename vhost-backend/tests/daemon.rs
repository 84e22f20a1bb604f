//! Runs the real `xxcapd` binary on a temporary socket and talks to it the
//! way QEMU does, through vhost's own frontend implementation.

use std::fs;
use std::os::unix::fs::FileTypeExt;
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
    let child = xxcapd().arg("--socket").arg(socket).spawn().expect("spawn");
    let start = Instant::now();
    while !fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        assert!(start.elapsed() < TIMEOUT, "socket never appeared");
        sleep(Duration::from_millis(20));
    }
    child
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
    let child = spawn(&socket);
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
    let child = spawn(&socket);
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
