//! [`WeightType`] and the quantizer: tensor data generated in f32 chunk by
//! chunk and converted with `ggml_quantize_chunk`, in parallel.

use super::layout::{Role, TensorPlan};
use super::prng::{generate_rows, tensor_seed};
use crate::error::{Error, Result};
use llama_sys as sys;
use std::io::Write;

/// Generated values per chunk (64 MiB of f32): bounds the memory used while
/// writing one tensor.
const CHUNK_VALUES: usize = 16 << 20;

/// Below this many values a chunk is generated on the calling thread only.
const PARALLEL_MIN_VALUES: usize = 1 << 18;

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
    pub(super) fn label(self) -> &'static str {
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
    pub(super) fn block_size(self) -> u32 {
        match self {
            WeightType::F32 | WeightType::F16 => 1,
            WeightType::Q8_0 => 32,
            WeightType::Q4_K | WeightType::Q6_K | WeightType::Q4_K_M => 256,
        }
    }

    /// `general.file_type` (`llama_ftype`).
    pub(super) fn ftype(self) -> sys::llama_ftype {
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
    pub(super) fn ggml_type(self, role: Role) -> sys::ggml_type {
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

/// Generates, encodes and writes one tensor chunk by chunk (at most
/// `CHUNK_VALUES` values each), calling `written` with each chunk's bytes;
/// returns the tensor's size.
pub(super) fn write_tensor(
    out: &mut impl Write,
    t: &TensorPlan,
    seed: u64,
    index: u64,
    threads: usize,
    buf: &mut Vec<u8>,
    written: &mut impl FnMut(usize),
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
        written(buf.len());
        total += buf.len();
        first += rows;
    }
    Ok(total)
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
