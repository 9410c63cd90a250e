//! Raw FFI bindings to llama.cpp (pinned: commit 5f55650a78f9), built from source.
//!
//! This crate is deliberately thin: the C API exactly as `llama.h`, `ggml.h`,
//! `ggml-backend.h`, `ggml-cpu.h` and `gguf.h` declare it, plus the
//! `llama_rs_*` exception shim (see `shim/shim.h`): every call that may throw a
//! C++ exception has a `llama_rs_*` twin that catches it. Nothing here checks
//! inputs; the safe `llama-rs` crate does. Many C calls abort the process on
//! bad input: read the llama.cpp sources before calling them directly.
//!
//! Build configuration (features `cuda`, `hip`, `native`; env `LLAMA_CPP_DIR`,
//! `LLAMA_HIP_TARGETS`, `LLAMA_CUDA_ARCHS`, any `GGML_*`/`LLAMA_*` CMake option)
//! is described in the workspace README.
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case)]
#![allow(clippy::all, rustdoc::all, missing_docs)]

#[cfg(feature = "bindgen")]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
#[cfg(not(feature = "bindgen"))]
include!("bindings.rs");

/// The llama.cpp commit these bindings and the build are pinned to.
pub const LLAMA_CPP_COMMIT: &str = "5f55650a78f9";

/// Folder holding the backend modules built with this crate (feature
/// `dynamic-backends`); empty for static builds.
pub const BACKEND_DIR: &str = env!("LLAMA_SYS_BACKEND_DIR");

/// True when backends are modules loaded at run time (feature `dynamic-backends`).
pub const DYNAMIC_BACKENDS: bool = cfg!(feature = "dynamic-backends");

/// Backends compiled into this build, e.g. `["cpu", "cuda"]`.
pub const BUILT_BACKENDS: &[&str] = &[
    "cpu",
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "hip")]
    "hip",
];
