//! Chat messages, and llama.cpp's built-in chat templates by name.
//!
//! A model's own Jinja template is rendered by
//! [`ChatTemplate`](crate::ChatTemplate) (see `template.rs`);
//! [`apply_chat_template`] gives llama.cpp's built-in formats (`chatml`,
//! `llama3`, ...) by name.

use crate::error::{Error, Result};
use crate::ffi::{check_shim, cstring, string_from_ptr, try_resize};
use crate::model::Model;
use llama_sys as sys;
use std::ffi::CString;
use std::os::raw::c_char;

/// One message of a conversation.
///
/// A template reads it as the object OpenAI's chat API uses: `role`,
/// `content`, and, where set, `tool_calls` (each
/// `{"id", "type": "function", "function": {"name", "arguments"}}`),
/// `tool_call_id` and `name`. An assistant message with tool calls and empty
/// content gets `content: null`, as OpenAI clients send it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, or whatever the template knows.
    pub role: String,
    /// The text.
    pub content: String,
    /// Calls the assistant made (assistant messages).
    pub tool_calls: Vec<ToolCall>,
    /// The call this message answers (`tool` messages).
    pub tool_call_id: Option<String>,
    /// The tool's name (`tool` messages), or a participant's name.
    pub name: Option<String>,
}

/// A call of a tool by the model: its name and JSON arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// An id the answer refers to (`tool_call_id`), if the format has one.
    pub id: Option<String>,
    /// The tool's name.
    pub name: String,
    /// The arguments, normally a JSON object. Templates read them as an
    /// object (`arguments | tojson`); a JSON string is passed on as a string.
    pub arguments: serde_json::Value,
}

impl ToolCall {
    /// A call of `name` with `arguments`.
    pub fn new(name: impl Into<String>, arguments: serde_json::Value) -> ToolCall {
        ToolCall { id: None, name: name.into(), arguments }
    }

    /// Sets the call's id.
    pub fn with_id(mut self, id: impl Into<String>) -> ToolCall {
        self.id = Some(id.into());
        self
    }

    /// The OpenAI-shaped object a template reads.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut call = serde_json::Map::new();
        if let Some(id) = &self.id {
            call.insert("id".into(), id.clone().into());
        }
        call.insert("type".into(), "function".into());
        call.insert("function".into(), serde_json::json!({ "name": self.name, "arguments": self.arguments }));
        serde_json::Value::Object(call)
    }
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into(), ..ChatMessage::default() }
    }
    /// A `system` message.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("system", content)
    }
    /// A `user` message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("user", content)
    }
    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new("assistant", content)
    }
    /// An `assistant` message that calls tools (content may be empty).
    pub fn assistant_tool_calls(content: impl Into<String>, calls: impl Into<Vec<ToolCall>>) -> ChatMessage {
        ChatMessage { tool_calls: calls.into(), ..ChatMessage::assistant(content) }
    }
    /// A `tool` message: the result of the call `tool_call_id` (if the
    /// format has ids) of the tool `name`.
    pub fn tool(name: impl Into<String>, tool_call_id: Option<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { name: Some(name.into()), tool_call_id, ..ChatMessage::new("tool", content) }
    }

    /// The OpenAI-shaped object a template reads.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("role".into(), self.role.clone().into());
        let content = if self.content.is_empty() && !self.tool_calls.is_empty() {
            serde_json::Value::Null
        } else {
            self.content.clone().into()
        };
        m.insert("content".into(), content);
        if !self.tool_calls.is_empty() {
            m.insert("tool_calls".into(), self.tool_calls.iter().map(ToolCall::to_json).collect());
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), id.clone().into());
        }
        if let Some(name) = &self.name {
            m.insert("name".into(), name.clone().into());
        }
        serde_json::Value::Object(m)
    }
}

/// First characters of a template, for error messages.
fn template_head(t: &str) -> String {
    let mut head: String = t.chars().take(40).collect();
    if head.len() < t.len() {
        head.push_str("...");
    }
    head
}

/// Formats `messages` with one of llama.cpp's built-in templates. `template`
/// is a built-in name (see [`builtin_chat_templates`], e.g. `"chatml"`,
/// `"llama3"`) or a template text that llama.cpp's heuristics recognise;
/// `None` means `"chatml"`, as in llama.cpp. `add_assistant` ends the prompt
/// with the start of an assistant turn. Only role and content are used. To
/// render a model's own Jinja template exactly, use
/// [`ChatTemplate`](crate::ChatTemplate) or [`Model::apply_chat_template`].
///
/// Errors: a NUL byte in a role, content or template ([`Error::Nul`]); a
/// template llama.cpp does not know ([`Error::ChatTemplate`]).
pub fn apply_chat_template(template: Option<&str>, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
    crate::init();
    let tmpl = template.map(|t| cstring("chat template", t)).transpose()?;
    let mut owned: Vec<(CString, CString)> = Vec::with_capacity(messages.len());
    for m in messages {
        owned.push((cstring("chat message role", &m.role)?, cstring("chat message content", &m.content)?));
    }
    let chat: Vec<sys::llama_chat_message> =
        owned.iter().map(|(r, c)| sys::llama_chat_message { role: r.as_ptr(), content: c.as_ptr() }).collect();
    let total: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
    let mut buf = Vec::new();
    try_resize(&mut buf, total.saturating_mul(2).saturating_add(256).min(i32::MAX as usize), 0, "chat buffer")?;
    for _ in 0..2 {
        let mut n = 0i32;
        // SAFETY: the template is NULL or NUL-terminated; `chat` holds
        // pointers to NUL-terminated strings owned by `owned`, alive for the
        // call; the buffer has buf.len() (<= i32::MAX) writable bytes; the
        // shim catches C++ exceptions.
        let status = unsafe {
            sys::llama_rs_chat_apply_template(
                tmpl.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                chat.as_ptr(),
                chat.len(),
                add_assistant,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
                &mut n,
            )
        };
        check_shim("llama_chat_apply_template", status)?;
        if n < 0 {
            return Err(Error::ChatTemplate {
                line: None,
                message: format!(
                    "template {:?} is not one llama.cpp knows (see builtin_chat_templates()), or it cannot format \
                     these messages",
                    template_head(template.unwrap_or("chatml"))
                ),
            });
        }
        let n = n as usize;
        if n <= buf.len() {
            // Output longer than the buffer is truncated and not
            // NUL-terminated: only the returned length is trusted.
            buf.truncate(n);
            return Ok(String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
        }
        if n > i32::MAX as usize - 1 {
            break;
        }
        try_resize(&mut buf, n + 1, 0, "chat buffer")?;
    }
    Err(Error::ChatTemplate { line: None, message: "the formatted chat does not fit in i32::MAX bytes".into() })
}

/// Names of llama.cpp's built-in chat templates (`chatml`, `llama3`, ...).
pub fn builtin_chat_templates() -> Vec<String> {
    // SAFETY: with len 0 nothing is written; returns the count.
    let n = unsafe { sys::llama_chat_builtin_templates(std::ptr::null_mut(), 0) }.max(0) as usize;
    let mut ptrs: Vec<*const c_char> = vec![std::ptr::null(); n];
    // SAFETY: room for `n` pointers; llama.cpp writes at most `n`, each to a
    // static NUL-terminated name.
    let written = unsafe { sys::llama_chat_builtin_templates(ptrs.as_mut_ptr(), n) }.max(0) as usize;
    ptrs.truncate(written.min(n));
    // SAFETY: each pointer is null or a static NUL-terminated string.
    ptrs.into_iter().map(|p| unsafe { string_from_ptr(p) }).collect()
}

impl Model {
    /// Formats `messages` with the model's own Jinja template
    /// (`tokenizer.chat_template`), rendered as transformers renders it (see
    /// [`ChatTemplate`](crate::ChatTemplate)), with the model's BOS and EOS
    /// texts and the generation prompt when `add_assistant`. This compiles
    /// the template on each call: keep a `ChatTemplate` to render many times.
    ///
    /// Errors: the model has no template, or the template fails
    /// ([`Error::ChatTemplate`], with the line).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
        let template = crate::template::ChatTemplate::from_model(self, None)?;
        template.render(messages, &crate::template::ChatOptions::default().add_generation_prompt(add_assistant))
    }
}
