//! Provisioning and building everything the VM needs.
//!
//! `build_all` runs `images/provision`, builds `xxcapture.ko` against the
//! provisioned kernel headers, the static guest tools, `xxcapd`, and the
//! initramfs. `locate` only finds them, for tests that must not run cargo
//! (a test already runs inside cargo).
//!
//! `XXCAP_KERNEL_TRACK=<track>` (a track of `images/provision --kernel`:
//! `bookworm`, `trixie`, `trixie-backports`) switches both to that track's
//! kernel: the module is built with its headers and compiler, the
//! initramfs takes its modules, the VM boots it, and the pieces that depend
//! on the kernel go to their own build folder. Unset, the default kernel
//! of `provisioned.env` is used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The target the guest tools are built for, statically linked.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The checkout whose built pieces the harness uses: the one set with
/// [`set_repo_root`] (`xxvm --project DIR`), else `XXVM_PROJECT` from the
/// environment, else the checkout this crate was built from (where an
/// `xxvm` installed with `cargo install --path ci` finds it).
pub fn repo_root() -> PathBuf {
    if let Some(dir) = PROJECT_ROOT.get() {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os("XXVM_PROJECT").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

static PROJECT_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes `dir` the checkout [`repo_root`] returns, for the whole process
/// (the first call wins).
pub fn set_repo_root(dir: PathBuf) {
    let _ = PROJECT_ROOT.set(dir);
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XXCAP_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/xxcapture")
}

/// The kernel track chosen with `XXCAP_KERNEL_TRACK`, if any.
pub fn kernel_track() -> Option<String> {
    std::env::var("XXCAP_KERNEL_TRACK")
        .ok()
        .filter(|t| !t.is_empty())
}

/// Where built artifacts go: ignored folders of the checkout (one per
/// kernel track chosen with `XXCAP_KERNEL_TRACK`).
pub fn build_dir() -> PathBuf {
    let dir = repo_root().join(".cache/build");
    match kernel_track() {
        Some(track) => dir.join(format!("kernel-{track}")),
        None => dir,
    }
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

/// What `images/provision` produced.
#[derive(Clone, Debug)]
pub struct Provisioned {
    pub qemu: PathBuf,
    pub qemu_version: String,
    pub kernel_abi: String,
    pub kernel: PathBuf,
    pub kernel_modules: PathBuf,
    pub kernel_headers: PathBuf,
    /// The compiler the kernel's headers ask for, when not the host's `cc`.
    pub kernel_cc: Option<String>,
    /// A folder to put first in `PATH` for that compiler (fetched by
    /// `images/provision` when the host has none).
    pub kernel_path: Option<PathBuf>,
}

/// The `KEY=VALUE` lines of a file `images/provision` wrote.
fn read_env(path: &Path, hint: &str) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|_| Error::Missing(format!("{} ({hint})", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

impl Provisioned {
    /// Reads `provisioned.env` from the cache, and with `XXCAP_KERNEL_TRACK`
    /// the track's `kernel-<track>.env` over it.
    pub fn load() -> Result<Self> {
        let mut path = cache_dir().join("provisioned.env");
        let mut vars = read_env(
            &path,
            "the VM images are not provisioned: run `images/provision`",
        )?;
        if let Some(track) = kernel_track() {
            if !track
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(Error::Step(format!(
                    "XXCAP_KERNEL_TRACK={track}: not a kernel track name"
                )));
            }
            path = cache_dir().join(format!("kernel-{track}.env"));
            let hint = format!("run `images/provision --kernel {track}`");
            vars.extend(read_env(&path, &hint)?);
        }
        let get = |key: &str| -> Result<String> {
            vars.get(key)
                .cloned()
                .ok_or_else(|| Error::Missing(format!("{key} in {}", path.display())))
        };
        let file = |key: &str| -> Result<PathBuf> {
            let p = PathBuf::from(get(key)?);
            if p.exists() {
                Ok(p)
            } else {
                Err(Error::Missing(format!(
                    "{} ({key}; re-run `images/provision`)",
                    p.display()
                )))
            }
        };
        Ok(Provisioned {
            qemu: file("XXCAP_QEMU")?,
            qemu_version: get("XXCAP_QEMU_VERSION")?,
            kernel_abi: get("XXCAP_KABI")?,
            kernel: file("XXCAP_KERNEL")?,
            kernel_modules: file("XXCAP_KMODULES")?,
            kernel_headers: file("XXCAP_KDIR")?,
            kernel_cc: vars.get("XXCAP_KCC").filter(|v| !v.is_empty()).cloned(),
            kernel_path: vars
                .get("XXCAP_KPATH")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        })
    }
}

/// Everything a VM run needs.
#[derive(Clone, Debug)]
pub struct Artifacts {
    pub provisioned: Provisioned,
    pub module: PathBuf,
    pub xxcap: PathBuf,
    /// The guest's test and benchmark tool.
    pub xxcap_test: PathBuf,
    pub xxcapd: PathBuf,
    pub initramfs: PathBuf,
    /// The crossings tracer (QEMU TCG plugin).
    pub crossings_plugin: PathBuf,
    /// What QEMU's `-kernel` boots: the provisioned kernel's uncompressed
    /// ELF image (see [`extract_vmlinux`]) when it was extracted, else the
    /// compressed kernel itself.
    pub boot_kernel: PathBuf,
}

fn must_exist(path: PathBuf, how: &str) -> Result<PathBuf> {
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::Missing(format!("{} ({how})", path.display())))
    }
}

/// The test VM's initramfs, not compressed: the kernel copies it in a
/// fraction of the time it took to inflate the gzip one under TCG (about
/// 20 MB instead of 6.4 MB, loaded by QEMU in milliseconds).
pub const TEST_INITRAMFS: &str = "initramfs.cpio";

const BUILD_HINT: &str = "build it with `cargo xxvm build`; `ci/test` does";

impl Artifacts {
    /// Finds artifacts built earlier; names the first missing piece.
    pub fn locate() -> Result<Self> {
        let provisioned = Provisioned::load()?;
        let vmlinux = build_dir().join("vmlinux");
        let boot_kernel = match is_newer(&vmlinux, &provisioned.kernel) {
            true => vmlinux,
            false => provisioned.kernel.clone(),
        };
        Ok(Artifacts {
            boot_kernel,
            provisioned,
            module: must_exist(build_dir().join("xxcapture.ko"), BUILD_HINT)?,
            xxcap: must_exist(
                target_dir().join(GUEST_TARGET).join("release/xxcap"),
                BUILD_HINT,
            )?,
            xxcap_test: must_exist(
                target_dir().join(GUEST_TARGET).join("release/xxcap-test"),
                BUILD_HINT,
            )?,
            xxcapd: must_exist(target_dir().join("release/xxcapd"), BUILD_HINT)?,
            initramfs: must_exist(build_dir().join(TEST_INITRAMFS), BUILD_HINT)?,
            crossings_plugin: must_exist(
                target_dir().join("release/libxxcapture_crossings.so"),
                BUILD_HINT,
            )?,
        })
    }
}

/// `a` exists and was written after `b`.
fn is_newer(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(a), modified(b)), (Some(a), Some(b)) if a >= b)
}

/// Writes the ELF image inside the compressed kernel `vmlinuz` (an
/// XZ-compressed payload, as Debian builds them) to `out`. QEMU boots such
/// an image through its PVH entry point (the kernel has CONFIG_PVH): no
/// real-mode setup and, above all, no decompression, which under TCG took
/// several seconds of every boot. Returns false, leaving `out` absent, when
/// the kernel is not of that kind; the compressed kernel is booted then.
pub fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<bool> {
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let image =
        std::fs::read(vmlinuz).map_err(|e| Error::Step(format!("{}: {e}", vmlinuz.display())))?;
    let _ = std::fs::remove_file(out);
    let Some(at) = image.windows(XZ_MAGIC.len()).position(|w| w == XZ_MAGIC) else {
        return Ok(false);
    };
    let tmp = out.with_extension("tmp");
    let file =
        std::fs::File::create(&tmp).map_err(|e| Error::Step(format!("{}: {e}", tmp.display())))?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::Step(format!("cannot start xz: {e}")))?;
    if let Some(mut stdin) = xz.stdin.take() {
        use std::io::Write;
        // xz stops at the end of its stream; what follows is not read.
        let _ = stdin.write_all(&image[at..]);
    }
    let status = xz.wait().map_err(|e| Error::Step(format!("xz: {e}")))?;
    let elf = std::fs::read(&tmp)
        .ok()
        .is_some_and(|b| b.starts_with(b"\x7fELF") && has_pvh_note(&b));
    if !status.success() || !elf {
        let _ = std::fs::remove_file(&tmp);
        return Ok(false);
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::Step(format!("{}: {e}", out.display())))?;
    Ok(true)
}

/// The image carries Xen's PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, type
/// 18, owner "Xen"), which QEMU needs to boot an ELF kernel.
fn has_pvh_note(elf: &[u8]) -> bool {
    // A note header is namesz, descsz, type (u32 each), then "Xen\0";
    // the 64-bit kernel's entry address is 8 bytes.
    let mut needle = Vec::new();
    needle.extend_from_slice(&4u32.to_le_bytes());
    needle.extend_from_slice(&8u32.to_le_bytes());
    needle.extend_from_slice(&18u32.to_le_bytes());
    needle.extend_from_slice(b"Xen\0");
    elf.windows(needle.len()).any(|w| w == needle.as_slice())
}

pub(crate) fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xxvm: {what}");
    let status = cmd
        .status()
        .map_err(|e| Error::Step(format!("{what}: cannot start {:?}: {e}", cmd.get_program())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Step(format!("{what} failed ({status})")))
    }
}

/// Kernel modules of the benchmark VM beyond the test VM's: the kernel's
/// vivid virtual capture driver (its dependencies come along), loaded at
/// boot, for the comparison with what users would pick instead.
pub const BENCH_KMODS: &[&str] = &["vivid", "uio_pci_generic"];

/// Packs the guest's initramfs at `out`: busybox, /init, the guest tools,
/// the module, virtio (and virtio_blk for the capture tests' output disk),
/// the V4L2 and videobuf2 modules the module needs, plus `extra_kmods`
/// from the provisioned kernel, and the `extra_adds` (`SRC:DEST`);
/// gzip-compressed when `out` ends in `.gz`.
fn pack_initramfs(out: &Path, extra_kmods: &[&str], extra_adds: &[String]) -> Result<()> {
    let root = repo_root();
    let release = target_dir().join(GUEST_TARGET).join("release");
    let provisioned = Provisioned::load()?;
    let mut cmd = Command::new(root.join("images/mkinitramfs"));
    cmd.env("XXCAP_KMODULES", &provisioned.kernel_modules)
        .arg("--out")
        .arg(out)
        .arg("--init")
        .arg(root.join("ci/guest/init"))
        .arg("--add")
        .arg(format!("{}:/bin/xxcap", release.join("xxcap").display()))
        .arg("--add")
        .arg(format!(
            "{}:/bin/xxcap-test",
            release.join("xxcap-test").display()
        ))
        .arg("--add")
        .arg(format!(
            "{}:/bin/edu-probe",
            release.join("edu-probe").display()
        ))
        .arg("--add")
        .arg(format!(
            "{}:/lib/xxcapture/xxcapture.ko",
            build_dir().join("xxcapture.ko").display()
        ))
        .args(["--kmod", "virtio_blk"])
        // xxcapture.ko's V4L2 node: the modules it links against (with
        // videodev, videobuf2-common, -memops and mc), loaded before it.
        .args(["--kmod", "videobuf2-v4l2", "--kmod", "videobuf2-dma-sg"])
        .stdout(std::process::Stdio::null());
    for (_, binary) in CAPI_EXAMPLES {
        cmd.arg("--add").arg(format!(
            "{}:/bin/{binary}",
            build_dir().join(binary).display()
        ));
    }
    for kmod in extra_kmods {
        cmd.args(["--kmod", kmod]);
    }
    for add in extra_adds {
        cmd.arg("--add").arg(add);
    }
    if out.extension().is_none_or(|e| e != "gz") {
        cmd.arg("--no-compress");
    }
    run(&format!("packing {}", out.display()), &mut cmd)
}

/// The benchmark VM's initramfs (the test one plus [`BENCH_KMODS`]), next
/// to the test one; call after [`build_all`].
pub fn bench_initramfs() -> Result<PathBuf> {
    let out = build_dir().join("initramfs-bench.cpio.gz");
    pack_initramfs(&out, BENCH_KMODS, &[])?;
    Ok(out)
}

/// The V4L2 test VM's initramfs: the test one plus `v4l2-compliance` and
/// `v4l2-ctl` from Debian 13's v4l-utils with their libraries (fetched
/// once by `ci/guest/fetch-v4l-utils` into the build directory), and
/// vivid, whose buffers the DMABUF tests import; next to the test one;
/// call after [`build_all`].
pub fn v4l2_initramfs() -> Result<PathBuf> {
    let tools = build_dir().join("v4l-utils");
    run(
        "fetching v4l-utils (ci/guest/fetch-v4l-utils)",
        Command::new(repo_root().join("ci/guest/fetch-v4l-utils"))
            .arg(&tools)
            .stdout(std::process::Stdio::null()),
    )?;
    let adds = [
        ("bin/v4l2-compliance", "/bin/v4l2-compliance"),
        ("bin/v4l2-ctl", "/bin/v4l2-ctl"),
        ("lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"),
        ("lib64", "/lib64"),
    ]
    .map(|(src, dest)| format!("{}:{dest}", tools.join(src).display()));
    let out = build_dir().join("initramfs-v4l2.cpio.gz");
    pack_initramfs(&out, &["vivid"], &adds)?;
    Ok(out)
}

/// The C interface's example programs (in `guest-userland/capi/examples`)
/// and the names they have in the guest's /bin.
const CAPI_EXAMPLES: &[(&str, &str)] = &[
    ("capture.c", "xxcap-capi-capture"),
    ("api_tour.c", "xxcap-capi-tour"),
];

/// Builds `libxxcapture.a` (the C interface) for the guest target and links
/// the C examples against it, statically, with the host's gcc: the guest's
/// initramfs has no shared libraries.
fn build_capi_examples(root: &Path) -> Result<()> {
    let capi = root.join("guest-userland/capi");
    run(
        "building libxxcapture.a for the guest (static)",
        Command::new(env!("CARGO"))
            .current_dir(root)
            .args([
                "rustc",
                "--quiet",
                "--release",
                "--target",
                GUEST_TARGET,
                "-p",
                "xxcapture-c",
                "--crate-type",
                "staticlib",
            ])
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            ),
    )?;
    let lib = target_dir()
        .join(GUEST_TARGET)
        .join("release/libxxcapture.a");
    for (source, binary) in CAPI_EXAMPLES {
        let what = format!("linking the C example {binary} statically");
        eprintln!("xxvm: {what}");
        let out = Command::new("gcc")
            .args([
                "-static",
                "-std=c11",
                "-D_POSIX_C_SOURCE=200809L",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-I",
            ])
            .arg(capi.join("include"))
            .arg(capi.join("examples").join(source))
            .arg(&lib)
            .args([
                "-Wl,--gc-sections",
                "-s",
                "-lpthread",
                "-ldl",
                "-lm",
                "-lrt",
                "-lutil",
            ])
            .arg("-o")
            .arg(build_dir().join(binary))
            .output()
            .map_err(|e| Error::Step(format!("{what}: cannot start gcc: {e}")))?;
        // On success the linker's only output is its warning that std's
        // unused name-service lookups need glibc's shared libraries in a
        // static program: shown only when the link fails.
        if !out.status.success() {
            return Err(Error::Step(format!(
                "{what} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

/// Provisions, builds and packs everything; returns where it all is.
pub fn build_all() -> Result<Artifacts> {
    let root = repo_root();
    let mut provision = Command::new(root.join("images/provision"));
    if let Some(track) = kernel_track() {
        provision.args(["--kernel", &track]);
    }
    run(
        "provisioning QEMU, guest kernel and headers (images/provision)",
        provision.stdout(std::process::Stdio::null()),
    )?;
    let provisioned = Provisioned::load()?;
    std::fs::create_dir_all(build_dir())
        .map_err(|e| Error::Step(format!("create {}: {e}", build_dir().display())))?;

    let mut make = Command::new("make");
    make.arg("-s")
        .arg("-C")
        .arg(root.join("guest-driver"))
        .arg(format!("KDIR={}", provisioned.kernel_headers.display()));
    if let Some(cc) = &provisioned.kernel_cc {
        make.arg(format!("CC={cc}"));
    }
    if let Some(dir) = &provisioned.kernel_path {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined =
            std::env::join_paths(std::iter::once(dir.clone()).chain(std::env::split_paths(&path)))
                .map_err(|e| Error::Step(format!("PATH with {}: {e}", dir.display())))?;
        make.env("PATH", joined);
    }
    run(
        &format!("building xxcapture.ko for {}", provisioned.kernel_abi),
        &mut make,
    )?;
    std::fs::copy(
        root.join("guest-driver/xxcapture.ko"),
        build_dir().join("xxcapture.ko"),
    )
    .map_err(|e| Error::Step(format!("copy xxcapture.ko: {e}")))?;

    run(
        "building the guest tools (static xxcap, xxcap-test, edu-probe)",
        Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "--release",
                "--target",
                GUEST_TARGET,
                "-p",
                "xxcap",
                "-p",
                "xxcap-test",
                "-p",
                "edu-probe",
            ])
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            ),
    )?;
    build_capi_examples(&root)?;
    run(
        "building xxcapd and the crossings tracer",
        Command::new(env!("CARGO")).current_dir(&root).args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "xxcapd",
            "-p",
            "xxcapture-crossings",
        ]),
    )?;
    pack_initramfs(&build_dir().join(TEST_INITRAMFS), &[], &[])?;
    let vmlinux = build_dir().join("vmlinux");
    if !is_newer(&vmlinux, &provisioned.kernel) {
        eprintln!("xxvm: extracting the kernel's ELF image (boots without decompressing)");
        if !extract_vmlinux(&provisioned.kernel, &vmlinux)? {
            eprintln!("xxvm: the kernel has no XZ payload with a PVH entry: booting it compressed");
        }
    }
    Artifacts::locate()
}
