//! Embeddings and reranking: pooling per context, `Embedder` batching,
//! normalization, rank pooling on a synthetic Qwen3 reranker (scores checked
//! against an independent computation), SmolLM2 similarities, and the error
//! and crash paths (docs/SAFETY.md, E1-E3 and B12).

mod common;

use common::edit::Edit;
use common::{assert_child_ok, in_child, real_model, run_in_child, temp_dir, tiny, tiny_path};
use llama_rs::synthetic::{Architecture, ModelShape, SyntheticModel, VocabKind, WeightType};
use llama_rs::{
    sys, AddSpecial, Batch, ContextParams, EmbedParams, Embedder, Error, Model, Normalize, ParseSpecial, Pooling,
    Sampler, Token,
};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const TEXTS: &[&str] = &[
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "Embeddings are vectors that stand for texts.",
    "One more sentence, a little longer than the others, with commas, numbers (42) and punctuation!",
    "Short one.",
    "The last text of the list.",
];

fn params(pooling: Pooling) -> EmbedParams {
    EmbedParams::default().pooling(pooling).threads(2)
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

/// Per-token rows of `tokens` decoded alone in a non-pooling embeddings context.
fn token_rows(model: &Model, tokens: &[Token]) -> Vec<Vec<f32>> {
    let mut ctx = model
        .new_context(ContextParams::default().n_ctx(512).threads(2).embeddings(true).pooling(Pooling::None))
        .unwrap();
    let mut b = Batch::new(tokens.len(), 1).unwrap();
    b.add_sequence(tokens, 0, 0, true).unwrap();
    ctx.decode(&mut b).unwrap();
    (0..tokens.len() as i32).map(|i| ctx.embeddings(i).unwrap().to_vec()).collect()
}

/// Each text alone, then all of them in several batch layouts (orders,
/// sequences per decode, tokens per decode): the vectors must not depend on
/// the company a text keeps.
///
/// Tolerance: sequences in one decode do not see each other (each attends to
/// its own tokens), so the rows differ only by rounding, and that comes from
/// ggml's CPU flash-attention kernel (on by default, `FlashAttention::Auto`):
/// a micro-batch of 64 query rows or more takes its tiled kernel, a smaller one
/// the row-by-row kernel (`ggml-cpu/ops.cpp`, `neq1 >= GGML_FA_TILE_Q`), and
/// the two round the F16 products differently. With flash attention off the
/// same layouts differ by at most 5e-7. Measured maximum absolute difference
/// (unnormalized vectors of magnitude ~1, x86-64, 2026-12): tiny mean 3.5e-4,
/// tiny last 1.34e-3, tiny CLS 0 (the BOS row), SmolLM2 mean 1.9e-6, and 2.4e-7
/// for layouts of fewer than 64 tokens per decode. The bound, 5e-3, is 3.7x
/// the largest, and 20x below the difference the test requires between two
/// texts.
#[test]
fn the_same_text_gives_the_same_vector_in_any_batch() {
    let mut worst = Vec::new();
    let cases: Vec<(&str, &Model, Pooling)> = vec![
        ("tiny mean", tiny(), Pooling::Mean),
        ("tiny last", tiny(), Pooling::Last),
        ("tiny cls", tiny(), Pooling::Cls),
        ("smollm2 mean", real_model(), Pooling::Mean),
    ];
    for (name, model, pooling) in cases {
        let p = params(pooling).normalize(Normalize::None);
        let mut one = Embedder::new(model, p.clone().max_sequences(1)).unwrap();
        let alone: Vec<Vec<f32>> = TEXTS.iter().map(|t| one.embed(&[t]).unwrap().remove(0)).collect();
        let mut max = 0f32;
        for (seqs, tokens) in [(16, 2048), (3, 2048), (2, 64), (7, 70)] {
            let mut e = Embedder::new(model, p.clone().max_sequences(seqs).batch_tokens(tokens)).unwrap();
            let together = e.embed(TEXTS).unwrap();
            let mut reversed = e.embed(&TEXTS.iter().rev().collect::<Vec<_>>()).unwrap();
            reversed.reverse();
            max = max.max(max_abs_diff(&alone, &together));
            max = max.max(max_abs_diff(&alone, &reversed));
        }
        // Different texts are far apart: the comparison is not vacuous
        // (CLS pooling of a causal model is the first token's row, BOS for
        // every text: all equal).
        if pooling != Pooling::Cls {
            assert!(max_abs_diff(&alone[..1], &alone[1..2]) > 0.1, "{name}");
        }
        println!("{name}: max abs difference alone vs batched = {max:e}");
        worst.push((name, max));
        assert!(max <= 5e-3, "{name}: {max}");
    }
    println!("{worst:?}");
}

/// Mean and last pooling equal what they are defined as, computed here from
/// the per-token rows of a non-pooling context (CLS: the first row).
#[test]
fn pooled_rows_equal_the_pooling_of_the_token_rows() {
    let m = tiny();
    let tokens = m.vocab().tokenize(TEXTS[1], AddSpecial::Yes, ParseSpecial::No).unwrap();
    let rows = token_rows(m, &tokens);
    let n_embd = m.n_embd_out() as usize;
    let mean: Vec<f32> = (0..n_embd).map(|j| rows.iter().map(|r| r[j]).sum::<f32>() / rows.len() as f32).collect();
    let mut max = 0f32;
    for (pooling, want) in [(Pooling::Mean, &mean), (Pooling::Last, rows.last().unwrap()), (Pooling::Cls, &rows[0])] {
        let mut e = Embedder::new(m, params(pooling).normalize(Normalize::None)).unwrap();
        let got = e.embed_tokens(&[&tokens]).unwrap();
        max = max.max(max_abs_diff(&got, std::slice::from_ref(want)));
    }
    println!("pooled vs computed from token rows: max abs difference {max:e}");
    // Mean pooling is a matrix product in llama.cpp, summed in another order.
    assert!(max <= 1e-5, "{max}");
}

/// [`Normalize::L2`] (the default) gives unit vectors, the direction of the
/// raw ones.
#[test]
fn normalized_vectors_have_norm_one() {
    for model in [tiny(), real_model()] {
        let mut raw = Embedder::new(model, params(Pooling::Mean).normalize(Normalize::None)).unwrap();
        let mut unit = Embedder::new(model, params(Pooling::Mean)).unwrap();
        let r = raw.embed(TEXTS).unwrap();
        let u = unit.embed(TEXTS).unwrap();
        for (r, u) in r.iter().zip(&u) {
            assert!((norm(u) - 1.0).abs() < 1e-5, "norm {}", norm(u));
            assert!((norm(r) - 1.0).abs() > 1e-3, "raw vectors are not unit already: {}", norm(r));
            let cos = dot(r, u) / norm(r);
            assert!((cos - 1.0).abs() < 1e-5, "{cos}");
        }
    }
}

/// On SmolLM2 (mean pooling chosen per context, the model names none), pairs
/// of texts that say the same thing are closer than pairs that do not.
///
/// Measured cosines (L2-normalized, 2026-12): similar pairs 0.903-0.950,
/// unrelated pairs (each first text with the other pairs' second texts)
/// 0.708-0.887: every similar pair beats every unrelated one, by 0.016 at the
/// closest (a small generative model's mean-pooled vectors are all alike;
/// the ordering is what holds).
#[test]
fn similar_texts_are_closer_on_smollm2() {
    let pairs = [
        ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
        ("How do I bake a loaf of bread?", "What is a simple recipe for baking bread?"),
        ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
        ("It is raining heavily outside.", "A lot of rain is falling outdoors."),
        ("She plays the piano every evening.", "Every night she practices the piano."),
    ];
    let m = real_model();
    assert_eq!(m.pooling(), None, "SmolLM2 names no pooling");
    let mut e = Embedder::new(m, params(Pooling::Mean)).unwrap();
    let firsts = e.embed(&pairs.map(|p| p.0)).unwrap();
    let seconds = e.embed(&pairs.map(|p| p.1)).unwrap();
    let similar: Vec<f32> = (0..pairs.len()).map(|i| dot(&firsts[i], &seconds[i])).collect();
    let mut unrelated = Vec::new();
    for (i, first) in firsts.iter().enumerate() {
        for (_, second) in seconds.iter().enumerate().filter(|&(j, _)| j != i) {
            unrelated.push(dot(first, second));
        }
    }
    let lo = similar.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = unrelated.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    println!("similar: {similar:.3?}\nunrelated: {unrelated:.3?}\nmin similar {lo:.3}, max unrelated {hi:.3}");
    assert!(lo > hi, "a similar pair ({lo}) scored below an unrelated one ({hi})");
}

/// The output width of each pooling: per-token rows and pooled vectors are
/// `n_embd_out` wide, rank rows `n_cls_out`.
#[test]
fn each_pooling_gives_its_width() {
    let m = tiny();
    let n_embd = m.n_embd_out() as usize;
    let tokens = m.vocab().tokenize(TEXTS[0], AddSpecial::Yes, ParseSpecial::No).unwrap();
    let rows = token_rows(m, &tokens);
    assert_eq!(rows.len(), tokens.len());
    assert!(rows.iter().all(|r| r.len() == n_embd));
    for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Last] {
        let mut e = Embedder::new(m, params(pooling)).unwrap();
        assert_eq!((e.pooling(), e.dim()), (pooling, n_embd));
        let v = e.embed(TEXTS).unwrap();
        assert_eq!(v.len(), TEXTS.len());
        assert!(v.iter().all(|r| r.len() == n_embd && r.iter().all(|x| x.is_finite())), "{pooling}");
    }
    let r = reranker();
    assert_eq!(
        (r.pooling(), r.n_cls_out(), r.classifier_labels()),
        (Some(Pooling::Rank), 2, vec!["yes".into(), "no".into()])
    );
    let mut e = Embedder::new(r, params(Pooling::Rank)).unwrap();
    assert_eq!(e.dim(), 2);
    let tokens = r.vocab().tokenize("query text", AddSpecial::Yes, ParseSpecial::No).unwrap();
    let rows = e.embed_tokens(&[&tokens, &tokens[..2]]).unwrap();
    assert!(rows.iter().all(|r| r.len() == 2));
    // Qwen3 rerankers end in a softmax over the labels.
    assert!(rows.iter().all(|r| (r[0] + r[1] - 1.0).abs() < 1e-6), "{rows:?}");
    assert_eq!(e.rerank("q", &["a", "b", "c"]).unwrap().len(), 3);
}

// ---------------------------------------------------------------------------
// Reranking
// ---------------------------------------------------------------------------

const RERANK_TEMPLATE: &str =
    "<|im_start|>user\nQuery: {query}\nDocument: {document}<|im_end|>\n<|im_start|>assistant\n";

fn reranker_model(template: bool) -> SyntheticModel {
    let m = SyntheticModel::new(ModelShape::tiny())
        .architecture(Architecture::Qwen3)
        .classifier(&["yes", "no"])
        .weight_type(WeightType::F32)
        .seed(7);
    if template {
        m.rerank_template(RERANK_TEMPLATE)
    } else {
        m
    }
}

/// A tiny synthetic Qwen3 reranker (classifier head `yes`/`no`, rank pooling
/// by default), without a rerank template.
fn reranker() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(reranker_model(false).write_cached(common::fixture_dir()).unwrap()).unwrap())
}

/// The same reranker with a rerank template.
fn reranker_with_template() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(reranker_model(true).write_cached(common::fixture_dir()).unwrap()).unwrap())
}

const QUERY: &str = "What is the capital of France?";
const DOCS: &[&str] = &[
    "Paris is the capital of France.",
    "Bananas are yellow.",
    "The Eiffel tower stands in Paris, France's capital city.",
    "x",
    "A long document about something else entirely, with many words in it to make it longer than the rest.",
];

/// The pair llama.cpp's server builds without a template, by hand: for this
/// vocabulary (adds BOS, no EOS, no SEP) `[BOS] query document`.
fn pair_by_hand(m: &Model, query: &str, doc: &str) -> Vec<Token> {
    let v = m.vocab();
    assert!(v.add_bos() && !v.add_eos());
    let mut t = vec![v.bos().unwrap()];
    t.extend(v.tokenize(query, AddSpecial::No, ParseSpecial::No).unwrap());
    t.extend(v.tokenize(doc, AddSpecial::No, ParseSpecial::No).unwrap());
    t
}

/// The classifier's "yes" probability computed here: the final normed hidden
/// state of the pair's last token (a non-pooling context's row), times
/// `cls.output.weight` (the values the writer generated), softmaxed.
fn score_by_hand(m: &Model, tokens: &[Token]) -> f32 {
    let h = token_rows(m, tokens).pop().unwrap();
    let w = reranker_model(false).tensor_values("cls.output.weight").unwrap();
    let n = h.len();
    let z: Vec<f64> =
        w.chunks(n).map(|row| row.iter().zip(&h).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum()).collect();
    assert_eq!(z.len(), 2);
    (1.0 / (1.0 + (z[1] - z[0]).exp())) as f32
}

/// Rerank scores equal the independent computation, one per document, in
/// document order; the pair is the one llama.cpp's server builds.
///
/// Tolerance 1e-6: the classifier product is summed in f64 here and in f32
/// by ggml (64 terms of magnitude < 0.2), with each pair decoded alone on
/// both sides (the same attention kernel; see
/// `the_same_text_gives_the_same_vector_in_any_batch` for batches); measured
/// maximum 6.0e-8.
#[test]
fn rerank_scores_equal_an_independent_computation() {
    let m = reranker();
    let mut e = Embedder::new(m, params(Pooling::Rank)).unwrap();
    assert_eq!(e.pooling(), Pooling::Rank, "the model's default");
    let scores = e.rerank(QUERY, DOCS).unwrap();
    assert_eq!(scores.len(), DOCS.len());
    let by_hand: Vec<Vec<Token>> = DOCS.iter().map(|d| pair_by_hand(m, QUERY, d)).collect();
    // The same tokens through embed_tokens: the same pairs, bit for bit.
    let rows = e.embed_tokens(&by_hand).unwrap();
    assert_eq!(scores, rows.iter().map(|r| r[0]).collect::<Vec<_>>());
    let mut alone = Embedder::new(m, params(Pooling::Rank).max_sequences(1)).unwrap();
    let scores = alone.rerank(QUERY, DOCS).unwrap();
    let mut max = 0f32;
    for (k, tokens) in by_hand.iter().enumerate() {
        max = max.max((scores[k] - score_by_hand(m, tokens)).abs());
    }
    println!("scores {scores:?}; max abs difference from the computation by hand {max:e}");
    assert!(max <= 1e-6, "{max}");
    // Not all the same: the documents are told apart.
    assert!(scores.iter().any(|&s| (s - scores[0]).abs() > 1e-4), "{scores:?}");
}

/// With `tokenizer.chat_template.rerank`, the pair is the template with
/// `{query}` and `{document}` filled in, special tokens parsed.
#[test]
fn rerank_uses_the_model_rerank_template() {
    let m = reranker_with_template();
    assert_eq!(m.chat_template(Some("rerank")).as_deref(), Some(RERANK_TEMPLATE));
    let mut e = Embedder::new(m, params(Pooling::Rank)).unwrap();
    let scores = e.rerank(QUERY, DOCS).unwrap();
    let by_hand: Vec<Vec<Token>> = DOCS
        .iter()
        .map(|d| {
            let text = RERANK_TEMPLATE.replace("{query}", QUERY).replace("{document}", d);
            m.vocab().tokenize(&text, AddSpecial::No, ParseSpecial::Yes).unwrap()
        })
        .collect();
    assert!(by_hand[0].contains(&m.vocab().tokenize("<|im_start|>", AddSpecial::No, ParseSpecial::Yes).unwrap()[0]));
    let rows = e.embed_tokens(&by_hand).unwrap();
    assert_eq!(scores, rows.iter().map(|r| r[0]).collect::<Vec<_>>());
    // The template changes the input, hence the scores.
    let mut plain = Embedder::new(reranker(), params(Pooling::Rank)).unwrap();
    assert_ne!(scores, plain.rerank(QUERY, DOCS).unwrap());
}

/// Scores do not depend on the order of the documents, on how many share a
/// decode, or on repetition (tolerance and its cause as in
/// `the_same_text_gives_the_same_vector_in_any_batch`; measured 8.1e-5).
#[test]
fn rerank_is_deterministic_and_order_independent() {
    let m = reranker();
    let mut e = Embedder::new(m, params(Pooling::Rank)).unwrap();
    let scores = e.rerank(QUERY, DOCS).unwrap();
    assert_eq!(scores, e.rerank(QUERY, DOCS).unwrap(), "deterministic");
    let mut max = 0f32;
    for (seqs, tokens) in [(1, 2048), (2, 128), (3, 100)] {
        let mut e = Embedder::new(m, params(Pooling::Rank).max_sequences(seqs).batch_tokens(tokens)).unwrap();
        let mut rev = e.rerank(QUERY, &DOCS.iter().rev().collect::<Vec<_>>()).unwrap();
        rev.reverse();
        max = scores.iter().zip(&rev).map(|(a, b)| (a - b).abs()).fold(max, f32::max);
    }
    println!("rerank: max abs difference across layouts {max:e}");
    assert!(max <= 5e-3, "{max}");
}

// ---------------------------------------------------------------------------
// Errors and crash paths
// ---------------------------------------------------------------------------

#[test]
fn too_long_inputs_name_their_index_count_and_limit() {
    let m = tiny();
    let mut e = Embedder::new(m, params(Pooling::Mean).batch_tokens(32)).unwrap();
    assert_eq!(e.max_tokens(), 32);
    let long = "word ".repeat(100);
    let n = m.vocab().tokenize(&long, AddSpecial::Yes, ParseSpecial::No).unwrap().len();
    match e.embed(&["short", "also short", &long]) {
        Err(Error::InputTooLong { index: 2, n_tokens, limit: 32 }) => assert_eq!(n_tokens, n),
        other => panic!("{other:?}"),
    }
    let err = e.embed(&[long.as_str()]).unwrap_err().to_string();
    assert!(err.contains("input 0") && err.contains(&n.to_string()) && err.contains("32"), "{err}");
    // After the error the embedder works on.
    assert_eq!(e.embed(&["short"]).unwrap().len(), 1);
    // Reranking names the document.
    let mut r = Embedder::new(reranker(), params(Pooling::Rank).batch_tokens(32)).unwrap();
    assert!(matches!(r.rerank("q", &["d", &long]), Err(Error::InputTooLong { index: 1, .. })));
    // An input with no tokens.
    assert!(matches!(e.embed_tokens(&[&[][..] as &[Token]]), Err(Error::InvalidParam { name: "input", .. })));
    assert!(e.embed::<&str>(&[]).unwrap().is_empty());
}

#[test]
fn pooling_mismatches_are_errors() {
    // SmolLM2 names no pooling: an embedder needs one.
    let err = Embedder::new(tiny(), EmbedParams::default().threads(2)).unwrap_err();
    assert!(matches!(&err, Error::InvalidParam { name: "pooling", .. }), "{err}");
    assert!(matches!(Embedder::new(tiny(), params(Pooling::None)), Err(Error::InvalidParam { name: "pooling", .. })));
    // Reranking needs rank pooling; embedding texts needs another.
    let mut e = Embedder::new(tiny(), params(Pooling::Mean)).unwrap();
    assert!(matches!(e.rerank("q", &["d"]), Err(Error::InvalidParam { name: "pooling", .. })));
    let mut r = Embedder::new(reranker(), params(Pooling::Rank)).unwrap();
    assert!(matches!(r.embed(&["text"]), Err(Error::InvalidParam { name: "pooling", .. })));
    // A reranker can still embed with another pooling.
    let mut r = Embedder::new(reranker(), params(Pooling::Mean)).unwrap();
    assert_eq!(r.embed(&["text"]).unwrap()[0].len(), 64);
}

/// Rank pooling on a model without a classifier head is refused when the
/// context is created, asked for or the model's default.
#[test]
fn rank_pooling_without_a_classifier_is_refused() {
    let m = tiny();
    assert!(!m.has_classifier() && reranker().has_classifier());
    let p = ContextParams::default().n_ctx(256).threads(2).embeddings(true);
    match m.new_context(p.clone().pooling(Pooling::Rank)) {
        Err(Error::InvalidParam { name: "pooling", reason, .. }) => assert!(reason.contains("classifier"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(Embedder::new(m, params(Pooling::Rank)).is_err());
    // Without embeddings, pooling plays no part.
    assert!(m.new_context(ContextParams::default().n_ctx(256).threads(2).pooling(Pooling::Rank)).is_ok());
    // The model's own default: rank.
    let dir = temp_dir("embeddings-rank-default");
    let path = Edit::open(&tiny_path(VocabKind::Spm)).u32("llama.pooling_type", 4).write(&dir.join("rank.gguf"));
    let m = Model::load(&path).unwrap();
    assert_eq!(m.pooling(), Some(Pooling::Rank));
    assert!(matches!(m.new_context(p.clone()), Err(Error::InvalidParam { name: "pooling", .. })));
    // Choosing another pooling works.
    assert_eq!(m.new_context(p.pooling(Pooling::Mean)).unwrap().pooling(), Pooling::Mean);
}

/// E1: rank pooling on a model without a classifier head copies
/// `n_cls_out` values per sequence out of the pooled token row; with more
/// classifier labels than the row is wide, the first decode aborted in ggml's
/// tensor-get bounds assert (`ggml-backend.cpp:423`). Refused at context
/// creation now.
#[test]
fn rank_pooling_past_the_row_is_refused() {
    const NAME: &str = "rank_pooling_past_the_row_is_refused";
    if in_child(NAME) {
        let labels: Vec<Vec<u8>> = (0..100).map(|i| format!("label{i}").into_bytes()).collect();
        let dir = temp_dir("embeddings-rank-labels");
        let path = Edit::open(&tiny_path(VocabKind::Spm))
            .u32("llama.pooling_type", 4)
            .arr_str("llama.classifier.output_labels", &labels)
            .write(&dir.join("rank100.gguf"));
        let m = Model::load(&path).unwrap();
        assert_eq!(m.n_cls_out(), 100);
        let r = m.new_context(ContextParams::default().n_ctx(256).threads(1).embeddings(true));
        match r {
            Err(Error::InvalidParam { name: "pooling", reason, .. }) => println!("refused: {reason}"),
            other => panic!("{other:?}"),
        }
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// E2: with mean pooling, llama.cpp reserves its graph for the micro-batch
/// rounded up to a multiple of `n_seq_max` but with outputs for the
/// micro-batch only; when they differ, the mean's matrix product has
/// operands of different lengths and context creation aborted in ggml's
/// shape assert (`ggml.c:3354`). Found by this file's batch-layout test
/// (3 sequences, 2048 tokens). Refused now; the embedder rounds its batch
/// down to a multiple of its sequences.
#[test]
fn mean_pooling_needs_sequences_that_divide_the_micro_batch() {
    const NAME: &str = "mean_pooling_needs_sequences_that_divide_the_micro_batch";
    if in_child(NAME) {
        let p = ContextParams::default().n_ctx(2048).n_ubatch(2048).threads(1).embeddings(true);
        match tiny().new_context(p.clone().pooling(Pooling::Mean).n_seq_max(3)) {
            Err(Error::InvalidParam { name: "n_seq_max", reason, .. }) => {
                assert!(reason.contains("2048") && reason.contains("multiple"), "{reason}");
                println!("refused: {reason}");
            }
            other => panic!("{other:?}"),
        }
        // Dividing sizes, and the poolings that pick rows, work.
        tiny().new_context(p.clone().pooling(Pooling::Mean).n_seq_max(4)).unwrap();
        tiny().new_context(p.clone().pooling(Pooling::Last).n_seq_max(3)).unwrap();
        let e = Embedder::new(tiny(), params(Pooling::Mean).max_sequences(3)).unwrap();
        assert_eq!(e.max_tokens(), 2046);
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// A GPT-2-architecture model (learned absolute position embeddings for
/// `n_pos` positions), F32, one layer, with the tiny SPM model's tokenizer;
/// written with ggml's gguf API (the synthetic writer makes llama and qwen3
/// models only).
fn write_gpt2(path: &Path, n_pos: u32) -> PathBuf {
    use std::ffi::{CStr, CString};
    let key = |k: &str| CString::new(k).unwrap();
    let (n_embd, n_ff, n_vocab) = (64i64, 128i64, 1024i64);
    let tensors: Vec<(&str, Vec<i64>, f32)> = vec![
        ("token_embd.weight", vec![n_embd, n_vocab], 0.05),
        ("position_embd.weight", vec![n_embd, i64::from(n_pos)], 0.05),
        ("output_norm.weight", vec![n_embd], 1.0),
        ("output_norm.bias", vec![n_embd], 0.0),
        ("output.weight", vec![n_embd, n_vocab], 0.05),
        ("blk.0.attn_norm.weight", vec![n_embd], 1.0),
        ("blk.0.attn_norm.bias", vec![n_embd], 0.0),
        ("blk.0.attn_qkv.weight", vec![n_embd, 3 * n_embd], 0.05),
        ("blk.0.attn_qkv.bias", vec![3 * n_embd], 0.0),
        ("blk.0.attn_output.weight", vec![n_embd, n_embd], 0.05),
        ("blk.0.attn_output.bias", vec![n_embd], 0.0),
        ("blk.0.ffn_norm.weight", vec![n_embd], 1.0),
        ("blk.0.ffn_norm.bias", vec![n_embd], 0.0),
        ("blk.0.ffn_down.weight", vec![n_ff, n_embd], 0.05),
        ("blk.0.ffn_down.bias", vec![n_embd], 0.0),
        ("blk.0.ffn_up.weight", vec![n_embd, n_ff], 0.05),
        ("blk.0.ffn_up.bias", vec![n_ff], 0.0),
    ];
    let tokenizer = CString::new(tiny_path(VocabKind::Spm).to_str().unwrap()).unwrap();
    // SAFETY: gguf/ggml calls on contexts created here (checked non-NULL),
    // NUL-terminated keys and names, data buffers of the sizes given; both
    // contexts are freed once at the end.
    unsafe {
        let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
        let src = sys::gguf_init_from_file(tokenizer.as_ptr(), params);
        assert!(!src.is_null());
        let g = sys::gguf_init_empty();
        sys::gguf_set_kv(g, src);
        sys::gguf_free(src);
        let keys: Vec<String> = (0..sys::gguf_get_n_kv(g))
            .map(|i| CStr::from_ptr(sys::gguf_get_key(g, i)).to_string_lossy().into_owned())
            .filter(|k| k.starts_with("llama."))
            .collect();
        for k in keys {
            sys::gguf_remove_key(g, key(&k).as_ptr());
        }
        sys::gguf_set_val_str(g, key("general.architecture").as_ptr(), key("gpt2").as_ptr());
        for (k, v) in [
            ("gpt2.context_length", n_pos),
            ("gpt2.embedding_length", n_embd as u32),
            ("gpt2.block_count", 1),
            ("gpt2.feed_forward_length", n_ff as u32),
            ("gpt2.attention.head_count", 4),
        ] {
            sys::gguf_set_val_u32(g, key(k).as_ptr(), v);
        }
        sys::gguf_set_val_f32(g, key("gpt2.attention.layer_norm_epsilon").as_ptr(), 1e-5);
        let mem_size = sys::ggml_tensor_overhead() * (tensors.len() + 1);
        let ggml = sys::ggml_init(sys::ggml_init_params { mem_size, mem_buffer: std::ptr::null_mut(), no_alloc: true });
        assert!(!ggml.is_null());
        let mut data = Vec::new();
        for (name, ne, scale) in &tensors {
            let t = match ne[..] {
                [a] => sys::ggml_new_tensor_1d(ggml, sys::GGML_TYPE_F32, a),
                [a, b] => sys::ggml_new_tensor_2d(ggml, sys::GGML_TYPE_F32, a, b),
                _ => unreachable!(),
            };
            sys::ggml_set_name(t, key(name).as_ptr());
            sys::gguf_add_tensor(g, t);
            let n: i64 = ne.iter().product();
            let random = *scale != 0.0 && *scale != 1.0;
            data.push(
                (0..n).map(|i| if random { scale * (i as f32 * 0.618).sin() } else { *scale }).collect::<Vec<f32>>(),
            );
        }
        let mut bytes = vec![0u8; sys::gguf_get_meta_size(g)];
        sys::gguf_get_meta_data(g, bytes.as_mut_ptr().cast());
        let (base, align) = (bytes.len(), sys::gguf_get_alignment(g));
        for (i, d) in data.iter().enumerate() {
            assert_eq!(bytes.len() - base, sys::gguf_get_tensor_offset(g, i as i64));
            bytes.extend(d.iter().flat_map(|v| v.to_le_bytes()));
            bytes.resize(base + (bytes.len() - base).next_multiple_of(align), 0);
        }
        sys::ggml_free(ggml);
        sys::gguf_free(g);
        std::fs::write(path, bytes).unwrap();
    }
    path.to_path_buf()
}

/// B12: a model with learned absolute position embeddings (GPT-2, StarCoder,
/// BERT, MPT: `position_embd`, one row per training position) looks each
/// token's position up as a row; a position past the table aborted in ggml's
/// row-lookup assert (`ggml-cpu/ops.cpp:5363`). The context refuses such a
/// batch now, and an embedder's inputs are bounded by the table (BERT-style
/// embedding models have 512 positions; the default batch is 2048 tokens).
#[test]
fn positions_past_learned_position_embeddings_are_refused() {
    const NAME: &str = "positions_past_learned_position_embeddings_are_refused";
    if in_child(NAME) {
        let path = write_gpt2(&temp_dir("embeddings-gpt2").join("gpt2.gguf"), 64);
        let m = Model::load(&path).unwrap();
        assert_eq!(m.architecture(), "gpt2");
        let mut ctx = m.new_context(ContextParams::default().n_ctx(256).threads(1)).unwrap();
        assert_eq!(ctx.max_positions(), Some(64));
        let mut b = Batch::new(1, 1).unwrap();
        b.add(Token(5), 100, &[0], true).unwrap();
        match ctx.decode(&mut b) {
            Err(Error::BatchInvalid { reason, .. }) => {
                assert!(reason.contains("position 100") && reason.contains("0..64"), "{reason}");
                println!("refused: {reason}");
            }
            other => panic!("{other:?}"),
        }
        let mut b = Batch::new(64, 1).unwrap();
        b.add_sequence(&vec![Token(5); 64], 0, 0, true).unwrap();
        ctx.decode(&mut b).unwrap();
        // The embedder: inputs of at most 64 tokens.
        let mut e = Embedder::new(&m, params(Pooling::Mean)).unwrap();
        assert_eq!(e.max_tokens(), 64);
        let long = "word ".repeat(100);
        assert!(matches!(e.embed(&[long.as_str()]), Err(Error::InputTooLong { index: 0, limit: 64, .. })));
        assert_eq!(e.embed(&["short", "texts"]).unwrap().len(), 2);
        // RoPE models have no such table.
        assert_eq!(tiny().new_context(ContextParams::default().n_ctx(256).threads(1)).unwrap().max_positions(), None);
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

#[test]
fn per_token_and_per_sequence_rows_are_checked() {
    let m = tiny();
    let base = ContextParams::default().n_ctx(256).n_seq_max(2).threads(2);
    let mut b = Batch::new(4, 1).unwrap();
    b.add_sequence(&[Token(1), Token(5), Token(6)], 0, 0, true).unwrap();
    // No embeddings.
    let mut c = m.new_context(base.clone()).unwrap();
    c.decode(&mut b).unwrap();
    assert!(matches!(c.seq_embeddings(0), Err(Error::NoLogits { .. })));
    // Pooling none: per-token rows only.
    let mut c = m.new_context(base.clone().embeddings(true)).unwrap();
    assert_eq!(c.pooling(), Pooling::None);
    c.decode(&mut b).unwrap();
    assert!(c.embeddings(2).is_ok());
    assert!(matches!(c.seq_embeddings(0), Err(Error::NoLogits { .. })));
    // Pooled: per-sequence rows only (the per-token buffer is never written).
    let mut c = m.new_context(base.embeddings(true).pooling(Pooling::Mean)).unwrap();
    assert!(matches!(c.seq_embeddings(0), Err(Error::NoLogits { .. })), "before any decode");
    c.decode(&mut b).unwrap();
    assert_eq!(c.seq_embeddings(0).unwrap().len(), 64);
    assert!(matches!(c.embeddings(0), Err(Error::NoLogits { .. })));
    assert!(matches!(c.seq_embeddings(1), Err(Error::NoLogits { .. })), "sequence 1 had no tokens");
    assert!(matches!(c.seq_embeddings(2), Err(Error::InvalidSeqId { seq_id: 2, .. })));
    assert!(matches!(c.seq_embeddings(-1), Err(Error::InvalidSeqId { .. })));
}

/// Sampling on a pooled or rank embeddings context does not abort
/// (`llama_sampler_sample` asserts on a row without logits, S2).
#[test]
fn sampling_on_pooled_contexts_does_not_abort() {
    for (model, pooling) in [(tiny(), Pooling::Mean), (tiny(), Pooling::Last), (reranker(), Pooling::Rank)] {
        let mut c = model
            .new_context(ContextParams::default().n_ctx(256).threads(2).embeddings(true).pooling(pooling))
            .unwrap();
        let mut b = Batch::new(3, 1).unwrap();
        b.add_sequence(&[Token(1), Token(5), Token(6)], 0, 0, true).unwrap();
        c.decode(&mut b).unwrap();
        let mut s = Sampler::greedy(model).unwrap();
        match s.sample(&c, 2) {
            Ok(t) => assert!(t.0 >= 0 && t.0 < model.vocab().n_tokens()),
            Err(e) => assert!(matches!(e, Error::NoLogits { .. }), "{e}"),
        }
    }
}

/// An embedder on an `Arc` model is `'static` and moves to a thread.
#[test]
fn an_owned_embedder_moves_to_a_thread() {
    let model = std::sync::Arc::new(Model::load(tiny_path(VocabKind::Spm)).unwrap());
    let mut e = Embedder::new_owned(&model, params(Pooling::Mean)).unwrap();
    drop(model);
    let v = std::thread::spawn(move || e.embed(&["hello"]).unwrap()).join().unwrap();
    assert_eq!(v[0].len(), 64);
}
