//! Model loading from arbitrary bytes: the input is written to a per-process
//! file and loaded through the safe API (vocab-only, then fully, on the CPU).
//! A model that loads is used: tokenize, detokenize, pieces, chat template,
//! a tiny context, a decode of a few tokens, logits and a greedy sample.
//! Errors are fine; nothing may abort, panic or leak.
//!
//! Seeds: `LLAMA_RS_FUZZ_SEED_DIR=<corpus dir>` makes the first call write the
//! project's micro and tiny synthetic models there (scripts/fuzz does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use llama_rs::{AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial};
use llama_rs::{Batch, ChatMessage, Model, Sampler, Token};
use llama_rs_fuzz::{cpu_params, scratch_file, small_context_params, write_model_seeds};
use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| scratch_file("load_model"))
}

fn exercise_vocab(model: &Model) {
    let vocab = model.vocab();
    let _ = (vocab.n_tokens(), vocab.vocab_type(), vocab.bos(), vocab.eos(), vocab.add_bos());
    let _ = (model.architecture(), model.description(), model.metadata(), model.n_params(), model.size());
    for text in ["Hello world", " <|im_start|>user\n\u{e9}\u{1F600}</s>", ""] {
        for (add, parse) in [(true, true), (false, false)] {
            if let Ok(tokens) = vocab.tokenize(text, add.into(), parse.into()) {
                let _ = vocab.detokenize(&tokens, RemoveSpecial::No, RenderSpecial::Yes);
                for &t in tokens.iter().take(8) {
                    let _ = vocab.token_to_piece(t, RenderSpecial::Yes);
                    let _ = (vocab.token_text(t), vocab.token_score(t), vocab.is_eog(t), vocab.is_control(t));
                }
            }
        }
    }
    for id in [0, 1, 2, vocab.n_tokens() - 1, vocab.n_tokens(), -1, i32::MAX] {
        let t = Token(id);
        if vocab.check(t).is_err() {
            assert!(vocab.token_to_piece(t, RenderSpecial::Yes).is_err(), "token_to_piece accepted invalid id {id}");
        }
        let _ = vocab.detokenize(&[t], RemoveSpecial::Yes, RenderSpecial::No);
    }
    let _ = model.apply_chat_template(&[ChatMessage::system("s"), ChatMessage::user("hi")], true);
}

fn exercise_model(model: &Model) {
    let Ok(mut ctx) = model.new_context(small_context_params()) else { return };
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize("Hello world", AddSpecial::Yes, ParseSpecial::No).unwrap_or_default();
    tokens.truncate(4);
    if tokens.is_empty() {
        if vocab.n_tokens() <= 0 {
            return;
        }
        tokens.push(Token(0));
    }
    let mut batch = Batch::new(16, 1).unwrap();
    if batch.add_sequence(&tokens, 0, 0, true).is_err() || ctx.decode(&mut batch).is_err() {
        return;
    }
    let last = tokens.len() as i32 - 1;
    let _ = ctx.logits(last).map(|l| l.iter().copied().fold(0.0f32, f32::max));
    let Ok(mut sampler) = Sampler::greedy(model) else { return };
    let Ok(next) = sampler.sample(&ctx, last) else { return };
    batch.clear();
    if batch.add(next, tokens.len() as i32, &[0], true).is_ok() && ctx.decode(&mut batch).is_ok() {
        let _ = sampler.sample(&ctx, 0);
    }
}

fuzz_target!(
    init: {
        llama_rs_fuzz::init();
        if let Some(dir) = std::env::var_os("LLAMA_RS_FUZZ_SEED_DIR").filter(|d| !d.is_empty()) {
            let files = write_model_seeds(std::path::Path::new(&dir)).expect("write the seed corpus");
            eprintln!("load_model: {} seed models in {}", files.len(), PathBuf::from(dir).display());
        }
    },
    |data: &[u8]| {
        let path = scratch();
        if std::fs::write(path, data).is_err() {
            return;
        }
        if let Ok(model) = Model::load_with(path, cpu_params().vocab_only(true)) {
            exercise_vocab(&model);
        }
        if let Ok(model) = Model::load_with(path, cpu_params()) {
            exercise_vocab(&model);
            exercise_model(&model);
        }
    }
);
