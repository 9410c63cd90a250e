//! Tokens and the vocabulary: tokenize, detokenize, pieces, special tokens.

use crate::error::{Error, Result};
use crate::ffi::{check_shim, string_from_ptr, try_resize, written, Written};
use llama_sys as sys;
use std::marker::PhantomData;

/// A token id. `repr(transparent)`: a `&[Token]` is passed to llama.cpp as is.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Token(pub i32);

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Tokenizer family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VocabType {
    /// No vocabulary.
    None,
    /// SentencePiece (llama, mistral) with byte fallback.
    Spm,
    /// Byte-level BPE (GPT-2 style: llama 3, qwen, ...).
    Bpe,
    /// WordPiece (BERT).
    Wpm,
    /// T5's unigram.
    Ugm,
    /// RWKV.
    Rwkv,
    /// Another type this crate does not name.
    Other(u32),
}

macro_rules! yes_no {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub enum $name {
            /// Yes.
            Yes,
            /// No.
            #[default]
            No,
        }

        impl $name {
            fn yes(self) -> bool {
                self == $name::Yes
            }
        }

        impl From<bool> for $name {
            fn from(yes: bool) -> Self {
                if yes {
                    $name::Yes
                } else {
                    $name::No
                }
            }
        }
    };
}

yes_no!(
    /// Whether [`Vocab::tokenize`] adds the special tokens the model asks for
    /// (BOS at the start, EOS at the end for some models). A prompt that
    /// starts a sequence wants them; text appended to a sequence does not.
    AddSpecial
);
yes_no!(
    /// Whether [`Vocab::tokenize`] turns special-token text (`<|im_start|>`,
    /// `<|eot_id|>`) into those tokens. Chat-template output needs it; text a
    /// user typed should not get it (it could inject control tokens).
    ParseSpecial
);
yes_no!(
    /// Whether control tokens (EOS, `<|im_end|>`, ...) are rendered as their
    /// text by [`Vocab::token_to_piece`] and [`Vocab::detokenize`] (`No`:
    /// they render as nothing).
    RenderSpecial
);
yes_no!(
    /// Whether [`Vocab::detokenize`] drops a leading BOS and a trailing EOS.
    RemoveSpecial
);

/// The vocabulary of a [`Model`](crate::Model), borrowed from it.
#[derive(Clone, Copy)]
pub struct Vocab<'m> {
    ptr: *const sys::llama_vocab,
    n_tokens: i32,
    _model: PhantomData<&'m crate::Model>,
}

// SAFETY: a vocabulary is immutable after load; llama.cpp only reads it.
unsafe impl Send for Vocab<'_> {}
// SAFETY: as above.
unsafe impl Sync for Vocab<'_> {}

impl std::fmt::Debug for Vocab<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab").field("n_tokens", &self.n_tokens).field("type", &self.vocab_type()).finish()
    }
}

impl<'m> Vocab<'m> {
    pub(crate) fn new(ptr: *const sys::llama_vocab) -> Vocab<'m> {
        // SAFETY: ptr comes from llama_model_get_vocab of a live model.
        let (n_tokens, no_vocab) =
            unsafe { (sys::llama_vocab_n_tokens(ptr), sys::llama_vocab_type(ptr) == sys::LLAMA_VOCAB_TYPE_NONE) };
        // A model whose tokenizer is none/no_vocab still has its token list,
        // but every per-token call of llama.cpp asserts on it
        // (`llama-vocab.cpp:3192-3249`): no id is valid then.
        let n_tokens = if no_vocab { 0 } else { n_tokens };
        Vocab { ptr, n_tokens, _model: PhantomData }
    }

    pub(crate) fn as_ptr(&self) -> *const sys::llama_vocab {
        self.ptr
    }

    /// Number of tokens; valid ids are `0..n_tokens` (none for a model
    /// without a tokenizer, [`VocabType::None`]).
    pub fn n_tokens(&self) -> i32 {
        self.n_tokens
    }

    /// The tokenizer family.
    pub fn vocab_type(&self) -> VocabType {
        // SAFETY: live vocab.
        match unsafe { sys::llama_vocab_type(self.ptr) } {
            sys::LLAMA_VOCAB_TYPE_NONE => VocabType::None,
            sys::LLAMA_VOCAB_TYPE_SPM => VocabType::Spm,
            sys::LLAMA_VOCAB_TYPE_BPE => VocabType::Bpe,
            sys::LLAMA_VOCAB_TYPE_WPM => VocabType::Wpm,
            sys::LLAMA_VOCAB_TYPE_UGM => VocabType::Ugm,
            sys::LLAMA_VOCAB_TYPE_RWKV => VocabType::Rwkv,
            other => VocabType::Other(other),
        }
    }

    /// Checks that `token` is a valid id of this vocabulary.
    pub fn check(&self, token: Token) -> Result<()> {
        if token.0 < 0 || token.0 >= self.n_tokens {
            Err(Error::InvalidToken { token: token.0, n_vocab: self.n_tokens })
        } else {
            Ok(())
        }
    }

    fn special(&self, f: unsafe extern "C" fn(*const sys::llama_vocab) -> sys::llama_token) -> Option<Token> {
        // SAFETY: `f` is one of the llama_vocab_* special-token getters, which
        // only read the live vocab.
        let t = unsafe { f(self.ptr) };
        (t >= 0 && t < self.n_tokens).then_some(Token(t))
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<Token> {
        self.special(sys::llama_vocab_bos)
    }
    /// End-of-sequence token.
    pub fn eos(&self) -> Option<Token> {
        self.special(sys::llama_vocab_eos)
    }
    /// End-of-turn token.
    pub fn eot(&self) -> Option<Token> {
        self.special(sys::llama_vocab_eot)
    }
    /// Newline token.
    pub fn nl(&self) -> Option<Token> {
        self.special(sys::llama_vocab_nl)
    }
    /// Padding token.
    pub fn pad(&self) -> Option<Token> {
        self.special(sys::llama_vocab_pad)
    }
    /// Separator token.
    pub fn sep(&self) -> Option<Token> {
        self.special(sys::llama_vocab_sep)
    }

    /// Whether tokenize with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        // SAFETY: live vocab.
        unsafe { sys::llama_vocab_get_add_bos(self.ptr) }
    }

    /// Whether tokenize with `add_special` appends EOS.
    pub fn add_eos(&self) -> bool {
        // SAFETY: live vocab.
        unsafe { sys::llama_vocab_get_add_eos(self.ptr) }
    }

    /// The special tokens tokenize with `add_special` inserts must exist:
    /// llama.cpp asserts they do (`llama-vocab.cpp:3477-3663`). An id in the
    /// file outside the vocabulary is dropped with only a warning, and the
    /// defaults of the tokenizer family may be outside a small vocabulary.
    fn check_special_tokens(&self) -> Result<()> {
        let wpm = self.vocab_type() == VocabType::Wpm;
        let need = [
            ("BOS", "tokenizer.ggml.bos_token_id", wpm || self.add_bos(), self.bos()),
            ("EOS", "tokenizer.ggml.eos_token_id", !wpm && self.add_eos(), self.eos()),
            ("separator", "tokenizer.ggml.seperator_token_id", wpm, self.sep()),
        ];
        match need.into_iter().find(|&(_, _, needed, token)| needed && token.is_none()) {
            Some((what, key, _, _)) => Err(Error::Tokenize {
                message: format!(
                    "the model adds a {what} token to tokenized text but has none ({key} is missing or outside the \
                     vocabulary): tokenize with add_special = false"
                ),
            }),
            None => Ok(()),
        }
    }

    /// True if `token` ends generation (EOS, EOT, ...); false for ids outside
    /// the vocabulary.
    pub fn is_eog(&self, token: Token) -> bool {
        // SAFETY: id checked against the vocabulary first.
        self.check(token).is_ok() && unsafe { sys::llama_vocab_is_eog(self.ptr, token.0) }
    }

    /// True if `token` is a control token; false for ids outside the vocabulary.
    pub fn is_control(&self, token: Token) -> bool {
        // SAFETY: id checked against the vocabulary first.
        self.check(token).is_ok() && unsafe { sys::llama_vocab_is_control(self.ptr, token.0) }
    }

    /// The token's text as stored in the vocabulary (e.g. `▁the`, `<0x0A>`).
    pub fn token_text(&self, token: Token) -> Result<String> {
        self.check(token)?;
        // SAFETY: id checked; the string is owned by the vocab and copied.
        Ok(unsafe { string_from_ptr(sys::llama_vocab_get_text(self.ptr, token.0)) })
    }

    /// The token's score.
    pub fn token_score(&self, token: Token) -> Result<f32> {
        self.check(token)?;
        // SAFETY: id checked.
        Ok(unsafe { sys::llama_vocab_get_score(self.ptr, token.0) })
    }

    /// Tokenizes `text`. `add_special` adds BOS/EOS as the model asks;
    /// `parse_special` turns special-token text (e.g. `<|eot_id|>`) into
    /// special tokens instead of plain text.
    pub fn tokenize(&self, text: &str, add_special: AddSpecial, parse_special: ParseSpecial) -> Result<Vec<Token>> {
        let mut out = Vec::new();
        self.tokenize_into(text, add_special, parse_special, &mut out)?;
        Ok(out)
    }

    /// As [`tokenize`](Self::tokenize), appending to `out` (no allocation when
    /// it has room).
    pub fn tokenize_into(
        &self,
        text: &str,
        add_special: AddSpecial,
        parse_special: ParseSpecial,
        out: &mut Vec<Token>,
    ) -> Result<()> {
        if self.vocab_type() == VocabType::None {
            // llama.cpp creates no tokenizer for such a model and aborts in
            // tokenize (`llama-vocab.cpp:3456`).
            return Err(Error::Tokenize {
                message: "the model has no vocabulary (tokenizer.ggml.model is none/no_vocab)".into(),
            });
        }
        if add_special.yes() {
            self.check_special_tokens()?;
        }
        let len = i32::try_from(text.len()).map_err(|_| Error::Tokenize {
            message: format!("text of {} bytes is longer than i32::MAX", text.len()),
        })?;
        let start = out.len();
        let mut room = text.len() + 2;
        for _ in 0..2 {
            try_resize(out, start + room, Token(0), "token buffer")?;
            let mut n = 0i32;
            // SAFETY: text/len describe valid UTF-8 bytes; the output buffer has
            // `room` writable tokens (Token is repr(transparent) over i32);
            // the shim catches exceptions.
            let status = unsafe {
                sys::llama_rs_tokenize(
                    self.ptr,
                    text.as_ptr().cast(),
                    len,
                    out.as_mut_ptr().add(start).cast(),
                    room.min(i32::MAX as usize) as i32,
                    add_special.yes(),
                    parse_special.yes(),
                    &mut n,
                )
            };
            if let Err(e) = check_shim("llama_tokenize", status) {
                out.truncate(start);
                return Err(e);
            }
            match written(n, room) {
                Written::Fits(n) => {
                    out.truncate(start + n);
                    return Ok(());
                }
                Written::Grow(needed) => room = needed,
                Written::Broken => break,
            }
        }
        out.truncate(start);
        Err(Error::Tokenize { message: "llama_tokenize returned an unusable token count (more than i32::MAX?)".into() })
    }

    /// The bytes of a token's text, appended to `buf`; may be a partial UTF-8
    /// sequence (byte tokens). `special` renders control tokens as text.
    pub fn token_to_piece_into(&self, token: Token, special: RenderSpecial, buf: &mut Vec<u8>) -> Result<()> {
        self.check(token)?;
        let start = buf.len();
        let mut room = 32usize;
        loop {
            try_resize(buf, start + room, 0, "piece buffer")?;
            let mut n = 0i32;
            // SAFETY: token checked; the buffer has `room` writable bytes;
            // the shim catches exceptions.
            let status = unsafe {
                sys::llama_rs_token_to_piece(
                    self.ptr,
                    token.0,
                    buf.as_mut_ptr().add(start).cast(),
                    room as i32,
                    0,
                    special.yes(),
                    &mut n,
                )
            };
            if let Err(e) = check_shim("llama_token_to_piece", status) {
                buf.truncate(start);
                return Err(e);
            }
            match written(n, room) {
                Written::Fits(n) => {
                    buf.truncate(start + n);
                    return Ok(());
                }
                Written::Grow(needed) if room <= 1 << 20 => room = needed,
                _ => {
                    buf.truncate(start);
                    return Err(Error::Tokenize { message: format!("token_to_piece failed for token {token}") });
                }
            }
        }
    }

    /// The bytes of a token's text (see [`token_to_piece_into`](Self::token_to_piece_into)).
    pub fn token_to_piece(&self, token: Token, special: RenderSpecial) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.token_to_piece_into(token, special, &mut v)?;
        Ok(v)
    }

    /// Turns tokens back into text (invalid UTF-8 replaced by U+FFFD).
    /// `remove_special` drops BOS/EOS; `unparse_special` renders special
    /// tokens as their text.
    pub fn detokenize(
        &self,
        tokens: &[Token],
        remove_special: RemoveSpecial,
        unparse_special: RenderSpecial,
    ) -> Result<String> {
        for &t in tokens {
            self.check(t)?;
        }
        let n_tokens = i32::try_from(tokens.len())
            .map_err(|_| Error::Tokenize { message: format!("{} tokens is more than i32::MAX", tokens.len()) })?;
        let mut buf = Vec::new();
        try_resize(&mut buf, tokens.len().saturating_mul(8).saturating_add(16), 0, "text buffer")?;
        for _ in 0..2 {
            let mut n = 0i32;
            // SAFETY: every id checked; buffer of buf.len() writable bytes
            // (capped to i32::MAX, never negative); shim catches exceptions.
            let status = unsafe {
                sys::llama_rs_detokenize(
                    self.ptr,
                    tokens.as_ptr().cast(),
                    n_tokens,
                    buf.as_mut_ptr().cast(),
                    buf.len().min(i32::MAX as usize) as i32,
                    remove_special.yes(),
                    unparse_special.yes(),
                    &mut n,
                )
            };
            check_shim("llama_detokenize", status)?;
            match written(n, buf.len()) {
                Written::Fits(n) => {
                    buf.truncate(n);
                    return Ok(
                        String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
                    );
                }
                Written::Grow(needed) => try_resize(&mut buf, needed, 0, "text buffer")?,
                Written::Broken => break,
            }
        }
        Err(Error::Tokenize {
            message: "llama_detokenize returned an unusable length (text longer than i32::MAX?)".into(),
        })
    }
}
