//! What a synthetic file holds: its tensors in file order ([`TensorPlan`])
//! and its metadata keys, built with the GGUF writer.

use super::vocab::{build_bpe, build_spm};
use super::{Architecture, SyntheticModel, VocabKind};
use crate::error::Result;
use crate::gguf::{GgufWriter, TensorDesc};
use llama_sys as sys;

/// What a tensor is for (decides its type and its values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
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
pub(super) struct TensorPlan {
    pub(super) name: String,
    pub(super) ne0: u32,
    pub(super) ne1: u32,
    pub(super) two_d: bool,
    pub(super) ty: sys::ggml_type,
    pub(super) role: Role,
}

impl TensorPlan {
    /// The descriptor the GGUF writer takes.
    pub(super) fn desc(&self) -> TensorDesc<'_> {
        TensorDesc { name: &self.name, ty: self.ty, ne0: self.ne0, ne1: self.ne1, two_d: self.two_d }
    }
}

impl SyntheticModel {
    /// The tensors in file order.
    pub(super) fn plan(&self) -> Vec<TensorPlan> {
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
    pub(super) fn metadata(&self, plan: &[TensorPlan]) -> Result<GgufWriter> {
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
            g.set_arr("tokenizer.ggml.scores", scores)?;
        }
        g.set_arr("tokenizer.ggml.token_type", &vocab.types)?;
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

        g.add_tensors(&plan.iter().map(TensorPlan::desc).collect::<Vec<_>>())?;
        Ok(g)
    }
}
