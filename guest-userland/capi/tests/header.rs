//! include/xxcapture.h must be exactly what cbindgen generates from the
//! crate, so the committed header never drifts from the functions the
//! library exports; and a C compiler must accept it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate() -> String {
    let dir = crate_dir();
    let config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("utf-8 header")
}

#[test]
fn committed_header_matches_cbindgen() {
    let path = crate_dir().join("include/xxcapture.h");
    let expected = generate();
    if std::env::var_os("XXCAP_BLESS").is_some() {
        std::fs::write(&path, &expected).expect("write header");
    }
    let actual = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        actual == expected,
        "include/xxcapture.h has drifted from the crate; regenerate it with \
         `XXCAP_BLESS=1 cargo test -p xxcapture-c --test header`"
    );
}

#[test]
fn header_compiles_as_c_and_cxx() {
    let include = crate_dir().join("include");
    let dir = std::env::temp_dir().join(format!("xxcap-capi-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("probe.c");
    std::fs::write(
        &src,
        "#include <xxcapture.h>\nint main(void) { return XXCAP_FORMAT_YUYV == 1 ? 0 : 1; }\n",
    )
    .expect("write probe");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let compile = |compiler: &str, extra: &[&str]| {
        let status = Command::new(compiler)
            .args(extra)
            .args(["-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"])
            .arg(&include)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run `{compiler}`: {e}"));
        assert!(
            status.success(),
            "xxcapture.h does not compile with {compiler} {extra:?}"
        );
    };
    compile(&cc, &["-std=c11", "-pedantic"]);
    if Command::new("c++").arg("--version").output().is_ok() {
        compile("c++", &["-x", "c++", "-std=c++17"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Path::new(&dir);
}
