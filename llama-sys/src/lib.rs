//! Raw FFI bindings to llama.cpp (pinned: commit 5f55650a78f9), built from source.
//!
//! This crate is deliberately thin: the C API exactly as `llama.h`, `ggml.h`,
//! `ggml-backend.h`, `ggml-cpu.h` and `gguf.h` declare it, plus the
//! `llama_rs_*` exception shim (see `shim/shim.h`): every call that may throw a
//! C++ exception has a `llama_rs_*` twin that catches it. Nothing here checks
//! inputs; the safe `llama-rs` crate does. Many C calls abort the process on
//! bad input: read the llama.cpp sources before calling them directly.
//!
//! Build configuration (features `cuda`, `hip`, `native`, `dynamic-backends`,
//! `rpc`, `bindgen`; env `LLAMA_CPP_DIR`, `LLAMA_SYS_CACHE_DIR`,
//! `LLAMA_HIP_TARGETS`, `LLAMA_CUDA_ARCHS`, any `GGML_*`/`LLAMA_*` CMake
//! option) is described in the llama-rs repository's README; offline and
//! vendored builds in its `docs/offline-builds.md`. With `DOCS_RS` set (as on
//! docs.rs) the build script builds and links nothing: enough for rustdoc only.
#![cfg_attr(docsrs, feature(doc_cfg))]
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
    #[cfg(feature = "rpc")]
    "rpc",
];

/// ggml's RPC backend (feature `rpc`). Its entry points are reached through the
/// `"RPC"` registry entry's proc addresses (`ggml_backend_reg_get_proc_address`),
/// the same way in static and `dynamic-backends` builds; these are their types.
/// `ggml_backend_rpc_failures` and `ggml_backend_rpc_set_timeouts` exist only in
/// the tree patched by `patches/ggml-rpc-recoverable.patch`.
pub mod rpc {
    use super::{ggml_backend_dev_t, ggml_backend_reg_t};
    use std::os::raw::{c_char, c_int};

    /// True when this build has the RPC backend (feature `rpc`).
    pub const ENABLED: bool = cfg!(feature = "rpc");

    /// `ggml_backend_rpc_add_server(endpoint)`: a registry entry with one device
    /// per remote device; NULL when the server cannot be reached (patched tree).
    pub type AddServerFn = unsafe extern "C" fn(endpoint: *const c_char) -> ggml_backend_reg_t;
    /// `ggml_backend_rpc_start_server(endpoint, cache_dir, n_threads, n_devices, devices)`:
    /// serves until the process ends; returns only when it cannot start.
    pub type StartServerFn = unsafe extern "C" fn(
        endpoint: *const c_char,
        cache_dir: *const c_char,
        n_threads: usize,
        n_devices: usize,
        devices: *mut ggml_backend_dev_t,
    );
    /// `ggml_backend_rpc_failures(endpoint, message, size)`: failures recorded for
    /// the endpoint, the last message copied (NUL-terminated) into `message`.
    pub type FailuresFn = unsafe extern "C" fn(endpoint: *const c_char, message: *mut c_char, size: usize) -> u64;
    /// `ggml_backend_rpc_set_timeouts(connect_ms, io_ms)`; 0 means no bound.
    pub type SetTimeoutsFn = unsafe extern "C" fn(connect_ms: c_int, io_ms: c_int);
}
