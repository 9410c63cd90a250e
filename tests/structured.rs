//! Structured output on the real model: every output of a JSON-schema
//! sampler parses and validates (checked by an independent validator,
//! `boon`), tool calls come out well formed with arguments that match their
//! tool's schema, plain text passes through a tool grammar untouched, and
//! unsupported schema features are errors that name them.

mod common;

use llama_rs::{
    ChatMessage, ChatOptions, ChatTemplate, ContextParams, Error, GenerateParams, Model, ParseSpecial, Sampler,
    StopReason, Structured, Tool, ToolCallFormat,
};
use serde_json::{json, Value};

/// The prompt for a request, in the model's chat format.
fn chat_prompt(model: &Model, system: &str, user: &str) -> String {
    let template = ChatTemplate::from_model(model, None).unwrap();
    template.render(&[ChatMessage::system(system), ChatMessage::user(user)], &ChatOptions::default()).unwrap()
}

/// Generates with `sampler` from `prompt`, up to `max_tokens`.
fn generate(model: &Model, sampler: &mut Sampler<'_>, prompt: &str, max_tokens: usize) -> (String, StopReason) {
    let mut ctx = model.new_context(ContextParams::default().n_ctx(1024)).unwrap();
    let params = GenerateParams::default().max_tokens(max_tokens).parse_special(ParseSpecial::Yes);
    let (text, stats) = ctx.generate_text(sampler, prompt, params).unwrap();
    (text, stats.stop_reason)
}

/// Whether `instance` validates against `schema` (draft 2020-12).
fn validates(schema: &Value, instance: &Value) -> Result<(), String> {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.enable_format_assertions();
    compiler.add_resource("mem:schema.json", schema.clone()).map_err(|e| e.to_string())?;
    let idx = compiler.compile("mem:schema.json", &mut schemas).map_err(|e| e.to_string())?;
    schemas.validate(instance, idx).map_err(|e| e.to_string())
}

/// The schemas tried, with a request that fits each.
fn schemas() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "object with required and optional fields",
            "Describe a person as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 40},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "email": {"type": "string", "maxLength": 60}
                },
                "required": ["name", "age"],
                "additionalProperties": false
            }),
        ),
        (
            "nesting",
            "Describe a city and its country as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "country": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "maxLength": 30},
                            "population": {"type": "integer", "minimum": 0}
                        },
                        "required": ["name", "population"],
                        "additionalProperties": false
                    }
                },
                "required": ["city", "country"],
                "additionalProperties": false
            }),
        ),
        (
            "enum and boolean",
            "Is it raining in London? Answer as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "weather": {"enum": ["sunny", "cloudy", "rain", "snow"]},
                    "umbrella": {"type": "boolean"}
                },
                "required": ["weather", "umbrella"],
                "additionalProperties": false
            }),
        ),
        (
            "array with bounds",
            "List some colours as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "colours": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 20},
                        "minItems": 2,
                        "maxItems": 4
                    }
                },
                "required": ["colours"],
                "additionalProperties": false
            }),
        ),
        (
            "numbers with bounds",
            "Give a temperature reading as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "celsius": {"type": "number", "minimum": -50, "maximum": 60},
                    "sensor": {"type": "integer", "minimum": 1, "maximum": 9}
                },
                "required": ["celsius", "sensor"],
                "additionalProperties": false
            }),
        ),
        (
            "string pattern",
            "Give a date and a product code as JSON.",
            json!({
                "type": "object",
                "properties": {
                    "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                    "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}
                },
                "required": ["date", "code"],
                "additionalProperties": false
            }),
        ),
        (
            "array of objects, anyOf",
            "List two shapes as JSON.",
            json!({
                "type": "array",
                "items": {
                    "anyOf": [
                        {"type": "object", "properties": {"circle": {"type": "number", "minimum": 0, "maximum": 100}},
                         "required": ["circle"], "additionalProperties": false},
                        {"type": "object", "properties": {"square": {"type": "integer", "minimum": 0, "maximum": 100}},
                         "required": ["square"], "additionalProperties": false}
                    ]
                },
                "minItems": 1,
                "maxItems": 3
            }),
        ),
    ]
}

/// Seeds per schema: 3, or 1 under a sanitizer (`scripts/sanitize`), where
/// every schema still runs but generation is ten times slower.
fn seeds(n: u32) -> u32 {
    if common::sanitizer().is_some() {
        eprintln!("under a sanitizer: 1 seed per case instead of {n}");
        1
    } else {
        n
    }
}

#[test]
fn json_schema_output_always_validates() {
    let model = common::real_model();
    let (mut tried, mut valid) = (0, 0);
    let n_seeds = seeds(3);
    for (what, request, schema) in schemas() {
        let prompt = chat_prompt(model, "You are a helpful assistant. Answer in JSON.", request);
        for seed in 0..n_seeds {
            let mut sampler = Sampler::builder(model).json_schema(schema.clone()).temp(0.8).dist(seed).build().unwrap();
            let (text, stop) = generate(model, &mut sampler, &prompt, 256);
            tried += 1;
            assert_eq!(stop, StopReason::Eog, "{what}, seed {seed}: the output did not end: {text:?}");
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}, seed {seed}: {e}: {text:?}"));
            validates(&schema, &value).unwrap_or_else(|e| panic!("{what}, seed {seed}: {e}: {text}"));
            valid += 1;
        }
    }
    eprintln!("{} schemas x {n_seeds} seeds: {valid} of {tried} outputs parse and validate", schemas().len());
    assert_eq!(valid, tried);
}

#[test]
fn the_validator_is_not_a_rubber_stamp() {
    // The check above means something only if wrong outputs fail it.
    let (_, _, schema) = &schemas()[0];
    assert!(validates(schema, &json!({"name": "Ann", "age": 30})).is_ok());
    assert!(validates(schema, &json!({"name": "Ann"})).is_err());
    assert!(validates(schema, &json!({"name": "Ann", "age": 300})).is_err());
    assert!(validates(schema, &json!({"name": "Ann", "age": 3, "x": 1})).is_err());
}

#[test]
fn unsupported_schema_features_are_errors_naming_them() {
    let model = common::real_model();
    let cases = [
        (json!({"type": "object", "not": {"required": ["a"]}}), "not"),
        (json!({"type": "string", "format": "no-such-format"}), "no-such-format"),
        (json!({"$ref": "http://example.com/schema.json"}), "http://example.com/schema.json"),
        (json!({"type": "string", "pattern": "^(?=a)abc$"}), "look"),
    ];
    for (schema, named) in cases {
        match Sampler::builder(model).json_schema(schema.clone()).greedy().build() {
            Err(Error::Schema { message }) => assert!(message.contains(named), "{schema}: {message}"),
            other => panic!("{schema}: {other:?}"),
        }
    }
    match Sampler::builder(model).structured(Structured::Lark("start: nope(".into())).greedy().build() {
        Err(Error::Schema { .. }) => {}
        other => panic!("{other:?}"),
    }
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "get_weather",
            "The weather in a city.",
            json!({
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"],
                "additionalProperties": false
            }),
        ),
        Tool::new(
            "add",
            "Adds two integers.",
            json!({
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": false
            }),
        ),
    ]
}

#[test]
fn required_tool_calls_parse_and_match_their_schemas() {
    let model = common::real_model();
    let tools = tools();
    for (format, user) in [
        (ToolCallFormat::Hermes, "What is the weather in Paris?"),
        (ToolCallFormat::Llama3, "Add 2 and 3."),
        (ToolCallFormat::Mistral, "What is the weather in Oslo?"),
    ] {
        let prompt = chat_prompt(model, "You can call tools.", user);
        for seed in 0..seeds(2) {
            let structured = Structured::ToolCalls { format, tools: tools.clone(), required: true };
            let mut sampler = Sampler::builder(model).structured(structured).temp(0.8).dist(seed).build().unwrap();
            let (text, stop) = generate(model, &mut sampler, &prompt, 200);
            assert_eq!(stop, StopReason::Eog, "{format:?}: {text:?}");
            let reply = format.parse(&text);
            assert!(!reply.tool_calls.is_empty(), "{format:?}: no call in {text:?}");
            for call in &reply.tool_calls {
                let tool = tools.iter().find(|t| t.name == call.name).unwrap_or_else(|| panic!("{call:?}"));
                validates(&tool.parameters, &call.arguments).unwrap_or_else(|e| panic!("{format:?} {call:?}: {e}"));
            }
        }
    }
}

#[test]
fn plain_text_passes_a_lazy_tool_grammar_untouched() {
    // No call is started: the tool grammar must not change a single token.
    let model = common::real_model();
    let prompt = chat_prompt(model, "You are a helpful assistant.", "What is the capital of France?");
    let mut plain = Sampler::greedy(model).unwrap();
    let (want, _) = generate(model, &mut plain, &prompt, 40);
    for format in [ToolCallFormat::Hermes, ToolCallFormat::Mistral] {
        let structured = Structured::ToolCalls { format, tools: tools(), required: false };
        let mut sampler = Sampler::builder(model).structured(structured).greedy().build().unwrap();
        let (got, _) = generate(model, &mut sampler, &prompt, 40);
        assert_eq!(got, want, "{format:?}");
        assert!(format.parse(&got).tool_calls.is_empty());
    }
    assert!(want.contains("Paris"), "{want:?}");
}

#[test]
fn engine_requests_take_a_schema_or_tools_each() {
    use llama_rs::{Engine, EngineParams, Request, SamplingParams, ToolChoice};
    let model = std::sync::Arc::new(
        Model::load_with(common::real_model_path(), llama_rs::ModelParams::default().n_gpu_layers(Some(0))).unwrap(),
    );
    let ctx = ContextParams::default().n_ctx(2048).threads(2);
    let engine = Engine::new(model, EngineParams::default().n_slots(4).context(ctx)).unwrap();
    let system = ChatMessage::system("You are a helpful assistant. Answer in JSON.");
    let all = schemas();
    let mut handles = Vec::new();
    for (i, (_, request, schema)) in all.iter().enumerate().take(3) {
        let sampling = SamplingParams::default().seed(i as u32).json_schema(schema.clone());
        let r = Request::chat(vec![system.clone(), ChatMessage::user(*request)]).sampling(sampling).max_tokens(256);
        handles.push(engine.submit(r).unwrap());
    }
    // Tools: SmolLM2's template shows no tool format, so one is named.
    let tools = tools();
    let with_tools = Request::chat(vec![ChatMessage::user("What is the weather in Rome?")])
        .sampling(SamplingParams::default().seed(9))
        .tools(tools.clone())
        .tool_choice(ToolChoice::Required)
        .tool_format(ToolCallFormat::Hermes)
        .max_tokens(200);
    let tools_handle = engine.submit(with_tools).unwrap();
    assert_eq!(tools_handle.tool_format(), Some(ToolCallFormat::Hermes));
    for (handle, (what, _, schema)) in handles.into_iter().zip(&all) {
        let c = handle.wait().unwrap();
        assert_eq!(c.finished.stop_reason, StopReason::Eog, "{what}: {:?}", c.text);
        assert!(c.reply.is_none());
        let value: Value = serde_json::from_str(&c.text).unwrap_or_else(|e| panic!("{what}: {e}: {:?}", c.text));
        validates(schema, &value).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let c = tools_handle.wait().unwrap();
    let reply = c.reply.expect("a request with tools gets its reply parsed");
    assert!(!reply.tool_calls.is_empty(), "{:?}", c.text);
    for call in &reply.tool_calls {
        let tool = tools.iter().find(|t| t.name == call.name).unwrap();
        validates(&tool.parameters, &call.arguments).unwrap();
    }
    // Without a format to use, tools are an error of submit.
    let err = engine.submit(Request::chat(vec![ChatMessage::user("hi")]).tools(tools.clone())).unwrap_err();
    assert!(err.to_string().contains("tool_format"), "{err}");
    // Tools and a schema of its own: refused.
    let both = Request::chat(vec![ChatMessage::user("hi")])
        .sampling(SamplingParams::default().json_schema(json!({"type": "object"})))
        .tools(tools)
        .tool_format(ToolCallFormat::Hermes);
    assert!(matches!(engine.submit(both), Err(Error::InvalidParam { .. })));
}

#[test]
fn a_structured_sampler_refuses_what_its_grammar_does_not_allow() {
    use llama_rs::{AddSpecial, ParseSpecial};
    let m = common::tiny_bpe();
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
    let mut s = Sampler::builder(m).json_schema(schema).greedy().build().unwrap();
    let eos = m.vocab().eos().expect("the tiny model has EOS");
    // End of generation before the object is complete, and text that is
    // not JSON, are refused (and leave the sampler usable).
    assert!(matches!(s.accept(eos), Err(Error::GrammarRejected { .. })));
    let x = m.vocab().tokenize("x", AddSpecial::No, ParseSpecial::No).unwrap();
    assert!(matches!(s.accept(x[0]), Err(Error::GrammarRejected { .. })));
    // A valid object is accepted token by token, then end of generation.
    for t in m.vocab().tokenize("{\"a\": 12}", AddSpecial::No, ParseSpecial::No).unwrap() {
        s.accept(t).unwrap_or_else(|e| panic!("token {t:?}: {e}"));
    }
    s.accept(eos).unwrap();
}
