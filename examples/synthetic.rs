//! Writes a synthetic llama-architecture GGUF model (random weights, working
//! vocabulary) of a real shape, so that a shape can be benchmarked before the
//! real model is downloaded.
//!
//! ```text
//! cargo run --release --example synthetic -- --shape tiny|tiny-k|small|8b|70b
//!     [--type f32|f16|q8_0|q4_k|q6_k|q4_k_m] [--vocab spm|bpe] [--seed S] --out PATH
//! ```

use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: synthetic --shape tiny|tiny-k|small|8b|70b [--type f32|f16|q8_0|q4_k|q6_k|q4_k_m] \
                     [--vocab spm|bpe] [--seed S] --out PATH";

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
    let (mut shape, mut ty, mut vocab, mut seed, mut out) =
        (ModelShape::small(), WeightType::F16, VocabKind::Spm, 42u64, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            return Ok(());
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--shape" => shape = ModelShape::by_name(&v)?,
            "--type" => ty = v.parse()?,
            "--vocab" => {
                vocab = match v.as_str() {
                    "spm" => VocabKind::Spm,
                    "bpe" => VocabKind::Bpe,
                    _ => return Err(format!("unknown vocabulary {v}\n{USAGE}").into()),
                }
            }
            "--seed" => seed = v.parse()?,
            "--out" | "-o" => out = Some(v),
            _ => return Err(format!("unknown argument {flag}\n{USAGE}").into()),
        }
    }
    let out = out.ok_or_else(|| format!("--out is required\n{USAGE}"))?;
    let t = Instant::now();
    SyntheticModel::new(shape).weight_type(ty).vocab(vocab).seed(seed).write(&out)?;
    let size = std::fs::metadata(&out)?.len();
    println!(
        "wrote {out}: {} parameters, {:.1} MB, {:.1} s",
        shape.n_params(),
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
