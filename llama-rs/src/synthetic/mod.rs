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
//! Only with feature `synthetic` (off by default): tests, examples and
//! benchmarks enable it, a library that only loads models does not carry it.
//! [`write_with_progress`](SyntheticModel::write_with_progress) reports the
//! bytes written, for a progress bar on large shapes.
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

// The rooms: this file is the builder; `shape.rs` the hyperparameters,
// `vocab.rs` the tokenizer, `layout.rs` the tensors and metadata keys,
// `prng.rs` the weights, `quant.rs` their encoding, `write.rs` the file and
// its progress, `cache.rs` the cache by name, `lora.rs` the adapters; the GGUF
// writer itself is `crate::gguf` (`gguf/write.rs`).

use crate::error::{Error, Result};
use crate::ffi::cstring;
use prng::{generate_rows, tensor_seed};

mod cache;
mod layout;
mod lora;
mod prng;
mod quant;
mod shape;
#[cfg(test)]
mod tests;
mod vocab;
mod write;

pub use lora::SyntheticLora;
pub use quant::WeightType;
pub use shape::ModelShape;
pub use vocab::VocabKind;

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
}
