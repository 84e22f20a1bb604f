use super::*;

/// The committed corpus (and every crash found) still passes.
#[test]
fn chain_corpus_replays() {
    crate::replay_corpus("chain", chain);
}

#[test]
fn backend_corpus_replays() {
    crate::replay_corpus("backend", backend);
}

#[test]
fn harness_accepts_any_bytes() {
    for len in 0..100usize {
        let data: Vec<u8> = (0..len).map(|i| (i * 131 + len * 7) as u8).collect();
        chain(&data);
        backend(&data);
    }
}
