//! Contexts, batches and decoding: values read back, logits consistency,
//! KV-cache operations, and every decode-time crash path of the C API
//! returning an error instead.

mod common;

use common::tiny;
use llama_rs::{AddSpecial, ParseSpecial};
use llama_rs::{Batch, Context, ContextParams, Error, GenerateParams, Token};

/// Largest absolute difference between logits computed in one batch and
/// token by token: the same math in a different order of float additions.
const LOGIT_TOLERANCE: f32 = 1e-3;

fn ctx(n_ctx: u32) -> Context<'static> {
    tiny().new_context(ContextParams::default().n_ctx(n_ctx).n_batch(64).threads(2)).unwrap()
}

fn prompt() -> Vec<Token> {
    tiny().vocab().tokenize("the quick brown fox jumps over the lazy dog", AddSpecial::Yes, ParseSpecial::No).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Decodes `tokens` in one batch (all rows output), returns the logits of every row.
fn decode_all(c: &mut Context, tokens: &[Token], start: i32) -> Vec<Vec<f32>> {
    let mut b = Batch::new(tokens.len(), 1).unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        b.add(t, start + i as i32, &[0], true).unwrap();
    }
    c.decode(&mut b).unwrap();
    (0..tokens.len()).map(|i| c.logits(i as i32).unwrap().to_vec()).collect()
}

#[test]
fn values_are_read_back() {
    let c = tiny().new_context(ContextParams::default().n_ctx(100).n_batch(1000).n_ubatch(64).threads(1)).unwrap();
    // llama.cpp clamps n_batch to the requested n_ctx, then pads n_ctx to 256.
    assert_eq!(c.n_ctx(), 256);
    assert_eq!(c.n_batch(), 100);
    assert_eq!(c.n_ubatch(), 64);
    assert_eq!(c.n_seq_max(), 1);
    assert_eq!(c.threads(), (1, 1));
}

#[test]
fn bad_context_params_are_errors() {
    let m = tiny();
    for p in [
        ContextParams::default().n_batch(0),
        ContextParams::default().n_seq_max(0),
        ContextParams::default().n_seq_max(100_000),
        ContextParams::default().threads(0),
        ContextParams::default().n_ctx(0),
    ] {
        assert!(matches!(m.new_context(p.clone()), Err(Error::InvalidParam { .. })), "{p:?}");
    }
}

/// A context larger than memory is `Error::ContextCreate` saying what was
/// asked and how to ask for less. In a child whose address space is capped
/// at 4 GiB, so that the KV cache's 2^30 cells cannot be allocated under any
/// overcommit policy (unlimited, a granted allocation would then be touched).
#[test]
fn a_context_larger_than_memory_is_an_error_that_says_what_was_asked() {
    const NAME: &str = "a_context_larger_than_memory_is_an_error_that_says_what_was_asked";
    if common::capped_memory_cannot_run() {
        return;
    }
    if common::in_child(NAME) {
        let m = tiny();
        let e = m.new_context(ContextParams::default().n_ctx(1 << 30).threads(1)).unwrap_err();
        let message = e.to_string();
        assert!(matches!(e, Error::ContextCreate { .. }), "{e:?}");
        assert!(message.contains("alloc"), "llama.cpp's reason is kept: {message}");
        let asked = format!("asked for 1073741824 tokens (the model was trained for {})", m.n_ctx_train());
        assert!(message.contains(&asked), "{message}");
        assert!(message.contains("lower n_ctx") && message.contains("plan_memory"), "{message}");
        // The process is fine: a context of a sane size still works.
        assert!(m.new_context(ContextParams::default().n_ctx(256).threads(1)).is_ok());
        return;
    }
    let out = common::run_in_child_with_memory_limit(NAME, 4 << 30);
    common::assert_child_ok(NAME, &out);
}

#[test]
fn batch_and_token_by_token_logits_agree() {
    let tokens = prompt();
    let mut a = ctx(256);
    let batched = decode_all(&mut a, &tokens, 0);
    let mut b = ctx(256);
    let mut single = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        single.push(decode_all(&mut b, &[t], i as i32).remove(0));
    }
    for (i, (x, y)) in batched.iter().zip(&single).enumerate() {
        assert!(x.iter().all(|v| v.is_finite()));
        let d = max_diff(x, y);
        assert!(d < LOGIT_TOLERANCE, "row {i}: max |diff| = {d}");
    }
    // Logits carry information: not all rows equal.
    assert!(max_diff(&batched[0], &batched[1]) > 1e-4);
}

#[test]
fn seq_rm_then_redecode_equals_fresh_decode() {
    let tokens = prompt();
    let keep = 4;
    let mut c = ctx(256);
    decode_all(&mut c, &tokens, 0);
    assert_eq!(c.seq_pos_max(0).unwrap(), Some(tokens.len() as i32 - 1));
    assert!(c.seq_rm(Some(0), keep as i32..).unwrap());
    assert_eq!(c.seq_pos_max(0).unwrap(), Some(keep as i32 - 1));
    assert_eq!(c.seq_pos_min(0).unwrap(), Some(0));
    let redone = decode_all(&mut c, &tokens[keep..], keep as i32);

    let mut fresh = ctx(256);
    let all = decode_all(&mut fresh, &tokens, 0);
    for (i, row) in redone.iter().enumerate() {
        let d = max_diff(row, &all[keep + i]);
        assert!(d < LOGIT_TOLERANCE, "row {}: {d}", keep + i);
    }
    c.clear_kv(false);
    assert_eq!(c.seq_pos_max(0).unwrap(), None);
}

#[test]
fn two_sequences_and_seq_cp() {
    let tokens = prompt();
    let mut c = tiny().new_context(ContextParams::default().n_ctx(256).n_batch(128).n_seq_max(2).threads(2)).unwrap();
    let mut b = Batch::new(2 * tokens.len(), 2).unwrap();
    b.add_sequence(&tokens, 0, 0, true).unwrap();
    b.add_sequence(&tokens, 0, 1, true).unwrap();
    c.decode(&mut b).unwrap();
    let l0 = c.logits(tokens.len() as i32 - 1).unwrap().to_vec();
    let l1 = c.logits(2 * tokens.len() as i32 - 1).unwrap().to_vec();
    assert!(max_diff(&l0, &l1) < LOGIT_TOLERANCE);
    // Copy seq 0 over seq 1 then continue both with the same token: same logits.
    c.seq_rm(Some(1), ..).unwrap();
    c.seq_cp(0, 1, ..).unwrap();
    assert_eq!(c.seq_pos_max(1).unwrap(), c.seq_pos_max(0).unwrap());
    c.seq_keep(0).unwrap();
    assert_eq!(c.seq_pos_max(1).unwrap(), None);
}

#[test]
fn position_shift_ops_work() {
    let tokens = prompt();
    let mut c = ctx(256);
    decode_all(&mut c, &tokens, 0);
    c.seq_add(Some(0), 0.., 10).unwrap();
    assert_eq!(c.seq_pos_min(0).unwrap(), Some(10));
    c.seq_div(Some(0), .., 2).unwrap();
    assert_eq!(c.seq_pos_min(0).unwrap(), Some(5));
}

#[test]
fn decode_crash_paths_are_errors() {
    let mut c = ctx(256);
    let n_vocab = tiny().vocab().n_tokens();
    // More tokens than n_batch (llama.cpp aborts).
    let mut big = Batch::new(65, 1).unwrap();
    for i in 0..65 {
        big.add(Token(1), i, &[0], false).unwrap();
    }
    assert!(matches!(c.decode(&mut big), Err(Error::BatchInvalid { n_tokens: 65, .. })));
    // Token outside the vocabulary.
    let mut b = Batch::new(4, 1).unwrap();
    b.add(Token(n_vocab), 0, &[0], true).unwrap();
    assert!(
        matches!(c.decode(&mut b), Err(Error::InvalidToken { token, n_vocab: n }) if token == n_vocab && n == n_vocab)
    );
    // Sequence id >= n_seq_max (llama.cpp writes out of bounds).
    let mut b = Batch::new(4, 2).unwrap();
    b.add(Token(1), 0, &[1], true).unwrap();
    assert!(matches!(c.decode(&mut b), Err(Error::InvalidSeqId { seq_id: 1, n_seq_max: 1 })));
    // Empty batch.
    let mut b = Batch::new(4, 1).unwrap();
    assert!(matches!(c.decode(&mut b), Err(Error::BatchInvalid { n_tokens: 0, .. })));
    // Batch-level checks: no sequence (n_seq_id = 0 segfaults), negative ids, overflow.
    assert!(b.add(Token(1), 0, &[], true).is_err());
    assert!(b.add(Token(-5), 0, &[0], true).is_err());
    assert!(matches!(b.add(Token(1), 0, &[-1], true), Err(Error::InvalidSeqId { seq_id: -1, .. })));
    assert!(b.add(Token(1), -1, &[0], true).is_err());
    for i in 0..4 {
        b.add(Token(1), i, &[0], false).unwrap();
    }
    assert!(matches!(b.add(Token(1), 4, &[0], false), Err(Error::BatchFull { capacity: 4 })));
    assert!(b.set_logits(9, true).is_err());
    // The context still works after all of that.
    decode_all(&mut c, &[Token(1), Token(2)], 0);
}

#[test]
fn logits_of_non_output_rows_are_errors() {
    let mut c = ctx(256);
    assert!(matches!(c.logits(0), Err(Error::NoLogits { .. })), "before any decode");
    let tokens = prompt();
    let mut b = Batch::new(tokens.len(), 1).unwrap();
    b.add_sequence(&tokens, 0, 0, true).unwrap();
    c.decode(&mut b).unwrap();
    let last = tokens.len() as i32 - 1;
    assert_eq!(c.last_output(), Some(last));
    assert_eq!(c.logits(last).unwrap().len(), tiny().vocab().n_tokens() as usize);
    assert!(matches!(c.logits(0), Err(Error::NoLogits { index: 0, .. })));
    assert!(matches!(c.logits(-1), Err(Error::NoLogits { .. })));
    assert!(matches!(c.logits(last + 1), Err(Error::NoLogits { .. })));
    assert!(matches!(c.embeddings(last), Err(Error::NoLogits { .. })));
}

#[test]
fn kv_crash_paths_are_errors() {
    let mut c = ctx(256);
    decode_all(&mut c, &prompt(), 0);
    assert!(matches!(c.seq_rm(Some(1), ..), Err(Error::InvalidSeqId { seq_id: 1, n_seq_max: 1 })));
    assert!(matches!(c.seq_rm(Some(-7), ..), Err(Error::InvalidSeqId { .. })));
    assert!(c.seq_cp(0, 3, ..).is_err());
    assert!(c.seq_keep(2).is_err());
    assert!(c.seq_add(Some(5), .., 1).is_err());
    assert!(matches!(c.seq_div(Some(0), .., 0), Err(Error::InvalidParam { .. })), "d = 0 is SIGFPE in C");
    assert!(c.seq_div(Some(0), .., -3).is_err());
    assert!(c.seq_pos_max(9).is_err());
    assert!(c.seq_rm(Some(0), -5..3).is_err());
    // All sequences (None) is allowed where the C API has -1.
    assert!(c.seq_rm(None, ..).unwrap());
}

#[test]
fn a_full_context_is_an_error_not_a_crash() {
    let mut c = ctx(256);
    let mut pos = 0;
    let mut failed = None;
    for _ in 0..10 {
        let mut b = Batch::new(64, 1).unwrap();
        for _ in 0..64 {
            b.add(Token(3), pos, &[0], false).unwrap();
            pos += 1;
        }
        if let Err(e) = c.decode(&mut b) {
            failed = Some(e);
            break;
        }
    }
    assert!(matches!(failed, Some(Error::ContextFull { .. })), "{failed:?}");
    c.clear_kv(false);
    decode_all(&mut c, &[Token(1)], 0);
}

#[test]
fn perf_counters_count_tokens() {
    let mut c = ctx(256);
    c.reset_perf();
    let tokens = prompt();
    decode_all(&mut c, &tokens, 0);
    decode_all(&mut c, &[Token(5)], tokens.len() as i32);
    let p = c.perf();
    assert_eq!(p.n_prompt_tokens, tokens.len() as i32);
    assert_eq!(p.n_eval_tokens, 1);
}

#[test]
fn contexts_on_one_model_from_several_threads() {
    let tokens = prompt();
    let reference = decode_all(&mut ctx(256), &tokens, 0).pop().unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut c = tiny().new_context(ContextParams::default().n_ctx(256).threads(1)).unwrap();
                    decode_all(&mut c, &tokens, 0).pop().unwrap()
                })
            })
            .collect();
        for h in handles {
            assert!(max_diff(&h.join().unwrap(), &reference) < LOGIT_TOLERANCE);
        }
    });
}

#[test]
fn memory_plan_matches_the_real_allocation_on_the_cpu() {
    let path = common::tiny_path(llama_rs::synthetic::VocabKind::Spm);
    let params = || llama_rs::ModelParams::default().devices(&[]);
    let ctx_params = ContextParams::default().n_ctx(512).threads(1);
    let plan = llama_rs::plan_memory(&path, params(), ctx_params.clone()).unwrap();
    let m = llama_rs::Model::load_with(&path, params()).unwrap();
    let c = m.new_context(ctx_params).unwrap();
    let real = llama_rs::per_device(&c.memory_breakdown().unwrap());
    eprintln!("plan {plan:?}\nreal {real:?}");
    assert_eq!(plan.len(), real.len());
    for (p, r) in plan.iter().zip(&real) {
        assert_eq!(p.device, r.device);
        assert!(r.model > 0 && r.context > 0, "{r:?}");
        let err = (p.total() as f64 - r.total() as f64).abs() / r.total() as f64;
        assert!(err <= 0.05, "{}: planned {} B, allocated {} B", p.device, p.total(), r.total());
    }
}

#[test]
fn memory_plan_grows_with_the_context() {
    let path = common::tiny_path(llama_rs::synthetic::VocabKind::Spm);
    let plan = |n| llama_rs::plan_memory(&path, Default::default(), ContextParams::default().n_ctx(n)).unwrap();
    let (small, big) = (plan(256), plan(512));
    let kv = |p: &[llama_rs::DeviceMemory]| p.iter().map(|d| d.context).sum::<u64>();
    let weights = |p: &[llama_rs::DeviceMemory]| p.iter().map(|d| d.model).sum::<u64>();
    // Twice the context, twice the KV cache; the same weights.
    assert_eq!(kv(&big), 2 * kv(&small));
    assert_eq!(weights(&big), weights(&small));
    // Bad split settings fail the plan exactly as they fail a load.
    let bad = llama_rs::ModelParams::default().tensor_split(&[-1.0]);
    assert!(matches!(llama_rs::plan_memory(&path, bad, ContextParams::default()), Err(Error::TensorSplit { .. })));
}

#[test]
fn fit_without_gpus_keeps_the_request() {
    let path = common::tiny_path(llama_rs::synthetic::VocabKind::Spm);
    let ctx = ContextParams::default().n_ctx(512);
    let f =
        llama_rs::fit(&path, llama_rs::ModelParams::default().devices(&[]), ctx.clone(), Default::default()).unwrap();
    assert_eq!((f.n_gpu_layers, f.n_ctx), (None, 512));
    assert!(f.plan.iter().all(|d| d.device == "CPU"));
    // Free memory given for GPUs the model does not use.
    let bad = llama_rs::FitParams { free: Some(vec![1 << 30]), ..Default::default() };
    assert!(matches!(
        llama_rs::fit(&path, llama_rs::ModelParams::default().devices(&[]), ctx, bad),
        Err(Error::InvalidParam { .. })
    ));
}

#[test]
fn default_context_length_is_4096_or_the_training_length() {
    // The tiny model was trained on 512 tokens: the default takes that.
    assert_eq!(tiny().n_ctx_train(), 512);
    assert_eq!(ContextParams::default().resolved_n_ctx(tiny()), 512);
    let c = tiny().new_context(ContextParams::default().threads(1)).unwrap();
    assert_eq!(c.n_ctx(), 512);
    // A longer training length is capped at 4096 unless asked for.
    let big = common::edit::Edit::open(&common::tiny_path(llama_rs::synthetic::VocabKind::Spm))
        .u32("llama.context_length", 131072)
        .write(&common::temp_dir("ctx-default").join("long.gguf"));
    let m = llama_rs::Model::load(&big).unwrap();
    assert_eq!(ContextParams::default().resolved_n_ctx(&m), llama_rs::DEFAULT_N_CTX);
    assert_eq!(ContextParams::default().ctx_size(llama_rs::CtxSize::Train).resolved_n_ctx(&m), 131072);
    let c = m.new_context(ContextParams::default().threads(1)).unwrap();
    assert_eq!(c.n_ctx(), 4096);
    let threads = llama_rs::physical_cores();
    assert!(threads >= 1 && threads as usize <= std::thread::available_parallelism().unwrap().get());
    let c = m.new_context(ContextParams::default()).unwrap();
    assert_eq!(c.threads(), (threads, threads));
}

#[test]
fn a_context_of_an_arc_model_is_static_and_keeps_the_model_alive() {
    let model =
        std::sync::Arc::new(llama_rs::Model::load(common::tiny_path(llama_rs::synthetic::VocabKind::Spm)).unwrap());
    let mut ctx: Context<'static> = model.new_owned_context(ContextParams::default().n_ctx(256).threads(1)).unwrap();
    let mut sampler: llama_rs::Sampler<'static> = llama_rs::Sampler::builder_owned(&model).greedy().build().unwrap();
    let weak = std::sync::Arc::downgrade(&model);
    drop(model);
    // The context and the sampler hold the model; they move to a thread.
    let t = std::thread::spawn(move || {
        let (text, _) =
            ctx.generate_text(&mut sampler, "the quick brown", GenerateParams::default().max_tokens(4)).unwrap();
        drop(ctx);
        assert!(weak.upgrade().is_some(), "the sampler still holds the model");
        drop(sampler);
        (text, weak)
    });
    let (_, weak) = t.join().unwrap();
    assert!(weak.upgrade().is_none(), "the model is freed with the last holder");
}
