//! Sequence state: one sequence's KV cache as bytes or a file, and back
//! (`llama_state_seq_*`), so that a conversation resumes without decoding its
//! prompt again.
//!
//! A [`SeqState`] carries the tokens whose cache it holds and a fingerprint of
//! the model and the cache layout it came from: loading it into a context of
//! another model, KV type or layout is an [`Error::State`] before llama.cpp
//! sees the bytes.

use crate::batch::SeqId;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::ffi::try_resize;
use crate::vocab::Token;
use llama_sys as sys;
use std::path::Path;

const MAGIC: &[u8; 8] = b"LLRSSEQ1";

/// One sequence's saved KV cache, with the tokens it holds.
#[derive(Clone, PartialEq, Eq)]
pub struct SeqState {
    fingerprint: u64,
    tokens: Vec<Token>,
    data: Vec<u8>,
}

impl std::fmt::Debug for SeqState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqState")
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .field("tokens", &self.tokens.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// FNV-1a, enough to tell models and layouts apart (not a security check:
/// a state is trusted data, like the model file).
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= b as u64;
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

impl SeqState {
    /// The tokens whose KV cache this state holds (positions `0..len`).
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// Size of llama.cpp's state data in bytes.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The state as one byte string (header, fingerprint, tokens, llama.cpp's
    /// data), for [`from_bytes`](Self::from_bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.tokens.len() * 4 + self.data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&(self.tokens.len() as u64).to_le_bytes());
        for t in &self.tokens {
            out.extend_from_slice(&t.0.to_le_bytes());
        }
        out.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote. Truncated or foreign
    /// bytes are an [`Error::State`].
    pub fn from_bytes(bytes: &[u8]) -> Result<SeqState> {
        let bad = |why: &str| Error::State { message: format!("not a llama-rs sequence state: {why}") };
        let mut rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(|| bad("wrong magic"))?;
        let mut take = |n: usize| -> Result<&[u8]> {
            if rest.len() < n {
                return Err(bad("truncated"));
            }
            let (a, b) = rest.split_at(n);
            rest = b;
            Ok(a)
        };
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let fingerprint = u64_at(take(8)?);
        let n_tokens = usize::try_from(u64_at(take(8)?)).map_err(|_| bad("token count"))?;
        let token_bytes = take(n_tokens.checked_mul(4).ok_or_else(|| bad("token count"))?)?;
        let tokens = token_bytes.chunks_exact(4).map(|c| Token(i32::from_le_bytes(c.try_into().expect("4")))).collect();
        let n_data = usize::try_from(u64_at(take(8)?)).map_err(|_| bad("data size"))?;
        let data = take(n_data)?.to_vec();
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(SeqState { fingerprint, tokens, data })
    }

    /// Writes [`to_bytes`](Self::to_bytes) to a file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        std::fs::write(path.as_ref(), self.to_bytes()).map_err(|e| Error::io(path.as_ref(), e))
    }

    /// Reads a file written by [`save`](Self::save).
    pub fn load(path: impl AsRef<Path>) -> Result<SeqState> {
        let bytes = std::fs::read(path.as_ref()).map_err(|e| Error::io(path.as_ref(), e))?;
        SeqState::from_bytes(&bytes)
    }
}

impl Context<'_> {
    /// What a sequence state of this context must match: the model's shape
    /// and weights size, its vocabulary, and the KV cache's layout and types.
    fn state_fingerprint(&self) -> u64 {
        let m = self.model();
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        fnv(&mut h, m.description().as_bytes());
        fnv(&mut h, m.architecture().as_bytes());
        for v in [m.n_params(), m.size(), m.n_embd() as u64, m.n_layer() as u64, m.n_head_kv() as u64] {
            fnv(&mut h, &v.to_le_bytes());
        }
        fnv(&mut h, &self.vocab().n_tokens().to_le_bytes());
        let (k, v) = self.kv_types();
        fnv(&mut h, &[k.raw() as u8, v.raw() as u8, self.kv_unified() as u8]);
        h
    }

    /// Saves sequence `seq`'s KV cache. `tokens` are the tokens it holds
    /// (positions `0..tokens.len()`), kept with the state so that a resumed
    /// request knows its prefix; the sequence must hold exactly that many
    /// positions.
    pub fn save_seq_state(&mut self, seq: SeqId, tokens: &[Token]) -> Result<SeqState> {
        let held = self.seq_pos_max(seq)?.map_or(0, |p| p as usize + 1);
        if held != tokens.len() {
            return Err(Error::State {
                message: format!("sequence {seq} holds {held} positions, {} tokens were given", tokens.len()),
            });
        }
        // SAFETY: live context, sequence id checked above.
        let size = unsafe { sys::llama_state_seq_get_size(self.as_ptr(), seq) };
        let mut data = Vec::new();
        try_resize(&mut data, size, 0u8, "sequence state")?;
        crate::backend::clear_log_error();
        // SAFETY: `data` has `size` writable bytes; id checked; llama.cpp
        // catches its own exceptions here and returns 0.
        let written = unsafe { sys::llama_state_seq_get_data(self.as_ptr(), data.as_mut_ptr(), data.len(), seq) };
        if written == 0 || written > data.len() {
            return Err(Error::State {
                message: crate::backend::log_error_or("llama_state_seq_get_data wrote nothing"),
            });
        }
        data.truncate(written);
        Ok(SeqState { fingerprint: self.state_fingerprint(), tokens: tokens.to_vec(), data })
    }

    /// Loads a saved state into sequence `seq` (whatever it held is
    /// replaced). A state from another model, KV type or cache layout is an
    /// [`Error::State`]; so is data llama.cpp cannot read (the sequence is
    /// then empty).
    pub fn load_seq_state(&mut self, seq: SeqId, state: &SeqState) -> Result<()> {
        self.seq_rm(Some(seq), ..)?;
        if state.fingerprint != self.state_fingerprint() {
            return Err(Error::State {
                message: "the state was saved from another model or with another KV cache type or layout".into(),
            });
        }
        if state.tokens.len() > self.n_ctx_seq() as usize {
            return Err(Error::State {
                message: format!("{} tokens do not fit in n_ctx = {}", state.tokens.len(), self.n_ctx_seq()),
            });
        }
        crate::backend::clear_log_error();
        // SAFETY: live context, id checked by seq_rm above; the slice is
        // valid for its length; llama.cpp catches its own exceptions here
        // (garbage returns 0).
        let read = unsafe { sys::llama_state_seq_set_data(self.as_ptr(), state.data.as_ptr(), state.data.len(), seq) };
        if read == 0 {
            let _ = self.seq_rm(Some(seq), ..);
            return Err(Error::State { message: crate::backend::log_error_or("llama.cpp could not read the state") });
        }
        let held = self.seq_pos_max(seq)?.map_or(0, |p| p as usize + 1);
        if held != state.tokens.len() {
            let _ = self.seq_rm(Some(seq), ..);
            return Err(Error::State {
                message: format!("the state holds {held} positions but lists {} tokens", state.tokens.len()),
            });
        }
        Ok(())
    }
}
