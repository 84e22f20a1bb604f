use super::*;
use crate::replay_corpus;

/// The committed corpus (and every crash found) still passes.
#[test]
fn task_file_corpus_replays() {
    replay_corpus("task_file", task_file);
}

#[test]
fn card_sequence_corpus_replays() {
    replay_corpus("card_sequence", card_sequence);
}

#[test]
fn seeds_pass() {
    for seed in task_file_seeds() {
        task_file(&seed);
    }
}

/// Writes the hand-made starting inputs into the corpus: `cargo test -p xxcapture-fuzz-common
/// --lib write_seed_corpus -- --ignored` (see fuzz/README.md).
#[test]
#[ignore = "writes into fuzz/corpus"]
fn write_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/task_file");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (i, seed) in task_file_seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed");
    }
}

#[test]
fn harness_accepts_any_bytes() {
    for len in 0..200usize {
        let data: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        task_file(&data);
        card_sequence(&data);
    }
}
