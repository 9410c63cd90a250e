//! An OpenAI-compatible HTTP server on the llama-rs [`Engine`]: many requests
//! decoded together on one model (continuous batching), as llama-server does.
//!
//! ```text
//! cargo run --release --example server -- -m model.gguf [--host 127.0.0.1] [--port 8080]
//!     [-c N] [-np N] [-ngl N] [-sm none|layer|row|tensor] [-ts 3,1] [-mg I] [-a NAME] [-t N] [-b N]
//!     [--tool-format hermes|llama3|mistral] [--embeddings] [--pooling mean|cls|last] [--reranking]
//! ```
//!
//! Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (with
//! `"stream": true`, server-sent events ending with `data: [DONE]`),
//! `GET /v1/models`, `GET /health` (slots in use, requests queued); with
//! `--embeddings`, `POST /v1/embeddings` (OpenAI's), with `--reranking`,
//! `POST /v1/rerank` (llama-server's, Jina/Cohere-compatible), each on an
//! [`Embedder`](llama_rs::Embedder) with a context of its own.
//!
//! Beyond llama-server: every choice (and every stream chunk) carries the
//! generated token ids (`token_ids`), a request can stop on token ids
//! (`stop_token_ids`) besides strings, and a completion's prompt may be token
//! ids. Log-probabilities come in OpenAI's shapes (`logprobs` +
//! `top_logprobs` for chat, `logprobs: n` for completions).
//!
//! Structured output (`response_format` json_object / json_schema, or
//! llama-server's `json_schema`) and tool calls (`tools`, `tool_choice`) in
//! OpenAI's shapes; the tool-call format is the chat template's, or
//! `--tool-format` for a template that shows none.

mod api;
#[path = "../common/mod.rs"]
mod common;
mod openai;

use common::args::{self as cli, num, Arg};
use llama_rs::{
    ChatTemplate, ContextParams, EmbedParams, Embedder, Engine, EngineParams, Model, ModelParams, Pooling, SplitMode,
    ToolCallFormat,
};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: server -m PATH [options]

An OpenAI-compatible HTTP server: requests decoded together on one model (continuous batching).

  -m,  --model PATH          GGUF model to serve (required)
  -a,  --alias NAME          model name for clients (default: the file name)
       --host HOST           address to listen on (default 127.0.0.1)
       --port PORT           port (default 8080; 0 picks a free one)
  -c,  --ctx-size N          context length shared by the slots (default: 4096 or the training length)
  -np, --parallel N          slots: requests decoded at once (default 4)
  -b,  --batch-size N        most tokens per decode step (default 2048, n_batch)
  -t,  --threads N           CPU threads (default: the physical cores)
  -ngl, --n-gpu-layers N     layers on the GPUs (also --gpu-layers; default: all; -1 or all as well)
  -sm, --split-mode MODE     none|layer|row|tensor (default layer)
  -ts, --tensor-split 3,1    share of the model per GPU (also 3/1)
  -mg, --main-gpu I          GPU for split mode none (default 0)
       --tool-format FORMAT  hermes|llama3|mistral: how the model writes tool calls
                             (default: from its chat template; needed for tools when it shows none)
       --embeddings          serve POST /v1/embeddings (also --embedding), on a context of its own
       --pooling TYPE        none|mean|cls|last|rank: the embeddings' pooling (default: the model's;
                             mean for a model that names none, as generative models do)
       --reranking           serve POST /v1/rerank (also --rerank): needs a reranking model
                             (a classifier head, rank pooling)
  -h,  --help                this text

Logs go to stderr (RUST_LOG, default `warn,server=info`). Loading shows a progress bar
when stderr is a terminal. Once bound, prints `listening on http://HOST:PORT` to stdout.";

struct Args {
    model: PathBuf,
    alias: Option<String>,
    host: String,
    port: u16,
    ctx_size: Option<u32>,
    parallel: u32,
    batch: Option<u32>,
    threads: Option<u32>,
    ngl: Option<u32>,
    split_mode: SplitMode,
    tensor_split: Vec<f32>,
    main_gpu: usize,
    tool_format: Option<ToolCallFormat>,
    embeddings: bool,
    reranking: bool,
    pooling: Option<Pooling>,
}

/// `--tool-format`'s value.
fn parse_tool_format(s: &str) -> Result<ToolCallFormat, String> {
    match s.to_ascii_lowercase().as_str() {
        "hermes" => Ok(ToolCallFormat::Hermes),
        "llama3" | "llama-3" => Ok(ToolCallFormat::Llama3),
        "mistral" => Ok(ToolCallFormat::Mistral),
        _ => Err("expected hermes, llama3 or mistral".into()),
    }
}

/// The command line; `-h` and usage errors come back as [`cli::ArgError`].
fn parse_args(p: &mut cli::Args) -> cli::ArgResult<Args> {
    let mut model = None;
    let mut a = Args {
        model: PathBuf::new(),
        alias: None,
        host: "127.0.0.1".into(),
        port: 8080,
        ctx_size: None,
        parallel: 4,
        batch: None,
        threads: None,
        ngl: None,
        split_mode: SplitMode::Layer,
        tensor_split: Vec::new(),
        main_gpu: 0,
        tool_format: None,
        embeddings: false,
        reranking: false,
        pooling: None,
    };
    while let Some(arg) = p.next()? {
        let Arg::Flag(flag) = &arg else { return Err(p.unexpected(arg)) };
        match flag.as_str() {
            "--embeddings" | "--embedding" => a.embeddings = true,
            "--reranking" | "--rerank" => a.reranking = true,
            "-m" | "--model" => model = Some(PathBuf::from(p.value()?)),
            "-a" | "--alias" => a.alias = Some(p.value()?),
            "--host" => a.host = p.value()?,
            "--port" => a.port = p.parse_with(num)?,
            // llama-server's 0: the model's training length.
            "-c" | "--ctx-size" => a.ctx_size = Some(p.parse_with(num)?),
            "-np" | "--parallel" => {
                a.parallel = p.parse_with(|v| cli::positive(v).map_err(|_| "needs at least one slot".into()))?
            }
            "-b" | "--batch-size" => a.batch = Some(p.parse_with(num)?),
            "-t" | "--threads" => a.threads = Some(p.parse_with(num)?),
            "-ngl" | "--n-gpu-layers" | "--gpu-layers" => a.ngl = p.parse_with(cli::gpu_layers)?,
            "-sm" | "--split-mode" => a.split_mode = p.parse()?,
            "-ts" | "--tensor-split" => a.tensor_split = p.parse_with(cli::tensor_split)?,
            "-mg" | "--main-gpu" => a.main_gpu = p.parse_with(num)?,
            "--tool-format" => a.tool_format = Some(p.parse_with(parse_tool_format)?),
            "--pooling" => {
                a.pooling = Some(p.parse_with(|v| {
                    v.parse::<Pooling>().map_err(|_| "expected none, mean, cls, last or rank".to_string())
                })?)
            }
            _ => return Err(p.unexpected(arg)),
        }
    }
    a.model = model.ok_or_else(|| cli::usage("-m/--model is required"))?;
    Ok(a)
}

/// The pooling `/v1/embeddings` uses and where it comes from (for the log):
/// `--pooling`, else the model's, else mean (generative models name none).
fn embed_pooling(asked: Option<Pooling>, model: Option<Pooling>) -> Result<(Pooling, &'static str), String> {
    const CHOOSE: &str = "give --pooling mean, cls or last for /v1/embeddings";
    match (asked, model) {
        (Some(Pooling::None), _) => {
            Err(format!("--pooling none gives one row per token, not one vector per input: {CHOOSE}"))
        }
        (Some(Pooling::Rank), _) => Err(format!(
            "--pooling rank scores query-document pairs, it does not embed texts: serve those with --reranking, and \
             {CHOOSE}"
        )),
        (Some(p), _) => Ok((p, "--pooling")),
        (None, Some(Pooling::Rank)) => Err(format!(
            "--embeddings: the model pools with its classifier head (rank pooling), it is a reranker: serve it with \
             --reranking, or {CHOOSE}"
        )),
        (None, Some(Pooling::None) | None) => Ok((Pooling::Mean, "the model names none")),
        (None, Some(p)) => Ok((p, "the model's")),
    }
}

/// Whether `/v1/rerank` can be served: rank pooling needs a classifier head,
/// and `--pooling` (without `--embeddings`) must not ask for another pooling.
fn check_reranking(asked: Option<Pooling>, embeddings: bool, has_classifier: bool, model: &str) -> Result<(), String> {
    if let Some(p) = asked.filter(|&p| p != Pooling::Rank && !embeddings) {
        return Err(format!(
            "--reranking uses rank pooling, not --pooling {p} (--pooling sets the pooling of --embeddings)"
        ));
    }
    if !has_classifier {
        return Err(format!(
            "--reranking needs a reranking model: {model} has no classifier head (cls.weight or cls.output.weight), \
             which rank pooling scores query-document pairs with; serve a reranker, or drop --reranking"
        ));
    }
    Ok(())
}

/// An embedder's parameters: `-b` tokens per decode (default 2048, also the
/// longest input; at most the model's training length `n_ctx_train`), at
/// most 16 inputs per decode, `-t` threads.
fn embed_params(args: &Args, pooling: Pooling, n_ctx_train: u32) -> EmbedParams {
    let mut tokens = args.batch.unwrap_or(2048).max(1);
    if n_ctx_train > 0 {
        tokens = tokens.min(n_ctx_train);
    }
    let mut p = EmbedParams::default().pooling(pooling).batch_tokens(tokens).max_sequences(tokens.min(16));
    if let Some(n) = args.threads {
        p = p.threads(n);
    }
    p
}

/// An embedder next to the engine, logged.
fn new_embedder(
    args: &Args,
    model: &Arc<Model>,
    pooling: Pooling,
    what: &str,
    source: &str,
) -> Result<Embedder<'static>, String> {
    let params = embed_params(args, pooling, model.n_ctx_train());
    let e = Embedder::new_owned(model, params).map_err(|e| format!("{what}: {e}"))?;
    let ctx = e.context();
    let output = if pooling == Pooling::Rank {
        format!("one relevance score per pair (the first of the classifier's {} outputs)", e.dim())
    } else {
        format!("{}-float L2-normalized vectors", e.dim())
    };
    tracing::info!(
        "{what}: {pooling} pooling ({source}), {output}, inputs of up to {} tokens; an embedder context of its own \
         ({} tokens, {} inputs per decode) next to the engine's",
        e.max_tokens(),
        ctx.n_ctx(),
        ctx.n_seq_max()
    );
    Ok(e)
}

fn main() -> ExitCode {
    common::main("warn,server=info", USAGE, parse_args, run)
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let params = ModelParams::default()
        .n_gpu_layers(args.ngl)
        .split_mode(args.split_mode)
        .tensor_split(&args.tensor_split)
        .main_gpu(args.main_gpu);
    let model = Arc::new(common::progress::load_model(&args.model, params)?);
    // Embeddings and reranking: refused before the engine starts.
    let embed_with = if args.embeddings { Some(embed_pooling(args.pooling, model.pooling())?) } else { None };
    if args.reranking {
        check_reranking(args.pooling, args.embeddings, model.has_classifier(), &model.description())?;
    }
    if args.pooling.is_some() && !args.embeddings && !args.reranking {
        tracing::warn!("--pooling is used with --embeddings or --reranking only: ignored");
    }
    let mut ctx = ContextParams::default();
    if let Some(n) = args.ctx_size {
        ctx = ctx.n_ctx(if n == 0 { model.n_ctx_train() } else { n });
    }
    if let Some(n) = args.batch {
        ctx = ctx.n_batch(n);
    }
    if let Some(n) = args.threads {
        ctx = ctx.threads(n);
    }
    let engine = Engine::new(model.clone(), EngineParams::default().n_slots(args.parallel).context(ctx))?;
    let file_name = args.model.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let model_id = args.alias.clone().unwrap_or_else(|| file_name.clone());
    // Names a request's `model` may use: the alias, the file name (with or
    // without .gguf) and the path as given.
    let mut names = vec![model_id.clone(), file_name.clone(), args.model.to_string_lossy().into_owned()];
    if let Some(stem) = args.model.file_stem() {
        names.push(stem.to_string_lossy().into_owned());
    }
    names.retain(|n| !n.is_empty());
    tracing::info!(
        "model {} ({}), {} slots of {} tokens (n_ctx {})",
        model_id,
        engine.model().description(),
        engine.n_slots(),
        engine.n_ctx_per_request(),
        engine.n_ctx()
    );
    // Tool calls: the template's format unless --tool-format says otherwise.
    let template = engine.model().chat_template(None);
    let detected = ChatTemplate::from_model(engine.model(), None).ok().as_ref().and_then(ToolCallFormat::detect);
    let tool_format = args.tool_format.or(detected);
    match (args.tool_format, detected) {
        (Some(f), _) => tracing::info!("tool calls: {f:?} (--tool-format; the template shows {detected:?})"),
        (None, Some(f)) => tracing::info!("tool calls: {f:?} (from the chat template)"),
        (None, None) => {
            tracing::info!("tool calls: the chat template shows no format; requests with tools need --tool-format")
        }
    }
    let tools = openai::ToolSupport::new(template.as_deref(), tool_format);
    let embed = match embed_with {
        Some((pooling, source)) => Some(new_embedder(&args, &model, pooling, "embeddings", source)?),
        None => None,
    };
    let rerank = if args.reranking {
        Some(new_embedder(&args, &model, Pooling::Rank, "reranking", "the model's classifier head")?)
    } else {
        None
    };
    let app = Arc::new(api::App::new(engine, model_id, names, tools).with_embedders(embed, rerank));

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        axum::serve(listener, api::router(app)).with_graceful_shutdown(shutdown_signal()).await?;
        tracing::info!("shut down");
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}

/// Ctrl-C or SIGTERM: stop accepting, let running requests end (for at most
/// [`SHUTDOWN_GRACE`], then exit).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: waiting for running requests (at most {} s)", SHUTDOWN_GRACE.as_secs());
    // Streams of long generations could keep the server up for minutes.
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_GRACE);
        tracing::warn!("requests still running after {} s: exiting", SHUTDOWN_GRACE.as_secs());
        std::process::exit(0);
    });
}

/// How long a shutdown waits for running requests.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> cli::ArgResult<Args> {
        parse_args(&mut cli::Args::from_args(args.iter().copied()))
    }

    #[test]
    fn flags() {
        let a = parse(&["-m", "x.gguf", "-np", "8", "-c", "2048", "--port=0", "-ts", "3,1", "-sm", "row"]).unwrap();
        assert_eq!(a.model, PathBuf::from("x.gguf"));
        assert_eq!((a.parallel, a.ctx_size, a.port), (8, Some(2048), 0));
        assert_eq!(a.tensor_split, vec![3.0, 1.0]);
        assert_eq!(a.split_mode, SplitMode::Row);
        assert!(matches!(parse(&["-m", "x", "--bogus"]), Err(cli::ArgError::Usage(_))));
        assert!(matches!(parse(&["-m"]), Err(cli::ArgError::Usage(_))));
        assert!(matches!(parse(&[]), Err(cli::ArgError::Usage(_))));
        assert!(matches!(parse(&["-h"]), Err(cli::ArgError::Help)));
        assert_eq!(parse(&["-m", "x"]).unwrap().tool_format, None);
        assert_eq!(parse(&["-m", "x", "--tool-format", "hermes"]).unwrap().tool_format, Some(ToolCallFormat::Hermes));
        assert_eq!(parse(&["-m", "x", "--tool-format=Mistral"]).unwrap().tool_format, Some(ToolCallFormat::Mistral));
        assert!(matches!(parse(&["-m", "x", "--tool-format", "xml"]), Err(cli::ArgError::Usage(_))));
        // Embeddings and reranking: switches (llama-server's names and aliases) and the pooling.
        let a = parse(&["-m", "x"]).unwrap();
        assert_eq!((a.embeddings, a.reranking, a.pooling), (false, false, None));
        let a = parse(&["--embeddings", "-m", "x", "--pooling", "cls", "--reranking"]).unwrap();
        assert_eq!((a.embeddings, a.reranking, a.pooling), (true, true, Some(Pooling::Cls)));
        let a = parse(&["-m", "x", "--embedding", "--rerank", "--pooling=rank"]).unwrap();
        assert_eq!((a.embeddings, a.reranking, a.pooling), (true, true, Some(Pooling::Rank)));
        assert!(matches!(parse(&["-m", "x", "--pooling", "max"]), Err(cli::ArgError::Usage(_))));
        assert!(matches!(parse(&["-m", "x", "--pooling"]), Err(cli::ArgError::Usage(_))));
        assert!(matches!(parse(&["-m", "x", "--embeddings=yes"]), Err(cli::ArgError::Usage(_))));
    }

    #[test]
    fn embeddings_pooling() {
        // A generative model names none: mean, and the log says why.
        assert_eq!(embed_pooling(None, None), Ok((Pooling::Mean, "the model names none")));
        assert_eq!(embed_pooling(None, Some(Pooling::Cls)), Ok((Pooling::Cls, "the model's")));
        assert_eq!(embed_pooling(Some(Pooling::Last), Some(Pooling::Cls)), Ok((Pooling::Last, "--pooling")));
        assert!(embed_pooling(Some(Pooling::None), None).unwrap_err().contains("mean, cls or last"));
        assert!(embed_pooling(Some(Pooling::Rank), None).unwrap_err().contains("--reranking"));
        // A reranker's own pooling: serve it with --reranking, or choose one.
        assert!(embed_pooling(None, Some(Pooling::Rank)).unwrap_err().contains("--reranking"));
        assert_eq!(embed_pooling(Some(Pooling::Mean), Some(Pooling::Rank)), Ok((Pooling::Mean, "--pooling")));
    }

    #[test]
    fn reranking_needs_a_classifier() {
        // The test model (SmolLM2, generative) has no classifier head.
        let e = check_reranking(None, false, false, "llama 135M Q4_1").unwrap_err();
        assert!(e.contains("--reranking needs a reranking model") && e.contains("no classifier head"), "{e}");
        assert_eq!(check_reranking(None, false, true, "m"), Ok(()));
        assert_eq!(check_reranking(Some(Pooling::Rank), false, true, "m"), Ok(()));
        assert!(check_reranking(Some(Pooling::Mean), false, true, "m").unwrap_err().contains("rank pooling"));
        // With --embeddings, --pooling is the embeddings'.
        assert_eq!(check_reranking(Some(Pooling::Mean), true, true, "m"), Ok(()));
    }
}
