//! Writes a synthetic llama-architecture GGUF model (random weights, working
//! vocabulary) of a real shape, so that a shape can be benchmarked before the
//! real model is downloaded.
//!
//! ```text
//! cargo run --release --example synthetic -- --shape tiny|tiny-k|small|8b|70b
//!     [--type f32|f16|q8_0|q4_k|q6_k|q4_k_m] [--vocab spm|bpe] [--seed S] --out PATH
//! ```

#[path = "common/mod.rs"]
mod common;

use common::args::{self, num, Arg, ArgResult, Args};
use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
use std::process::ExitCode;
use std::time::Instant;

const HELP: &str = "\
usage: synthetic --shape tiny|tiny-k|small|8b|70b [--type f32|f16|q8_0|q4_k|q6_k|q4_k_m] [--vocab spm|bpe]
                 [--seed S] --out PATH

Writes a llama-architecture GGUF model with random weights and a working vocabulary, of a real shape,
so that a shape can be benchmarked before the real model is downloaded.

      --shape NAME    tiny|tiny-k|small|8b|70b (default small)
      --type TYPE     weight type: f32|f16|q8_0|q4_k|q6_k|q4_k_m (default f16)
      --vocab KIND    spm|bpe (default spm)
      --seed S        weights' seed (default 42)
  -o, --out PATH      the file to write (required)
  -h, --help          this text

Writing shows a progress bar when stderr is a terminal.";

struct Params {
    shape: ModelShape,
    ty: WeightType,
    vocab: VocabKind,
    seed: u64,
    out: String,
}

fn parse_args(a: &mut Args) -> ArgResult<Params> {
    let (mut shape, mut ty, mut vocab, mut seed, mut out) =
        (ModelShape::small(), WeightType::F16, VocabKind::Spm, 42u64, None);
    while let Some(arg) = a.next()? {
        let Arg::Flag(flag) = &arg else { return Err(a.unexpected(arg)) };
        match flag.as_str() {
            "--shape" => shape = a.parse_with(|v| ModelShape::by_name(v).map_err(|e| e.to_string()))?,
            "--type" => ty = a.parse()?,
            "--vocab" => {
                vocab = a.parse_with(|v| match v {
                    "spm" => Ok(VocabKind::Spm),
                    "bpe" => Ok(VocabKind::Bpe),
                    _ => Err("expected spm or bpe".to_string()),
                })?
            }
            "--seed" => seed = a.parse_with(num)?,
            "--out" | "-o" => out = Some(a.value()?),
            _ => return Err(a.unexpected(arg)),
        }
    }
    let out = out.ok_or_else(|| args::usage("--out is required"))?;
    Ok(Params { shape, ty, vocab, seed, out })
}

fn main() -> ExitCode {
    common::main(common::log::DEFAULT_FILTER, HELP, parse_args, run)
}

fn run(Params { shape, ty, vocab, seed, out }: Params) -> Result<(), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let model = SyntheticModel::new(shape).weight_type(ty).vocab(vocab).seed(seed);
    common::progress::write_synthetic(&model, &out)?;
    let size = std::fs::metadata(&out)?.len();
    println!(
        "wrote {out}: {} parameters, {:.1} MB, {:.1} s",
        shape.n_params(),
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
