//! Build script of llama-sys: obtain the pinned llama.cpp tree, build it with
//! cmake (once per configuration, shared by every build of the workspace),
//! compile the C++ exception shim, emit link lines, and provide the bindings.
//! `main` only dispatches; each step lives in its own module.

mod bindings;
mod cmake_build;
mod config;
mod link;
mod shim;
mod source;

fn main() {
    let cfg = config::Config::from_env();
    if cfg.docs_rs {
        // docs.rs has neither network nor time for llama.cpp: rustdoc needs
        // only the committed bindings, so nothing is fetched, built or linked.
        println!("cargo:rustc-env=LLAMA_SYS_BACKEND_DIR=");
        bindings::committed();
        return;
    }
    let src = source::llama_cpp_dir(&cfg);
    if cfg.rpc && config::var("LLAMA_CPP_DIR").is_some() {
        println!(
            "cargo:warning=LLAMA_CPP_DIR is set: llama-sys/patches are not applied to it, so llama-rs refuses \
             RPC servers (the unpatched client aborts the process when a server fails)"
        );
    }
    let built = cmake_build::build(&cfg, &src);
    // The shim references llama symbols, so it must precede them on the link line.
    shim::compile(&src);
    link::emit(&cfg, &built);
    bindings::emit(&src);

    // Metadata for crates that depend on llama-sys (`DEP_LLAMA_*`).
    println!("cargo:root={}", built.prefix.display());
    println!("cargo:include={}", src.join("include").display());
    println!("cargo:src={}", src.display());
    println!("cargo:lib={}", built.lib_dir.display());
    println!("cargo:backends={}", cfg.backends().join(","));
}
