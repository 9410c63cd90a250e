//! Prints, before loading anything, the bytes each device will hold for a
//! model and context: weights, KV cache, compute buffers, and in tensor mode the
//! all-reduce's buffers (an estimate); with `--fit`, first
//! chooses n_gpu_layers and n_ctx so that every GPU keeps a margin free.
//!
//! ```text
//! cargo run --release --example plan -- [--model PATH] [-c N_CTX] [-ngl N]
//!     [--split-mode none|layer|row|tensor] [--tensor-split 3,1] [--main-gpu I] [--devices 1,2]
//!     [-ctk TYPE] [-ctv TYPE] [--fit] [--margin MIB]
//! ```

#[path = "common/mod.rs"]
mod common;

use common::args::{self, num, Arg, ArgResult, Args};
use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind};
use llama_rs::{ContextParams, FitParams, KvType, ModelParams, SplitMode};
use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "\
usage: plan [-m PATH] [-c N_CTX] [-ngl N] [-sm none|layer|row|tensor] [-ts 3,1] [-mg I] [--devices 1,2]
            [-ctk TYPE] [-ctv TYPE] [--fit] [--margin MIB]

Prints, before loading anything, the bytes each device will hold for the model and a context: weights,
KV cache, compute buffers (and the all-reduce buffers of -sm tensor). With --fit, first chooses
n_gpu_layers and n_ctx so that every GPU keeps --margin free.

  -m,   --model PATH          GGUF model (default: the small synthetic model, written once)
  -c,   --ctx-size N          context length (default 4096)
  -ngl, --n-gpu-layers N      layers on the GPUs (also --gpu-layers; default, -1 or all: all)
  -sm,  --split-mode MODE     none|layer|row|tensor (default layer)
  -ts,  --tensor-split 3,1    share of the model per GPU (also 3/1)
  -mg,  --main-gpu I          the GPU of -sm none (default 0)
        --devices 1,2         the devices to use, by index (see the info example; default: every GPU)
  -ctk, --cache-type-k TYPE   K cache type: f32|f16|bf16|q8_0|q4_0|q4_1|iq4_nl|q5_0|q5_1 (default f16)
  -ctv, --cache-type-v TYPE   V cache type (default f16)
        --fit                 choose n_gpu_layers and n_ctx to fit (-c is then the most it may choose)
        --margin MIB          memory each GPU keeps free with --fit (default 1024)
  -h,   --help                this text";

struct Params {
    model: Option<PathBuf>,
    n_ctx: u32,
    ngl: Option<u32>,
    sm: SplitMode,
    ts: Vec<f32>,
    mg: usize,
    devices: Option<Vec<usize>>,
    ctk: Option<KvType>,
    ctv: Option<KvType>,
    fit: bool,
    margin: u64,
}

fn parse_args(a: &mut Args) -> ArgResult<Params> {
    let mut p = Params {
        model: None,
        n_ctx: 4096,
        ngl: None,
        sm: SplitMode::Layer,
        ts: Vec::new(),
        mg: 0,
        devices: None,
        ctk: None,
        ctv: None,
        fit: false,
        margin: 1024,
    };
    while let Some(arg) = a.next()? {
        let Arg::Flag(flag) = &arg else { return Err(a.unexpected(arg)) };
        match flag.as_str() {
            "--fit" => p.fit = true,
            "-m" | "--model" => p.model = Some(a.value()?.into()),
            "-c" | "--ctx-size" => p.n_ctx = a.parse_with(num)?,
            "-ngl" | "--n-gpu-layers" | "--gpu-layers" => p.ngl = a.parse_with(args::gpu_layers)?,
            "-sm" | "--split-mode" => p.sm = a.parse()?,
            "-ts" | "--tensor-split" => p.ts = a.parse_with(args::tensor_split)?,
            "-mg" | "--main-gpu" => p.mg = a.parse_with(num)?,
            "--devices" | "-dev" | "--device" => p.devices = Some(a.parse_with(args::list)?),
            "-ctk" | "--cache-type-k" => p.ctk = Some(a.parse()?),
            "-ctv" | "--cache-type-v" => p.ctv = Some(a.parse()?),
            "--margin" => p.margin = a.parse_with(num)?,
            _ => return Err(a.unexpected(arg)),
        }
    }
    Ok(p)
}

fn main() -> ExitCode {
    common::main(common::log::DEFAULT_FILTER, HELP, parse_args, run)
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 20) as f64)
}

fn run(p: Params) -> Result<(), Box<dyn std::error::Error>> {
    let Params { model, n_ctx, ngl, sm, ts, mg, devices, ctk, ctv, fit: do_fit, margin } = p;
    let path = match model {
        Some(p) => p,
        None => {
            let synthetic = SyntheticModel::new(ModelShape::small()).vocab(VocabKind::Spm);
            let p = common::progress::write_synthetic_cached(&synthetic, llama_rs_suite::FIXTURE_DIR)?;
            eprintln!("no --model given: planning the small synthetic model {}", p.display());
            p
        }
    };
    let params = || {
        let p = ModelParams::default().n_gpu_layers(ngl).split_mode(sm).tensor_split(&ts).main_gpu(mg);
        match &devices {
            Some(d) => p.devices(d),
            None => p,
        }
    };
    let mut ctx = ContextParams::default().n_ctx(n_ctx);
    if let Some(t) = ctk {
        ctx = ctx.type_k(t);
    }
    if let Some(t) = ctv {
        ctx = ctx.type_v(t);
    }
    let (plan, chosen) = if do_fit {
        let f = llama_rs::fit(&path, params(), ctx, FitParams { margin: margin << 20, ..Default::default() })?;
        let ngl = f.n_gpu_layers.map_or("all".to_string(), |n| n.to_string());
        (f.plan, format!("fit: n_gpu_layers = {ngl}, n_ctx = {} (margin {margin} MiB per GPU)", f.n_ctx))
    } else {
        (llama_rs::plan_memory(&path, params(), ctx)?, format!("n_ctx = {n_ctx}"))
    };
    println!("{} | split mode {sm} | {chosen}", path.display());
    let now = llama_rs::devices();
    println!("| device | weights MiB | KV cache MiB | compute MiB | all-reduce MiB | total MiB | free now MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for d in &plan {
        let free = now.iter().find(|n| n.name == d.device).map_or("-".to_string(), |n| mib(n.memory_free));
        println!(
            "| {} | {} | {} | {} | {} | {} | {free} |",
            d.device,
            mib(d.model),
            mib(d.context),
            mib(d.compute),
            mib(d.all_reduce),
            mib(d.total())
        );
    }
    Ok(())
}
