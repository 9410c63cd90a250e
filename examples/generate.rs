//! Streams text from a GGUF model.
//!
//! ```text
//! cargo run --release --example generate -- [--model PATH] [--prompt TEXT] [-n N]
//!     [--seed S] [--temp T] [-ngl N] [--split-mode none|layer|row|tensor]
//!     [--tensor-split 3,1] [--main-gpu I] [--rpc HOST:PORT,...] [-cnv [-sys TEXT]]
//!     [--json-schema SCHEMA | --json-schema-file FILE | --grammar-file FILE]
//! ```
//!
//! `-cnv` chats, as llama-cli does: each line read from standard input is a
//! user turn, formatted with the model's own chat template (after the `-sys`
//! system message); the answer streams back. The KV cache is kept between
//! turns: only the new text of each turn is decoded. An empty line or end of
//! input ends the chat.
//!
//! Without `--model` it writes (once) a small synthetic model with random
//! weights and uses it: the text is gibberish, the timings are real.

use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind};
use llama_rs::{
    AddSpecial, ChatMessage, ChatOptions, ChatTemplate, Context, ContextParams, GenerateParams, Model, ModelParams,
    Prompt, Sampler, SplitMode,
};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: generate [--model PATH] [--prompt TEXT] [-n N] [--seed S] [--temp T] [-ngl N]
                [--split-mode none|layer|row|tensor] [--tensor-split 3,1] [--main-gpu I]
                [--rpc HOST:PORT,...] (RPC servers, feature rpc)
                [-cnv|--conversation] [-sys|--system-prompt TEXT]
                [-j|--json-schema SCHEMA] [-jf|--json-schema-file FILE] [--grammar-file FILE]";

struct Args {
    model: Option<PathBuf>,
    prompt: String,
    n: usize,
    seed: u32,
    temp: f32,
    ngl: Option<u32>,
    split_mode: SplitMode,
    tensor_split: Vec<f32>,
    main_gpu: usize,
    rpc: Vec<String>,
    conversation: bool,
    system: Option<String>,
    json_schema: Option<String>,
    grammar: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: None,
        prompt: "Once upon a time".into(),
        n: 64,
        seed: 42,
        temp: 0.8,
        ngl: None,
        split_mode: SplitMode::Layer,
        tensor_split: Vec::new(),
        main_gpu: 0,
        rpc: Vec::new(),
        conversation: false,
        system: None,
        json_schema: None,
        grammar: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if flag == "-cnv" || flag == "--conversation" {
            a.conversation = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--model" | "-m" => a.model = Some(value.into()),
            "--prompt" | "-p" => a.prompt = value,
            "-n" | "--n-predict" => a.n = value.parse().map_err(|e| bad(&e))?,
            "--seed" | "-s" => a.seed = value.parse().map_err(|e| bad(&e))?,
            "--temp" => a.temp = value.parse().map_err(|e| bad(&e))?,
            "-ngl" | "--n-gpu-layers" => {
                let n: i64 = value.parse().map_err(|e| bad(&e))?;
                a.ngl = (n >= 0).then_some(n.min(u32::MAX as i64) as u32);
            }
            "--split-mode" | "-sm" => a.split_mode = value.parse().map_err(|e| bad(&e))?,
            "--tensor-split" | "-ts" => {
                a.tensor_split = value
                    .split([',', '/'])
                    .map(|s| s.trim().parse::<f32>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(&e))?
            }
            "--main-gpu" | "-mg" => a.main_gpu = value.parse().map_err(|e| bad(&e))?,
            "--rpc" => a.rpc = value.split(',').map(|s| s.trim().to_string()).collect(),
            "-sys" | "--system-prompt" => a.system = Some(value),
            "-j" | "--json-schema" => a.json_schema = Some(value),
            "-jf" | "--json-schema-file" => a.json_schema = Some(std::fs::read_to_string(&value).map_err(|e| bad(&e))?),
            "--grammar-file" => a.grammar = Some(std::fs::read_to_string(&value).map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => {
            let synthetic = SyntheticModel::new(ModelShape::small()).vocab(VocabKind::Spm).seed(1);
            let p = synthetic.write_cached(llama_rs_suite::FIXTURE_DIR)?;
            eprintln!(
                "no --model given: using a synthetic model with random weights ({} parameters) at {}",
                ModelShape::small().n_params(),
                p.display()
            );
            p
        }
    };
    let params = ModelParams::default()
        .n_gpu_layers(args.ngl)
        .split_mode(args.split_mode)
        .tensor_split(&args.tensor_split)
        .main_gpu(args.main_gpu)
        .rpc_servers(&args.rpc);
    let model = Model::load_with(&path, params)?;
    let mut ctx = model.new_context(ContextParams::default().n_ctx(2048))?;
    let mut builder = Sampler::builder(&model);
    if let Some(schema) = &args.json_schema {
        let schema: serde_json::Value = serde_json::from_str(schema).map_err(|e| format!("--json-schema: {e}"))?;
        builder = builder.json_schema(schema);
    }
    if let Some(gbnf) = &args.grammar {
        builder = builder.grammar(gbnf, "root");
    }
    let mut sampler = if args.temp <= 0.0 {
        builder.greedy().build()?
    } else {
        builder.top_k(40).top_p(0.95, 1).min_p(0.05, 1).temp(args.temp).dist(args.seed).build()?
    };

    if args.conversation {
        return chat(&model, &mut ctx, &mut sampler, &args);
    }
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    out.flush()?;
    let mut generation = ctx.generate(&mut sampler, &*args.prompt, GenerateParams::default().max_tokens(args.n))?;
    for piece in &mut generation {
        write!(out, "{}", piece?.text)?;
        out.flush()?;
    }
    writeln!(out)?;
    let s = generation.stats().expect("generation finished");
    eprintln!(
        "prompt: {} tokens, {:.1} t/s | generated: {} tokens, {:.1} t/s | time to first token: {:.1} ms | stop: {:?}",
        s.prompt_tokens,
        s.prompt_tps,
        s.generated_tokens,
        s.generation_tps,
        s.time_to_first_token.as_secs_f64() * 1e3,
        s.stop_reason
    );
    Ok(())
}

/// The `-cnv` loop: one user turn per input line, the model's template, the
/// KV cache kept between turns.
fn chat(
    model: &Model,
    ctx: &mut Context<'_>,
    sampler: &mut Sampler<'_>,
    args: &Args,
) -> Result<(), Box<dyn std::error::Error>> {
    let template = ChatTemplate::from_model(model, None)?;
    let vocab = model.vocab();
    let mut history: Vec<ChatMessage> = args.system.iter().map(ChatMessage::system).collect();
    // What the cache holds, as the template renders it (no generation prompt).
    let mut cached = String::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    loop {
        write!(out, "\n> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        history.push(ChatMessage::user(line.trim_end_matches(['\n', '\r'])));
        let full = template.render(&history, &ChatOptions::default())?;
        // Only the new text is decoded. A template that rewrites earlier
        // turns (some drop old reasoning) makes the cache stale: start over.
        let (delta, first) = match full.strip_prefix(cached.as_str()) {
            Some(delta) if !cached.is_empty() => (delta, false),
            _ => {
                ctx.clear_kv(true);
                (full.as_str(), true)
            }
        };
        let tokens = template.tokenize(vocab, delta, AddSpecial::from(first))?;
        let cached_tokens = ctx.seq_pos_max(0)?.map_or(0, |p| p + 1);
        sampler.reset()?;
        let params = GenerateParams::default().max_tokens(args.n).add_special(Some(AddSpecial::No));
        let mut reply = String::new();
        let mut generation = ctx.generate(sampler, Prompt::Tokens(&tokens), params)?;
        for piece in &mut generation {
            let piece = piece?;
            write!(out, "{}", piece.text)?;
            out.flush()?;
            reply.push_str(&piece.text);
        }
        writeln!(out)?;
        let s = generation.stats().cloned();
        drop(generation);
        if let Some(s) = s {
            eprintln!(
                "[turn: {} new prompt tokens, {cached_tokens} reused from the cache | {} generated, {:.1} t/s | stop: {:?}]",
                tokens.len(),
                s.generated_tokens,
                s.generation_tps,
                s.stop_reason
            );
        }
        history.push(ChatMessage::assistant(reply));
        cached = template.render(&history, &ChatOptions::default().add_generation_prompt(false))?;
    }
}
