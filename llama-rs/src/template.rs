//! Jinja chat templates, rendered the way Hugging Face transformers'
//! `apply_chat_template` renders them.
//!
//! A model's `tokenizer.chat_template` is a Jinja program written for
//! Python's `jinja2`. [`ChatTemplate`] runs it on [`minijinja`] with the
//! settings transformers uses, so that the prompt is byte for byte the one the
//! model was trained on:
//! - `trim_blocks` and `lstrip_blocks`, `{% break %}` and `{% continue %}`;
//! - Python's string and dict methods (`.strip()`, `.split()`, `.items()`,
//!   `.get()`, ... through `minijinja-contrib`'s `pycompat`);
//! - `tojson` as Python's `json.dumps(x, ensure_ascii=False)`, with its
//!   `indent`, `separators` and `sort_keys` arguments;
//! - values printed as Python prints them (`None`, `True`, `['a', 1]`);
//! - the globals `messages`, `add_generation_prompt`, `tools`, `documents`,
//!   `bos_token`, `eos_token`, `raise_exception(message)` and
//!   `strftime_now(format)`;
//! - `{% generation %}` blocks (transformers' assistant-mask extension) render
//!   their body.
//!
//! `tests/templates/` holds a corpus of templates and the output Python's
//! `jinja2` gives for each, checked in CI by `scripts/template-check`; the test
//! `tests/templates.rs` renders the same cases here and compares byte for
//! byte.

use crate::chat::ChatMessage;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::vocab::RenderSpecial;
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value as Json;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The name a [`ChatTemplate`] is compiled under.
const TEMPLATE_NAME: &str = "chat_template";

/// A compiled Jinja chat template.
///
/// Compile once ([`ChatTemplate::new`] or [`ChatTemplate::from_model`]) and
/// render many times; rendering does not touch the model. A `ChatTemplate` is
/// `Send` and `Sync` (the compiled program is immutable) and cheap to share
/// behind an `Arc`.
///
/// ```no_run
/// # fn main() -> llama_rs::Result<()> {
/// use llama_rs::{ChatMessage, ChatOptions, ChatTemplate, Model};
/// let model = Model::load("model.gguf")?;
/// let template = ChatTemplate::from_model(&model, None)?;
/// let prompt = template.render(&[ChatMessage::user("Hello!")], &ChatOptions::default())?;
/// # Ok(()) }
/// ```
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// What a render gets besides the messages: the generation prompt, tools,
/// documents, extra variables and the clock.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    add_generation_prompt: bool,
    tools: Option<Vec<Json>>,
    documents: Option<Vec<Json>>,
    extra: serde_json::Map<String, Json>,
    now: Option<SystemTime>,
}

impl Default for ChatOptions {
    /// The generation prompt on, no tools, no documents, no extra
    /// variables, the system clock.
    fn default() -> Self {
        ChatOptions {
            add_generation_prompt: true,
            tools: None,
            documents: None,
            extra: serde_json::Map::new(),
            now: None,
        }
    }
}

impl ChatOptions {
    /// Ends the prompt with the start of an assistant turn (the template's
    /// `add_generation_prompt`; on by default).
    pub fn add_generation_prompt(mut self, yes: bool) -> Self {
        self.add_generation_prompt = yes;
        self
    }

    /// The tools the model may call, in OpenAI's shape
    /// (`{"type": "function", "function": {"name", "description", "parameters"}}`),
    /// passed to the template as `tools`. An empty list passes `none`, as
    /// transformers does.
    pub fn tools(mut self, tools: impl Into<Vec<Json>>) -> Self {
        let tools = tools.into();
        self.tools = (!tools.is_empty()).then_some(tools);
        self
    }

    /// Documents for retrieval-augmented templates (`documents`), e.g.
    /// `{"title": ..., "text": ...}`. An empty list passes `none`.
    pub fn documents(mut self, documents: impl Into<Vec<Json>>) -> Self {
        let documents = documents.into();
        self.documents = (!documents.is_empty()).then_some(documents);
        self
    }

    /// One more template variable (e.g. `enable_thinking`). Extra variables
    /// override the built-in ones of the same name, as keyword arguments of
    /// `apply_chat_template` do.
    pub fn var(mut self, name: impl Into<String>, value: impl Into<Json>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// The time `strftime_now` formats (UTC); the system clock by default.
    /// Fix it for reproducible prompts.
    pub fn now(mut self, now: SystemTime) -> Self {
        self.now = Some(now);
        self
    }
}

impl ChatTemplate {
    /// Compiles a template text. `bos_token` and `eos_token` are empty: set
    /// them with [`ChatTemplate::bos_token`] and [`ChatTemplate::eos_token`],
    /// or use [`ChatTemplate::from_model`].
    ///
    /// Errors: a Jinja syntax error, as [`Error::ChatTemplate`] with the line.
    pub fn new(source: impl Into<String>) -> Result<ChatTemplate> {
        ChatTemplate::compile(source.into(), "template".into())
    }

    /// Compiles the model's own template: `name` `None` is
    /// `tokenizer.chat_template`, `Some("tool_use")` is
    /// `tokenizer.chat_template.tool_use`, and so on. `bos_token` and
    /// `eos_token` are the model's BOS and EOS tokens as text.
    ///
    /// Errors: the model has no such template, or it does not compile.
    pub fn from_model(model: &Model, name: Option<&str>) -> Result<ChatTemplate> {
        let key =
            name.map_or_else(|| "tokenizer.chat_template".to_string(), |n| format!("tokenizer.chat_template.{n}"));
        let source = model.chat_template(name).ok_or_else(|| Error::ChatTemplate {
            line: None,
            message: format!(
                "model {} has no chat template ({key}): pass a template text to ChatTemplate::new, or use a \
                 built-in one by name with apply_chat_template",
                model.path().display()
            ),
        })?;
        let vocab = model.vocab();
        let text = |t: Option<crate::vocab::Token>| -> Result<String> {
            match t {
                Some(t) => Ok(String::from_utf8_lossy(&vocab.token_to_piece(t, RenderSpecial::Yes)?).into_owned()),
                None => Ok(String::new()),
            }
        };
        let mut template = ChatTemplate::compile(source, key)?;
        template.bos_token = text(vocab.bos())?;
        template.eos_token = text(vocab.eos())?;
        Ok(template)
    }

    fn compile(source: String, origin: String) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| template_error(&origin, &e))?;
        env.set_syntax(syntax);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(|state, value, method, args| match (value.as_str(), method, args) {
            (Some(s), "title", []) => Ok(Value::from(py_title(s))),
            _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
        });
        env.set_formatter(|out, _state, value| {
            if value.is_undefined() {
                return Ok(());
            }
            let mut s = String::new();
            py_str(value, &mut s);
            out.write_str(&s).map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "write failed"))
        });
        env.add_filter("tojson", tojson);
        env.add_filter("string", |v: Value| {
            let mut s = String::new();
            py_str(&v, &mut s);
            s
        });
        env.add_function(
            "raise_exception",
            |message: Option<String>| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("raise_exception: {}", message.unwrap_or_default()),
                ))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, generation_blocks_as_plain(&source))
            .map_err(|e| template_error(&origin, &e))?;
        Ok(ChatTemplate { env, source, origin, bos_token: String::new(), eos_token: String::new() })
    }

    /// Sets `bos_token`.
    pub fn bos_token(mut self, text: impl Into<String>) -> Self {
        self.bos_token = text.into();
        self
    }

    /// Sets `eos_token`.
    pub fn eos_token(mut self, text: impl Into<String>) -> Self {
        self.eos_token = text.into();
        self
    }

    /// The BOS text the template gets.
    pub fn bos_text(&self) -> &str {
        &self.bos_token
    }

    /// The EOS text the template gets.
    pub fn eos_text(&self) -> &str {
        &self.eos_token
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` (see [`ChatMessage`] for how each becomes the
    /// OpenAI-shaped object a template reads).
    ///
    /// Errors: the template raised (`raise_exception`) or failed, as
    /// [`Error::ChatTemplate`] with the line and the message.
    pub fn render(&self, messages: &[ChatMessage], options: &ChatOptions) -> Result<String> {
        let messages: Vec<Json> = messages.iter().map(ChatMessage::to_json).collect();
        self.render_json(&messages, options)
    }

    /// Renders messages given as JSON objects, passed to the template as
    /// they are: for messages whose shape [`ChatMessage`] does not cover
    /// (content as a list of parts, fields of your own).
    pub fn render_json(&self, messages: &[Json], options: &ChatOptions) -> Result<String> {
        let now = options.now.unwrap_or_else(SystemTime::now);
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), Json::Array(messages.to_vec()));
        ctx.insert("add_generation_prompt".into(), Json::Bool(options.add_generation_prompt));
        ctx.insert("tools".into(), options.tools.clone().map_or(Json::Null, Json::Array));
        ctx.insert("documents".into(), options.documents.clone().map_or(Json::Null, Json::Array));
        ctx.insert("bos_token".into(), Json::String(self.bos_token.clone()));
        ctx.insert("eos_token".into(), Json::String(self.eos_token.clone()));
        for (k, v) in &options.extra {
            ctx.insert(k.clone(), v.clone());
        }
        let mut value: std::collections::BTreeMap<String, Value> =
            ctx.into_iter().map(|(k, v)| (k, Value::from(minijinja::value::Serde(v)))).collect();
        value.insert(
            "strftime_now".into(),
            Value::from_function(move |format: &str| {
                strftime(now, format).map_err(|m| minijinja::Error::new(ErrorKind::InvalidOperation, m))
            }),
        );
        let ctx = Value::from(value);
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| template_error(&self.origin, &e))?;
        template.render(ctx).map_err(|e| template_error(&self.origin, &e))
    }
}

impl ChatTemplate {
    /// Tokenizes text this template rendered, special-token texts as tokens.
    /// When the tokenizer adds BOS itself (`add` and the vocabulary's
    /// [`add_bos`](crate::Vocab::add_bos)), a BOS text the template wrote at
    /// the start is dropped, so the prompt has one BOS (llama-server does the
    /// same).
    pub fn tokenize(
        &self,
        vocab: crate::vocab::Vocab<'_>,
        text: &str,
        add: crate::vocab::AddSpecial,
    ) -> Result<Vec<crate::vocab::Token>> {
        let mut out = Vec::new();
        self.tokenize_into(vocab, text, add, &mut out)?;
        Ok(out)
    }

    /// [`tokenize`](Self::tokenize), appending to `out`.
    pub fn tokenize_into(
        &self,
        vocab: crate::vocab::Vocab<'_>,
        text: &str,
        add: crate::vocab::AddSpecial,
        out: &mut Vec<crate::vocab::Token>,
    ) -> Result<()> {
        let bos = self.bos_text();
        let adds_bos = add == crate::vocab::AddSpecial::Yes && vocab.add_bos();
        let text = match text.strip_prefix(bos) {
            Some(rest) if adds_bos && !bos.is_empty() => rest,
            _ => text,
        };
        vocab.tokenize_into(text, add, crate::vocab::ParseSpecial::Yes, out)
    }
}

/// A minijinja error as [`Error::ChatTemplate`]: where (the template's origin
/// and line) and what.
fn template_error(origin: &str, e: &minijinja::Error) -> Error {
    let what = match e.detail() {
        Some(d) if e.kind() == ErrorKind::InvalidOperation && d.starts_with("raise_exception: ") => {
            d["raise_exception: ".len()..].to_string()
        }
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    let line = e.line();
    let message = match line {
        Some(l) => format!("{origin}, line {l}: {what}"),
        None => format!("{origin}: {what}"),
    };
    Error::ChatTemplate { line, message }
}

/// transformers registers a `{% generation %}` block (its assistant-mask
/// extension) that renders its body. minijinja does not know the tag: turn
/// it into `{% if true %}`, which keeps any whitespace control of the tag.
fn generation_blocks_as_plain(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = inner.strip_prefix(['-', '+']).map_or(("", inner), |b| (&inner[..1], b));
        let (body, trail) = body.strip_suffix(['-', '+']).map_or((body, ""), |b| (b, &body[b.len()..]));
        match body.trim() {
            "generation" => write!(out, "{{%{lead} if true {trail}%}}").unwrap(),
            "endgeneration" => write!(out, "{{%{lead} endif {trail}%}}").unwrap(),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `str.title()`: a cased character after a cased one is lowered,
/// any other is title-cased (so `"it's"` becomes `"It'S"` and `"a_b"`
/// becomes `"A_B"`, unlike the `title` filter).
fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut previous_cased = false;
    for c in s.chars() {
        if previous_cased {
            out.extend(c.to_lowercase());
        } else {
            match c {
                // The four letters whose title case is neither upper nor lower.
                '\u{1C4}'..='\u{1C6}' => out.push('\u{1C5}'),
                '\u{1C7}'..='\u{1C9}' => out.push('\u{1C8}'),
                '\u{1CA}'..='\u{1CC}' => out.push('\u{1CB}'),
                '\u{1F1}'..='\u{1F3}' => out.push('\u{1F2}'),
                'ß' => out.push_str("Ss"),
                c => out.extend(c.to_uppercase()),
            }
        }
        let titlecase = matches!(c, '\u{1C5}' | '\u{1C8}' | '\u{1CB}' | '\u{1F2}');
        previous_cased = c.is_lowercase() || c.is_uppercase() || titlecase;
    }
    out
}

/// Writes `value` as Python's `str()` would for the same object, as
/// `{{ value }}` prints it in `jinja2`.
fn py_str(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        _ => py_repr(value, out),
    }
}

/// Python's `repr()` of the object `value` stands for.
fn py_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => py_number(value, out),
        ValueKind::String => py_repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out);
                out.push_str(": ");
                py_repr(&value.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr()` of a string: single quotes unless the text has one and
/// no double quote.
fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// An integer as is, a float as Python's `repr(float)`.
fn py_number(value: &Value, out: &mut String) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
    } else {
        let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
        py_float(f, out, "nan", "inf");
    }
}

/// `repr(float)`: the shortest digits that read back, positional for
/// exponents -4..16, else `d.ddde+XX`; `.0` on whole numbers.
fn py_float(f: f64, out: &mut String, nan: &str, inf: &str) {
    if f.is_nan() {
        out.push_str(nan);
        return;
    }
    if f.is_infinite() {
        if f < 0.0 {
            out.push('-');
        }
        out.push_str(inf);
        return;
    }
    // `{:e}` gives the shortest round-trip digits: "1.5e-5", "1e16".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let positional = format!("{f}");
        out.push_str(&positional);
        if !positional.contains('.') {
            out.push_str(".0");
        }
    } else {
        out.push_str(mantissa);
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, each settable by keyword (and
/// `ensure_ascii` by position, as in its Python signature).
fn tojson(value: Value, args: Rest<Value>, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let mut ensure_ascii = args.first().is_some_and(Value::is_true);
    let mut indent: Option<String> = None;
    let mut separators: Option<(String, String)> = None;
    let mut sort_keys = false;
    let positional = |i: usize| args.get(i).cloned();
    if let Some(v) = kwargs.get::<Option<bool>>("ensure_ascii")? {
        ensure_ascii = v;
    }
    let indent_value: Option<Value> = kwargs.get::<Option<Value>>("indent")?.or_else(|| positional(1));
    if let Some(v) = indent_value.filter(|v| !v.is_none() && !v.is_undefined()) {
        indent = Some(match v.as_i64() {
            Some(n) => " ".repeat(n.max(0) as usize),
            None => v.as_str().map(str::to_string).ok_or_else(|| {
                minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string")
            })?,
        });
    }
    let sep_value: Option<Value> = kwargs.get::<Option<Value>>("separators")?.or_else(|| positional(2));
    if let Some(v) = sep_value.filter(|v| !v.is_none() && !v.is_undefined()) {
        let parts: Vec<Value> = v.try_iter()?.collect();
        match parts.as_slice() {
            [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                separators = Some((a.as_str().unwrap().to_string(), b.as_str().unwrap().to_string()));
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be two strings (item, key)",
                ))
            }
        }
    }
    if let Some(v) = kwargs.get::<Option<bool>>("sort_keys")? {
        sort_keys = v;
    } else if let Some(v) = positional(3) {
        sort_keys = v.is_true();
    }
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) =
        separators.unwrap_or_else(|| (if indent.is_some() { ",".into() } else { ", ".into() }, ": ".into()));
    let dumper = PyJson { indent, item_sep, key_sep, sort_keys, ensure_ascii };
    let mut out = String::new();
    dumper.dump(&value, 0, &mut out)?;
    Ok(Value::from(out))
}

/// Python's `json.dumps` with its options.
struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn dump(&self, value: &Value, level: usize, out: &mut String) -> std::result::Result<(), minijinja::Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if value.is_integer() {
                    let _ = write!(out, "{value}");
                } else {
                    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
                    py_float(f, out, "NaN", "Infinity");
                }
            }
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.dump(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort();
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    match key.kind() {
                        ValueKind::String => self.string(key.as_str().unwrap_or_default(), out),
                        ValueKind::None => out.push_str("\"null\""),
                        ValueKind::Bool => out.push_str(if key.is_true() { "\"true\"" } else { "\"false\"" }),
                        ValueKind::Number => {
                            out.push('"');
                            py_number(key, out);
                            out.push('"');
                        }
                        other => {
                            return Err(minijinja::Error::new(
                                ErrorKind::InvalidOperation,
                                format!("tojson: keys must be str, int, float, bool or None, not {other}"),
                            ))
                        }
                    }
                    out.push_str(&self.key_sep);
                    self.dump(&value.get_item(key)?, level + 1, out)?;
                }
                self.newline(level, out);
                out.push('}');
            }
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: object of kind {other} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if self.ensure_ascii && (c as u32) > 0x7e => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{:04x}", u);
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// `datetime.now().strftime(format)` for `now` in UTC: the directives of
/// C's `strftime` that templates use, with glibc's `-` flag (no padding).
fn strftime(now: SystemTime, format: &str) -> std::result::Result<String, String> {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next().ok_or("strftime_now: the format ends with a lone '%'")?;
        let pad = spec != '-';
        if !pad {
            spec = chars.next().ok_or("strftime_now: the format ends with '%-'")?;
        }
        let num = |out: &mut String, n: i64, width: usize| {
            if pad {
                let _ = write!(out, "{n:0width$}");
            } else {
                let _ = write!(out, "{n}");
            }
        };
        match spec {
            'Y' => {
                let _ = write!(out, "{year}");
            }
            'y' => num(&mut out, year.rem_euclid(100), 2),
            'm' => num(&mut out, month, 2),
            'd' => num(&mut out, day, 2),
            'e' => {
                let _ = write!(out, "{day:>2}");
            }
            'H' => num(&mut out, hour, 2),
            'I' => num(&mut out, hour12, 2),
            'M' => num(&mut out, minute, 2),
            'S' => num(&mut out, second, 2),
            'j' => num(&mut out, yday, 3),
            'p' => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            'B' => out.push_str(MONTHS[(month - 1) as usize]),
            'b' | 'h' => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            'A' => out.push_str(WEEKDAYS[weekday]),
            'a' => out.push_str(&WEEKDAYS[weekday][..3]),
            'u' => num(&mut out, weekday as i64 + 1, 1),
            'w' => num(&mut out, (weekday as i64 + 1) % 7, 1),
            'F' => {
                let _ = write!(out, "{year}-{month:02}-{day:02}");
            }
            'T' => {
                let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
            }
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            '%' => out.push('%'),
            other => return Err(format!("strftime_now: the directive %{other} is not supported")),
        }
    }
    Ok(out)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String> {
        ChatTemplate::new(source)?.render(messages, &ChatOptions::default())
    }

    #[test]
    fn python_printing_and_tojson() {
        let t = "{{ none }}|{{ true }}|{{ [1, 'a', none] }}|{{ {'k': 1.5} }}|{{ {'a': 'é\"\\n'} | tojson }}|\
                 {{ [1, 2] | tojson(indent=2) }}|{{ {} | tojson }}|{{ 1e20 | tojson }}|{{ 0.00001 | tojson }}";
        let out = render(t, &[]).unwrap();
        assert_eq!(out, "None|True|[1, 'a', None]|{'k': 1.5}|{\"a\": \"é\\\"\\n\"}|[\n  1,\n  2\n]|{}|1e+20|1e-05");
    }

    #[test]
    fn title_is_pythons() {
        assert_eq!(
            py_title("what's the weather_report 日本語/中文abc ǆemal straße"),
            "What'S The Weather_Report 日本語/中文Abc ǅemal Straße"
        );
    }

    #[test]
    fn strftime_matches_known_dates() {
        // 2026-01-15 12:00:00 UTC, a Thursday.
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_768_478_400);
        assert_eq!(
            strftime(t, "%d %b %Y %A %H:%M:%S %j %-d %B").unwrap(),
            "15 Jan 2026 Thursday 12:00:00 015 15 January"
        );
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(strftime(leap, "%F %a %y").unwrap(), "2000-02-29 Tue 00");
        assert!(strftime(t, "%Q").unwrap_err().contains("%Q"));
    }

    #[test]
    fn generation_blocks_render_their_body() {
        assert_eq!(
            generation_blocks_as_plain("a{%- generation -%}b{% endgeneration %}c{% if x %}"),
            "a{%- if true -%}b{% endif %}c{% if x %}"
        );
    }

    #[test]
    fn errors_name_the_line() {
        match ChatTemplate::new("line one\n{% for %}") {
            Err(Error::ChatTemplate { line: Some(2), message }) => assert!(message.contains("line 2"), "{message}"),
            other => panic!("{other:?}"),
        }
        match render("a\nb\n{{ raise_exception('Roles must alternate') }}", &[]) {
            Err(Error::ChatTemplate { line: Some(3), message }) => {
                assert_eq!(message, "template, line 3: Roles must alternate")
            }
            other => panic!("{other:?}"),
        }
    }
}
