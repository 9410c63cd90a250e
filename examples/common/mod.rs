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

/// The examples' `main`: installs the log subscriber (`log_filter` unless
/// `RUST_LOG` is set), parses the command line with `parse` (`-h`: help and
/// exit 0; a usage error: exit 2), then runs `run`; its error is printed as
/// `error: ...` with exit status 1.
pub fn main<P, E: std::fmt::Display>(
    log_filter: &str,
    help: &str,
    parse: impl FnOnce(&mut args::Args) -> args::ArgResult<P>,
    run: impl FnOnce(P) -> Result<(), E>,
) -> std::process::ExitCode {
    log::init(log_filter);
    let params = args::parse_or_exit(help, parse);
    match run(params) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
