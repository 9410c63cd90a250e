//! LoRA adapters and control vectors on the tiny synthetic model: the logit
//! change of an adapter on the output projection equals an independent
//! computation, scales act linearly, removing restores the base exactly, and
//! every bad adapter or vector is an error (docs/SAFETY.md, L1-L3, P4, T2).

mod common;

use common::edit::Edit;
use common::{assert_child_ok, in_child, run_in_child, temp_dir, tiny, tiny_path, SEED};
use llama_rs::synthetic::{Architecture, ModelShape, SyntheticLora, SyntheticModel, VocabKind, WeightType};
use llama_rs::{Batch, Context, ContextParams, Error, LoraAdapter, Model, Pooling, Token};
use std::path::PathBuf;
use std::sync::Arc;

/// The generator settings of `common::tiny()`.
fn tiny_synthetic() -> SyntheticModel {
    SyntheticModel::new(ModelShape::tiny()).vocab(VocabKind::Spm).weight_type(WeightType::F32).seed(SEED)
}

const PROMPT: [Token; 6] = [Token(1), Token(300), Token(301), Token(302), Token(40), Token(41)];
const N_EMBD: usize = 64;
const N_VOCAB: usize = 1024;

fn params() -> ContextParams {
    ContextParams::default().n_ctx(256).threads(2)
}

/// Decodes PROMPT from an empty cache; the last row's logits.
fn logits(ctx: &mut Context<'_>) -> Vec<f32> {
    ctx.clear_kv(false);
    let mut b = Batch::new(PROMPT.len(), 1).unwrap();
    b.add_sequence(&PROMPT, 0, 0, true).unwrap();
    ctx.decode(&mut b).unwrap();
    ctx.logits(PROMPT.len() as i32 - 1).unwrap().to_vec()
}

/// The final normed hidden state of PROMPT's last token: what the output
/// projection multiplies (an embeddings context's row, pooling none).
fn hidden_state(m: &Model) -> Vec<f32> {
    let mut ctx = m.new_context(params().embeddings(true).pooling(Pooling::None)).unwrap();
    let mut b = Batch::new(PROMPT.len(), 1).unwrap();
    b.add_sequence(&PROMPT, 0, 0, true).unwrap();
    ctx.decode(&mut b).unwrap();
    ctx.embeddings(PROMPT.len() as i32 - 1).unwrap().to_vec()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn file(name: &str) -> PathBuf {
    temp_dir(&format!("adapters-{name}")).join(format!("{name}.gguf"))
}

/// A rank-2 adapter on `output.weight` with known values: A is 2 x 64, B is
/// 1024 x 2 (ggml order, see SyntheticLora::target_values).
struct Known {
    a: Vec<f32>,
    b: Vec<f32>,
}

fn known(phase: f32) -> Known {
    let a = (0..2 * N_EMBD).map(|i| 0.1 * (i as f32 * 0.37 + phase).sin()).collect();
    let b = (0..N_VOCAB * 2).map(|i| 0.05 * (i as f32 * 0.11 + phase).cos()).collect();
    Known { a, b }
}

impl Known {
    fn write(&self, name: &str, alpha: Option<f32>) -> PathBuf {
        let path = file(name);
        let mut l =
            SyntheticLora::new(&tiny_synthetic()).target_values("output.weight", 2, self.a.clone(), self.b.clone());
        if let Some(alpha) = alpha {
            l = l.alpha(alpha);
        }
        l.write(&path).unwrap();
        path
    }

    /// `factor * B (A h)`, in f64.
    fn delta(&self, h: &[f32], factor: f64) -> Vec<f32> {
        let ah: Vec<f64> = self
            .a
            .chunks(N_EMBD)
            .map(|row| row.iter().zip(h).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum())
            .collect();
        self.b
            .chunks(2)
            .map(|row| (factor * row.iter().zip(&ah).map(|(x, y)| f64::from(*x) * y).sum::<f64>()) as f32)
            .collect()
    }
}

/// The logit change of an adapter on the output projection is
/// `scale * alpha / rank * B (A h)`, computed here from the hidden state `h`
/// and the adapter's values.
///
/// Tolerance 1e-5: both sides multiply the same f32 values (64 and 2 terms of
/// magnitude < 1), here in f64, on the same hidden state (one sequence of 6
/// tokens, the same attention kernel); measured maximum 4.5e-8, for changes
/// of up to 0.24.
#[test]
fn an_output_lora_changes_the_logits_as_computed() {
    let m = tiny();
    let k = known(0.0);
    let adapter = LoraAdapter::load(m, k.write("known", Some(4.0))).unwrap();
    assert_eq!(adapter.alpha(), 4.0);
    let mut ctx = m.new_context(params()).unwrap();
    let base = logits(&mut ctx);
    let h = hidden_state(m);
    let mut max = 0f32;
    for scale in [1.0f32, 0.5, -2.0] {
        ctx.set_lora(&[(&adapter, scale)]).unwrap();
        let got = logits(&mut ctx);
        let want = k.delta(&h, f64::from(scale) * 4.0 / 2.0);
        let diff: Vec<f32> = got.iter().zip(&base).map(|(g, b)| g - b).collect();
        let largest = max_abs_diff(&diff, &vec![0.0; N_VOCAB]);
        println!("scale {scale}: largest logit change {largest}");
        assert!(largest > 0.05, "the adapter changes the logits");
        max = max.max(max_abs_diff(&diff, &want));
    }
    println!("logit change vs B(Ah): max abs difference {max:e}");
    assert!(max <= 1e-5, "{max}");
    // Without alpha, the scale is used as is.
    let plain = LoraAdapter::load(m, k.write("known-no-alpha", None)).unwrap();
    assert_eq!(plain.alpha(), 0.0);
    ctx.set_lora(&[(&plain, 1.0)]).unwrap();
    let got = logits(&mut ctx);
    let diff: Vec<f32> = got.iter().zip(&base).map(|(g, b)| g - b).collect();
    assert!(max_abs_diff(&diff, &k.delta(&h, 1.0)) <= 1e-5);
}

/// Scale 0 is the base model bit for bit; so is removing the adapters;
/// scales act linearly, and two adapters add.
///
/// Tolerance for the linear relations 1e-5 (measured 6.0e-8): the change is
/// one product added after the output projection, so doubling the scale
/// doubles it up to the rounding of that addition.
#[test]
fn scales_are_linear_and_removing_restores_the_base() {
    let m = tiny();
    let (k1, k2) = (known(0.0), known(1.0));
    let a1 = LoraAdapter::load(m, k1.write("lin1", None)).unwrap();
    let a2 = LoraAdapter::load(m, k2.write("lin2", None)).unwrap();
    let mut ctx = m.new_context(params()).unwrap();
    let base = logits(&mut ctx);
    ctx.set_lora(&[(&a1, 0.0)]).unwrap();
    assert!(ctx.lora().is_empty(), "a zero scale leaves the adapter out");
    assert_eq!(logits(&mut ctx), base, "scale 0 = base, exactly");
    fn delta<'m>(ctx: &mut Context<'m>, set: &[(&LoraAdapter<'m>, f32)], base: &[f32]) -> Vec<f32> {
        ctx.set_lora(set).unwrap();
        logits(ctx).iter().zip(base).map(|(g, b)| g - b).collect()
    }
    let d1 = delta(&mut ctx, &[(&a1, 1.0)], &base);
    let d1x2 = delta(&mut ctx, &[(&a1, 2.0)], &base);
    let d1neg = delta(&mut ctx, &[(&a1, -1.0)], &base);
    let d2 = delta(&mut ctx, &[(&a2, 1.0)], &base);
    let both = delta(&mut ctx, &[(&a1, 1.0), (&a2, 1.0)], &base);
    assert_eq!(ctx.lora().len(), 2);
    let twice: Vec<f32> = d1.iter().map(|x| 2.0 * x).collect();
    let neg: Vec<f32> = d1.iter().map(|x| -x).collect();
    let sum: Vec<f32> = d1.iter().zip(&d2).map(|(x, y)| x + y).collect();
    let max = [max_abs_diff(&d1x2, &twice), max_abs_diff(&d1neg, &neg), max_abs_diff(&both, &sum)]
        .into_iter()
        .fold(0.0, f32::max);
    println!("linearity: max abs difference {max:e}");
    assert!(max <= 1e-5, "{max}");
    // The same set in another order is the same set (no change, no rebuild).
    ctx.set_lora(&[(&a2, 1.0), (&a1, 1.0)]).unwrap();
    assert_eq!(ctx.lora().len(), 2);
    ctx.clear_lora();
    assert!(ctx.lora().is_empty());
    assert_eq!(logits(&mut ctx), base, "removed = base, exactly");
    ctx.set_lora(&[(&a1, 1.0)]).unwrap();
    ctx.set_lora(&[]).unwrap();
    assert_eq!(logits(&mut ctx), base);
}

/// An adapter inside the network (a random rank-4 pair on a query
/// projection) changes the logits; one on every projection of a layer too.
#[test]
fn a_layer_lora_changes_the_logits() {
    let m = tiny();
    let path = file("layer");
    SyntheticLora::new(&tiny_synthetic())
        .alpha(8.0)
        .target("blk.0.attn_q.weight", 4)
        .target("blk.1.ffn_down.weight", 4)
        .target("token_embd.weight", 4)
        .write(&path)
        .unwrap();
    let adapter = LoraAdapter::load(m, &path).unwrap();
    let mut ctx = m.new_context(params()).unwrap();
    let base = logits(&mut ctx);
    ctx.set_lora(&[(&adapter, 1.0)]).unwrap();
    let with = logits(&mut ctx);
    assert!(with.iter().all(|x| x.is_finite()));
    assert!(max_abs_diff(&with, &base) > 1e-3, "{}", max_abs_diff(&with, &base));
}

#[test]
fn adapter_metadata_is_read() {
    let m = tiny();
    let path = file("meta");
    SyntheticLora::new(&tiny_synthetic())
        .alpha(16.0)
        .alora_invocation_tokens(&[7, 8, 9])
        .target("output.weight", 2)
        .write(&path)
        .unwrap();
    let a = LoraAdapter::load(m, &path).unwrap();
    assert_eq!(a.alpha(), 16.0);
    assert_eq!(a.alora_invocation_tokens(), &[Token(7), Token(8), Token(9)]);
    assert_eq!(a.meta("adapter.type").as_deref(), Some("lora"));
    assert_eq!(a.meta("general.type").as_deref(), Some("adapter"));
    assert_eq!(a.meta("no.such.key"), None);
    let all = a.metadata();
    assert!(all.iter().any(|(k, v)| k == "general.architecture" && v == "llama"), "{all:?}");
    assert_eq!(a.path(), path);
    assert!(std::ptr::eq(a.model(), m));
    let b = a.clone();
    assert!(a.same(&b));
    assert!(!a.same(&LoraAdapter::load(m, &path).unwrap()), "loaded twice: two adapters");
    assert!(LoraAdapter::load(m, file_with_plain_lora()).unwrap().alora_invocation_tokens().is_empty());
}

fn file_with_plain_lora() -> PathBuf {
    let path = file("plain");
    SyntheticLora::new(&tiny_synthetic()).target("output.weight", 1).write(&path).unwrap();
    path
}

fn adapter_error(result: llama_rs::Result<LoraAdapter<'_>>) -> String {
    match result {
        Err(Error::Adapter { message, .. }) => message,
        Err(other) => panic!("expected Error::Adapter, got {other}"),
        Ok(_) => panic!("expected Error::Adapter, the adapter loaded"),
    }
}

/// An adapter made for a model of another shape, a model file, a missing
/// file, an adapter of another architecture or type: errors that say why.
#[test]
fn adapters_that_do_not_fit_are_errors() {
    let m = tiny();
    let other = SyntheticModel::new(ModelShape { n_embd: 128, n_ff: 256, ..ModelShape::tiny() });
    let path = file("other-shape");
    SyntheticLora::new(&other).target("output.weight", 2).write(&path).unwrap();
    let msg = adapter_error(LoraAdapter::load(m, &path));
    assert!(msg.contains("output.weight") && msg.contains("128") && msg.contains("another model"), "{msg}");

    let msg = adapter_error(LoraAdapter::load(m, tiny_path(VocabKind::Spm)));
    assert!(msg.contains("general.type") && msg.contains("model file"), "{msg}");
    assert!(matches!(LoraAdapter::load(m, "/no/such/lora.gguf"), Err(Error::Io { .. })));
    let garbage = file("garbage");
    std::fs::write(&garbage, b"not a gguf file at all").unwrap();
    adapter_error(LoraAdapter::load(m, &garbage));

    let qwen = SyntheticModel::new(ModelShape::tiny()).architecture(Architecture::Qwen3);
    let path = file("qwen");
    SyntheticLora::new(&qwen).target("output.weight", 2).write(&path).unwrap();
    let msg = adapter_error(LoraAdapter::load(m, &path));
    assert!(msg.contains("qwen3") && msg.contains("llama"), "{msg}");

    let cvec = Edit::open(&file_with_plain_lora()).str("adapter.type", "control_vector").write(&file("cvec-type"));
    assert!(adapter_error(LoraAdapter::load(m, &cvec)).contains("adapter.type"));

    let lone = file("lone");
    SyntheticLora::new(&tiny_synthetic()).tensor("output.weight.lora_a", 64, 2, vec![0.0; 128]).write(&lone).unwrap();
    assert!(adapter_error(LoraAdapter::load(m, &lone)).contains("only one of"));
    let unknown = file("unknown-tensor");
    SyntheticLora::new(&tiny_synthetic())
        .tensor("blk.9.attn_q.weight.lora_a", 64, 2, vec![0.0; 128])
        .tensor("blk.9.attn_q.weight.lora_b", 2, 64, vec![0.0; 128])
        .write(&unknown)
        .unwrap();
    assert!(adapter_error(LoraAdapter::load(m, &unknown)).contains("does not exist in the model"));
    // A suffix llama.cpp does not know: llama.cpp's own refusal, with its message.
    let odd = file("odd-suffix");
    SyntheticLora::new(&tiny_synthetic()).tensor("output.weight.lora_c", 64, 2, vec![0.0; 128]).write(&odd).unwrap();
    assert!(adapter_error(LoraAdapter::load(m, &odd)).contains("unexpected suffix"));
    // A vocab-only model has no tensors to adapt.
    let vocab_only =
        Model::load_with(tiny_path(VocabKind::Spm), llama_rs::ModelParams::default().vocab_only(true)).unwrap();
    adapter_error(LoraAdapter::load(&vocab_only, file_with_plain_lora()));
}

/// L1: `general.type`, `general.architecture`, `adapter.type` of another
/// type than string, or `adapter.lora.alpha` of another type than f32,
/// aborted in gguf's type assert (`gguf.cpp:196`) inside
/// `llama_adapter_lora_init`. Refused before llama.cpp reads the file now.
#[test]
fn adapter_metadata_of_the_wrong_type_is_an_error() {
    const NAME: &str = "adapter_metadata_of_the_wrong_type_is_an_error";
    if in_child(NAME) {
        let m = tiny();
        let good = file_with_plain_lora();
        type EditFn = fn(Edit) -> Edit;
        let cases: [(&str, EditFn); 4] = [
            ("alpha", |e| e.u32("adapter.lora.alpha", 8)),
            ("general-type", |e| e.u32("general.type", 1)),
            ("architecture", |e| e.f32("general.architecture", 1.0)),
            ("adapter-type", |e| e.bool("adapter.type", true)),
        ];
        for (name, edit) in cases {
            let path = edit(Edit::open(&good)).write(&file(&format!("type-{name}")));
            let msg = adapter_error(LoraAdapter::load(m, &path));
            assert!(msg.contains("has type"), "{name}: {msg}");
            println!("{name}: {msg}");
        }
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Writes an adapter on `output.weight` whose `lora_a` has ggml type `ty`
/// (same element size as F32), patched into the tensor info.
fn with_tensor_type(ty: u32) -> PathBuf {
    let good = file_with_plain_lora();
    let mut bytes = std::fs::read(&good).unwrap();
    let name = b"output.weight.lora_a";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    assert_eq!(u32::from_le_bytes(bytes[ty_at..ty_at + 4].try_into().unwrap()), 0, "F32");
    bytes[ty_at..ty_at + 4].copy_from_slice(&ty.to_le_bytes());
    let path = file(&format!("tensor-type-{ty}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// L2: pairs llama.cpp loads but its graph cannot multiply: a `token_embd`
/// pair whose A and B ranks differ (llama.cpp checks the other dimensions
/// only) aborted at the first decode in `ggml_mul_mat`'s shape assert
/// (`ggml.c:3354`); an I32 tensor crashed it with SIGSEGV (no CPU dot product
/// for integers). Refused when the adapter is loaded now.
#[test]
fn adapter_tensors_llama_cpp_cannot_multiply_are_errors() {
    const NAME: &str = "adapter_tensors_llama_cpp_cannot_multiply_are_errors";
    if in_child(NAME) {
        let m = tiny();
        let path = file("embd-ranks");
        SyntheticLora::new(&tiny_synthetic())
            .tensor("token_embd.weight.lora_a", 3, N_VOCAB as u32, vec![0.01; 3 * N_VOCAB])
            .tensor("token_embd.weight.lora_b", 2, N_EMBD as u32, vec![0.01; 2 * N_EMBD])
            .write(&path)
            .unwrap();
        let msg = adapter_error(LoraAdapter::load(m, &path));
        assert!(msg.contains("token_embd.weight") && msg.contains("rank"), "{msg}");
        println!("{msg}");
        let msg = adapter_error(LoraAdapter::load(m, with_tensor_type(26))); // GGML_TYPE_I32
        assert!(msg.contains("i32"), "{msg}");
        println!("{msg}");
        // The same shapes with matching ranks, and F16 tensors: fine.
        let ok = file("embd-ok");
        SyntheticLora::new(&tiny_synthetic()).target("token_embd.weight", 3).write(&ok).unwrap();
        let a = LoraAdapter::load(m, &ok).unwrap();
        let mut ctx = m.new_context(params()).unwrap();
        ctx.set_lora(&[(&a, 1.0)]).unwrap();
        assert!(logits(&mut ctx).iter().all(|x| x.is_finite()));
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// L3: an adapter loaded for one model applied to a context of another
/// (same architecture, other shapes) aborted at the first decode in
/// `ggml_mul_mat`'s shape assert: llama.cpp finds the adapter's tensors by
/// name. Refused by `set_lora` now. Bad scales and duplicates too.
#[test]
fn adapters_of_another_model_and_bad_sets_are_errors() {
    const NAME: &str = "adapters_of_another_model_and_bad_sets_are_errors";
    if in_child(NAME) {
        let a = LoraAdapter::load(tiny(), file_with_plain_lora()).unwrap();
        // The same file loaded as another model.
        let other = Model::load(tiny_path(VocabKind::Spm)).unwrap();
        let mut ctx = other.new_context(params()).unwrap();
        match ctx.set_lora(&[(&a, 1.0)]) {
            Err(Error::InvalidParam { name: "LoRA adapter", reason, .. }) => {
                assert!(reason.contains("another model"), "{reason}");
                println!("refused: {reason}");
            }
            other => panic!("{other:?}"),
        }
        logits(&mut ctx);
        let mut ctx = tiny().new_context(params()).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            assert!(matches!(ctx.set_lora(&[(&a, bad)]), Err(Error::InvalidParam { name: "LoRA scale", .. })));
        }
        assert!(matches!(ctx.set_lora(&[(&a, 1.0), (&a.clone(), 2.0)]), Err(Error::InvalidParam { .. })));
        assert!(ctx.lora().is_empty(), "a refused set changes nothing");
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// The context keeps the adapters it applies: dropping the handle is fine,
/// and an adapter on an `Arc` model serves `'static` contexts on threads.
#[test]
fn contexts_keep_their_adapters_alive() {
    let m = tiny();
    let k = known(2.0);
    let path = k.write("alive", None);
    let mut ctx = m.new_context(params()).unwrap();
    let with = {
        let a = LoraAdapter::load(m, &path).unwrap();
        ctx.set_lora(&[(&a, 1.0)]).unwrap();
        logits(&mut ctx)
    }; // the handle is gone; the context still holds the adapter
    assert_eq!(logits(&mut ctx), with);
    drop(ctx);

    let model = Arc::new(Model::load(tiny_path(VocabKind::Spm)).unwrap());
    let adapter: LoraAdapter<'static> = LoraAdapter::load_owned(&model, &path).unwrap();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (model, adapter) = (Arc::clone(&model), adapter.clone());
            std::thread::spawn(move || {
                let mut ctx = model.new_owned_context(params().threads(1)).unwrap();
                ctx.set_lora(&[(&adapter, 1.0)]).unwrap();
                logits(&mut ctx)
            })
        })
        .collect();
    drop(adapter);
    drop(model);
    for h in handles {
        assert_eq!(h.join().unwrap(), with);
    }
}

/// Loading and dropping adapters on one model from several threads while a
/// context on it switches adapter sets and decodes (the model's adapter list
/// is written by the first two and read by the third's graph reservation).
#[test]
fn adapters_load_and_drop_while_another_thread_decodes() {
    let m = tiny();
    let path = file_with_plain_lora();
    let k = known(3.0);
    let known_path = k.write("threads", None);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..10 {
                    let a = LoraAdapter::load(m, &path).unwrap();
                    drop(a);
                }
            });
        }
        s.spawn(|| {
            let a = LoraAdapter::load(m, &known_path).unwrap();
            let mut ctx = m.new_context(params().threads(1)).unwrap();
            let base = logits(&mut ctx);
            ctx.set_lora(&[(&a, 1.0)]).unwrap();
            let with = logits(&mut ctx);
            for i in 0..10 {
                if i % 2 == 0 {
                    ctx.clear_lora();
                    assert_eq!(logits(&mut ctx), base);
                } else {
                    ctx.set_lora(&[(&a, 1.0)]).unwrap();
                    assert_eq!(logits(&mut ctx), with);
                }
            }
        });
    });
}

// ---------------------------------------------------------------------------
// Control vectors
// ---------------------------------------------------------------------------

/// A control vector on layer 1 (the tiny model has layers 0 and 1; llama.cpp
/// never applies one to layer 0) changes the logits; clearing restores them
/// exactly; a zero vector changes nothing.
#[test]
fn a_control_vector_changes_the_logits_and_clearing_restores_them() {
    let m = tiny();
    assert_eq!(m.n_layer(), 2);
    let mut ctx = m.new_context(params()).unwrap();
    let base = logits(&mut ctx);
    let direction: Vec<f32> = (0..N_EMBD).map(|i| 0.5 * (i as f32).sin()).collect();
    ctx.set_control_vector(&direction, 1..=1).unwrap();
    let with = logits(&mut ctx);
    assert!(max_abs_diff(&with, &base) > 1e-2, "{}", max_abs_diff(&with, &base));
    ctx.set_control_vector(&direction, ..).unwrap();
    assert_eq!(logits(&mut ctx), with, "`..` is layers 1..n_layer");
    ctx.clear_control_vector();
    assert_eq!(logits(&mut ctx), base);
    ctx.set_control_vector(&[0.0; N_EMBD], ..).unwrap();
    assert_eq!(logits(&mut ctx), base);
    // Twice the direction moves further.
    let double: Vec<f32> = direction.iter().map(|x| 2.0 * x).collect();
    ctx.set_control_vector(&double, 1..2).unwrap();
    assert!(max_abs_diff(&logits(&mut ctx), &base) > max_abs_diff(&with, &base));
}

#[test]
fn control_vectors_of_the_wrong_length_or_range_are_errors() {
    let m = tiny();
    let mut ctx = m.new_context(params()).unwrap();
    let base = logits(&mut ctx);
    let ok = vec![0.1f32; N_EMBD];
    for len in [0, N_EMBD - 1, N_EMBD + 1, 2 * N_EMBD] {
        match ctx.set_control_vector(&vec![0.1; len], ..) {
            Err(Error::InvalidParam { name: "control vector", reason, .. }) => {
                assert!(reason.contains("64"), "{reason}")
            }
            other => panic!("{len}: {other:?}"),
        }
    }
    for (range, name) in [((0u32, 1u32), "from 0"), ((1, 2), "past the last layer"), ((2, 2), "layer 2")] {
        let r = ctx.set_control_vector(&ok, range.0..=range.1);
        assert!(matches!(r, Err(Error::InvalidParam { name: "control vector layers", .. })), "{name}: {r:?}");
    }
    #[allow(clippy::reversed_empty_ranges)]
    let empty = ctx.set_control_vector(&ok, 1..1);
    assert!(empty.is_err());
    let mut nan = ok.clone();
    nan[5] = f32::NAN;
    assert!(matches!(ctx.set_control_vector(&nan, ..), Err(Error::InvalidParam { .. })));
    assert_eq!(logits(&mut ctx), base, "refused vectors change nothing");
    // SmolLM2's 30 layers: 29 directions of 576.
    let real = common::real_model();
    let mut ctx = real.new_context(params()).unwrap();
    assert!(ctx.set_control_vector(&vec![0.0; 576 * 30], ..).is_err());
    ctx.set_control_vector(&vec![0.0; 576 * 29], 10..=20).unwrap();
}

#[test]
fn lora_adapters_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<LoraAdapter<'static>>();
    send_sync::<LoraAdapter<'_>>();
}

/// Greedy tokens after PROMPT with `set` applied, by a plain loop of
/// decode and arg-max (independent of the engine).
fn greedy_alone(model: &Model, set: &[(&LoraAdapter<'_>, f32)], n: usize) -> Vec<Token> {
    let mut ctx = model.new_context(params()).unwrap();
    ctx.set_lora(set).unwrap();
    let mut b = Batch::new(PROMPT.len(), 1).unwrap();
    b.add_sequence(&PROMPT, 0, 0, true).unwrap();
    ctx.decode(&mut b).unwrap();
    let mut out = Vec::new();
    let mut row = PROMPT.len() as i32 - 1;
    for k in 0..n {
        let logits = ctx.logits(row).unwrap();
        let best = (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best });
        out.push(Token(best as i32));
        b.clear();
        b.add(Token(best as i32), (PROMPT.len() + k) as i32, &[0], true).unwrap();
        ctx.decode(&mut b).unwrap();
        row = 0;
    }
    out
}

#[test]
fn the_engine_decodes_each_request_with_its_adapters() {
    use llama_rs::{Engine, EngineParams, Request, SamplingParams};
    let model = Arc::new(Model::load_with(tiny_path(VocabKind::Spm), llama_rs::ModelParams::default()).unwrap());
    let path = file("engine");
    SyntheticLora::new(&tiny_synthetic()).target("output.weight", 4).alpha(16.0).write(&path).unwrap();
    let lora = LoraAdapter::load_owned(&model, &path).unwrap();
    const N: usize = 12;
    let sets: [Vec<(LoraAdapter<'static>, f32)>; 3] = [vec![], vec![(lora.clone(), 1.0)], vec![(lora.clone(), 0.5)]];
    let alone: Vec<Vec<Token>> =
        sets.iter().map(|set| greedy_alone(&model, &set.iter().map(|(a, s)| (a, *s)).collect::<Vec<_>>(), N)).collect();
    // The adapter must change the output for this test to mean anything.
    assert_ne!(alone[0], alone[1]);
    assert_ne!(alone[1], alone[2]);

    let ctx = ContextParams::default().n_ctx(1024).threads(2);
    let engine = Engine::new(model.clone(), EngineParams::default().n_slots(4).context(ctx.clone())).unwrap();
    let request = |k: usize| {
        Request::tokens(PROMPT.to_vec())
            .lora(sets[k % 3].clone())
            .sampling(SamplingParams::greedy())
            .ignore_eos(true)
            .max_tokens(N)
    };
    // Nine requests of three sets at once, on four slots.
    let handles = engine.submit_all((0..9).map(request)).unwrap();
    for (k, h) in handles.into_iter().enumerate() {
        let c = h.wait().unwrap();
        assert_eq!(c.tokens, alone[k % 3], "request {k} (set {})", k % 3);
    }
    // A cached prefix is reused only by a request with the same adapters
    // (one slot: its cache is the only one).
    let one = Engine::new(model.clone(), EngineParams::default().n_slots(1).context(ctx.clone())).unwrap();
    let cached = |k: usize| one.submit(request(k)).unwrap().wait().unwrap().finished.stats.cached_tokens;
    assert_eq!(cached(1), 0);
    assert!(cached(1) > 0, "the same set reuses the prompt");
    assert_eq!(cached(0), 0, "no adapters: the cells computed with one are not reused");
    assert!(cached(0) > 0);
    assert_eq!(cached(2), 0, "another scale is another set");
    // An adapter of another model is an error of submit.
    let other = Arc::new(Model::load_with(tiny_path(VocabKind::Spm), llama_rs::ModelParams::default()).unwrap());
    let foreign = LoraAdapter::load_owned(&other, &path).unwrap();
    assert!(matches!(engine.submit(request(0).lora([(foreign, 1.0)])), Err(Error::InvalidParam { .. })));
}
