//! install.sh lays the library out as a distribution does, and a C program
//! builds from `pkg-config --cflags --libs xxcapture` alone, linked
//! dynamically and statically, and runs (here without a card: it must say
//! so and fail cleanly); the API tour builds the same way.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds libxxcapture.so and .a for this test and returns their folder.
/// A test cannot count on cargo having built a cdylib-only library before
/// it (`cargo test --workspace` does not), so it builds one itself, in a
/// target folder of its own so as not to wait on the build running the
/// tests.
fn built_dir() -> PathBuf {
    let workspace = crate_dir().join("../..");
    let target = workspace.join("target/capi-install-test");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "--offline",
            "-p",
            "xxcapture-c",
            "--target-dir",
        ])
        .arg(&target));
    target.join("debug")
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pkg_config(root: &Path, libdir: &str, args: &[&str]) -> Vec<String> {
    let out = run(Command::new("pkg-config")
        .args(args)
        .arg("xxcapture")
        .env(
            "PKG_CONFIG_PATH",
            root.join(libdir.trim_start_matches('/')).join("pkgconfig"),
        )
        .env("PKG_CONFIG_SYSROOT_DIR", root));
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn installed_library_builds_the_example_through_pkg_config() {
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("pkg-config is not installed: skipped");
        return;
    }
    let from = built_dir();
    let root = std::env::temp_dir().join(format!("xxcap-capi-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let libdir = "/usr/lib/x86_64-linux-gnu";
    run(Command::new(crate_dir().join("install.sh"))
        .args(["--prefix", "/usr", "--libdir", libdir, "--destdir"])
        .arg(&root)
        .arg("--from")
        .arg(&from));
    let lib = root.join(libdir.trim_start_matches('/'));
    for f in [
        "libxxcapture.so",
        "libxxcapture.so.0",
        "libxxcapture.a",
        "pkgconfig/xxcapture.pc",
    ] {
        assert!(lib.join(f).exists(), "{f} not installed");
    }
    assert!(root.join("usr/include/xxcapture.h").exists());
    let pc = std::fs::read_to_string(lib.join("pkgconfig/xxcapture.pc")).expect("read .pc");
    assert!(pc.contains(&format!("libdir={libdir}\n")), "{pc}");

    let cflags = pkg_config(&root, libdir, &["--cflags"]);
    let libs = pkg_config(&root, libdir, &["--libs"]);
    let static_libs = pkg_config(&root, libdir, &["--static", "--libs"]);
    let example = crate_dir().join("examples/capture.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    for (name, link, extra) in [
        ("dynamic", &libs, &[][..]),
        ("static", &static_libs, &["-static"][..]),
    ] {
        let bin = root.join(format!("capture-{name}"));
        run(Command::new(&cc)
            .args([
                "-std=c11",
                "-D_POSIX_C_SOURCE=200809L",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
            ])
            .args(&cflags)
            .arg(&example)
            .arg("-o")
            .arg(&bin)
            .args(extra)
            .args(link));
        let out = Command::new(&bin)
            .args(["--frames", "3", "--size", "640x480"])
            .env("LD_LIBRARY_PATH", &lib)
            .output()
            .expect("run the example");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.starts_with("libxxcapture "),
            "{name}: {stdout}{stderr}"
        );
        if !Path::new("/sys/class/xxcapture").exists() {
            assert_eq!(out.status.code(), Some(1), "{name}: {stdout}{stderr}");
            assert!(
                stderr.contains("no xxcapture card present"),
                "{name}: {stderr}"
            );
        }
    }
    // The API tour needs a card to run; here it must build.
    run(Command::new(&cc)
        .args([
            "-std=c11",
            "-D_POSIX_C_SOURCE=200809L",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .args(&cflags)
        .arg(crate_dir().join("examples/api_tour.c"))
        .arg("-o")
        .arg(root.join("api-tour"))
        .args(&libs));
    let _ = std::fs::remove_dir_all(&root);
}
