//! Streaming text generation on sequence 0 of a [`Context`].
//!
//! ```no_run
//! # fn f() -> llama_rs::Result<()> {
//! use llama_rs::{ContextParams, GenerateParams, Model, Sampler};
//! let model = Model::load("model.gguf")?;
//! let mut ctx = model.new_context(ContextParams::default().n_ctx(2048))?;
//! let mut sampler = Sampler::builder(&model).top_k(40).temp(0.8).dist(42).build()?;
//! let params = GenerateParams::default().max_tokens(128).stop_string("\n\n");
//! let mut generation = ctx.generate(&mut sampler, "Once upon a time", params)?;
//! for piece in &mut generation {
//!     print!("{}", piece?.text);
//! }
//! println!("\n{:?}", generation.stats());
//! # Ok(()) }
//! ```
//!
//! # Where generation continues
//!
//! The prompt is decoded after what sequence 0 already holds in the KV cache
//! (its largest position + 1), so a second call continues the conversation.
//! Clear the cache between unrelated prompts ([`Context::clear_kv`], or
//! [`GenerateParams::clear_kv`]). The last sampled token (the one that ended
//! generation, or the last one at `max_tokens`/context full) is not decoded
//! into the cache.

use crate::batch::{Batch, Pos};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::sampler::Sampler;
use crate::vocab::{AddSpecial, ParseSpecial, RenderSpecial, Token};
use std::time::{Duration, Instant};

/// What the prompt is: text to tokenize, or tokens.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'a> {
    /// Text, tokenized with [`GenerateParams::add_special`] and
    /// [`GenerateParams::parse_special`].
    Text(&'a str),
    /// Tokens, decoded as they are.
    Tokens(&'a [Token]),
}

impl<'a> From<&'a str> for Prompt<'a> {
    fn from(s: &'a str) -> Self {
        Prompt::Text(s)
    }
}

impl<'a> From<&'a String> for Prompt<'a> {
    fn from(s: &'a String) -> Self {
        Prompt::Text(s)
    }
}

impl<'a> From<&'a [Token]> for Prompt<'a> {
    fn from(t: &'a [Token]) -> Self {
        Prompt::Tokens(t)
    }
}

impl<'a> From<&'a Vec<Token>> for Prompt<'a> {
    fn from(t: &'a Vec<Token>) -> Self {
        Prompt::Tokens(t)
    }
}

/// Settings of one [`Context::generate`] call: a setter for each.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most tokens to sample (default 256). 0 decodes the prompt only.
    max_tokens: usize,
    /// Generation stops when the text contains one of these; the stop string
    /// and anything after it are not emitted. Text that could be the start of
    /// one is held back until it is known not to be.
    stop_strings: Vec<String>,
    /// Generation stops when one of these tokens is sampled (its text is not
    /// emitted). End-of-generation tokens (EOS, EOT, ...) always stop.
    stop_tokens: Vec<Token>,
    /// Add BOS/EOS to a text prompt as the model asks. `None` (the default):
    /// only when sequence 0 is empty, so that a prompt continuing a
    /// conversation does not get a second BOS in the middle.
    add_special: Option<AddSpecial>,
    /// Parse special-token text (e.g. `<|im_start|>`) in a text prompt into
    /// special tokens (default yes: chat-template output needs it).
    parse_special: ParseSpecial,
    /// Render control tokens in the output as their text (default no).
    special: RenderSpecial,
    /// Clear the whole KV cache before decoding the prompt (default false:
    /// continue after what sequence 0 holds).
    clear_kv: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            stop_strings: Vec::new(),
            stop_tokens: Vec::new(),
            add_special: None,
            parse_special: ParseSpecial::Yes,
            special: RenderSpecial::No,
            clear_kv: false,
        }
    }
}

impl GenerateParams {
    /// Most tokens to sample (default 256). 0 decodes the prompt only.
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }
    /// Adds a stop string.
    ///
    /// Generation stops when the text contains one of these; the stop string
    /// and anything after it are not emitted. Text that could be the start of
    /// one is held back until it is known not to be.
    pub fn stop_string(mut self, s: impl Into<String>) -> Self {
        self.stop_strings.push(s.into());
        self
    }
    /// Adds a stop token.
    ///
    /// Generation stops when one of these tokens is sampled (its text is not
    /// emitted). End-of-generation tokens (EOS, EOT, ...) always stop.
    pub fn stop_token(mut self, t: Token) -> Self {
        self.stop_tokens.push(t);
        self
    }
    /// Add BOS/EOS to a text prompt as the model asks. `None` (the default):
    /// only when sequence 0 is empty, so that a prompt continuing a
    /// conversation does not get a second BOS in the middle.
    pub fn add_special(mut self, add: Option<AddSpecial>) -> Self {
        self.add_special = add;
        self
    }
    /// Parse special-token text (e.g. `<|im_start|>`) in a text prompt into
    /// special tokens (default yes: chat-template output needs it).
    pub fn parse_special(mut self, parse: ParseSpecial) -> Self {
        self.parse_special = parse;
        self
    }
    /// Render control tokens in the output as their text (default no).
    pub fn special(mut self, render: RenderSpecial) -> Self {
        self.special = render;
        self
    }
    /// Clear the whole KV cache before decoding the prompt (default false:
    /// continue after what sequence 0 holds).
    pub fn clear_kv(mut self, yes: bool) -> Self {
        self.clear_kv = yes;
        self
    }
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    Eog,
    /// One of the stop tokens ([`GenerateParams::stop_token`]) was sampled.
    StopToken(Token),
    /// The text contained this stop string.
    StopString(String),
    /// [`GenerateParams::max_tokens`] tokens were sampled.
    MaxTokens,
    /// The context has no room for another token.
    ContextFull,
}

/// Counters of a finished generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens decoded.
    pub prompt_tokens: usize,
    /// Tokens sampled, including a final end-of-generation or stop token.
    pub generated_tokens: usize,
    /// Prompt decoding speed, tokens/s.
    pub prompt_tps: f64,
    /// Generation speed (sampling + decoding), tokens/s after the prompt.
    pub generation_tps: f64,
    /// From the `generate` call to the first sampled token (includes prompt
    /// decoding); zero when nothing was sampled.
    pub time_to_first_token: Duration,
    /// Why it ended.
    pub stop_reason: StopReason,
}

/// One step of the output: the sampled token and the text it completes.
///
/// `text` is empty while a multi-byte character is incomplete (byte-fallback
/// tokens) or while the text might be the start of a stop string; it is then
/// emitted with a later piece. When generation ends on an end-of-generation
/// or stop token while text was held back, one last piece carries that token
/// and the held-back text (never the stop token's own text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The sampled token.
    pub token: Token,
    /// Text, always whole UTF-8 characters.
    pub text: String,
}

/// Assembles pieces into whole UTF-8 characters and holds back text that may
/// start a stop string. Allocation-free except for the emitted `String`s.
#[derive(Debug, Default)]
pub(crate) struct TextAssembler {
    /// Bytes not emitted yet.
    pending: Vec<u8>,
    stop_strings: Vec<String>,
}

/// What [`TextAssembler::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Assembled {
    /// Text that is safe to emit (may be empty).
    Text(String),
    /// A stop string (index into the list) was found; the text before it.
    Stop(usize, String),
}

/// Length of the prefix of `buf` made of complete characters (or invalid
/// sequences, which are replaced later), leaving out a trailing incomplete
/// UTF-8 sequence that later bytes may complete.
fn complete_len(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match std::str::from_utf8(&buf[i..]) {
            Ok(_) => return buf.len(),
            Err(e) => match e.error_len() {
                None => return i + e.valid_up_to(),
                Some(n) => i += e.valid_up_to() + n,
            },
        }
    }
}

impl TextAssembler {
    pub(crate) fn new(stop_strings: Vec<String>) -> TextAssembler {
        let cap = stop_strings.iter().map(|s| s.len()).max().unwrap_or(0) + 64;
        TextAssembler { pending: Vec::with_capacity(cap), stop_strings }
    }

    /// Stop string number `i`.
    pub(crate) fn stop_string(&self, i: usize) -> &str {
        &self.stop_strings[i]
    }

    /// The buffer to append a token's bytes to, before calling `push`.
    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.pending
    }

    /// Processes the bytes appended since the last call. `last`: no more
    /// bytes will come, so flush everything (an incomplete character becomes
    /// U+FFFD).
    pub(crate) fn push(&mut self, last: bool) -> Assembled {
        let mut n = if last { self.pending.len() } else { complete_len(&self.pending) };
        if std::str::from_utf8(&self.pending[..n]).is_err() {
            // Invalid bytes (rare): replace them in place, once.
            let fixed = String::from_utf8_lossy(&self.pending[..n]).into_owned();
            self.pending.splice(..n, fixed.bytes());
            n = fixed.len();
        }
        let text = std::str::from_utf8(&self.pending[..n]).expect("made valid above");

        // The earliest stop string occurrence wins.
        let mut found: Option<(usize, usize)> = None;
        for (i, s) in self.stop_strings.iter().enumerate() {
            if let Some(pos) = text.find(s.as_str()) {
                if found.is_none_or(|(p, _)| pos < p) {
                    found = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = found {
            let out = text[..pos].to_string();
            self.pending.clear();
            return Assembled::Stop(i, out);
        }

        // Hold back the longest suffix that is a proper prefix of a stop
        // string (shorter such suffixes are inside it).
        let hold = if last {
            0
        } else {
            let mut hold = 0;
            for s in &self.stop_strings {
                let max = s.len().saturating_sub(1).min(text.len());
                for k in (hold + 1..=max).rev() {
                    if text.is_char_boundary(text.len() - k)
                        && s.as_bytes().starts_with(&text.as_bytes()[text.len() - k..])
                    {
                        hold = k;
                        break;
                    }
                }
            }
            hold
        };
        let emit = n - hold;
        let out = text[..emit].to_string();
        self.pending.drain(..emit);
        Assembled::Text(out)
    }
}

/// A running generation: an iterator of [`Piece`]s. Created by
/// [`Context::generate`]; the prompt is already decoded. After it returns
/// `None`, [`stats`](Self::stats) has the counters. An `Err` item ends it.
pub struct Generation<'g, 'm, 's> {
    ctx: &'g mut Context<'m>,
    sampler: &'g mut Sampler<'s>,
    batch: Batch,
    text: TextAssembler,
    stop_tokens: Vec<Token>,
    special: RenderSpecial,
    max_tokens: usize,
    n_ctx: Pos,
    n_past: Pos,
    /// Row of the last decode to sample from.
    logits_row: i32,
    /// Sampled token not yet decoded.
    to_decode: Option<Token>,
    generated: usize,
    prompt_tokens: usize,
    started: Instant,
    prompt_done: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    finished: bool,
    stats: Option<GenerationStats>,
}

impl std::fmt::Debug for Generation<'_, '_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("n_past", &self.n_past)
            .field("generated", &self.generated)
            .field("finished", &self.finished)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'m> Context<'m> {
    /// Decodes `prompt` on sequence 0 (in chunks of n_batch tokens, after what
    /// the sequence already holds) and returns an iterator over the generated
    /// pieces, sampled with `sampler` (which accepts each token; prompt tokens
    /// are not fed to it).
    ///
    /// Errors: an empty prompt, a prompt that does not fit in the context, an
    /// invalid token id, an empty stop string, a sampler for another
    /// vocabulary, or a decode failure.
    pub fn generate<'g, 's, 'p>(
        &'g mut self,
        sampler: &'g mut Sampler<'s>,
        prompt: impl Into<Prompt<'p>>,
        params: GenerateParams,
    ) -> Result<Generation<'g, 'm, 's>> {
        let started = Instant::now();
        if params.clear_kv {
            self.clear_kv(false);
        }
        let n_past = self.seq_pos_max(0)?.map_or(0, |p| p + 1);
        let vocab = self.vocab();
        if sampler.n_vocab() != vocab.n_tokens() {
            return Err(Error::Sampler {
                message: format!(
                    "the sampler was built for {} tokens, the context's vocabulary has {}",
                    sampler.n_vocab(),
                    vocab.n_tokens()
                ),
            });
        }
        if let Some(i) = params.stop_strings.iter().position(|s| s.is_empty()) {
            return Err(Error::invalid("stop string", i, "stop strings must not be empty"));
        }
        for &t in &params.stop_tokens {
            vocab.check(t)?;
        }
        let owned;
        let tokens: &[Token] = match prompt.into() {
            Prompt::Tokens(t) => t,
            Prompt::Text(s) => {
                let add = params.add_special.unwrap_or(AddSpecial::from(n_past == 0));
                owned = vocab.tokenize(s, add, params.parse_special)?;
                &owned
            }
        };
        if tokens.is_empty() {
            return Err(Error::invalid("prompt", "(empty)", "needs at least one token to predict from"));
        }
        for &t in tokens {
            vocab.check(t)?;
        }
        let n_ctx = self.n_ctx_seq() as usize;
        if n_past as usize + tokens.len() > n_ctx {
            return Err(Error::BatchInvalid {
                n_tokens: tokens.len(),
                reason: format!(
                    "the prompt does not fit: {} tokens after {n_past} already in the context of n_ctx = {n_ctx}",
                    tokens.len()
                ),
            });
        }
        // Penalties and DRY see the prompt (the grammar does not).
        sampler.accept_prompt(tokens)?;

        let n_batch = self.n_batch() as usize;
        let mut batch = Batch::new(n_batch, 1)?;
        let mut pos = n_past;
        let mut logits_row = 0;
        let n_chunks = tokens.len().div_ceil(n_batch);
        for (i, chunk) in tokens.chunks(n_batch).enumerate() {
            batch.clear();
            batch.add_sequence(chunk, pos, 0, i + 1 == n_chunks)?;
            self.decode(&mut batch)?;
            pos += chunk.len() as Pos;
            logits_row = chunk.len() as i32 - 1;
        }
        let prompt_done = Instant::now();

        let mut generation = Generation {
            ctx: self,
            sampler,
            batch,
            text: TextAssembler::new(params.stop_strings),
            stop_tokens: params.stop_tokens,
            special: params.special,
            max_tokens: params.max_tokens,
            n_ctx: n_ctx.min(i32::MAX as usize) as Pos,
            n_past: pos,
            logits_row,
            to_decode: None,
            generated: 0,
            prompt_tokens: tokens.len(),
            started,
            prompt_done,
            first_token: None,
            last_token: None,
            finished: false,
            stats: None,
        };
        if generation.max_tokens == 0 {
            generation.finish(StopReason::MaxTokens);
        }
        Ok(generation)
    }

    /// Runs [`generate`](Self::generate) to the end and returns the text and
    /// the counters.
    pub fn generate_text<'p>(
        &mut self,
        sampler: &mut Sampler<'_>,
        prompt: impl Into<Prompt<'p>>,
        params: GenerateParams,
    ) -> Result<(String, GenerationStats)> {
        let mut generation = self.generate(sampler, prompt, params)?;
        let mut text = String::new();
        for piece in &mut generation {
            text.push_str(&piece?.text);
        }
        let stats = generation.stats().cloned().expect("a generation that ended without error has stats");
        Ok((text, stats))
    }
}

impl Generation<'_, '_, '_> {
    /// The counters, once the iteration has ended (without an error).
    pub fn stats(&self) -> Option<&GenerationStats> {
        self.stats.as_ref()
    }

    /// Tokens of sequence 0 now in the KV cache (the next free position).
    pub fn n_past(&self) -> Pos {
        self.n_past
    }

    fn finish(&mut self, stop_reason: StopReason) {
        self.finished = true;
        let secs = |d: Duration| d.as_secs_f64();
        let prompt_time = secs(self.prompt_done - self.started);
        let gen_time = self.last_token.map_or(0.0, |t| secs(t - self.prompt_done));
        let rate = |n: usize, t: f64| if n > 0 && t > 0.0 { n as f64 / t } else { 0.0 };
        self.stats = Some(GenerationStats {
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.generated,
            prompt_tps: rate(self.prompt_tokens, prompt_time),
            generation_tps: rate(self.generated, gen_time),
            time_to_first_token: self.first_token.map_or(Duration::ZERO, |t| t - self.started),
            stop_reason,
        });
    }

    fn fail(&mut self, e: Error) -> Option<Result<Piece>> {
        self.finished = true;
        Some(Err(e))
    }

    /// Ends on a stop token: flushes held-back text into a last piece.
    fn end_on_token(&mut self, token: Token, reason: StopReason) -> Option<Result<Piece>> {
        let text = match self.text.push(true) {
            Assembled::Text(t) | Assembled::Stop(_, t) => t,
        };
        self.finish(reason);
        (!text.is_empty()).then_some(Ok(Piece { token, text }))
    }
}

impl Iterator for Generation<'_, '_, '_> {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Result<Piece>> {
        if self.finished {
            return None;
        }
        if let Some(t) = self.to_decode.take() {
            self.batch.clear();
            if let Err(e) = self.batch.add(t, self.n_past, &[0], true) {
                return self.fail(e);
            }
            if let Err(e) = self.ctx.decode(&mut self.batch) {
                return self.fail(e);
            }
            self.n_past += 1;
            self.logits_row = 0;
        }

        let token = match self.sampler.sample(self.ctx, self.logits_row) {
            Ok(t) => t,
            Err(e) => return self.fail(e),
        };
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.generated += 1;

        if self.stop_tokens.contains(&token) {
            return self.end_on_token(token, StopReason::StopToken(token));
        }
        if self.ctx.vocab().is_eog(token) {
            return self.end_on_token(token, StopReason::Eog);
        }

        // No room to decode this token: it is the last one.
        let context_full = self.n_past >= self.n_ctx;
        let last = self.generated >= self.max_tokens || context_full;
        let special = self.special;
        if let Err(e) = self.ctx.vocab().token_to_piece_into(token, special, self.text.buffer()) {
            return self.fail(e);
        }
        match self.text.push(last) {
            Assembled::Stop(i, text) => {
                let stop = self.text.stop_strings[i].clone();
                self.finish(StopReason::StopString(stop));
                Some(Ok(Piece { token, text }))
            }
            Assembled::Text(text) => {
                if last {
                    self.finish(if context_full { StopReason::ContextFull } else { StopReason::MaxTokens });
                } else {
                    self.to_decode = Some(token);
                }
                Some(Ok(Piece { token, text }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds byte pieces, returns what each push emitted and the final flush.
    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<Assembled>, String) {
        let mut a = TextAssembler::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            a.buffer().extend_from_slice(p);
            let r = a.push(false);
            let stop = matches!(r, Assembled::Stop(..));
            out.push(r);
            if stop {
                return (out, String::new());
            }
        }
        let rest = match a.push(true) {
            Assembled::Text(t) | Assembled::Stop(_, t) => t,
        };
        (out, rest)
    }

    fn texts(v: &[Assembled]) -> Vec<&str> {
        v.iter()
            .map(|a| match a {
                Assembled::Text(t) | Assembled::Stop(_, t) => t.as_str(),
            })
            .collect()
    }

    #[test]
    fn utf8_split_across_byte_tokens_is_kept_whole() {
        let s = "é😀";
        let pieces: Vec<&[u8]> = s.as_bytes().chunks(1).collect();
        let (out, rest) = run(&[], &pieces);
        // é = 2 bytes, 😀 = 4 bytes: text appears only when a character completes.
        assert_eq!(texts(&out), ["", "é", "", "", "", "😀"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn incomplete_utf8_at_the_end_becomes_replacement_char() {
        let (out, rest) = run(&[], &[b"a", &[0xF0, 0x9F]]);
        assert_eq!(texts(&out), ["a", ""]);
        assert_eq!(rest, "\u{FFFD}");
    }

    #[test]
    fn invalid_bytes_are_replaced_not_held() {
        let (out, _) = run(&[], &[&[0xFF], b"b"]);
        assert_eq!(texts(&out), ["\u{FFFD}", "b"]);
    }

    #[test]
    fn stop_string_across_tokens_is_not_emitted() {
        let (out, _) = run(&["</end>"], &[b"hello <", b"/e", b"nd> tail"]);
        assert_eq!(texts(&out), ["hello ", "", ""]);
        assert_eq!(out.last(), Some(&Assembled::Stop(0, String::new())));
    }

    #[test]
    fn text_before_stop_in_same_piece_is_emitted() {
        let (out, _) = run(&["STOP"], &[b"abc", b"deSTOPxyz"]);
        assert_eq!(out, [Assembled::Text("abc".into()), Assembled::Stop(0, "de".into())]);
    }

    #[test]
    fn false_start_is_released() {
        let (out, rest) = run(&["<end>"], &[b"a <e", b"x", b"y"]);
        assert_eq!(texts(&out), ["a ", "<ex", "y"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        let (out, rest) = run(&["###"], &[b"x#", b"#"]);
        assert_eq!(texts(&out), ["x", ""]);
        assert_eq!(rest, "##");
    }

    #[test]
    fn earliest_stop_string_wins() {
        let (out, _) = run(&["cd", "b"], &[b"abcd"]);
        assert_eq!(out, [Assembled::Stop(1, "a".into())]);
    }

    #[test]
    fn multibyte_stop_string_prefix_is_held() {
        let (out, _) = run(&["é!"], &[b"x", &[0xC3], &[0xA9], b"!"]);
        assert_eq!(texts(&out), ["x", "", "", ""]);
        assert!(matches!(out.last(), Some(Assembled::Stop(0, _))));
    }
}
