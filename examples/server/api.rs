//! The HTTP side: routes, handlers, and the server-sent event streams.

use crate::openai::{self, ApiError, ChatBody, CompletionBody, Kind, LogprobsOut, Meta, ToolSupport, Usage};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use llama_rs::{Engine, Error, Event, Request, RequestHandle, Token, ToolCallFormat};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    started: u64,
    requests: AtomicU64,
    cancelled: AtomicU64,
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
            started: now(),
            requests: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
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
