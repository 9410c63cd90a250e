//! A batch of tokens for [`Context::decode`](crate::Context::decode).

use crate::error::{Error, Result};
use crate::vocab::Token;
use llama_sys as sys;

/// Position of a token in its sequence.
pub type Pos = i32;
/// Sequence id, in `0..n_seq_max` of the context.
pub type SeqId = i32;

/// Tokens to decode, each with its position, sequences and whether its logits
/// are wanted. Owns its buffers; its capacity and `n_seq_max` are fixed at
/// creation and every `add` is checked against them.
pub struct Batch {
    tokens: Vec<i32>,
    pos: Vec<i32>,
    n_seq_id: Vec<i32>,
    seq_ids: Vec<i32>,
    seq_ptrs: Vec<*mut i32>,
    logits: Vec<i8>,
    n_seq_max: usize,
    len: usize,
}

// SAFETY: the raw pointers in `seq_ptrs` only ever point into this batch's
// own `seq_ids` buffer and are rewritten before each use; the batch owns all
// its data, like a Vec.
unsafe impl Send for Batch {}
// SAFETY: shared references only read the owned buffers.
unsafe impl Sync for Batch {}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("n_seq_max", &self.n_seq_max)
            .finish()
    }
}

impl Batch {
    /// A batch for up to `capacity` tokens, each in at most `n_seq_max`
    /// sequences at once (1 for plain single-sequence use). `n_seq_max` is
    /// clamped to llama.cpp's maximum number of sequences (256): no context
    /// has more. The buffers (about `capacity * (21 + 4 * n_seq_max)` bytes)
    /// are allocated here, as by `Vec::with_capacity`.
    pub fn new(capacity: usize, n_seq_max: usize) -> Batch {
        let capacity = capacity.clamp(1, i32::MAX as usize);
        // An unclamped n_seq_max made `capacity * n_seq_max` overflow or ask
        // for terabytes (found by fuzz/fuzz_targets/batch.rs).
        let n_seq_max = n_seq_max.clamp(1, crate::ffi::max_sequences().max(1));
        Batch {
            tokens: vec![0; capacity],
            pos: vec![0; capacity],
            n_seq_id: vec![0; capacity],
            seq_ids: vec![0; capacity * n_seq_max],
            seq_ptrs: vec![std::ptr::null_mut(); capacity],
            logits: vec![0; capacity],
            n_seq_max,
            len: 0,
        }
    }

    /// Maximum number of tokens.
    pub fn capacity(&self) -> usize {
        self.tokens.len()
    }

    /// Maximum number of sequences one token may belong to.
    pub fn n_seq_max(&self) -> usize {
        self.n_seq_max
    }

    /// Number of tokens added.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no token was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes all tokens (keeps the buffers).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Adds a token at `pos` in the sequences `seq_ids` (at least one), with
    /// its logits computed if `logits`.
    pub fn add(&mut self, token: Token, pos: Pos, seq_ids: &[SeqId], logits: bool) -> Result<()> {
        if self.len == self.capacity() {
            return Err(Error::BatchFull { capacity: self.capacity() });
        }
        if token.0 < 0 {
            return Err(Error::InvalidToken { token: token.0, n_vocab: i32::MAX });
        }
        if pos < 0 {
            return Err(Error::invalid("position", pos, "positions are >= 0"));
        }
        if seq_ids.is_empty() || seq_ids.len() > self.n_seq_max {
            return Err(Error::invalid(
                "sequence ids",
                format!("{seq_ids:?}"),
                format!("each token needs 1 to {} sequence ids (the batch's n_seq_max)", self.n_seq_max),
            ));
        }
        if let Some(&bad) = seq_ids.iter().find(|&&s| s < 0) {
            return Err(Error::InvalidSeqId { seq_id: bad, n_seq_max: self.n_seq_max as u32 });
        }
        let i = self.len;
        self.tokens[i] = token.0;
        self.pos[i] = pos;
        self.n_seq_id[i] = seq_ids.len() as i32;
        self.seq_ids[i * self.n_seq_max..i * self.n_seq_max + seq_ids.len()].copy_from_slice(seq_ids);
        self.logits[i] = logits as i8;
        self.len += 1;
        Ok(())
    }

    /// Adds `tokens` at positions `start_pos..` in sequence `seq_id`; logits
    /// only for the last one if `logits_last`.
    pub fn add_sequence(&mut self, tokens: &[Token], start_pos: Pos, seq_id: SeqId, logits_last: bool) -> Result<()> {
        if self.len + tokens.len() > self.capacity() {
            return Err(Error::BatchFull { capacity: self.capacity() });
        }
        // The last position must fit in a Pos (an overflow panicked in debug
        // builds and wrapped in release ones; found by fuzz/fuzz_targets/batch.rs).
        if start_pos.checked_add(tokens.len().saturating_sub(1).try_into().unwrap_or(Pos::MAX)).is_none() {
            return Err(Error::invalid(
                "position",
                format!("{start_pos} + {}", tokens.len() - 1),
                "the positions of the sequence must fit in i32",
            ));
        }
        let base = self.len;
        for (i, &t) in tokens.iter().enumerate() {
            let last = i + 1 == tokens.len();
            // Cannot overflow: checked above.
            if let Err(e) = self.add(t, start_pos + i as Pos, &[seq_id], logits_last && last) {
                self.len = base;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sets whether row `i` outputs logits.
    pub fn set_logits(&mut self, i: usize, logits: bool) -> Result<()> {
        if i >= self.len {
            return Err(Error::invalid("batch row", i, format!("the batch has {} tokens", self.len)));
        }
        self.logits[i] = logits as i8;
        Ok(())
    }

    /// The tokens added so far.
    pub fn tokens(&self) -> &[Token] {
        // SAFETY: Token is repr(transparent) over i32.
        unsafe { std::slice::from_raw_parts(self.tokens.as_ptr().cast(), self.len) }
    }

    pub(crate) fn seq_ids_of(&self, i: usize) -> &[SeqId] {
        let n = self.n_seq_id[i] as usize;
        &self.seq_ids[i * self.n_seq_max..i * self.n_seq_max + n]
    }

    pub(crate) fn output_flags(&self) -> &[i8] {
        &self.logits[..self.len]
    }

    /// The C view of this batch, valid while `self` is neither moved nor changed.
    pub(crate) fn as_raw(&mut self) -> sys::llama_batch {
        let base = self.seq_ids.as_mut_ptr();
        for (i, p) in self.seq_ptrs[..self.len].iter_mut().enumerate() {
            // SAFETY: i * n_seq_max < seq_ids.len() since i < capacity.
            *p = unsafe { base.add(i * self.n_seq_max) };
        }
        sys::llama_batch {
            n_tokens: self.len as i32,
            token: self.tokens.as_mut_ptr(),
            embd: std::ptr::null_mut(),
            pos: self.pos.as_mut_ptr(),
            n_seq_id: self.n_seq_id.as_mut_ptr(),
            seq_id: self.seq_ptrs.as_mut_ptr(),
            logits: self.logits.as_mut_ptr(),
        }
    }
}
