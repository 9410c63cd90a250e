//! Regression tests for what the cargo-fuzz targets (fuzz/, scripts/fuzz)
//! found; docs/fuzzing.md lists each finding with its fuzz input. Each test
//! killed the test process (abort or out-of-memory) or panicked before its
//! fix; the test process surviving is part of the proof.

mod common;

use common::tiny;
use llama_rs::{Batch, Context, ContextParams, Error, Token};

fn ctx(n_seq_max: u32) -> Context<'static> {
    tiny().new_context(ContextParams::default().n_ctx(128).n_batch(32).n_seq_max(n_seq_max).threads(1)).unwrap()
}

/// Decodes tokens 10..10+n at positions 0..n in each of `seqs`.
fn fill(c: &mut Context, seqs: &[i32], n: i32) {
    let mut batch = Batch::new(32, 1).unwrap();
    for &s in seqs {
        batch.clear();
        for p in 0..n {
            batch.add(Token(10 + p), p, &[s], p == n - 1).unwrap();
        }
        c.decode(&mut batch).unwrap();
    }
}

/// fuzz batch, crash-96ea9892 (6 bytes `f7 77 60 ff 31 b5`):
/// `SeqAdd { seq: None, from: Unbounded, to: Unbounded, delta: 0 }` on a
/// fresh context. `None` ("every sequence") went to llama.cpp as seq_id -1,
/// which `llama_kv_cache::seq_add` and `seq_div` assert against
/// (`llama-kv-cache.cpp:594`, `:644`; only `seq_rm` takes -1): SIGABRT.
/// Now one call per sequence.
#[test]
fn seq_add_and_seq_div_on_every_sequence() {
    for n_seq_max in [1, 3] {
        let mut c = ctx(n_seq_max);
        // The fuzz input itself: an empty cache, delta 0.
        c.seq_add(None, .., 0).unwrap();
        c.seq_div(None, .., 1).unwrap();
        let seqs: Vec<i32> = (0..n_seq_max as i32).collect();
        fill(&mut c, &seqs, 4);
        c.seq_add(None, .., 6).unwrap();
        for &s in &seqs {
            assert_eq!(c.seq_pos_min(s).unwrap(), Some(6), "seq {s} after seq_add(None)");
            assert_eq!(c.seq_pos_max(s).unwrap(), Some(9), "seq {s} after seq_add(None)");
        }
        c.seq_div(None, 8.., 2).unwrap();
        for &s in &seqs {
            assert_eq!(c.seq_pos_max(s).unwrap(), Some(7), "seq {s} after seq_div(None, 8..)");
        }
        c.seq_add(None, .., -100).unwrap();
        for &s in &seqs {
            assert_eq!(c.seq_pos_max(s).unwrap(), None, "seq {s} shifted below 0 is removed");
        }
    }
}

/// Found while closing the above (same KV cache code, `llama-kv-cache.cpp:524`):
/// with several sequences each has its own KV stream (llama-rs never sets
/// `kv_unified`), and `seq_cp` between two streams with a partial position
/// range aborts ("seq_cp() is only supported for full KV buffers"). Now
/// `Error::Memory`; whole copies work.
#[test]
fn partial_seq_cp_across_streams_is_error() {
    let mut c = ctx(4);
    fill(&mut c, &[0], 6);
    for (p0, p1) in [(Some(2), None), (None, Some(3)), (Some(1), Some(4))] {
        let range = (
            p0.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included),
            p1.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
        );
        match c.seq_cp(0, 1, range) {
            Err(Error::Memory { op: "seq_cp", .. }) => {}
            other => panic!("seq_cp(0, 1, {p0:?}..{p1:?}): {other:?}"),
        }
    }
    // Whole copies, and partial ones within one sequence (a no-op), are fine.
    c.seq_cp(0, 1, ..).unwrap();
    c.seq_cp(0, 2, 0..).unwrap();
    c.seq_cp(0, 0, 2..4).unwrap();
    // A single-sequence context has one stream: partial ranges are fine.
    let mut one = ctx(1);
    fill(&mut one, &[0], 6);
    one.seq_cp(0, 0, 2..4).unwrap();
}

/// fuzz batch, oom-a597ab4d: `NewBatch { capacity: 6960, n_seq_max: 3803786 }`
/// (the target bounds the capacity to 810: a 12 GB allocation). `Batch::new`
/// allocated `capacity * n_seq_max` sequence ids (105 GB here: the test
/// process aborted; a larger product overflowed: a panic in debug builds, a
/// wrapped size in release ones). n_seq_max is now clamped to llama.cpp's
/// maximum (256).
#[test]
fn batch_n_seq_max_is_clamped() {
    let b = Batch::new(6960, 3_803_786).unwrap();
    // SAFETY: pure query of a constant.
    let max = unsafe { llama_rs::sys::llama_max_parallel_sequences() };
    assert_eq!(b.n_seq_max(), max);
    for n_seq_max in [usize::MAX, 1 << 40, (1 << 63) + 1] {
        assert_eq!(Batch::new(2, n_seq_max).unwrap().n_seq_max(), max);
    }
    assert_eq!(Batch::new(2, 0).unwrap().n_seq_max(), 1);
    assert_eq!(Batch::new(2, 3).unwrap().n_seq_max(), 3);
}

/// fuzz batch, crash-1d983e5d: `AddSequence { tokens: [2 tokens], start_pos:
/// 2147483647, .. }`: `start_pos + i` overflowed (a panic in debug builds).
/// Now `InvalidParam` before any token is added.
#[test]
fn add_sequence_position_overflow_is_error() {
    let mut b = Batch::new(8, 1).unwrap();
    match b.add_sequence(&[Token(1), Token(2)], i32::MAX, 0, true) {
        Err(Error::InvalidParam { name: "position", .. }) => {}
        other => panic!("add_sequence at i32::MAX: {other:?}"),
    }
    assert!(b.is_empty());
    // The last position may be MAX_POS itself (positions are bounded by
    // llama_rs::MAX_POS since; tests/reliability.rs checks the bound).
    b.add_sequence(&[Token(1), Token(2)], llama_rs::MAX_POS - 1, 0, true).unwrap();
    assert_eq!(b.len(), 2);
    b.add_sequence(&[], i32::MAX, 0, true).unwrap();
}
