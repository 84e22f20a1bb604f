//! The deployment files shipped beside `xxcapd` are what it does: the
//! manual page is the one the command line generates, the libvirt example
//! passes QEMU exactly the options `xxcapd` prints (and validates against
//! libvirt's schema where `virt-xml-validate` is installed), the systemd
//! units pass `systemd-analyze verify` (where installed) and start a daemon
//! that serves connection after connection on the socket they pass, and
//! every file the Debian package installs exists.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

const TIMEOUT: Duration = Duration::from_secs(20);

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn xxcapd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xxcapd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run xxcapd")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

#[test]
fn the_manual_page_is_generated_from_the_command_line() {
    let committed = fs::read_to_string(crate_dir().join("xxcapd.1")).expect("xxcapd.1");
    let generated = stdout(&xxcapd(&["--print-man"]));
    assert!(
        committed == generated,
        "vhost-backend/xxcapd.1 is stale: regenerate it with `xxcapd --print-man > vhost-backend/xxcapd.1`"
    );
    for option in [
        "socket\\-path",
        "\\-\\-fd",
        "print\\-capabilities",
        "exit\\-on\\-disconnect",
    ] {
        assert!(generated.contains(option), "{option}");
    }
}

/// The options QEMU gets for `cardN` on `/run/xxcapd/cardN.sock`, as argv
/// words.
fn card_words(n: u32) -> Vec<String> {
    let socket = format!("/run/xxcapd/card{n}.sock");
    let id = format!("card{n}");
    stdout(&xxcapd(&[
        "--socket-path",
        &socket,
        "--id",
        &id,
        "--print-qemu-args",
    ]))
    .lines()
    .flat_map(|line| {
        let (option, value) = line.split_once(' ').expect("option and value");
        [option.to_owned(), value.to_owned()]
    })
    .collect()
}

/// The first child element of `node` named `name` (no namespace).
fn child<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    node.children().find(|c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace().is_none()
    })
}

const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

#[test]
fn the_libvirt_example_passes_what_xxcapd_prints() {
    let path = crate_dir().join("examples/libvirt-domain.xml");
    let text = fs::read_to_string(&path).expect("example");
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let domain = doc.root_element();
    assert_eq!(domain.tag_name().name(), "domain");
    // Guest RAM is a shared memfd, as vhost-user needs.
    let backing = child(domain, "memoryBacking").expect("memoryBacking");
    assert_eq!(
        child(backing, "source").and_then(|s| s.attribute("type")),
        Some("memfd")
    );
    assert_eq!(
        child(backing, "access").and_then(|a| a.attribute("mode")),
        Some("shared")
    );
    let commandline = domain
        .children()
        .find(|c| c.tag_name().name() == "commandline" && c.tag_name().namespace() == Some(QEMU_NS))
        .expect("qemu:commandline");
    let args: Vec<String> = commandline
        .children()
        .filter(|c| c.is_element())
        .map(|c| {
            assert_eq!(c.tag_name().name(), "arg");
            c.attribute("value").expect("value").to_owned()
        })
        .collect();
    let expected: Vec<String> = card_words(0).into_iter().chain(card_words(1)).collect();
    assert_eq!(args, expected);

    match Command::new("virt-xml-validate").arg(&path).output() {
        Ok(out) => assert!(
            out.status.success(),
            "virt-xml-validate: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("virt-xml-validate not installed: schema check skipped"),
    }
}

/// `Key=value` lines of a unit file, in order.
fn unit_values(path: &Path, key: &str) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xxcapd-dp-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn finish(mut child: Child) -> (ExitStatus, String) {
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            break;
        }
        sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn connect_and_read_magic(socket: &Path) -> Vec<u8> {
    let start = Instant::now();
    let mut fe = loop {
        match Frontend::connect(socket, 2) {
            Ok(fe) => break fe,
            Err(e) if start.elapsed() > TIMEOUT => panic!("connect: {e:?}"),
            Err(_) => sleep(Duration::from_millis(20)),
        }
    };
    fe.set_owner().expect("set_owner");
    let features = fe.get_features().expect("get_features");
    fe.set_features(features).expect("set_features");
    let proto = fe.get_protocol_features().expect("get_protocol_features");
    fe.set_protocol_features(proto)
        .expect("set_protocol_features");
    let (_, payload) = fe
        .get_config(0, 4, VhostUserConfigFlags::WRITABLE, &[0u8; 4])
        .expect("get_config");
    payload.to_vec()
}

/// The units as systemd would run them: the socket unit's ListenStream
/// (instance `card0`, under a temporary directory), the service's
/// ExecStart with its environment file's options empty. Uses
/// `systemd-socket-activate` when installed, else passes the socket the
/// same way (fd 3, LISTEN_PID, LISTEN_FDS) through `sh`.
#[test]
fn the_systemd_units_socket_activate_a_daemon_that_serves_again() {
    let dir = TempDir::new("systemd");
    let socket_unit = crate_dir().join("systemd/xxcapd@.socket");
    let service_unit = crate_dir().join("systemd/xxcapd@.service");
    let listen = unit_values(&socket_unit, "ListenStream");
    assert_eq!(listen, ["/run/xxcapd/%i.sock"]);
    let exec = unit_values(&service_unit, "ExecStart");
    assert_eq!(exec.len(), 1);
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(words[0], "/usr/bin/xxcapd");
    let args: Vec<&str> = words[1..]
        .iter()
        .copied()
        .filter(|w| *w != "$XXCAPD_OPTS")
        .collect();
    assert_eq!(args, ["--fd", "3"]);
    assert_eq!(unit_values(&service_unit, "Requires"), ["xxcapd@%i.socket"]);

    let socket = dir.0.join("card0.sock");
    let mut listener = None;
    let activate = Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = if activate {
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.arg("-l").arg(&socket).arg(env!("CARGO_BIN_EXE_xxcapd"));
        cmd
    } else {
        eprintln!("systemd-socket-activate not installed: passing the socket through sh");
        let bind = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&bind);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_xxcapd"));
        // SAFETY: dup2 and fcntl are async-signal-safe and touch only
        // descriptors; the closure runs in the forked child before exec.
        // The listener stays open in this process until the child exits.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
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
        listener = Some(bind);
        cmd
    };
    let child = cmd
        .args(&args)
        .arg("-v")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // A guest reboot keeps the connection; a QEMU restart makes a new one.
    for _ in 0..2 {
        assert_eq!(connect_and_read_magic(&socket), b"XXCP");
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let (status, stderr) = finish(child);
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(stderr.contains("connection 2"), "{stderr}");
    drop(listener);
}

/// `systemd-analyze verify` accepts the units (instance `card0`, the
/// binary path pointed at the one under test), where it is installed.
#[test]
fn systemd_analyze_accepts_the_units() {
    if !Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("systemd-analyze not installed: unit check skipped");
        return;
    }
    let dir = TempDir::new("analyze");
    for name in ["xxcapd@.socket", "xxcapd@.service"] {
        let text = fs::read_to_string(crate_dir().join("systemd").join(name)).expect("unit");
        let text = text.replace("/usr/bin/xxcapd", env!("CARGO_BIN_EXE_xxcapd"));
        fs::write(dir.0.join(name), text).expect("write");
        let instance = name.replace('@', "@card0");
        std::os::unix::fs::symlink(name, dir.0.join(&instance)).expect("symlink");
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.0.join("xxcapd@card0.socket"))
        .arg(dir.0.join("xxcapd@card0.service"))
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// Every asset `[package.metadata.deb]` installs exists (the binary aside,
/// which `cargo deb` builds).
#[test]
fn the_debian_package_assets_exist() {
    let manifest = fs::read_to_string(crate_dir().join("Cargo.toml")).expect("Cargo.toml");
    let deb = manifest
        .split("[package.metadata.deb]")
        .nth(1)
        .expect("[package.metadata.deb]");
    let deb = deb.split("\n[").next().unwrap_or(deb);
    let sources: Vec<&str> = deb
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(sources.len() >= 5, "assets: {sources:?}");
    for source in sources {
        if source.starts_with("target/") {
            continue;
        }
        assert!(crate_dir().join(source).is_file(), "{source} missing");
    }
}
