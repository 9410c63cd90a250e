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
