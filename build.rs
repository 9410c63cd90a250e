//! Build script of `llama-rs-suite`, the root package that hosts the
//! workspace's tests, examples and benchmarks. It exports, as compile-time
//! environment variables (read back by `src/lib.rs`):
//!
//! - `LLAMA_RS_FIXTURE_DIR`: the folder where synthetic fixture models are
//!   written once and shared by tests, examples and benchmarks;
//! - `LLAMA_RS_GIT_COMMIT`: the short commit hash, for benchmark tables;
//! - `LLAMA_RS_BUILD_FEATURES`: the enabled backend features of this package.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let fixtures = fixture_dir();
    if let Err(e) = std::fs::create_dir_all(&fixtures) {
        println!("cargo:warning=cannot create the fixture folder {}: {e}", fixtures.display());
    }
    println!("cargo:rustc-env=LLAMA_RS_FIXTURE_DIR={}", fixtures.display());
    println!("cargo:rustc-env=LLAMA_RS_GIT_COMMIT={}", git_commit());
    println!("cargo:rustc-env=LLAMA_RS_BUILD_FEATURES={}", features().join(","));
}

/// `LLAMA_RS_FIXTURE_DIR` if set, else `<cargo target dir>/llama-rs-fixtures`:
/// next to the build outputs, so `cargo clean` removes it too.
fn fixture_dir() -> PathBuf {
    println!("cargo:rerun-if-env-changed=LLAMA_RS_FIXTURE_DIR");
    if let Some(dir) = env::var_os("LLAMA_RS_FIXTURE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    target_dir(&out_dir).join("llama-rs-fixtures")
}

/// Cargo's target folder: the ancestor of OUT_DIR that holds `CACHEDIR.TAG`
/// (OUT_DIR is `<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`).
fn target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").is_file())
        .unwrap_or_else(|| out_dir.ancestors().nth(4).unwrap_or(out_dir))
        .to_path_buf()
}

/// The short hash of HEAD, or "unknown" outside a git checkout (or without
/// git). Reruns when HEAD moves: on `.git/HEAD`, the branch it names, and
/// `packed-refs`, whichever exist.
fn git_commit() -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let files = ["HEAD", "packed-refs"].map(String::from).into_iter();
    let branch = git(&["symbolic-ref", "-q", "HEAD"]); // e.g. refs/heads/main
    for file in files.chain(branch) {
        if let Some(path) = git(&["rev-parse", "--git-path", &file]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    commit
}

/// The build features of this package that are on, e.g. `["cuda"]`.
fn features() -> Vec<&'static str> {
    ["cuda", "hip", "native", "dynamic-backends", "rpc", "rpc-tls"]
        .into_iter()
        .filter(|f| env::var_os(format!("CARGO_FEATURE_{}", f.to_uppercase().replace('-', "_"))).is_some())
        .collect()
}
