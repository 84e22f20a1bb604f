//! Gives libxxcapture.so its soname, so programs linked against it load
//! the ABI-compatible library (`libxxcapture.so.MAJOR`), as C libraries do.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libxxcapture.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
