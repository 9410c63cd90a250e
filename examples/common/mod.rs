//! What every example and benchmark shares: the command-line parser
//! ([`args`]), progress bars on a terminal ([`progress`]) and the `tracing`
//! subscriber that shows llama.cpp's log lines ([`log`]).
//!
//! Not an example itself (no `main.rs`): each example includes it with
//! `#[path = "common/mod.rs"] mod common;` (`"../common/mod.rs"` from
//! `examples/server/`, `"../examples/common/mod.rs"` from `benches/`). The
//! root package's library cannot hold it: lexopt, indicatif and
//! tracing-subscriber are dev-dependencies, for examples, tests and benches
//! only.

// Each program uses part of it.
#![allow(dead_code)]

pub mod args;
pub mod log;
pub mod progress;
