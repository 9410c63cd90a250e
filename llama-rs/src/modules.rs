//! Backend modules loaded at run time (feature `dynamic-backends`).
//!
//! With `dynamic-backends`, llama.cpp and ggml are shared libraries and every
//! backend (CPU, CUDA, HIP, ...) is a module (`libggml-<name>.so`) loaded when
//! llama-rs initialises. One program can so use a CUDA or HIP module built on
//! another machine. A module must come from the same llama.cpp pin as the
//! program: ggml only checks a coarse API version, and a module from another
//! version can corrupt memory. Modules built by llama-sys, or by
//! `scripts/build-backend-module`, carry a stamp file `<module>.pin` naming the
//! llama.cpp commit; a module without a matching stamp is refused.
//!
//! At [`init`](crate::init), the modules are loaded from `LLAMA_RS_BACKEND_DIR`
//! if set, else from the executable's folder if it holds modules, else from the
//! folder llama-sys built them into; then `GGML_BACKEND_PATH` (one module file)
//! if set. Failures are logged (`tracing`, target `llama_rs`) and listed by
//! [`backend_modules`]; [`load_backend_module`] reports them as errors.

use crate::backend::{clear_log_error, log_error_or, GLOBAL};
use crate::error::{Error, Result};
use llama_sys as sys;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What happened to one module file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendModule {
    /// The module file.
    pub path: PathBuf,
    /// The backend's name once loaded (`CPU`, `CUDA`, `ROCm`, ...).
    pub name: Option<String>,
    /// Why it was not loaded, if it was not.
    pub error: Option<String>,
}

static MODULES: Mutex<Vec<BackendModule>> = Mutex::new(Vec::new());

/// The stamp every module of this build must carry.
pub fn pin_stamp() -> String {
    format!("llama.cpp {}", sys::LLAMA_CPP_COMMIT)
}

/// Every module file llama-rs tried to load, with the outcome.
pub fn backend_modules() -> Vec<BackendModule> {
    crate::init();
    MODULES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Loads one backend module file after checking its pin stamp; returns the
/// backend's name. Loading a backend that is already loaded is refused (its
/// devices would be listed twice).
///
/// # Safety
///
/// - No other thread may be using llama-rs (loading a model, creating a
///   context, decoding, listing devices, ...) while this runs: the module is
///   added to ggml's backend registry, which llama.cpp itself reads without a
///   lock during model loading, context creation and device queries. Call it
///   at start-up, before the threads that use models exist. (The modules
///   found at [`init`](crate::init) are loaded inside its one-time
///   initialisation, which every other entry point waits for: that needs
///   nothing from the caller.)
/// - The file's initialisation code runs in this process, as for any shared
///   library (`libloading` makes loading `unsafe` for the same reason): it
///   must be a ggml backend module you trust. The pin stamp check catches a
///   module of another llama.cpp version, not a hostile file.
///
/// Calling it without `unsafe` does not compile:
///
/// ```compile_fail,E0133
/// let _ = llama_rs::load_backend_module("libggml-cuda.so");
/// ```
pub unsafe fn load_backend_module(path: impl AsRef<Path>) -> Result<String> {
    crate::init();
    let _guard = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    load_locked(path.as_ref())
}

/// Loads every module (`libggml-*.so`) of a folder; returns the backend names.
/// Stops at the first module that fails.
///
/// # Safety
///
/// As for [`load_backend_module`], for every module of the folder.
pub unsafe fn load_backend_dir(dir: impl AsRef<Path>) -> Result<Vec<String>> {
    crate::init();
    let _guard = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    module_files(dir.as_ref())?.iter().map(|p| load_locked(p)).collect()
}

/// Called once from `init`, under the global lock.
pub(crate) fn load_at_init() {
    if !sys::DYNAMIC_BACKENDS {
        return;
    }
    let dir = default_dir();
    let files = match &dir {
        Some(d) => module_files(d).unwrap_or_else(|e| {
            tracing::error!(target: "llama_rs", "{e}");
            Vec::new()
        }),
        None => Vec::new(),
    };
    if files.is_empty() {
        tracing::error!(target: "llama_rs", "no backend modules found (looked in {dir:?}); set LLAMA_RS_BACKEND_DIR");
    }
    let extra = std::env::var_os("GGML_BACKEND_PATH").map(PathBuf::from);
    for f in files.iter().chain(extra.iter()) {
        if let Err(e) = load_locked(f) {
            tracing::error!(target: "llama_rs", "{e}");
        }
    }
}

fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("LLAMA_RS_BACKEND_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    if let Some(d) = exe_dir.filter(|d| module_files(d).is_ok_and(|f| !f.is_empty())) {
        return Some(d);
    }
    (!sys::BACKEND_DIR.is_empty()).then(|| PathBuf::from(sys::BACKEND_DIR))
}

fn module_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("libggml-") && name.ends_with(".so") && name != "libggml-base.so"
        })
        .collect();
    // The CPU backend last, as ggml registers it: GPUs first in the device list.
    files.sort_by_key(|p| (p.file_name().is_some_and(|n| n == "libggml-cpu.so"), p.clone()));
    Ok(files)
}

fn load_locked(path: &Path) -> Result<String> {
    let outcome = check_and_load(path);
    let mut modules = MODULES.lock().unwrap_or_else(|e| e.into_inner());
    modules.push(BackendModule {
        path: path.to_path_buf(),
        name: outcome.as_ref().ok().cloned(),
        error: outcome.as_ref().err().map(|e| e.to_string()),
    });
    outcome
}

fn check_and_load(path: &Path) -> Result<String> {
    let refuse = |reason: String| Error::BackendModule { path: path.to_path_buf(), reason };
    if !sys::DYNAMIC_BACKENDS {
        return Err(refuse("this program was built without the `dynamic-backends` feature".into()));
    }
    let stamp_path = PathBuf::from(format!("{}.pin", path.display()));
    let expected = pin_stamp();
    match std::fs::read_to_string(&stamp_path) {
        Err(_) => {
            return Err(refuse(format!(
                "no pin stamp {}: only modules built from {expected} (by llama-sys or \
                 scripts/build-backend-module) are loaded",
                stamp_path.display()
            )))
        }
        Ok(s) if s.trim() != expected => {
            return Err(refuse(format!(
                "built from {}, but this program uses {expected}: rebuild the module from the same pin",
                s.trim()
            )))
        }
        Ok(_) => {}
    }
    let already = MODULES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|m| m.name.is_some() && m.path.file_name() == path.file_name());
    if already {
        return Err(refuse("a module of that name is already loaded".into()));
    }
    let cpath = crate::ffi::path_cstring(path, "module path")?;
    clear_log_error();
    // SAFETY: NUL-terminated path; called from init's one-time
    // initialisation or from load_backend_module, whose caller guarantees
    // that no other thread uses llama.cpp (the registry is not locked by
    // llama.cpp itself); the module was checked to be of this pin.
    let reg = unsafe { sys::ggml_backend_load(cpath.as_ptr()) };
    if reg.is_null() {
        return Err(refuse(log_error_or("ggml could not load it")));
    }
    // SAFETY: a registered backend; its name is a static string.
    Ok(unsafe { crate::ffi::string_from_ptr(sys::ggml_backend_reg_name(reg)) })
}
