//! Host package of the llama-rs workspace's integration tests (`tests/`),
//! examples (`examples/`) and benchmarks (`benches/`).
//!
//! Its build script settles what they share: where synthetic fixture models
//! are cached, and the identity of the build for benchmark tables.

/// Folder where synthetic fixture models are written once and reused by tests,
/// examples and benchmarks: `<cargo target dir>/llama-rs-fixtures`, or the
/// `LLAMA_RS_FIXTURE_DIR` environment variable at build time. The build script
/// creates it.
pub const FIXTURE_DIR: &str = env!("LLAMA_RS_FIXTURE_DIR");

/// Short git commit hash of the workspace at build time, or `"unknown"`.
pub const GIT_COMMIT: &str = env!("LLAMA_RS_GIT_COMMIT");

/// Build features this package was built with, comma-separated (`cuda`,
/// `hip`, `native`, `dynamic-backends`); empty for a default CPU build.
pub const BUILD_FEATURES: &str = env!("LLAMA_RS_BUILD_FEATURES");

/// Where `scripts/fetch-model` caches the real model of the tests,
/// SmolLM2-135M-Instruct Q4_1: `LLAMA_RS_MODEL_CACHE`, else
/// `$XDG_CACHE_HOME/llama-rs/models`, else `~/.cache/llama-rs/models` (read at
/// run time, like the script).
pub fn real_model_cache_path() -> std::path::PathBuf {
    use std::path::PathBuf;
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cache = var("LLAMA_RS_MODEL_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("llama-rs/models")))
        .unwrap_or_else(|| var("HOME").unwrap_or_default().join(".cache/llama-rs/models"));
    cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}
