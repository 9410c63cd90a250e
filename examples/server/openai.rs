//! OpenAI's request and response shapes, and their mapping to the engine's
//! [`Request`] and [`Event`](llama_rs::Event)s.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use llama_rs::{ChatMessage, Logprobs, Request, SamplingParams, StopReason, StreamPiece, Token, Vocab};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Most alternatives a request may ask log-probabilities of (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error", code: None }
    }
    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }
    pub fn server(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind: "server_error", code: None }
    }
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!("{}: {}", self.status, self.message);
        } else {
            tracing::info!("{}: {}", self.status, self.message);
        }
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Parses a request body; any failure is a 400 naming what is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// `stop`: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// The fields chat and text completions share.
#[derive(Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// llama-server's name (-1: no limit).
    pub n_predict: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i32>,
    pub stop: Option<Stop>,
    /// Beyond OpenAI: stop when one of these tokens is sampled.
    pub stop_token_ids: Option<Vec<i32>>,
    pub n: Option<u32>,
    /// Token id (as a string) to bias; -100 bans the token.
    pub logit_bias: Option<HashMap<String, f32>>,
    /// llama-server's: a GBNF grammar (start symbol `root`).
    pub grammar: Option<String>,
    /// llama-server's: keep going through end-of-generation tokens.
    pub ignore_eos: Option<bool>,
}

impl Common {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }

    /// Applies the sampling settings, limits and stops to `r`.
    pub fn apply(&self, mut r: Request) -> Result<Request, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid(format!("n = {n}: only one choice per request is supported")));
            }
        }
        let mut s = SamplingParams::default();
        if let Some(t) = self.temperature {
            s = s.temperature(t);
        }
        if let Some(p) = self.top_p {
            s = s.top_p(p);
        }
        if let Some(k) = self.top_k {
            s = s.top_k(k);
        }
        if let Some(p) = self.min_p {
            s = s.min_p(p);
        }
        if let Some(seed) = self.seed {
            // Negative: a random seed (llama-server's -1); else its low 32 bits.
            s = s.seed(if seed < 0 { llama_rs::RANDOM_SEED } else { seed as u32 });
        }
        if let Some(p) = self.frequency_penalty {
            s = s.frequency_penalty(p);
        }
        if let Some(p) = self.presence_penalty {
            s = s.presence_penalty(p);
        }
        if self.repeat_penalty.is_some() || self.repeat_last_n.is_some() {
            s = s.repeat_penalty(self.repeat_penalty.unwrap_or(1.0), self.repeat_last_n.unwrap_or(64));
        }
        if let Some(g) = &self.grammar {
            s = s.grammar(g.clone());
        }
        if let Some(biases) = &self.logit_bias {
            let mut list = Vec::with_capacity(biases.len());
            for (k, &v) in biases {
                let id: i32 =
                    k.trim().parse().map_err(|_| ApiError::invalid(format!("logit_bias: '{k}' is not a token id")))?;
                list.push((Token(id), if v <= -100.0 { f32::NEG_INFINITY } else { v }));
            }
            list.sort_by_key(|&(t, _)| t);
            s = s.logit_bias(&list);
        }
        r = r.sampling(s);

        let limit = match (self.max_completion_tokens.or(self.max_tokens), self.n_predict) {
            (Some(n), _) => Some(n),
            (None, Some(n)) if n >= 0 => Some(n as u64),
            _ => None,
        };
        if let Some(n) = limit {
            if n == 0 {
                return Err(ApiError::invalid("max_tokens must be at least 1"));
            }
            r = r.max_tokens(usize::try_from(n).unwrap_or(usize::MAX));
        }
        match &self.stop {
            Some(Stop::One(s)) => r = r.stop_string(s.clone()),
            Some(Stop::Many(list)) => {
                for s in list {
                    r = r.stop_string(s.clone());
                }
            }
            None => {}
        }
        for &t in self.stop_token_ids.iter().flatten() {
            r = r.stop_token(Token(t));
        }
        if self.ignore_eos == Some(true) {
            r = r.ignore_eos(true);
        }
        Ok(r)
    }
}

/// A chat message's content: a string, or parts of which only text ones are
/// understood.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Deserialize)]
pub struct ChatBody {
    #[serde(flatten)]
    pub common: Common,
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
}

impl ChatBody {
    /// The engine request and the number of alternatives to report
    /// log-probabilities of (`None`: no log-probabilities).
    pub fn request(&self) -> Result<(Request, Option<usize>), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages: at least one message is needed"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid(format!(
                                    "messages[{i}]: content part of type '{kind}' is not supported (text only)"
                                )))
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage::new(m.role.clone(), content));
        }
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), n) => Some(n.unwrap_or(0)),
            _ => None,
        };
        let mut r = self.common.apply(Request::chat(messages))?;
        if let Some(n) = logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(format!("top_logprobs = {n}: at most {MAX_TOP_LOGPROBS}")));
            }
            r = r.logprobs(n);
        }
        Ok((r, logprobs))
    }
}

/// A completion prompt: text, or token ids; one prompt per request.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<i32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<i32>>),
}

/// `POST /v1/completions`.
#[derive(Deserialize)]
pub struct CompletionBody {
    #[serde(flatten)]
    pub common: Common,
    pub prompt: Prompt,
    /// Alternatives per token to report (0: only the sampled token's).
    pub logprobs: Option<usize>,
}

impl CompletionBody {
    pub fn request(&self) -> Result<(Request, Option<usize>), ApiError> {
        let one = |n: usize| {
            if n == 1 {
                Ok(())
            } else {
                Err(ApiError::invalid(format!("prompt: {n} prompts given; one prompt per request is supported")))
            }
        };
        let r = match &self.prompt {
            Prompt::Text(t) => Request::text(t.clone()),
            Prompt::Tokens(t) => Request::tokens(t.iter().map(|&t| Token(t)).collect::<Vec<_>>()),
            Prompt::Texts(list) => {
                one(list.len())?;
                Request::text(list[0].clone())
            }
            Prompt::TokenLists(list) => {
                one(list.len())?;
                Request::tokens(list[0].iter().map(|&t| Token(t)).collect::<Vec<_>>())
            }
        };
        let mut r = self.common.apply(r)?;
        if let Some(n) = self.logprobs {
            if n > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid(format!("logprobs = {n}: at most {MAX_TOP_LOGPROBS}")));
            }
            r = r.logprobs(n);
        }
        Ok((r, self.logprobs))
    }
}

/// Which endpoint a response is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// OpenAI's finish_reason.
pub fn finish_reason(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::Eog | StopReason::StopToken(_) | StopReason::StopString(_) => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

/// A token's text (control tokens rendered) and its bytes.
fn token_text(vocab: &Vocab<'_>, token: Token) -> (String, Vec<u8>) {
    let bytes = vocab.token_to_piece(token, llama_rs::RenderSpecial::Yes).unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Log-probabilities gathered for a response, in the endpoint's shape.
#[derive(Default)]
pub struct LogprobsOut {
    /// Chat: the `content` entries.
    content: Vec<Value>,
    /// Completions: parallel arrays.
    tokens: Vec<String>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
}

impl LogprobsOut {
    pub fn push(&mut self, kind: Kind, vocab: &Vocab<'_>, token: Token, lp: &Logprobs, text_offset: usize) {
        let (text, bytes) = token_text(vocab, token);
        match kind {
            Kind::Chat => {
                let top: Vec<Value> = lp
                    .top
                    .iter()
                    .map(|&(t, l)| {
                        let (text, bytes) = token_text(vocab, t);
                        json!({"token": text, "logprob": l, "bytes": bytes})
                    })
                    .collect();
                self.content.push(json!({"token": text, "logprob": lp.logprob, "bytes": bytes, "top_logprobs": top}));
            }
            Kind::Completion => {
                let mut top = serde_json::Map::new();
                for &(t, l) in &lp.top {
                    top.entry(token_text(vocab, t).0).or_insert(json!(l));
                }
                self.tokens.push(text);
                self.token_logprobs.push(lp.logprob);
                self.top_logprobs.push(Value::Object(top));
                self.text_offset.push(text_offset);
            }
        }
    }

    pub fn to_json(&self, kind: Kind) -> Value {
        match kind {
            Kind::Chat => json!({"content": self.content, "refusal": null}),
            Kind::Completion => json!({
                "tokens": self.tokens,
                "token_logprobs": self.token_logprobs,
                "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset,
            }),
        }
    }
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub cached_tokens: Option<usize>,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn to_json(self) -> Value {
        let mut u = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        });
        if let Some(c) = self.cached_tokens {
            u["prompt_tokens_details"] = json!({"cached_tokens": c});
        }
        u
    }
}

/// What every response and chunk of one request shares.
pub struct Meta {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    fn object(&self, stream: bool) -> &'static str {
        match (self.kind, stream) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, stream: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(stream),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    /// A whole (non-streamed) response.
    pub fn response(
        &self,
        text: String,
        token_ids: &[Token],
        logprobs: Option<&LogprobsOut>,
        finish: &str,
        usage: Usage,
    ) -> Value {
        let ids: Vec<i32> = token_ids.iter().map(|t| t.0).collect();
        let lp = logprobs.map_or(Value::Null, |l| l.to_json(self.kind));
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": lp,
                "finish_reason": finish,
                "token_ids": ids,
            }),
            Kind::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": lp,
                "finish_reason": finish,
                "token_ids": ids,
            }),
        };
        let mut v = self.envelope(false, vec![choice]);
        v["usage"] = usage.to_json();
        v
    }

    /// A stream chunk: `delta` text and tokens, or the end (`finish`).
    pub fn chunk(&self, text: &str, token_ids: &[i32], logprobs: Option<&LogprobsOut>, finish: Option<&str>) -> Value {
        let lp = logprobs.map_or(Value::Null, |l| l.to_json(self.kind));
        let choice = match self.kind {
            Kind::Chat => {
                let delta = if finish.is_some() { json!({}) } else { json!({"content": text}) };
                json!({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish, "token_ids": token_ids})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": lp, "finish_reason": finish, "token_ids": token_ids})
            }
        };
        self.envelope(true, vec![choice])
    }

    /// The first chat chunk: the assistant's role.
    pub fn role_chunk(&self) -> Value {
        let choice = json!({
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": null,
            "finish_reason": null,
            "token_ids": [],
        });
        self.envelope(true, vec![choice])
    }

    /// The last chunk when `stream_options.include_usage`: no choices.
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        let mut v = self.envelope(true, Vec::new());
        v["usage"] = usage.to_json();
        v
    }

    /// The chunk of one generated piece.
    pub fn piece_chunk(&self, vocab: &Vocab<'_>, piece: &StreamPiece, text_offset: usize) -> Value {
        let lp = piece.logprobs.as_ref().map(|l| {
            let mut out = LogprobsOut::default();
            out.push(self.kind, vocab, piece.token, l, text_offset);
            out
        });
        self.chunk(&piece.text, &[piece.token.0], lp.as_ref(), None)
    }
}
