//! A batch of tokens for [`Context::decode`](crate::Context::decode).

use crate::error::{Error, Result};
use crate::ffi::try_with_capacity;
use crate::vocab::Token;
use llama_sys as sys;

/// Position of a token in its sequence, in `0..=MAX_POS`.
pub type Pos = i32;

/// The largest position llama-rs accepts: `i32::MAX / 2`, so that sums and
/// differences of two positions, which llama.cpp computes in `i32` (next
/// positions, shifts, attention windows), cannot overflow. [`Batch::add`],
/// [`Context::seq_add`](crate::Context::seq_add) and the position ranges of
/// the KV operations refuse anything larger.
pub const MAX_POS: Pos = i32::MAX / 2;
/// Sequence id, in `0..n_seq_max` of the context.
pub type SeqId = i32;

/// Tokens to decode, each with its position, sequences and whether its logits
/// are wanted. Owns its buffers; its capacity and `n_seq_max` are fixed at
/// creation, every `add` is checked against them, and adding never allocates.
pub struct Batch {
    tokens: Vec<i32>,
    pos: Vec<i32>,
    n_seq_id: Vec<i32>,
    /// The sequence ids of every token, packed (`n_seq_id[i]` each).
    seq_ids: Vec<i32>,
    seq_ptrs: Vec<*mut i32>,
    logits: Vec<i8>,
    capacity: usize,
    n_seq_max: usize,
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
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("n_seq_max", &self.n_seq_max)
            .finish()
    }
}

/// Bytes a batch's buffers take per token (token, position, sequence count,
/// sequence pointer, output flag) besides its sequence ids.
const BYTES_PER_TOKEN: usize = 4 + 4 + 4 + std::mem::size_of::<*mut i32>() + 1;

impl Batch {
    /// A batch for up to `capacity` tokens (at least 1), each in at most
    /// `n_seq_max` sequences at once (1 for plain single-sequence use).
    /// `n_seq_max` is clamped to `1..=` llama.cpp's maximum number of
    /// sequences (256): no context has more. The buffers (about
    /// `capacity * (21 + 4 * n_seq_max)` bytes) are reserved here, so that
    /// adding tokens never allocates.
    ///
    /// A capacity above `i32::MAX` (llama.cpp counts tokens in an `i32`) is an
    /// [`Error::InvalidParam`]; buffers that cannot be allocated are an
    /// [`Error::OutOfMemory`], never an abort.
    pub fn new(capacity: usize, n_seq_max: usize) -> Result<Batch> {
        if capacity > i32::MAX as usize {
            return Err(Error::invalid("batch capacity", capacity, "llama.cpp takes at most i32::MAX tokens"));
        }
        let capacity = capacity.max(1);
        // An unclamped n_seq_max made `capacity * n_seq_max` overflow or ask
        // for terabytes (found by fuzz/fuzz_targets/batch.rs).
        let n_seq_max = n_seq_max.clamp(1, crate::ffi::max_sequences().max(1));
        let bytes = capacity.saturating_mul(BYTES_PER_TOKEN + 4 * n_seq_max);
        let what = "batch buffers";
        Ok(Batch {
            tokens: try_with_capacity(capacity, what, bytes)?,
            pos: try_with_capacity(capacity, what, bytes)?,
            n_seq_id: try_with_capacity(capacity, what, bytes)?,
            seq_ids: try_with_capacity(capacity.saturating_mul(n_seq_max), what, bytes)?,
            seq_ptrs: try_with_capacity(capacity, what, bytes)?,
            logits: try_with_capacity(capacity, what, bytes)?,
            capacity,
            n_seq_max,
        })
    }

    /// Maximum number of tokens.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Maximum number of sequences one token may belong to.
    pub fn n_seq_max(&self) -> usize {
        self.n_seq_max
    }

    /// Number of tokens added.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when no token was added.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Removes all tokens (keeps the buffers).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keeps the first `n` tokens.
    fn truncate(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        let ids: usize = self.n_seq_id[..n].iter().map(|&k| k as usize).sum();
        self.tokens.truncate(n);
        self.pos.truncate(n);
        self.n_seq_id.truncate(n);
        self.seq_ids.truncate(ids);
        self.logits.truncate(n);
    }

    /// Adds a token at `pos` in the sequences `seq_ids` (at least one), with
    /// its logits computed if `logits`.
    pub fn add(&mut self, token: Token, pos: Pos, seq_ids: &[SeqId], logits: bool) -> Result<()> {
        if self.len() == self.capacity() {
            return Err(Error::BatchFull { capacity: self.capacity() });
        }
        if token.0 < 0 {
            return Err(Error::InvalidToken { token: token.0, n_vocab: i32::MAX });
        }
        if !(0..=MAX_POS).contains(&pos) {
            return Err(Error::invalid("position", pos, format!("positions are in 0..={MAX_POS} (MAX_POS)")));
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
        // Within the capacities reserved by `new`: no allocation.
        self.tokens.push(token.0);
        self.pos.push(pos);
        self.n_seq_id.push(seq_ids.len() as i32);
        self.seq_ids.extend_from_slice(seq_ids);
        self.logits.push(logits as i8);
        Ok(())
    }

    /// Adds `tokens` at positions `start_pos..` in sequence `seq_id`; logits
    /// only for the last one if `logits_last`.
    pub fn add_sequence(&mut self, tokens: &[Token], start_pos: Pos, seq_id: SeqId, logits_last: bool) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        if self.len() + tokens.len() > self.capacity() {
            return Err(Error::BatchFull { capacity: self.capacity() });
        }
        // The last position must be a valid one (an overflow of `start_pos +
        // i` panicked in debug builds and wrapped in release ones; found by
        // fuzz/fuzz_targets/batch.rs).
        let last = start_pos.checked_add((tokens.len() - 1).try_into().unwrap_or(Pos::MAX));
        if last.is_none_or(|p| p > MAX_POS) {
            return Err(Error::invalid(
                "position",
                format!("{start_pos} + {}", tokens.len() - 1),
                format!("the positions of the sequence must be in 0..={MAX_POS} (MAX_POS)"),
            ));
        }
        let base = self.len();
        for (i, &t) in tokens.iter().enumerate() {
            let last = i + 1 == tokens.len();
            // Cannot overflow: checked above.
            if let Err(e) = self.add(t, start_pos + i as Pos, &[seq_id], logits_last && last) {
                self.truncate(base);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Sets whether row `i` outputs logits.
    pub fn set_logits(&mut self, i: usize, logits: bool) -> Result<()> {
        if i >= self.len() {
            return Err(Error::invalid("batch row", i, format!("the batch has {} tokens", self.len())));
        }
        self.logits[i] = logits as i8;
        Ok(())
    }

    /// The tokens added so far.
    pub fn tokens(&self) -> &[Token] {
        // SAFETY: Token is repr(transparent) over i32.
        unsafe { std::slice::from_raw_parts(self.tokens.as_ptr().cast(), self.len()) }
    }

    /// The sequence ids of every token, packed.
    pub(crate) fn all_seq_ids(&self) -> &[SeqId] {
        &self.seq_ids
    }

    pub(crate) fn output_flags(&self) -> &[i8] {
        &self.logits
    }

    /// The C view of this batch, valid while `self` is neither moved nor changed.
    pub(crate) fn as_raw(&mut self) -> sys::llama_batch {
        let base = self.seq_ids.as_mut_ptr();
        self.seq_ptrs.clear();
        let mut offset = 0;
        for &n in &self.n_seq_id {
            // SAFETY: offset + n <= seq_ids.len(): the counts add up to the
            // packed ids (add pushes both together).
            self.seq_ptrs.push(unsafe { base.add(offset) });
            offset += n as usize;
        }
        sys::llama_batch {
            n_tokens: self.len() as i32,
            token: self.tokens.as_mut_ptr(),
            embd: std::ptr::null_mut(),
            pos: self.pos.as_mut_ptr(),
            n_seq_id: self.n_seq_id.as_mut_ptr(),
            seq_id: self.seq_ptrs.as_mut_ptr(),
            logits: self.logits.as_mut_ptr(),
        }
    }
}
