//! What a caller gives the engine (a [`Request`]) and gets back (a
//! [`RequestHandle`] streaming [`Event`]s).

use crate::adapter::LoraAdapter;
use crate::chat::ChatMessage;
use crate::error::{Error, Result};
use crate::generate::StopReason;
use crate::guidance::Structured;
use crate::model::Model;
use crate::sampler::{Sampler, RANDOM_SEED};
use crate::state::SeqState;
use crate::template::ChatOptions;
use crate::tools::{ParsedReply, Tool, ToolCallFormat, ToolChoice};
use crate::vocab::{AddSpecial, ParseSpecial, RenderSpecial, Token};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

/// What a request's prompt is.
#[derive(Clone, Debug)]
pub(crate) enum RequestPrompt {
    Text(String),
    Tokens(Vec<Token>),
    Chat(Vec<ChatMessage>),
}

/// Sampling settings of a request, turned into a llama.cpp sampler chain by
/// the engine in llama.cpp's own order: grammar, penalties, top-k, top-p,
/// min-p, temperature, then a seeded draw; a temperature <= 0 is greedy.
/// Defaults are llama-server's: temperature 0.8, top-k 40, top-p 0.95, min-p
/// 0.05, no penalties, a random seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    temperature: f32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    repeat_last_n: i32,
    frequency_penalty: f32,
    presence_penalty: f32,
    seed: u32,
    grammar: Option<String>,
    structured: Option<Structured>,
    logit_bias: Vec<(Token, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: RANDOM_SEED,
            grammar: None,
            structured: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Always the most likely token (temperature 0).
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }
    /// Temperature; <= 0 is greedy.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }
    /// Top-k (<= 0: all).
    pub fn top_k(mut self, k: i32) -> Self {
        self.top_k = k;
        self
    }
    /// Top-p (1: off).
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }
    /// Min-p (0: off).
    pub fn min_p(mut self, p: f32) -> Self {
        self.min_p = p;
        self
    }
    /// Repetition penalty (1: off) over the last `last_n` tokens, prompt
    /// included.
    pub fn repeat_penalty(mut self, penalty: f32, last_n: i32) -> Self {
        self.repeat_penalty = penalty;
        self.repeat_last_n = last_n;
        self
    }
    /// OpenAI's frequency penalty (0: off).
    pub fn frequency_penalty(mut self, p: f32) -> Self {
        self.frequency_penalty = p;
        self
    }
    /// OpenAI's presence penalty (0: off).
    pub fn presence_penalty(mut self, p: f32) -> Self {
        self.presence_penalty = p;
        self
    }
    /// Seed of the draw ([`RANDOM_SEED`]: a random one).
    pub fn seed(mut self, seed: u32) -> Self {
        self.seed = seed;
        self
    }
    /// A GBNF grammar (start symbol `root`) the output must follow.
    pub fn grammar(mut self, gbnf: impl Into<String>) -> Self {
        self.grammar = Some(gbnf.into());
        self
    }
    /// Structured output: a JSON schema, a Lark grammar or tool calls the
    /// output must follow (see [`Structured`]; OpenAI's `response_format`).
    pub fn structured(mut self, structured: Structured) -> Self {
        self.structured = Some(structured);
        self
    }
    /// Output that parses as JSON and validates against `schema`.
    pub fn json_schema(self, schema: serde_json::Value) -> Self {
        self.structured(Structured::JsonSchema(schema))
    }
    /// Biases added to token logits (`f32::NEG_INFINITY` bans a token).
    pub fn logit_bias(mut self, biases: &[(Token, f32)]) -> Self {
        self.logit_bias = biases.to_vec();
        self
    }

    /// Whether a structured output was set.
    pub(crate) fn has_structured(&self) -> bool {
        self.structured.is_some()
    }

    /// The seed asked for.
    pub fn seed_value(&self) -> u32 {
        self.seed
    }

    /// Builds the chain for `model` (every value checked, see [`Sampler`]).
    pub fn build(&self, model: &Arc<Model>) -> Result<Sampler<'static>> {
        let mut b = Sampler::builder_owned(model);
        if let Some(s) = &self.structured {
            b = b.structured(s.clone());
        }
        if let Some(g) = &self.grammar {
            b = b.grammar(g, "root");
        }
        if !self.logit_bias.is_empty() {
            b = b.logit_bias(&self.logit_bias);
        }
        if self.repeat_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0 {
            b = b.penalties(self.repeat_last_n, self.repeat_penalty, self.frequency_penalty, self.presence_penalty);
        }
        if self.temperature <= 0.0 {
            return b.greedy().build();
        }
        b.top_k(self.top_k).top_p(self.top_p, 1).min_p(self.min_p, 1).temp(self.temperature).dist(self.seed).build()
    }
}

/// How the engine gets a request's sampler.
pub(crate) enum SamplerChoice {
    Params(SamplingParams),
    Custom(Sampler<'static>),
}

impl std::fmt::Debug for SamplerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SamplerChoice::Params(p) => p.fmt(f),
            SamplerChoice::Custom(s) => s.fmt(f),
        }
    }
}

/// One generation request for the [`Engine`](crate::Engine): a prompt, how to
/// sample, and when to stop. Built with setters:
///
/// ```no_run
/// # fn f(engine: &llama_rs::Engine) -> llama_rs::Result<()> {
/// use llama_rs::{ChatMessage, Request, SamplingParams};
/// let request = Request::chat(vec![ChatMessage::user("Hello")])
///     .sampling(SamplingParams::default().seed(7))
///     .max_tokens(64)
///     .stop_string("\n\n")
///     .logprobs(3);
/// let completion = engine.submit(request)?.wait()?;
/// println!("{}", completion.text);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Request {
    pub(crate) prompt: RequestPrompt,
    pub(crate) sampler: SamplerChoice,
    pub(crate) max_tokens: Option<usize>,
    pub(crate) stop_strings: Vec<String>,
    pub(crate) stop_tokens: Vec<Token>,
    pub(crate) ignore_eos: bool,
    pub(crate) logprobs: Option<usize>,
    pub(crate) context_shift: Option<usize>,
    pub(crate) save_state: bool,
    pub(crate) resume: Option<SeqState>,
    pub(crate) add_special: AddSpecial,
    pub(crate) parse_special: ParseSpecial,
    pub(crate) special: RenderSpecial,
    pub(crate) chat_options: ChatOptions,
    pub(crate) tools: Vec<Tool>,
    pub(crate) tool_choice: ToolChoice,
    pub(crate) tool_format: Option<ToolCallFormat>,
    pub(crate) lora: Vec<(LoraAdapter<'static>, f32)>,
}

impl Request {
    fn new(prompt: RequestPrompt) -> Request {
        Request {
            prompt,
            sampler: SamplerChoice::Params(SamplingParams::default()),
            max_tokens: None,
            stop_strings: Vec::new(),
            stop_tokens: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            context_shift: None,
            save_state: false,
            resume: None,
            add_special: AddSpecial::Yes,
            parse_special: ParseSpecial::Yes,
            special: RenderSpecial::No,
            chat_options: ChatOptions::default(),
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            tool_format: None,
            lora: Vec::new(),
        }
    }

    /// A text prompt, tokenized with BOS as the model asks and special-token
    /// text parsed (see [`add_special`](Self::add_special),
    /// [`parse_special`](Self::parse_special)).
    pub fn text(prompt: impl Into<String>) -> Request {
        Request::new(RequestPrompt::Text(prompt.into()))
    }

    /// A prompt of tokens, decoded as they are.
    pub fn tokens(prompt: impl Into<Vec<Token>>) -> Request {
        Request::new(RequestPrompt::Tokens(prompt.into()))
    }

    /// Chat messages, rendered with the model's chat template (with the
    /// assistant's turn opened).
    pub fn chat(messages: impl Into<Vec<ChatMessage>>) -> Request {
        Request::new(RequestPrompt::Chat(messages.into()))
    }

    /// How a chat prompt is rendered: documents, extra template variables,
    /// the clock (the generation prompt is always added; tools come from
    /// [`tools`](Self::tools)).
    pub fn chat_options(mut self, options: ChatOptions) -> Self {
        self.chat_options = options;
        self
    }

    /// Tools the model may call. A chat prompt's template gets them; the
    /// output is free text until the model starts a call, which is then
    /// forced to name one of the tools with arguments matching its schema
    /// (see [`Structured::ToolCalls`]); [`Completion::reply`] has the
    /// parsed calls. The format is the template's ([`ToolCallFormat::detect`]),
    /// or [`tool_format`](Self::tool_format). Needs [`SamplingParams`] (not
    /// a custom sampler) without a structured output of its own.
    pub fn tools(mut self, tools: impl Into<Vec<Tool>>) -> Self {
        self.tools = tools.into();
        self
    }

    /// Whether the model may, must or must not call tools (default
    /// [`ToolChoice::Auto`]).
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = choice;
        self
    }

    /// The tool-call format, for a template that shows none of the known
    /// markers (or to override what it shows).
    pub fn tool_format(mut self, format: ToolCallFormat) -> Self {
        self.tool_format = Some(format);
        self
    }

    /// LoRA adapters and their scales for this request (loaded for the
    /// engine's model with [`LoraAdapter::load_owned`]). One llama.cpp
    /// context applies one set at a time, so the engine decodes requests of
    /// different sets in different steps, taking turns, as llama-server
    /// does; a cached prompt prefix is reused only by a request with the
    /// same set. Default: none.
    pub fn lora(mut self, adapters: impl IntoIterator<Item = (LoraAdapter<'static>, f32)>) -> Self {
        self.lora = adapters.into_iter().collect();
        self
    }

    /// Sampling settings (default: [`SamplingParams::default`]).
    pub fn sampling(mut self, params: SamplingParams) -> Self {
        self.sampler = SamplerChoice::Params(params);
        self
    }

    /// A sampler chain of your own (built with [`Sampler::builder_owned`]).
    pub fn sampler(mut self, sampler: Sampler<'static>) -> Self {
        self.sampler = SamplerChoice::Custom(sampler);
        self
    }

    /// Most tokens to generate (default: until an end-of-generation token, a
    /// stop, or the request's share of the context).
    pub fn max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Stops when the text contains `s` (not emitted).
    pub fn stop_string(mut self, s: impl Into<String>) -> Self {
        self.stop_strings.push(s.into());
        self
    }

    /// Stops when token `t` is sampled (not emitted).
    pub fn stop_token(mut self, t: Token) -> Self {
        self.stop_tokens.push(t);
        self
    }

    /// Keeps going through end-of-generation tokens (benchmarks).
    pub fn ignore_eos(mut self, yes: bool) -> Self {
        self.ignore_eos = yes;
        self
    }

    /// Reports the log-probability of each sampled token and the `n` most
    /// likely alternatives (0: only the sampled token's).
    pub fn logprobs(mut self, n: usize) -> Self {
        self.logprobs = Some(n);
        self
    }

    /// When the request reaches its share of the context, discard half of
    /// the tokens after the first `n_keep` and go on (llama.cpp's context
    /// shift), instead of ending with [`Error::ContextFull`]. Refused at
    /// submit time when the model's memory cannot shift positions.
    pub fn context_shift(mut self, n_keep: usize) -> Self {
        self.context_shift = Some(n_keep);
        self
    }

    /// Saves the sequence's KV cache when the request ends:
    /// [`Finished::state`], to resume with [`resume`](Self::resume).
    pub fn save_state(mut self, yes: bool) -> Self {
        self.save_state = yes;
        self
    }

    /// Starts from a saved state: its tokens are loaded, not decoded, and
    /// this request's prompt is what follows them (a text prompt then gets no
    /// BOS).
    pub fn resume(mut self, state: SeqState) -> Self {
        self.resume = Some(state);
        self
    }

    /// Whether a text prompt gets BOS/EOS (default yes; no when resuming).
    pub fn add_special(mut self, add: AddSpecial) -> Self {
        self.add_special = add;
        self
    }

    /// Whether special-token text in a text prompt is parsed (default yes).
    pub fn parse_special(mut self, parse: ParseSpecial) -> Self {
        self.parse_special = parse;
        self
    }

    /// Whether control tokens are rendered in the output text (default no).
    pub fn special(mut self, render: RenderSpecial) -> Self {
        self.special = render;
        self
    }
}

/// Log-probabilities of one sampled token.
#[derive(Clone, Debug, PartialEq)]
pub struct Logprobs {
    /// Natural log of the sampled token's probability under the model's
    /// distribution (before sampling settings).
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(Token, f32)>,
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamPiece {
    /// The sampled token.
    pub token: Token,
    /// Text, whole UTF-8 characters (empty while a character or a possible
    /// stop string is incomplete; it comes with a later piece).
    pub text: String,
    /// When asked for ([`Request::logprobs`]).
    pub logprobs: Option<Logprobs>,
}

/// Timings and counts of one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestStats {
    /// From submit to a slot.
    pub queue_time: Duration,
    /// From submit to the first generated token.
    pub time_to_first_token: Duration,
    /// Prompt tokens (resumed tokens included).
    pub prompt_tokens: usize,
    /// Prompt tokens found in the cache (prefix reuse or a resumed state),
    /// not decoded.
    pub cached_tokens: usize,
    /// Tokens sampled (a final end-of-generation or stop token included).
    pub generated_tokens: usize,
    /// Decoded prompt tokens per second (from slot to first token).
    pub prompt_tps: f64,
    /// Generated tokens per second after the first.
    pub generation_tps: f64,
    /// Context shifts done.
    pub context_shifts: usize,
}

/// How a request ended well.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Its timings.
    pub stats: RequestStats,
    /// The saved state, when asked for ([`Request::save_state`]).
    pub state: Option<SeqState>,
}

/// What a [`RequestHandle`] yields.
#[derive(Debug)]
pub enum Event {
    /// A generated token.
    Piece(StreamPiece),
    /// The request ended well; nothing follows.
    Done(Finished),
    /// The request ended with an error ([`Error::Aborted`] when cancelled,
    /// [`Error::ContextFull`], ...); nothing follows.
    Failed(Error),
}

/// A whole request's output ([`RequestHandle::wait`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The text.
    pub text: String,
    /// The generated tokens (a final end-of-generation or stop token
    /// included).
    pub tokens: Vec<Token>,
    /// Per token, when asked for.
    pub logprobs: Vec<Logprobs>,
    /// How it ended.
    pub finished: Finished,
    /// The text split into content and tool calls, for a request that
    /// offered tools.
    pub reply: Option<ParsedReply>,
}

/// The channel between the engine thread and one handle.
#[derive(Debug, Default)]
pub(crate) struct ChannelState {
    pub(crate) events: VecDeque<Event>,
    pub(crate) closed: bool,
    pub(crate) waker: Option<Waker>,
}

/// What the engine and a handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: u64,
    /// The whole prompt as decoded (a resumed state's tokens first).
    pub(crate) prompt: Vec<Token>,
    pub(crate) cancelled: AtomicBool,
    pub(crate) channel: Mutex<ChannelState>,
    pub(crate) ready: Condvar,
    /// The engine's cancel counter, read by its abort callback.
    pub(crate) cancels: Arc<AtomicU64>,
    /// How tool calls are written, for a request that offered tools.
    pub(crate) tool_format: Option<ToolCallFormat>,
}

impl Shared {
    pub(crate) fn new(
        id: u64,
        prompt: Vec<Token>,
        cancels: Arc<AtomicU64>,
        tool_format: Option<ToolCallFormat>,
    ) -> Shared {
        Shared {
            id,
            prompt,
            tool_format,
            cancelled: AtomicBool::new(false),
            channel: Mutex::new(ChannelState::default()),
            ready: Condvar::new(),
            cancels,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChannelState> {
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an event (the last one when `close`).
    pub(crate) fn send(&self, event: Event, close: bool) {
        let waker = {
            let mut ch = self.lock();
            if ch.closed {
                return;
            }
            ch.events.push_back(event);
            ch.closed = close;
            ch.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// A submitted request: its events, in order, from any thread (blocking
/// [`recv`](Self::recv), or the iterator) or from async code
/// ([`next_event`](Self::next_event), [`poll_recv`](Self::poll_recv); with
/// the `stream` feature it is also a `futures_core::Stream`). No async
/// runtime is involved: the engine wakes the task's waker.
///
/// Dropping the handle before the request ended cancels it (a server whose
/// client went away frees the slot that way).
#[derive(Debug)]
pub struct RequestHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) wake_engine: std::sync::mpsc::Sender<super::Command>,
}

impl RequestHandle {
    /// The request's id (unique per engine).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The prompt's tokens as the engine decodes them (a resumed state's
    /// tokens first, then the request's own, BOS and chat template included):
    /// for usage counts and token-level clients.
    pub fn prompt_tokens(&self) -> &[Token] {
        &self.shared.prompt
    }

    /// Cancels the request at any point, a long prompt's decode included; its
    /// slot is freed and the last event is `Failed(Error::Aborted)`. Does
    /// nothing once it ended.
    pub fn cancel(&self) {
        if self.shared.is_closed() || self.shared.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.cancels.fetch_add(1, Ordering::AcqRel);
        let _ = self.wake_engine.send(super::Command::Wake);
    }

    /// The next event, waiting for it; `None` after the last one.
    pub fn recv(&self) -> Option<Event> {
        let mut ch = self.shared.lock();
        loop {
            if let Some(e) = ch.events.pop_front() {
                return Some(e);
            }
            if ch.closed {
                return None;
            }
            ch = self.shared.ready.wait(ch).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// As [`recv`](Self::recv), waiting at most `timeout`: `Err(())` when it
    /// passed.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Option<Event>, ()> {
        let deadline = std::time::Instant::now() + timeout;
        let mut ch = self.shared.lock();
        loop {
            if let Some(e) = ch.events.pop_front() {
                return Ok(Some(e));
            }
            if ch.closed {
                return Ok(None);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(());
            }
            ch = self.shared.ready.wait_timeout(ch, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The next event if one is there, without waiting (`Poll::Ready(None)`
    /// after the last one).
    pub fn try_recv(&self) -> Poll<Option<Event>> {
        let mut ch = self.shared.lock();
        match ch.events.pop_front() {
            Some(e) => Poll::Ready(Some(e)),
            None if ch.closed => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// For async code: the next event, or `Pending` after registering the
    /// task's waker.
    pub fn poll_recv(&self, cx: &mut std::task::Context<'_>) -> Poll<Option<Event>> {
        let mut ch = self.shared.lock();
        match ch.events.pop_front() {
            Some(e) => Poll::Ready(Some(e)),
            None if ch.closed => Poll::Ready(None),
            None => {
                ch.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// For async code: a future of the next event (`None` after the last).
    pub fn next_event(&self) -> impl std::future::Future<Output = Option<Event>> + '_ {
        std::future::poll_fn(move |cx| self.poll_recv(cx))
    }

    /// The format of tool calls in the output, for a request that offered
    /// tools (parse the streamed text with [`ToolCallFormat::parse`]).
    pub fn tool_format(&self) -> Option<ToolCallFormat> {
        self.shared.tool_format
    }

    /// Waits for the end and collects the output.
    pub fn wait(self) -> Result<Completion> {
        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut logprobs = Vec::new();
        while let Some(event) = self.recv() {
            match event {
                Event::Piece(p) => {
                    text.push_str(&p.text);
                    tokens.push(p.token);
                    logprobs.extend(p.logprobs);
                }
                Event::Done(finished) => {
                    let reply = self.shared.tool_format.map(|f| f.parse(&text));
                    return Ok(Completion { text, tokens, logprobs, finished, reply });
                }
                Event::Failed(e) => return Err(e),
            }
        }
        Err(Error::Aborted)
    }
}

impl Iterator for RequestHandle {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(feature = "stream")]
impl futures_core::Stream for RequestHandle {
    type Item = Event;
    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Event>> {
        self.poll_recv(cx)
    }
}
