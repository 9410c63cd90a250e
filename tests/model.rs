//! Loading, model information, vocabulary round trips, and the load-time
//! checks (split settings, devices, overrides, callbacks).

mod common;

use common::{tiny, tiny_bpe, tiny_path};
use llama_rs::synthetic::{ModelShape, VocabKind};
use llama_rs::{AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial};
use llama_rs::{Error, KvOverride, Model, ModelParams, SplitMode, Token, VocabType};

#[test]
fn info_matches_the_synthetic_shape() {
    let shape = ModelShape::tiny();
    let m = tiny();
    assert_eq!(m.architecture(), "llama");
    assert_eq!(m.n_layer(), shape.n_layer);
    assert_eq!(m.n_embd(), shape.n_embd);
    assert_eq!(m.n_head(), shape.n_head);
    assert_eq!(m.n_head_kv(), shape.n_head_kv);
    assert_eq!(m.n_ctx_train(), shape.n_ctx_train);
    assert_eq!(m.n_params(), shape.n_params());
    assert_eq!(m.vocab().n_tokens() as u32, shape.n_vocab);
    assert!(m.size() > 0);
    assert!(m.description().starts_with("llama"), "{}", m.description());
    let meta = m.metadata();
    assert!(meta.iter().any(|(k, v)| k == "general.architecture" && v == "llama"), "{meta:?}");
    assert_eq!(m.meta("llama.block_count").as_deref(), Some(shape.n_layer.to_string().as_str()));
    assert_eq!(m.meta("no.such.key"), None);
    // By default the model goes to the discrete GPUs, if any (none in CI).
    assert_eq!(m.devices(), &llama_rs::default_gpus(false)[..]);
}

#[test]
fn devices_list_the_cpu() {
    let devices = llama_rs::devices();
    assert!(devices.iter().any(|d| d.kind == llama_rs::DeviceKind::Cpu), "{devices:?}");
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d.index, i);
        assert!(!d.name.is_empty());
    }
}

fn round_trip(m: &Model, text: &str) {
    let v = m.vocab();
    let tokens = v.tokenize(text, AddSpecial::No, ParseSpecial::No).unwrap();
    assert!(!tokens.is_empty());
    assert!(tokens.iter().all(|t| t.0 >= 0 && t.0 < v.n_tokens()));
    assert_eq!(v.detokenize(&tokens, RemoveSpecial::No, RenderSpecial::No).unwrap(), text, "tokens {tokens:?}");
    // Pieces concatenated give the same bytes (byte tokens may split a character).
    let mut bytes = Vec::new();
    for &t in &tokens {
        v.token_to_piece_into(t, RenderSpecial::No, &mut bytes).unwrap();
    }
    let joined = String::from_utf8(bytes).unwrap();
    assert_eq!(joined.trim_start(), text.trim_start());
}

#[test]
fn spm_vocab_round_trips_text() {
    assert_eq!(tiny().vocab().vocab_type(), VocabType::Spm);
    for text in ["Hello world", "the cat sat on the mat", "héllo wörld, ça va? 😀 日本語", "a\nb\tc  d"] {
        round_trip(tiny(), text);
    }
}

#[test]
fn bpe_vocab_round_trips_text() {
    assert_eq!(tiny_bpe().vocab().vocab_type(), VocabType::Bpe);
    for text in ["Hello world", "the cat sat on the mat", "héllo wörld, ça va? 😀 日本語", "a\nb\tc  d"] {
        round_trip(tiny_bpe(), text);
    }
}

#[test]
fn tokenize_adds_bos_when_asked() {
    let v = tiny().vocab();
    let bos = v.bos().expect("synthetic SPM has BOS");
    let with = v.tokenize("hello", AddSpecial::Yes, ParseSpecial::No).unwrap();
    let without = v.tokenize("hello", AddSpecial::No, ParseSpecial::No).unwrap();
    assert_eq!(with[0], bos);
    assert_eq!(&with[1..], &without[..]);
    assert!(v.is_eog(v.eos().unwrap()));
    assert!(!v.is_eog(with[1]));
}

#[test]
fn bad_token_ids_are_errors() {
    let v = tiny().vocab();
    let n = v.n_tokens();
    for bad in [Token(-1), Token(n), Token(i32::MAX), Token(i32::MIN)] {
        assert!(
            matches!(v.token_to_piece(bad, RenderSpecial::No), Err(Error::InvalidToken { token, n_vocab }) if token == bad.0 && n_vocab == n)
        );
        assert!(matches!(v.token_text(bad), Err(Error::InvalidToken { .. })));
        assert!(matches!(v.token_score(bad), Err(Error::InvalidToken { .. })));
        assert!(matches!(
            v.detokenize(&[Token(1), bad], RemoveSpecial::No, RenderSpecial::No),
            Err(Error::InvalidToken { .. })
        ));
        assert!(!v.is_eog(bad));
        assert!(!v.is_control(bad));
    }
    let msg = v.token_text(Token(n)).unwrap_err().to_string();
    assert!(msg.contains(&n.to_string()), "{msg}");
}

#[test]
fn vocab_only_model_tokenizes_but_has_no_context() {
    let m = Model::load_with(tiny_path(VocabKind::Spm), ModelParams::default().vocab_only(true)).unwrap();
    assert!(m.is_vocab_only());
    assert_eq!(
        m.vocab().tokenize("hello world", AddSpecial::No, ParseSpecial::No).unwrap(),
        tiny().vocab().tokenize("hello world", AddSpecial::No, ParseSpecial::No).unwrap()
    );
    assert!(matches!(m.new_context(Default::default()), Err(Error::ContextCreate { .. })));
}

#[test]
fn kv_override_changes_metadata() {
    let p = ModelParams::default().kv_override("llama.context_length", KvOverride::Int(1234));
    let m = Model::load_with(tiny_path(VocabKind::Spm), p).unwrap();
    assert_eq!(m.n_ctx_train(), 1234);
    let long_key = "k".repeat(200);
    let p = ModelParams::default().kv_override(&long_key, KvOverride::Int(1));
    assert!(matches!(Model::load_with(tiny_path(VocabKind::Spm), p), Err(Error::InvalidParam { .. })));
    let p = ModelParams::default().kv_override("general.name", KvOverride::Str("x".repeat(128)));
    assert!(matches!(Model::load_with(tiny_path(VocabKind::Spm), p), Err(Error::InvalidParam { .. })));
}

#[test]
fn progress_callback_sees_progress_and_can_cancel() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let p = ModelParams::default().progress(move |x| {
        s.lock().unwrap().push(x);
        true
    });
    Model::load_with(tiny_path(VocabKind::Spm), p).unwrap();
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    assert_eq!(*seen.last().unwrap(), 1.0);

    let p = ModelParams::default().progress(|_| false);
    assert!(matches!(Model::load_with(tiny_path(VocabKind::Spm), p), Err(Error::LoadCancelled { .. })));
}

#[test]
fn synthetic_writer_reports_progress_up_to_the_file_size() {
    use llama_rs::synthetic::{SyntheticModel, WeightType};
    let dir = common::temp_dir("synthetic-progress");
    // Q8_0 of tiny_k: tensors of several chunks' worth of rows, many reports.
    let m = SyntheticModel::new(ModelShape::tiny_k()).weight_type(WeightType::Q8_0).seed(3);
    let mut calls = Vec::new();
    let path = m.write_cached_with_progress(&dir, |done, total| calls.push((done, total))).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(calls.first(), Some(&(0, size)), "{calls:?}");
    assert_eq!(calls.last(), Some(&(size, size)));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1), "{calls:?}");
    assert!(calls.len() > 2 && calls.len() <= 300, "{} calls", calls.len());
    // A cached file is not written again, and no progress is reported.
    let again = m.write_cached_with_progress(&dir, |_, _| panic!("nothing to write")).unwrap();
    assert_eq!(again, path);
    // write_with_progress gives the same bytes as write.
    let other = dir.join("other.gguf");
    let mut last = None;
    m.write_with_progress(&other, |done, total| last = Some((done, total))).unwrap();
    assert_eq!(last, Some((size, size)));
    assert_eq!(std::fs::read(&other).unwrap(), std::fs::read(&path).unwrap());
    // Invalid parameters: an error before any report.
    let bad = SyntheticModel::new(ModelShape { n_head: 3, ..ModelShape::tiny() });
    assert!(bad.write_with_progress(dir.join("bad.gguf"), |_, _| panic!("no report")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn panicking_progress_callback_is_an_error() {
    let p = ModelParams::default().progress(|_| panic!("boom in callback"));
    match Model::load_with(tiny_path(VocabKind::Spm), p) {
        Err(Error::CallbackPanic { message }) => assert!(message.contains("boom in callback")),
        other => panic!("expected CallbackPanic, got {other:?}"),
    }
}

#[test]
fn missing_or_bogus_files_are_errors() {
    let err = Model::load("/nonexistent/model.gguf").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    let dir = common::temp_dir("bogus");
    let p = dir.join("bogus.gguf");
    std::fs::write(&p, b"this is not a gguf file at all").unwrap();
    assert!(Model::load(&p).is_err());
    assert!(Model::load("with\0nul.gguf").is_err());
}

#[test]
fn split_settings_are_validated_before_loading() {
    let path = tiny_path(VocabKind::Spm);
    let load = |p: ModelParams| Model::load_with(&path, p);
    // Negative, NaN and infinite entries.
    for (i, bad) in [(0usize, -1.0f32), (0, f32::NAN), (0, f32::INFINITY)] {
        match load(ModelParams::default().tensor_split(&[bad])) {
            Err(Error::TensorSplit { index, .. }) => assert_eq!(index, i),
            other => panic!("expected TensorSplit error for {bad}, got {other:?}"),
        }
    }
    match load(ModelParams::default().tensor_split(&[1.0, -0.5])) {
        Err(Error::TensorSplit { index, value, .. }) => assert_eq!((index, value), (1, -0.5)),
        other => panic!("{other:?}"),
    }
    // All zero when explicit.
    assert!(matches!(load(ModelParams::default().tensor_split(&[0.0])), Err(Error::InvalidParam { .. })));
    // More entries than devices (no GPU here: zero devices).
    let err = load(ModelParams::default().tensor_split(&[3.0, 1.0])).unwrap_err();
    assert!(err.to_string().contains("2 entries for 0 device"), "{err}");
    // More than llama.cpp's device limit.
    assert!(matches!(load(ModelParams::default().tensor_split(&[1.0; 17])), Err(Error::InvalidParam { .. })));
    // Tensor mode needs GPUs.
    assert!(matches!(
        load(ModelParams::default().split_mode(SplitMode::Tensor)),
        Err(Error::SplitMode { mode: "tensor", .. })
    ));
    // Device indices: out of range, and the CPU is not a GPU.
    let n = llama_rs::devices().len();
    assert!(
        matches!(load(ModelParams::default().devices(&[n + 3])), Err(Error::DeviceOutOfRange { index, count }) if index == n + 3 && count == n)
    );
    assert!(matches!(load(ModelParams::default().devices(&[0])), Err(Error::InvalidParam { .. })));
    // Split mode names parse.
    assert_eq!("tensor".parse::<SplitMode>().unwrap(), SplitMode::Tensor);
    assert!("rows".parse::<SplitMode>().is_err());
}

#[test]
fn cpu_only_split_modes_load() {
    let path = tiny_path(VocabKind::Spm);
    for mode in [SplitMode::None, SplitMode::Layer, SplitMode::Row] {
        let m = Model::load_with(&path, ModelParams::default().split_mode(mode).devices(&[])).unwrap();
        assert_eq!(m.split_mode(), mode);
        assert!(m.devices().is_empty());
    }
}

#[test]
fn model_and_vocab_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Model>();
    send_sync::<llama_rs::Vocab<'static>>();
    fn send<T: Send>() {}
    send::<llama_rs::Context<'static>>();
    send::<llama_rs::Batch>();
    send::<ModelParams>();
}

/// A model file that cannot be mapped is `Error::ModelLoad` with llama.cpp's
/// cause ("mmap failed"), not only its closing "failed to load model", and
/// how to get around it. In a child whose address space is capped (by
/// `prlimit`, util-linux) 48 MiB above what it uses, below the 98 MB model.
#[test]
fn a_model_that_cannot_be_mapped_is_an_error_with_the_cause() {
    const NAME: &str = "a_model_that_cannot_be_mapped_is_an_error_with_the_cause";
    if common::capped_memory_cannot_run() {
        return;
    }
    if common::in_child(NAME) {
        let path = common::real_model_path();
        llama_rs::devices(); // backends loaded before the cap
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let vm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmSize in /proc/self/status");
        let cap = vm_kib * 1024 + (48 << 20);
        let ok = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--as={cap}"))
            .status()
            .expect("run prlimit (util-linux)");
        assert!(ok.success());
        match Model::load(&path) {
            Err(Error::ModelLoad { message, .. }) => {
                assert!(message.contains("mmap failed"), "the cause: {message}");
                assert!(message.contains("failed to load model"), "{message}");
                assert!(message.contains("LoadMode::NoMmap") && message.contains("ulimit -v"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Still alive, and a small model loads.
        assert!(Model::load(tiny_path(VocabKind::Spm)).is_ok());
        return;
    }
    let out = common::run_in_child(NAME);
    common::assert_child_ok(NAME, &out);
}
