//! Quantization: synthetic F16 models quantized with llama.cpp load and
//! generate; bad inputs are errors.

mod common;

use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
use llama_rs::{quantize, ContextParams, Error, Ftype, GenerateParams, Model, QuantizeParams, Sampler, StopReason};
use std::path::PathBuf;

fn f16_model(shape: ModelShape) -> PathBuf {
    SyntheticModel::new(shape)
        .vocab(VocabKind::Spm)
        .weight_type(WeightType::F16)
        .seed(common::SEED)
        .write_cached(llama_rs_suite::FIXTURE_DIR)
        .unwrap()
}

/// Quantizes, loads, and generates a few tokens.
fn quantize_and_generate(shape: ModelShape, ftype: Ftype, name: &str) -> Model {
    let input = f16_model(shape);
    let out = common::temp_dir(name).join(format!("{name}.gguf"));
    quantize(&input, &out, QuantizeParams::new(ftype).threads(2)).unwrap();
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
    let model = Model::load(&out).unwrap();
    {
        let mut ctx = model.new_context(ContextParams::default().n_ctx(256).n_batch(64).threads(2)).unwrap();
        let eos = model.vocab().eos().unwrap();
        let mut s = Sampler::builder(&model).logit_bias(&[(eos, f32::NEG_INFINITY)]).greedy().build().unwrap();
        let (_, stats) =
            ctx.generate_text(&mut s, "the quick brown fox", GenerateParams::default().max_tokens(8)).unwrap();
        assert_eq!(stats.generated_tokens, 8);
        assert_eq!(stats.stop_reason, StopReason::MaxTokens);
    }
    model
}

#[test]
fn f16_to_q4_k_m_loads_and_generates() {
    let m = quantize_and_generate(ModelShape::tiny_k(), Ftype::Q4_K_M, "q4_k_m");
    assert!(m.description().contains("Q4_K - Medium"), "{}", m.description());
}

#[test]
fn f16_to_q8_0_loads_and_generates() {
    let m = quantize_and_generate(ModelShape::tiny(), Ftype::Q8_0, "q8_0");
    assert!(m.description().contains("Q8_0"), "{}", m.description());
}

#[test]
fn f16_to_q4_0_loads_and_generates() {
    let m = quantize_and_generate(ModelShape::tiny(), Ftype::Q4_0, "q4_0");
    assert!(m.description().contains("Q4_0"), "{}", m.description());
}

#[test]
fn ftype_names_round_trip() {
    for t in Ftype::ALL {
        assert_eq!(t.name().parse::<Ftype>().unwrap(), t);
    }
    assert!("q4_k_m".parse::<Ftype>().is_ok());
    assert!("Q9_X".parse::<Ftype>().is_err());
}

#[test]
fn missing_input_is_error() {
    let dir = common::temp_dir("quant-missing");
    let r = quantize(&dir.join("nope.gguf"), &dir.join("out.gguf"), QuantizeParams::new(Ftype::Q8_0));
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
}

#[test]
fn output_over_input_is_error() {
    let input = f16_model(ModelShape::tiny());
    let r = quantize(&input, &input, QuantizeParams::new(Ftype::Q8_0));
    assert!(matches!(r, Err(Error::Quantize { .. })), "{r:?}");
    // Still a valid model afterwards.
    Model::load_with(&input, llama_rs::ModelParams::default().vocab_only(true)).unwrap();
}

#[test]
fn garbage_input_is_error() {
    let dir = common::temp_dir("quant-garbage");
    let input = dir.join("garbage.gguf");
    std::fs::write(&input, b"GGUF this is not a model").unwrap();
    let r = quantize(&input, &dir.join("out.gguf"), QuantizeParams::new(Ftype::Q8_0));
    assert!(matches!(r, Err(Error::InvalidModel { .. }) | Err(Error::Quantize { .. })), "{r:?}");
}

#[test]
fn unwritable_output_is_error() {
    let input = f16_model(ModelShape::tiny());
    let dir = common::temp_dir("quant-unwritable");
    let r = quantize(&input, &dir.join("no/such/dir/out.gguf"), QuantizeParams::new(Ftype::Q8_0).threads(1));
    assert!(matches!(r, Err(Error::Quantize { .. }) | Err(Error::Exception { .. })), "{r:?}");
}

#[test]
fn zero_threads_is_error() {
    let input = f16_model(ModelShape::tiny());
    let dir = common::temp_dir("quant-threads");
    let r = quantize(&input, &dir.join("out.gguf"), QuantizeParams::new(Ftype::Q8_0).threads(0));
    assert!(matches!(r, Err(Error::InvalidParam { .. })), "{r:?}");
}
