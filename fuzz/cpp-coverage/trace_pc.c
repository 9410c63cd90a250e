/* Edge coverage of llama.cpp for libFuzzer when llama.cpp is compiled by GCC
 * with -fsanitize-coverage=trace-pc,trace-cmp (scripts/fuzz --cpp-coverage).
 *
 * GCC's trace-pc calls __sanitizer_cov_trace_pc() at every basic block;
 * libFuzzer does not implement it (it takes Clang's pc-guard and 8-bit
 * counters). Here each call hashes the caller's address, combines it with the
 * previous block (AFL-style edges) and bumps a byte in a section named
 * __libfuzzer_extra_counters, which libFuzzer reads as extra coverage features
 * (`ft:`) and clears before each input. GCC's trace-cmp callbacks for integers
 * and switches are libFuzzer's own (they feed its table of recent compares);
 * the floating-point ones, which libFuzzer lacks, are no-ops. */
#include <stdint.h>

#define EDGES (1u << 16)

__attribute__((section("__libfuzzer_extra_counters"), used)) uint8_t llama_rs_fuzz_cpp_edges[EDGES];

static __thread uintptr_t prev_block;

void __sanitizer_cov_trace_pc(void) {
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    uintptr_t block = (pc ^ (pc >> 15) ^ (pc >> 29)) * 0x9E3779B1u;
    block = (block >> 7) & (EDGES - 1);
    llama_rs_fuzz_cpp_edges[block ^ prev_block]++;
    prev_block = block >> 1;
}

void __sanitizer_cov_trace_cmpf(float a, float b) {
    (void)a;
    (void)b;
}

void __sanitizer_cov_trace_cmpd(double a, double b) {
    (void)a;
    (void)b;
}
