//! The serving engine (see [`Engine`]).

mod request;
mod worker;

pub use request::{
    Completion, Event, Finished, Logprobs, Request, RequestHandle, RequestStats, SamplingParams, StreamPiece,
};

use crate::context::ContextParams;
use crate::error::{Error, Result};
use crate::model::Model;
use request::{RequestPrompt, SamplerChoice, Shared};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Settings of an [`Engine`]. Defaults: 4 slots, the default context
/// ([`ContextParams::default`]: 4096 tokens or the training length when
/// smaller, shared by the slots), a step budget of n_batch tokens.
#[derive(Clone, Debug)]
pub struct EngineParams {
    context: ContextParams,
    n_slots: u32,
    step_tokens: Option<u32>,
}

impl Default for EngineParams {
    fn default() -> Self {
        EngineParams { context: ContextParams::default(), n_slots: 4, step_tokens: None }
    }
}

impl EngineParams {
    /// The context's parameters (its n_ctx is shared by the slots; its
    /// `n_seq_max` and `kv_unified` are set by the engine).
    pub fn context(mut self, params: ContextParams) -> Self {
        self.context = params;
        self
    }
    /// Requests decoded at once (llama-server's `-np`).
    pub fn n_slots(mut self, n: u32) -> Self {
        self.n_slots = n;
        self
    }
    /// Most tokens one step decodes (default: the context's n_batch); prompt
    /// chunks get what the generating requests leave.
    pub fn step_tokens(mut self, n: u32) -> Self {
        self.step_tokens = Some(n);
        self
    }
}

/// What an engine is doing (a snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStatus {
    /// Slots (sequences).
    pub slots: u32,
    /// Requests in a slot.
    pub active: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Tokens kept in the cache by idle slots (for prefix reuse).
    pub idle_cached_tokens: usize,
    /// Decode steps so far.
    pub steps: u64,
    /// Tokens decoded so far.
    pub decoded_tokens: u64,
    /// Requests ended (well or not).
    pub finished: u64,
}

pub(crate) enum Command {
    Submit(Vec<worker::Pending>),
    Wake,
    Shutdown,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Submit(p) => write!(f, "Submit({} requests)", p.len()),
            Command::Wake => f.write_str("Wake"),
            Command::Shutdown => f.write_str("Shutdown"),
        }
    }
}

///  The serving engine: many requests decoded together on one model, as
///  llama-server's slots do, in-process.
///
///  An [`Engine`] owns one context with `n_slots` sequences in a unified KV
///  cache and a thread that runs it. [`Engine::submit`] takes a [`Request`]
///  (a text, token or chat prompt; sampling settings or a sampler chain; stop
///  strings and token ids; a token limit; log-probabilities) and returns a
///  [`RequestHandle`] that streams its [`Event`]s to plain threads or async
///  code.
///
///  Each step puts the next prompt chunk of every request still reading its
///  prompt and one token of every generating request into one `llama_decode`
///  (continuous batching): requests join and leave between steps. Prompt
///  chunks share a per-step token budget ([`EngineParams::step_tokens`]) in
///  arrival order, after the generating requests' tokens, so a long prompt
///  does not stall the others and every request advances.
///
///  - **Prefix reuse.** A request whose prompt starts with tokens already in
///    the cache, in an idle slot or a running one, starts from those cells (the
///    idle slot is taken, or the running one's cells are shared through
///    `seq_cp`) and decodes only the rest ([`RequestStats::cached_tokens`]).
///  - **Cancellation** ([`RequestHandle::cancel`], or dropping the handle) at
///    any point: a decode in progress is stopped through llama.cpp's abort
///    callback, the other requests of that step are decoded again without it,
///    and the slot is free at once.
///  - **Context full.** Each request may use `n_ctx / n_slots` cells (as
///    llama-server's slots). One that reaches it ends with
///    [`Error::ContextFull`], or, when it asked for it
///    ([`Request::context_shift`]) and the model can shift, drops half of its
///    tokens after `n_keep` and goes on. Other requests are not affected.
///  - **Saved state.** [`Request::save_state`] returns the sequence's cache as
///    a [`SeqState`](crate::SeqState) when the request ends;
///    [`Request::resume`] starts a later request from it without decoding it
///    again.
///
///  ```no_run
///  # fn f() -> llama_rs::Result<()> {
///  use llama_rs::{Engine, EngineParams, Event, Model, Request, SamplingParams};
///  use std::sync::Arc;
///  let model = Arc::new(Model::load("model.gguf")?);
///  let engine = Engine::new(model, EngineParams::default().n_slots(8))?;
///  let handles: Vec<_> = ["Paris is", "Rome is"]
///      .iter()
///      .map(|p| engine.submit(Request::text(*p).sampling(SamplingParams::greedy()).max_tokens(32)))
///      .collect::<Result<_, _>>()?;
///  for handle in handles {
///      for event in handle {
///          match event {
///              Event::Piece(p) => print!("{}", p.text),
///              Event::Done(done) => println!("\n{:?}", done.stats),
///              Event::Failed(e) => eprintln!("{e}"),
///          }
///      }
///  }
///  # Ok(()) }
///  ```
///
/// `Send + Sync`: share it (e.g. in an `Arc`) and submit from any thread or
/// task. Dropping it stops its thread; requests still running end with
/// [`Error::Aborted`].
pub struct Engine {
    model: Arc<Model>,
    tx: mpsc::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    next_id: AtomicU64,
    cancels: Arc<AtomicU64>,
    status: Arc<Mutex<EngineStatus>>,
    n_ctx: u32,
    n_ctx_slot: usize,
    n_slots: u32,
    can_shift: bool,
    /// The model's chat template, compiled at the first chat request.
    chat_template: std::sync::OnceLock<crate::template::ChatTemplate>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.path())
            .field("n_slots", &self.n_slots)
            .field("n_ctx", &self.n_ctx)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Creates the context (`n_slots` sequences, unified KV cache) and starts
    /// the engine's thread.
    pub fn new(model: Arc<Model>, params: EngineParams) -> Result<Engine> {
        let n_slots = params.n_slots;
        if n_slots == 0 {
            return Err(Error::invalid("n_slots", 0, "an engine needs at least one slot"));
        }
        let ctx = model.new_owned_context(params.context.n_seq_max(n_slots).kv_unified(true))?;
        let n_batch = ctx.n_batch();
        let step_tokens = params.step_tokens.unwrap_or(n_batch);
        if step_tokens <= n_slots || step_tokens > n_batch {
            return Err(Error::invalid(
                "step_tokens",
                step_tokens,
                format!(
                    "must be more than n_slots = {n_slots} (one token per generating request, plus prompt chunks) \
                     and at most n_batch = {n_batch}"
                ),
            ));
        }
        let n_ctx = ctx.n_ctx();
        let n_ctx_slot = (n_ctx / n_slots) as usize;
        if n_ctx_slot < 2 {
            return Err(Error::invalid(
                "n_slots",
                n_slots,
                format!("n_ctx = {n_ctx} leaves less than 2 cells per slot"),
            ));
        }
        let can_shift = ctx.can_shift();
        let (tx, rx) = mpsc::channel();
        let cancels = Arc::new(AtomicU64::new(0));
        let status = Arc::new(Mutex::new(EngineStatus { slots: n_slots, ..Default::default() }));
        let worker = worker::Worker::new(ctx, rx, cancels.clone(), status.clone(), n_ctx_slot, step_tokens as usize)?;
        let thread = std::thread::Builder::new()
            .name("llama-rs-engine".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::invalid("engine thread", e, "could not start the engine's thread"))?;
        Ok(Engine {
            model,
            tx,
            thread: Some(thread),
            next_id: AtomicU64::new(1),
            cancels,
            status,
            n_ctx,
            n_ctx_slot,
            n_slots,
            can_shift,
            chat_template: std::sync::OnceLock::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Slots (requests decoded at once).
    pub fn n_slots(&self) -> u32 {
        self.n_slots
    }

    /// The context's length, shared by the slots.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Cells one request may use: `n_ctx / n_slots`.
    pub fn n_ctx_per_request(&self) -> usize {
        self.n_ctx_slot
    }

    /// A snapshot of what the engine is doing.
    pub fn status(&self) -> EngineStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Checks and queues a request; its events come through the handle. The
    /// prompt is tokenized and the sampler built here, on the caller's
    /// thread, so that what is wrong with the request (an invalid token, a
    /// bad sampler value, a prompt longer than [`n_ctx_per_request`](Self::n_ctx_per_request):
    /// [`Error::PromptTooLong`]) is an `Err` of this call.
    pub fn submit(&self, request: Request) -> Result<RequestHandle> {
        let (pending, handle) = self.prepare(request, Instant::now())?;
        self.tx.send(Command::Submit(vec![pending])).map_err(|_| Error::Aborted)?;
        Ok(handle)
    }

    /// Submits several requests at once: they reach the engine together, so
    /// that (slots permitting) they start in the same step. Every request is
    /// checked first; if one is refused, none is queued.
    pub fn submit_all(&self, requests: impl IntoIterator<Item = Request>) -> Result<Vec<RequestHandle>> {
        let now = Instant::now();
        let (pending, handles): (Vec<_>, Vec<_>) =
            requests.into_iter().map(|r| self.prepare(r, now)).collect::<Result<Vec<_>>>()?.into_iter().unzip();
        self.tx.send(Command::Submit(pending)).map_err(|_| Error::Aborted)?;
        Ok(handles)
    }

    /// The model's chat template, compiled at the first use.
    fn chat_template(&self) -> Result<&crate::template::ChatTemplate> {
        if let Some(t) = self.chat_template.get() {
            return Ok(t);
        }
        let t = crate::template::ChatTemplate::from_model(&self.model, None)?;
        Ok(self.chat_template.get_or_init(|| t))
    }

    /// The tool-call format of a request that offers tools (`None` for one
    /// that does not, or with [`ToolChoice::None`](crate::ToolChoice::None)).
    fn tool_format(&self, request: &Request) -> Result<Option<crate::tools::ToolCallFormat>> {
        if request.tools.is_empty() || request.tool_choice == crate::tools::ToolChoice::None {
            return Ok(None);
        }
        if let Some(f) = request.tool_format {
            return Ok(Some(f));
        }
        self.chat_template().ok().and_then(crate::tools::ToolCallFormat::detect).map(Some).ok_or_else(|| {
            Error::invalid(
                "tools",
                request.tools.len(),
                "the model's chat template shows no known tool-call format: set one with Request::tool_format",
            )
        })
    }

    fn prepare(&self, request: Request, submitted: Instant) -> Result<(worker::Pending, RequestHandle)> {
        let vocab = self.model.vocab();
        let resumed = request.resume.as_ref().map_or(0, |s| s.tokens().len());
        let mut tokens = request.resume.as_ref().map_or_else(Vec::new, |s| s.tokens().to_vec());
        let add = if resumed > 0 { crate::vocab::AddSpecial::No } else { request.add_special };
        match &request.prompt {
            RequestPrompt::Text(text) => vocab.tokenize_into(text, add, request.parse_special, &mut tokens)?,
            RequestPrompt::Tokens(t) => tokens.extend_from_slice(t),
            RequestPrompt::Chat(messages) => {
                let template = self.chat_template()?;
                let mut options = request.chat_options.clone().add_generation_prompt(true);
                if !request.tools.is_empty() && request.tool_choice != crate::tools::ToolChoice::None {
                    options = options.tools(request.tools.iter().map(crate::tools::Tool::to_json).collect::<Vec<_>>());
                }
                let text = template.render(messages, &options)?;
                template.tokenize_into(vocab, &text, add, &mut tokens)?;
            }
        }
        if tokens.len() == resumed {
            return Err(Error::invalid("prompt", "(empty)", "needs at least one token to predict from"));
        }
        for &t in tokens.iter().chain(&request.stop_tokens) {
            vocab.check(t)?;
        }
        if let Some(i) = request.stop_strings.iter().position(|s| s.is_empty()) {
            return Err(Error::invalid("stop string", i, "stop strings must not be empty"));
        }
        if tokens.len() >= self.n_ctx_slot {
            return Err(Error::PromptTooLong { n_prompt: tokens.len(), n_ctx: self.n_ctx_slot });
        }
        if request.context_shift.is_some() && !self.can_shift {
            return Err(Error::Memory {
                op: "context shift",
                reason: "this model's memory cannot shift positions: leave context_shift off".into(),
            });
        }
        crate::adapter::check_set(&self.model, request.lora.iter().map(|(a, s)| (a, *s)))?;
        let tool_format = self.tool_format(&request)?;
        let mut sampler = match (request.sampler, tool_format) {
            (SamplerChoice::Params(p), None) => p.build(&self.model)?,
            (SamplerChoice::Params(p), Some(format)) => {
                if p.has_structured() {
                    return Err(Error::invalid(
                        "tools",
                        request.tools.len(),
                        "a request takes tools or a structured output of its own, not both",
                    ));
                }
                let required = request.tool_choice == crate::tools::ToolChoice::Required;
                p.structured(crate::guidance::Structured::ToolCalls { format, tools: request.tools, required })
                    .build(&self.model)?
            }
            (SamplerChoice::Custom(_), Some(_)) => {
                return Err(Error::invalid(
                    "tools",
                    request.tools.len(),
                    "tools need SamplingParams: with a sampler of your own, add Structured::ToolCalls to it",
                ))
            }
            (SamplerChoice::Custom(s), None) => s,
        };
        if sampler.n_vocab() != vocab.n_tokens() {
            return Err(Error::Sampler {
                message: format!(
                    "the sampler was built for {} tokens, the model's vocabulary has {}",
                    sampler.n_vocab(),
                    vocab.n_tokens()
                ),
            });
        }
        // Penalties and DRY see the prompt (the grammar does not).
        sampler.accept_prompt(&tokens)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared::new(id, tokens.clone(), self.cancels.clone(), tool_format));
        let pending = worker::Pending {
            shared: shared.clone(),
            tokens,
            resume: request.resume,
            sampler,
            max_tokens: request.max_tokens.unwrap_or(usize::MAX),
            stop_strings: request.stop_strings,
            stop_tokens: request.stop_tokens,
            ignore_eos: request.ignore_eos,
            logprobs: request.logprobs,
            context_shift: request.context_shift,
            save_state: request.save_state,
            special: request.special,
            submitted,
            lora: worker::canonical(request.lora),
        };
        Ok((pending, RequestHandle { shared, wake_engine: self.tx.clone() }))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
