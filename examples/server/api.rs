//! The HTTP side: routes, handlers, and the server-sent event streams.

use crate::openai::{
    self, ApiError, ChatBody, CompletionBody, EmbedInput, EmbeddingsBody, Kind, LogprobsOut, Meta, RerankBody,
    ToolSupport, Usage,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use llama_rs::{
    AddSpecial, Embedder, Engine, Error, Event, Model, ParseSpecial, Pooling, Request, RequestHandle, Token,
    ToolCallFormat,
};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// The server's state.
pub struct App {
    engine: Arc<Engine>,
    /// The name `/v1/models` gives and responses carry.
    model_id: String,
    /// Names a request's `model` may use.
    names: Vec<String>,
    /// The model's tool-call format and what its template reads.
    tools: ToolSupport,
    /// `--embeddings`: the embedder of `/v1/embeddings`.
    embed: Option<Arc<EmbedService>>,
    /// `--reranking`: the rank-pooling embedder of `/v1/rerank`.
    rerank: Option<Arc<EmbedService>>,
    started: u64,
    requests: AtomicU64,
    cancelled: AtomicU64,
}

/// An [`Embedder`] (its own context) for the async handlers: one request
/// at a time uses it, on a blocking thread.
pub struct EmbedService {
    embedder: Mutex<Embedder<'static>>,
    model: Arc<Model>,
    pooling: Pooling,
    /// Floats per vector (scores per input for rank pooling).
    dim: usize,
    /// The longest input in tokens.
    max_tokens: usize,
}

impl EmbedService {
    fn new(embedder: Embedder<'static>, model: Arc<Model>) -> EmbedService {
        EmbedService {
            pooling: embedder.pooling(),
            dim: embedder.dim(),
            max_tokens: embedder.max_tokens(),
            embedder: Mutex::new(embedder),
            model,
        }
    }

    /// Runs `f` on a blocking thread: tokenizing and the model's decodes
    /// would stall the async threads.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&EmbedService) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let service = self.clone();
        tokio::task::spawn_blocking(move || f(&service))
            .await
            .map_err(|e| ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, format!("the embedder failed: {e}")))?
    }

    /// The embedder, once other requests are done with it (blocking).
    fn embedder(&self) -> MutexGuard<'_, Embedder<'static>> {
        // A panic in an earlier request leaves nothing half-done that
        // matters: every decode starts from a cleared cache.
        self.embedder.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn meta(&self) -> serde_json::Value {
        json!({"pooling": self.pooling.name(), "dim": self.dim, "max_tokens": self.max_tokens})
    }
}

/// An embedder's error as an answer: an input too long is the client's
/// (`context_length_exceeded`), so is an invalid one.
fn embed_error(e: Error, what: &str) -> ApiError {
    match e {
        Error::InputTooLong { index, n_tokens, limit } => ApiError::invalid(format!(
            "{what}[{index}] has {n_tokens} tokens, more than the {limit} this server embeds at once"
        ))
        .code("context_length_exceeded"),
        Error::InvalidParam { .. } | Error::Tokenize { .. } => ApiError::invalid(e.to_string()),
        e => ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The answer of an endpoint the server was not started for.
fn not_enabled(what: &str, flag: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_IMPLEMENTED,
        message: format!("this server does not serve {what}: start it with {flag}"),
        kind: "not_supported_error",
        code: None,
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl App {
    pub fn new(engine: Engine, model_id: String, names: Vec<String>, tools: ToolSupport) -> App {
        App {
            engine: Arc::new(engine),
            model_id,
            names,
            tools,
            embed: None,
            rerank: None,
            started: now(),
            requests: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }

    /// Serves `/v1/embeddings` and `/v1/rerank` with these embedders.
    pub fn with_embedders(mut self, embed: Option<Embedder<'static>>, rerank: Option<Embedder<'static>>) -> App {
        let model = self.engine.model().clone();
        self.embed = embed.map(|e| Arc::new(EmbedService::new(e, model.clone())));
        self.rerank = rerank.map(|e| Arc::new(EmbedService::new(e, model)));
        self
    }

    /// A missing or empty `model` is the served one; another name is a 404.
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None | Some("") => Ok(()),
            Some(m) if self.names.iter().any(|n| n == m) => Ok(()),
            Some(m) => Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("the model '{m}' does not exist; this server serves '{}'", self.model_id),
                kind: "invalid_request_error",
                code: Some("model_not_found"),
            }),
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/v1/rerank", post(rerank))
        .route("/rerank", post(rerank))
        .fallback(|| async { ApiError { status: StatusCode::NOT_FOUND, ..ApiError::invalid("no such endpoint") } })
        .with_state(app)
}

async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let s = app.engine.status();
    Json(json!({
        "status": "ok",
        "slots_total": s.slots,
        "slots_idle": (s.slots as usize).saturating_sub(s.active),
        "slots_processing": s.active,
        "requests_queued": s.queued,
        "requests_total": app.requests.load(Ordering::Relaxed),
        "requests_cancelled": app.cancelled.load(Ordering::Relaxed),
        "engine_finished": s.finished,
        "engine_steps": s.steps,
        "engine_decoded_tokens": s.decoded_tokens,
    }))
}

async fn models(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let e = &app.engine;
    let m = e.model();
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_id,
            "object": "model",
            "created": app.started,
            "owned_by": "llama-rs",
            "meta": {
                "path": m.path().display().to_string(),
                "description": m.description(),
                "n_params": m.n_params(),
                "n_ctx_train": m.n_ctx_train(),
                "n_ctx": e.n_ctx(),
                "n_slots": e.n_slots(),
                "n_ctx_per_request": e.n_ctx_per_request(),
                "embeddings": app.embed.as_ref().map(|s| s.meta()),
                "rerank": app.rerank.as_ref().map(|s| s.meta()),
            },
        }],
    }))
}

async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let body: ChatBody = openai::parse(&body)?;
    app.check_model(body.common.model.as_deref())?;
    let (request, logprobs) = body.request(&app.tools)?;
    run(app, Kind::Chat, request, logprobs, body.common.stream(), body.common.include_usage()).await
}

async fn completions(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let body: CompletionBody = openai::parse(&body)?;
    app.check_model(body.common.model.as_deref())?;
    let (request, logprobs) = body.request()?;
    run(app, Kind::Completion, request, logprobs, body.common.stream(), body.common.include_usage()).await
}

/// `POST /v1/embeddings`: L2-normalized vectors, as floats or base64.
async fn embeddings(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let service = app.embed.clone().ok_or_else(|| not_enabled("embeddings", "--embeddings"))?;
    let body: EmbeddingsBody = openai::parse(&body)?;
    app.check_model(body.model.as_deref())?;
    let encoding = body.encoding()?;
    body.check_dimensions(service.dim)?;
    let inputs = body.inputs()?;
    let (vectors, n_tokens) = service
        .run(move |s| {
            let tokens = embed_tokens(&s.model, inputs, s.max_tokens)?;
            let n_tokens = tokens.iter().map(Vec::len).sum::<usize>();
            Ok((s.embedder().embed_tokens(&tokens).map_err(|e| embed_error(e, "input"))?, n_tokens))
        })
        .await?;
    let n = app.requests.fetch_add(1, Ordering::Relaxed);
    tracing::info!("embd-{n}: {} inputs, {n_tokens} tokens", vectors.len());
    Ok(Json(openai::embeddings_response(&app.model_id, &vectors, encoding, n_tokens)).into_response())
}

/// The tokens of each input: texts with the model's BOS/EOS (special-token
/// text kept as text, as [`Embedder::embed`] does), token ids as given once
/// checked against the vocabulary; none longer than `limit`.
fn embed_tokens(model: &Model, inputs: Vec<EmbedInput>, limit: usize) -> Result<Vec<Vec<Token>>, ApiError> {
    let vocab = model.vocab();
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let tokens = match input {
                EmbedInput::Text(t) => vocab
                    .tokenize(&t, AddSpecial::Yes, ParseSpecial::No)
                    .map_err(|e| ApiError::invalid(format!("input[{i}]: {e}")))?,
                EmbedInput::Tokens(ids) => {
                    if let Some(&bad) = ids.iter().find(|&&t| t >= vocab.n_tokens()) {
                        return Err(ApiError::invalid(format!(
                            "input[{i}]: token id {bad} is not in the vocabulary (0..{})",
                            vocab.n_tokens()
                        )));
                    }
                    ids.into_iter().map(Token).collect()
                }
            };
            if tokens.len() > limit {
                return Err(ApiError::invalid(format!(
                    "input[{i}] has {} tokens, more than the {limit} this server embeds at once",
                    tokens.len()
                ))
                .code("context_length_exceeded"));
            }
            Ok(tokens)
        })
        .collect()
}

/// `POST /v1/rerank`: each document's relevance to the query, most relevant
/// first. `usage` counts the query's and documents' text tokens (the pair's
/// special tokens or rerank template are not counted: the library does not
/// report them).
async fn rerank(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let service = app.rerank.clone().ok_or_else(|| not_enabled("reranking", "--reranking (and a reranking model)"))?;
    let body: RerankBody = openai::parse(&body)?;
    app.check_model(body.model.as_deref())?;
    let (query, documents) = body.texts()?;
    let (scores, documents, n_tokens) = service
        .run(move |s| {
            let vocab = s.model.vocab();
            let count = |t: &str| vocab.tokenize(t, AddSpecial::No, ParseSpecial::No).map_or(0, |v| v.len());
            let q = count(&query);
            let n_tokens = documents.iter().map(|d| q + count(d)).sum::<usize>();
            let scores = s.embedder().rerank(&query, &documents).map_err(|e| embed_error(e, "documents"))?;
            Ok((scores, documents, n_tokens))
        })
        .await?;
    let n = app.requests.fetch_add(1, Ordering::Relaxed);
    tracing::info!("rerank-{n}: {} documents, {n_tokens} tokens", scores.len());
    let docs = body.return_documents.unwrap_or(false).then_some(documents.as_slice());
    Ok(Json(openai::rerank_response(&app.model_id, &scores, docs, body.top_n, n_tokens)).into_response())
}

/// Submits (tokenizing off the async threads) and answers whole or streamed.
async fn run(
    app: Arc<App>,
    kind: Kind,
    request: Request,
    logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let engine = app.engine.clone();
    let handle = tokio::task::spawn_blocking(move || engine.submit(request))
        .await
        .map_err(|e| ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, format!("submit failed: {e}")))?
        .map_err(submit_error)?;
    app.requests.fetch_add(1, Ordering::Relaxed);
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    let meta = Meta {
        kind,
        id: format!("{prefix}-{:x}-{}", app.started, handle.id()),
        created: now(),
        model: app.model_id.clone(),
    };
    if stream {
        Ok(stream_response(app, meta, handle, include_usage))
    } else {
        whole_response(app, meta, handle, logprobs.is_some()).await
    }
}

fn submit_error(e: Error) -> ApiError {
    match e {
        Error::PromptTooLong { .. } => ApiError::invalid(e.to_string()).code("context_length_exceeded"),
        Error::Aborted => ApiError::server(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped"),
        e => ApiError::invalid(e.to_string()),
    }
}

/// How a request ended, from its last event: `Ok((finish_reason, usage))`.
/// A full context after tokens were streamed ends it normally ("length").
fn ending(event: Option<Event>, prompt_tokens: usize, generated: usize) -> Result<(&'static str, Usage), ApiError> {
    match event {
        Some(Event::Done(f)) => Ok((
            openai::finish_reason(&f.stop_reason),
            Usage {
                prompt_tokens: f.stats.prompt_tokens,
                cached_tokens: Some(f.stats.cached_tokens),
                completion_tokens: generated,
            },
        )),
        Some(Event::Failed(Error::ContextFull { .. })) => {
            Ok(("length", Usage { prompt_tokens, cached_tokens: None, completion_tokens: generated }))
        }
        Some(Event::Failed(e)) => Err(ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Some(Event::Piece(_)) => Err(ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "a piece after the end")),
        None => Err(ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "the request ended without a result")),
    }
}

fn log_end(meta: &Meta, finish: &str, usage: &Usage) {
    tracing::info!(
        "{}: {} prompt tokens ({} cached), {} generated, finish {finish}",
        meta.id,
        usage.prompt_tokens,
        usage.cached_tokens.map_or_else(|| "?".into(), |c| c.to_string()),
        usage.completion_tokens
    );
}

/// Counts and logs a request whose client went away before its end (the
/// handle, dropped with it, cancels the request and frees its slot).
struct Watch {
    app: Arc<App>,
    id: String,
    /// The last event came.
    ended: bool,
}

impl Watch {
    fn new(app: &Arc<App>, meta: &Meta) -> Watch {
        Watch { app: app.clone(), id: meta.id.clone(), ended: false }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.ended {
            self.app.cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::info!("{}: the client went away; request cancelled", self.id);
        }
    }
}

/// Waits for the whole output. If the client goes away, axum drops this
/// future and with it the handle, which cancels the request.
async fn whole_response(
    app: Arc<App>,
    meta: Meta,
    handle: RequestHandle,
    logprobs: bool,
) -> Result<Response, ApiError> {
    let mut watch = Watch::new(&app, &meta);
    let mut text = String::new();
    let mut tokens: Vec<Token> = Vec::new();
    let mut lp = logprobs.then(LogprobsOut::default);
    let last = loop {
        match handle.next_event().await {
            Some(Event::Piece(p)) => {
                if let (Some(out), Some(l)) = (lp.as_mut(), &p.logprobs) {
                    out.push(meta.kind, &app.engine.model().vocab(), p.token, l, text.len());
                }
                text.push_str(&p.text);
                tokens.push(p.token);
            }
            other => break other,
        }
    };
    watch.ended = true;
    let (mut finish, usage) = ending(last, handle.prompt_tokens().len(), tokens.len())?;
    let reply = handle.tool_format().map(|f| (f.parse(&text), f));
    if reply.as_ref().is_some_and(|(r, _)| !r.tool_calls.is_empty()) {
        finish = "tool_calls";
    }
    log_end(&meta, finish, &usage);
    let reply = reply.as_ref().map(|(r, f)| (r, *f));
    Ok(Json(meta.response(text, reply, &tokens, lp.as_ref(), finish, usage)).into_response())
}

/// A streamed request's state, owned by the event stream: dropping the
/// stream (the client went away) drops the handle, which cancels the request
/// and frees its slot.
struct Streaming {
    app: Arc<App>,
    meta: Meta,
    handle: RequestHandle,
    include_usage: bool,
    /// Events ready to send.
    out: VecDeque<SseEvent>,
    /// Text sent so far (for completions' text offsets).
    text_len: usize,
    generated: usize,
    watch: Watch,
    /// For a request that offered tools, its format: the output is then
    /// held back and sent at the end, split into content and calls.
    tools: Option<ToolCallFormat>,
    held: String,
    held_ids: Vec<i32>,
    held_logprobs: Option<LogprobsOut>,
}

impl Streaming {
    fn send(&mut self, v: serde_json::Value) {
        self.out.push_back(SseEvent::default().data(v.to_string()));
    }

    /// Sends the held-back output of a request that offered tools: its
    /// content (with the token ids, unless it is empty and there are calls),
    /// then its calls in one chunk. Returns the finish reason.
    fn send_held(&mut self, format: ToolCallFormat, finish: &'static str) -> &'static str {
        let reply = format.parse(&self.held);
        let ids = std::mem::take(&mut self.held_ids);
        let lp = self.held_logprobs.take();
        let calls = !reply.tool_calls.is_empty();
        let with_content = !reply.content.is_empty() || !calls;
        if with_content && (!reply.content.is_empty() || !ids.is_empty()) {
            let chunk = self.meta.chunk(&reply.content, &ids, lp.as_ref(), None);
            self.send(chunk);
        }
        if !calls {
            return finish;
        }
        let chunk = if with_content {
            self.meta.tool_calls_chunk(&reply.tool_calls, format, &[], None)
        } else {
            self.meta.tool_calls_chunk(&reply.tool_calls, format, &ids, lp.as_ref())
        };
        self.send(chunk);
        "tool_calls"
    }

    fn on_event(&mut self, event: Option<Event>) {
        if let (Some(Event::Piece(p)), Some(_)) = (&event, self.tools) {
            if let Some(l) = &p.logprobs {
                let vocab = self.app.engine.model().vocab();
                self.held_logprobs.get_or_insert_with(LogprobsOut::default).push(
                    self.meta.kind,
                    &vocab,
                    p.token,
                    l,
                    self.text_len,
                );
            }
            self.held.push_str(&p.text);
            self.held_ids.push(p.token.0);
            self.text_len += p.text.len();
            self.generated += 1;
            return;
        }
        if let Some(Event::Piece(p)) = &event {
            let chunk = self.meta.piece_chunk(&self.app.engine.model().vocab(), p, self.text_len);
            self.text_len += p.text.len();
            self.generated += 1;
            self.send(chunk);
            return;
        }
        self.watch.ended = true;
        match ending(event, self.handle.prompt_tokens().len(), self.generated) {
            Ok((mut finish, usage)) => {
                if let Some(format) = self.tools {
                    finish = self.send_held(format, finish);
                }
                log_end(&self.meta, finish, &usage);
                let chunk = self.meta.chunk("", &[], None, Some(finish));
                self.send(chunk);
                if self.include_usage {
                    let chunk = self.meta.usage_chunk(usage);
                    self.send(chunk);
                }
            }
            Err(e) => {
                tracing::warn!("{}: {}", self.meta.id, e.message);
                let body = e.body();
                self.send(body);
            }
        }
        self.out.push_back(SseEvent::default().data("[DONE]"));
    }
}

fn stream_response(app: Arc<App>, meta: Meta, handle: RequestHandle, include_usage: bool) -> Response {
    let watch = Watch::new(&app, &meta);
    let tools = handle.tool_format();
    let mut state = Streaming {
        app,
        meta,
        handle,
        include_usage,
        out: VecDeque::new(),
        text_len: 0,
        generated: 0,
        watch,
        tools,
        held: String::new(),
        held_ids: Vec::new(),
        held_logprobs: None,
    };
    if state.meta.kind == Kind::Chat {
        let chunk = state.meta.role_chunk();
        state.send(chunk);
    }
    let events = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.watch.ended {
                return None;
            }
            let event = st.handle.next_event().await;
            st.on_event(event);
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
