//! The baseline of the overhead lines: the same loops written against the C
//! API through `llama_sys`, as a C programmer would write them (one
//! `llama_batch_init` batch, `llama_decode`, `llama_get_logits_ith`, a plain
//! argmax and `llama_token_to_piece`), on a context created by hand with the
//! parameters the safe context got.

use llama_rs::sys;
use llama_rs::{ContextParams, Model};
use std::marker::PhantomData;

/// Largest logit of a row: what any sampler reads at least once.
pub fn max_logit(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// A context and a batch owned through the C API, on a model it borrows.
pub struct RawContext<'m> {
    ctx: *mut sys::llama_context,
    vocab: *const sys::llama_vocab,
    batch: sys::llama_batch,
    n_batch: usize,
    n_vocab: usize,
    _model: PhantomData<&'m Model>,
}

impl<'m> RawContext<'m> {
    /// Creates a context on `model` with the same parameters as
    /// `Model::new_context(params)` passes to llama.cpp.
    pub fn new(model: &'m Model, p: &ContextParams) -> Result<RawContext<'m>, String> {
        let m = model.as_raw_ptr();
        let cp = p.to_raw(model);
        // SAFETY: `m` is a live model, borrowed for the life of this context;
        // the parameters are valid (the safe
        // API accepted the same ones).
        let ctx = unsafe { sys::llama_init_from_model(m, cp) };
        if ctx.is_null() {
            return Err("llama_init_from_model returned NULL".into());
        }
        // SAFETY: live context; the batch has room for n_batch tokens of one sequence.
        unsafe {
            let n_batch = sys::llama_n_batch(ctx) as usize;
            let vocab = sys::llama_model_get_vocab(m);
            Ok(RawContext {
                ctx,
                vocab,
                batch: sys::llama_batch_init(n_batch as i32, 0, 1),
                n_batch,
                n_vocab: sys::llama_vocab_n_tokens(vocab) as usize,
                _model: PhantomData,
            })
        }
    }

    pub fn clear(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ctx), false) };
    }

    /// Puts `tokens` at positions `pos..` in the batch, logits for the last
    /// one only if `logits_last`.
    fn fill(&mut self, tokens: &[i32], pos: i32, logits_last: bool) {
        let b = &mut self.batch;
        // SAFETY: the batch was allocated for n_batch >= tokens.len() tokens of
        // one sequence each.
        unsafe {
            for (j, &t) in tokens.iter().enumerate() {
                *b.token.add(j) = t;
                *b.pos.add(j) = pos + j as i32;
                *b.n_seq_id.add(j) = 1;
                *(*b.seq_id.add(j)) = 0;
                *b.logits.add(j) = 0;
            }
            if logits_last {
                *b.logits.add(tokens.len() - 1) = 1;
            }
        }
        b.n_tokens = tokens.len() as i32;
    }

    fn decode(&mut self) -> Result<(), String> {
        // SAFETY: live context; the batch holds valid ids of the model's
        // vocabulary and fits in n_batch and in the context.
        let ret = unsafe { sys::llama_decode(self.ctx, self.batch) };
        if ret != 0 {
            return Err(format!("llama_decode returned {ret}"));
        }
        Ok(())
    }

    fn logits(&self, i: i32) -> Result<&[f32], String> {
        // SAFETY: row i was marked for logits in the last decode.
        let p = unsafe { sys::llama_get_logits_ith(self.ctx, i) };
        if p.is_null() {
            return Err(format!("no logits for row {i}"));
        }
        // SAFETY: llama.cpp returns n_vocab floats, valid until the next decode.
        Ok(unsafe { std::slice::from_raw_parts(p, self.n_vocab) })
    }

    /// Prompt processing: `tokens` in n_batch chunks from `pos`; logits of the
    /// last token are read. Returns their maximum.
    pub fn prompt(&mut self, tokens: &[i32], pos: i32) -> Result<f32, String> {
        let n_chunks = tokens.len().div_ceil(self.n_batch);
        let mut last = 0;
        for (i, chunk) in tokens.chunks(self.n_batch).enumerate() {
            self.fill(chunk, pos + (i * self.n_batch) as i32, i + 1 == n_chunks);
            self.decode()?;
            last = chunk.len() as i32 - 1;
        }
        Ok(max_logit(self.logits(last)?))
    }

    /// Generation: one decode per token from `pos`, reading each token's logits.
    pub fn gen(&mut self, tokens: &[i32], pos: i32) -> Result<f32, String> {
        let mut acc = 0.0;
        for (i, &t) in tokens.iter().enumerate() {
            self.fill(&[t], pos + i as i32, true);
            self.decode()?;
            acc += max_logit(self.logits(0)?);
        }
        Ok(acc)
    }

    /// A greedy generation loop after `prompt` was decoded at positions
    /// `0..prompt_len` with the last token's logits (row `row`): argmax, stop
    /// on end-of-generation, `llama_token_to_piece` into `out`, decode the
    /// token, `n_max` tokens at most (the last one is not decoded, as in
    /// llama-rs). Returns the number of tokens sampled.
    pub fn greedy(&mut self, prompt_len: i32, row: i32, n_max: usize, out: &mut Vec<u8>) -> Result<usize, String> {
        let mut row = row;
        let mut pos = prompt_len;
        let mut piece = [0u8; 256];
        let mut n = 0;
        while n < n_max {
            let logits = self.logits(row)?;
            let (mut best, mut max) = (0, f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                if l > max {
                    max = l;
                    best = i;
                }
            }
            let token = best as i32;
            n += 1;
            // SAFETY: live vocabulary, token in range.
            if unsafe { sys::llama_vocab_is_eog(self.vocab, token) } {
                break;
            }
            // SAFETY: the buffer has 256 writable bytes.
            let len = unsafe {
                sys::llama_token_to_piece(self.vocab, token, piece.as_mut_ptr().cast(), piece.len() as i32, 0, false)
            };
            if len < 0 {
                return Err(format!("llama_token_to_piece({token}) returned {len}"));
            }
            out.extend_from_slice(&piece[..len as usize]);
            if n == n_max {
                break;
            }
            self.fill(&[token], pos, true);
            self.decode()?;
            pos += 1;
            row = 0;
        }
        Ok(n)
    }
}

impl Drop for RawContext<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init / llama_init_from_model, freed once.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ctx);
        }
    }
}
