//! [`ModelShape`]: the hyperparameters of a synthetic model, its presets,
//! and the checks llama.cpp needs of them.

use crate::error::{Error, Result};

/// Largest `block_count` llama.cpp accepts (`LLAMA_MAX_LAYERS`, `src/llama-hparams.h:11`).
const MAX_LAYERS: u32 = 512;

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
    pub(super) fn label(&self) -> &'static str {
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
    pub(super) fn validate(&self, min_vocab: u32, block: u32) -> Result<()> {
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
