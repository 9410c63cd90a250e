//! Chat templates: turning messages into a prompt with llama.cpp's built-in
//! templates (no Jinja: a template text is matched to a built-in one by
//! llama.cpp's heuristics).

use crate::error::{Error, Result};
use crate::ffi::{check_shim, cstring, string_from_ptr, try_resize};
use crate::model::Model;
use llama_sys as sys;
use std::ffi::CString;
use std::os::raw::c_char;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or whatever the template knows.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
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
}

/// First characters of a template, for error messages.
fn template_head(t: &str) -> String {
    let mut head: String = t.chars().take(40).collect();
    if head.len() < t.len() {
        head.push_str("...");
    }
    head
}

/// Formats `messages` with a built-in template. `template` is a built-in
/// name (see [`builtin_chat_templates`], e.g. `"chatml"`, `"llama3"`) or a
/// template text that llama.cpp recognises (e.g. a model's Jinja template);
/// `None` means `"chatml"`, as in llama.cpp. `add_assistant` ends the prompt
/// with the start of an assistant turn.
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
    Err(Error::ChatTemplate { message: "the formatted chat does not fit in i32::MAX bytes".into() })
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
    /// Formats `messages` with the model's own chat template
    /// (`tokenizer.chat_template`), matched to a built-in one by llama.cpp.
    /// Errors if the model has no template or llama.cpp does not recognise it.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_assistant: bool) -> Result<String> {
        let template = self.chat_template(None).ok_or_else(|| Error::ChatTemplate {
            message: format!("model {} has no chat template (tokenizer.chat_template)", self.path().display()),
        })?;
        apply_chat_template(Some(&template), messages, add_assistant)
    }
}
