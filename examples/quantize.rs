//! Quantizes a GGUF model to another weight type, as llama-quantize does.
//!
//! ```text
//! cargo run --release --example quantize -- [--allow-requantize] [--leave-output-tensor] [--pure]
//!     INPUT.gguf [OUTPUT.gguf] TYPE [THREADS]
//! ```
//!
//! llama.cpp reports no progress while it quantizes: on a terminal a spinner
//! shows the time elapsed; `RUST_LOG=llama_cpp=info` shows llama.cpp's line
//! per tensor.

#[path = "common/mod.rs"]
mod common;

use common::args::{self, Arg, ArgResult, Args};
use llama_rs::{Ftype, QuantizeParams};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const HELP: &str = "\
usage: quantize [--allow-requantize] [--leave-output-tensor] [--pure] INPUT.gguf [OUTPUT.gguf] TYPE [THREADS]

Writes a copy of the model INPUT.gguf with its weights converted to TYPE, as llama-quantize does.
OUTPUT.gguf defaults to ggml-model-TYPE.gguf beside the input; THREADS to every hardware thread.

  TYPE                    F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L,
                          Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K or IQ4_NL (any case)
  --allow-requantize      allow quantizing tensors that are already quantized (lossy twice)
  --leave-output-tensor   leave output.weight as it is (larger file, better quality)
  --pure                  every tensor to TYPE, without llama.cpp's per-tensor mix
  -h, --help              this text

On a terminal a spinner shows the time elapsed (llama.cpp reports no progress while it quantizes);
RUST_LOG=llama_cpp=info shows its line per tensor.";

struct Params {
    input: PathBuf,
    output: PathBuf,
    params: QuantizeParams,
}

fn parse_args(a: &mut Args) -> ArgResult<Params> {
    let (mut requantize, mut leave_output, mut pure) = (false, false, false);
    let mut positional = Vec::new();
    while let Some(arg) = a.next()? {
        match &arg {
            Arg::Value(v) => positional.push(v.clone()),
            Arg::Flag(f) => match f.as_str() {
                "--allow-requantize" => requantize = true,
                "--leave-output-tensor" => leave_output = true,
                "--pure" => pure = true,
                _ => return Err(a.unexpected(arg)),
            },
        }
    }
    // As llama-quantize: INPUT TYPE [THREADS] or INPUT OUTPUT TYPE [THREADS].
    let (input, output, ty, threads) = match positional.as_slice() {
        [input, ty, rest @ ..] if ty.parse::<Ftype>().is_ok() && rest.len() <= 1 => (input, None, ty, rest.first()),
        [input, output, ty, rest @ ..] if rest.len() <= 1 => (input, Some(output), ty, rest.first()),
        _ => return Err(args::usage("expected INPUT.gguf [OUTPUT.gguf] TYPE [THREADS]")),
    };
    let ftype: Ftype = ty.parse().map_err(|e| args::usage(format!("TYPE {ty}: {e}")))?;
    let input = PathBuf::from(input);
    let output = match output {
        Some(o) => PathBuf::from(o),
        None => input.with_file_name(format!("ggml-model-{ftype}.gguf")),
    };
    let mut params =
        QuantizeParams::new(ftype).allow_requantize(requantize).quantize_output_tensor(!leave_output).pure(pure);
    if let Some(t) = threads {
        let n = args::positive(t).map_err(|e| args::usage(format!("THREADS {t}: {e}")))?;
        params = params.threads(n);
    }
    Ok(Params { input, output, params })
}

fn main() -> ExitCode {
    common::log::init(common::log::DEFAULT_FILTER);
    let p = args::parse_or_exit(HELP, parse_args);
    let t = Instant::now();
    let ftype = p.params.ftype;
    match common::progress::quantize(&p.input, &p.output, p.params) {
        Ok(()) => {
            let size = |path: &PathBuf| std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6);
            println!(
                "wrote {} ({ftype}): {:.1} MB from {:.1} MB, {:.1} s",
                p.output.display(),
                size(&p.output),
                size(&p.input),
                t.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
