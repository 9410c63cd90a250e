//! Structured output: JSON schemas, Lark grammars and lazily triggered tool
//! calls, enforced token by token by [`llguidance`] (the engine llama.cpp
//! itself can be built with) as a sampler of llama.cpp's chain.
//!
//! The sampler masks every token that would leave the grammar (its logit
//! becomes -inf) and feeds each chosen token to the matcher. End of
//! generation is allowed exactly when the grammar is complete; once nothing
//! can follow (a JSON object closed), only end of generation is.
//!
//! The tokenizer view llguidance needs (each token's bytes, control tokens
//! marked, every end-of-generation token) is built once per model, on first
//! use, and kept with the model.

use crate::error::{Error, Result};
use crate::model::Model;
use crate::tools::{Tool, ToolCallFormat};
use crate::vocab::{RenderSpecial, Token};
use llama_sys as sys;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value as Json};
use std::sync::Arc;
use toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

/// A grammar for [`SamplerBuilder::structured`](crate::SamplerBuilder::structured).
#[derive(Clone, Debug, PartialEq)]
pub enum Structured {
    /// Output that parses as JSON and validates against this JSON schema.
    /// Unsupported schema features are an error naming them.
    JsonSchema(Json),
    /// A grammar in llguidance's Lark dialect (which can embed JSON schemas
    /// with `%json {...}`).
    Lark(String),
    /// Free text, or tool calls in `format` whose names and arguments match
    /// `tools`' schemas. Nothing is constrained until the model starts a call
    /// (`<tool_call>`, `[TOOL_CALLS]`, ...); the call is then forced to be
    /// valid. With `required`, the reply must start with a call.
    ToolCalls {
        /// How the model writes calls.
        format: ToolCallFormat,
        /// The tools it may call.
        tools: Vec<Tool>,
        /// The reply must be calls only (OpenAI's `tool_choice: "required"`).
        required: bool,
    },
}

impl Structured {
    /// A JSON-schema grammar.
    pub fn json_schema(schema: Json) -> Structured {
        Structured::JsonSchema(schema)
    }

    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    pub fn json_object() -> Structured {
        Structured::JsonSchema(json!({"type": "object"}))
    }

    /// The llguidance grammar text.
    fn to_grammar(&self, model: &Model) -> Result<TopLevelGrammar> {
        Ok(match self {
            Structured::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            Structured::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
            Structured::ToolCalls { format, tools, required } => {
                if tools.is_empty() {
                    return Err(Error::Schema { message: "tool calls need at least one tool".into() });
                }
                TopLevelGrammar::from_lark(tool_call_grammar(model, *format, tools, *required)?)
            }
        })
    }
}

/// A Lark string literal.
fn lark_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `{"name": <name>, <args_key>: <the tool's schema>}`, nothing else.
fn call_schema(tool: &Tool, args_key: &str) -> Json {
    json!({
        "type": "object",
        "properties": { "name": { "const": tool.name }, args_key: tool.parameters },
        "required": ["name", args_key],
        "additionalProperties": false,
    })
}

/// The Lark grammar of a reply with tool calls in `format`. Free text is
/// `TEXT`; for a text trigger a lazy lexeme ends at its first occurrence;
/// a trigger that is a control token needs no laziness (free text cannot
/// contain one).
fn tool_call_grammar(model: &Model, format: ToolCallFormat, tools: &[Tool], required: bool) -> Result<String> {
    let one_of = |args_key: &str| -> String {
        let any: Vec<Json> = tools.iter().map(|t| call_schema(t, args_key)).collect();
        json!({ "anyOf": any }).to_string()
    };
    let special = |text: &str| -> Option<Token> {
        let vocab = model.vocab();
        let tokens = vocab.tokenize(text, crate::vocab::AddSpecial::No, crate::vocab::ParseSpecial::Yes).ok()?;
        match tokens[..] {
            [t] if vocab.is_control(t) => Some(t),
            _ => None,
        }
    };
    let mut g = String::from("%llguidance {}\n");
    match format {
        ToolCallFormat::Hermes => {
            let ws = "/[ \\n]*/";
            let call = format!("call: {ws} %json {} {ws} \"</tool_call>\"\n", one_of("arguments"));
            let open = format.triggers()[0];
            match (special(open), required) {
                (Some(t), false) => g.push_str(&format!("start: TEXT? (<[{}]> call TEXT?)*\nTEXT: /(.|\\n)+/\n", t.0)),
                (Some(t), true) => g.push_str(&format!("start: (<[{}]> call {ws})+\n", t.0)),
                (None, false) => g.push_str(&format!(
                    "start: (call_hd call)* TEXT\nTEXT: /(.|\\n)*/\ncall_hd[lazy]: TEXT {}\n",
                    lark_str(open)
                )),
                (None, true) => g.push_str(&format!("start: ({} call {ws})+\n", lark_str(open))),
            }
            g.push_str(&call);
        }
        ToolCallFormat::Llama3 => {
            let calls = format!("calls: %json {} (\"; \" %json {})*\n", one_of("parameters"), one_of("parameters"));
            let tag = special(format.triggers()[0]).map(|t| format!("<[{}]>", t.0));
            match (tag, required) {
                (Some(tag), false) => g.push_str(&format!("start: TEXT | {tag}? calls\nTEXT: /[^{{](.|\\n)*/\n")),
                (None, false) => g.push_str("start: TEXT | calls\nTEXT: /[^{](.|\\n)*/\n"),
                (Some(tag), true) => g.push_str(&format!("start: {tag}? calls\n")),
                (None, true) => g.push_str("start: calls\n"),
            }
            g.push_str(&calls);
        }
        ToolCallFormat::Mistral => {
            let list = json!({
                "type": "array",
                "items": { "anyOf": tools.iter().map(|t| call_schema(t, "arguments")).collect::<Vec<_>>() },
                "minItems": 1,
            });
            let mark = match special(format.triggers()[0]) {
                Some(t) => format!("<[{}]>", t.0),
                None => lark_str(format.triggers()[0]),
            };
            if required {
                g.push_str(&format!("start: {mark} calls\n"));
            } else if mark.starts_with('<') {
                g.push_str(&format!("start: TEXT | TEXT? {mark} calls\nTEXT: /(.|\\n)+/\n"));
            } else {
                g.push_str(&format!("start: TEXT | call_hd calls\nTEXT: /(.|\\n)*/\ncall_hd[lazy]: TEXT {mark}\n"));
            }
            g.push_str(&format!("calls: %json {list}\n"));
        }
    }
    Ok(g)
}

/// llguidance's view of a model's vocabulary.
struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // No exact tokenizer is passed: llguidance then forces no tokens and
        // allows every tokenization of fixed text, which is always correct.
        self.trie.greedy_tokenize(s)
    }
}

/// The per-model parser factory (tokenizer view, lexer settings).
pub(crate) type Factory = Arc<ParserFactory>;

/// Builds the parser factory for `model`: each token's bytes as the model
/// prints them, control tokens behind llguidance's marker byte, and every
/// end-of-generation token.
pub(crate) fn build_factory(model: &Model) -> Result<Factory> {
    let vocab = model.vocab();
    let n = vocab.n_tokens().max(0) as usize;
    let mut words = Vec::with_capacity(n);
    let mut eog = Vec::new();
    let mut buf = Vec::new();
    for id in 0..n as i32 {
        let t = Token(id);
        // A token that prints nothing unless special tokens are rendered
        // (control, unknown) is special: free text cannot contain it.
        buf.clear();
        vocab.token_to_piece_into(t, RenderSpecial::No, &mut buf)?;
        let special = buf.is_empty();
        buf.clear();
        vocab.token_to_piece_into(t, RenderSpecial::Yes, &mut buf)?;
        let mut word = Vec::with_capacity(buf.len() + 1);
        if special && !buf.is_empty() {
            word.push(TokTrie::SPECIAL_TOKEN_MARKER);
        }
        word.extend_from_slice(&buf);
        words.push(word);
        if vocab.is_eog(t) {
            eog.push(id as TokenId);
        }
    }
    if eog.is_empty() {
        return Err(Error::Schema {
            message: "the model has no end-of-generation token: structured output needs one to end".into(),
        });
    }
    let info = TokRxInfo::new(n as u32, eog[0]);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&eog);
    let env: TokEnv = Arc::new(VocabEnv { trie });
    let mut factory = ParserFactory::new_simple(&env).map_err(|e| Error::Schema { message: e.to_string() })?;
    factory.quiet();
    factory.limits_mut().verbose_errors = false;
    Ok(Arc::new(factory))
}

/// Compiles `structured` for `model` into a matcher at its start.
pub(crate) fn compile(model: &Model, structured: &Structured) -> Result<Matcher> {
    let factory = model.guidance_factory()?;
    let matcher = Matcher::new(factory.create_parser(structured.to_grammar(model)?));
    if let Some(e) = matcher.get_error() {
        return Err(Error::Schema { message: e });
    }
    Ok(matcher)
}

/// The state of one structured-output sampler in a llama.cpp chain.
struct State {
    matcher: Matcher,
    /// The mask for the current step, until the next accept.
    mask: Option<SimpleVob>,
    /// The end-of-generation tokens (allowed alone after an error).
    eog: Vec<TokenId>,
    /// Whether a matcher error was already logged.
    failed: bool,
}

impl State {
    fn mask(&mut self) -> &SimpleVob {
        if self.mask.is_none() {
            let mask = match self.matcher.compute_mask_or_eos() {
                Ok(m) => m,
                Err(e) => {
                    // Only tokens the mask allowed are ever accepted, so this
                    // is an llguidance fault: end the output rather than let
                    // it run unconstrained.
                    if !self.failed {
                        tracing::warn!(target: "llama_rs", "structured output: {e}; only end of generation is allowed now");
                        self.failed = true;
                    }
                    let size = self.matcher.tok_env().map(|e| e.tok_trie().vocab_size()).unwrap_or(0);
                    let mut v = SimpleVob::alloc(size);
                    for &t in &self.eog {
                        v.allow_token(t);
                    }
                    v
                }
            };
            self.mask = Some(mask);
        }
        self.mask.as_ref().expect("computed above")
    }
}

/// The name llama.cpp reports for the sampler.
static NAME: &[u8] = b"llguidance\0";

/// The callbacks of the structured-output sampler. None may unwind into C:
/// each body runs under `catch_unwind`.
static IFACE: sys::llama_sampler_i = sys::llama_sampler_i {
    name: Some(iface_name),
    accept: Some(iface_accept),
    apply: Some(iface_apply),
    reset: Some(iface_reset),
    clone: Some(iface_clone),
    free: Some(iface_free),
    backend_init: None,
    backend_accept: None,
    backend_apply: None,
    backend_set_input: None,
    backend_reset: None,
    copy_state: None,
};

/// The state behind a sampler created with [`IFACE`].
///
/// # Safety
/// `smpl` must be a live sampler created by [`new_sampler`], not used by
/// another thread during the call.
unsafe fn state<'a>(smpl: *const sys::llama_sampler) -> Option<&'a mut State> {
    // SAFETY: per the contract, ctx is the Box<State> new_sampler leaked.
    unsafe { ((*smpl).ctx as *mut State).as_mut() }
}

unsafe extern "C" fn iface_name(_smpl: *const sys::llama_sampler) -> *const std::os::raw::c_char {
    NAME.as_ptr().cast()
}

unsafe extern "C" fn iface_accept(smpl: *mut sys::llama_sampler, token: sys::llama_token) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: llama.cpp calls back with the sampler it was created as.
        let Some(s) = (unsafe { state(smpl) }) else { return };
        s.mask = None;
        if s.matcher.is_stopped() || token < 0 {
            return;
        }
        if let Err(e) = s.matcher.consume_token(token as TokenId) {
            if !s.failed {
                tracing::warn!(target: "llama_rs", "structured output: {e}");
                s.failed = true;
            }
        }
    }));
}

unsafe extern "C" fn iface_apply(smpl: *mut sys::llama_sampler, cur_p: *mut sys::llama_token_data_array) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: llama.cpp calls back with the sampler it was created as and
        // a candidate array of `size` valid elements at `data`.
        let (Some(s), Some(arr)) = (unsafe { state(smpl) }, unsafe { cur_p.as_mut() }) else { return };
        if arr.data.is_null() || arr.size == 0 {
            return;
        }
        // SAFETY: as above: `size` initialised elements, ours for the call.
        let cands = unsafe { std::slice::from_raw_parts_mut(arr.data, arr.size) };
        let mask = s.mask();
        for c in cands {
            if c.id < 0 || !mask.is_allowed(c.id as TokenId) {
                c.logit = f32::NEG_INFINITY;
            }
        }
    }));
}

unsafe extern "C" fn iface_reset(smpl: *mut sys::llama_sampler) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: llama.cpp calls back with the sampler it was created as.
        let Some(s) = (unsafe { state(smpl) }) else { return };
        s.mask = None;
        s.failed = false;
        let _ = s.matcher.reset();
    }));
}

unsafe extern "C" fn iface_clone(smpl: *const sys::llama_sampler) -> *mut sys::llama_sampler {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: llama.cpp calls back with the sampler it was created as.
        let Some(s) = (unsafe { state(smpl) }) else { return std::ptr::null_mut() };
        let copy = State { matcher: s.matcher.deep_clone(), mask: None, eog: s.eog.clone(), failed: s.failed };
        new_sampler_raw(copy)
    }))
    .unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn iface_free(smpl: *mut sys::llama_sampler) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: llama.cpp frees each sampler once; ctx is the Box<State>
        // new_sampler leaked, or null.
        let ctx = unsafe { (*smpl).ctx } as *mut State;
        if !ctx.is_null() {
            // SAFETY: see above; reclaimed exactly once.
            drop(unsafe { Box::from_raw(ctx) });
        }
    }));
}

fn new_sampler_raw(state: State) -> *mut sys::llama_sampler {
    let ctx = Box::into_raw(Box::new(state));
    // SAFETY: IFACE is static and llama.cpp only reads through the pointer
    // (the C signature lacks `const`); llama.cpp stores the context pointer
    // and hands it back to our callbacks; iface_free reclaims it.
    let smpl = unsafe { sys::llama_sampler_init(std::ptr::addr_of!(IFACE).cast_mut(), ctx.cast()) };
    if smpl.is_null() {
        // SAFETY: not taken by llama.cpp: reclaim it.
        drop(unsafe { Box::from_raw(ctx) });
    }
    smpl
}

/// A llama.cpp sampler enforcing `structured` for `model`.
pub(crate) fn new_sampler(model: &Model, structured: &Structured) -> Result<*mut sys::llama_sampler> {
    let matcher = compile(model, structured)?;
    let eog = matcher.tok_env().map(|e| e.tok_trie().eos_tokens().to_vec()).unwrap_or_default();
    let smpl = new_sampler_raw(State { matcher, mask: None, eog, failed: false });
    if smpl.is_null() {
        return Err(Error::Sampler { message: "llama.cpp could not create the structured-output sampler".into() });
    }
    Ok(smpl)
}
