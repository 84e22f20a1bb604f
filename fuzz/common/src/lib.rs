//! The fuzz harnesses of the Double X card: what each fuzz target in
//! `fuzz/fuzz_targets/` runs on its input, and the checks (oracles) that
//! make a run fail. Kept out of the product crates, which they drive
//! through their public API only.
//!
//! - [`model`]: the task-file executor of `xxcapture-model` (targets
//!   `task_file`, `card_sequence`);
//! - [`backend`]: the request handling of `xxcapd` (targets `chain`,
//!   `backend`);
//! - [`ring`]: the submission and completion rings of `xxcapd` (target
//!   `ring`).
//!
//! This crate is a member of the main workspace, so that `cargo test`
//! replays the committed corpus and regressions ([`replay_corpus`]) through
//! the same checks without libFuzzer; the cargo-fuzz crate in `fuzz/`
//! (its own workspace) links it into the fuzz targets.

pub mod backend;
pub mod model;
pub mod ring;

/// Runs `run` over every input committed for fuzz target `target`
/// (`fuzz/corpus/<target>` and `fuzz/regressions/<target>`): this crate's
/// tests replay them so a fixed crash stays fixed.
pub fn replay_corpus(target: &str, run: fn(&[u8])) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    for path in files {
        let Ok(data) = std::fs::read(&path) else {
            panic!("cannot read {}", path.display());
        };
        run(&data);
    }
}
