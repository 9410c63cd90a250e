//! Tool calls: the tools a model is offered, and its replies parsed into
//! calls for the formats of the common model families.
//!
//! A template gets the tools through [`ChatOptions::tools`](crate::ChatOptions::tools);
//! the model answers in its family's format; [`ToolCallFormat::parse`] splits
//! the reply into plain text and [`ToolCall`]s. The formats:
//! - [`Hermes`](ToolCallFormat::Hermes) (Hermes 2 Pro, Qwen 2.5 and 3, and
//!   many fine-tunes): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
//!   one block per call, text around them.
//! - [`Llama3`](ToolCallFormat::Llama3) (Llama 3.1 to 3.3 with custom tools):
//!   the reply is a JSON object `{"name": ..., "parameters": {...}}`,
//!   optionally after `<|python_tag|>`; several are separated by `;`.
//! - [`Mistral`](ToolCallFormat::Mistral): `[TOOL_CALLS]` then a JSON list of
//!   `{"name", "arguments", "id"}`, or (newer models) `[TOOL_CALLS]name[ARGS]{...}`
//!   per call.
//!
//! Text that is not a well-formed call passes through untouched as content.

use crate::chat::ToolCall;
use crate::template::ChatTemplate;
use serde_json::Value as Json;

/// A tool the model may call: a function with a JSON-schema for its
/// arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// A JSON schema of the arguments object.
    pub parameters: Json,
}

impl Tool {
    /// A tool `name` with a description and a JSON schema for its arguments.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Json) -> Tool {
        Tool { name: name.into(), description: description.into(), parameters }
    }

    /// The tool in OpenAI's shape, as templates read it:
    /// `{"type": "function", "function": {"name", "description", "parameters"}}`.
    pub fn to_json(&self) -> Json {
        serde_json::json!({
            "type": "function",
            "function": { "name": self.name, "description": self.description, "parameters": self.parameters },
        })
    }

    /// A tool from OpenAI's shape (or the bare `function` object).
    ///
    /// Errors: no `name`, or a name that is not a string.
    pub fn from_json(value: &Json) -> crate::Result<Tool> {
        let f = value.get("function").unwrap_or(value);
        let name = f.get("name").and_then(Json::as_str).ok_or_else(|| {
            crate::Error::invalid("tool", value.to_string(), "a tool needs a \"name\" string (OpenAI's shape)")
        })?;
        Ok(Tool {
            name: name.to_string(),
            description: f.get("description").and_then(Json::as_str).unwrap_or_default().to_string(),
            parameters: f.get("parameters").cloned().unwrap_or_else(|| serde_json::json!({"type": "object"})),
        })
    }
}

/// Whether the model may call tools (OpenAI's `tool_choice`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ToolChoice {
    /// Text or calls, as the model decides.
    #[default]
    Auto,
    /// Calls only: the reply starts with one.
    Required,
    /// No calls: the tools are not even shown to the template.
    None,
}

/// How a model family writes its tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ToolCallFormat {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes,
    /// Qwen 2.5 and 3).
    Hermes,
    /// A JSON object `{"name": ..., "parameters": {...}}`, optionally after
    /// `<|python_tag|>` (Llama 3.x).
    Llama3,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`, or
    /// `[TOOL_CALLS]name[ARGS]{...}` (Mistral).
    Mistral,
}

/// A reply split into its text and its tool calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedReply {
    /// The text outside the calls, trimmed.
    pub content: String,
    /// The calls, in order.
    pub tool_calls: Vec<ToolCall>,
}

impl ToolCallFormat {
    /// The format a template writes tool calls in, from what its text
    /// contains; `None` if it shows none of the known markers.
    pub fn detect(template: &ChatTemplate) -> Option<ToolCallFormat> {
        let src = template.source();
        if src.contains("<tool_call>") {
            Some(ToolCallFormat::Hermes)
        } else if src.contains("[TOOL_CALLS]") {
            Some(ToolCallFormat::Mistral)
        } else if src.contains("<|python_tag|>")
            || (src.contains("<|start_header_id|>") && src.contains("tools") && src.contains("parameters"))
        {
            Some(ToolCallFormat::Llama3)
        } else {
            None
        }
    }

    /// The text that starts a call: until the model writes one of these,
    /// its output is plain text and is not constrained.
    pub fn triggers(self) -> &'static [&'static str] {
        match self {
            ToolCallFormat::Hermes => &["<tool_call>"],
            ToolCallFormat::Llama3 => &["<|python_tag|>", "{\"name\""],
            ToolCallFormat::Mistral => &["[TOOL_CALLS]"],
        }
    }

    /// Splits a reply into text and calls. Text that is not a well-formed
    /// call (unbalanced tags, JSON that does not parse, no `name`) stays in
    /// the content as it was written.
    pub fn parse(self, reply: &str) -> ParsedReply {
        match self {
            ToolCallFormat::Hermes => parse_hermes(reply),
            ToolCallFormat::Llama3 => parse_llama3(reply),
            ToolCallFormat::Mistral => parse_mistral(reply),
        }
    }
}

/// A call from a JSON object with `name` and `arguments` (or `parameters`).
fn call_from_object(v: &Json) -> Option<ToolCall> {
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.to_string();
    let arguments =
        obj.get("arguments").or_else(|| obj.get("parameters")).cloned().unwrap_or(Json::Object(Default::default()));
    // Some models write the arguments as a JSON string.
    let arguments = match arguments {
        Json::String(s) => serde_json::from_str(&s).unwrap_or(Json::String(s)),
        a => a,
    };
    let id = obj.get("id").and_then(Json::as_str).map(str::to_string);
    Some(ToolCall { id, name, arguments })
}

/// Parses the first JSON value of `text`, returning it and the rest.
fn json_prefix(text: &str) -> Option<(Json, &str)> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Json>();
    let value = stream.next()?.ok()?;
    Some((value, &text[stream.byte_offset()..]))
}

fn parse_hermes(reply: &str) -> ParsedReply {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = reply;
    while let Some(start) = rest.find(OPEN) {
        let inner = &rest[start + OPEN.len()..];
        let (body, after) = match inner.find(CLOSE) {
            Some(end) => (&inner[..end], &inner[end + CLOSE.len()..]),
            // A call cut off by the token limit: parse what is there.
            None => (inner, ""),
        };
        match serde_json::from_str::<Json>(body.trim()).ok().as_ref().and_then(call_from_object) {
            Some(call) => {
                content.push_str(&rest[..start]);
                calls.push(call);
            }
            None => content.push_str(&rest[..rest.len() - after.len()]),
        }
        rest = after;
    }
    content.push_str(rest);
    ParsedReply { content: content.trim().to_string(), tool_calls: calls }
}

fn parse_llama3(reply: &str) -> ParsedReply {
    let trimmed = reply.trim_start();
    let body = trimmed.strip_prefix("<|python_tag|>").unwrap_or(trimmed);
    let mut calls = Vec::new();
    let mut rest = body.trim_start();
    while rest.starts_with('{') {
        let Some((value, after)) = json_prefix(rest) else { break };
        let Some(call) = call_from_object(&value) else { break };
        calls.push(call);
        rest = after.trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    if calls.is_empty() {
        return ParsedReply { content: reply.trim().to_string(), tool_calls: calls };
    }
    ParsedReply { content: rest.trim().to_string(), tool_calls: calls }
}

fn parse_mistral(reply: &str) -> ParsedReply {
    const MARK: &str = "[TOOL_CALLS]";
    let Some(start) = reply.find(MARK) else {
        return ParsedReply { content: reply.trim().to_string(), tool_calls: Vec::new() };
    };
    let content = reply[..start].trim().to_string();
    let body = reply[start + MARK.len()..].trim_start();
    let mut calls = Vec::new();
    if body.starts_with('[') {
        if let Some((Json::Array(items), _)) = json_prefix(body) {
            calls = items.iter().filter_map(call_from_object).collect();
        }
    } else {
        // name[ARGS]{...}, repeated, each after [TOOL_CALLS].
        for part in reply[start..].split(MARK).skip(1) {
            let Some((name, args)) = part.split_once("[ARGS]") else { continue };
            let Some((arguments, _)) = json_prefix(args.trim_start()) else { continue };
            calls.push(ToolCall { id: None, name: name.trim().to_string(), arguments });
        }
    }
    if calls.is_empty() {
        return ParsedReply { content: reply.trim().to_string(), tool_calls: calls };
    }
    ParsedReply { content, tool_calls: calls }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hermes_calls_and_text() {
        let r = ToolCallFormat::Hermes.parse(
            "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
             <tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>",
        );
        assert_eq!(r.content, "Let me look.");
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(r.tool_calls[0].name, "get_weather");
        assert_eq!(r.tool_calls[0].arguments, json!({"city": "Paris"}));
        assert_eq!(r.tool_calls[1].arguments, json!({"a": 1}));
        // Not a call: untouched.
        let plain = "Use <tool_call> tags like <tool_call>this</tool_call>.";
        assert_eq!(ToolCallFormat::Hermes.parse(plain).content, plain);
        assert!(ToolCallFormat::Hermes.parse(plain).tool_calls.is_empty());
        // Cut off before the closing tag.
        let cut = ToolCallFormat::Hermes.parse("<tool_call>{\"name\": \"f\", \"arguments\": {}}");
        assert_eq!(cut.tool_calls.len(), 1);
    }

    #[test]
    fn llama3_calls() {
        let r = ToolCallFormat::Llama3.parse(
            "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"x\": 1}}; {\"name\": \"g\", \"parameters\": {}}",
        );
        assert_eq!(r.tool_calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["f", "g"]);
        assert_eq!(r.tool_calls[0].arguments, json!({"x": 1}));
        let text = "{not json} but text";
        assert_eq!(ToolCallFormat::Llama3.parse(text), ParsedReply { content: text.into(), tool_calls: vec![] });
    }

    #[test]
    fn mistral_calls() {
        let r = ToolCallFormat::Mistral
            .parse("Sure.[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"x\": 1}, \"id\": \"abc123def\"}]");
        assert_eq!(r.content, "Sure.");
        assert_eq!(r.tool_calls[0].id.as_deref(), Some("abc123def"));
        let v11 = ToolCallFormat::Mistral.parse("[TOOL_CALLS]f[ARGS]{\"x\": 1}[TOOL_CALLS]g[ARGS]{}");
        assert_eq!(v11.tool_calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["f", "g"]);
        assert_eq!(ToolCallFormat::Mistral.parse("no calls").content, "no calls");
    }
}
