//! Batch building, decode, logits, KV-cache operations and sampling with
//! arbitrary arguments on the tiny SPM model. The input is a sequence of
//! operations (the `arbitrary` crate); every call may return `Err`, none may
//! abort or panic. One context per configuration is kept for the process and
//! its KV cache cleared before each input, so an input replays alone.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use llama_rs::{Batch, Context, ContextParams, Sampler, Token};
use llama_rs_fuzz::tiny_spm;
use std::ops::Bound;
use std::sync::{Mutex, OnceLock};

/// Context configurations: (n_ctx, n_batch, n_ubatch, n_seq_max).
const CONFIGS: [(u32, u32, u32, u32); 3] = [(64, 16, 16, 1), (128, 32, 8, 4), (256, 64, 64, 8)];

fn context(config: usize) -> Option<&'static Mutex<Context<'static>>> {
    static CONTEXTS: [OnceLock<Option<Mutex<Context<'static>>>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    CONTEXTS[config]
        .get_or_init(|| {
            let (n_ctx, n_batch, n_ubatch, n_seq_max) = CONFIGS[config];
            let params = ContextParams::default()
                .n_ctx(n_ctx)
                .n_batch(n_batch)
                .n_ubatch(n_ubatch)
                .n_seq_max(n_seq_max)
                .threads(1);
            tiny_spm().new_context(params).ok().map(Mutex::new)
        })
        .as_ref()
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum B {
    Unbounded,
    Included(i32),
    Excluded(i32),
}

impl B {
    fn bound(self) -> Bound<i32> {
        match self {
            B::Unbounded => Bound::Unbounded,
            B::Included(p) => Bound::Included(p),
            B::Excluded(p) => Bound::Excluded(p),
        }
    }
}

/// A token: mostly small ids (valid ones), or any i32.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Tok {
    Small(u16),
    Any(i32),
}

impl Tok {
    fn token(self) -> Token {
        match self {
            Tok::Small(t) => Token(i32::from(t % 1100)),
            Tok::Any(t) => Token(t),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A new batch; the capacity is bounded (it is allocated up front), the
    /// number of sequences per token is not.
    NewBatch {
        capacity: u16,
        n_seq_max: usize,
    },
    Add {
        token: Tok,
        pos: i32,
        seq_ids: Vec<i32>,
        logits: bool,
    },
    AddSequence {
        tokens: Vec<Tok>,
        start_pos: i32,
        seq_id: i32,
        logits_last: bool,
    },
    SetLogits {
        i: usize,
        logits: bool,
    },
    Clear,
    Decode,
    Logits(i32),
    Sample {
        idx: i32,
        chain: u8,
        seed: u32,
    },
    Accept {
        token: Tok,
    },
    SeqRm {
        seq: Option<i32>,
        from: B,
        to: B,
    },
    SeqCp {
        src: i32,
        dst: i32,
        from: B,
        to: B,
    },
    SeqKeep(i32),
    SeqAdd {
        seq: Option<i32>,
        from: B,
        to: B,
        delta: i32,
    },
    SeqDiv {
        seq: Option<i32>,
        from: B,
        to: B,
        d: i32,
    },
    SeqPosMin(i32),
    SeqPosMax(i32),
    ClearKv(bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: u8,
    ops: Vec<Op>,
}

fn make_sampler(chain: u8, seed: u32) -> Option<Sampler<'static>> {
    let model = tiny_spm();
    let b = Sampler::builder(model);
    let b = match chain % 4 {
        0 => b.greedy(),
        1 => b.top_k(40).top_p(0.9, 1).temp(0.8).dist(seed),
        2 => b.penalties(64, 1.1, 0.1, 0.1).min_p(0.05, 1).dist(seed),
        _ => b.mirostat_v2(seed, 5.0, 0.1),
    };
    b.build().ok()
}

fuzz_target!(
    init: {
        llama_rs_fuzz::init();
        let _ = tiny_spm();
    },
    |input: Input| {
        let Some(ctx) = context(input.config as usize % CONFIGS.len()) else { return };
        let mut ctx = ctx.lock().unwrap_or_else(|e| e.into_inner());
        ctx.clear_kv(false);
        let mut batch = Batch::new(16, 1).unwrap();
        let mut sampler = make_sampler(0, 0);
        for op in input.ops.into_iter().take(64) {
            match op {
                Op::NewBatch { capacity, n_seq_max } => {
                    if let Ok(b) = Batch::new(usize::from(capacity % 1025), n_seq_max) {
                        batch = b;
                    }
                }
                Op::Add { token, pos, seq_ids, logits } => {
                    let _ = batch.add(token.token(), pos, &seq_ids, logits);
                }
                Op::AddSequence { tokens, start_pos, seq_id, logits_last } => {
                    let tokens: Vec<Token> = tokens.iter().map(|t| t.token()).collect();
                    let _ = batch.add_sequence(&tokens, start_pos, seq_id, logits_last);
                }
                Op::SetLogits { i, logits } => {
                    let _ = batch.set_logits(i, logits);
                }
                Op::Clear => batch.clear(),
                Op::Decode => {
                    let _ = ctx.decode(&mut batch);
                }
                Op::Logits(i) => {
                    if let Ok(l) = ctx.logits(i) {
                        assert_eq!(l.len(), ctx.vocab().n_tokens() as usize);
                    }
                }
                Op::Sample { idx, chain, seed } => {
                    if chain >= 4 {
                        sampler = make_sampler(chain, seed);
                    }
                    if let Some(s) = sampler.as_mut() {
                        if let Ok(t) = s.sample(&ctx, idx) {
                            assert!(ctx.vocab().check(t).is_ok(), "sampled invalid token {}", t.0);
                        }
                    }
                }
                Op::Accept { token } => {
                    if let Some(s) = sampler.as_mut() {
                        let _ = s.accept(token.token());
                    }
                }
                Op::SeqRm { seq, from, to } => {
                    let _ = ctx.seq_rm(seq, (from.bound(), to.bound()));
                }
                Op::SeqCp { src, dst, from, to } => {
                    let _ = ctx.seq_cp(src, dst, (from.bound(), to.bound()));
                }
                Op::SeqKeep(s) => {
                    let _ = ctx.seq_keep(s);
                }
                Op::SeqAdd { seq, from, to, delta } => {
                    let _ = ctx.seq_add(seq, (from.bound(), to.bound()), delta);
                }
                Op::SeqDiv { seq, from, to, d } => {
                    let _ = ctx.seq_div(seq, (from.bound(), to.bound()), d);
                }
                Op::SeqPosMin(s) => {
                    let _ = ctx.seq_pos_min(s);
                }
                Op::SeqPosMax(s) => {
                    let _ = ctx.seq_pos_max(s);
                }
                Op::ClearKv(data) => ctx.clear_kv(data),
            }
        }
    }
);
