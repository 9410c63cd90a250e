//! Crash paths of llama.cpp (see docs/SAFETY.md) that the other test files
//! do not reach: each bad input goes through the safe API and must come back
//! as the specific error, with the test process alive.

mod common;

use common::{tiny, tiny_path};
use llama_rs::synthetic::VocabKind;
use llama_rs::{Batch, ContextParams, Error, KvOverride, Model, ModelParams, Token};

/// llama.cpp reserves one output row per sequence at context creation and
/// asserts that they fit in n_batch, itself clamped to n_ctx
/// (`llama-context.cpp:2275`): this aborted the process before llama-rs
/// checked it.
#[test]
fn more_sequences_than_batch_rows_is_error() {
    let m = tiny();
    for p in [
        ContextParams::default().n_ctx(256).n_batch(2).n_seq_max(4),
        ContextParams::default().n_ctx(8).n_batch(64).n_seq_max(16),
    ] {
        match m.new_context(p.clone().threads(1)) {
            Err(Error::InvalidParam { name: "n_seq_max", reason, .. }) => {
                assert!(reason.contains("n_batch"), "{reason}")
            }
            other => panic!("{p:?}: expected InvalidParam n_seq_max, got {other:?}"),
        }
    }
    // At the limit it works, and every sequence decodes.
    let mut c = m.new_context(ContextParams::default().n_ctx(256).n_batch(4).n_seq_max(4).threads(1)).unwrap();
    let mut b = Batch::new(4, 1).unwrap();
    for s in 0..4 {
        b.add(Token(5), 0, &[s], true).unwrap();
    }
    c.decode(&mut b).unwrap();
    assert!(c.logits(3).is_ok());
}

/// A non-causal model must take the whole batch in one ubatch
/// (`llama-context.cpp:1789` aborts otherwise). The tiny model is made
/// non-causal by overriding `llama.attention.causal`.
#[test]
fn non_causal_batch_larger_than_ubatch_is_error() {
    let p = ModelParams::default().kv_override("llama.attention.causal", KvOverride::Bool(false));
    let m = Model::load_with(tiny_path(VocabKind::Spm), p).unwrap();
    let mut c = m.new_context(ContextParams::default().n_ctx(256).n_batch(64).n_ubatch(16).threads(1)).unwrap();
    let mut b = Batch::new(32, 1).unwrap();
    for i in 0..32 {
        b.add(Token(5), i, &[0], i == 31).unwrap();
    }
    match c.decode(&mut b) {
        Err(Error::BatchInvalid { n_tokens: 32, reason }) => assert!(reason.contains("n_ubatch = 16"), "{reason}"),
        other => panic!("expected BatchInvalid, got {other:?}"),
    }
    // A batch that fits in one ubatch decodes.
    let mut b = Batch::new(16, 1).unwrap();
    for i in 0..16 {
        b.add(Token(5), i, &[0], i == 15).unwrap();
    }
    c.decode(&mut b).unwrap();
    assert!(c.logits(15).unwrap().iter().all(|v| v.is_finite()));
}
