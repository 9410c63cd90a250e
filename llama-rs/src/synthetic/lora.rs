//! [`SyntheticLora`]: LoRA adapter files for synthetic models.

use super::layout::{Role, TensorPlan};
use super::prng::{generate_rows, tensor_seed};
use super::SyntheticModel;
use crate::error::{Error, Result};
use crate::gguf::GgufWriter;
use llama_sys as sys;
use std::io::Write;
use std::path::Path;

/// Writer of a LoRA adapter GGUF for a [`SyntheticModel`], in the layout
/// llama.cpp's `llama_adapter_lora_init` reads (`src/llama-adapter.cpp`):
/// `general.type` = `adapter`, `general.architecture` = the model's,
/// `adapter.type` = `lora`, `adapter.lora.alpha` (when set),
/// `adapter.alora.invocation_tokens` (when set), and for each target tensor
/// `W` of shape `[in, out]` (ggml order: `in` values per row) the F32 pair
/// `W.lora_a` `[in, rank]` and `W.lora_b` `[rank, out]`. llama.cpp adds
/// `scale * B (A x)` to `W x`, with `scale` the context's scale for the
/// adapter times `alpha / rank` when alpha is set.
///
/// `token_embd.weight` is the exception llama.cpp makes (a row lookup):
/// `lora_a` `[rank, n_vocab]`, `lora_b` `[rank, n_embd]`.
///
/// The adapter fits the model it was made from; one made from a model of
/// another shape is what an adapter for the wrong base model looks like.
///
/// ```no_run
/// use llama_rs::synthetic::{ModelShape, SyntheticLora, SyntheticModel};
/// # fn main() -> llama_rs::Result<()> {
/// let model = SyntheticModel::new(ModelShape::tiny());
/// SyntheticLora::new(&model).alpha(8.0).target("output.weight", 4).write("lora.gguf")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticLora {
    model: SyntheticModel,
    alpha: Option<f32>,
    seed: u64,
    alora: Vec<u32>,
    targets: Vec<Target>,
    raw: Vec<(String, u32, u32, Vec<f32>)>,
}

#[derive(Debug, Clone, PartialEq)]
struct Target {
    tensor: String,
    rank: u32,
    /// Explicit (A, B) values; random when `None`.
    values: Option<(Vec<f32>, Vec<f32>)>,
}

impl SyntheticLora {
    /// An adapter for `model` (its architecture and tensor shapes), with no
    /// tensors yet, no alpha, seed 1.
    pub fn new(model: &SyntheticModel) -> SyntheticLora {
        SyntheticLora {
            model: model.clone(),
            alpha: None,
            seed: 1,
            alora: Vec::new(),
            targets: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// Writes `adapter.lora.alpha`.
    pub fn alpha(mut self, alpha: f32) -> SyntheticLora {
        self.alpha = Some(alpha);
        self
    }

    /// Seeds the random A and B values of [`target`](Self::target).
    pub fn seed(mut self, seed: u64) -> SyntheticLora {
        self.seed = seed;
        self
    }

    /// Writes `adapter.alora.invocation_tokens` (an activated LoRA).
    pub fn alora_invocation_tokens(mut self, tokens: &[u32]) -> SyntheticLora {
        self.alora = tokens.to_vec();
        self
    }

    /// Adds a pair for the model tensor `tensor` (e.g. `output.weight`,
    /// `blk.0.attn_q.weight`) of rank `rank`, with random values in ±0.05.
    pub fn target(mut self, tensor: &str, rank: u32) -> SyntheticLora {
        self.targets.push(Target { tensor: tensor.into(), rank, values: None });
        self
    }

    /// Adds a pair for `tensor` with the given values, in ggml order: for a
    /// tensor `[in, out]`, `a` is `rank` rows of `in` values (A as a
    /// `rank x in` matrix) and `b` is `out` rows of `rank` values (B as an
    /// `out x rank` matrix): the adapter adds `scale * B (A x)` to the
    /// tensor's product `W x`. (For `token_embd.weight`, `a` is `n_vocab`
    /// rows of `rank` values, `b` is `n_embd` rows of `rank` values.)
    pub fn target_values(mut self, tensor: &str, rank: u32, a: Vec<f32>, b: Vec<f32>) -> SyntheticLora {
        self.targets.push(Target { tensor: tensor.into(), rank, values: Some((a, b)) });
        self
    }

    /// Adds one F32 tensor exactly as given, name and shape unchecked
    /// (`ne0 * ne1` values): for tests of malformed adapters (a lone
    /// `lora_a`, mismatched ranks, another suffix).
    pub fn tensor(mut self, name: &str, ne0: u32, ne1: u32, values: Vec<f32>) -> SyntheticLora {
        self.raw.push((name.into(), ne0, ne1, values));
        self
    }

    /// The (A, B) shapes of a pair for `tensor`, as (ne0, ne1) each.
    fn shapes(&self, t: &Target) -> Result<((u32, u32), (u32, u32))> {
        let (ne0, ne1) = self.model.tensor_shape(&t.tensor).ok_or_else(|| {
            Error::invalid("LoRA target", &t.tensor, "the synthetic model has no tensor of that name")
        })?;
        if ne1 == 1 || t.rank == 0 {
            return Err(Error::invalid(
                "LoRA target",
                &t.tensor,
                format!("needs a matrix and a rank >= 1 (shape [{ne0}, {ne1}], rank {})", t.rank),
            ));
        }
        Ok(if t.tensor == "token_embd.weight" {
            ((t.rank, ne1), (t.rank, ne0))
        } else {
            ((ne0, t.rank), (t.rank, ne1))
        })
    }

    /// Writes the adapter to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::backend::init();
        let path = path.as_ref();
        let mut plan = Vec::new();
        let mut data: Vec<Vec<f32>> = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|o| o.tensor == t.tensor) {
                // gguf asserts that tensor names are unique.
                return Err(Error::invalid("LoRA target", &t.tensor, "given twice"));
            }
            let (a, b) = self.shapes(t)?;
            for (k, ((ne0, ne1), suffix)) in [(a, "lora_a"), (b, "lora_b")].into_iter().enumerate() {
                let n = ne0 as usize * ne1 as usize;
                let values = match &t.values {
                    Some((va, vb)) => {
                        let v = if k == 0 { va } else { vb };
                        if v.len() != n {
                            return Err(Error::invalid(
                                "LoRA values",
                                format!("{} values for {}.{suffix}", v.len(), t.tensor),
                                format!("its shape [{ne0}, {ne1}] needs {n}"),
                            ));
                        }
                        v.clone()
                    }
                    None => {
                        let t = TensorPlan {
                            name: String::new(),
                            ne0,
                            ne1,
                            two_d: true,
                            ty: sys::GGML_TYPE_F32,
                            role: Role::Output,
                        };
                        let seed = tensor_seed(self.seed, (2 * i + k) as u64);
                        generate_rows(&t, seed, 0, ne1 as usize)
                    }
                };
                plan.push(TensorPlan {
                    name: format!("{}.{suffix}", t.tensor),
                    ne0,
                    ne1,
                    two_d: true,
                    ty: sys::GGML_TYPE_F32,
                    role: Role::Output,
                });
                data.push(values);
            }
        }

        for (name, ne0, ne1, values) in &self.raw {
            if values.len() != *ne0 as usize * *ne1 as usize || *ne0 == 0 || *ne1 == 0 {
                return Err(Error::invalid(
                    "LoRA tensor",
                    name,
                    format!("{} values for shape [{ne0}, {ne1}]", values.len()),
                ));
            }
            // Duplicate and over-long names: refused by add_tensors.
            plan.push(TensorPlan {
                name: name.clone(),
                ne0: *ne0,
                ne1: *ne1,
                two_d: true,
                ty: sys::GGML_TYPE_F32,
                role: Role::Output,
            });
            data.push(values.clone());
        }

        let mut g = GgufWriter::new()?;
        g.set_str("general.architecture", self.model.arch.name())?;
        g.set_str("general.type", "adapter")?;
        g.set_str("general.name", "synthetic lora")?;
        g.set_str("adapter.type", "lora")?;
        if let Some(alpha) = self.alpha {
            g.set_f32("adapter.lora.alpha", alpha)?;
        }
        if !self.alora.is_empty() {
            g.set_arr("adapter.alora.invocation_tokens", &self.alora)?;
        }
        g.add_tensors(&plan.iter().map(TensorPlan::desc).collect::<Vec<_>>())?;

        let io = |e| Error::io(path, e);
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        out.write_all(&g.meta_bytes()).map_err(io)?;
        let mut offset = 0;
        for (index, values) in data.iter().enumerate() {
            debug_assert_eq!(g.tensor_offset(index), Some(offset));
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let padded = bytes.len().next_multiple_of(g.alignment());
            out.write_all(&bytes).map_err(io)?;
            out.write_all(&vec![0u8; padded - bytes.len()]).map_err(io)?;
            offset += padded;
        }
        out.flush().map_err(io)?;
        Ok(())
    }
}
