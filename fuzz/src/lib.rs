//! Shared fixtures of the fuzz targets: the project's tiny synthetic models
//! (written once into a fixture folder, loaded once per process) and the
//! seed corpus of `load_model`.
//!
//! The fixture folder is `LLAMA_RS_FUZZ_FIXTURES`, else `fuzz/target/fixtures`.

pub mod metadata;

use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
use llama_rs::{ContextParams, Model, ModelParams};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Seed of every synthetic model written here.
pub const SEED: u64 = 42;

/// Where the fixture models are written.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("LLAMA_RS_FUZZ_FIXTURES")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("fixtures"))
}

/// The tiny model of the tests (`tests/common/mod.rs`): `ModelShape::tiny()`, F32.
pub fn tiny_model(vocab: VocabKind) -> SyntheticModel {
    SyntheticModel::new(ModelShape::tiny()).vocab(vocab).weight_type(WeightType::F32).seed(SEED)
}

fn load_cached(vocab: VocabKind) -> Model {
    let path = tiny_model(vocab).write_cached(fixture_dir()).expect("write the tiny synthetic model");
    Model::load_with(path, cpu_params()).expect("load the tiny synthetic model")
}

/// CPU only: no layer offloaded, whatever devices the machine has.
pub fn cpu_params() -> ModelParams {
    ModelParams::default().n_gpu_layers(Some(0))
}

/// The tiny SPM model, loaded once per process.
pub fn tiny_spm() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| load_cached(VocabKind::Spm))
}

/// The tiny BPE model, loaded once per process.
pub fn tiny_bpe() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| load_cached(VocabKind::Bpe))
}

/// A small context: `n_ctx` 64, `n_batch`/`n_ubatch` 16, one thread.
pub fn small_context_params() -> ContextParams {
    ContextParams::default().n_ctx(64).n_batch(16).n_ubatch(16).threads(1)
}

/// The smallest llama shape the generator accepts for `vocab` (a few tens of
/// KiB): good `load_model` seeds, quick to mutate and to load.
pub fn micro_shape(vocab: VocabKind, weights: WeightType) -> ModelShape {
    let base =
        ModelShape { n_embd: 32, n_layer: 1, n_head: 2, n_head_kv: 1, n_ff: 32, n_ctx_train: 64, ..ModelShape::tiny() };
    // The generator needs a vocabulary larger than its fixed tokens; find the
    // smallest that validates (binary search would be overkill).
    for n_vocab in (256..=1024).step_by(8) {
        let shape = ModelShape { n_vocab, ..base };
        if SyntheticModel::new(shape).vocab(vocab).weight_type(weights).validate().is_ok() {
            return shape;
        }
    }
    base
}

/// Writes the `load_model` seed corpus into `dir`: micro models (SPM and BPE;
/// F32, F16, Q8_0) and the tiny SPM and BPE models of the tests. Returns the
/// files written.
pub fn write_model_seeds(dir: &Path) -> llama_rs::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| llama_rs::Error::Io { path: dir.to_path_buf(), source })?;
    let mut written = Vec::new();
    let mut models = Vec::new();
    for vocab in [VocabKind::Spm, VocabKind::Bpe] {
        for weights in [WeightType::F32, WeightType::F16, WeightType::Q8_0] {
            models.push(SyntheticModel::new(micro_shape(vocab, weights)).vocab(vocab).weight_type(weights).seed(SEED));
        }
        // Without a chat template, too.
        models.push(
            SyntheticModel::new(micro_shape(vocab, WeightType::F32)).vocab(vocab).chat_template(None).seed(SEED + 1),
        );
        models.push(tiny_model(vocab));
    }
    for m in models {
        let path = dir.join(format!("seed-{}", m.file_name()));
        if !path.is_file() {
            m.write(&path)?;
        }
        written.push(path);
    }
    Ok(written)
}

/// A per-process scratch file for the bytes under test: in `/dev/shm` when it
/// exists (no disk writes), else in the temporary folder.
pub fn scratch_file(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    dir.join(format!("llama-rs-fuzz-{name}-{}.gguf", std::process::id()))
}

/// Start-up common to every target: with `--cpp-coverage` (scripts/fuzz),
/// pulls in the coverage callbacks of the instrumented llama.cpp
/// (fuzz/cpp-coverage/trace_pc.c) and says so on stderr.
pub fn init() {
    #[cfg(cpp_coverage)]
    {
        extern "C" {
            static llama_rs_fuzz_cpp_edges: [u8; 1 << 16];
        }
        // Taking the address links the C object in; it is never read here.
        let edges = std::ptr::addr_of!(llama_rs_fuzz_cpp_edges);
        eprintln!("llama-rs-fuzz: llama.cpp edge coverage on ({} counters at {:p})", (1 << 16), edges);
    }
}

/// The real model of the tests (SmolLM2-135M-Instruct Q4_1) in the cache
/// `scripts/fetch-model` fills; panics with the command to run if missing.
pub fn real_model_path() -> PathBuf {
    let path = llama_rs_suite::real_model_cache_path();
    assert!(path.is_file(), "{} is missing: run scripts/fetch-model", path.display());
    path
}
