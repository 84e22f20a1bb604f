//! `xxvm exec` as a user runs it: the worked example of docs/xxvm.md (its
//! commands read from the guide and run in a folder outside the checkout,
//! with the built `xxvm` first in `PATH`), then the exit status passed on,
//! a timeout, and options refused before anything boots.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xxcapture_hil::build::repo_root;
use xxcapture_hil::exec::{EXIT_HARNESS, EXIT_TIMEOUT};

const XXVM: &str = env!("CARGO_BIN_EXE_xxvm");

/// One VM of this file at a time is enough load for the machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The shell commands of the guide's worked example: the first `sh` block
/// after its heading.
fn guide_example() -> String {
    let guide = repo_root().join("docs/xxvm.md");
    let text = std::fs::read_to_string(&guide).unwrap_or_else(|e| panic!("{e}"));
    let section = text
        .split_once("## A worked example")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{}: no worked example", guide.display()));
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block.to_string())
        .unwrap_or_else(|| panic!("{}: no sh block in the example", guide.display()));
    block
}

/// A shell in `dir` with the built `xxvm` first in `PATH` and `XXCAPTURE`
/// set, as the guide assumes; the checkout is found the way an installed
/// `xxvm` finds it (no `--project`, no `XXVM_PROJECT`).
fn user_shell(dir: &Path, script: &str) -> Output {
    let bin = Path::new(XXVM).parent().unwrap_or(Path::new("."));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(PathBuf::from(bin)).chain(std::env::split_paths(&path)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .env("XXCAPTURE", repo_root())
        .env_remove("XXVM_PROJECT")
        .output()
        .unwrap_or_else(|e| panic!("bash: {e}"))
}

fn xxvm_exec(dir: &Path, args: &[&str]) -> Output {
    Command::new(XXVM)
        .arg("exec")
        .args(args)
        .current_dir(dir)
        .env_remove("XXVM_PROJECT")
        .output()
        .unwrap_or_else(|e| panic!("{XXVM}: {e}"))
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("xxvm-user-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn guide_example_runs_a_c_program_against_two_cards() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = workdir();
    let out = user_shell(dir.path(), &guide_example());
    let report = show(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(stdout.contains("xxvm exec: 0\n"), "{report}");
    // The folder put in: its nested file reached the guest.
    assert!(stdout.contains("two cards, two serials\n"), "{report}");
    // The folder got back: the result file, written by the C program in
    // the guest, line by line.
    let results = dir.path().join("results/cards.txt");
    let cards = std::fs::read_to_string(&results)
        .unwrap_or_else(|e| panic!("{}: {e}\n{report}", results.display()));
    assert_eq!(
        cards,
        "/dev/xxcapture0 serial=A1 card_ram=134217728 scratch=0x5eed0000 ok\n\
         /dev/xxcapture1 serial=B2 card_ram=67108864 scratch=0x5eed0001 ok\n",
        "{report}"
    );
    // The run directory of --logs run.
    let run = dir.path().join("run");
    for file in [
        "console.log",
        "kernel.log",
        "xxcapd.log",
        "xxcapd-card1.log",
    ] {
        let path = run.join(file);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        assert!(len > 0, "{} is empty or missing\n{report}", path.display());
    }
    let kernel = std::fs::read_to_string(run.join("kernel.log")).unwrap_or_default();
    assert!(kernel.contains("Linux version"), "{kernel}");
    let status = std::fs::read_to_string(run.join("status")).unwrap_or_default();
    assert!(
        status.contains("exit=0\n") && status.contains("command=0\n"),
        "{status}"
    );
    // Kept off the console while the command ran: the command's output
    // appears on xxvm's stdout and nothing else does.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{report}");
}

#[test]
#[ignore = "boots a VM: ci/test runs it with --ignored"]
fn exit_status_is_the_commands_and_a_timeout_is_124() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = workdir();
    std::fs::write(dir.path().join("in.txt"), "put\n").unwrap_or_else(|e| panic!("{e}"));
    // The command's status comes back, and its files with it.
    let out = xxvm_exec(
        dir.path(),
        &[
            "--put",
            "in.txt:/opt/in.txt",
            "--get",
            "/tmp/copy.txt:copy.txt",
            "--logs",
            "run-status",
            "--",
            "sh",
            "-c",
            "cp /opt/in.txt /tmp/copy.txt && echo failing on purpose && exit 3",
        ],
    );
    let report = show(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("failing on purpose"));
    let copy = std::fs::read_to_string(dir.path().join("copy.txt")).unwrap_or_default();
    assert_eq!(copy, "put\n", "{report}");

    // A run that cannot finish in time.
    let out = xxvm_exec(
        dir.path(),
        &[
            "--timeout",
            "5",
            "--logs",
            "run-timeout",
            "--",
            "sleep",
            "600",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_TIMEOUT)),
        "{}",
        show(&out)
    );
}

#[test]
fn bad_options_are_refused_before_anything_boots() {
    let dir = workdir();
    for (args, code, says) in [
        (&["--card", "ram=1G", "--", "true"][..], 2, "unknown key"),
        (&["--card", "size=7x7", "--", "true"][..], 2, "size"),
        (
            &["--put", "nonexistent:/x", "--", "true"][..],
            2,
            "not found",
        ),
        (&["--get", "relative:x", "--", "true"][..], 2, "absolute"),
    ] {
        let out = xxvm_exec(dir.path(), args);
        let report = show(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {report}");
        assert!(report.contains(says), "{args:?}: {report}");
    }
    // A checkout without built pieces: a harness failure that says where
    // it looked and what to run.
    let out = Command::new(XXVM)
        .args(["exec", "--project"])
        .arg(dir.path())
        .args(["--", "true"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let report = show(&out);
    assert_eq!(out.status.code(), Some(i32::from(EXIT_HARNESS)), "{report}");
    assert!(report.contains("cargo xxvm build"), "{report}");
}
