//! OpenAI's request and response shapes, and their mapping to the engine's
//! [`Request`] and [`Event`](llama_rs::Event)s.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use llama_rs::{
    ChatMessage, Logprobs, ParsedReply, Request, SamplingParams, StopReason, StreamPiece, Structured, Token, Tool,
    ToolCall, ToolCallFormat, ToolChoice, Vocab,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// OpenAI's `{"type": "text" | "json_object" | "json_schema", ...}`.
    pub response_format: Option<Value>,
    /// llama-server's: a JSON schema the output must follow.
    pub json_schema: Option<Value>,
}

impl Common {
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }

    /// The structured output asked for: `response_format` (`text`: none;
    /// `json_object`: any JSON object, or llama-server's `schema` in it;
    /// `json_schema`: `json_schema.schema`) or llama-server's top-level
    /// `json_schema`.
    pub fn structured(&self) -> Result<Option<Structured>, ApiError> {
        fn schema(v: &Value, field: &str) -> Result<Structured, ApiError> {
            match v {
                Value::Object(_) | Value::Bool(_) => Ok(Structured::JsonSchema(v.clone())),
                _ => Err(ApiError::invalid(format!("{field}: a JSON schema is an object, not {v}"))),
            }
        }
        let from_format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(rf) => match rf.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(match rf.get("schema") {
                    Some(s) => schema(s, "response_format.schema")?,
                    None => Structured::json_object(),
                }),
                Some("json_schema") => {
                    let js = rf.get("json_schema").filter(|v| v.is_object()).ok_or_else(|| {
                        ApiError::invalid(
                            "response_format: type \"json_schema\" needs \"json_schema\": {\"name\", \"schema\"}",
                        )
                    })?;
                    match js.get("schema") {
                        Some(s) => Some(schema(s, "response_format.json_schema.schema")?),
                        // OpenAI's schema is optional: then any JSON.
                        None => Some(Structured::JsonSchema(json!({}))),
                    }
                }
                Some(other) => {
                    return Err(ApiError::invalid(format!(
                        "response_format: type '{other}' is not supported (text, json_object or json_schema)"
                    )))
                }
                None => {
                    return Err(ApiError::invalid(
                        "response_format: needs a \"type\": \"text\", \"json_object\" or \"json_schema\"",
                    ))
                }
            },
        };
        match (from_format, &self.json_schema) {
            (s, None | Some(Value::Null)) => Ok(s),
            (None, Some(js)) => Ok(Some(schema(js, "json_schema")?)),
            (Some(_), Some(_)) => {
                Err(ApiError::invalid("response_format and json_schema both given: give one structured output"))
            }
        }
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
        if let Some(structured) = self.structured()? {
            if self.grammar.is_some() {
                return Err(ApiError::invalid(
                    "grammar and response_format (or json_schema) both given: give one constraint",
                ));
            }
            s = s.structured(structured);
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
    /// An assistant's calls.
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    /// The tool's name (`tool` messages), or a participant's.
    pub name: Option<String>,
}

/// A call in an assistant message: `{"id", "type": "function", "function": {"name", "arguments"}}`.
#[derive(Deserialize)]
pub struct MessageToolCall {
    pub id: Option<String>,
    pub function: FunctionCall,
}

#[derive(Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON string (OpenAI's), or already a JSON value.
    pub arguments: Option<Value>,
}

impl MessageToolCall {
    /// The call for the template: arguments as a JSON value where the string
    /// parses, else the string as it is.
    fn to_call(&self) -> ToolCall {
        let arguments = match &self.function.arguments {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
            Some(v) => v.clone(),
        };
        ToolCall { id: self.id.clone(), name: self.function.name.clone(), arguments }
    }
}

/// What the server knows of the model's tool calls (from its chat template
/// and `--tool-format`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ToolSupport {
    /// How the model writes calls: the template's, or `--tool-format`.
    pub format: Option<ToolCallFormat>,
    /// The template reads `tools`; else they are described in the system
    /// message.
    pub template_tools: bool,
    /// The template reads messages' `tool_calls`; else an assistant's calls
    /// are written into its content, in the model's format.
    pub template_tool_calls: bool,
}

impl ToolSupport {
    /// From the model's template source (`None`: the model has none).
    pub fn new(template: Option<&str>, format: Option<ToolCallFormat>) -> ToolSupport {
        let src = template.unwrap_or_default();
        ToolSupport { format, template_tools: src.contains("tools"), template_tool_calls: src.contains("tool_calls") }
    }
}

/// An argument object as JSON text.
fn arguments_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// `calls` as the model writes them in `format` (Hermes' shape without one):
/// for templates that do not read `tool_calls`.
fn calls_text(format: Option<ToolCallFormat>, calls: &[ToolCall]) -> String {
    let name = |c: &ToolCall| Value::String(c.name.clone()).to_string();
    match format {
        Some(ToolCallFormat::Llama3) => calls
            .iter()
            .map(|c| format!("{{\"name\": {}, \"parameters\": {}}}", name(c), c.arguments))
            .collect::<Vec<_>>()
            .join("; "),
        Some(ToolCallFormat::Mistral) => {
            let list: Vec<String> = calls
                .iter()
                .map(|c| {
                    let id = c.id.as_ref().map_or_else(String::new, |id| format!(", \"id\": {}", json!(id)));
                    format!("{{\"name\": {}, \"arguments\": {}{id}}}", name(c), c.arguments)
                })
                .collect();
            format!("[TOOL_CALLS][{}]", list.join(", "))
        }
        Some(ToolCallFormat::Hermes) | None => calls
            .iter()
            .map(|c| format!("<tool_call>\n{{\"name\": {}, \"arguments\": {}}}\n</tool_call>", name(c), c.arguments))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The tools and how to call them, for a system message (templates that do
/// not read `tools`).
fn tools_text(format: ToolCallFormat, tools: &[Tool]) -> String {
    let list: Vec<String> = tools.iter().map(|t| t.to_json().to_string()).collect();
    let how = match format {
        ToolCallFormat::Hermes => {
            "<tool_call>\n{\"name\": <tool name>, \"arguments\": <arguments object>}\n</tool_call>"
        }
        ToolCallFormat::Llama3 => "{\"name\": <tool name>, \"parameters\": <arguments object>}",
        ToolCallFormat::Mistral => "[TOOL_CALLS][{\"name\": <tool name>, \"arguments\": <arguments object>}]",
    };
    format!("You can call these tools:\n<tools>\n{}\n</tools>\nTo call a tool, reply with:\n{how}", list.join("\n"))
}

/// `POST /v1/chat/completions`.
#[derive(Deserialize)]
pub struct ChatBody {
    #[serde(flatten)]
    pub common: Common,
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    /// `[{"type": "function", "function": {"name", "description", "parameters"}}]`.
    pub tools: Option<Vec<Value>>,
    /// `"auto"`, `"none"`, `"required"` or `{"type": "function", "function": {"name"}}`.
    pub tool_choice: Option<Value>,
}

impl ChatBody {
    /// The tools offered and the choice: a named function offers that tool
    /// alone, required.
    fn tools(&self) -> Result<(Vec<Tool>, ToolChoice), ApiError> {
        let mut tools: Vec<Tool> = Vec::new();
        for (i, t) in self.tools.iter().flatten().enumerate() {
            match t.get("type") {
                None => {}
                Some(Value::String(k)) if k == "function" => {}
                Some(k) => {
                    return Err(ApiError::invalid(format!(
                        "tools[{i}]: type {k} is not supported (only \"function\" tools)"
                    )))
                }
            }
            let tool = match Tool::from_json(t) {
                Ok(tool) if !tool.name.is_empty() => tool,
                _ => {
                    return Err(ApiError::invalid(format!(
                        "tools[{i}]: a tool needs a name: {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                    )))
                }
            };
            if tools.iter().any(|t| t.name == tool.name) {
                return Err(ApiError::invalid(format!("tools[{i}]: the name '{}' is given twice", tool.name)));
            }
            tools.push(tool);
        }
        let names = || tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
        let choice = match &self.tool_choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid(format!(
                        "tool_choice '{other}' is not supported: \"auto\", \"none\", \"required\" or \
                         {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                    )))
                }
            },
            Some(v) => {
                let name = v.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "tool_choice {v}: an object names a function: \
                         {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                    ))
                })?;
                let Some(tool) = tools.iter().find(|t| t.name == name).cloned() else {
                    return Err(ApiError::invalid(format!(
                        "tool_choice names the function '{name}', which is not among the tools ({})",
                        if tools.is_empty() { "none given".to_string() } else { names() }
                    )));
                };
                tools = vec![tool];
                ToolChoice::Required
            }
        };
        if tools.is_empty() && choice == ToolChoice::Required {
            return Err(ApiError::invalid("tool_choice \"required\" needs tools"));
        }
        Ok((tools, choice))
    }

    /// The engine request and the number of alternatives to report
    /// log-probabilities of (`None`: no log-probabilities).
    pub fn request(&self, support: &ToolSupport) -> Result<(Request, Option<usize>), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages: at least one message is needed"));
        }
        let (tools, choice) = self.tools()?;
        let tools_on = !tools.is_empty() && choice != ToolChoice::None;
        let format = if tools_on {
            if self.common.structured()?.is_some() || self.common.grammar.is_some() {
                return Err(ApiError::invalid(
                    "tools cannot be combined with response_format json_object/json_schema, json_schema or grammar: \
                     the tool calls have their own grammar",
                ));
            }
            Some(support.format.ok_or_else(|| {
                ApiError::invalid(
                    "tools: the model's chat template shows no known tool-call format; start the server with \
                     --tool-format hermes|llama3|mistral",
                )
            })?)
        } else {
            None
        };
        let mut messages = Vec::with_capacity(self.messages.len() + 1);
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
            let mut message = ChatMessage::new(m.role.clone(), content);
            message.tool_calls = m.tool_calls.iter().flatten().map(MessageToolCall::to_call).collect();
            message.tool_call_id = m.tool_call_id.clone();
            message.name = m.name.clone();
            if !message.tool_calls.is_empty() && !support.template_tool_calls {
                // The template shows only content: the calls go there, as the
                // model writes them.
                let calls = calls_text(format.or(support.format), &message.tool_calls);
                if !message.content.is_empty() {
                    message.content.push('\n');
                }
                message.content.push_str(&calls);
            }
            messages.push(message);
        }
        if let (Some(format), false) = (format, support.template_tools) {
            let text = tools_text(format, &tools);
            match messages.first_mut() {
                Some(m) if m.role == "system" => {
                    m.content.push_str("\n\n");
                    m.content.push_str(&text);
                }
                _ => messages.insert(0, ChatMessage::system(text)),
            }
        }
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), n) => Some(n.unwrap_or(0)),
            _ => None,
        };
        let mut r = self.common.apply(Request::chat(messages))?;
        if let Some(format) = format {
            r = r.tools(tools).tool_choice(choice).tool_format(format);
        }
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

/// A fresh tool-call id: `call_` and 16 random letters and digits; for
/// Mistral, whose templates want exactly that, 9 letters and digits.
pub fn new_call_id(format: ToolCallFormat) -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let n = if format == ToolCallFormat::Mistral { 9 } else { 16 };
    let mut out = String::with_capacity(n + 5);
    if format != ToolCallFormat::Mistral {
        out.push_str("call_");
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut x = h.finish();
    for i in 0..n {
        if i == 8 {
            // 8 characters use 48 of the 64 bits: draw again.
            h.write_u64(x);
            x = h.finish();
        }
        out.push(ALNUM[(x % ALNUM.len() as u64) as usize] as char);
        x /= ALNUM.len() as u64;
    }
    out
}

/// A reply's calls in OpenAI's shape (`index` for stream deltas): the id
/// the model wrote, else a fresh one; arguments as a JSON string.
pub fn tool_calls_json(calls: &[ToolCall], format: ToolCallFormat, indexed: bool) -> Vec<Value> {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({
                "id": c.id.clone().unwrap_or_else(|| new_call_id(format)),
                "type": "function",
                "function": {"name": c.name, "arguments": arguments_text(&c.arguments)},
            });
            if indexed {
                v["index"] = json!(i);
            }
            v
        })
        .collect()
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

    /// A whole (non-streamed) response; `reply`, for a chat request that
    /// offered tools, is the text split into content and calls.
    pub fn response(
        &self,
        text: String,
        reply: Option<(&ParsedReply, ToolCallFormat)>,
        token_ids: &[Token],
        logprobs: Option<&LogprobsOut>,
        finish: &str,
        usage: Usage,
    ) -> Value {
        let ids: Vec<i32> = token_ids.iter().map(|t| t.0).collect();
        let lp = logprobs.map_or(Value::Null, |l| l.to_json(self.kind));
        let choice = match self.kind {
            Kind::Chat => {
                let mut message = json!({"role": "assistant", "content": text});
                if let Some((reply, format)) = reply {
                    let calls = !reply.tool_calls.is_empty();
                    message["content"] =
                        if calls && reply.content.is_empty() { Value::Null } else { json!(reply.content) };
                    if calls {
                        message["tool_calls"] = json!(tool_calls_json(&reply.tool_calls, format, false));
                    }
                }
                json!({
                    "index": 0,
                    "message": message,
                    "logprobs": lp,
                    "finish_reason": finish,
                    "token_ids": ids,
                })
            }
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

    /// A chat chunk with the calls of a buffered reply (`delta.tool_calls`).
    pub fn tool_calls_chunk(
        &self,
        calls: &[ToolCall],
        format: ToolCallFormat,
        token_ids: &[i32],
        logprobs: Option<&LogprobsOut>,
    ) -> Value {
        let choice = json!({
            "index": 0,
            "delta": {"tool_calls": tool_calls_json(calls, format, true)},
            "logprobs": logprobs.map_or(Value::Null, |l| l.to_json(self.kind)),
            "finish_reason": null,
            "token_ids": token_ids,
        });
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

/// Most inputs one embeddings request may carry (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// `POST /v1/embeddings`: `{"model", "input", "encoding_format", "dimensions", "user"}`.
#[derive(Deserialize)]
pub struct EmbeddingsBody {
    pub model: Option<String>,
    /// A string, a list of strings, a list of token ids, or a list of those.
    pub input: Option<Value>,
    /// `"float"` (the default) or `"base64"` (little-endian f32s).
    pub encoding_format: Option<String>,
    pub dimensions: Option<Value>,
}

/// One input to embed: a text, or token ids used as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmbedInput {
    Text(String),
    Tokens(Vec<i32>),
}

/// How the vectors are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Float,
    Base64,
}

/// A list of token ids (`Ok(None)`: not a list of numbers).
fn token_list(items: &[Value], field: &str) -> Result<Option<Vec<i32>>, ApiError> {
    if !items.iter().all(Value::is_number) {
        return Ok(None);
    }
    items
        .iter()
        .map(|v| {
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .filter(|&n| n >= 0)
                .ok_or_else(|| ApiError::invalid(format!("{field}: {v} is not a token id")))
        })
        .collect::<Result<Vec<i32>, _>>()
        .map(Some)
}

impl EmbeddingsBody {
    /// The inputs, in order: a string, a list of token ids, or a list of
    /// strings and token-id lists; nothing empty.
    pub fn inputs(&self) -> Result<Vec<EmbedInput>, ApiError> {
        let expected = "a string, a list of strings, a list of token ids, or a list of token-id lists";
        let list = match &self.input {
            None | Some(Value::Null) => return Err(ApiError::invalid(format!("input is required: {expected}"))),
            Some(Value::String(s)) if s.is_empty() => return Err(ApiError::invalid("input is an empty string")),
            Some(Value::String(s)) => return Ok(vec![EmbedInput::Text(s.clone())]),
            Some(Value::Array(a)) if a.is_empty() => return Err(ApiError::invalid("input is an empty list")),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(ApiError::invalid(format!("input: expected {expected}, not {v}"))),
        };
        if let Some(tokens) = token_list(list, "input")? {
            return Ok(vec![EmbedInput::Tokens(tokens)]);
        }
        if list.len() > MAX_EMBEDDING_INPUTS {
            return Err(ApiError::invalid(format!(
                "input has {} items: at most {MAX_EMBEDDING_INPUTS} per request",
                list.len()
            )));
        }
        list.iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) if s.is_empty() => Err(ApiError::invalid(format!("input[{i}] is an empty string"))),
                Value::String(s) => Ok(EmbedInput::Text(s.clone())),
                Value::Array(a) if a.is_empty() => Err(ApiError::invalid(format!("input[{i}] is an empty list"))),
                Value::Array(a) => match token_list(a, &format!("input[{i}]"))? {
                    Some(tokens) => Ok(EmbedInput::Tokens(tokens)),
                    None => Err(ApiError::invalid(format!("input[{i}]: a list must hold token ids only"))),
                },
                v => Err(ApiError::invalid(format!("input[{i}]: expected a string or a list of token ids, not {v}"))),
            })
            .collect()
    }

    pub fn encoding(&self) -> Result<Encoding, ApiError> {
        match self.encoding_format.as_deref() {
            None | Some("float") => Ok(Encoding::Float),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => {
                Err(ApiError::invalid(format!("encoding_format '{other}' is not supported: \"float\" or \"base64\"")))
            }
        }
    }

    /// `dimensions` (shortening the vectors) is not supported; the model's
    /// own width is accepted.
    pub fn check_dimensions(&self, dim: usize) -> Result<(), ApiError> {
        match &self.dimensions {
            None | Some(Value::Null) => Ok(()),
            Some(v) if v.as_u64() == Some(dim as u64) => Ok(()),
            Some(v) => Err(ApiError::invalid(format!(
                "dimensions = {v}: shortening embeddings is not supported; this model's have {dim} dimensions \
                 (leave dimensions out)"
            ))
            .code("unsupported_parameter")),
        }
    }
}

/// Standard base64 (with padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A vector as OpenAI's base64: its little-endian f32s.
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64(&bytes)
}

/// `{"prompt_tokens", "total_tokens"}` of an embeddings or rerank request.
fn input_usage(prompt_tokens: usize) -> Value {
    json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens})
}

/// The embeddings response: `{"object": "list", "data": [{"object":
/// "embedding", "index", "embedding"}], "model", "usage"}`.
pub fn embeddings_response(model: &str, vectors: &[Vec<f32>], encoding: Encoding, prompt_tokens: usize) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => json!(base64_f32(v)),
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model, "usage": input_usage(prompt_tokens)})
}

/// `POST /v1/rerank` (llama-server's, Jina/Cohere-compatible):
/// `{"model", "query", "documents", "top_n", "return_documents"}`.
#[derive(Deserialize)]
pub struct RerankBody {
    pub model: Option<String>,
    pub query: Option<String>,
    /// Strings, or Cohere's `{"text": ...}` objects.
    pub documents: Option<Vec<Value>>,
    pub top_n: Option<usize>,
    /// Jina/Cohere: each result carries its `document` (`{"text"}`).
    pub return_documents: Option<bool>,
}

impl RerankBody {
    /// The query and the documents' texts.
    pub fn texts(&self) -> Result<(String, Vec<String>), ApiError> {
        let query = self.query.clone().ok_or_else(|| ApiError::invalid("query is required: a string"))?;
        let documents = match &self.documents {
            None => return Err(ApiError::invalid("documents is required: a list of strings")),
            Some(d) if d.is_empty() => return Err(ApiError::invalid("documents is an empty list")),
            Some(d) => d,
        };
        if documents.len() > MAX_EMBEDDING_INPUTS {
            return Err(ApiError::invalid(format!(
                "documents has {} items: at most {MAX_EMBEDDING_INPUTS} per request",
                documents.len()
            )));
        }
        let texts = documents
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Value::String(s) => Ok(s.clone()),
                Value::Object(o) => match o.get("text") {
                    Some(Value::String(s)) => Ok(s.clone()),
                    _ => Err(ApiError::invalid(format!("documents[{i}]: an object needs a \"text\" string"))),
                },
                v => Err(ApiError::invalid(format!("documents[{i}]: expected a string, not {v}"))),
            })
            .collect::<Result<_, _>>()?;
        if self.top_n == Some(0) {
            return Err(ApiError::invalid("top_n must be at least 1"));
        }
        Ok((query, texts))
    }
}

/// The rerank response: results sorted by score, highest first (ties in
/// document order, NaN last), cut to `top_n`; `documents` given (for
/// `return_documents`), each result carries its text.
pub fn rerank_response(
    model: &str,
    scores: &[f32],
    documents: Option<&[String]>,
    top_n: Option<usize>,
    prompt_tokens: usize,
) -> Value {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        x.is_nan().cmp(&y.is_nan()).then(y.total_cmp(&x)).then(a.cmp(&b))
    });
    order.truncate(top_n.unwrap_or(usize::MAX));
    let results: Vec<Value> = order
        .into_iter()
        .map(|i| {
            let mut r = json!({"index": i, "relevance_score": scores[i]});
            if let Some(text) = documents.and_then(|d| d.get(i)) {
                r["document"] = json!({"text": text});
            }
            r
        })
        .collect();
    json!({"model": model, "object": "list", "results": results, "usage": input_usage(prompt_tokens)})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> ChatBody {
        serde_json::from_value(body).unwrap()
    }

    const USER: &str = "hi";

    #[test]
    fn response_format() {
        let common = |v: Value| chat(json!({"messages": [{"role": "user", "content": USER}], "response_format": v}));
        assert_eq!(common(json!({"type": "text"})).common.structured().unwrap(), None);
        assert_eq!(
            common(json!({"type": "json_object"})).common.structured().unwrap(),
            Some(Structured::json_object())
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let js = common(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}));
        assert_eq!(js.common.structured().unwrap(), Some(Structured::JsonSchema(schema.clone())));
        for bad in [
            json!({"type": "xml"}),
            json!({}),
            json!({"type": "json_schema"}),
            json!({"type": "json_object", "schema": 3}),
        ] {
            assert_eq!(common(bad).common.structured().unwrap_err().status, StatusCode::BAD_REQUEST);
        }
        let top = chat(json!({"messages": [], "json_schema": schema}));
        assert_eq!(top.common.structured().unwrap(), Some(Structured::JsonSchema(schema)));
    }

    #[test]
    fn tools_need_a_format() {
        let body = chat(json!({
            "messages": [{"role": "user", "content": USER}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        }));
        let e = body.request(&ToolSupport::default()).unwrap_err();
        assert!(e.message.contains("--tool-format"), "{}", e.message);
        let support = ToolSupport { format: Some(ToolCallFormat::Hermes), ..Default::default() };
        assert!(body.request(&support).is_ok());
        // tool_choice "none": the tools are not used, no format needed.
        let none = chat(json!({
            "messages": [{"role": "user", "content": USER}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "none",
        }));
        assert!(none.request(&ToolSupport::default()).is_ok());
    }

    #[test]
    fn tool_choice() {
        let body = |choice: Value| {
            chat(json!({
                "messages": [{"role": "user", "content": USER}],
                "tools": [
                    {"type": "function", "function": {"name": "f"}},
                    {"type": "function", "function": {"name": "g"}},
                ],
                "tool_choice": choice,
            }))
        };
        let (tools, choice) = body(json!({"type": "function", "function": {"name": "g"}})).tools().unwrap();
        assert_eq!((tools.len(), tools[0].name.as_str(), choice), (1, "g", ToolChoice::Required));
        assert_eq!(body(json!("required")).tools().unwrap().1, ToolChoice::Required);
        assert_eq!(body(json!("none")).tools().unwrap().1, ToolChoice::None);
        let e = body(json!({"type": "function", "function": {"name": "h"}})).tools().unwrap_err();
        assert!(e.message.contains("'h'") && e.message.contains("f, g"), "{}", e.message);
        assert!(body(json!("maybe")).tools().is_err());
        let nameless = chat(json!({"messages": [], "tools": [{"type": "function", "function": {"description": "d"}}]}));
        assert!(nameless.tools().unwrap_err().message.contains("needs a name"));
    }

    #[test]
    fn incoming_tool_calls() {
        let m: Message = serde_json::from_value(json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}},
            ],
        }))
        .unwrap();
        let calls: Vec<ToolCall> = m.tool_calls.iter().flatten().map(MessageToolCall::to_call).collect();
        assert_eq!(calls[0], ToolCall::new("f", json!({"x": 1})).with_id("call_1"));
        assert_eq!(calls[1].arguments, json!("not json"));
        assert_eq!(
            calls_text(Some(ToolCallFormat::Hermes), &calls[..1]),
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\":1}}\n</tool_call>"
        );
        // Parsed back as the model's own output would be.
        assert_eq!(
            ToolCallFormat::Llama3.parse(&calls_text(Some(ToolCallFormat::Llama3), &calls[..1])).tool_calls[0].name,
            "f"
        );
        assert_eq!(
            ToolCallFormat::Mistral.parse(&calls_text(Some(ToolCallFormat::Mistral), &calls[..1])).tool_calls[0].name,
            "f"
        );
    }

    #[test]
    fn call_ids() {
        let a = new_call_id(ToolCallFormat::Hermes);
        assert!(a.starts_with("call_") && a.len() == 21 && a[5..].chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, new_call_id(ToolCallFormat::Hermes));
        let m = new_call_id(ToolCallFormat::Mistral);
        assert!(m.len() == 9 && m.chars().all(|c| c.is_ascii_alphanumeric()), "{m}");
    }

    #[test]
    fn embeddings_inputs() {
        let body = |input: Value| serde_json::from_value::<EmbeddingsBody>(json!({"input": input})).unwrap();
        let text = |s: &str| EmbedInput::Text(s.into());
        assert_eq!(body(json!("a b")).inputs().unwrap(), [text("a b")]);
        assert_eq!(body(json!(["a", "b"])).inputs().unwrap(), [text("a"), text("b")]);
        assert_eq!(body(json!([1, 2, 3])).inputs().unwrap(), [EmbedInput::Tokens(vec![1, 2, 3])]);
        assert_eq!(body(json!([[1, 2], "c"])).inputs().unwrap(), [EmbedInput::Tokens(vec![1, 2]), text("c")]);
        for (bad, says) in [
            (json!(""), "empty string"),
            (json!([]), "empty list"),
            (json!(null), "required"),
            (json!(["a", ""]), "input[1] is an empty string"),
            (json!([[1], []]), "input[1] is an empty list"),
            (json!([1, -2]), "-2 is not a token id"),
            (json!([1.5]), "1.5 is not a token id"),
            (json!([[1, "a"]]), "input[0]"),
            (json!(["a", 3]), "input[1]"),
            (json!({"text": "a"}), "expected"),
        ] {
            let e = body(bad.clone()).inputs().unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
        let many = Value::Array(vec![json!("a"); MAX_EMBEDDING_INPUTS + 1]);
        assert!(body(many).inputs().is_err());
        let b: EmbeddingsBody = serde_json::from_value(json!({"input": "a", "encoding_format": "base64"})).unwrap();
        assert_eq!(b.encoding().unwrap(), Encoding::Base64);
        let b: EmbeddingsBody = serde_json::from_value(json!({"input": "a", "encoding_format": "int8"})).unwrap();
        assert!(b.encoding().is_err());
        let b: EmbeddingsBody = serde_json::from_value(json!({"input": "a", "dimensions": 64})).unwrap();
        assert!(b.check_dimensions(576).unwrap_err().message.contains("not supported"));
        assert!(b.check_dimensions(64).is_ok());
    }

    #[test]
    fn base64_of_floats() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // 1.0f32 little-endian: 00 00 80 3f.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        let r = embeddings_response("m", &[vec![1.0], vec![0.5]], Encoding::Base64, 7);
        assert_eq!(r["data"][1]["embedding"], "AAAAPw==");
        assert_eq!((r["object"].as_str(), r["data"][1]["index"].as_u64()), (Some("list"), Some(1)));
        assert_eq!(r["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
        let r = embeddings_response("m", &[vec![0.25, -1.0]], Encoding::Float, 3);
        assert_eq!(r["data"][0], json!({"object": "embedding", "index": 0, "embedding": [0.25, -1.0]}));
    }

    #[test]
    fn rerank_results_sorted_and_cut() {
        let scores = [0.1, 0.9, -2.0, 0.5, 0.9];
        let r = rerank_response("m", &scores, None, None, 40);
        let order: Vec<u64> = r["results"].as_array().unwrap().iter().map(|x| x["index"].as_u64().unwrap()).collect();
        // Highest first; the tie (1 and 4) in document order.
        assert_eq!(order, [1, 4, 3, 0, 2]);
        assert_eq!(r["results"][0]["relevance_score"].as_f64(), Some(0.9f32 as f64));
        assert_eq!((r["object"].as_str(), r["model"].as_str()), (Some("list"), Some("m")));
        assert_eq!(r["usage"]["total_tokens"], 40);
        assert!(r["results"][0].get("document").is_none());
        let docs: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let r = rerank_response("m", &scores, Some(&docs), Some(2), 40);
        assert_eq!(
            r["results"],
            json!([
                {"index": 1, "relevance_score": 0.9f32, "document": {"text": "b"}},
                {"index": 4, "relevance_score": 0.9f32, "document": {"text": "e"}},
            ])
        );
        // top_n beyond the documents: all of them; NaN sorts last.
        let r = rerank_response("m", &[f32::NAN, 1.0], None, Some(10), 0);
        assert_eq!(r["results"].as_array().unwrap().len(), 2);
        assert_eq!(r["results"][0]["index"], 1);

        let body = |v: Value| serde_json::from_value::<RerankBody>(v).unwrap();
        let (q, d) = body(json!({"query": "q", "documents": ["x", {"text": "y"}], "top_n": 1})).texts().unwrap();
        assert_eq!((q.as_str(), d), ("q", vec!["x".to_string(), "y".to_string()]));
        for bad in [
            json!({"documents": ["x"]}),
            json!({"query": "q"}),
            json!({"query": "q", "documents": []}),
            json!({"query": "q", "documents": [3]}),
            json!({"query": "q", "documents": ["x"], "top_n": 0}),
        ] {
            assert_eq!(body(bad).texts().unwrap_err().status, StatusCode::BAD_REQUEST);
        }
    }
}
