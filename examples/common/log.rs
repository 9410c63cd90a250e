//! The `tracing` subscriber of the examples and benches: llama.cpp's log
//! lines (target `llama_cpp`) and llama-rs's own (target `llama_rs`) reach
//! stderr, so that a failure's cause is on screen.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// The filter unless `RUST_LOG` says otherwise: llama.cpp's (and every
/// other) warnings and errors.
pub const DEFAULT_FILTER: &str = "warn";

/// Installs a subscriber writing to stderr, filtered by `RUST_LOG` (e.g.
/// `RUST_LOG=llama_cpp=info` for llama.cpp's loading lines), else by
/// `default` (such as [`DEFAULT_FILTER`]). Colours only on a terminal. Lines
/// written while a progress bar is drawn go above the bar
/// ([`super::progress::LogWriter`]). A second call does nothing.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| super::progress::LogWriter)
        .try_init();
}
