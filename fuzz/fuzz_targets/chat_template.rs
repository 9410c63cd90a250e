//! Chat templates: an arbitrary template (none, a built-in name, or any
//! text, NUL bytes included) and arbitrary messages (roles and contents may
//! hold NULs) through `llama_rs::apply_chat_template`, and the messages
//! through `Model::apply_chat_template` of the tiny SPM (ChatML) and BPE
//! (Llama 3) models. Errors are fine; nothing may abort or panic.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use llama_rs::{apply_chat_template, builtin_chat_templates, ChatMessage, Error};
use llama_rs_fuzz::{tiny_bpe, tiny_spm};
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
enum Template {
    Default,
    Builtin(u8),
    /// A built-in name followed by arbitrary text (prefix matching).
    BuiltinWithSuffix(u8, String),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Role {
    System,
    User,
    Assistant,
    Tool,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Message {
    role: Role,
    content: String,
}

#[derive(Arbitrary, Debug)]
struct Input {
    template: Template,
    messages: Vec<Message>,
    add_assistant: bool,
    model: u8,
}

fn builtins() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(builtin_chat_templates)
}

fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

fuzz_target!(
    init: {
        llama_rs_fuzz::init();
        let _ = (tiny_spm(), tiny_bpe(), builtins());
    },
    |input: Input| {
        let names = builtins();
        let template = match input.template {
            Template::Default => None,
            Template::Builtin(i) => Some(names[i as usize % names.len()].clone()),
            Template::BuiltinWithSuffix(i, s) => Some(format!("{}{s}", names[i as usize % names.len()])),
            Template::Text(s) => Some(s),
        };
        let messages: Vec<ChatMessage> = input
            .messages
            .into_iter()
            .take(32)
            .map(|m| {
                let role = match m.role {
                    Role::System => "system".to_string(),
                    Role::User => "user".to_string(),
                    Role::Assistant => "assistant".to_string(),
                    Role::Tool => "tool".to_string(),
                    Role::Other(r) => r,
                };
                ChatMessage::new(role, m.content)
            })
            .collect();
        let any_nul = template.as_deref().is_some_and(has_nul)
            || messages.iter().any(|m| has_nul(&m.role) || has_nul(&m.content));
        let result = apply_chat_template(template.as_deref(), &messages, input.add_assistant);
        if any_nul {
            assert!(matches!(result, Err(Error::Nul { .. })), "NUL byte not refused: {result:?}");
        }
        let model = if input.model & 1 == 0 { tiny_spm() } else { tiny_bpe() };
        let result = model.apply_chat_template(&messages, input.add_assistant);
        let msg_nul = messages.iter().any(|m| has_nul(&m.role) || has_nul(&m.content));
        if msg_nul {
            assert!(matches!(result, Err(Error::Nul { .. })), "NUL byte not refused: {result:?}");
        } else {
            // The models' templates are ones llama.cpp recognises.
            result.expect("the tiny models' templates format any NUL-free messages");
        }
    }
);
