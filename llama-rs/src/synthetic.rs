//! Synthetic llama-architecture GGUF models: any shape, deterministic random
//! weights, a working tokenizer.
//!
//! Tests and benchmarks need models of a known shape without downloading
//! gigabytes. [`SyntheticModel`] writes one: the metadata and tensor
//! descriptors go through ggml's own GGUF writer (`gguf.h`), the tensor data
//! is generated row by row from a small deterministic PRNG, quantized with
//! `ggml_quantize_chunk` and streamed to disk, so even a Llama-3-70B shape
//! never needs more than a few hundred MiB of memory.
//!
//! The vocabulary is real enough to tokenize any text: the SentencePiece
//! flavour ([`VocabKind::Spm`]) has the 256 byte-fallback tokens, the
//! byte-level BPE flavour ([`VocabKind::Bpe`]) has all 256 byte symbols and a
//! merge list consistent with its tokens. Text round-trips exactly through
//! `llama_tokenize` and `llama_detokenize`. The weights are noise: the model
//! produces finite logits and meaningless text.
//!
//! The same parameters always give byte-identical files.
//!
//! Besides llama models, the writer makes Qwen3-architecture models
//! ([`Architecture::Qwen3`]: the llama layout plus per-head Q/K norms), the
//! one architecture it supports whose loader takes a reranker's classifier
//! head (`cls.output.weight`, `src/models/qwen3.cpp`):
//! [`SyntheticModel::classifier`] adds it, with rank pooling as the model's
//! default. [`SyntheticLora`] writes LoRA adapters for a synthetic model.
//!
//! ```no_run
//! use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
//! # fn main() -> llama_rs::Result<()> {
//! let path = SyntheticModel::new(ModelShape::tiny())
//!     .vocab(VocabKind::Bpe)
//!     .weight_type(WeightType::Q8_0)
//!     .seed(7)
//!     .write_cached(std::env::temp_dir().join("llama-rs-models"))?;
//! # let _ = path; Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::ffi::cstring;
use llama_sys as sys;
use std::collections::HashSet;
use std::ffi::CString;
use std::io::{BufWriter, Write};
use std::os::raw::c_char;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

mod lora;
pub use lora::SyntheticLora;

/// Bumped whenever the generator's output changes, so that cached files
/// written by an older version get a different name.
const GENERATOR_VERSION: u32 = 1;

/// Largest `block_count` llama.cpp accepts (`LLAMA_MAX_LAYERS`, `src/llama-hparams.h:11`).
const MAX_LAYERS: u32 = 512;

/// Half-width of the uniform distribution of the random weights.
const WEIGHT_RANGE: f32 = 0.05;

/// Generated values per chunk (64 MiB of f32): bounds the memory used while
/// writing one tensor.
const CHUNK_VALUES: usize = 16 << 20;

/// Below this many values a chunk is generated on the calling thread only.
const PARALLEL_MIN_VALUES: usize = 1 << 18;

// GGUF token types (`llama_token_type` in llama.h).
const TOKEN_TYPE_NORMAL: i32 = 1;
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_BYTE: i32 = 6;

/// The hyperparameters of a llama-architecture model.
///
/// Tensor shapes follow from them: `n_embd / n_head` is the head size, and the
/// key/value projections have `n_head_kv` heads of that size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelShape {
    /// Number of tokens in the vocabulary.
    pub n_vocab: u32,
    /// Embedding (hidden) size.
    pub n_embd: u32,
    /// Number of transformer blocks.
    pub n_layer: u32,
    /// Number of attention (query) heads.
    pub n_head: u32,
    /// Number of key/value heads (grouped-query attention); divides `n_head`.
    pub n_head_kv: u32,
    /// Feed-forward (SwiGLU) hidden size.
    pub n_ff: u32,
    /// Training context length (`llama.context_length`).
    pub n_ctx_train: u32,
    /// RoPE base frequency.
    pub rope_freq_base: f32,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f32,
}

impl ModelShape {
    /// A model that loads in milliseconds: 1024 tokens, `n_embd` 64, 2 layers,
    /// 4 heads (2 for keys/values), `n_ff` 128, context 512 (about 0.2 M
    /// parameters). `n_embd` is not a multiple of 256: for the k-quants use
    /// [`ModelShape::tiny_k`].
    pub const fn tiny() -> ModelShape {
        ModelShape {
            n_vocab: 1024,
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            n_ctx_train: 512,
            rope_freq_base: 10000.0,
            rms_norm_eps: 1e-5,
        }
    }

    /// [`ModelShape::tiny`] widened to `n_embd` 256 and `n_ff` 512, the
    /// smallest shape the k-quants (256-value blocks) accept (about 1.7 M
    /// parameters).
    pub const fn tiny_k() -> ModelShape {
        ModelShape { n_embd: 256, n_ff: 512, ..ModelShape::tiny() }
    }

    /// A small real shape for CPU benchmarks: 32000 tokens, `n_embd` 512,
    /// 8 layers, 8 heads (4 for keys/values), `n_ff` 1536, context 2048
    /// (about 58 M parameters).
    pub const fn small() -> ModelShape {
        ModelShape {
            n_vocab: 32000,
            n_embd: 512,
            n_layer: 8,
            n_head: 8,
            n_head_kv: 4,
            n_ff: 1536,
            n_ctx_train: 2048,
            rope_freq_base: 10000.0,
            rms_norm_eps: 1e-5,
        }
    }

    /// The shape of Llama 3 8B (8.03 B parameters).
    pub const fn llama3_8b() -> ModelShape {
        ModelShape {
            n_vocab: 128256,
            n_embd: 4096,
            n_layer: 32,
            n_head: 32,
            n_head_kv: 8,
            n_ff: 14336,
            n_ctx_train: 8192,
            rope_freq_base: 500000.0,
            rms_norm_eps: 1e-5,
        }
    }

    /// The shape of Llama 3 70B (70.6 B parameters).
    pub const fn llama3_70b() -> ModelShape {
        ModelShape {
            n_vocab: 128256,
            n_embd: 8192,
            n_layer: 80,
            n_head: 64,
            n_head_kv: 8,
            n_ff: 28672,
            n_ctx_train: 8192,
            rope_freq_base: 500000.0,
            rms_norm_eps: 1e-5,
        }
    }

    /// Size of one attention head (`n_embd / n_head`).
    pub fn head_dim(&self) -> u32 {
        self.n_embd.checked_div(self.n_head).unwrap_or(0)
    }

    /// Width of the key and value projections (`head_dim * n_head_kv`).
    pub fn n_embd_kv(&self) -> u32 {
        self.head_dim() * self.n_head_kv
    }

    /// Number of weights, as `llama_model_n_params` counts them.
    pub fn n_params(&self) -> u64 {
        let (v, e, f, kv) = (self.n_vocab as u64, self.n_embd as u64, self.n_ff as u64, self.n_embd_kv() as u64);
        let per_layer = 2 * e // attn_norm, ffn_norm
            + 2 * e * e // attn_q, attn_output
            + 2 * e * kv // attn_k, attn_v
            + 3 * e * f; // ffn_gate, ffn_up, ffn_down
        2 * v * e + e + self.n_layer as u64 * per_layer
    }

    /// Name of the preset this shape equals, or "custom".
    fn label(&self) -> &'static str {
        [
            (ModelShape::tiny(), "tiny"),
            (ModelShape::tiny_k(), "tinyk"),
            (ModelShape::small(), "small"),
            (ModelShape::llama3_8b(), "8b"),
            (ModelShape::llama3_70b(), "70b"),
        ]
        .iter()
        .find(|(s, _)| s == self)
        .map_or("custom", |(_, l)| l)
    }

    /// Checks what llama.cpp needs of a llama shape; `min_vocab` is the
    /// number of tokens the vocabulary needs before any merged piece.
    fn validate(&self, min_vocab: u32, block: u32) -> Result<()> {
        let positive = [
            ("shape.n_vocab", self.n_vocab),
            ("shape.n_embd", self.n_embd),
            ("shape.n_layer", self.n_layer),
            ("shape.n_head", self.n_head),
            ("shape.n_head_kv", self.n_head_kv),
            ("shape.n_ff", self.n_ff),
            ("shape.n_ctx_train", self.n_ctx_train),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::invalid(name, value, "must be at least 1"));
            }
        }
        if self.n_layer > MAX_LAYERS {
            return Err(Error::invalid(
                "shape.n_layer",
                self.n_layer,
                format!("llama.cpp allows at most {MAX_LAYERS} layers"),
            ));
        }
        if self.n_vocab > i32::MAX as u32 {
            return Err(Error::invalid("shape.n_vocab", self.n_vocab, "token ids are i32"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::invalid(
                "shape.n_embd",
                self.n_embd,
                format!("must be a multiple of n_head = {}", self.n_head),
            ));
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(Error::invalid(
                "shape.n_head",
                self.n_head,
                format!("must be a multiple of n_head_kv = {}", self.n_head_kv),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::invalid(
                "shape.n_embd",
                self.n_embd,
                format!("head size n_embd / n_head = {} must be even for RoPE", self.head_dim()),
            ));
        }
        if !(self.rope_freq_base.is_finite() && self.rope_freq_base > 0.0) {
            return Err(Error::invalid("shape.rope_freq_base", self.rope_freq_base, "must be finite and > 0"));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(Error::invalid("shape.rms_norm_eps", self.rms_norm_eps, "must be finite and > 0"));
        }
        if self.n_vocab < min_vocab {
            return Err(Error::invalid(
                "shape.n_vocab",
                self.n_vocab,
                format!("the vocabulary needs at least {min_vocab} tokens (special tokens, 256 byte tokens, single characters)"),
            ));
        }
        for (name, value) in [("shape.n_embd", self.n_embd), ("shape.n_ff", self.n_ff)] {
            if !value.is_multiple_of(block) {
                return Err(Error::invalid(
                    name,
                    value,
                    format!("rows of the chosen weight type come in blocks of {block}: use a multiple of {block}"),
                ));
            }
        }
        Ok(())
    }
}

/// The tokenizer flavour of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VocabKind {
    /// SentencePiece (`tokenizer.ggml.model` = "llama", like Llama 2):
    /// `<unk>`, `<s>`, `</s>`, the byte-fallback tokens `<0x00>`..`<0xFF>`,
    /// pieces with `▁` for spaces, and `<|im_start|>`/`<|im_end|>` for the
    /// default ChatML template.
    Spm,
    /// Byte-level BPE (`tokenizer.ggml.model` = "gpt2", pre-tokenizer
    /// "llama-bpe", like Llama 3): the 256 byte symbols, merged pieces with a
    /// consistent merge list, and Llama 3's control tokens
    /// (`<|begin_of_text|>`, `<|end_of_text|>`, `<|start_header_id|>`,
    /// `<|end_header_id|>`, `<|eot_id|>`).
    Bpe,
}

impl VocabKind {
    fn label(self) -> &'static str {
        match self {
            VocabKind::Spm => "spm",
            VocabKind::Bpe => "bpe",
        }
    }

    /// Tokens the vocabulary has before any merged piece.
    fn min_tokens(self) -> u32 {
        match self {
            VocabKind::Spm => (SPM_SPECIALS.len() + SPM_CONTROL_TAIL.len() + 256 + spm_singles().len()) as u32,
            VocabKind::Bpe => (BPE_SPECIALS.len() + 256) as u32,
        }
    }

    /// The chat template written by default: one llama.cpp's built-in
    /// detector recognises (ChatML for SPM, Llama 3 for BPE).
    pub fn default_chat_template(self) -> &'static str {
        match self {
            VocabKind::Spm => CHATML_TEMPLATE,
            VocabKind::Bpe => LLAMA3_TEMPLATE,
        }
    }
}

/// ChatML (detected by llama.cpp from `<|im_start|>`).
const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 3 (detected by llama.cpp from `<|start_header_id|>` and `<|end_header_id|>`).
const LLAMA3_TEMPLATE: &str = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

/// How the weight matrices are stored. Norm weights are always F32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit blocks of 32 (`n_embd` and `n_ff` multiples of 32).
    Q8_0,
    /// 4-bit k-quant, blocks of 256 (`n_embd` and `n_ff` multiples of 256).
    Q4_K,
    /// 6-bit k-quant, blocks of 256.
    Q6_K,
    /// A Q4_K_M-like mixture: Q4_K, with `output.weight`, `attn_v` and
    /// `ffn_down` in Q6_K (blocks of 256).
    Q4_K_M,
}

impl WeightType {
    fn label(self) -> &'static str {
        match self {
            WeightType::F32 => "f32",
            WeightType::F16 => "f16",
            WeightType::Q8_0 => "q8_0",
            WeightType::Q4_K => "q4_k",
            WeightType::Q6_K => "q6_k",
            WeightType::Q4_K_M => "q4_k_m",
        }
    }

    /// Row length multiple the matrices need.
    fn block_size(self) -> u32 {
        match self {
            WeightType::F32 | WeightType::F16 => 1,
            WeightType::Q8_0 => 32,
            WeightType::Q4_K | WeightType::Q6_K | WeightType::Q4_K_M => 256,
        }
    }

    /// `general.file_type` (`llama_ftype`).
    fn ftype(self) -> sys::llama_ftype {
        match self {
            WeightType::F32 => sys::LLAMA_FTYPE_ALL_F32,
            WeightType::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            WeightType::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            WeightType::Q4_K => sys::LLAMA_FTYPE_MOSTLY_Q4_K_S,
            WeightType::Q6_K => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
            WeightType::Q4_K_M => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
        }
    }

    /// ggml type of a matrix of the given role.
    fn ggml_type(self, role: Role) -> sys::ggml_type {
        if role == Role::Norm {
            return sys::GGML_TYPE_F32;
        }
        match self {
            WeightType::F32 => sys::GGML_TYPE_F32,
            WeightType::F16 => sys::GGML_TYPE_F16,
            WeightType::Q8_0 => sys::GGML_TYPE_Q8_0,
            WeightType::Q4_K => sys::GGML_TYPE_Q4_K,
            WeightType::Q6_K => sys::GGML_TYPE_Q6_K,
            WeightType::Q4_K_M => match role {
                Role::Output | Role::AttnV | Role::FfnDown => sys::GGML_TYPE_Q6_K,
                _ => sys::GGML_TYPE_Q4_K,
            },
        }
    }
}

/// What a tensor is for (decides its type and its values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Norm,
    TokenEmbd,
    Output,
    AttnQ,
    AttnK,
    AttnV,
    AttnOut,
    FfnGate,
    FfnUp,
    FfnDown,
    Classifier,
}

/// One tensor to write: name, ggml shape (`ne0` = row length) and type.
#[derive(Debug, Clone)]
struct TensorPlan {
    name: String,
    ne0: u32,
    ne1: u32,
    two_d: bool,
    ty: sys::ggml_type,
    role: Role,
}

/// The model architecture a [`SyntheticModel`] is written as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Architecture {
    /// `llama` (the default).
    #[default]
    Llama,
    /// `qwen3`: llama's tensors plus RMS norms of the queries and keys per
    /// head (`blk.N.attn_q_norm`, `blk.N.attn_k_norm`); the architecture
    /// whose loader takes a classifier head ([`SyntheticModel::classifier`]).
    Qwen3,
}

impl Architecture {
    /// `general.architecture`: `llama` or `qwen3`.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// Builder and writer of a synthetic GGUF model.
///
/// Defaults: llama architecture, SPM vocabulary, F32 weights, seed 42, the
/// vocabulary's default chat template, no classifier head.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticModel {
    shape: ModelShape,
    vocab: VocabKind,
    weight_type: WeightType,
    seed: u64,
    chat_template: Option<String>,
    default_template: bool,
    arch: Architecture,
    classifier: Vec<String>,
    rerank_template: Option<String>,
}

impl SyntheticModel {
    /// A model of the given shape with the defaults.
    pub fn new(shape: ModelShape) -> SyntheticModel {
        SyntheticModel {
            shape,
            vocab: VocabKind::Spm,
            weight_type: WeightType::F32,
            seed: 42,
            chat_template: None,
            default_template: true,
            arch: Architecture::Llama,
            classifier: Vec::new(),
            rerank_template: None,
        }
    }

    /// Chooses the architecture (default [`Architecture::Llama`]).
    pub fn architecture(mut self, arch: Architecture) -> SyntheticModel {
        self.arch = arch;
        self
    }

    /// Adds a reranker's classifier head, one output per label: the tensor
    /// `cls.output.weight` (`n_embd` x `labels.len()`, random like the other
    /// weights), `<arch>.classifier.output_labels` and `<arch>.pooling_type` =
    /// rank, as llama.cpp's converter writes Qwen3 rerankers (labels `yes`,
    /// `no`; llama.cpp applies a softmax over the outputs for this
    /// architecture). Needs [`Architecture::Qwen3`]: llama.cpp's llama loader
    /// takes no classifier (and refuses a file with tensors it does not load).
    pub fn classifier(mut self, labels: &[&str]) -> SyntheticModel {
        self.classifier = labels.iter().map(|l| l.to_string()).collect();
        self
    }

    /// Writes `tokenizer.chat_template.rerank`, the template llama.cpp's
    /// server (and [`Embedder::rerank`](crate::Embedder::rerank)) fills with
    /// `{query}` and `{document}`.
    pub fn rerank_template(mut self, template: &str) -> SyntheticModel {
        self.rerank_template = Some(template.to_string());
        self
    }

    /// The values the writer generates for tensor `name` (before conversion
    /// to the weight type: with [`WeightType::F32`] exactly the file's), in
    /// ggml order (`ne0` values per row); `None` for a name the model does not
    /// have. For tests that compute a model's output independently.
    pub fn tensor_values(&self, name: &str) -> Option<Vec<f32>> {
        let plan = self.plan();
        let index = plan.iter().position(|t| t.name == name)?;
        let t = &plan[index];
        let rows = if t.two_d { t.ne1 as usize } else { 1 };
        Some(generate_rows(t, tensor_seed(self.seed, index as u64), 0, rows))
    }

    /// The shape (`ne0`, `ne1`) of tensor `name`, `None` for a name the
    /// model does not have.
    pub fn tensor_shape(&self, name: &str) -> Option<(u32, u32)> {
        self.plan().into_iter().find(|t| t.name == name).map(|t| (t.ne0, if t.two_d { t.ne1 } else { 1 }))
    }

    /// Chooses the tokenizer flavour.
    pub fn vocab(mut self, vocab: VocabKind) -> SyntheticModel {
        self.vocab = vocab;
        self
    }

    /// Chooses how the matrices are stored.
    pub fn weight_type(mut self, weight_type: WeightType) -> SyntheticModel {
        self.weight_type = weight_type;
        self
    }

    /// Seeds the weight generator; the same seed gives the same weights.
    pub fn seed(mut self, seed: u64) -> SyntheticModel {
        self.seed = seed;
        self
    }

    /// Sets `tokenizer.chat_template`: `Some(t)` writes `t`, `None` writes no
    /// template at all. Without this call the vocabulary's
    /// [default](VocabKind::default_chat_template) is written.
    pub fn chat_template(mut self, template: Option<String>) -> SyntheticModel {
        self.chat_template = template;
        self.default_template = false;
        self
    }

    /// The shape being written.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The chat template that will be written, if any.
    pub fn effective_chat_template(&self) -> Option<&str> {
        if self.default_template {
            Some(self.vocab.default_chat_template())
        } else {
            self.chat_template.as_deref()
        }
    }

    /// Checks the shape against the vocabulary and weight type.
    pub fn validate(&self) -> Result<()> {
        self.shape.validate(self.vocab.min_tokens() + 1, self.weight_type.block_size())?;
        if let Some(t) = self.effective_chat_template() {
            cstring("chat template", t)?;
        }
        if let Some(t) = &self.rerank_template {
            cstring("rerank template", t)?;
        }
        if !self.classifier.is_empty() && self.arch != Architecture::Qwen3 {
            return Err(Error::invalid(
                "classifier",
                format!("{:?}", self.classifier),
                format!("llama.cpp loads no classifier head for {}: use Architecture::Qwen3", self.arch.name()),
            ));
        }
        for label in &self.classifier {
            cstring("classifier label", label)?;
        }
        Ok(())
    }

    /// The file name [`write_cached`](Self::write_cached) uses:
    /// `llama-<shape>-<vocab>-<type>-s<seed>-<hash>.gguf`, the hash covering
    /// every parameter and the generator version.
    pub fn file_name(&self) -> String {
        let mut key = format!(
            "v{GENERATOR_VERSION}|{:?}|{:?}|{:?}|{}|{:?}",
            self.shape,
            self.vocab,
            self.weight_type,
            self.seed,
            self.effective_chat_template()
        );
        // Only what differs from a plain llama model, so that the names of
        // those stay what they were.
        if self.arch != Architecture::Llama || !self.classifier.is_empty() || self.rerank_template.is_some() {
            key += &format!("|{:?}|{:?}|{:?}", self.arch, self.classifier, self.rerank_template);
        }
        format!(
            "{}-{}-{}-{}-s{}-{:016x}.gguf",
            self.arch.name(),
            self.shape.label(),
            self.vocab.label(),
            self.weight_type.label(),
            self.seed,
            fnv1a64(key.as_bytes())
        )
    }

    /// Writes the model to `path`, atomically: the data goes to a temporary
    /// file in the same folder, which is then renamed over `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::backend::init();
        self.validate()?;
        let path = path.as_ref();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(temp_name(&self.file_name()));
        let result = self.write_to(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Writes the model into `dir` (created if needed) under
    /// [`file_name`](Self::file_name) unless that file exists already, and
    /// returns its path. Concurrent callers, in one process or several, each
    /// write their own temporary file and rename it into place; since the
    /// contents are identical, whichever rename lands last is fine, and no
    /// reader ever sees a partial file.
    pub fn write_cached(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(self.file_name());
        if path.is_file() {
            return Ok(path);
        }
        self.write(&path)?;
        Ok(path)
    }

    /// The tensors in file order.
    fn plan(&self) -> Vec<TensorPlan> {
        let s = &self.shape;
        let wt = self.weight_type;
        let mut plan = Vec::with_capacity(3 + 9 * s.n_layer as usize);
        let mut push = |name: String, ne0: u32, ne1: u32, role: Role| {
            plan.push(TensorPlan { name, ne0, ne1, two_d: role != Role::Norm, ty: wt.ggml_type(role), role });
        };
        push("token_embd.weight".into(), s.n_embd, s.n_vocab, Role::TokenEmbd);
        for i in 0..s.n_layer {
            push(format!("blk.{i}.attn_norm.weight"), s.n_embd, 1, Role::Norm);
            push(format!("blk.{i}.attn_q.weight"), s.n_embd, s.n_embd, Role::AttnQ);
            push(format!("blk.{i}.attn_k.weight"), s.n_embd, s.n_embd_kv(), Role::AttnK);
            push(format!("blk.{i}.attn_v.weight"), s.n_embd, s.n_embd_kv(), Role::AttnV);
            if self.arch == Architecture::Qwen3 {
                push(format!("blk.{i}.attn_q_norm.weight"), s.head_dim(), 1, Role::Norm);
                push(format!("blk.{i}.attn_k_norm.weight"), s.head_dim(), 1, Role::Norm);
            }
            push(format!("blk.{i}.attn_output.weight"), s.n_embd, s.n_embd, Role::AttnOut);
            push(format!("blk.{i}.ffn_norm.weight"), s.n_embd, 1, Role::Norm);
            push(format!("blk.{i}.ffn_gate.weight"), s.n_embd, s.n_ff, Role::FfnGate);
            push(format!("blk.{i}.ffn_up.weight"), s.n_embd, s.n_ff, Role::FfnUp);
            push(format!("blk.{i}.ffn_down.weight"), s.n_ff, s.n_embd, Role::FfnDown);
        }
        push("output_norm.weight".into(), s.n_embd, 1, Role::Norm);
        push("output.weight".into(), s.n_embd, s.n_vocab, Role::Output);
        if !self.classifier.is_empty() {
            push("cls.output.weight".into(), s.n_embd, self.classifier.len() as u32, Role::Classifier);
        }
        plan
    }

    /// Builds the GGUF metadata (keys and tensor descriptors) with gguf.h.
    fn metadata(&self, plan: &[TensorPlan]) -> Result<GgufWriter> {
        let s = &self.shape;
        let a = self.arch.name();
        let mut g = GgufWriter::new()?;
        g.set_str("general.architecture", a)?;
        g.set_str(
            "general.name",
            &format!(
                "synthetic {a} {} {} {} seed {}",
                s.label(),
                self.vocab.label(),
                self.weight_type.label(),
                self.seed
            ),
        )?;
        g.set_u32("general.file_type", self.weight_type.ftype())?;
        g.set_u32("general.quantization_version", sys::GGML_QNT_VERSION)?;
        g.set_u32(&format!("{a}.context_length"), s.n_ctx_train)?;
        g.set_u32(&format!("{a}.embedding_length"), s.n_embd)?;
        g.set_u32(&format!("{a}.block_count"), s.n_layer)?;
        g.set_u32(&format!("{a}.feed_forward_length"), s.n_ff)?;
        g.set_u32(&format!("{a}.attention.head_count"), s.n_head)?;
        g.set_u32(&format!("{a}.attention.head_count_kv"), s.n_head_kv)?;
        g.set_f32(&format!("{a}.rope.freq_base"), s.rope_freq_base)?;
        g.set_f32(&format!("{a}.attention.layer_norm_rms_epsilon"), s.rms_norm_eps)?;
        g.set_u32(&format!("{a}.rope.dimension_count"), s.head_dim())?;
        g.set_u32(&format!("{a}.vocab_size"), s.n_vocab)?;
        if !self.classifier.is_empty() {
            g.set_u32(&format!("{a}.pooling_type"), sys::LLAMA_POOLING_TYPE_RANK as u32)?;
            g.set_arr_str(&format!("{a}.classifier.output_labels"), &self.classifier)?;
        }

        let vocab = match self.vocab {
            VocabKind::Spm => build_spm(s.n_vocab as usize),
            VocabKind::Bpe => build_bpe(s.n_vocab as usize),
        };
        debug_assert_eq!(vocab.tokens.len(), s.n_vocab as usize);
        match self.vocab {
            VocabKind::Spm => g.set_str("tokenizer.ggml.model", "llama")?,
            VocabKind::Bpe => {
                g.set_str("tokenizer.ggml.model", "gpt2")?;
                g.set_str("tokenizer.ggml.pre", "llama-bpe")?;
            }
        }
        g.set_arr_str("tokenizer.ggml.tokens", &vocab.tokens)?;
        if let Some(scores) = &vocab.scores {
            g.set_arr_f32("tokenizer.ggml.scores", scores)?;
        }
        g.set_arr_i32("tokenizer.ggml.token_type", &vocab.types)?;
        if !vocab.merges.is_empty() {
            g.set_arr_str("tokenizer.ggml.merges", &vocab.merges)?;
        }
        g.set_u32("tokenizer.ggml.bos_token_id", vocab.bos)?;
        g.set_u32("tokenizer.ggml.eos_token_id", vocab.eos)?;
        if let Some(unk) = vocab.unk {
            g.set_u32("tokenizer.ggml.unknown_token_id", unk)?;
        }
        if let Some(eot) = vocab.eot {
            g.set_u32("tokenizer.ggml.eot_token_id", eot)?;
        }
        g.set_bool("tokenizer.ggml.add_bos_token", true)?;
        g.set_bool("tokenizer.ggml.add_eos_token", false)?;
        if let Some(t) = self.effective_chat_template() {
            g.set_str("tokenizer.chat_template", t)?;
        }
        if let Some(t) = &self.rerank_template {
            g.set_str("tokenizer.chat_template.rerank", t)?;
        }

        g.add_tensors(plan)?;
        Ok(g)
    }

    /// Writes the whole file to `path` (not atomically).
    fn write_to(&self, path: &Path) -> Result<()> {
        let plan = self.plan();
        let g = self.metadata(&plan)?;
        let meta = g.meta_bytes();
        let alignment = g.alignment();

        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        let io = |e| Error::io(path, e);
        out.write_all(&meta).map_err(io)?;

        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
        let mut offset = 0usize; // relative to the start of the data section
        let mut buf = Vec::new();
        for (index, t) in plan.iter().enumerate() {
            let expected = g.tensor_offset(index);
            if expected != offset {
                return Err(Error::invalid(
                    "tensor offset",
                    expected,
                    format!("gguf placed {} at {expected}, the writer is at {offset}", t.name),
                ));
            }
            let written = write_tensor(&mut out, t, self.seed, index as u64, threads, &mut buf).map_err(io)?;
            let padded = written.next_multiple_of(alignment);
            out.write_all(&vec![0u8; padded - written]).map_err(io)?;
            offset += padded;
        }
        let file = out.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(())
    }
}

/// Generates, encodes and writes one tensor chunk by chunk; returns its size.
fn write_tensor(
    out: &mut impl Write,
    t: &TensorPlan,
    seed: u64,
    index: u64,
    threads: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let ne0 = t.ne0 as usize;
    let nrows = if t.two_d { t.ne1 as usize } else { 1 };
    // SAFETY: pure function of its arguments; the type is one of ours.
    let row_size = unsafe { sys::ggml_row_size(t.ty, ne0 as i64) };
    let rows_per_chunk = (CHUNK_VALUES / ne0).clamp(1, nrows);
    let tensor_seed = tensor_seed(seed, index);
    let mut total = 0;
    let mut first = 0;
    while first < nrows {
        let rows = rows_per_chunk.min(nrows - first);
        buf.clear();
        buf.resize(rows * row_size, 0);
        let workers = if rows * ne0 < PARALLEL_MIN_VALUES { 1 } else { threads.min(rows) };
        let rows_per_worker = rows.div_ceil(workers);
        std::thread::scope(|scope| {
            for (w, dst) in buf.chunks_mut(rows_per_worker * row_size).enumerate() {
                let start = first + w * rows_per_worker;
                if workers == 1 {
                    encode_rows(t, tensor_seed, start, dst, row_size);
                } else {
                    scope.spawn(move || encode_rows(t, tensor_seed, start, dst, row_size));
                }
            }
        });
        out.write_all(buf)?;
        total += buf.len();
        first += rows;
    }
    Ok(total)
}

/// The generator's seed of the `index`-th tensor of a model seeded `seed`.
fn tensor_seed(seed: u64, index: u64) -> u64 {
    mix64(seed ^ mix64(index.wrapping_add(0x5EED)))
}

/// Rows `first_row..first_row + rows` of tensor `t`, in f32: ones for norms,
/// uniform noise for the rest.
fn generate_rows(t: &TensorPlan, tensor_seed: u64, first_row: usize, rows: usize) -> Vec<f32> {
    let ne0 = t.ne0 as usize;
    let mut src = vec![0f32; rows * ne0];
    for (r, row) in src.chunks_mut(ne0).enumerate() {
        if t.role == Role::Norm {
            row.fill(1.0);
        } else {
            fill_random(row, mix64(tensor_seed ^ ((first_row + r) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
    }
    src
}

/// Fills `dst` (whole rows of `row_size` bytes) with rows `first_row..` of
/// tensor `t`, generated in f32 and converted with ggml_quantize_chunk.
fn encode_rows(t: &TensorPlan, tensor_seed: u64, first_row: usize, dst: &mut [u8], row_size: usize) {
    let ne0 = t.ne0 as usize;
    let rows = dst.len() / row_size;
    let src = generate_rows(t, tensor_seed, first_row, rows);
    // SAFETY: `src` holds rows * ne0 f32 and `dst` rows * row_size bytes, with
    // row_size = ggml_row_size(ty, ne0); ne0 is a multiple of the type's block
    // size (checked by ModelShape::validate); start 0; these types need no
    // importance matrix, and ggml_quantize_chunk keeps no pointer.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            t.ty,
            src.as_ptr(),
            dst.as_mut_ptr().cast(),
            0,
            rows as i64,
            ne0 as i64,
            std::ptr::null(),
        )
    };
    debug_assert_eq!(written, dst.len());
}

/// Uniform values in ±WEIGHT_RANGE from a splitmix64 stream.
fn fill_random(row: &mut [f32], mut state: u64) {
    const SCALE: f32 = 2.0 * WEIGHT_RANGE / (1u32 << 24) as f32;
    let mut pairs = row.chunks_exact_mut(2);
    for pair in &mut pairs {
        let x = splitmix64(&mut state);
        pair[0] = (x >> 40) as f32 * SCALE - WEIGHT_RANGE;
        pair[1] = ((x >> 8) & 0xFF_FFFF) as f32 * SCALE - WEIGHT_RANGE;
    }
    for v in pairs.into_remainder() {
        *v = (splitmix64(&mut state) >> 40) as f32 * SCALE - WEIGHT_RANGE;
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A temporary file name unique within this host (pid, time, counter).
fn temp_name(base: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!(".{base}.{}.{nanos}.{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------
// gguf.h writer handles
// ---------------------------------------------------------------------------

/// A gguf_context being filled, plus the ggml context holding the tensor
/// descriptors (no data: `no_alloc`).
struct GgufWriter {
    ctx: NonNull<sys::gguf_context>,
    ggml: Option<NonNull<sys::ggml_context>>,
}

impl GgufWriter {
    fn new() -> Result<GgufWriter> {
        // SAFETY: no arguments; returns an owned context or null.
        let ctx = unsafe { sys::gguf_init_empty() };
        let ctx = NonNull::new(ctx).ok_or_else(|| Error::invalid("gguf", "gguf_init_empty", "returned NULL"))?;
        Ok(GgufWriter { ctx, ggml: None })
    }

    fn set_u32(&mut self, key: &str, v: u32) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: valid context and NUL-terminated key; gguf copies the key.
        unsafe { sys::gguf_set_val_u32(self.ctx.as_ptr(), k.as_ptr(), v) };
        Ok(())
    }

    fn set_f32(&mut self, key: &str, v: f32) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: as in set_u32.
        unsafe { sys::gguf_set_val_f32(self.ctx.as_ptr(), k.as_ptr(), v) };
        Ok(())
    }

    fn set_bool(&mut self, key: &str, v: bool) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: as in set_u32.
        unsafe { sys::gguf_set_val_bool(self.ctx.as_ptr(), k.as_ptr(), v) };
        Ok(())
    }

    fn set_str(&mut self, key: &str, v: &str) -> Result<()> {
        let k = cstring("gguf key", key)?;
        let v = cstring("gguf string value", v)?;
        // SAFETY: valid context, both strings NUL-terminated; gguf copies them.
        unsafe { sys::gguf_set_val_str(self.ctx.as_ptr(), k.as_ptr(), v.as_ptr()) };
        Ok(())
    }

    fn set_arr_str(&mut self, key: &str, values: &[String]) -> Result<()> {
        let k = cstring("gguf key", key)?;
        let owned = values.iter().map(|v| cstring("gguf array string", v)).collect::<Result<Vec<CString>>>()?;
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        // SAFETY: `ptrs` holds `len` pointers to NUL-terminated strings kept
        // alive by `owned` for the call; gguf copies them into std::strings.
        unsafe { sys::gguf_set_arr_str(self.ctx.as_ptr(), k.as_ptr(), ptrs.as_mut_ptr(), ptrs.len()) };
        Ok(())
    }

    fn set_arr_f32(&mut self, key: &str, values: &[f32]) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: `values` holds len f32, the size of GGUF_TYPE_FLOAT32; gguf copies them.
        unsafe {
            sys::gguf_set_arr_data(
                self.ctx.as_ptr(),
                k.as_ptr(),
                sys::GGUF_TYPE_FLOAT32,
                values.as_ptr().cast(),
                values.len(),
            )
        };
        Ok(())
    }

    fn set_arr_i32(&mut self, key: &str, values: &[i32]) -> Result<()> {
        let k = cstring("gguf key", key)?;
        // SAFETY: `values` holds len i32, the size of GGUF_TYPE_INT32; gguf copies them.
        unsafe {
            sys::gguf_set_arr_data(
                self.ctx.as_ptr(),
                k.as_ptr(),
                sys::GGUF_TYPE_INT32,
                values.as_ptr().cast(),
                values.len(),
            )
        };
        Ok(())
    }

    /// Creates the tensor descriptors in a no_alloc ggml context and adds
    /// them to the gguf context, in plan order.
    fn add_tensors(&mut self, plan: &[TensorPlan]) -> Result<()> {
        // SAFETY: pure function.
        let overhead = unsafe { sys::ggml_tensor_overhead() };
        let params = sys::ggml_init_params {
            mem_size: overhead * (plan.len() + 1),
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        // SAFETY: ggml allocates its own pool of mem_size bytes (room for
        // every descriptor); no tensor data is allocated.
        let ggml = unsafe { sys::ggml_init(params) };
        let ggml = NonNull::new(ggml).ok_or_else(|| Error::invalid("ggml", "ggml_init", "returned NULL"))?;
        self.ggml = Some(ggml);
        for t in plan {
            let name = cstring("tensor name", &t.name)?;
            // SAFETY: the pool has room for plan.len() descriptors (sized
            // above), dimensions are positive (shape validated), and names are
            // unique and shorter than GGML_MAX_NAME; gguf_add_tensor copies
            // the descriptor.
            unsafe {
                let tensor = if t.two_d {
                    sys::ggml_new_tensor_2d(ggml.as_ptr(), t.ty, t.ne0 as i64, t.ne1 as i64)
                } else {
                    sys::ggml_new_tensor_1d(ggml.as_ptr(), t.ty, t.ne0 as i64)
                };
                sys::ggml_set_name(tensor, name.as_ptr());
                sys::gguf_add_tensor(self.ctx.as_ptr(), tensor);
            }
        }
        Ok(())
    }

    /// Header, key/values and tensor infos, padded to the alignment.
    fn meta_bytes(&self) -> Vec<u8> {
        // SAFETY: valid context.
        let n = unsafe { sys::gguf_get_meta_size(self.ctx.as_ptr()) };
        let mut meta = vec![0u8; n];
        // SAFETY: gguf_get_meta_data writes exactly gguf_get_meta_size bytes.
        unsafe { sys::gguf_get_meta_data(self.ctx.as_ptr(), meta.as_mut_ptr().cast()) };
        meta
    }

    fn alignment(&self) -> usize {
        // SAFETY: valid context.
        unsafe { sys::gguf_get_alignment(self.ctx.as_ptr()) }
    }

    fn tensor_offset(&self, index: usize) -> usize {
        // SAFETY: index < number of tensors added (callers iterate the plan).
        unsafe { sys::gguf_get_tensor_offset(self.ctx.as_ptr(), index as i64) }
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        // SAFETY: both contexts are owned here and freed once.
        unsafe {
            sys::gguf_free(self.ctx.as_ptr());
            if let Some(g) = self.ggml {
                sys::ggml_free(g.as_ptr());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Vocabularies
// ---------------------------------------------------------------------------

/// A generated vocabulary, ready for the tokenizer.ggml.* keys.
struct Vocab {
    tokens: Vec<String>,
    scores: Option<Vec<f32>>,
    types: Vec<i32>,
    merges: Vec<String>,
    bos: u32,
    eos: u32,
    unk: Option<u32>,
    eot: Option<u32>,
}

const SPM_SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];
const SPM_CONTROL_TAIL: [&str; 2] = ["<|im_start|>", "<|im_end|>"];
const BPE_SPECIALS: [&str; 5] =
    ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];

/// Common English words and subwords, most frequent first.
const WORDS: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "it", "that", "for", "you", "was", "with", "on", "as", "have", "be",
    "at", "not", "this", "are", "but", "they", "his", "from", "had", "she", "which", "or", "we", "an", "there", "her",
    "were", "one", "do", "been", "all", "their", "has", "would", "will", "what", "if", "can", "when", "so", "no",
    "said", "who", "more", "about", "up", "out", "them", "some", "could", "him", "into", "its", "then", "two", "time",
    "like", "other", "only", "my", "your", "than", "first", "new", "very", "people", "just", "over", "any", "now",
    "also", "after", "know", "because", "most", "world", "hello", "Hello", "The", "This", "It", "In", "I", "We",
    "model", "token", "text", "language", "data", "write", "read", "good", "make", "work", "way", "year", "day", "man",
    "woman", "thing", "life", "child", "hand", "part", "place", "case", "week", "point", "number", "group", "problem",
    "fact", "ing", "ed", "er", "es", "ly", "tion", "ment", "ness", "able", "al", "re", "un", "th", "he", "an", "in",
    "on", "at", "en", "nd", "st", "or", "ou", "ll", "ve", "se", "le", "ar", "ro", "is", "it", "ch", "sh", "ol", "el",
    "lo",
];

/// Consonant-vowel syllables for pseudo-words (all 2 bytes, so distinct
/// syllable sequences give distinct words).
fn syllable(i: usize) -> [u8; 2] {
    const C: &[u8] = b"bcdfghjklmnprstvwxyz";
    const V: &[u8] = b"aeiou";
    [C[i / V.len() % C.len()], V[i % V.len()]]
}

/// The i-th pseudo-word (bijective base-100 numeration over syllables).
fn pseudo_word(i: usize) -> String {
    let mut n = i + 1;
    let mut out = Vec::new();
    while n > 0 {
        n -= 1;
        out.extend_from_slice(&syllable(n % 100));
        n /= 100;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Single-character SPM pieces (letters, digits, punctuation, `▁`).
fn spm_singles() -> Vec<String> {
    let mut v = vec!["▁".to_string()];
    v.extend((b'a'..=b'z').chain(b'A'..=b'Z').chain(b'0'..=b'9').map(|c| (c as char).to_string()));
    v.extend(".,!?'\"-:;()".chars().map(|c| c.to_string()));
    v
}

/// Unique-string token list with a budget.
struct Builder {
    tokens: Vec<String>,
    seen: HashSet<String>,
    budget: usize,
}

impl Builder {
    fn new(budget: usize) -> Builder {
        Builder { tokens: Vec::new(), seen: HashSet::new(), budget }
    }

    fn full(&self) -> bool {
        self.tokens.len() >= self.budget
    }

    fn contains(&self, s: &str) -> bool {
        self.seen.contains(s)
    }

    /// Adds `s` unless present or full; true if added.
    fn add(&mut self, s: String) -> bool {
        if self.full() || self.seen.contains(&s) {
            return false;
        }
        self.seen.insert(s.clone());
        self.tokens.push(s);
        true
    }
}

fn build_spm(n_vocab: usize) -> Vocab {
    let n_fixed = SPM_SPECIALS.len() + 256 + SPM_CONTROL_TAIL.len();
    let mut pieces = Builder::new(n_vocab - n_fixed);
    // The byte tokens and specials are in the final list; reserve their
    // strings so that no piece collides with them.
    let reserved: HashSet<String> = SPM_SPECIALS
        .iter()
        .chain(SPM_CONTROL_TAIL.iter())
        .map(|s| s.to_string())
        .chain((0..=255u8).map(|b| format!("<0x{b:02X}>")))
        .collect();
    pieces.seen.extend(reserved);
    for s in spm_singles() {
        pieces.add(s);
    }
    // Every prefix of a piece is a piece too, so SentencePiece's bigram
    // merging can reach it.
    let add_word = |pieces: &mut Builder, word: &str| {
        let chars: Vec<char> = word.chars().collect();
        for end in 2..=chars.len() {
            pieces.add(chars[..end].iter().collect());
        }
    };
    for w in WORDS {
        add_word(&mut pieces, &format!("▁{w}"));
    }
    for w in WORDS {
        add_word(&mut pieces, w);
    }
    let mut i = 0;
    while !pieces.full() {
        let w = pseudo_word(i);
        add_word(&mut pieces, &format!("▁{w}"));
        add_word(&mut pieces, &w);
        i += 1;
    }

    let mut tokens: Vec<String> = SPM_SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TOKEN_TYPE_BYTE);
        scores.push(0.0);
    }
    for (rank, p) in pieces.tokens.into_iter().enumerate() {
        tokens.push(p);
        types.push(TOKEN_TYPE_NORMAL);
        scores.push(-(rank as f32));
    }
    for s in SPM_CONTROL_TAIL {
        tokens.push(s.to_string());
        types.push(TOKEN_TYPE_CONTROL);
        scores.push(0.0);
    }
    Vocab { tokens, scores: Some(scores), types, merges: Vec::new(), bos: 1, eos: 2, unk: Some(0), eot: None }
}

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the
/// others to U+0100 onwards.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(cp).unwrap_or('?');
    }
    table
}

fn build_bpe(n_vocab: usize) -> Vocab {
    let table = byte_to_unicode();
    let encode = |s: &str| -> String { s.bytes().map(|b| table[b as usize]).collect() };
    let mut b = Builder::new(n_vocab - BPE_SPECIALS.len());
    b.seen.extend(BPE_SPECIALS.iter().map(|s| s.to_string()));
    for c in table {
        b.add(c.to_string());
    }
    let mut merges = Vec::new();
    // Left-to-right merges: every prefix of a word is a token made by merging
    // the previous prefix with one symbol, so every merge "a b" has a, b and
    // ab in the vocabulary.
    let add_word = |b: &mut Builder, merges: &mut Vec<String>, word: &str| {
        let symbols: Vec<char> = word.chars().collect();
        let mut prefix = symbols[0].to_string();
        for &c in &symbols[1..] {
            let next = format!("{prefix}{c}");
            if !b.contains(&next) {
                if !b.add(next.clone()) {
                    return;
                }
                merges.push(format!("{prefix} {c}"));
            }
            prefix = next;
        }
    };
    for w in WORDS {
        add_word(&mut b, &mut merges, &encode(&format!(" {w}")));
    }
    for w in WORDS {
        add_word(&mut b, &mut merges, &encode(w));
    }
    let mut i = 0;
    while !b.full() {
        let w = pseudo_word(i);
        add_word(&mut b, &mut merges, &encode(&format!(" {w}")));
        add_word(&mut b, &mut merges, &encode(&w));
        i += 1;
    }
    let mut tokens = b.tokens;
    let mut types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    let first_special = tokens.len() as u32;
    for s in BPE_SPECIALS {
        tokens.push(s.to_string());
        types.push(TOKEN_TYPE_CONTROL);
    }
    Vocab {
        tokens,
        scores: None,
        types,
        merges,
        bos: first_special,
        eos: first_special + 1,
        unk: None,
        eot: Some(first_special + 4),
    }
}

impl std::str::FromStr for WeightType {
    type Err = Error;

    /// `f32`, `f16`, `q8_0`, `q4_k`, `q6_k` or `q4_k_m`.
    fn from_str(s: &str) -> Result<WeightType> {
        [WeightType::F32, WeightType::F16, WeightType::Q8_0, WeightType::Q4_K, WeightType::Q6_K, WeightType::Q4_K_M]
            .into_iter()
            .find(|t| t.label() == s)
            .ok_or_else(|| Error::invalid("weight type", s, "expected f32, f16, q8_0, q4_k, q6_k or q4_k_m"))
    }
}

impl ModelShape {
    /// A preset by name: `tiny`, `tiny-k`, `small`, `8b` or `70b`.
    pub fn by_name(name: &str) -> Result<ModelShape> {
        match name {
            "tiny" => Ok(ModelShape::tiny()),
            "tiny-k" => Ok(ModelShape::tiny_k()),
            "small" => Ok(ModelShape::small()),
            "8b" => Ok(ModelShape::llama3_8b()),
            "70b" => Ok(ModelShape::llama3_70b()),
            _ => Err(Error::invalid("model shape", name, "expected tiny, tiny-k, small, 8b or 70b")),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// llama.cpp model loads in one test process, one at a time.
    pub(crate) static LLAMA: Mutex<()> = Mutex::new(());

    /// A model loaded with the raw API, freed on drop.
    pub(crate) struct RawModel(NonNull<sys::llama_model>);

    impl RawModel {
        pub(crate) fn load(path: &Path) -> RawModel {
            crate::backend::init();
            let c = CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: plain struct of defaults.
            let mut params = unsafe { sys::llama_model_default_params() };
            params.vocab_only = false;
            params.n_gpu_layers = 0;
            // SAFETY: valid NUL-terminated path and default params (no device
            // list, no overrides); returns an owned model or NULL.
            let model = unsafe { sys::llama_model_load_from_file(c.as_ptr(), params) };
            RawModel(NonNull::new(model).expect("llama.cpp failed to load the synthetic model"))
        }

        pub(crate) fn vocab(&self) -> *const sys::llama_vocab {
            // SAFETY: valid model; the vocab lives as long as the model.
            unsafe { sys::llama_model_get_vocab(self.0.as_ptr()) }
        }

        pub(crate) fn n_vocab(&self) -> i32 {
            // SAFETY: valid vocab pointer of a live model.
            unsafe { sys::llama_vocab_n_tokens(self.vocab()) }
        }

        pub(crate) fn n_params(&self) -> u64 {
            // SAFETY: valid model.
            unsafe { sys::llama_model_n_params(self.0.as_ptr()) }
        }

        pub(crate) fn tokenize(&self, text: &str) -> Vec<i32> {
            let mut tokens = vec![0i32; text.len() + 8];
            // SAFETY: text pointer/length describe valid bytes; the buffer
            // holds tokens.len() ids; a length of at most text.len() + 8
            // always suffices (one token per byte at worst, no specials).
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr().cast(),
                    text.len() as i32,
                    tokens.as_mut_ptr(),
                    tokens.len() as i32,
                    false,
                    false,
                )
            };
            assert!(n >= 0, "tokenize needed {} tokens", -n);
            tokens.truncate(n as usize);
            tokens
        }

        pub(crate) fn detokenize(&self, tokens: &[i32]) -> String {
            let mut buf = vec![0u8; 1024];
            // SAFETY: tokens are ids returned by tokenize (in range); the
            // buffer holds buf.len() bytes.
            let n = unsafe {
                sys::llama_detokenize(
                    self.vocab(),
                    tokens.as_ptr(),
                    tokens.len() as i32,
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                    false,
                    false,
                )
            };
            assert!(n >= 0);
            buf.truncate(n as usize);
            String::from_utf8(buf).unwrap()
        }

        pub(crate) fn piece(&self, token: i32) -> Vec<u8> {
            let mut buf = vec![0u8; 256];
            // SAFETY: token in range (from tokenize); buffer of buf.len() bytes.
            let n = unsafe {
                sys::llama_token_to_piece(self.vocab(), token, buf.as_mut_ptr().cast(), buf.len() as i32, 0, false)
            };
            assert!(n >= 0);
            buf.truncate(n as usize);
            buf
        }

        /// Decodes `tokens` in a fresh context; returns the last row of logits.
        pub(crate) fn decode_logits(&self, tokens: &[i32]) -> Vec<f32> {
            // SAFETY: plain struct of defaults.
            let mut params = unsafe { sys::llama_context_default_params() };
            params.n_ctx = 256;
            params.n_batch = 256;
            params.n_ubatch = 256;
            params.n_threads = 2;
            params.n_threads_batch = 2;
            // SAFETY: valid model, sane params; returns an owned context or NULL.
            let ctx = unsafe { sys::llama_init_from_model(self.0.as_ptr(), params) };
            assert!(!ctx.is_null());
            let mut toks = tokens.to_vec();
            // SAFETY: the batch borrows `toks` (ids in range, fewer than
            // n_batch) for the decode call only.
            let rc = unsafe { sys::llama_decode(ctx, sys::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32)) };
            assert_eq!(rc, 0, "llama_decode failed");
            // SAFETY: llama_batch_get_one outputs logits for the last token;
            // -1 selects it; the row holds n_vocab floats.
            let logits = unsafe {
                let p = sys::llama_get_logits_ith(ctx, -1);
                assert!(!p.is_null());
                std::slice::from_raw_parts(p, self.n_vocab() as usize).to_vec()
            };
            // SAFETY: the context was created above and is freed once, before the model.
            unsafe { sys::llama_free(ctx) };
            logits
        }
    }

    impl Drop for RawModel {
        fn drop(&mut self) {
            // SAFETY: owned model, every context was freed already.
            unsafe { sys::llama_model_free(self.0.as_ptr()) };
        }
    }

    const TEXT: &str = "Hello world, héllo 😀";

    fn check_model(m: &SyntheticModel) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        m.write(&path).unwrap();
        crate::validate::validate_model_file(&path).unwrap();
        let _guard = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
        let model = RawModel::load(&path);
        assert_eq!(model.n_vocab() as u32, m.shape.n_vocab);
        assert_eq!(model.n_params(), m.shape.n_params());
        let tokens = model.tokenize(TEXT);
        assert!(!tokens.is_empty());
        assert!(tokens.len() < TEXT.len(), "no merges applied: {tokens:?}");
        assert_eq!(model.detokenize(&tokens), TEXT);
        let pieces: Vec<u8> = tokens.iter().flat_map(|&t| model.piece(t)).collect();
        match m.vocab {
            // SPM adds a leading space that detokenize strips.
            VocabKind::Spm => assert_eq!(pieces, format!(" {TEXT}").as_bytes()),
            VocabKind::Bpe => assert_eq!(pieces, TEXT.as_bytes()),
        }
        let logits = model.decode_logits(&tokens[..4]);
        assert!(logits.iter().all(|x| x.is_finite()));
        assert!(logits.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn qwen3_with_a_classifier_loads_and_its_values_are_the_files() {
        let m = SyntheticModel::new(ModelShape::tiny()).architecture(Architecture::Qwen3).classifier(&["yes", "no"]);
        assert!(m.file_name().starts_with("qwen3-tiny-spm-f32-s42-"), "{}", m.file_name());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.gguf");
        m.write(&path).unwrap();
        crate::validate::validate_model_file(&path).unwrap();
        let _guard = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
        let model = RawModel::load(&path);
        // SAFETY: live model; plain queries.
        unsafe {
            assert_eq!(sys::llama_model_n_cls_out(model.0.as_ptr()), 2);
        }
        assert!(model.decode_logits(&[1, 5, 6]).iter().all(|x| x.is_finite()));
        // The F32 file holds exactly the generated values.
        let g = crate::gguf::Gguf::open(&path).unwrap();
        let id = (0..g.n_tensors()).find(|&i| g.tensor_extent(i).0 == "cls.output.weight").unwrap();
        let (_, start, size) = g.tensor_extent(id);
        let bytes = std::fs::read(&path).unwrap();
        let from_file: Vec<f32> = bytes[start as usize..(start + size) as usize]
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(m.tensor_values("cls.output.weight").unwrap(), from_file);
        assert_eq!(m.tensor_shape("cls.output.weight"), Some((64, 2)));
        assert_eq!(m.tensor_values("no.such.tensor"), None);
    }

    #[test]
    fn classifier_and_lora_settings_are_checked() {
        let llama = SyntheticModel::new(ModelShape::tiny());
        assert!(matches!(llama.clone().classifier(&["a"]).validate(), Err(Error::InvalidParam { .. })));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.gguf");
        let l = SyntheticLora::new(&llama);
        assert!(l.clone().target("output.weight", 2).target("output.weight", 1).write(&p).is_err());
        assert!(l.clone().target("no.such.weight", 2).write(&p).is_err());
        assert!(l.clone().target("output_norm.weight", 2).write(&p).is_err(), "a vector");
        assert!(l.clone().target("output.weight", 0).write(&p).is_err());
        assert!(l.clone().target_values("output.weight", 1, vec![0.0; 3], vec![0.0; 1024]).write(&p).is_err());
        assert!(l.clone().tensor(&"x".repeat(64), 1, 1, vec![0.0]).write(&p).is_err());
        l.target("output.weight", 2).write(&p).unwrap();
    }

    #[test]
    fn spm_tiny_loads_tokenizes_and_decodes() {
        check_model(&SyntheticModel::new(ModelShape::tiny()).vocab(VocabKind::Spm));
    }

    #[test]
    fn bpe_tiny_loads_tokenizes_and_decodes() {
        check_model(&SyntheticModel::new(ModelShape::tiny()).vocab(VocabKind::Bpe));
    }

    #[test]
    fn q8_0_and_f16_load() {
        check_model(&SyntheticModel::new(ModelShape::tiny()).weight_type(WeightType::Q8_0).vocab(VocabKind::Bpe));
        check_model(&SyntheticModel::new(ModelShape::tiny()).weight_type(WeightType::F16));
    }

    #[test]
    fn q4_k_loads() {
        check_model(&SyntheticModel::new(ModelShape::tiny_k()).weight_type(WeightType::Q4_K));
    }

    #[test]
    fn q4_k_m_and_q6_k_load() {
        check_model(&SyntheticModel::new(ModelShape::tiny_k()).weight_type(WeightType::Q4_K_M).vocab(VocabKind::Bpe));
        check_model(&SyntheticModel::new(ModelShape::tiny_k()).weight_type(WeightType::Q6_K));
    }

    #[test]
    fn same_parameters_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, seed: u64| {
            let p = dir.path().join(name);
            SyntheticModel::new(ModelShape::tiny())
                .vocab(VocabKind::Bpe)
                .weight_type(WeightType::Q8_0)
                .seed(seed)
                .write(&p)
                .unwrap();
            std::fs::read(p).unwrap()
        };
        let a = write("a.gguf", 1);
        let b = write("b.gguf", 1);
        let c = write("c.gguf", 2);
        assert_eq!(a, b);
        assert_eq!(a.len(), c.len());
        assert_ne!(a, c);
        // Only the leftover temp files would differ: none may remain.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn write_cached_reuses_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let m = SyntheticModel::new(ModelShape::tiny()).seed(42);
        let p1 = m.write_cached(dir.path()).unwrap();
        let name = p1.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("llama-tiny-spm-f32-s42-") && name.ends_with(".gguf"), "{name}");
        let modified = std::fs::metadata(&p1).unwrap().modified().unwrap();
        let p2 = m.write_cached(dir.path()).unwrap();
        assert_eq!(p1, p2);
        assert_eq!(std::fs::metadata(&p2).unwrap().modified().unwrap(), modified);
        // Every parameter changes the name.
        let others = [
            m.clone().seed(43),
            m.clone().vocab(VocabKind::Bpe),
            m.clone().weight_type(WeightType::F16),
            m.clone().chat_template(None),
            m.clone().chat_template(Some("{{ messages }}".into())),
            SyntheticModel::new(ModelShape { n_ctx_train: 1024, ..ModelShape::tiny() }),
        ];
        let mut names: HashSet<String> = others.iter().map(|o| o.file_name()).collect();
        names.insert(m.file_name());
        assert_eq!(names.len(), others.len() + 1);
    }

    #[test]
    fn racing_writers_leave_one_complete_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = SyntheticModel::new(ModelShape::tiny()).seed(5);
        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4).map(|_| s.spawn(|| m.write_cached(dir.path()).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(paths.windows(2).all(|w| w[0] == w[1]));
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
        crate::validate::validate_model_file(&paths[0]).unwrap();
    }

    #[test]
    fn invalid_shapes_are_errors() {
        let cases = [
            (SyntheticModel::new(ModelShape { n_head: 3, ..ModelShape::tiny() }), "shape.n_embd"),
            (SyntheticModel::new(ModelShape { n_head_kv: 3, ..ModelShape::tiny() }), "shape.n_head"),
            (SyntheticModel::new(ModelShape { n_head_kv: 0, ..ModelShape::tiny() }), "shape.n_head_kv"),
            (SyntheticModel::new(ModelShape { n_layer: 0, ..ModelShape::tiny() }), "shape.n_layer"),
            (SyntheticModel::new(ModelShape { n_layer: 513, ..ModelShape::tiny() }), "shape.n_layer"),
            (SyntheticModel::new(ModelShape { n_vocab: 300, ..ModelShape::tiny() }), "shape.n_vocab"),
            (
                SyntheticModel::new(ModelShape { n_vocab: 200, ..ModelShape::tiny() }).vocab(VocabKind::Bpe),
                "shape.n_vocab",
            ),
            (SyntheticModel::new(ModelShape::tiny()).weight_type(WeightType::Q4_K), "shape.n_embd"),
            (
                SyntheticModel::new(ModelShape { n_ff: 100, ..ModelShape::tiny() }).weight_type(WeightType::Q8_0),
                "shape.n_ff",
            ),
            (SyntheticModel::new(ModelShape { rms_norm_eps: f32::NAN, ..ModelShape::tiny() }), "shape.rms_norm_eps"),
            (SyntheticModel::new(ModelShape::tiny()).chat_template(Some("a\0b".into())), "chat template"),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (m, what) in cases {
            let err = m.write(dir.path().join("bad.gguf")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(what), "{what}: {text}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn preset_parameter_counts() {
        assert_eq!(ModelShape::llama3_8b().n_params(), 8_030_261_248);
        assert_eq!(ModelShape::llama3_70b().n_params(), 70_553_706_496);
        let small = ModelShape::small().n_params();
        assert!((30_000_000..100_000_000).contains(&small), "{small}");
        for s in [ModelShape::small(), ModelShape::llama3_8b(), ModelShape::llama3_70b()] {
            for w in [WeightType::F32, WeightType::Q8_0, WeightType::Q4_K_M] {
                for v in [VocabKind::Spm, VocabKind::Bpe] {
                    SyntheticModel::new(s).weight_type(w).vocab(v).validate().unwrap();
                }
            }
        }
    }

    #[test]
    fn vocabularies_are_consistent() {
        for n in [1024usize, 32000] {
            let v = build_bpe(n);
            assert_eq!(v.tokens.len(), n);
            let set: HashSet<&String> = v.tokens.iter().collect();
            assert_eq!(set.len(), n);
            for m in &v.merges {
                let (a, b) = m.split_once(' ').unwrap();
                assert!(set.contains(&a.to_string()) && set.contains(&b.to_string()));
                assert!(set.contains(&format!("{a}{b}")), "{m}");
            }
            let s = build_spm(n);
            assert_eq!(s.tokens.len(), n);
            assert_eq!(s.tokens.iter().collect::<HashSet<_>>().len(), n);
        }
    }
}
