//! What this build was asked for: features, environment, and where the shared
//! cache lives. Every environment variable read here is declared with
//! `rerun-if-env-changed`, so changing one rebuilds and nothing goes stale.

use std::env;
use std::path::{Path, PathBuf};

pub struct Config {
    pub hip: bool,
    pub cuda: bool,
    pub native: bool,
    /// Shared libraries, backends as modules loaded at run time (GGML_BACKEND_DL).
    pub dynamic: bool,
    /// ggml's RPC backend (GGML_RPC).
    pub rpc: bool,
    /// Root of the cache shared by every build of the workspace
    /// (extracted source, one cmake build folder per configuration).
    pub cache_dir: PathBuf,
    /// The package's copy of the llama.cpp pin (`pin.toml`, kept equal to the
    /// workspace's `vendor/pin/Cargo.toml` by `scripts/pin-check`).
    pub pin_manifest: PathBuf,
    /// `patches/`: applied to the pinned tree when it is extracted.
    pub patch_dir: PathBuf,
    /// docs.rs (`DOCS_RS` set): no network, no C++ toolchain; build nothing.
    pub docs_rs: bool,
}

impl Config {
    pub fn from_env() -> Config {
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
        let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
        let cache_dir = match var("LLAMA_SYS_CACHE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => target_dir(&out_dir).join("llama-cpp"),
        };
        println!("cargo:rerun-if-changed={}", manifest_dir.join("patches").display());
        let pin_manifest = manifest_dir.join("pin.toml");
        println!("cargo:rerun-if-changed={}", pin_manifest.display());
        warn_unsynced_pin(&manifest_dir, &pin_manifest);
        Config {
            hip: feature("HIP"),
            cuda: feature("CUDA"),
            native: feature("NATIVE"),
            dynamic: feature("DYNAMIC_BACKENDS"),
            rpc: feature("RPC"),
            cache_dir,
            pin_manifest,
            patch_dir: manifest_dir.join("patches"),
            docs_rs: var("DOCS_RS").is_some(),
        }
    }

    pub fn backends(&self) -> Vec<&'static str> {
        let mut b = vec!["cpu"];
        if self.cuda {
            b.push("cuda");
        }
        if self.hip {
            b.push("hip");
        }
        if self.rpc {
            b.push("rpc");
        }
        b
    }
}

/// In the llama-rs workspace, a pin edited in `vendor/pin/Cargo.toml` but not
/// copied to `pin.toml` yet (which is what this script reads) gets a warning.
fn warn_unsynced_pin(manifest_dir: &Path, pin_manifest: &Path) {
    let edited = manifest_dir.join("..").join("vendor").join("pin").join("Cargo.toml");
    if !edited.is_file() {
        return;
    }
    println!("cargo:rerun-if-changed={}", edited.display());
    if std::fs::read(&edited).ok() != std::fs::read(pin_manifest).ok() {
        println!(
            "cargo:warning=vendor/pin/Cargo.toml differs from llama-sys/pin.toml, the pin this build uses: \
             run scripts/pin-check --write"
        );
    }
}

fn feature(name: &str) -> bool {
    env::var_os(format!("CARGO_FEATURE_{name}")).is_some()
}

/// Reads an environment variable and tells cargo to rerun when it changes.
pub fn var(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

/// Cargo's target folder: the ancestor of OUT_DIR that holds `CACHEDIR.TAG`.
fn target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        // target/<profile>/build/<pkg-hash>/out
        .unwrap_or_else(|| out_dir.ancestors().nth(4).unwrap_or(out_dir).to_path_buf())
}
