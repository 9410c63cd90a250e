//! A context: the KV cache and compute state for decoding with a [`Model`].
//! The KV cache's operations (`seq_rm`, `seq_cp`, ...) are `context/kv_cache.rs`.

use crate::adapter::LoraAdapter;
use crate::backend::log_error_or;
use crate::batch::{Batch, Pos, SeqId, MAX_POS};
use crate::embed::Pooling;
use crate::error::{Error, Result};
use crate::ffi::{shim_ptr, shim_value, try_with_capacity};
use crate::model::{Model, ModelRef, SplitMode};
use crate::vocab::Vocab;
use llama_sys as sys;
use std::ops::{Bound, RangeBounds};
use std::ptr::NonNull;
use std::sync::Arc;

mod kv_cache;

/// When to use flash attention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FlashAttention {
    /// llama.cpp decides per device (the default).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never (not allowed with [`SplitMode::Tensor`]).
    Off,
}

impl std::str::FromStr for FlashAttention {
    type Err = Error;
    fn from_str(s: &str) -> Result<FlashAttention> {
        match s {
            "auto" | "-1" => Ok(FlashAttention::Auto),
            "on" | "1" | "true" => Ok(FlashAttention::On),
            "off" | "0" | "false" => Ok(FlashAttention::Off),
            _ => Err(Error::invalid("flash attention", s, "expected auto, on or off")),
        }
    }
}

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KvType {
    /// 32-bit float.
    F32,
    /// 16-bit float (the default).
    #[default]
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit quantized.
    Q8_0,
    /// 4-bit quantized.
    Q4_0,
    /// 4-bit quantized with offset.
    Q4_1,
    /// 4-bit non-linear.
    Iq4Nl,
    /// 5-bit quantized.
    Q5_0,
    /// 5-bit quantized with offset.
    Q5_1,
}

impl KvType {
    pub(crate) fn raw(self) -> sys::ggml_type {
        match self {
            KvType::F32 => sys::GGML_TYPE_F32,
            KvType::F16 => sys::GGML_TYPE_F16,
            KvType::Bf16 => sys::GGML_TYPE_BF16,
            KvType::Q8_0 => sys::GGML_TYPE_Q8_0,
            KvType::Q4_0 => sys::GGML_TYPE_Q4_0,
            KvType::Q4_1 => sys::GGML_TYPE_Q4_1,
            KvType::Iq4Nl => sys::GGML_TYPE_IQ4_NL,
            KvType::Q5_0 => sys::GGML_TYPE_Q5_0,
            KvType::Q5_1 => sys::GGML_TYPE_Q5_1,
        }
    }

    /// The name llama-bench uses: `f16`, `q8_0`, ...
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
            KvType::Q4_1 => "q4_1",
            KvType::Iq4Nl => "iq4_nl",
            KvType::Q5_0 => "q5_0",
            KvType::Q5_1 => "q5_1",
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = Error;
    fn from_str(s: &str) -> Result<KvType> {
        [
            KvType::F32,
            KvType::F16,
            KvType::Bf16,
            KvType::Q8_0,
            KvType::Q4_0,
            KvType::Q4_1,
            KvType::Iq4Nl,
            KvType::Q5_0,
            KvType::Q5_1,
        ]
        .into_iter()
        .find(|t| t.name() == s)
        .ok_or_else(|| {
            Error::invalid("KV cache type", s, "expected f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0 or q5_1")
        })
    }
}

/// Context length a [`ContextParams`] asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CtxSize {
    /// [`DEFAULT_N_CTX`] tokens, or the model's training length when that is
    /// smaller (the default: a 128k-token model does not get a 16 GiB cache
    /// unasked).
    #[default]
    Default,
    /// The model's training length ([`Model::n_ctx_train`]).
    Train,
    /// This many tokens (llama.cpp pads it to a multiple of 256).
    Tokens(u32),
}

/// The context length a context gets unless told otherwise: 4096 tokens, or
/// the model's training length when smaller.
pub const DEFAULT_N_CTX: u32 = 4096;

/// Parameters for [`Model::new_context`]: a setter for every field, checked
/// when the context is created. Defaults: [`CtxSize::Default`] (4096 tokens
/// or the training length when smaller), n_batch 2048, n_ubatch 512, one
/// sequence, one KV stream per sequence, the physical CPU cores as threads,
/// flash attention auto, F16 KV cache, no embeddings, KV cache on the GPU.
#[derive(Clone, Debug)]
pub struct ContextParams {
    n_ctx: CtxSize,
    n_batch: u32,
    n_ubatch: u32,
    n_seq_max: u32,
    kv_unified: bool,
    n_threads: u32,
    n_threads_batch: u32,
    flash_attention: FlashAttention,
    type_k: KvType,
    type_v: KvType,
    embeddings: bool,
    pooling: Option<Pooling>,
    offload_kqv: bool,
    no_perf: bool,
}

impl Default for ContextParams {
    fn default() -> Self {
        let threads = crate::backend::physical_cores();
        ContextParams {
            n_ctx: CtxSize::Default,
            n_batch: 2048,
            n_ubatch: 512,
            n_seq_max: 1,
            kv_unified: false,
            n_threads: threads,
            n_threads_batch: threads,
            flash_attention: FlashAttention::Auto,
            type_k: KvType::F16,
            type_v: KvType::F16,
            embeddings: false,
            pooling: None,
            offload_kqv: true,
            no_perf: false,
        }
    }
}

impl ContextParams {
    /// Sets the context length in tokens (llama.cpp pads it; read back
    /// [`Context::n_ctx`]).
    pub fn n_ctx(mut self, n: u32) -> Self {
        self.n_ctx = CtxSize::Tokens(n);
        self
    }
    /// Sets the context length as a [`CtxSize`] (e.g. the training length).
    pub fn ctx_size(mut self, size: CtxSize) -> Self {
        self.n_ctx = size;
        self
    }
    /// Sets n_batch, the most tokens one `decode` call may take (and lowers
    /// n_ubatch to it if needed).
    pub fn n_batch(mut self, n: u32) -> Self {
        self.n_batch = n;
        self.n_ubatch = self.n_ubatch.min(n);
        self
    }
    /// Sets n_ubatch, the physical batch computed at once (<= n_batch).
    pub fn n_ubatch(mut self, n: u32) -> Self {
        self.n_ubatch = n;
        self
    }
    /// Sets the number of sequences (distinct KV states) the context holds.
    pub fn n_seq_max(mut self, n: u32) -> Self {
        self.n_seq_max = n;
        self
    }
    /// One KV cache shared by all sequences (`true`), instead of one stream
    /// of `n_ctx / n_seq_max` cells per sequence (default `false`). A unified
    /// cache lets sequences share cells (a common prompt prefix is stored
    /// once, [`Context::seq_cp`] of any range) and lets one sequence use more
    /// than its share; the serving [`Engine`](crate::Engine) uses it.
    pub fn kv_unified(mut self, yes: bool) -> Self {
        self.kv_unified = yes;
        self
    }
    /// Sets both thread counts.
    pub fn threads(mut self, n: u32) -> Self {
        self.n_threads = n;
        self.n_threads_batch = n;
        self
    }
    /// Sets the threads for single-token (generation) decodes.
    pub fn n_threads(mut self, n: u32) -> Self {
        self.n_threads = n;
        self
    }
    /// Sets the threads for prompt (batch) decodes.
    pub fn n_threads_batch(mut self, n: u32) -> Self {
        self.n_threads_batch = n;
        self
    }
    /// Sets flash attention.
    pub fn flash_attention(mut self, fa: FlashAttention) -> Self {
        self.flash_attention = fa;
        self
    }
    /// Sets both KV cache types.
    pub fn kv_type(mut self, t: KvType) -> Self {
        self.type_k = t;
        self.type_v = t;
        self
    }
    /// Sets the K cache type.
    pub fn type_k(mut self, t: KvType) -> Self {
        self.type_k = t;
        self
    }
    /// Sets the V cache type (quantized types need flash attention).
    pub fn type_v(mut self, t: KvType) -> Self {
        self.type_v = t;
        self
    }
    /// Enables embeddings output.
    pub fn embeddings(mut self, yes: bool) -> Self {
        self.embeddings = yes;
        self
    }
    /// How an embeddings context pools each sequence's token embeddings
    /// ([`Context::seq_embeddings`]); without this call, the model's own
    /// choice ([`Model::pooling`], [`Pooling::None`] when it has none).
    /// [`Pooling::Rank`] needs a model with a classifier head (a reranker).
    pub fn pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = Some(pooling);
        self
    }
    /// Keeps the KV cache and attention on the GPU (default true).
    pub fn offload_kqv(mut self, yes: bool) -> Self {
        self.offload_kqv = yes;
        self
    }
    /// Skips llama.cpp's performance counters.
    pub fn no_perf(mut self, yes: bool) -> Self {
        self.no_perf = yes;
        self
    }

    /// The context length these parameters give with `model`, before
    /// llama.cpp's padding.
    pub fn resolved_n_ctx(&self, model: &Model) -> u32 {
        match self.n_ctx {
            CtxSize::Default => match model.n_ctx_train() {
                0 => DEFAULT_N_CTX,
                t => t.min(DEFAULT_N_CTX),
            },
            CtxSize::Train => model.n_ctx_train(),
            CtxSize::Tokens(n) => n,
        }
    }

    /// The sequences per context these parameters ask for.
    pub fn seq_max(&self) -> u32 {
        self.n_seq_max
    }

    /// The raw llama.cpp parameters these settings give with `model`, for
    /// [`crate::sys`] calls (the benchmarks build raw contexts with them).
    pub fn to_raw(&self, model: &Model) -> sys::llama_context_params {
        // SAFETY: plain struct of defaults.
        let mut raw = unsafe { sys::llama_context_default_params() };
        raw.n_ctx = self.resolved_n_ctx(model);
        raw.n_batch = self.n_batch;
        raw.n_ubatch = self.n_ubatch.min(self.n_batch);
        raw.n_seq_max = self.n_seq_max;
        raw.kv_unified = self.kv_unified;
        raw.n_threads = self.n_threads.min(i32::MAX as u32) as i32;
        raw.n_threads_batch = self.n_threads_batch.min(i32::MAX as u32) as i32;
        raw.flash_attn_type = match self.flash_attention {
            FlashAttention::Auto => sys::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        raw.type_k = self.type_k.raw();
        raw.type_v = self.type_v.raw();
        raw.embeddings = self.embeddings;
        raw.pooling_type = self.pooling.map_or(sys::LLAMA_POOLING_TYPE_UNSPECIFIED, Pooling::raw);
        raw.offload_kqv = self.offload_kqv;
        raw.no_perf = self.no_perf;
        raw
    }

    fn validate(&self, model: &Model) -> Result<()> {
        if model.is_vocab_only() {
            return Err(Error::ContextCreate {
                message: "the model was loaded with vocab_only: it has no weights to run".into(),
            });
        }
        let nonzero = |name: &'static str, v: u32| {
            if v == 0 || v > i32::MAX as u32 {
                Err(Error::invalid(name, v, "must be between 1 and i32::MAX"))
            } else {
                Ok(())
            }
        };
        nonzero("n_batch", self.n_batch)?;
        nonzero("n_ubatch", self.n_ubatch)?;
        nonzero("n_seq_max", self.n_seq_max)?;
        nonzero("n_threads", self.n_threads)?;
        nonzero("n_threads_batch", self.n_threads_batch)?;
        if let CtxSize::Tokens(n) = self.n_ctx {
            nonzero("n_ctx", n)?;
        }
        let max_seq = crate::ffi::max_sequences();
        if self.n_seq_max as usize > max_seq {
            return Err(Error::invalid("n_seq_max", self.n_seq_max, format!("llama.cpp supports at most {max_seq}")));
        }
        // llama.cpp takes n_ctx 0 as the training length, clamps n_batch to
        // n_ctx (causal models), then reserves one output row per sequence
        // and asserts that they fit in n_batch (llama-context.cpp:135, 248,
        // 379, 2275): check both here.
        let n_ctx = self.resolved_n_ctx(model);
        if n_ctx == 0 {
            return Err(Error::invalid("n_ctx", 0, "the model gives no training context length: set n_ctx"));
        }
        let n_batch = self.n_batch.min(n_ctx);
        if self.n_seq_max > n_batch {
            return Err(Error::invalid(
                "n_seq_max",
                self.n_seq_max,
                format!(
                    "more sequences than n_batch = {n_batch} (n_batch is clamped to n_ctx): llama.cpp reserves \
                     one output row per sequence"
                ),
            ));
        }
        if self.embeddings {
            // The micro-batch llama.cpp reserves its graph for (sched_reserve):
            // n_ctx padded to 256, then n_batch and n_ubatch clamped to it.
            let n_ctx_padded = n_ctx.checked_next_multiple_of(256).unwrap_or(u32::MAX);
            let reserve_tokens = n_ctx_padded.min(self.n_batch).min(self.n_ubatch);
            crate::embed::check_pooling(model, self.pooling, reserve_tokens, self.n_seq_max)?;
        }
        if model.split_mode() == SplitMode::Tensor && self.flash_attention == FlashAttention::Off {
            return Err(Error::SplitMode {
                mode: "tensor",
                reason: "needs flash attention: use FlashAttention::Auto or On".into(),
            });
        }
        Ok(())
    }
}

/// Performance counters of a context (llama.cpp's own timings).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PerfContext {
    /// Model load time, ms.
    pub load_ms: f64,
    /// Time spent on prompt (multi-token) decodes, ms.
    pub prompt_eval_ms: f64,
    /// Time spent on single-token decodes, ms.
    pub eval_ms: f64,
    /// Tokens decoded as prompt.
    pub n_prompt_tokens: i32,
    /// Tokens decoded one at a time.
    pub n_eval_tokens: i32,
}

/// Decoding state on a [`Model`]: KV cache, logits, threads.
///
/// `Send` but not `Sync`: move it to another thread, but do not share it;
/// llama.cpp does no locking inside a context. It borrows its model, so it
/// cannot outlive it:
///
/// ```compile_fail,E0597
/// # fn f() -> llama_rs::Result<()> {
/// let ctx = {
///     let model = llama_rs::Model::load("model.gguf")?;
///     model.new_context(Default::default())?
/// }; // error: `model` does not live long enough
/// # drop(ctx); Ok(()) }
/// ```
///
/// ```compile_fail,E0277
/// fn needs_sync<T: Sync>() {}
/// needs_sync::<llama_rs::Context<'static>>();
/// ```
pub struct Context<'m> {
    ptr: NonNull<sys::llama_context>,
    model: ModelRef<'m>,
    kv_unified: bool,
    kv_types: (KvType, KvType),
    /// The abort callback llama.cpp calls during decodes; boxed so that its
    /// address stays put while the context moves.
    abort: Option<Box<Box<AbortFn>>>,
    n_ctx: u32,
    n_batch: u32,
    n_ubatch: u32,
    n_seq_max: u32,
    n_vocab: i32,
    embeddings: bool,
    /// The pooling llama.cpp resolved for this context.
    pooling: Pooling,
    /// Positions the model has learned embeddings for (`position_embd`,
    /// GPT-2/BERT-style models): a batch position past them makes ggml's
    /// row lookup abort.
    pos_limit: Option<Pos>,
    /// The LoRA adapters applied, with their scales (none zero); holding
    /// them keeps them alive while llama.cpp's context points to them.
    loras: Vec<(LoraAdapter<'m>, f32)>,
    /// A LoRA or control-vector change makes llama.cpp re-reserve its graph
    /// at the next decode, which reads the model's adapter list: that decode
    /// runs under the model's write lock.
    reserve_pending: bool,
    /// Output flags of the rows of the last successful decode.
    outputs: Vec<i8>,
}

// SAFETY: a llama_context may be used from any thread, one at a time; `&mut
// self` on every mutating method and the missing Sync ensure that. The model
// it borrows or shares is Sync; the abort callback is `Send`; the LoRA
// adapters it holds are Send + Sync (read-only after loading).
unsafe impl Send for Context<'_> {}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("n_ctx", &self.n_ctx)
            .field("n_batch", &self.n_batch)
            .field("n_ubatch", &self.n_ubatch)
            .field("n_seq_max", &self.n_seq_max)
            .finish()
    }
}

/// A context's abort callback (see [`Context::set_abort_callback`]).
type AbortFn = dyn FnMut() -> bool + Send;

extern "C" fn abort_trampoline(user: *mut std::os::raw::c_void) -> bool {
    // SAFETY: `user` is the `Box<AbortFn>` the context owns and registered;
    // llama.cpp calls back only during a decode on the thread that holds
    // `&mut Context`, so nothing else touches it meanwhile.
    let f = unsafe { &mut *(user as *mut Box<AbortFn>) };
    // A panic must not unwind into C: it aborts the decode instead.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(true)
}

/// A context that failed to allocate (host `std::bad_alloc`, a device buffer
/// for the KV cache or the compute graph): says what was asked and how to ask
/// for less.
fn out_of_memory_hint(e: Error, params: &ContextParams, model: &Model) -> Error {
    let Error::ContextCreate { message } = e else { return e };
    if !crate::error::is_allocation_failure(&message) {
        return Error::ContextCreate { message };
    }
    let n_ctx = params.resolved_n_ctx(model);
    let train = model.n_ctx_train();
    Error::ContextCreate {
        message: format!(
            "{message}. The context asked for {n_ctx} tokens (the model was trained for {train}), n_seq_max {}, \
             KV cache {}/{}: lower n_ctx or n_seq_max, quantize the KV cache (type_k/type_v), or see what a \
             context needs with llama_rs::plan_memory",
            params.n_seq_max,
            params.type_k.name(),
            params.type_v.name()
        ),
    }
}

impl Model {
    /// Creates a context on this model, borrowing it. Parameters are checked
    /// first; the values llama.cpp actually chose (padding, clamping) are
    /// read back.
    pub fn new_context(&self, params: ContextParams) -> Result<Context<'_>> {
        if self.dry {
            return Err(Error::ContextCreate { message: "the model was loaded for a memory plan only".into() });
        }
        Context::create(ModelRef::Borrowed(self), params)
    }

    /// Creates a context that holds its model through the `Arc`: a
    /// `Context<'static>`, which can live in a server's shared state, a
    /// spawned thread or a struct beside the model, without leaking it. The
    /// model is freed when the last `Arc` (contexts and samplers included) goes.
    ///
    /// ```no_run
    /// # fn f() -> llama_rs::Result<()> {
    /// use std::sync::Arc;
    /// let model = Arc::new(llama_rs::Model::load("model.gguf")?);
    /// let ctx: llama_rs::Context<'static> = model.new_owned_context(Default::default())?;
    /// std::thread::spawn(move || drop(ctx)).join().unwrap();
    /// # Ok(()) }
    /// ```
    pub fn new_owned_context(self: &Arc<Self>, params: ContextParams) -> Result<Context<'static>> {
        if self.dry {
            return Err(Error::ContextCreate { message: "the model was loaded for a memory plan only".into() });
        }
        Context::create(ModelRef::Shared(Arc::clone(self)), params)
    }

    /// A context whose allocations are only simulated (memory plans).
    pub(crate) fn new_context_dry(&self, params: ContextParams) -> Result<Context<'_>> {
        debug_assert!(self.dry);
        Context::create(ModelRef::Borrowed(self), params)
    }
}

impl<'m> Context<'m> {
    fn create(model: ModelRef<'m>, params: ContextParams) -> Result<Context<'m>> {
        params.validate(&model)?;
        // A model whose RPC server failed makes no more contexts.
        model.rpc.check()?;
        let raw = params.to_raw(&model);
        let ptr = {
            // Context creation writes to the model: one at a time per model.
            let _guard = model.write_lock.lock().unwrap_or_else(|e| e.into_inner());
            shim_ptr(
                "llama_init_from_model",
                "llama.cpp returned no context",
                // SAFETY: live model, plain parameter struct; the shim catches
                // C++ exceptions.
                |out| unsafe { sys::llama_rs_init_from_model(model.as_ptr(), raw, out) },
                |message| Error::ContextCreate { message },
            )
            // a backend that could not start on a failed RPC server: say which
            .map_err(|e| model.rpc.check().err().unwrap_or_else(|| out_of_memory_hint(e, &params, &model)))?
        };
        // SAFETY: live context.
        let (n_ctx, n_batch, n_ubatch, n_seq_max) = unsafe {
            let c = ptr.as_ptr();
            (sys::llama_n_ctx(c), sys::llama_n_batch(c), sys::llama_n_ubatch(c), sys::llama_n_seq_max(c))
        };
        let n_vocab = model.vocab().n_tokens();
        // SAFETY: live context; a plain query of the resolved parameter.
        let pooling = Pooling::from_raw(unsafe { sys::llama_pooling_type(ptr.as_ptr()) }).unwrap_or(Pooling::None);
        // gpt2, starcoder, mpt, bert: `ggml_get_rows(pos_embd, inp_pos)`.
        let pos_limit = model
            .tensor_info("position_embd.weight")
            .map(|(ne, _)| Pos::try_from(ne[1]).unwrap_or(MAX_POS).min(MAX_POS));
        let mut ctx = Context {
            ptr,
            model,
            kv_unified: params.kv_unified,
            kv_types: (params.type_k, params.type_v),
            abort: None,
            n_ctx,
            n_batch,
            n_ubatch,
            n_seq_max,
            n_vocab,
            embeddings: params.embeddings,
            pooling,
            pos_limit,
            loras: Vec::new(),
            reserve_pending: false,
            // Filled below; the context is freed by Drop if that fails.
            outputs: Vec::new(),
        };
        ctx.outputs = try_with_capacity(n_batch as usize, "the context's output flags", n_batch as usize)?;
        Ok(ctx)
    }
}

impl<'m> Context<'m> {
    pub(crate) fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model's vocabulary.
    pub fn vocab(&self) -> Vocab<'_> {
        self.model.vocab()
    }

    /// The raw `llama_context` pointer, for [`crate::sys`] calls the safe API
    /// does not cover. Valid while `self` lives; never free it. Using it is
    /// `unsafe` and bypasses every check of this crate.
    pub fn as_raw_ptr(&self) -> *mut sys::llama_context {
        self.as_ptr()
    }

    /// Whether all sequences share one KV cache ([`ContextParams::kv_unified`]).
    pub fn kv_unified(&self) -> bool {
        self.kv_unified
    }

    /// The K and V cache types.
    pub fn kv_types(&self) -> (KvType, KvType) {
        self.kv_types
    }

    /// Cells one sequence can hold: `n_ctx` with a unified cache, else its
    /// share `n_ctx / n_seq_max`.
    pub fn n_ctx_seq(&self) -> u32 {
        // SAFETY: live context; a plain query.
        unsafe { sys::llama_n_ctx_seq(self.as_ptr()) }
    }

    /// Installs `f`, called by llama.cpp between the steps of every decode:
    /// returning `true` stops the decode, which then returns
    /// [`Error::Aborted`]. This is how another thread cancels a long prompt
    /// (`f` reads a flag it sets). What the aborted decode had put in the KV
    /// cache for its last micro-batch is removed by llama.cpp; earlier
    /// micro-batches of the same call stay (remove them with
    /// [`seq_rm`](Self::seq_rm) to retry). A panic in `f` aborts the decode.
    /// `None` removes it.
    pub fn set_abort_callback(&mut self, f: Option<Box<dyn FnMut() -> bool + Send>>) {
        match f {
            Some(f) => {
                let mut boxed: Box<Box<AbortFn>> = Box::new(f);
                let user = (&mut *boxed as *mut Box<AbortFn>).cast();
                // SAFETY: live context; `user` points to the heap box kept in
                // `self.abort` until it is replaced or the context is freed
                // (this call and Drop unregister it first).
                unsafe { sys::llama_set_abort_callback(self.as_ptr(), Some(abort_trampoline), user) };
                self.abort = Some(boxed);
            }
            None => {
                // SAFETY: live context; unregisters before the box is dropped.
                unsafe { sys::llama_set_abort_callback(self.as_ptr(), None, std::ptr::null_mut()) };
                self.abort = None;
            }
        }
    }

    /// Context length actually allocated (llama.cpp pads the request).
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }
    /// Most tokens one decode call takes.
    pub fn n_batch(&self) -> u32 {
        self.n_batch
    }
    /// Physical batch size.
    pub fn n_ubatch(&self) -> u32 {
        self.n_ubatch
    }
    /// Number of sequences.
    pub fn n_seq_max(&self) -> u32 {
        self.n_seq_max
    }

    /// Threads used for single-token and batch decoding.
    pub fn threads(&self) -> (u32, u32) {
        // SAFETY: live context.
        unsafe { (sys::llama_n_threads(self.as_ptr()) as u32, sys::llama_n_threads_batch(self.as_ptr()) as u32) }
    }

    /// Changes the thread counts.
    pub fn set_threads(&mut self, n_threads: u32, n_threads_batch: u32) -> Result<()> {
        for (name, v) in [("n_threads", n_threads), ("n_threads_batch", n_threads_batch)] {
            if v == 0 || v > i32::MAX as u32 {
                return Err(Error::invalid(name, v, "must be between 1 and i32::MAX"));
            }
        }
        // SAFETY: live context, valid counts.
        unsafe { sys::llama_set_n_threads(self.as_ptr(), n_threads as i32, n_threads_batch as i32) };
        Ok(())
    }

    fn check_seq(&self, seq_id: SeqId) -> Result<()> {
        if seq_id < 0 || seq_id as u32 >= self.n_seq_max {
            Err(Error::InvalidSeqId { seq_id, n_seq_max: self.n_seq_max })
        } else {
            Ok(())
        }
    }

    /// Checks a batch against everything llama.cpp would abort on.
    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let n = batch.len();
        if n == 0 {
            return Err(Error::BatchInvalid { n_tokens: 0, reason: "the batch is empty".into() });
        }
        if n > self.n_batch as usize {
            return Err(Error::BatchInvalid {
                n_tokens: n,
                reason: format!(
                    "more than the context's n_batch = {}: split it, or create the context with a larger n_batch",
                    self.n_batch
                ),
            });
        }
        // SAFETY: live context.
        let causal = unsafe { sys::llama_get_causal_attn(self.as_ptr()) };
        if !causal && n > self.n_ubatch as usize {
            return Err(Error::BatchInvalid {
                n_tokens: n,
                reason: format!(
                    "non-causal attention needs the whole batch in one ubatch (n_ubatch = {})",
                    self.n_ubatch
                ),
            });
        }
        for &t in batch.tokens() {
            if t.0 < 0 || t.0 >= self.n_vocab {
                return Err(Error::InvalidToken { token: t.0, n_vocab: self.n_vocab });
            }
        }
        for &s in batch.all_seq_ids() {
            self.check_seq(s)?;
        }
        Ok(())
    }

    /// Decodes a batch: runs the model on its tokens and fills the KV cache;
    /// logits of the rows marked as outputs are then available through
    /// [`logits`](Self::logits).
    pub fn decode(&mut self, batch: &mut Batch) -> Result<()> {
        if self.model.dry {
            return Err(Error::BatchInvalid {
                n_tokens: batch.len(),
                reason: "a memory-plan context cannot decode".into(),
            });
        }
        self.check_batch(batch)?;
        // A model whose RPC server failed fails at once.
        self.model.rpc.check()?;
        let raw = batch.as_raw();
        if let Some(limit) = self.pos_limit {
            // SAFETY: `as_raw` points `pos` at the batch's own n_tokens
            // positions, alive and unchanged while `batch` is borrowed here.
            let positions = unsafe { std::slice::from_raw_parts(raw.pos, raw.n_tokens as usize) };
            if let Some(&p) = positions.iter().find(|&&p| p >= limit) {
                return Err(Error::BatchInvalid {
                    n_tokens: batch.len(),
                    reason: format!(
                        "position {p}: the model has learned position embeddings for positions 0..{limit} only \
                         (position_embd, its training context); ggml's row lookup would abort past them"
                    ),
                });
            }
        }
        self.outputs.clear();
        // After a LoRA or control-vector change llama.cpp re-reserves its
        // graph in this decode and reads the model's adapter list
        // (`llama-context.cpp` graph_max_nodes), which loading or freeing an
        // adapter on another thread writes: serialised per model.
        let _model_guard =
            self.reserve_pending.then(|| self.model.write_lock.lock().unwrap_or_else(|e| e.into_inner()));
        // With an abort callback, a decode may be stopped on purpose: its
        // error lines are then logged at debug level only.
        let abortable = self.abort.is_some();
        if abortable {
            crate::backend::defer_warnings();
        }
        let ret = shim_value(
            "llama_decode",
            // SAFETY: the batch was checked above (size, ids, sequences); its
            // buffers outlive the call; the shim catches C++ exceptions.
            |ret| unsafe { sys::llama_rs_decode(self.as_ptr(), raw, ret) },
        );
        if abortable {
            crate::backend::release_warnings(matches!(ret, Ok(2)));
        }
        let ret = ret?;
        // A failed RPC call leaves zeros, not an error code: ask the watch.
        self.model.rpc.check()?;
        match ret {
            0 => {
                self.reserve_pending = false;
                if self.embeddings {
                    // An embeddings context outputs every row, marked or not
                    // (`llama-context.cpp:1737`, `llama-batch.cpp:193`).
                    self.outputs.resize(batch.len(), 1);
                } else {
                    self.outputs.extend_from_slice(batch.output_flags());
                }
                Ok(())
            }
            1 => Err(Error::ContextFull { n_ctx: self.n_ctx, message: log_error_or("no KV cache slot for the batch") }),
            2 => Err(Error::Aborted),
            code => Err(Error::Decode { code, message: log_error_or("llama_decode failed") }),
        }
    }

    /// Checks that row `i` of the last decoded batch has outputs.
    pub(crate) fn check_output(&self, i: i32) -> Result<()> {
        if self.outputs.is_empty() {
            return Err(Error::NoLogits { index: i, reason: "nothing decoded yet".into() });
        }
        match usize::try_from(i).ok().and_then(|u| self.outputs.get(u)) {
            None => {
                Err(Error::NoLogits { index: i, reason: format!("the last batch had {} rows", self.outputs.len()) })
            }
            Some(0) => {
                Err(Error::NoLogits { index: i, reason: "the row was not marked for logits in the batch".into() })
            }
            Some(_) => Ok(()),
        }
    }

    /// Index of the last output row of the last decode, if any.
    pub fn last_output(&self) -> Option<i32> {
        self.outputs.iter().rposition(|&o| o != 0).map(|i| i as i32)
    }

    /// Logits (one per vocabulary entry) of row `i` of the last decoded
    /// batch, read in place: no copy. The row must have been marked for logits.
    pub fn logits(&self, i: i32) -> Result<&[f32]> {
        self.check_output(i)?;
        // SAFETY: row i is an output of the last decode (checked), so
        // llama.cpp returns its row of n_vocab floats, valid until the next
        // decode, which needs &mut self.
        let ptr = unsafe { sys::llama_get_logits_ith(self.as_ptr(), i) };
        if ptr.is_null() {
            return Err(Error::NoLogits { index: i, reason: log_error_or("llama.cpp has no logits for it") });
        }
        // SAFETY: see above; n_vocab floats.
        Ok(unsafe { std::slice::from_raw_parts(ptr, self.n_vocab as usize) })
    }

    /// Embeddings of row `i` (contexts created with `embeddings(true)`, where
    /// every row of a batch is an output): [`Model::n_embd_out`] floats.
    pub fn embeddings(&self, i: i32) -> Result<&[f32]> {
        if !self.embeddings {
            return Err(Error::NoLogits { index: i, reason: "the context was created without embeddings".into() });
        }
        if self.pooling != Pooling::None {
            // llama.cpp then fills only the per-sequence rows: the per-token
            // buffer exists but holds nothing written (`llama-context.cpp`,
            // the pooling switch of decode).
            return Err(Error::NoLogits {
                index: i,
                reason: format!(
                    "the context pools ({}): read one row per sequence with seq_embeddings, or create the context \
                     with ContextParams::pooling(Pooling::None) for per-token rows",
                    self.pooling.name()
                ),
            });
        }
        self.check_output(i)?;
        // SAFETY: as for logits; n_embd floats per row.
        let ptr = unsafe { sys::llama_get_embeddings_ith(self.as_ptr(), i) };
        if ptr.is_null() {
            return Err(Error::NoLogits { index: i, reason: log_error_or("llama.cpp has no embeddings for it") });
        }
        // SAFETY: llama.cpp lays out the rows every n_embd_out floats
        // (`llama-context.cpp:987`); the validator bounds n_embd_out by what
        // the graph writes. Owned by the context, valid until the next decode.
        Ok(unsafe { std::slice::from_raw_parts(ptr, self.model.n_embd_out() as usize) })
    }

    /// The pooling of this context, as llama.cpp resolved it (the
    /// [`ContextParams::pooling`] asked for, else the model's).
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The positions a token may have in this context's model, when the
    /// model limits them: models with learned absolute position embeddings
    /// (GPT-2, StarCoder, BERT: `position_embd`) know positions
    /// `0..max_positions()` only, and a batch past them is refused
    /// ([`Error::BatchInvalid`]). `None`: no such limit (RoPE and ALiBi
    /// models; positions past the training length only lose quality).
    pub fn max_positions(&self) -> Option<Pos> {
        self.pos_limit
    }

    /// The pooled row of sequence `seq` after the last decode (contexts
    /// created with `embeddings(true)` and a pooling other than
    /// [`Pooling::None`]): [`Model::n_embd_out`] floats for mean, CLS and last
    /// pooling, the classifier's [`Model::n_cls_out`] scores for rank pooling.
    /// The sequence must have had tokens in the last decode, and all of its
    /// tokens must have been in that decode, in one micro-batch (llama.cpp
    /// pools each micro-batch on its own): [`Embedder`](crate::Embedder)
    /// arranges that.
    pub fn seq_embeddings(&self, seq: SeqId) -> Result<&[f32]> {
        let err = |reason: String| Err(Error::NoLogits { index: seq, reason });
        if !self.embeddings {
            return err("the context was created without embeddings".into());
        }
        if self.pooling == Pooling::None {
            return err("the context does not pool (Pooling::None): read per-token rows with embeddings(i)".into());
        }
        self.check_seq(seq)?;
        if self.outputs.is_empty() {
            return err("nothing decoded yet (or the last decode failed)".into());
        }
        // SAFETY: live context, sequence id in range; llama.cpp looks the id
        // up in its per-sequence map and returns NULL when absent.
        let ptr = unsafe { sys::llama_get_embeddings_seq(self.as_ptr(), seq) };
        if ptr.is_null() {
            return err(format!("sequence {seq} had no tokens in the last decode"));
        }
        let width = match self.pooling {
            Pooling::Rank => self.model.n_cls_out(),
            _ => self.model.n_embd_out(),
        };
        // SAFETY: llama.cpp sized this sequence's row to n_cls_out (rank) or
        // n_embd_out (the other poolings) floats in the last decode
        // (`llama-context.cpp`, the pooling switch); it lives in the context
        // until the next decode, which needs &mut self.
        Ok(unsafe { std::slice::from_raw_parts(ptr, width as usize) })
    }

    /// llama.cpp's performance counters for this context.
    pub fn perf(&self) -> PerfContext {
        // SAFETY: live context.
        let p = unsafe { sys::llama_perf_context(self.as_ptr()) };
        PerfContext {
            load_ms: p.t_load_ms,
            prompt_eval_ms: p.t_p_eval_ms,
            eval_ms: p.t_eval_ms,
            n_prompt_tokens: p.n_p_eval,
            n_eval_tokens: p.n_eval,
        }
    }

    /// Resets the performance counters.
    pub fn reset_perf(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_perf_context_reset(self.as_ptr()) };
    }

    /// Waits for pending GPU work of the last decode.
    pub fn synchronize(&mut self) {
        // SAFETY: live context.
        unsafe { sys::llama_synchronize(self.as_ptr()) };
    }
}

/// LoRA adapters and control vectors.
impl<'m> Context<'m> {
    /// Applies exactly this set of LoRA adapters, each with its scale,
    /// replacing the set applied before (llama.cpp's `llama_set_adapters_lora`).
    /// A scale of 0 leaves the adapter out; `&[]` removes every adapter.
    ///
    /// Cheap when nothing changes: a set equal to the current one (the same
    /// adapters with the same scales, in any order) returns at once, so a
    /// server can call this before every step for the request it decodes.
    /// A changed set makes the next [`decode`](Self::decode) rebuild
    /// llama.cpp's compute graph (and take the model's lock while it does).
    ///
    /// The context keeps the adapters it uses alive: dropping a
    /// [`LoraAdapter`] handle while a context still applies it is fine.
    /// Errors: an adapter loaded for another model, a scale that is not
    /// finite, or an adapter listed twice ([`Error::InvalidParam`]).
    pub fn set_lora(&mut self, adapters: &[(&LoraAdapter<'m>, f32)]) -> Result<()> {
        let mut set: Vec<(LoraAdapter<'m>, f32)> =
            try_with_capacity(adapters.len(), "the LoRA set", adapters.len() * std::mem::size_of::<(usize, f32)>())?;
        crate::adapter::check_set(&self.model, adapters.iter().copied())?;
        for &(adapter, scale) in adapters {
            // llama.cpp leaves zero scales out (`llama-context.cpp`
            // set_adapters_lora); so does the kept set, for the comparison.
            if scale != 0.0 {
                set.push((adapter.clone(), scale));
            }
        }
        let unchanged = set.len() == self.loras.len()
            && set.iter().all(|(a, s)| self.loras.iter().any(|(b, t)| a.same(b) && s.to_bits() == t.to_bits()));
        if unchanged {
            return Ok(());
        }
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> = set.iter().map(|(a, _)| a.as_ptr()).collect();
        let mut scales: Vec<f32> = set.iter().map(|&(_, s)| s).collect();
        // SAFETY: live context; `ptrs` and `scales` hold set.len() entries
        // each (both NULL-free when empty: Vec's dangling pointers are never
        // read for n = 0); every adapter belongs to this context's model and
        // is kept alive by `self.loras` while llama.cpp's context points to
        // it (replaced only by the next call, which replaces llama.cpp's set
        // too, or freed after llama_free in Drop).
        unsafe { sys::llama_set_adapters_lora(self.as_ptr(), ptrs.as_mut_ptr(), ptrs.len(), scales.as_mut_ptr()) };
        self.loras = set;
        self.reserve_pending = true;
        Ok(())
    }

    /// Removes every LoRA adapter (`set_lora(&[])`).
    pub fn clear_lora(&mut self) {
        if !self.loras.is_empty() {
            // SAFETY: live context; n = 0 with NULL arrays is the call
            // llama.cpp documents for an empty set (it asserts n == 0 then).
            unsafe { sys::llama_set_adapters_lora(self.as_ptr(), std::ptr::null_mut(), 0, std::ptr::null_mut()) };
            self.loras.clear();
            self.reserve_pending = true;
        }
    }

    /// The LoRA adapters applied, with their scales (none zero).
    pub fn lora(&self) -> &[(LoraAdapter<'m>, f32)] {
        &self.loras
    }

    /// Applies a control vector: `data` holds one direction of
    /// [`Model::n_embd`] floats for each layer from 1 to `n_layer - 1`, in
    /// that order (llama.cpp adds the direction of layer `il` to that layer's
    /// output; layer 0 never has one), so `n_embd * (n_layer - 1)` floats.
    /// Only the layers in `layers` (within `1..n_layer`) get theirs added,
    /// e.g. `1..=4`, or `..` for all. Replaces the vector applied before;
    /// [`clear_control_vector`](Self::clear_control_vector) removes it.
    ///
    /// The length, the range and the values (finite) are checked here:
    /// llama.cpp itself copies only the layers that a shorter buffer covers
    /// and keeps the old values of the others.
    pub fn set_control_vector(&mut self, data: &[f32], layers: impl RangeBounds<u32>) -> Result<()> {
        let (n_embd, n_layer) = (self.model.n_embd(), self.model.n_layer());
        if n_layer < 2 {
            return Err(Error::invalid(
                "control vector",
                format!("{} floats", data.len()),
                format!("the model has {n_layer} layer(s); llama.cpp applies control vectors to layers 1.. only"),
            ));
        }
        let want = n_embd as usize * (n_layer as usize - 1);
        if data.len() != want {
            return Err(Error::invalid(
                "control vector",
                format!("{} floats", data.len()),
                format!(
                    "needs n_embd x (n_layer - 1) = {n_embd} x {} = {want} floats (layers 1..{n_layer})",
                    n_layer - 1
                ),
            ));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid("control vector", data[i], format!("value {i} is not finite")));
        }
        let first = match layers.start_bound() {
            Bound::Unbounded => 1,
            Bound::Included(&l) => l,
            Bound::Excluded(&l) => l.saturating_add(1),
        };
        let last = match layers.end_bound() {
            Bound::Unbounded => n_layer - 1,
            Bound::Included(&l) => l,
            Bound::Excluded(&l) => l.saturating_sub(1),
        };
        if first < 1 || last > n_layer - 1 || first > last {
            return Err(Error::invalid(
                "control vector layers",
                format!("{first}..={last}"),
                format!("must be a non-empty range within 1..={} (layer 0 never has a direction)", n_layer - 1),
            ));
        }
        crate::backend::clear_log_error();
        // SAFETY: live context; `data` holds exactly n_embd * (n_layer - 1)
        // floats, all read by llama.cpp (checked above), copied into its own
        // tensors; n_embd is the model's; the layers are in range.
        let ret = unsafe {
            sys::llama_set_adapter_cvec(
                self.as_ptr(),
                data.as_ptr(),
                data.len(),
                n_embd as i32,
                first as i32,
                last as i32,
            )
        };
        self.reserve_pending = true;
        if ret != 0 {
            return Err(Error::invalid(
                "control vector",
                format!("{} floats", data.len()),
                crate::backend::log_error_or("llama.cpp could not apply it (allocation failed)"),
            ));
        }
        Ok(())
    }

    /// Removes the control vector (its buffers stay allocated for the next).
    pub fn clear_control_vector(&mut self) {
        // SAFETY: live context; NULL data is llama.cpp's "clear" (it returns
        // before reading anything else).
        unsafe { sys::llama_set_adapter_cvec(self.as_ptr(), std::ptr::null(), 0, 0, -1, -1) };
        self.reserve_pending = true;
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        // SAFETY: created by llama_init_from_model, freed once, before its
        // model (the borrow guarantees the model is alive).
        unsafe { sys::llama_free(self.as_ptr()) };
    }
}
