//! Malformed model files: a corpus made from the project's own tiny
//! synthetic models (each bad metadata field the validator knows and more,
//! truncations at many offsets, deterministic random bit flips, huge counts,
//! empty files, folders) is loaded through the safe API. Every load must
//! return an error or a model that then works; none may kill the process:
//! the test process surviving is the main assertion, the counts of rejected
//! and loaded files the second.
//!
//! `MALFORMED_VERBOSE=1` prints each file before it is loaded (to find the
//! one that killed the process, should that ever happen).
//!
//! `LLAMA_RS_TEST_SCALE` (e.g. 0.1, set by `scripts/sanitize valgrind`) thins
//! the two bulk parts: truncations every 97/scale bytes of the metadata and
//! 24*scale points through the tensor data, and 300*scale bit-flip files. The
//! bad fields and patched counts, each a distinct case, are always all tried.
//! Unset, the corpus is full size (733 files).

mod common;

use common::edit::Edit;
use common::{scaled, temp_dir, test_scale, tiny_path};
use llama_rs::synthetic::VocabKind;
use llama_rs::{sys, Batch, ContextParams, Error, Model, ModelParams, Sampler, Token};
use llama_rs::{AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial};
use std::path::{Path, PathBuf};

/// What a file must do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// Refused by `Model::load`.
    Reject,
    /// Refused by `Model::load` and by the vocab-only load (container damage).
    RejectBoth,
    /// Either; a model that loads must then run.
    Any,
}

#[derive(Default, Debug)]
struct Tally {
    tried: usize,
    rejected: usize,
    loaded: usize,
    /// Loaded models on which a context decoded a token.
    decoded: usize,
    vocab_only_loaded: usize,
}

fn verbose() -> bool {
    std::env::var_os("MALFORMED_VERBOSE").is_some()
}

/// Loads `path` vocab-only and fully; a model that loads is exercised:
/// tokenize, detokenize, context, decode, logits, greedy sample.
fn exercise(path: &Path, expect: Expect, tally: &mut Tally) {
    if verbose() {
        eprintln!("malformed: {} ({expect:?})", path.display());
    }
    tally.tried += 1;
    match Model::load_with(path, ModelParams::default().vocab_only(true)) {
        Ok(m) => {
            // Vocab-only loads skip the hyper-parameters and tensors: only
            // container damage must be refused there.
            assert_ne!(expect, Expect::RejectBoth, "{}: vocab-only load accepted a bad file", path.display());
            tally.vocab_only_loaded += 1;
            use_vocab(&m);
        }
        Err(e) => check_error(path, &e),
    }
    match Model::load(path) {
        Ok(m) => {
            assert_eq!(expect, Expect::Any, "{}: accepted a file that must be rejected", path.display());
            tally.loaded += 1;
            use_vocab(&m);
            if run(&m) {
                tally.decoded += 1;
            }
        }
        Err(e) => {
            check_error(path, &e);
            tally.rejected += 1;
        }
    }
}

/// The error names the file (every load error does) and is one of the
/// load-time kinds.
fn check_error(path: &Path, e: &Error) {
    let ok = match e {
        Error::InvalidModel { path: p, .. } | Error::ModelLoad { path: p, .. } | Error::Io { path: p, .. } => p == path,
        Error::Exception { function, .. } => *function == "llama_model_load_from_file",
        _ => false,
    };
    assert!(ok, "{}: unexpected error kind: {e:?}", path.display());
}

fn use_vocab(m: &Model) {
    let v = m.vocab();
    if let Ok(tokens) = v.tokenize("Hello world, héllo\n 123", AddSpecial::Yes, ParseSpecial::Yes) {
        assert!(tokens.iter().all(|t| v.check(*t).is_ok()), "tokenize returned ids outside the vocabulary");
        let _ = v.detokenize(&tokens, RemoveSpecial::No, RenderSpecial::Yes);
    }
    for t in [0, 1, 2, v.n_tokens() / 2, v.n_tokens() - 1] {
        let _ = v.token_to_piece(Token(t), RenderSpecial::Yes);
        let _ = v.token_text(Token(t));
    }
    let _ = m.metadata();
    let _ = m.description();
    let _ = m.chat_template(None);
}

/// Decodes on a small context (fixed n_ctx: a corrupt training length must
/// not size the KV cache). True if a token was decoded.
fn run(m: &Model) -> bool {
    let Ok(mut c) = m.new_context(ContextParams::default().n_ctx(64).n_batch(16).threads(1)) else { return false };
    let v = m.vocab();
    if v.n_tokens() < 2 {
        return false;
    }
    let mut tokens = v.tokenize("the quick brown fox", AddSpecial::Yes, ParseSpecial::No).unwrap_or_default();
    tokens.retain(|t| v.check(*t).is_ok());
    tokens.truncate(15);
    if tokens.is_empty() {
        tokens.push(Token(1));
    }
    let mut b = Batch::new(tokens.len(), 1).unwrap();
    b.add_sequence(&tokens, 0, 0, true).unwrap();
    if c.decode(&mut b).is_err() {
        return false;
    }
    let row = tokens.len() as i32 - 1;
    let _ = c.logits(row).unwrap().iter().filter(|x| x.is_nan()).count();
    if let Ok(mut s) = Sampler::greedy(m) {
        if let Ok(t) = s.sample(&c, row) {
            let mut b = Batch::new(1, 1).unwrap();
            b.add(t, tokens.len() as i32, &[0], true).unwrap();
            let _ = c.decode(&mut b);
        }
    }
    true
}

/// Deterministic PRNG (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn data_offset(path: &Path) -> usize {
    let e = Edit::open(path);
    // SAFETY: valid context.
    unsafe { sys::gguf_get_data_offset(e.ptr()) }
}

/// Offset just after the first occurrence of `needle` in `bytes`.
fn after(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{needle:?} not in file"))
        + needle.len()
}

fn patched(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + value.len()].copy_from_slice(value);
    b
}

/// Each bad metadata field the validator checks, plus fields that llama.cpp
/// itself rejects (wrong shapes, missing tensors, unknown tokenizers,
/// foreign architectures): written as complete files (metadata + tensors).
fn bad_fields(dir: &Path) -> Vec<(PathBuf, Expect)> {
    let spm = tiny_path(VocabKind::Spm);
    let bpe = tiny_path(VocabKind::Bpe);
    let e = || Edit::open(&spm);
    let tokens = e().get_arr_str("tokenizer.ggml.tokens");
    let mut dup = tokens.clone();
    dup[500] = dup[400].clone();
    let mut empty_dup = tokens.clone();
    empty_dup[10] = Vec::new();
    empty_dup[11] = b"[EMPTY_10]".to_vec();
    let short: Vec<i32> = vec![1; 10];
    let n = tokens.len();
    let scores_1000 = vec![0.0f32; 1000];
    let types_1000 = vec![1i32; 1000];
    let i32t = sys::GGUF_TYPE_INT32;
    let mut cases: Vec<(String, Edit, Expect)> = vec![
        // The validator's list (llama.cpp asserts on each).
        ("block0".into(), e().u32("llama.block_count", 0), Expect::Reject),
        ("block513".into(), e().u32("llama.block_count", 513), Expect::Reject),
        ("nextn".into(), e().u32("llama.nextn_predict_layers", 3), Expect::Reject),
        ("experts1025".into(), e().u32("llama.expert_count", 1025), Expect::Reject),
        ("used_gt_experts".into(), e().u32("llama.expert_count", 8).u32("llama.expert_used_count", 9), Expect::Reject),
        (
            "used_arr".into(),
            e().u32("llama.expert_count", 8).arr_i32("llama.expert_used_count", i32t, &[2, 9]),
            Expect::Reject,
        ),
        ("used_no_experts".into(), e().u32("llama.expert_used_count", 2), Expect::Reject),
        ("used0".into(), e().u32("llama.expert_count", 8), Expect::Reject),
        (
            "groups".into(),
            e().u32("llama.expert_count", 8).u32("llama.expert_used_count", 2).u32("llama.expert_group_count", 3),
            Expect::Reject,
        ),
        (
            "group_used".into(),
            e().u32("llama.expert_count", 8)
                .u32("llama.expert_used_count", 2)
                .u32("llama.expert_group_count", 4)
                .u32("llama.expert_group_used_count", 4),
            Expect::Reject,
        ),
        ("groups_no_experts".into(), e().u32("llama.expert_group_count", 2), Expect::Reject),
        ("rope_type".into(), e().str("llama.rope.scaling.type", "dynamic"), Expect::Reject),
        ("dup_tokens".into(), e().arr_str("tokenizer.ggml.tokens", &dup), Expect::Reject),
        ("empty_dup".into(), e().arr_str("tokenizer.ggml.tokens", &empty_dup), Expect::Reject),
        ("heads0".into(), e().u32("llama.attention.head_count", 0), Expect::Reject),
        ("kv_heads0".into(), e().u32("llama.attention.head_count_kv", 0), Expect::Reject),
        ("ff0".into(), e().u32("llama.feed_forward_length", 0), Expect::Reject),
        ("embd0".into(), e().u32("llama.embedding_length", 0), Expect::Reject),
        ("bos_out".into(), e().u32("tokenizer.ggml.bos_token_id", n as u32), Expect::Reject),
        ("eos_out".into(), e().u32("tokenizer.ggml.eos_token_id", u32::MAX), Expect::Reject),
        ("bert_byte".into(), e().str("tokenizer.ggml.model", "bert"), Expect::Reject),
        ("types_short".into(), e().arr_i32("tokenizer.ggml.token_type", i32t, &short), Expect::Reject),
        ("scores_short".into(), e().arr_f32("tokenizer.ggml.scores", &[0.0; 10]), Expect::Reject),
        ("no_arch".into(), e().remove("general.architecture"), Expect::Reject),
        ("arch_u32".into(), e().u32("general.architecture", 1), Expect::Reject),
        // Wrong types: the validator and llama.cpp's typed getters refuse them.
        ("block_str".into(), e().str("llama.block_count", "2"), Expect::Reject),
        ("block_f32".into(), e().f32("llama.block_count", 2.0), Expect::Reject),
        ("ctx_str".into(), e().str("llama.context_length", "512"), Expect::Reject),
        ("rope_type_u32".into(), e().u32("llama.rope.scaling.type", 1), Expect::Reject),
        ("tokens_not_arr".into(), e().str("tokenizer.ggml.tokens", "a"), Expect::Reject),
        ("tokens_i32".into(), e().arr_i32("tokenizer.ggml.tokens", i32t, &[1, 2, 3]), Expect::Reject),
        ("tokens_empty".into(), e().arr_str("tokenizer.ggml.tokens", &[]), Expect::Reject),
        ("scores_str".into(), e().arr_str("tokenizer.ggml.scores", &tokens), Expect::Reject),
        ("types_f32".into(), e().arr_f32("tokenizer.ggml.token_type", &vec![1.0; n]), Expect::Reject),
        ("tok_model_u32".into(), e().u32("tokenizer.ggml.model", 3), Expect::Reject),
        ("bos_str".into(), e().str("tokenizer.ggml.bos_token_id", "1"), Expect::Reject),
        // Hyper-parameters that disagree with the tensors (llama.cpp throws).
        ("embd32".into(), e().u32("llama.embedding_length", 32), Expect::Reject),
        ("heads3".into(), e().u32("llama.attention.head_count", 3), Expect::Reject),
        ("kv_heads3".into(), e().u32("llama.attention.head_count_kv", 3), Expect::Reject),
        ("ff100".into(), e().u32("llama.feed_forward_length", 100), Expect::Reject),
        ("block3".into(), e().u32("llama.block_count", 3), Expect::Reject),
        ("block1".into(), e().u32("llama.block_count", 1), Expect::Reject),
        ("no_block_count".into(), e().remove("llama.block_count"), Expect::Reject),
        ("no_embd".into(), e().remove("llama.embedding_length"), Expect::Reject),
        ("no_tokens".into(), e().remove("tokenizer.ggml.tokens"), Expect::Reject),
        (
            "vocab1000".into(),
            e().arr_str("tokenizer.ggml.tokens", &tokens[..1000])
                .arr_f32("tokenizer.ggml.scores", &scores_1000)
                .arr_i32("tokenizer.ggml.token_type", i32t, &types_1000),
            Expect::Reject,
        ),
        ("unknown_arch".into(), e().str("general.architecture", "no-such-arch"), Expect::Reject),
        ("unknown_tokenizer".into(), e().str("tokenizer.ggml.model", "no-such-tokenizer"), Expect::Reject),
        // Values llama.cpp accepts or refuses by itself: any outcome but a crash.
        ("ctx0".into(), e().u32("llama.context_length", 0), Expect::Any),
        ("ctx_huge".into(), e().u32("llama.context_length", u32::MAX), Expect::Any),
        ("rope_dim0".into(), e().u32("llama.rope.dimension_count", 0), Expect::Any),
        ("rope_dim_big".into(), e().u32("llama.rope.dimension_count", 4096), Expect::Any),
        // Found by this corpus: ggml's norm kernels assert eps >= 0 at decode.
        ("eps_nan".into(), e().f32("llama.attention.layer_norm_rms_epsilon", f32::NAN), Expect::Reject),
        ("eps_neg".into(), e().f32("llama.attention.layer_norm_rms_epsilon", -1e-5), Expect::Reject),
        ("freq_base0".into(), e().f32("llama.rope.freq_base", 0.0), Expect::Any),
        ("freq_base_inf".into(), e().f32("llama.rope.freq_base", f32::INFINITY), Expect::Any),
        (
            "rope_yarn".into(),
            e().str("llama.rope.scaling.type", "yarn").f32("llama.rope.scaling.factor", -4.0),
            Expect::Any,
        ),
        ("rope_none".into(), e().str("llama.rope.scaling.type", "none"), Expect::Any),
        ("causal_false".into(), e().bool("llama.attention.causal", false), Expect::Any),
        ("swa".into(), e().u32("llama.attention.sliding_window", 0), Expect::Any),
        ("unk_out".into(), e().u32("tokenizer.ggml.unknown_token_id", 99_999), Expect::Any),
        ("pad_out".into(), e().u32("tokenizer.ggml.padding_token_id", 99_999), Expect::Any),
        ("eot_out".into(), e().u32("tokenizer.ggml.eot_token_id", 99_999), Expect::Any),
        (
            "add_bos_no_bos".into(),
            e().remove("tokenizer.ggml.bos_token_id").bool("tokenizer.ggml.add_bos_token", true),
            Expect::Any,
        ),
        ("add_eos".into(), e().bool("tokenizer.ggml.add_eos_token", true), Expect::Any),
        ("alignment_64".into(), e().u32("general.alignment", 64), Expect::Any),
        ("chat_template_junk".into(), e().str("tokenizer.chat_template", "{% for %}<|junk"), Expect::Any),
        ("all_control".into(), e().arr_i32("tokenizer.ggml.token_type", i32t, &vec![3; n]), Expect::Any),
        ("all_unused".into(), e().arr_i32("tokenizer.ggml.token_type", i32t, &vec![5; n]), Expect::Any),
        ("all_byte".into(), e().arr_i32("tokenizer.ggml.token_type", i32t, &vec![6; n]), Expect::Any),
        ("types_weird".into(), e().arr_i32("tokenizer.ggml.token_type", i32t, &vec![-7; n]), Expect::Any),
        ("scores_nan".into(), e().arr_f32("tokenizer.ggml.scores", &vec![f32::NAN; n]), Expect::Any),
    ];
    // Other tokenizers over the SPM vocabulary.
    for model in ["gpt2", "t5", "rwkv", "plamo2", "gemma4", "test", "none", "no_vocab", "whitespace", "hybriddna"] {
        cases.push((format!("tokenizer_{model}"), e().str("tokenizer.ggml.model", model), Expect::Any));
    }
    let b = || Edit::open(&bpe);
    cases.push(("bpe_no_merges".into(), b().remove("tokenizer.ggml.merges"), Expect::Any));
    cases.push(("bpe_as_llama".into(), b().str("tokenizer.ggml.model", "llama"), Expect::Any));
    cases.push((
        "bpe_merges_junk".into(),
        b().arr_str("tokenizer.ggml.merges", &[b"a".to_vec(), b"x y z".to_vec()]),
        Expect::Any,
    ));
    cases.push(("bpe_pre_unknown".into(), b().str("tokenizer.ggml.pre", "no-such-pre"), Expect::Any));
    // The llama keys under other architectures' names.
    for arch in [
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "starcoder2",
        "mistral3",
        "granite",
        "olmo2",
        "exaone",
        "qwen3moe",
        "deepseek2",
        "bert",
        "mamba",
        "rwkv6",
        "t5",
        "gpt2",
        "falcon",
        "llama4",
        "jamba",
        "nemotron_h",
    ] {
        cases.push((format!("arch_{arch}"), e().rename_arch(arch), Expect::Any));
    }
    // Found by this corpus: RoPE dimensions that llama.cpp checks for llama
    // only; the qwen2 graph builder asserts them equal to the head size, and
    // so do builders shared under other architecture names (seed_oss,
    // ernie4_5, granite_swa: scripts/rope-archs).
    for arch in ["qwen2", "seed_oss", "ernie4_5", "granite_swa"] {
        for (name, dims) in [("rope_dims_big", 4096), ("rope_dims_odd", 15), ("rope_dims_0", 0), ("rope_dims_half", 8)]
        {
            cases.push((
                format!("{arch}_{name}"),
                e().rename_arch(arch).u32(&format!("{arch}.rope.dimension_count"), dims),
                Expect::Reject,
            ));
        }
    }
    cases.into_iter().map(|(name, edit, expect)| (edit.write(&dir.join(format!("{name}.gguf"))), expect)).collect()
}

#[test]
fn malformed_files_never_kill_the_process() {
    let started = std::time::Instant::now();
    if test_scale() < 1.0 {
        eprintln!("malformed: scaled down by LLAMA_RS_TEST_SCALE={}: fewer truncations and bit flips", test_scale());
    }
    let dir = temp_dir("malformed");
    let good = tiny_path(VocabKind::Spm);
    let bytes = std::fs::read(&good).unwrap();
    let meta_end = data_offset(&good);
    let mut tally = Tally::default();

    // The untouched file loads and runs: the harness itself works.
    exercise(&good, Expect::Any, &mut tally);
    assert_eq!((tally.loaded, tally.decoded), (1, 1), "the good file must load and decode");

    // Each bad field.
    let fields = bad_fields(&dir);
    let n_fields = fields.len();
    let must_reject = fields.iter().filter(|(_, e)| *e == Expect::Reject).count();
    let before = tally.rejected;
    for (path, expect) in &fields {
        exercise(path, *expect, &mut tally);
    }
    let field_rejected = tally.rejected - before;

    // Truncations: every 97 bytes through the metadata, 24 points through the
    // tensor data, and one byte short.
    let step = (97.0 / test_scale()).round() as usize;
    let data_points = scaled(24);
    let mut cuts: Vec<usize> = (0..meta_end).step_by(step).collect();
    cuts.extend((0..data_points).map(|k| meta_end + k * (bytes.len() - meta_end) / data_points));
    cuts.push(bytes.len() - 1);
    let before = tally.rejected;
    let path = dir.join("cut.gguf");
    for &cut in &cuts {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        exercise(&path, Expect::RejectBoth, &mut tally);
    }
    assert_eq!(tally.rejected - before, cuts.len(), "every truncated file is rejected");

    // Huge counts and lengths patched into the header, the token array, the
    // first token string and the first tensor's info.
    let tokens_at = after(&bytes, b"tokenizer.ggml.tokens");
    let count_at = tokens_at + 8; // after the value type and element type
    let first_len_at = count_at + 8;
    let tensor_at = after(&bytes[..meta_end], b"token_embd.weight");
    let mut huge: Vec<(String, Vec<u8>)> = Vec::new();
    for v in [u64::MAX, i64::MAX as u64, 1 << 62, 1 << 40, 1 << 32, 100_000] {
        huge.push((format!("n_tensors_{v}"), patched(&bytes, 8, &v.to_le_bytes())));
        huge.push((format!("n_kv_{v}"), patched(&bytes, 16, &v.to_le_bytes())));
        huge.push((format!("tokens_count_{v}"), patched(&bytes, count_at, &v.to_le_bytes())));
        huge.push((format!("token0_len_{v}"), patched(&bytes, first_len_at, &v.to_le_bytes())));
        huge.push((format!("tensor_ne0_{v}"), patched(&bytes, tensor_at + 4, &v.to_le_bytes())));
        huge.push((format!("tensor_ne1_{v}"), patched(&bytes, tensor_at + 12, &v.to_le_bytes())));
    }
    huge.push((
        "tokens_count_plus1".into(),
        patched(&bytes, count_at, &(tokens_len(&bytes, count_at) + 1).to_le_bytes()),
    ));
    huge.push(("tensor_ndims_5".into(), patched(&bytes, tensor_at, &5u32.to_le_bytes())));
    huge.push(("tensor_ndims_0".into(), patched(&bytes, tensor_at, &0u32.to_le_bytes())));
    huge.push(("tensor_type_999".into(), patched(&bytes, tensor_at + 20, &999u32.to_le_bytes())));
    huge.push(("tensor_type_q4_2".into(), patched(&bytes, tensor_at + 20, &4u32.to_le_bytes())));
    huge.push(("tensor_offset_1".into(), patched(&bytes, tensor_at + 24, &1u64.to_le_bytes())));
    huge.push(("tensor_offset_huge".into(), patched(&bytes, tensor_at + 24, &(u64::MAX - 7).to_le_bytes())));
    huge.push(("version_0".into(), patched(&bytes, 4, &0u32.to_le_bytes())));
    huge.push(("version_99".into(), patched(&bytes, 4, &99u32.to_le_bytes())));
    huge.push(("magic".into(), patched(&bytes, 0, b"GGML")));
    huge.push(("renamed_tensor".into(), {
        let at = after(&bytes, b"blk.1.ffn_up.weight") - 4;
        patched(&bytes, at, b"X")
    }));
    huge.push(("duplicate_tensor_name".into(), {
        let at = after(&bytes, b"blk.1.ffn_up.weight") - "1.ffn_up.weight".len();
        patched(&bytes, at, b"0")
    }));
    let n_huge = huge.len();
    let before = tally.rejected;
    let path = dir.join("huge.gguf");
    for (name, content) in &huge {
        std::fs::write(&path, content).unwrap();
        if verbose() {
            eprintln!("malformed: patch {name}");
        }
        exercise(&path, Expect::Any, &mut tally);
    }
    let huge_rejected = tally.rejected - before;

    // Random bit flips: 300 files, 1 to 8 flips each in the first 64 KiB.
    let n_flip_files = scaled(300);
    let mut rng = Rng(0x5EED_0FF1_1235);
    let span = bytes.len().min(64 << 10);
    let path = dir.join("flip.gguf");
    let before = (tally.rejected, tally.loaded);
    let mut flipped_meta = 0;
    for i in 0..n_flip_files {
        let mut b = bytes.clone();
        let n_flips = 1 + rng.below(8);
        let mut in_meta = false;
        for _ in 0..n_flips {
            let at = rng.below(span);
            in_meta |= at < meta_end;
            b[at] ^= 1 << rng.below(8);
        }
        flipped_meta += in_meta as usize;
        std::fs::write(&path, &b).unwrap();
        if verbose() {
            eprintln!("malformed: flip file {i}");
        }
        exercise(&path, Expect::Any, &mut tally);
    }
    let (flip_rejected, flip_loaded) = (tally.rejected - before.0, tally.loaded - before.1);

    // Zero-length file, a folder, a device, a missing file, a NUL in the path.
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let sub = dir.join("folder.gguf");
    std::fs::create_dir_all(&sub).unwrap();
    for p in [empty.as_path(), sub.as_path(), Path::new("/dev/null"), &dir.join("missing.gguf")] {
        exercise(p, Expect::RejectBoth, &mut tally);
    }
    assert!(matches!(Model::load("bad\0path.gguf"), Err(Error::Nul { .. })));
    // A model without a training context length loads; a context that
    // would take its length from it is refused, the default one gets 4096.
    // Found by this corpus: a model without a tokenizer keeps its token
    // list, but llama.cpp asserts on every per-token call: no id is valid.
    let none = Model::load(dir.join("tokenizer_none.gguf")).unwrap();
    assert_eq!(none.vocab().n_tokens(), 0);
    assert!(matches!(none.vocab().tokenize("hi", AddSpecial::Yes, ParseSpecial::Yes), Err(Error::Tokenize { .. })));
    assert!(matches!(none.vocab().token_to_piece(Token(1), RenderSpecial::Yes), Err(Error::InvalidToken { .. })));
    assert!(!none.vocab().is_eog(Token(2)));
    let ctx0 = Model::load(dir.join("ctx0.gguf")).unwrap();
    assert!(matches!(
        ctx0.new_context(ContextParams::default().threads(1).ctx_size(llama_rs::CtxSize::Train)),
        Err(Error::InvalidParam { name: "n_ctx", .. })
    ));
    assert_eq!(ctx0.new_context(ContextParams::default().threads(1)).unwrap().n_ctx(), llama_rs::DEFAULT_N_CTX);

    eprintln!(
        "malformed: {} files tried in {:.1} s: {} rejected, {} loaded ({} of them decoded a token); \
         vocab-only loads accepted {}",
        tally.tried,
        started.elapsed().as_secs_f64(),
        tally.rejected,
        tally.loaded,
        tally.decoded,
        tally.vocab_only_loaded
    );
    eprintln!(
        "malformed: bad fields {n_fields} ({field_rejected} rejected, {must_reject} had to be); truncations {} \
         (all rejected); patched counts {n_huge} ({huge_rejected} rejected); bit-flip files {n_flip_files} ({flip_rejected} \
         rejected, {flip_loaded} loaded, {flipped_meta} with a flip in the metadata)",
        cuts.len()
    );
    // Plausibility: most patched counts are refused; bit flips in the
    // metadata mostly are, flips in the weights mostly load.
    assert!(field_rejected >= must_reject);
    assert!(huge_rejected * 10 >= n_huge * 8, "{huge_rejected} of {n_huge} patched files rejected");
    assert!(flip_rejected > 0 && flip_loaded > 0, "{flip_rejected} rejected, {flip_loaded} loaded");
    assert_eq!(tally.rejected + tally.loaded, tally.tried);
}

fn tokens_len(bytes: &[u8], count_at: usize) -> u64 {
    u64::from_le_bytes(bytes[count_at..count_at + 8].try_into().unwrap())
}

/// `examples/info` on bad files prints `error: ...` and exits with 1, never
/// a signal.
#[test]
fn info_example_reports_bad_files_with_exit_code_1() {
    let info = common::example_binary("info");
    let dir = temp_dir("malformed-info");
    let good = tiny_path(VocabKind::Spm);
    let bytes = std::fs::read(&good).unwrap();
    let mut files = vec![
        Edit::open(&good).u32("llama.block_count", 0).write(&dir.join("block0.gguf")),
        Edit::open(&good).str("llama.rope.scaling.type", "dynamic").write(&dir.join("rope.gguf")),
        Edit::open(&good).u32("llama.embedding_length", 32).write(&dir.join("embd32.gguf")),
        dir.join("missing.gguf"),
        dir.clone(),
    ];
    for (name, content) in [("cut.gguf", &bytes[..bytes.len() / 2]), ("empty.gguf", &bytes[..0])] {
        std::fs::write(dir.join(name), content).unwrap();
        files.push(dir.join(name));
    }
    for f in &files {
        let out = std::process::Command::new(&info).arg(f).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {:?}, stderr: {stderr}", f.display(), out.status);
        // llama.cpp's own log lines (tracing, RUST_LOG) may come before it.
        assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{}: stderr: {stderr}", f.display());
    }
    eprintln!("malformed: examples/info exited 1 with `error: ...` on {} bad files", files.len());
}
