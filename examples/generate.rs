//! Streams text from a GGUF model, with llama-cli's flags.
//!
//! ```text
//! cargo run --release --example generate -- [-m PATH] [-p TEXT] [-n N] [-s SEED] [-c N] [-b N] [-ub N]
//!     [-t N] [-fa on|off|auto] [-ngl N] [-sm none|layer|row|tensor] [-ts 3,1] [-mg I] [-ctk TYPE] [-ctv TYPE]
//!     [--temp T] [--top-k N] [--top-p P] [--min-p P] [--repeat-penalty F] [--repeat-last-n N] [--ignore-eos]
//!     [--grammar-file FILE | --json-schema SCHEMA] [--rpc HOST:PORT,...] [-cnv [-sys TEXT]]
//! ```
//!
//! `-h` lists every flag. `-cnv` chats, as llama-cli does: each line read
//! from standard input is a user turn, formatted with the model's own chat
//! template (after the `-sys` system message); the answer streams back. The
//! KV cache is kept between turns: only the new text of each turn is decoded.
//! An empty line or end of input ends the chat.
//!
//! Without `--model` it writes (once) a small synthetic model with random
//! weights and uses it: the text is gibberish, the timings are real.

#[path = "common/mod.rs"]
mod common;

use common::args::{self, num, Arg, ArgResult, Args};
use common::progress;
use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind};
use llama_rs::{
    AddSpecial, ChatMessage, ChatOptions, ChatTemplate, Context, ContextParams, CtxSize, FlashAttention,
    GenerateParams, KvType, Model, ModelParams, Prompt, Sampler, SplitMode, Token, MAX_PENALTY_LAST_N, RANDOM_SEED,
};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "\
usage: generate [-m PATH] [-p TEXT | -f FILE] [-n N] [options]
       generate [-m PATH] -cnv [-sys TEXT] [options]

Streams the continuation of a prompt from a GGUF model, as llama-cli does, or chats with it (-cnv).
Without -m, a small synthetic model with random weights is written once and used.

model and devices:
  -m,   --model PATH             GGUF model (default: a small synthetic model)
  -ngl, --n-gpu-layers N         layers on the GPUs (also --gpu-layers; default, -1 or all: all)
  -sm,  --split-mode MODE        none|layer|row|tensor: how the GPUs share the model (default layer)
  -ts,  --tensor-split 3,1       share of the model per GPU (also 3/1)
  -mg,  --main-gpu I             the GPU of -sm none (default 0)
        --rpc HOST:PORT,...      RPC servers whose devices hold layers too (feature rpc)

context:
  -c,   --ctx-size N             context length in tokens (default 2048; 0: the model's training length)
  -b,   --batch-size N           most prompt tokens per decode call (default 2048)
  -ub,  --ubatch-size N          physical batch (default 512)
  -t,   --threads N              CPU threads (default: the physical cores)
  -tb,  --threads-batch N        CPU threads for the prompt (default: -t)
  -fa,  --flash-attn MODE        on|off|auto, also 1|0|-1 (default auto)
  -ctk, --cache-type-k TYPE      K cache type: f32|f16|bf16|q8_0|q4_0|q4_1|iq4_nl|q5_0|q5_1 (default f16)
  -ctv, --cache-type-v TYPE      V cache type (default f16)

generation:
  -p,   --prompt TEXT            the prompt (default \"Once upon a time\")
  -f,   --file FILE              read the prompt from FILE
  -n,   --n-predict N            tokens to generate (also --predict; default 64; -1: until the model ends
                                 or the context is full)
        --ignore-eos             never stop on an end-of-generation token (its logit is -inf)
  -cnv, --conversation           chat: each line of standard input is a user turn, in the model's chat
                                 template; an empty line or end of input ends the chat
  -sys, --system-prompt TEXT     the chat's system message

sampling (in this order: penalties, top-k, top-p, min-p, temperature):
  -s,   --seed N                 sampling seed (default 42; -1: random)
        --temp T                 temperature (default 0.8; 0 or less: greedy)
        --top-k N                keep the N most likely tokens (default 40; 0: all)
        --top-p P                nucleus: keep tokens up to probability mass P (default 0.95; 1: off)
        --min-p P                keep tokens at least P times the most likely one (default 0.05; 0: off)
        --repeat-penalty F       divide the logits of recent tokens by F (default 1.0: off)
        --repeat-last-n N        recent tokens the penalties look at (default 64; 0: off; -1: the context)
        --presence-penalty F     subtract F once from each recent token's logit (default 0: off)
        --frequency-penalty F    subtract F per occurrence (default 0: off)

structured output (one of):
        --grammar GBNF           constrain the output to a GBNF grammar (start symbol root)
        --grammar-file FILE      the same, read from FILE
  -j,   --json-schema SCHEMA     JSON that validates against this JSON schema (llguidance)
  -jf,  --json-schema-file FILE  the same, the schema read from FILE

  -h,   --help                   this text

Logs go to stderr: llama.cpp's warnings and errors unless RUST_LOG says otherwise
(e.g. RUST_LOG=llama_cpp=info). Loading shows a progress bar when stderr is a terminal.";

/// What the output is constrained to.
enum Constraint {
    Grammar(String),
    JsonSchema(serde_json::Value),
}

struct Params {
    model: Option<PathBuf>,
    prompt: String,
    /// `None`: until the model ends or the context is full (`-n -1`).
    n_predict: Option<usize>,
    ignore_eos: bool,
    conversation: bool,
    system: Option<String>,
    // model and devices
    ngl: Option<u32>,
    split_mode: SplitMode,
    tensor_split: Vec<f32>,
    main_gpu: usize,
    rpc: Vec<String>,
    // context
    ctx_size: u32,
    batch: u32,
    ubatch: u32,
    threads: Option<u32>,
    threads_batch: Option<u32>,
    flash_attn: FlashAttention,
    type_k: KvType,
    type_v: KvType,
    // sampling
    seed: u32,
    temp: f32,
    top_k: i32,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    /// `None`: the context size (`--repeat-last-n -1`).
    repeat_last_n: Option<i32>,
    presence_penalty: f32,
    frequency_penalty: f32,
    constraint: Option<(String, Constraint)>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            model: None,
            prompt: "Once upon a time".into(),
            n_predict: Some(64),
            ignore_eos: false,
            conversation: false,
            system: None,
            ngl: None,
            split_mode: SplitMode::Layer,
            tensor_split: Vec::new(),
            main_gpu: 0,
            rpc: Vec::new(),
            ctx_size: 2048,
            batch: 2048,
            ubatch: 512,
            threads: None,
            threads_batch: None,
            flash_attn: FlashAttention::Auto,
            type_k: KvType::F16,
            type_v: KvType::F16,
            seed: 42,
            temp: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: Some(64),
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            constraint: None,
        }
    }
}

fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))
}

fn json_schema(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// A float that must be finite (a penalty, a temperature).
fn finite(s: &str) -> Result<f32, String> {
    match num::<f32>(s)? {
        v if v.is_finite() => Ok(v),
        _ => Err("must be a finite number".into()),
    }
}

fn parse_args(a: &mut Args) -> ArgResult<Params> {
    let mut p = Params::default();
    while let Some(arg) = a.next()? {
        let Arg::Flag(flag) = &arg else { return Err(a.unexpected(arg)) };
        match flag.as_str() {
            "-m" | "--model" => p.model = Some(a.value()?.into()),
            "-p" | "--prompt" => p.prompt = a.value()?,
            "-f" | "--file" => p.prompt = a.parse_with(read_file)?,
            "-n" | "--n-predict" | "--predict" => {
                p.n_predict = a.parse_with(|s| match num::<i64>(s)? {
                    -1 => Ok(None),
                    n if n >= 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
                    _ => Err("must be -1 (no limit) or at least 0".into()),
                })?
            }
            "--ignore-eos" => p.ignore_eos = true,
            "-cnv" | "--conversation" => p.conversation = true,
            "-sys" | "--system-prompt" => p.system = Some(a.value()?),
            "-ngl" | "--n-gpu-layers" | "--gpu-layers" => p.ngl = a.parse_with(args::gpu_layers)?,
            "-sm" | "--split-mode" => p.split_mode = a.parse()?,
            "-ts" | "--tensor-split" => p.tensor_split = a.parse_with(args::tensor_split)?,
            "-mg" | "--main-gpu" => p.main_gpu = a.parse_with(num)?,
            "--rpc" => p.rpc = a.parse_with(args::list)?,
            "-c" | "--ctx-size" => p.ctx_size = a.parse_with(num)?,
            "-b" | "--batch-size" => p.batch = a.parse_with(args::positive)?,
            "-ub" | "--ubatch-size" => p.ubatch = a.parse_with(args::positive)?,
            "-t" | "--threads" => p.threads = Some(a.parse_with(args::positive)?),
            "-tb" | "--threads-batch" => p.threads_batch = Some(a.parse_with(args::positive)?),
            "-fa" | "--flash-attn" => p.flash_attn = a.parse()?,
            "-ctk" | "--cache-type-k" => p.type_k = a.parse()?,
            "-ctv" | "--cache-type-v" => p.type_v = a.parse()?,
            "-s" | "--seed" => {
                p.seed = a.parse_with(|s| match num::<i64>(s)? {
                    -1 => Ok(RANDOM_SEED),
                    n => u32::try_from(n).map_err(|_| format!("must be -1 (random) or 0..={}", u32::MAX)),
                })?
            }
            "--temp" => p.temp = a.parse_with(finite)?,
            "--top-k" => p.top_k = a.parse_with(num)?,
            "--top-p" => p.top_p = a.parse_with(|s| args::float_in(s, 0.0, 1.0))?,
            "--min-p" => p.min_p = a.parse_with(|s| args::float_in(s, 0.0, 1.0))?,
            "--repeat-penalty" => {
                p.repeat_penalty = a.parse_with(|s| match finite(s)? {
                    v if v > 0.0 => Ok(v),
                    _ => Err("must be greater than 0 (1: off)".into()),
                })?
            }
            "--repeat-last-n" => {
                p.repeat_last_n = a.parse_with(|s| match num::<i32>(s)? {
                    -1 => Ok(None),
                    n if (0..=MAX_PENALTY_LAST_N).contains(&n) => Ok(Some(n)),
                    _ => Err(format!("must be -1 (the context), 0 (off) or up to {MAX_PENALTY_LAST_N}")),
                })?
            }
            "--presence-penalty" => p.presence_penalty = a.parse_with(finite)?,
            "--frequency-penalty" => p.frequency_penalty = a.parse_with(finite)?,
            "--grammar" | "--grammar-file" | "-j" | "--json-schema" | "-jf" | "--json-schema-file" => {
                if let Some((first, _)) = &p.constraint {
                    return Err(args::usage(format!(
                        "{first} and {flag}: give one of --grammar, --grammar-file, --json-schema, --json-schema-file"
                    )));
                }
                let c = match flag.as_str() {
                    "--grammar" => Constraint::Grammar(a.value()?),
                    "--grammar-file" => Constraint::Grammar(a.parse_with(read_file)?),
                    "-j" | "--json-schema" => Constraint::JsonSchema(a.parse_with(json_schema)?),
                    _ => Constraint::JsonSchema(a.parse_with(|path| json_schema(&read_file(path)?))?),
                };
                p.constraint = Some((flag.clone(), c));
            }
            _ => return Err(a.unexpected(arg)),
        }
    }
    Ok(p)
}

fn main() -> ExitCode {
    common::main(common::log::DEFAULT_FILTER, HELP, parse_args, |p| run(&p))
}

/// The sampler chain of `p`, as llama-cli builds it: the grammar or schema,
/// the logit bias of `--ignore-eos`, the penalties, then top-k, top-p, min-p,
/// temperature and a seeded draw (greedy for a temperature of 0 or less).
fn sampler<'m>(model: &'m Model, p: &Params, n_ctx: u32) -> llama_rs::Result<Sampler<'m>> {
    let mut b = Sampler::builder(model);
    match &p.constraint {
        Some((_, Constraint::Grammar(gbnf))) => b = b.grammar(gbnf, "root"),
        Some((_, Constraint::JsonSchema(schema))) => b = b.json_schema(schema.clone()),
        None => {}
    }
    if p.ignore_eos {
        let vocab = model.vocab();
        let eog: Vec<(Token, f32)> =
            (0..vocab.n_tokens()).map(Token).filter(|&t| vocab.is_eog(t)).map(|t| (t, f32::NEG_INFINITY)).collect();
        b = b.logit_bias(&eog);
    }
    let last_n = p.repeat_last_n.unwrap_or(n_ctx.min(MAX_PENALTY_LAST_N as u32) as i32);
    if last_n != 0 && (p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0) {
        b = b.penalties(last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty);
    }
    if p.temp <= 0.0 {
        return b.greedy().build();
    }
    b.top_k(p.top_k).top_p(p.top_p, 1).min_p(p.min_p, 1).temp(p.temp).dist(p.seed).build()
}

fn run(p: &Params) -> Result<(), Box<dyn std::error::Error>> {
    let path = match &p.model {
        Some(path) => path.clone(),
        None => {
            let synthetic = SyntheticModel::new(ModelShape::small()).vocab(VocabKind::Spm).seed(1);
            let path = progress::write_synthetic_cached(&synthetic, llama_rs_suite::FIXTURE_DIR)?;
            eprintln!(
                "no --model given: using a synthetic model with random weights ({} parameters) at {}",
                ModelShape::small().n_params(),
                path.display()
            );
            path
        }
    };
    let params = ModelParams::default()
        .n_gpu_layers(p.ngl)
        .split_mode(p.split_mode)
        .tensor_split(&p.tensor_split)
        .main_gpu(p.main_gpu)
        .rpc_servers(&p.rpc);
    let model = progress::load_model(&path, params)?;
    let mut cp = ContextParams::default()
        .ctx_size(if p.ctx_size == 0 { CtxSize::Train } else { CtxSize::Tokens(p.ctx_size) })
        .n_batch(p.batch)
        .n_ubatch(p.ubatch.min(p.batch))
        .flash_attention(p.flash_attn)
        .type_k(p.type_k)
        .type_v(p.type_v);
    if let Some(n) = p.threads {
        cp = cp.threads(n);
    }
    if let Some(n) = p.threads_batch {
        cp = cp.n_threads_batch(n);
    }
    let mut ctx = model.new_context(cp)?;
    let mut sampler = sampler(&model, p, ctx.n_ctx())?;

    if p.conversation {
        return chat(&model, &mut ctx, &mut sampler, p);
    }
    let mut out = std::io::stdout().lock();
    write!(out, "{}", p.prompt)?;
    out.flush()?;
    let max_tokens = p.n_predict.unwrap_or(usize::MAX);
    let mut generation = ctx.generate(&mut sampler, &*p.prompt, GenerateParams::default().max_tokens(max_tokens))?;
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
    p: &Params,
) -> Result<(), Box<dyn std::error::Error>> {
    let template = ChatTemplate::from_model(model, None)?;
    let vocab = model.vocab();
    let mut history: Vec<ChatMessage> = p.system.iter().map(ChatMessage::system).collect();
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
        let params =
            GenerateParams::default().max_tokens(p.n_predict.unwrap_or(usize::MAX)).add_special(Some(AddSpecial::No));
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
