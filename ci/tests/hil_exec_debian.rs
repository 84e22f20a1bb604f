//! `xxvm exec --image debian` as a user runs it, and the Debian package of
//! xxcapd installed in that guest, in one boot of the Debian image (a boot
//! takes about a minute under TCG).
//!
//! The host builds the package (`ci/build-deb`: `cargo deb -p xxcapd` with
//! a cargo-deb kept in the cache) and checks its file list; then one
//! `xxvm exec --image debian` puts a file, a folder and the package in,
//! runs a script that reads the put files, asks the card through `xxcap
//! info`, sysfs and `v4l2-ctl`, installs the package with `dpkg -i`, runs
//! the installed `xxcapd`, reads its systemd units and starts a socket
//! unit, writes what it found into a folder that comes back with `--get`,
//! and then fails on purpose with status 3, which `xxvm exec` must pass
//! on. Any earlier step that fails ends the script with that step's own
//! status instead (`set -e`), so the status tells them apart.
//!
//! `XXCAP_EXEC_DIST` picks the Debian release (default bookworm; the image
//! is built first when it is missing, as for `hil_apps`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use xxcapture_hil::build::repo_root;
use xxcapture_hil::image::DebianImage;
use xxcapture_hil::Artifacts;

const XXVM: &str = env!("CARGO_BIN_EXE_xxvm");

/// What the command exits with when every step before it worked.
const ON_PURPOSE: i32 = 3;

/// The guest half: runs as `sh /opt/inputs/check.sh` (put in with the
/// inputs folder); every result goes to /tmp/results, fetched with --get.
const GUEST_SCRIPT: &str = r#"set -eu
out=/tmp/results
mkdir -p "$out"
# The put file and the put folder (with a file in a subfolder).
cp /opt/greeting.txt "$out/greeting.txt"
cat /opt/inputs/notes/what.txt
# The card: through the project's tool (static, from the tools disk),
# through sysfs, and as a V4L2 node that v4l-utils finds.
xxcap info >"$out/xxcap-info.txt"
cat /sys/class/xxcapture/xxcapture0/serial >"$out/serial.txt"
v4l2-ctl --list-devices >"$out/v4l2-devices.txt"
# The package: installed with dpkg alone (its dependencies are in the image).
dpkg -i /tmp/debs/*.deb >"$out/dpkg-i.txt" 2>&1
dpkg-query -W -f '${Package} ${Version} ${Status}\n' xxcapd >"$out/dpkg-status.txt"
dpkg -L xxcapd >"$out/dpkg-L.txt"
command -v xxcapd >"$out/which.txt"
xxcapd --version >"$out/version.txt"
xxcapd --socket-path /run/xxcapd/card0.sock --id card0 --print-qemu-args >"$out/qemu-args.txt"
# The units as systemd reads them, and one socket unit listening.
systemctl cat xxcapd@.socket xxcapd@.service >"$out/units.txt"
systemctl start xxcapd@card0.socket
systemctl is-active xxcapd@card0.socket >"$out/socket-active.txt"
stat -c '%F %a %G' /run/xxcapd/card0.sock >"$out/socket.txt"
echo all steps done >"$out/done.txt"
echo "failing on purpose with status 3"
exit 3
"#;

fn dist() -> String {
    std::env::var("XXCAP_EXEC_DIST").unwrap_or_else(|_| "bookworm".into())
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read(path: &Path, report: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}\n{report}", path.display()))
}

/// Builds the package with ci/build-deb; returns its path.
fn build_deb() -> PathBuf {
    let out = Command::new(repo_root().join("ci/build-deb"))
        .output()
        .unwrap_or_else(|e| panic!("ci/build-deb: {e}"));
    assert!(out.status.success(), "ci/build-deb failed: {}", show(&out));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    PathBuf::from(path)
}

/// The package's file list, as `dpkg-deb -c` prints it: the paths only.
fn deb_contents(deb: &Path) -> Vec<String> {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap_or_else(|e| panic!("dpkg-deb: {e}"));
    assert!(out.status.success(), "dpkg-deb -c: {}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

/// One field of the package's control file.
fn deb_field(deb: &Path, field: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .arg(field)
        .output()
        .unwrap_or_else(|e| panic!("dpkg-deb: {e}"));
    assert!(out.status.success(), "dpkg-deb -f: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the package installs (files, not folders).
const PACKAGE_FILES: &[&str] = &[
    "/usr/bin/xxcapd",
    "/usr/share/man/man1/xxcapd.1.gz",
    "/usr/share/qemu/vhost-user/50-xxcapd.json",
    "/usr/lib/systemd/system/xxcapd@.socket",
    "/usr/lib/systemd/system/xxcapd@.service",
    "/usr/share/doc/xxcapd/examples/libvirt-domain.xml",
    "/usr/share/doc/xxcapd/README.md",
    "/usr/share/doc/xxcapd/copyright",
];

#[test]
#[ignore = "boots the Debian image: ci/test runs it with --ignored"]
fn debian_guest_runs_a_command_and_installs_the_xxcapd_package() {
    let dist = dist();
    DebianImage::build(&dist).unwrap_or_else(|e| panic!("{e}"));

    let t = Instant::now();
    let deb = build_deb();
    let build_secs = t.elapsed().as_secs_f64();
    let contents = deb_contents(&deb);
    for file in PACKAGE_FILES {
        assert!(
            contents.iter().any(|p| p == file),
            "{} lacks {file}: {contents:?}",
            deb.display()
        );
    }
    let files = contents.iter().filter(|p| !p.ends_with('/')).count();
    assert_eq!(
        files,
        PACKAGE_FILES.len(),
        "{} holds files the test does not know: {contents:?}",
        deb.display()
    );

    // The user's folder: a file, a folder with a subfolder, the package.
    // Kept after the run, with the run directory in it, for a look at a
    // failure.
    let dir = repo_root().join("target/hil-logs/exec-debian");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    };
    write("greeting.txt", "hello from the host\n");
    write(
        "inputs/notes/what.txt",
        "a folder put into the Debian guest\n",
    );
    write("inputs/check.sh", GUEST_SCRIPT);
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{}: no file name", deb.display()))
        .to_string();
    std::fs::copy(&deb, dir.join(&deb_name)).unwrap_or_else(|e| panic!("{e}"));

    let t = Instant::now();
    let out = Command::new(XXVM)
        .current_dir(&dir)
        .env_remove("XXVM_PROJECT")
        .args(["exec", "--image", "debian", "--dist", &dist])
        .args(["--card", "serial=DEB-0"])
        .args(["--put", "greeting.txt:/opt/greeting.txt"])
        .args(["--put", "inputs:/opt/inputs"])
        .args(["--put", &format!("{deb_name}:/tmp/debs/")])
        .args(["--get", "/tmp/results:results"])
        .args(["--logs", "run", "--timeout", "600"])
        .args(["--", "sh", "/opt/inputs/check.sh"])
        .output()
        .unwrap_or_else(|e| panic!("{XXVM}: {e}"));
    let exec_secs = t.elapsed().as_secs_f64();
    let report = show(&out);
    let run = dir.join("run");
    let results = dir.join("results");
    // Which step failed, if one did: the last result written tells.
    let written: Vec<String> = std::fs::read_dir(&results)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let report = format!(
        "{report}\nresults: {written:?}\nconsole.log tail:\n{}",
        std::fs::read_to_string(run.join("console.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(out.status.code(), Some(ON_PURPOSE), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("a folder put into the Debian guest\n")
            && stdout.contains("failing on purpose with status 3\n"),
        "{report}"
    );
    assert_eq!(read(&results.join("done.txt"), &report), "all steps done\n");

    // The put file came back unchanged through the guest.
    assert_eq!(
        read(&results.join("greeting.txt"), &report),
        "hello from the host\n"
    );
    // The card, as the guest sees it.
    let info = read(&results.join("xxcap-info.txt"), &report);
    assert!(
        info.contains("config space and task file agree"),
        "xxcap info: {info}"
    );
    assert_eq!(read(&results.join("serial.txt"), &report).trim(), "DEB-0");
    let v4l2 = read(&results.join("v4l2-devices.txt"), &report);
    assert!(
        v4l2.contains("/dev/video"),
        "v4l2-ctl --list-devices: {v4l2}"
    );
    // The package, installed and working.
    let status = read(&results.join("dpkg-status.txt"), &report);
    assert_eq!(
        status,
        format!(
            "xxcapd {} install ok installed\n",
            deb_field(&deb, "Version")
        ),
    );
    let installed = read(&results.join("dpkg-L.txt"), &report);
    for file in PACKAGE_FILES {
        assert!(
            installed.lines().any(|l| l == *file),
            "dpkg -L xxcapd lacks {file}:\n{installed}"
        );
    }
    assert_eq!(
        read(&results.join("which.txt"), &report).trim(),
        "/usr/bin/xxcapd"
    );
    // The installed binary is the one built here.
    let artifacts = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let host = Command::new(&artifacts.xxcapd)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("xxcapd --version on the host: {e}"));
    assert_eq!(
        read(&results.join("version.txt"), &report),
        String::from_utf8_lossy(&host.stdout)
    );
    let qemu_args = read(&results.join("qemu-args.txt"), &report);
    assert!(
        qemu_args.contains("vhost-user-test-device-pci")
            && qemu_args.contains("/run/xxcapd/card0.sock"),
        "{qemu_args}"
    );
    let units = read(&results.join("units.txt"), &report);
    // systemd names the file where it found it: /lib/systemd/system on
    // bookworm (which reaches /usr/lib through the merged /usr), /usr/lib
    // on later releases.
    let found: Vec<&str> = units.lines().filter(|l| l.starts_with("# /")).collect();
    for unit in ["xxcapd@.socket", "xxcapd@.service"] {
        assert!(
            found
                .iter()
                .any(|l| l.ends_with(&format!("lib/systemd/system/{unit}"))),
            "systemctl cat found no {unit}:\n{units}"
        );
    }
    assert!(
        units.contains("ExecStart=/usr/bin/xxcapd --fd 3 $XXCAPD_OPTS"),
        "systemctl cat:\n{units}"
    );
    assert_eq!(
        read(&results.join("socket-active.txt"), &report).trim(),
        "active"
    );
    assert_eq!(
        read(&results.join("socket.txt"), &report).trim(),
        "socket 660 kvm"
    );

    // The run directory of --logs run.
    for file in ["console.log", "kernel.log", "xxcapd.log", "status"] {
        let path = run.join(file);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(len > 0, "{} is empty or missing\n{report}", path.display());
    }
    let kernel = read(&run.join("kernel.log"), &report);
    assert!(kernel.contains("Linux version"), "{kernel}");
    let status = read(&run.join("status"), &report);
    assert!(
        status.contains("exit=3\n") && status.contains("command=3\n"),
        "{status}"
    );
    eprintln!(
        "Debian {dist}: package built in {build_secs:.1} s; xxvm exec --image debian \
         {exec_secs:.1} s wall (guest: {})",
        status
            .lines()
            .find(|l| l.starts_with("wall_seconds="))
            .unwrap_or("?")
    );
}
