//! As `metadata`, on the real model of the tests, SmolLM2-135M-Instruct Q4_1
//! (`scripts/fetch-model` caches it): its 30 layers, 49,152-token BPE
//! vocabulary, merges and chat template are the structure being mutated.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llama_rs_fuzz::metadata::{exercise, scratch, write_mutated, Input, Seed};
use llama_rs_fuzz::real_model_path;
use std::sync::OnceLock;

fn seed() -> &'static Seed {
    static SEED: OnceLock<Seed> = OnceLock::new();
    SEED.get_or_init(|| Seed::open(&real_model_path()))
}

fuzz_target!(
    init: {
        llama_rs_fuzz::init();
        seed();
    },
    |input: Input| {
        let path = scratch("metadata_real");
        if write_mutated(seed(), &input, path) {
            exercise(path, input.decode_tokens);
        }
    }
);
