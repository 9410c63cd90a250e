//! The one error type of llama-rs.

use std::path::PathBuf;

/// Everything that can go wrong in llama-rs. Each variant keeps llama.cpp's
/// own message (where it gave one) and the offending value, and its text says
/// how to fix the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // fields are named for what they hold; the messages say the rest
pub enum Error {
    /// llama.cpp could not load the model file.
    #[error("cannot load model {path}: {message}")]
    ModelLoad { path: PathBuf, message: String },

    /// The file is not a model llama-rs will hand to llama.cpp (bad GGUF or
    /// metadata that would make llama.cpp abort).
    #[error("invalid model file {path}: {message}")]
    InvalidModel { path: PathBuf, message: String },

    /// The progress callback returned `false`.
    #[error("model load of {path} cancelled by the progress callback")]
    LoadCancelled { path: PathBuf },

    /// llama.cpp could not create a context. When memory ran out (host or
    /// device), the message adds the context size, sequences and KV-cache
    /// types that were asked for, and how to ask for less.
    #[error("cannot create context: {message}")]
    ContextCreate { message: String },

    /// A parameter value that llama.cpp would reject or abort on.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParam { name: &'static str, value: String, reason: String },

    /// A device index that does not exist.
    #[error("device index {index} out of range: {count} device(s) available (see llama_rs::devices())")]
    DeviceOutOfRange { index: usize, count: usize },

    /// A multi-GPU setting that cannot work with the devices at hand.
    #[error("split mode {mode}: {reason}")]
    SplitMode { mode: &'static str, reason: String },

    /// A tensor split entry that llama.cpp cannot use.
    #[error("tensor split entry {index} = {value}: {reason}")]
    TensorSplit { index: usize, value: f32, reason: String },

    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary (valid ids: 0..{n_vocab})")]
    InvalidToken { token: i32, n_vocab: i32 },

    /// A sequence id outside the context's sequences.
    #[error("sequence id {seq_id} out of range: the context has n_seq_max = {n_seq_max} (valid ids: 0..{n_seq_max})")]
    InvalidSeqId { seq_id: i32, n_seq_max: u32 },

    /// The batch has no room for another token.
    #[error("batch full: its capacity is {capacity} tokens (create a larger Batch)")]
    BatchFull { capacity: usize },

    /// A batch that the context cannot take in one call.
    #[error("batch of {n_tokens} tokens: {reason}")]
    BatchInvalid { n_tokens: usize, reason: String },

    /// The KV cache has no room for the batch: remove sequences or positions
    /// ([`Context::seq_rm`](crate::Context::seq_rm)), or create the context
    /// with a larger n_ctx.
    #[error("the context is full (n_ctx = {n_ctx}): {message}; free sequences or positions, or use a larger n_ctx")]
    ContextFull { n_ctx: u32, message: String },

    /// The decode was stopped by the abort callback, or a request was
    /// cancelled.
    #[error("aborted: the decode or request was cancelled")]
    Aborted,

    /// A grammar does not allow this token (an end-of-generation token
    /// before the grammar is complete, or a token it forbids).
    #[error("the grammar does not allow token {token} ({what}) here{hint}")]
    GrammarRejected { token: i32, what: String, hint: &'static str },

    /// A prompt longer than a request may be.
    #[error("the prompt has {n_prompt} tokens, more than the {n_ctx} a request may use: shorten it, or use a larger n_ctx (or fewer slots)")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },

    /// One input of an [`Embedder`](crate::Embedder) call (a text, or a
    /// query-document pair for reranking) is longer than one batch holds.
    #[error("input {index} has {n_tokens} tokens, more than the {limit} one embedding batch holds: shorten it, or raise EmbedParams::batch_tokens")]
    InputTooLong { index: usize, n_tokens: usize, limit: usize },

    /// A LoRA adapter file that cannot be used with this model.
    #[error("LoRA adapter {path}: {message}")]
    Adapter { path: PathBuf, message: String },

    /// A sequence state that cannot be saved or loaded here.
    #[error("sequence state: {message}")]
    State { message: String },

    /// llama_decode/llama_encode returned an error code.
    #[error("decode failed (code {code}): {message}")]
    Decode { code: i32, message: String },

    /// Logits asked for a batch row that was not marked as an output.
    #[error("no logits for batch row {index}: {reason}")]
    NoLogits { index: i32, reason: String },

    /// A sampler could not be built or used.
    #[error("sampler: {message}")]
    Sampler { message: String },

    /// Tokenization or detokenization failed.
    #[error("tokenizer: {message}")]
    Tokenize { message: String },

    /// A chat template failed: it does not compile, it raised
    /// (`raise_exception`), or llama.cpp does not know a built-in name.
    /// `line` is the template line, where known; `message` names the template
    /// and what went wrong.
    #[error("chat template: {message}")]
    ChatTemplate { line: Option<usize>, message: String },

    /// A structured-output grammar (JSON schema, Lark grammar, tool calls)
    /// that does not compile: llguidance's message names the unsupported
    /// feature or the syntax error.
    #[error("structured output: {message}")]
    Schema { message: String },

    /// Quantization failed.
    #[error("quantize {path}: {message}")]
    Quantize { path: PathBuf, message: String },

    /// A KV cache (memory) operation that llama.cpp does not support here.
    #[error("memory operation {op}: {reason}")]
    Memory { op: &'static str, reason: String },

    /// A string passed to llama.cpp contained a NUL byte.
    #[error("{what} contains a NUL byte at offset {position}")]
    Nul { what: &'static str, position: usize },

    /// A C++ exception was caught at the llama.cpp boundary.
    #[error("llama.cpp threw in {function}: {message}")]
    Exception { function: &'static str, message: String },

    /// A user callback panicked; the panic was caught at the C boundary.
    #[error("callback panicked: {message}")]
    CallbackPanic { message: String },

    /// A backend module that llama-rs will not load.
    #[error("backend module {path}: {reason}")]
    BackendModule { path: PathBuf, reason: String },

    /// A buffer sized by a caller's value (batch, tokens, text, candidates)
    /// could not be allocated.
    #[error("cannot allocate {bytes} bytes for {what}: ask for less")]
    OutOfMemory { what: &'static str, bytes: usize },

    /// Writing or reading a file failed.
    /// An RPC server (ggml's RPC backend) could not be reached, failed, or
    /// answered something malformed; or the TLS tunnel to it failed. `endpoint`
    /// is the server's `host:port`; the model that used it fails fast from then
    /// on (load it again once the server is back).
    #[error("RPC server {endpoint}: {message}")]
    Rpc { endpoint: String, message: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(name: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> Error {
        Error::InvalidParam { name, value: value.to_string(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

/// Whether llama.cpp's message says an allocation failed (a host
/// `std::bad_alloc`, a device or host buffer, CUDA's "out of memory").
pub(crate) fn is_allocation_failure(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("alloc") || lower.contains("out of memory")
}
