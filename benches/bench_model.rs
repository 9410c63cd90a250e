//! The `-m` argument of the benchmarks (`tokens_per_second`, `batched`): a
//! GGUF path, or `synthetic:<tiny|small|8b|70b>[:<type>]`, a model of that
//! shape with random weights written once into the fixture folder (with a
//! progress bar when stderr is a terminal).

use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
use std::io::Write;
use std::path::PathBuf;

/// A model to benchmark: a file, or a synthetic one written on first use.
pub struct ModelSpec {
    pub path: PathBuf,
    /// Table name for synthetic models; `None`: llama.cpp's description.
    pub synthetic_name: Option<String>,
}

/// Resolves `spec`, writing a synthetic model first when it is not cached
/// (and saying so on `info`).
pub fn resolve_model(spec: &str, info: &mut dyn Write) -> Result<ModelSpec, Box<dyn std::error::Error>> {
    let Some(rest) = spec.strip_prefix("synthetic:") else {
        return Ok(ModelSpec { path: spec.into(), synthetic_name: None });
    };
    let mut parts = rest.split(':');
    let shape_name = parts.next().unwrap_or("small");
    let type_name = parts.next().unwrap_or("q4_k_m");
    let (shape, vocab) = match shape_name {
        "tiny" => (ModelShape::tiny_k(), VocabKind::Spm),
        "small" => (ModelShape::small(), VocabKind::Spm),
        "8b" => (ModelShape::llama3_8b(), VocabKind::Bpe),
        "70b" => (ModelShape::llama3_70b(), VocabKind::Bpe),
        s => return Err(format!("synthetic model shape {s:?}: expected tiny, small, 8b or 70b").into()),
    };
    let wt: WeightType = type_name.parse()?;
    let synthetic = SyntheticModel::new(shape).vocab(vocab).weight_type(wt).seed(1);
    // The fixture folder of the build, unless LLAMA_RS_FIXTURE_DIR says
    // otherwise at run time (a binary carried to another machine).
    let dir = std::env::var_os("LLAMA_RS_FIXTURE_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(llama_rs_suite::FIXTURE_DIR), PathBuf::from);
    let path = dir.join(synthetic.file_name());
    if !path.is_file() {
        writeln!(info, "writing synthetic model {spec} to {} (once) ...", path.display())?;
    }
    // A bar of the bytes written on a terminal (stderr), as the examples do.
    let path = crate::common::progress::write_synthetic_cached(&synthetic, &dir)?;
    let name = format!("synthetic {shape_name} {} (random weights)", type_name.to_uppercase());
    Ok(ModelSpec { path, synthetic_name: Some(name) })
}
