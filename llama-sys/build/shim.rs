//! The C++ exception shim (`shim/shim.cpp`), compiled with the cc crate.

use std::path::Path;

pub fn compile(src: &Path) {
    println!("cargo:rerun-if-changed=shim/shim.cpp");
    println!("cargo:rerun-if-changed=shim/shim.h");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .file("shim/shim.cpp")
        .include("shim")
        .include(src.join("include"))
        // llama-ext.h (C++ staging API: memory breakdown) lives in src/.
        .include(src.join("src"))
        .include(src.join("ggml").join("include"))
        .compile("llama_rs_shim");
}
