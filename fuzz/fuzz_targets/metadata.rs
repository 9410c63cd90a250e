//! Model metadata: the values of the keys of the project's synthetic models
//! (and of every key the validator's allow-list knows) are changed, the file
//! written with the seed's tensor data and used: load, contexts with and
//! without embeddings, one decode, outputs read. See `fuzz/src/metadata.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llama_rs::synthetic::{SyntheticModel, VocabKind, WeightType};
use llama_rs_fuzz::metadata::{exercise, scratch, write_mutated, Input, Seed};
use llama_rs_fuzz::{fixture_dir, micro_shape, tiny_model, SEED};
use std::sync::OnceLock;

fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut models = Vec::new();
        for vocab in [VocabKind::Spm, VocabKind::Bpe] {
            models.push(SyntheticModel::new(micro_shape(vocab, WeightType::F32)).vocab(vocab).seed(SEED));
            models.push(tiny_model(vocab));
        }
        models.iter().map(|m| Seed::open(&m.write_cached(fixture_dir()).expect("write a seed model"))).collect()
    })
}

fuzz_target!(
    init: {
        llama_rs_fuzz::init();
        eprintln!("metadata: {} seed models", seeds().len());
    },
    |input: Input| {
        let seeds = seeds();
        let path = scratch("metadata");
        if write_mutated(&seeds[usize::from(input.seed) % seeds.len()], &input, path) {
            exercise(path, input.decode_tokens);
        }
    }
);
