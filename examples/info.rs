//! Prints the devices llama.cpp sees, then a model's metadata.
//!
//! `cargo run --release --example info -- [PATH]`
//!
//! Without PATH only the devices are listed. Any failure prints `error: ...`
//! to stderr and exits with status 1; a bad command line exits with 2.

#[path = "common/mod.rs"]
mod common;

use common::args::{self, Arg, ArgResult, Args};
use llama_rs::ModelParams;
use std::process::ExitCode;

const HELP: &str = "\
usage: info [[-m] PATH]

Lists the devices llama.cpp sees, then the metadata of the GGUF model at PATH (if given).

  -m, --model PATH   the model (or PATH alone)
  -h, --help         this text

Logs go to stderr: llama.cpp's warnings and errors unless RUST_LOG says otherwise.";

fn parse_args(a: &mut Args) -> ArgResult<Option<String>> {
    let mut path = None;
    while let Some(arg) = a.next()? {
        let value = match &arg {
            Arg::Flag(f) if f == "-m" || f == "--model" => a.value()?,
            Arg::Value(v) => v.clone(),
            Arg::Flag(_) => return Err(a.unexpected(arg)),
        };
        if path.is_some() {
            return Err(args::usage("expected at most one model path"));
        }
        path = Some(value);
    }
    Ok(path)
}

fn main() -> ExitCode {
    common::main(common::log::DEFAULT_FILTER, HELP, parse_args, run)
}

fn run(path: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    let backends = if llama_rs::sys::DYNAMIC_BACKENDS {
        let modules = llama_rs::backend_modules();
        for m in modules.iter().filter(|m| m.error.is_some()) {
            eprintln!("backend module {} refused: {}", m.path.display(), m.error.as_deref().unwrap_or(""));
        }
        let names: Vec<String> = modules.iter().filter_map(|m| m.name.clone()).collect();
        format!("modules loaded: {}", names.join(", "))
    } else {
        format!("backends compiled in: {}", llama_rs::sys::BUILT_BACKENDS.join(", "))
    };
    println!("llama.cpp {} ({backends})", llama_rs::sys::LLAMA_CPP_COMMIT);
    let devices = llama_rs::devices();
    println!("devices:");
    for d in &devices {
        println!(
            "  [{}] {:<8} {:<11} {:<40} {:>8} MiB free / {:>8} MiB",
            d.index,
            d.name,
            d.kind.to_string(),
            d.description,
            d.memory_free >> 20,
            d.memory_total >> 20
        );
    }
    let gpus = llama_rs::default_gpus(false);
    if gpus.is_empty() {
        let gpu_built = llama_rs::sys::DYNAMIC_BACKENDS || backends.contains("cuda") || backends.contains("hip");
        if gpu_built {
            println!("no GPU device found: models run on the CPU");
        } else {
            println!("no GPU backend compiled in: models run on the CPU");
        }
    }
    let Some(path) = path else { return Ok(()) };
    let model = common::progress::load_model(&path, ModelParams::default())?;
    let vocab = model.vocab();
    println!("model: {path}");
    println!("  architecture: {}", model.architecture());
    println!("  description:  {}", model.description());
    println!("  parameters:   {}", model.n_params());
    println!("  size:         {} bytes", model.size());
    println!("  n_ctx_train:  {}", model.n_ctx_train());
    println!("  n_embd:       {}", model.n_embd());
    println!("  n_layer:      {}", model.n_layer());
    println!("  n_head:       {} (kv {})", model.n_head(), model.n_head_kv());
    println!("  vocab:        {:?}, {} tokens", vocab.vocab_type(), vocab.n_tokens());
    let on = if model.devices().is_empty() {
        "CPU".to_string()
    } else {
        model.devices().iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
    };
    println!("  devices:      {on} (split mode {})", model.split_mode());
    println!("  chat template: {}", if model.chat_template(None).is_some() { "yes" } else { "no" });
    println!("metadata:");
    for (k, v) in model.metadata() {
        let v: String = if v.chars().count() > 100 { v.chars().take(100).chain("...".chars()).collect() } else { v };
        println!("  {k} = {v}");
    }
    Ok(())
}
