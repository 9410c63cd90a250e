//! Token sampling: a chain of llama.cpp's built-in samplers, checked before it
//! reaches C.
//!
//! ```no_run
//! # fn f() -> llama_rs::Result<()> {
//! let model = llama_rs::Model::load("model.gguf")?;
//! let mut sampler = llama_rs::Sampler::builder(&model).top_k(40).top_p(0.95, 1).temp(0.8).dist(42).build()?;
//! # Ok(()) }
//! ```
//!
//! # The contract of `sample` and `accept`
//!
//! [`Sampler::sample`] picks a token from the logits of one output row **and
//! accepts it** (it updates the penalties history, the grammar state, the
//! mirostat state, ...), exactly like llama.cpp's `llama_sampler_sample`. Do
//! not call [`Sampler::accept`] with a token that `sample` returned: that would
//! count it twice. `accept` is for tokens that did not come from `sample`:
//! tokens chosen by the caller (forced text, a token from another sampler),
//! or history to feed the penalties.

use crate::backend::{clear_log_error, log_error_or};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::ffi::{check_shim, cstring, try_with_capacity};
use crate::model::{Model, ModelRef};
use crate::vocab::{RenderSpecial, Token};
use llama_sys as sys;
use std::ffi::CString;
use std::os::raw::c_char;
use std::ptr::NonNull;
use std::sync::Arc;

/// Seed value that asks llama.cpp for a random seed (`LLAMA_DEFAULT_SEED`).
pub const RANDOM_SEED: u32 = sys::LLAMA_DEFAULT_SEED;

/// Most history tokens a penalties or DRY sampler may look back on: llama.cpp
/// allocates that many entries up front (and an allocation failure there
/// would abort the process).
pub const MAX_PENALTY_LAST_N: i32 = 1 << 20;

/// One step of the chain, as configured; everything is checked in `build`.
#[derive(Clone, Debug)]
enum Step {
    Greedy,
    Dist { seed: u32 },
    TopK { k: i32 },
    TopP { p: f32, min_keep: usize },
    MinP { p: f32, min_keep: usize },
    Typical { p: f32, min_keep: usize },
    Temp { t: f32 },
    TempExt { t: f32, delta: f32, exponent: f32 },
    Xtc { p: f32, t: f32, min_keep: usize, seed: u32 },
    TopNSigma { n: f32 },
    Mirostat { seed: u32, tau: f32, eta: f32, m: i32 },
    MirostatV2 { seed: u32, tau: f32, eta: f32 },
    Penalties { last_n: i32, repeat: f32, freq: f32, present: f32 },
    Dry { multiplier: f32, base: f32, allowed_length: i32, penalty_last_n: i32, seq_breakers: Vec<String> },
    LogitBias { biases: Vec<(Token, f32)> },
    Grammar { text: String, root: String },
    GrammarLazy { text: String, root: String, patterns: Vec<String>, tokens: Vec<Token> },
    AdaptiveP { target: f32, decay: f32, seed: u32 },
    Structured(Box<crate::guidance::Structured>),
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Greedy => "greedy",
            Step::Dist { .. } => "dist",
            Step::TopK { .. } => "top_k",
            Step::TopP { .. } => "top_p",
            Step::MinP { .. } => "min_p",
            Step::Typical { .. } => "typical",
            Step::Temp { .. } => "temp",
            Step::TempExt { .. } => "temp_ext",
            Step::Xtc { .. } => "xtc",
            Step::TopNSigma { .. } => "top_n_sigma",
            Step::Mirostat { .. } => "mirostat",
            Step::MirostatV2 { .. } => "mirostat_v2",
            Step::Penalties { .. } => "penalties",
            Step::Dry { .. } => "dry",
            Step::LogitBias { .. } => "logit_bias",
            Step::Grammar { .. } => "grammar",
            Step::GrammarLazy { .. } => "grammar_lazy",
            Step::AdaptiveP { .. } => "adaptive_p",
            Step::Structured(_) => "structured",
        }
    }

    /// Samplers that pick the token (set `selected`); a chain must end in one.
    fn selects(&self) -> bool {
        matches!(
            self,
            Step::Greedy | Step::Dist { .. } | Step::Mirostat { .. } | Step::MirostatV2 { .. } | Step::AdaptiveP { .. }
        )
    }

    fn is_grammar(&self) -> bool {
        matches!(self, Step::Grammar { .. } | Step::GrammarLazy { .. } | Step::Structured(_))
    }
}

fn finite(name: &'static str, v: f32) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(name, v, "must be a finite number"))
    }
}

fn in_range(name: &'static str, v: f32, lo: f32, hi: f32) -> Result<()> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(Error::invalid(name, v, format!("must be between {lo} and {hi}")))
    }
}

fn non_negative(name: &'static str, v: f32) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(name, v, "must be finite and >= 0"))
    }
}

fn last_n(name: &'static str, v: i32) -> Result<()> {
    if (0..=MAX_PENALTY_LAST_N).contains(&v) {
        Ok(())
    } else {
        Err(Error::invalid(
            name,
            v,
            format!(
                "must be between 0 (disabled) and {MAX_PENALTY_LAST_N}: llama.cpp allocates that many entries up front"
            ),
        ))
    }
}

/// Builds a [`Sampler`]: add samplers in the order they run, end with one
/// that selects the token ([`greedy`](Self::greedy), [`dist`](Self::dist),
/// [`mirostat`](Self::mirostat), [`mirostat_v2`](Self::mirostat_v2) or
/// [`adaptive_p`](Self::adaptive_p)), then [`build`](Self::build). Setters
/// only record; every value is checked in `build`, which names the first bad one.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct SamplerBuilder<'m> {
    model: ModelRef<'m>,
    steps: Vec<Step>,
    no_perf: bool,
}

impl<'m> SamplerBuilder<'m> {
    fn push(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Picks the most likely token (selecting).
    pub fn greedy(self) -> Self {
        self.push(Step::Greedy)
    }

    /// Samples from the distribution with a seeded RNG (selecting).
    /// [`RANDOM_SEED`] asks for a random seed (read it back with [`Sampler::seed`]).
    pub fn dist(self, seed: u32) -> Self {
        self.push(Step::Dist { seed })
    }

    /// Keeps the `k` most likely tokens; `k <= 0` keeps all.
    pub fn top_k(self, k: i32) -> Self {
        self.push(Step::TopK { k })
    }

    /// Nucleus sampling: keeps the most likely tokens whose probabilities sum
    /// to at least `p` (0..=1; 1 keeps all), and at least `min_keep` tokens.
    pub fn top_p(self, p: f32, min_keep: usize) -> Self {
        self.push(Step::TopP { p, min_keep })
    }

    /// Keeps tokens with probability at least `p` (0..=1) times the most
    /// likely one's, and at least `min_keep` tokens; `p = 0` keeps all.
    pub fn min_p(self, p: f32, min_keep: usize) -> Self {
        self.push(Step::MinP { p, min_keep })
    }

    /// Locally typical sampling with mass `p` (0..=1; 1 disables), keeping at
    /// least `min_keep` tokens.
    pub fn typical(self, p: f32, min_keep: usize) -> Self {
        self.push(Step::Typical { p, min_keep })
    }

    /// Divides logits by `t`; `t <= 0` keeps only the most likely token.
    pub fn temp(self, t: f32) -> Self {
        self.push(Step::Temp { t })
    }

    /// Dynamic temperature in `[t - delta, t + delta]` by entropy, shaped by
    /// `exponent`; `delta = 0` is plain [`temp`](Self::temp).
    pub fn temp_ext(self, t: f32, delta: f32, exponent: f32) -> Self {
        self.push(Step::TempExt { t, delta, exponent })
    }

    /// Exclude Top Choices: with probability `p` (0..=1), removes the tokens
    /// above threshold `t` (0..=1; above 0.5 disables) but the least likely of
    /// them, keeping at least `min_keep` tokens.
    pub fn xtc(self, p: f32, t: f32, min_keep: usize, seed: u32) -> Self {
        self.push(Step::Xtc { p, t, min_keep, seed })
    }

    /// Top-nσ: keeps tokens whose logit is within `n` standard deviations of
    /// the maximum; `n <= 0` disables.
    pub fn top_n_sigma(self, n: f32) -> Self {
        self.push(Step::TopNSigma { n })
    }

    /// Mirostat 1.0 (selecting): target surprise `tau` (>= 0), learning rate
    /// `eta` (>= 0), `m` (>= 1) tokens to estimate s_hat (100 in the paper).
    /// The vocabulary size is the model's.
    pub fn mirostat(self, seed: u32, tau: f32, eta: f32, m: i32) -> Self {
        self.push(Step::Mirostat { seed, tau, eta, m })
    }

    /// Mirostat 2.0 (selecting): target surprise `tau` (>= 0), learning rate
    /// `eta` (>= 0).
    pub fn mirostat_v2(self, seed: u32, tau: f32, eta: f32) -> Self {
        self.push(Step::MirostatV2 { seed, tau, eta })
    }

    /// Repetition penalties over the last `last_n` accepted tokens (0
    /// disables): `repeat` (> 0, 1 = off) divides positive logits, `freq` and
    /// `present` (finite, 0 = off) subtract per occurrence / once.
    pub fn penalties(self, last_n: i32, repeat: f32, freq: f32, present: f32) -> Self {
        self.push(Step::Penalties { last_n, repeat, freq, present })
    }

    /// DRY ("don't repeat yourself"): penalises extending a repeated sequence
    /// longer than `allowed_length` (>= 0) within the last `penalty_last_n`
    /// tokens (0 disables) by `multiplier * base^(length - allowed_length)`
    /// (`multiplier` >= 0, 0 disables; `base` >= 1). `seq_breakers` (e.g.
    /// `["\n", ":", "\"", "*"]`) restart the repetition count; llama.cpp
    /// truncates each to 40 characters.
    pub fn dry(
        self,
        multiplier: f32,
        base: f32,
        allowed_length: i32,
        penalty_last_n: i32,
        seq_breakers: &[&str],
    ) -> Self {
        let seq_breakers = seq_breakers.iter().map(|s| s.to_string()).collect();
        self.push(Step::Dry { multiplier, base, allowed_length, penalty_last_n, seq_breakers })
    }

    /// Adds `bias` to the logit of each token (`f32::NEG_INFINITY` bans it).
    /// Token ids are checked against the model's vocabulary.
    pub fn logit_bias(self, biases: &[(Token, f32)]) -> Self {
        self.push(Step::LogitBias { biases: biases.to_vec() })
    }

    /// Constrains tokens to a GBNF grammar (`grammar` text, start symbol
    /// `root`, usually `"root"`). A grammar that does not parse makes `build`
    /// fail with llama.cpp's reason.
    pub fn grammar(self, grammar: &str, root: &str) -> Self {
        self.push(Step::Grammar { text: grammar.to_string(), root: root.to_string() })
    }

    /// A grammar that only applies once triggered: by a generated text
    /// matching one of `patterns` (ECMAScript regexes matched against the
    /// whole output from its start; the grammar sees the text from the first
    /// capture group) or by one of `tokens`. A bad regex makes `build` fail.
    pub fn grammar_lazy(self, grammar: &str, root: &str, patterns: &[&str], tokens: &[Token]) -> Self {
        self.push(Step::GrammarLazy {
            text: grammar.to_string(),
            root: root.to_string(),
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            tokens: tokens.to_vec(),
        })
    }

    /// Constrains the output to a JSON schema, a Lark grammar or valid tool
    /// calls, with llguidance (see [`Structured`](crate::Structured)). It is
    /// placed first in the chain, wherever it is called, so that the other
    /// samplers choose among allowed tokens only. A schema or grammar that
    /// does not compile (or uses a JSON-schema feature llguidance does not
    /// support) makes `build` fail with [`Error::Schema`] naming it.
    pub fn structured(mut self, structured: crate::guidance::Structured) -> Self {
        self.steps.insert(0, Step::Structured(Box::new(structured)));
        self
    }

    /// [`structured`](Self::structured) with a JSON schema: the output parses
    /// as JSON and validates against `schema`.
    pub fn json_schema(self, schema: serde_json::Value) -> Self {
        self.structured(crate::guidance::Structured::JsonSchema(schema))
    }

    /// Adaptive-p (selecting): favours tokens near probability `target`
    /// (0..=1; negative = plain sampling from the distribution), adapting
    /// with EMA `decay` (0..=0.99).
    pub fn adaptive_p(self, target: f32, decay: f32, seed: u32) -> Self {
        self.push(Step::AdaptiveP { target, decay, seed })
    }

    /// Turns llama.cpp's timing of the chain off (counts are still kept).
    pub fn no_perf(mut self, yes: bool) -> Self {
        self.no_perf = yes;
        self
    }

    fn check(&self, step: &Step) -> Result<()> {
        let vocab = self.model.vocab();
        match *step {
            Step::Greedy | Step::Dist { .. } | Step::TopK { .. } => Ok(()),
            // min_keep is never unsafe: llama.cpp keeps min(min_keep, size).
            Step::TopP { p, .. } => in_range("top_p p", p, 0.0, 1.0),
            Step::MinP { p, .. } => in_range("min_p p", p, 0.0, 1.0),
            Step::Typical { p, .. } => in_range("typical p", p, 0.0, 1.0),
            Step::Temp { t } => finite("temperature", t),
            Step::TempExt { t, delta, exponent } => {
                finite("temperature", t)?;
                non_negative("temp_ext delta", delta)?;
                finite("temp_ext exponent", exponent)
            }
            Step::Xtc { p, t, .. } => {
                in_range("xtc probability", p, 0.0, 1.0)?;
                in_range("xtc threshold", t, 0.0, 1.0)
            }
            Step::TopNSigma { n } => finite("top_n_sigma n", n),
            Step::Mirostat { tau, eta, m, .. } => {
                non_negative("mirostat tau", tau)?;
                non_negative("mirostat eta", eta)?;
                if m < 1 {
                    return Err(Error::invalid("mirostat m", m, "must be >= 1 (100 in the paper)"));
                }
                Ok(())
            }
            Step::MirostatV2 { tau, eta, .. } => {
                non_negative("mirostat_v2 tau", tau)?;
                non_negative("mirostat_v2 eta", eta)
            }
            Step::Penalties { last_n: n, repeat, freq, present } => {
                last_n("penalty last_n", n)?;
                if !(repeat.is_finite() && repeat > 0.0) {
                    return Err(Error::invalid("repeat penalty", repeat, "must be finite and > 0 (1 = disabled)"));
                }
                finite("frequency penalty", freq)?;
                finite("presence penalty", present)
            }
            Step::Dry { multiplier, base, allowed_length, penalty_last_n, ref seq_breakers } => {
                non_negative("dry multiplier", multiplier)?;
                if !(base.is_finite() && base >= 1.0) {
                    return Err(Error::invalid("dry base", base, "must be finite and >= 1"));
                }
                if allowed_length < 0 {
                    return Err(Error::invalid("dry allowed_length", allowed_length, "must be >= 0"));
                }
                last_n("dry penalty_last_n", penalty_last_n)?;
                for s in seq_breakers {
                    cstring("dry sequence breaker", s)?;
                }
                Ok(())
            }
            Step::LogitBias { ref biases } => {
                i32::try_from(biases.len())
                    .map_err(|_| Error::invalid("logit bias", biases.len(), "at most i32::MAX entries"))?;
                for &(t, b) in biases {
                    vocab.check(t)?;
                    if b.is_nan() {
                        return Err(Error::invalid("logit bias", b, format!("bias of token {t} is NaN")));
                    }
                }
                Ok(())
            }
            Step::Grammar { ref text, ref root } => {
                cstring("grammar", text)?;
                cstring("grammar root", root)?;
                Ok(())
            }
            Step::GrammarLazy { ref text, ref root, ref patterns, ref tokens } => {
                cstring("grammar", text)?;
                cstring("grammar root", root)?;
                for p in patterns {
                    cstring("grammar trigger pattern", p)?;
                }
                for &t in tokens {
                    vocab.check(t)?;
                }
                Ok(())
            }
            Step::Structured(_) => Ok(()),
            Step::AdaptiveP { target, decay, .. } => {
                if !(target.is_finite() && target <= 1.0) {
                    return Err(Error::invalid("adaptive_p target", target, "must be <= 1 (negative = disabled)"));
                }
                in_range("adaptive_p decay", decay, 0.0, 0.99)
            }
        }
    }

    /// Creates one llama.cpp sampler for a checked step.
    fn create(&self, step: &Step) -> Result<NonNull<sys::llama_sampler>> {
        if let Step::Structured(structured) = step {
            let s = crate::guidance::new_sampler(&self.model, structured)?;
            return NonNull::new(s).ok_or_else(|| Error::Sampler { message: "no structured-output sampler".into() });
        }
        let vocab = self.model.vocab();
        let mut out: *mut sys::llama_sampler = std::ptr::null_mut();
        clear_log_error();
        // SAFETY: in every arm, the parameters were checked by `check` against
        // what llama-sampler.cpp asserts on or divides by; the init functions
        // that can throw (grammar parsing, regexes, DRY's tokenization) go
        // through the shim; C strings live until the call returns; llama.cpp
        // copies everything it keeps.
        let status = unsafe {
            match *step {
                Step::Greedy => {
                    out = sys::llama_sampler_init_greedy();
                    0
                }
                Step::Dist { seed } => {
                    out = sys::llama_sampler_init_dist(seed);
                    0
                }
                Step::TopK { k } => {
                    out = sys::llama_sampler_init_top_k(k);
                    0
                }
                Step::TopP { p, min_keep } => {
                    out = sys::llama_sampler_init_top_p(p, min_keep);
                    0
                }
                Step::MinP { p, min_keep } => {
                    out = sys::llama_sampler_init_min_p(p, min_keep);
                    0
                }
                Step::Typical { p, min_keep } => {
                    out = sys::llama_sampler_init_typical(p, min_keep);
                    0
                }
                Step::Temp { t } => {
                    out = sys::llama_sampler_init_temp(t);
                    0
                }
                Step::TempExt { t, delta, exponent } => {
                    out = sys::llama_sampler_init_temp_ext(t, delta, exponent);
                    0
                }
                Step::Xtc { p, t, min_keep, seed } => {
                    out = sys::llama_sampler_init_xtc(p, t, min_keep, seed);
                    0
                }
                Step::TopNSigma { n } => {
                    out = sys::llama_sampler_init_top_n_sigma(n);
                    0
                }
                Step::Mirostat { seed, tau, eta, m } => {
                    out = sys::llama_sampler_init_mirostat(vocab.n_tokens(), seed, tau, eta, m);
                    0
                }
                Step::MirostatV2 { seed, tau, eta } => {
                    out = sys::llama_sampler_init_mirostat_v2(seed, tau, eta);
                    0
                }
                Step::Penalties { last_n, repeat, freq, present } => {
                    out = sys::llama_sampler_init_penalties(vocab.n_tokens(), last_n, repeat, freq, present);
                    0
                }
                Step::Dry { multiplier, base, allowed_length, penalty_last_n, ref seq_breakers } => {
                    let owned = seq_breakers
                        .iter()
                        .map(|s| cstring("dry sequence breaker", s))
                        .collect::<Result<Vec<CString>>>()?;
                    let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
                    sys::llama_rs_sampler_init_dry(
                        vocab.as_ptr(),
                        multiplier,
                        base,
                        allowed_length,
                        penalty_last_n,
                        if ptrs.is_empty() { std::ptr::null_mut() } else { ptrs.as_mut_ptr() },
                        ptrs.len(),
                        &mut out,
                    )
                }
                Step::LogitBias { ref biases } => {
                    let raw: Vec<sys::llama_logit_bias> =
                        biases.iter().map(|&(t, bias)| sys::llama_logit_bias { token: t.0, bias }).collect();
                    out = sys::llama_sampler_init_logit_bias(vocab.n_tokens(), raw.len() as i32, raw.as_ptr());
                    0
                }
                Step::Grammar { ref text, ref root } => {
                    let text = cstring("grammar", text)?;
                    let root = cstring("grammar root", root)?;
                    sys::llama_rs_sampler_init_grammar(vocab.as_ptr(), text.as_ptr(), root.as_ptr(), &mut out)
                }
                Step::GrammarLazy { ref text, ref root, ref patterns, ref tokens } => {
                    let text = cstring("grammar", text)?;
                    let root = cstring("grammar root", root)?;
                    let owned = patterns
                        .iter()
                        .map(|s| cstring("grammar trigger pattern", s))
                        .collect::<Result<Vec<CString>>>()?;
                    let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
                    sys::llama_rs_sampler_init_grammar_lazy_patterns(
                        vocab.as_ptr(),
                        text.as_ptr(),
                        root.as_ptr(),
                        if ptrs.is_empty() { std::ptr::null_mut() } else { ptrs.as_mut_ptr() },
                        ptrs.len(),
                        if tokens.is_empty() { std::ptr::null() } else { tokens.as_ptr().cast() },
                        tokens.len(),
                        &mut out,
                    )
                }
                Step::AdaptiveP { target, decay, seed } => {
                    out = sys::llama_sampler_init_adaptive_p(target, decay, seed);
                    0
                }
                // Created above, in Rust.
                Step::Structured(_) => 0,
            }
        };
        if status != 0 {
            let function = match step {
                Step::Dry { .. } => "llama_sampler_init_dry",
                Step::GrammarLazy { .. } => "llama_sampler_init_grammar_lazy_patterns",
                _ => "llama_sampler_init_grammar",
            };
            check_shim(function, status)?;
        }
        NonNull::new(out).ok_or_else(|| Error::Sampler {
            message: format!("{}: {}", step.name(), log_error_or("llama.cpp returned no sampler")),
        })
    }

    /// Checks every sampler's parameters and the chain's shape, then creates it.
    pub fn build(self) -> Result<Sampler<'m>> {
        crate::init();
        match self.steps.last() {
            None => {
                return Err(Error::Sampler {
                    message: "empty chain: add a selecting sampler (greedy, dist, mirostat, mirostat_v2 or adaptive_p)"
                        .into(),
                })
            }
            Some(last) if !last.selects() => {
                return Err(Error::Sampler {
                    message: format!(
                        "the chain ends with {}, which does not select a token: end it with greedy, dist, mirostat, \
                         mirostat_v2 or adaptive_p (llama.cpp aborts otherwise)",
                        last.name()
                    ),
                })
            }
            Some(_) => {}
        }
        if let Some(early) = self.steps[..self.steps.len() - 1].iter().find(|s| s.selects()) {
            return Err(Error::Sampler {
                message: format!(
                    "{} selects a token but is not last: a selecting sampler must end the chain, and only one",
                    early.name()
                ),
            });
        }
        for step in &self.steps {
            self.check(step)?;
        }

        let vocab = self.model.vocab();
        let n_vocab = vocab.n_tokens().max(0) as usize;
        let candidates = try_with_capacity(
            n_vocab,
            "sampler candidates",
            n_vocab.saturating_mul(std::mem::size_of::<sys::llama_token_data>()),
        )?;
        // SAFETY: plain struct of defaults.
        let mut params = unsafe { sys::llama_sampler_chain_default_params() };
        params.no_perf = self.no_perf;
        // SAFETY: creates an empty chain that we own.
        let chain = NonNull::new(unsafe { sys::llama_sampler_chain_init(params) })
            .ok_or_else(|| Error::Sampler { message: "llama.cpp could not create a sampler chain".into() })?;
        let greedy_only = matches!(self.steps[..], [Step::Greedy]);
        let n_vocab = vocab.n_tokens();
        let mut sampler = Sampler {
            chain,
            grammars: Vec::new(),
            model: self.model.clone(),
            n_vocab,
            candidates,
            poisoned: false,
            greedy_only,
        };
        for step in &self.steps {
            // On error `sampler` is dropped, which frees the chain and every
            // sampler added to it so far.
            let s = self.create(step)?;
            // SAFETY: both pointers are live; the chain takes ownership of `s`
            // and frees it with itself.
            unsafe { sys::llama_sampler_chain_add(sampler.chain.as_ptr(), s.as_ptr()) };
            if step.is_grammar() {
                // Stays valid as long as the chain owns it, i.e. as long as `sampler`.
                sampler.grammars.push(s);
            }
        }
        Ok(sampler)
    }
}

/// llama.cpp's timing of a sampler chain.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PerfSampler {
    /// Time spent applying and accepting, in ms (0 with `no_perf`).
    pub sample_ms: f64,
    /// Number of accepted tokens (by `sample` or `accept`).
    pub n_sample: i32,
}

/// A chain of llama.cpp samplers that picks the next token from a context's
/// logits. Built with [`Sampler::builder`]; always ends in a sampler that
/// selects a token. It borrows the model (grammar and DRY samplers keep a
/// pointer to its vocabulary).
///
/// `Send` but not `Sync`: move it to another thread, but do not share it.
/// Every llama.cpp sampler call takes a mutable pointer (RNG state, grammar
/// stacks, histories) and llama.cpp does no locking; `&mut self` on every
/// method that reaches C serialises the calls, and no method needs sharing.
///
/// ```compile_fail,E0277
/// fn needs_sync<T: Sync>() {}
/// needs_sync::<llama_rs::Sampler<'static>>();
/// ```
///
/// It cannot outlive its model:
///
/// ```compile_fail,E0597
/// # fn f() -> llama_rs::Result<()> {
/// let sampler = {
///     let model = llama_rs::Model::load("model.gguf")?;
///     llama_rs::Sampler::greedy(&model)?
/// }; // error: `model` does not live long enough
/// # drop(sampler); Ok(()) }
/// ```
pub struct Sampler<'m> {
    chain: NonNull<sys::llama_sampler>,
    /// The grammar samplers inside the chain (owned by it), to check a token
    /// before accepting it.
    grammars: Vec<NonNull<sys::llama_sampler>>,
    /// Keeps the model (and so the vocabulary the grammar and DRY samplers
    /// point into) alive.
    model: ModelRef<'m>,
    n_vocab: i32,
    /// The chain is one greedy sampler: `sample` takes the arg-max of the
    /// logits in place, with no copy (greedy keeps no state).
    greedy_only: bool,
    /// Candidate buffer reused by every `sample` (n_vocab entries).
    candidates: Vec<sys::llama_token_data>,
    /// Set when an accept threw: the grammar's stacks may be empty now, and
    /// llama.cpp would abort on the next apply or EOG accept. Cleared by reset.
    poisoned: bool,
}

// SAFETY: the chain and its samplers are heap objects owned by this value
// alone, usable from any thread one call at a time; every method that reaches
// C takes `&mut self` (the perf read through `&self` only reads two counters
// that no `&self` method writes). The vocabulary it borrows is immutable.
unsafe impl Send for Sampler<'_> {}

impl std::fmt::Debug for Sampler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("len", &self.len())
            .field("grammars", &self.grammars.len())
            .field("n_vocab", &self.n_vocab)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl<'m> Sampler<'m> {
    /// Starts a chain for `model`'s vocabulary.
    pub fn builder(model: &'m Model) -> SamplerBuilder<'m> {
        SamplerBuilder { model: ModelRef::Borrowed(model), steps: Vec::new(), no_perf: false }
    }

    /// As [`builder`](Self::builder), for a sampler that holds its model
    /// through the `Arc`: a `Sampler<'static>`, which can live in a server's
    /// state or travel with a request.
    pub fn builder_owned(model: &Arc<Model>) -> SamplerBuilder<'static> {
        SamplerBuilder { model: ModelRef::Shared(Arc::clone(model)), steps: Vec::new(), no_perf: false }
    }

    /// A chain that picks the most likely token.
    pub fn greedy(model: &'m Model) -> Result<Sampler<'m>> {
        Sampler::builder(model).greedy().build()
    }

    /// Number of samplers in the chain.
    pub fn len(&self) -> usize {
        // SAFETY: live chain; only reads its vector's size.
        unsafe { sys::llama_sampler_chain_n(self.chain.as_ptr()) }.max(0) as usize
    }

    /// Always false: a built chain has at least its selecting sampler.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vocabulary size the chain was built for; `accept` checks ids against it.
    pub fn n_vocab(&self) -> i32 {
        self.n_vocab
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::Sampler {
                message: "a previous accept failed inside llama.cpp and left the grammar without a state: call reset()"
                    .into(),
            })
        } else {
            Ok(())
        }
    }

    /// Whether every grammar in the chain allows `token` now. Applies each
    /// grammar sampler to a one-candidate array: llama.cpp's grammar apply
    /// sets the logit of a token it would not accept to -inf, and only reads
    /// the grammar state. For EOG this is exactly the test that
    /// `llama_grammar_accept_impl` aborts on (no grammar stack is complete),
    /// so checking here keeps that abort unreachable; for other tokens it is
    /// the test whose failure would make accept throw and leave the grammar
    /// with no stacks. A lazy grammar still waiting for its trigger allows
    /// every token, as its accept does.
    fn grammars_allow(&mut self, token: Token) -> Result<bool> {
        for g in &self.grammars {
            let mut one = [sys::llama_token_data { id: token.0, logit: 0.0, p: 0.0 }];
            let mut arr = sys::llama_token_data_array { data: one.as_mut_ptr(), size: 1, selected: -1, sorted: false };
            // SAFETY: `g` is a grammar sampler owned by our live chain; the
            // array points to one valid candidate whose id was checked against
            // the vocabulary; the shim catches C++ exceptions.
            let status = unsafe { sys::llama_rs_sampler_apply(g.as_ptr(), &mut arr) };
            check_shim("llama_sampler_apply (grammar)", status)?;
            if one[0].logit == f32::NEG_INFINITY {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Accepts a checked token into every sampler of the chain.
    fn accept_checked(&mut self, token: Token) -> Result<()> {
        if !self.grammars_allow(token)? {
            let eog = self.model.vocab().is_eog(token);
            let what = if eog {
                "end-of-generation token".to_string()
            } else {
                let piece = self.model.vocab().token_to_piece(token, RenderSpecial::Yes).unwrap_or_default();
                format!("{:?}", String::from_utf8_lossy(&piece))
            };
            return Err(Error::GrammarRejected {
                token: token.0,
                what,
                hint: if eog { ": the grammar is not complete yet" } else { "" },
            });
        }
        // SAFETY: live chain, id in range and allowed by every grammar; the
        // shim catches what the grammar may still throw.
        let status = unsafe { sys::llama_rs_sampler_accept(self.chain.as_ptr(), token.0) };
        if status != 0 {
            self.poisoned = true;
        }
        check_shim("llama_sampler_accept", status)
    }

    /// Feeds `token` to every sampler of the chain (penalty histories,
    /// grammar state, ...) as if it had been sampled. Not for tokens returned
    /// by [`sample`](Self::sample), which already accepted them.
    ///
    /// Errors: an id outside the vocabulary; a token the grammar does not
    /// allow now (including an end-of-generation token before the grammar is
    /// complete, on which llama.cpp would abort): the sampler is unchanged.
    pub fn accept(&mut self, token: Token) -> Result<()> {
        self.check_usable()?;
        if token.0 < 0 || token.0 >= self.n_vocab {
            return Err(Error::InvalidToken { token: token.0, n_vocab: self.n_vocab });
        }
        self.accept_checked(token)
    }

    /// Feeds prompt tokens to the samplers that keep a history (penalties,
    /// DRY, ...), leaving any grammar out, as llama.cpp's own tools do with a
    /// prompt: a repetition penalty then also counts what the prompt said.
    /// [`Context::generate`] and the [`Engine`](crate::Engine) call it with
    /// every prompt.
    pub fn accept_prompt(&mut self, tokens: &[Token]) -> Result<()> {
        self.check_usable()?;
        if let Some(&t) = tokens.iter().find(|t| t.0 < 0 || t.0 >= self.n_vocab) {
            return Err(Error::InvalidToken { token: t.0, n_vocab: self.n_vocab });
        }
        if self.greedy_only {
            return Ok(());
        }
        // SAFETY: live chain; a plain query.
        let n = unsafe { sys::llama_sampler_chain_n(self.chain.as_ptr()) };
        for i in 0..n {
            // SAFETY: i < chain length: a sampler owned by the chain.
            let member = unsafe { sys::llama_sampler_chain_get(self.chain.as_ptr(), i) };
            if member.is_null() || self.grammars.iter().any(|g| g.as_ptr() == member) {
                continue;
            }
            for &t in tokens {
                // SAFETY: a live non-grammar sampler of our chain; ids checked;
                // the shim catches exceptions.
                let status = unsafe { sys::llama_rs_sampler_accept(member, t.0) };
                check_shim("llama_sampler_accept", status)?;
            }
        }
        Ok(())
    }

    /// Samples a token from output row `idx` of the context's last decode
    /// **and accepts it** (see the module docs: do not `accept` it again).
    ///
    /// Errors instead of llama.cpp's aborts: nothing decoded yet, `idx` not an
    /// output row of the last batch, no logits (an embeddings context), a
    /// context of another vocabulary, or a token the grammar cannot accept
    /// (every candidate rejected, e.g. a grammar dead end).
    pub fn sample(&mut self, ctx: &Context<'_>, idx: i32) -> Result<Token> {
        self.check_usable()?;
        let n_vocab = ctx.vocab().n_tokens();
        if n_vocab != self.n_vocab {
            return Err(Error::Sampler {
                message: format!(
                    "the context's vocabulary has {n_vocab} tokens, the sampler was built for {}",
                    self.n_vocab
                ),
            });
        }
        // Checks that idx is an output row of the last decode; reads in place.
        let logits = ctx.logits(idx)?;
        if self.greedy_only {
            // llama.cpp's greedy sampler: the first largest logit; it keeps
            // no state, so there is nothing to accept.
            let Some(&first) = logits.first() else {
                return Err(Error::Sampler { message: "the vocabulary is empty".into() });
            };
            let (mut best, mut best_logit) = (0, first);
            for (i, &l) in logits.iter().enumerate().skip(1) {
                if l > best_logit {
                    (best, best_logit) = (i, l);
                }
            }
            return Ok(Token(best as i32));
        }
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &logit)| sys::llama_token_data {
            id: i as i32,
            logit,
            p: 0.0,
        }));
        let mut arr = sys::llama_token_data_array {
            data: self.candidates.as_mut_ptr(),
            size: self.candidates.len(),
            selected: -1,
            sorted: false,
        };
        // SAFETY: live chain; the array describes our buffer of n_vocab valid
        // candidates (llama.cpp may reorder, shrink or offset it, always within
        // it); the shim catches C++ exceptions (DRY, grammar).
        let status = unsafe { sys::llama_rs_sampler_apply(self.chain.as_ptr(), &mut arr) };
        check_shim("llama_sampler_apply", status)?;
        // llama_sampler_sample asserts this; here it is an error.
        if arr.selected < 0 || arr.selected as u64 >= arr.size as u64 {
            return Err(Error::Sampler {
                message: format!("the chain selected no token (selected = {}, {} candidates)", arr.selected, arr.size),
            });
        }
        let base = self.candidates.as_ptr() as usize;
        let end = base + self.candidates.len() * std::mem::size_of::<sys::llama_token_data>();
        let at = arr.data as usize + arr.selected as usize * std::mem::size_of::<sys::llama_token_data>();
        if at < base || at >= end {
            return Err(Error::Sampler { message: "the chain selected a candidate outside its array".into() });
        }
        // SAFETY: `at` was checked to lie inside our candidate buffer, at an
        // element boundary (data only moves by whole elements).
        let token = Token(unsafe { (*(at as *const sys::llama_token_data)).id });
        if token.0 < 0 || token.0 >= self.n_vocab {
            return Err(Error::InvalidToken { token: token.0, n_vocab: self.n_vocab });
        }
        self.accept_checked(token)?;
        Ok(token)
    }

    /// Resets every sampler's state (RNG to its seed, histories, grammar to
    /// its start). Also makes a sampler usable again after a failed accept.
    pub fn reset(&mut self) -> Result<()> {
        // SAFETY: live chain; the shim catches the grammar re-initialisation's
        // exceptions.
        let status = unsafe { sys::llama_rs_sampler_reset(self.chain.as_ptr()) };
        check_shim("llama_sampler_reset", status)?;
        self.poisoned = false;
        Ok(())
    }

    /// The seed of the last seeded sampler of the chain (dist, mirostat,
    /// mirostat_v2): the actual seed when [`RANDOM_SEED`] was asked for.
    /// `None` when no sampler uses one.
    pub fn seed(&self) -> Option<u32> {
        // SAFETY: live chain; only reads seeds.
        let s = unsafe { sys::llama_sampler_get_seed(self.chain.as_ptr()) };
        (s != RANDOM_SEED).then_some(s)
    }

    /// llama.cpp's counters for this chain.
    pub fn perf(&self) -> PerfSampler {
        // SAFETY: our sampler is always a chain (llama.cpp aborts on others).
        let p = unsafe { sys::llama_perf_sampler(self.chain.as_ptr()) };
        PerfSampler { sample_ms: p.t_sample_ms, n_sample: p.n_sample }
    }

    /// Resets the counters.
    pub fn reset_perf(&mut self) {
        // SAFETY: always a chain.
        unsafe { sys::llama_perf_sampler_reset(self.chain.as_ptr()) };
    }
}

impl Drop for Sampler<'_> {
    fn drop(&mut self) {
        // SAFETY: the chain was created by llama_sampler_chain_init and is
        // freed once; it frees the samplers it owns (including `grammars`).
        unsafe { sys::llama_sampler_free(self.chain.as_ptr()) };
    }
}
