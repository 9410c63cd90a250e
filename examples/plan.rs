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

use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind};
use llama_rs::{ContextParams, FitParams, ModelParams, SplitMode};
use std::process::ExitCode;

const USAGE: &str = "usage: plan [--model PATH] [-c N_CTX] [-ngl N] [--split-mode none|layer|row|tensor] \
[--tensor-split 3,1] [--main-gpu I] [--devices 1,2] [-ctk TYPE] [-ctv TYPE] [--fit] [--margin MIB]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 20) as f64)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut model, mut n_ctx, mut ngl, mut sm, mut ts, mut mg) = (None, 4096u32, None, SplitMode::Layer, vec![], 0);
    let (mut devices, mut ctk, mut ctv, mut do_fit, mut margin) = (None, None, None, false, 1024u64);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--fit" => {
                do_fit = true;
                continue;
            }
            _ => {}
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--model" | "-m" => model = Some(v),
            "-c" | "--ctx-size" => n_ctx = v.parse()?,
            "-ngl" | "--n-gpu-layers" => ngl = Some(v.parse()?),
            "--split-mode" | "-sm" => sm = v.parse()?,
            "--tensor-split" | "-ts" => ts = v.split([',', '/']).map(|x| x.trim().parse()).collect::<Result<_, _>>()?,
            "--main-gpu" | "-mg" => mg = v.parse()?,
            "--devices" => devices = Some(v.split(',').map(|x| x.trim().parse()).collect::<Result<Vec<usize>, _>>()?),
            "-ctk" => ctk = Some(v.parse()?),
            "-ctv" => ctv = Some(v.parse()?),
            "--margin" => margin = v.parse()?,
            _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
        }
    }
    let path = match model {
        Some(p) => p.into(),
        None => {
            let p = SyntheticModel::new(ModelShape::small())
                .vocab(VocabKind::Spm)
                .write_cached(llama_rs_suite::FIXTURE_DIR)?;
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
