//! Configure and build llama.cpp with cmake, always Release, static libraries.
//!
//! The cmake build folder is keyed by a hash of everything that shapes the
//! build (defines, compilers, flags, source tree), so each configuration is
//! compiled once and shared by debug and release builds, `cargo check`,
//! `cargo doc` and `cargo clippy`; a changed feature, target list or
//! `LLAMA_*`/`GGML_*`/`CMAKE_*` setting lands in a new folder instead of
//! reusing a stale cmake cache.

use crate::config::{var, Config};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Built {
    /// cmake install prefix (`lib/`, `include/`).
    pub prefix: PathBuf,
    pub lib_dir: PathBuf,
}

/// Backends of the pinned tree that a feature may switch on; every other
/// one is explicitly OFF.
const OTHER_BACKENDS: &[&str] = &[
    "GGML_BLAS",
    "GGML_CANN",
    "GGML_ET",
    "GGML_HEXAGON",
    "GGML_METAL",
    "GGML_MUSA",
    "GGML_OPENCL",
    "GGML_OPENVINO",
    "GGML_RPC",
    "GGML_SYCL",
    "GGML_VIRTGPU",
    "GGML_VULKAN",
    "GGML_WEBGPU",
    "GGML_ZDNN",
    "GGML_ZENDNN",
    "GGML_KOMPUTE",
];

/// Environment read by compilers and cmake itself: part of the configuration key.
const TOOL_ENV: &[&str] = &[
    "CC",
    "CXX",
    "CFLAGS",
    "CXXFLAGS",
    "LDFLAGS",
    "CUDACXX",
    "CUDAFLAGS",
    "CUDA_PATH",
    "HIPCXX",
    "HIPFLAGS",
    "ROCM_PATH",
    "HIP_PATH",
    "CMAKE_GENERATOR",
    "CMAKE_TOOLCHAIN_FILE",
    "CMAKE_PREFIX_PATH",
];

/// `CMAKE_*` variables forwarded as defines when set in the environment.
const CMAKE_ENV: &[&str] = &[
    "CMAKE_C_COMPILER",
    "CMAKE_CXX_COMPILER",
    "CMAKE_C_COMPILER_LAUNCHER",
    "CMAKE_CXX_COMPILER_LAUNCHER",
    "CMAKE_CUDA_COMPILER",
    "CMAKE_CUDA_COMPILER_LAUNCHER",
    "CMAKE_CUDA_ARCHITECTURES",
    "CMAKE_HIP_COMPILER",
    "CMAKE_HIP_ARCHITECTURES",
    "CMAKE_HIP_COMPILER_LAUNCHER",
];

pub fn build(cfg: &Config, src: &Path) -> Built {
    let defines = defines(cfg, src);
    let key = config_key(&defines, src);
    fs::create_dir_all(&cfg.cache_dir).expect("create the llama.cpp cache folder");
    let prefix = cfg.cache_dir.join(format!("build-{key}"));

    // Two cargo processes (say debug tests and a release example) may build the
    // same configuration at once: one waits for the other.
    let lock = fs::File::create(cfg.cache_dir.join(format!("build-{key}.lock"))).expect("create lock file");
    lock.lock().expect("lock the llama.cpp build folder");

    let stamp = prefix.join("llama-sys-config.txt");
    let summary: String = defines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    // The pinned tree never changes, so a finished build of this key is final;
    // a user's tree (LLAMA_CPP_DIR) may have been edited: let cmake decide.
    let finished = stamp.is_file() && lib_dir(&prefix).join(lib_name(cfg, "llama")).is_file();
    if !finished || std::env::var_os("LLAMA_CPP_DIR").is_some() {
        run_cmake(cfg, src, &prefix, &defines);
        if cfg.dynamic {
            stamp_modules(cfg, &prefix.join("bin"));
        }
        write_stamp(&stamp, &summary);
    }
    // A deleted build folder (or stamp) makes cargo rerun this script, which
    // then builds it again: cargo treats a missing watched file as changed.
    println!("cargo:rerun-if-changed={}", stamp.display());
    Built { lib_dir: lib_dir(&prefix), prefix }
}

/// Writes the build stamp with an mtime long past. Cargo reruns a build script
/// when a watched file is newer than the script's last start, so a stamp
/// written now, during the run, would cost one needless rerun (and a rebuild
/// of every dependent crate) right after the first build. Only its presence
/// matters.
fn write_stamp(stamp: &Path, summary: &str) {
    fs::write(stamp, summary).expect("write build stamp");
    let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs(24 * 3600);
    fs::File::options()
        .write(true)
        .open(stamp)
        .and_then(|f| f.set_modified(long_ago))
        .unwrap_or_else(|e| panic!("set the mtime of {}: {e}", stamp.display()));
}

/// Writes `<module>.pin` next to each backend module: llama-rs loads only
/// modules whose stamp names its own llama.cpp commit.
fn stamp_modules(cfg: &Config, dir: &Path) {
    let pin = crate::source::read_pin(&cfg.pin_manifest);
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libggml-") && name.ends_with(".so") {
            let stamp = dir.join(format!("{name}.pin"));
            fs::write(&stamp, format!("llama.cpp {}\n", pin.commit)).expect("write module stamp");
        }
    }
}

fn run_cmake(cfg: &Config, src: &Path, prefix: &Path, defines: &BTreeMap<String, String>) {
    check_cmake_installed();
    // Flags that do not depend on the Rust profile: llama.cpp is always Release.
    let mut c = cc::Build::new();
    c.opt_level(3).debug(false).warnings(false);
    let mut cxx = cc::Build::new();
    cxx.cpp(true).opt_level(3).debug(false).warnings(false);
    let mut cm = cmake::Config::new(src);
    cm.out_dir(prefix).profile("Release").init_c_cfg(c).init_cxx_cfg(cxx);
    // llama.cpp asks git for its build commit; keep git from finding an
    // enclosing repository (ours), which would stamp the wrong commit.
    cm.env("GIT_CEILING_DIRECTORIES", &cfg.cache_dir);
    for (k, v) in defines {
        cm.define(k, v);
    }
    if cfg.hip {
        // HIP's clang must see the ROCm device libraries; hipconfig knows where they are.
        if let Some(rocm) = crate::link::rocm_root() {
            cm.env("PATH", prepend_path(&rocm.join("bin")));
        }
    }
    cm.build();
}

/// The defines of this configuration: fixed ones, features, then forwarded env.
fn defines(cfg: &Config, src: &Path) -> BTreeMap<String, String> {
    let on_off = |b: bool| if b { "ON" } else { "OFF" }.to_string();
    let mut d = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        d.insert(k.to_string(), v);
    };
    // Static libraries, or with `dynamic-backends` shared ones whose backends
    // are modules found at run time; libraries find each other next to themselves.
    set("BUILD_SHARED_LIBS", on_off(cfg.dynamic));
    if cfg.dynamic {
        set("CMAKE_INSTALL_RPATH", "$ORIGIN".into());
    }
    set("CMAKE_POSITION_INDEPENDENT_CODE", "ON".into());
    for opt in ["COMMON", "TESTS", "TOOLS", "EXAMPLES", "SERVER", "APP", "MTMD"] {
        set(&format!("LLAMA_BUILD_{opt}"), "OFF".into());
    }
    set("LLAMA_OPENSSL", "OFF".into());
    set("GGML_BACKEND_DL", on_off(cfg.dynamic));
    set("GGML_CPU", "ON".into());
    set("GGML_NATIVE", on_off(cfg.native));
    set("GGML_CUDA", on_off(cfg.cuda));
    set("GGML_HIP", on_off(cfg.hip));
    let options = cmake_options(src);
    for b in OTHER_BACKENDS {
        if options.iter().any(|o| o == b) {
            set(b, "OFF".into());
        }
    }
    if cfg.rpc {
        // RDMA needs libibverbs and is not what the tunnel forwards.
        set("GGML_RPC", "ON".into());
        set("GGML_RPC_RDMA", "OFF".into());
    }
    if cfg.cuda {
        if let Some(archs) = var("LLAMA_CUDA_ARCHS") {
            set("CMAKE_CUDA_ARCHITECTURES", archs);
        }
    }
    if cfg.hip {
        set("GPU_TARGETS", hip_targets());
        if let Some(compiler) = crate::link::hip_clang() {
            set("CMAKE_HIP_COMPILER", compiler.display().to_string());
        }
    }
    // Any llama.cpp/ggml CMake option, or a CMAKE_* variable above, set in the
    // environment is forwarded as is and wins over the defaults above.
    for name in options.iter().map(String::as_str).chain(CMAKE_ENV.iter().copied()) {
        if let Some(v) = var(name) {
            set(name, v);
        }
    }
    d
}

/// GPU targets for HIP: `LLAMA_HIP_TARGETS`, else `AMDGPU_TARGETS`, else
/// `GPU_TARGETS`, else gfx1100 (RX 7900 XTX/XT). Lists use `;` or `,`.
pub fn hip_targets() -> String {
    ["LLAMA_HIP_TARGETS", "AMDGPU_TARGETS", "GPU_TARGETS"]
        .iter()
        .find_map(|v| var(v))
        .unwrap_or_else(|| "gfx1100".into())
        .replace(',', ";")
}

/// Every `option(GGML_*|LLAMA_* ...)` the tree declares.
fn cmake_options(src: &Path) -> Vec<String> {
    let mut opts = Vec::new();
    for file in [src.join("CMakeLists.txt"), src.join("ggml").join("CMakeLists.txt")] {
        let text = fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines() {
            let Some(rest) = line.trim_start().strip_prefix("option(") else { continue };
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if (name.starts_with("GGML_") || name.starts_with("LLAMA_")) && !opts.contains(&name) {
                opts.push(name);
            }
        }
    }
    opts
}

fn config_key(defines: &BTreeMap<String, String>, src: &Path) -> String {
    let mut h = Sha256::new();
    h.update(format!("src={}\n", src.display()));
    h.update(format!("target={}\n", std::env::var("TARGET").unwrap_or_default()));
    for (k, v) in defines {
        h.update(format!("-D{k}={v}\n"));
    }
    let target = std::env::var("TARGET").unwrap_or_default().replace('-', "_");
    for name in TOOL_ENV {
        for n in [name.to_string(), format!("{name}_{target}")] {
            if let Some(v) = var(&n) {
                h.update(format!("env {n}={v}\n"));
            }
        }
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub fn lib_dir(prefix: &Path) -> PathBuf {
    let lib64 = prefix.join("lib64");
    if lib64.is_dir() {
        lib64
    } else {
        prefix.join("lib")
    }
}

fn lib_name(cfg: &Config, name: &str) -> String {
    if cfg.dynamic {
        format!("lib{name}.so")
    } else {
        format!("lib{name}.a")
    }
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).expect("PATH entries")
}

fn check_cmake_installed() {
    let cmake = std::env::var("CMAKE").unwrap_or_else(|_| "cmake".into());
    if Command::new(&cmake).arg("--version").output().is_err() {
        panic!(
            "cmake was not found: llama-sys builds llama.cpp with it. Install it \
             (Debian/Ubuntu: `sudo apt-get install cmake g++`) or set CMAKE=/path/to/cmake."
        );
    }
}
