//! Threads: one Model shared by 8 threads, each generating on its own
//! Context at once, gives the same tokens as sequential runs; contexts are
//! created from 8 threads at once (llama-rs serialises creation per model).
//! That a Context is not Sync is a compile-time check: the `compile_fail`
//! doctest on [`llama_rs::Context`] (E0277).

mod common;

use common::tiny;
use llama_rs::{ContextParams, GenerateParams, Model, Piece, Sampler, Token};
use std::sync::Barrier;

const THREADS: usize = 8;
const PROMPT: &str = "the quick brown fox jumps over the lazy dog and";
const N_TOKENS: usize = 32;

/// Greedy generation of 32 tokens (EOS banned so that every run has the
/// full length) on a fresh context.
fn generate(model: &Model, barrier: Option<&Barrier>) -> Vec<Token> {
    let mut ctx = model.new_context(ContextParams::default().n_ctx(256).n_batch(64).threads(1)).unwrap();
    let eos = model.vocab().eos().unwrap();
    let mut sampler = Sampler::builder(model).logit_bias(&[(eos, f32::NEG_INFINITY)]).greedy().build().unwrap();
    if let Some(b) = barrier {
        b.wait();
    }
    let params = GenerateParams::default().max_tokens(N_TOKENS);
    let pieces: Vec<Piece> = ctx.generate(&mut sampler, PROMPT, params).unwrap().map(|p| p.unwrap()).collect();
    pieces.into_iter().map(|p| p.token).collect()
}

#[test]
fn eight_threads_generate_the_same_tokens_as_sequential_runs() {
    let model = tiny();
    let sequential: Vec<Vec<Token>> = (0..2).map(|_| generate(model, None)).collect();
    assert_eq!(sequential[0], sequential[1], "sequential runs agree");
    assert_eq!(sequential[0].len(), N_TOKENS);
    let barrier = Barrier::new(THREADS);
    let parallel: Vec<Vec<Token>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS).map(|_| s.spawn(|| generate(model, Some(&barrier)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, tokens) in parallel.iter().enumerate() {
        assert_eq!(tokens, &sequential[0], "thread {i}");
    }
    eprintln!("threads: {THREADS} threads x {N_TOKENS} greedy tokens identical to the sequential run");
}

#[test]
fn contexts_are_created_from_eight_threads_at_once() {
    let model = tiny();
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                barrier.wait();
                for _ in 0..10 {
                    let c = model.new_context(ContextParams::default().n_ctx(256).n_batch(32).threads(1)).unwrap();
                    assert_eq!(c.n_ctx(), 256);
                }
            });
        }
    });
}

#[test]
fn a_context_moves_to_another_thread() {
    let model = tiny();
    let ctx = model.new_context(ContextParams::default().n_ctx(256).threads(1)).unwrap();
    let tokens = std::thread::scope(|s| {
        s.spawn(move || {
            let mut ctx = ctx;
            let mut sampler = Sampler::greedy(model).unwrap();
            let g = ctx.generate(&mut sampler, PROMPT, GenerateParams::default().max_tokens(4)).unwrap();
            g.map(|p| p.unwrap().token).collect::<Vec<_>>().len()
        })
        .join()
        .unwrap()
    });
    assert!(tokens >= 1);
}
