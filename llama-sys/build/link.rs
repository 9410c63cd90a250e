//! Link lines: the static llama/ggml libraries, then what they need from the
//! system (C++ runtime, OpenMP, and the GPU runtimes of the chosen backend).

use crate::cmake_build::Built;
use crate::config::{var, Config};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn emit(cfg: &Config, built: &Built) {
    if cfg.dynamic {
        // cargo puts native search paths on the library path of `cargo run` /
        // `cargo test` only when they lie inside the profile's output folder:
        // reach the shared build through a link in OUT_DIR.
        let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
        let link = out.join("llama-lib");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&built.lib_dir, &link).expect("link the shared library folder into OUT_DIR");
        println!("cargo:rustc-link-search=native={}", link.display());
    } else {
        println!("cargo:rustc-link-search=native={}", built.lib_dir.display());
    }
    // Where the backend modules of this build are: llama-rs loads them from
    // there (and from LLAMA_RS_BACKEND_DIR / GGML_BACKEND_PATH at run time).
    let modules = built.prefix.join("bin");
    println!(
        "cargo:rustc-env=LLAMA_SYS_BACKEND_DIR={}",
        if cfg.dynamic { modules.display().to_string() } else { String::new() }
    );
    if cfg.dynamic {
        // Shared libraries; the backends (CPU included) are modules that
        // ggml loads at run time, each linking its own runtime.
        for lib in ["llama", "ggml", "ggml-base"] {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
        println!("cargo:rustc-link-lib=dylib=stdc++");
        return;
    }
    for lib in static_libs(&built.lib_dir) {
        println!("cargo:rustc-link-lib=static={lib}");
    }
    if cfg.cuda {
        cuda_libs();
    }
    if cfg.hip {
        hip_libs();
    }
    openmp(&built.prefix);
    println!("cargo:rustc-link-lib=dylib=stdc++");
    for lib in ["pthread", "m", "dl"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}

/// `llama`, `ggml`, the backends, then `ggml-base`: each before what it uses.
fn static_libs(dir: &Path) -> Vec<String> {
    let mut backends: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_prefix("lib")?.strip_suffix(".a")?.to_string();
            (stem.starts_with("ggml-") && stem != "ggml-base").then_some(stem)
        })
        .collect();
    backends.sort();
    let mut libs = vec!["llama".to_string(), "ggml".to_string()];
    libs.extend(backends);
    libs.push("ggml-base".to_string());
    libs
}

/// The OpenMP runtime of the compilers that built ggml: GCC's libgomp, clang's
/// libomp, Intel's libiomp5. ggml uses it only when GGML_OPENMP is on and CMake
/// found OpenMP; CMake's FindOpenMP then records, in the cache, the libraries it
/// found for the C and C++ compilers (`OpenMP_C_LIB_NAMES`, `OpenMP_<name>_LIBRARY`),
/// which are linked from where they were found. Without those entries the
/// runtime follows the C++ compiler's id.
fn openmp(prefix: &Path) {
    let build = prefix.join("build");
    let cache = read_cmake_cache(&build.join("CMakeCache.txt"));
    if cache.get("GGML_OPENMP_ENABLED").map(String::as_str) != Some("ON") {
        return;
    }
    let mut names: Vec<String> = Vec::new();
    for lang in ["C", "CXX"] {
        for name in cache.get(&format!("OpenMP_{lang}_LIB_NAMES")).map(String::as_str).unwrap_or("").split(';') {
            // pthread is linked below anyway.
            if !name.is_empty() && name != "pthread" && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    if names.is_empty() {
        names.push(openmp_runtime_of(&compiler_id(&build)).to_string());
    }
    for name in names {
        if let Some(file) = cache.get(&format!("OpenMP_{name}_LIBRARY")).map(PathBuf::from) {
            if let Some(dir) = file.parent().filter(|_| file.is_file()) {
                println!("cargo:rustc-link-search=native={}", dir.display());
            }
        }
        println!("cargo:rustc-link-lib=dylib={name}");
    }
}

/// `CMakeCache.txt` as `NAME -> value` (the `:TYPE` dropped).
fn read_cmake_cache(path: &Path) -> HashMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("//"))
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            let name = key.split_once(':').map_or(key, |(n, _)| n);
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

/// CMake's id of the C++ compiler (`GNU`, `Clang`, `AppleClang`, `IntelLLVM`,
/// ...), from `CMakeFiles/<cmake version>/CMakeCXXCompiler.cmake`.
fn compiler_id(build: &Path) -> String {
    let files = fs::read_dir(build.join("CMakeFiles")).into_iter().flatten().flatten();
    for dir in files {
        let text = fs::read_to_string(dir.path().join("CMakeCXXCompiler.cmake")).unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("set(CMAKE_CXX_COMPILER_ID ") {
                return rest.trim_end_matches(')').trim_matches('"').to_string();
            }
        }
    }
    String::new()
}

/// The OpenMP runtime library a compiler's `-fopenmp` links.
fn openmp_runtime_of(compiler_id: &str) -> &'static str {
    match compiler_id {
        "Clang" | "AppleClang" => "omp",
        "IntelLLVM" => "iomp5",
        _ => "gomp",
    }
}

fn cuda_libs() {
    let root = var("CUDA_PATH").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/local/cuda"));
    for sub in ["lib64", "lib64/stubs", "targets/x86_64-linux/lib", "targets/x86_64-linux/lib/stubs"] {
        let dir = root.join(sub);
        if dir.is_dir() {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
    }
    for lib in ["cudart", "cublas", "cublasLt", "cuda"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}

fn hip_libs() {
    if let Some(root) = rocm_root() {
        for sub in ["lib", "lib64", "lib/x86_64-linux-gnu"] {
            let dir = root.join(sub);
            if dir.is_dir() {
                println!("cargo:rustc-link-search=native={}", dir.display());
            }
        }
    }
    for lib in ["amdhip64", "hipblas", "rocblas"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
}

/// ROCm's root: `ROCM_PATH`, AMD's `/opt/rocm`, or a distribution's `/usr`.
pub fn rocm_root() -> Option<PathBuf> {
    if let Some(p) = var("ROCM_PATH") {
        return Some(PathBuf::from(p));
    }
    [PathBuf::from("/opt/rocm"), PathBuf::from("/usr")]
        .into_iter()
        .find(|p| p.join("include").join("hip").join("hip_runtime.h").is_file())
}

/// The clang that compiles HIP: `HIPCXX`, else what `hipconfig -l` names,
/// else ROCm's own llvm.
pub fn hip_clang() -> Option<PathBuf> {
    if let Some(p) = var("HIPCXX") {
        return Some(PathBuf::from(p));
    }
    let hipconfig = rocm_root()
        .map(|r| r.join("bin").join("hipconfig"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("hipconfig"));
    if let Ok(out) = Command::new(hipconfig).arg("-l").output() {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let clang = Path::new(&dir).join("clang++");
        if out.status.success() && clang.is_file() {
            return Some(clang);
        }
    }
    rocm_root().map(|r| r.join("llvm").join("bin").join("clang++")).filter(|p| p.is_file())
}
