//! With `LLAMA_RS_FUZZ_CPP_COVERAGE=1` (scripts/fuzz --cpp-coverage), links
//! cpp-coverage/trace_pc.c: the coverage callbacks of a llama.cpp compiled
//! with GCC's -fsanitize-coverage=trace-pc,trace-cmp.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(cpp_coverage)");
    println!("cargo:rerun-if-env-changed=LLAMA_RS_FUZZ_CPP_COVERAGE");
    println!("cargo:rerun-if-changed=cpp-coverage/trace_pc.c");
    if std::env::var("LLAMA_RS_FUZZ_CPP_COVERAGE").is_ok_and(|v| v == "1") {
        cc::Build::new().file("cpp-coverage/trace_pc.c").opt_level(2).warnings(true).compile("llama_rs_fuzz_trace_pc");
        println!("cargo:rustc-cfg=cpp_coverage");
        // libFuzzer defines a placeholder __sanitizer_cov_trace_pc (a warning
        // that GCC's trace-pc is deprecated); ours comes first on the link line
        // and must win.
        println!("cargo:rustc-link-arg-bins=-Wl,--allow-multiple-definition");
    }
}
