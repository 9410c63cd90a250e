//! Unit tests of the synthetic writer: every flavour loads in llama.cpp
//! (through the raw API) and tokenizes, files are reproducible, the cache
//! and its races, the checks.

use super::vocab::{build_bpe, build_spm};
use super::*;
use llama_sys as sys;
use std::collections::HashSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

/// llama.cpp model loads in one test process, one at a time.
pub(crate) static LLAMA: Mutex<()> = Mutex::new(());

/// A model loaded with the raw API, freed on drop.
pub(crate) struct RawModel(NonNull<sys::llama_model>);

impl RawModel {
    pub(crate) fn load(path: &Path) -> RawModel {
        crate::backend::init();
        let c = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: plain struct of defaults.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.vocab_only = false;
        params.n_gpu_layers = 0;
        // SAFETY: valid NUL-terminated path and default params (no device
        // list, no overrides); returns an owned model or NULL.
        let model = unsafe { sys::llama_model_load_from_file(c.as_ptr(), params) };
        RawModel(NonNull::new(model).expect("llama.cpp failed to load the synthetic model"))
    }

    pub(crate) fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: valid model; the vocab lives as long as the model.
        unsafe { sys::llama_model_get_vocab(self.0.as_ptr()) }
    }

    pub(crate) fn n_vocab(&self) -> i32 {
        // SAFETY: valid vocab pointer of a live model.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) }
    }

    pub(crate) fn n_params(&self) -> u64 {
        // SAFETY: valid model.
        unsafe { sys::llama_model_n_params(self.0.as_ptr()) }
    }

    pub(crate) fn tokenize(&self, text: &str) -> Vec<i32> {
        let mut tokens = vec![0i32; text.len() + 8];
        // SAFETY: text pointer/length describe valid bytes; the buffer
        // holds tokens.len() ids; a length of at most text.len() + 8
        // always suffices (one token per byte at worst, no specials).
        let n = unsafe {
            sys::llama_tokenize(
                self.vocab(),
                text.as_ptr().cast(),
                text.len() as i32,
                tokens.as_mut_ptr(),
                tokens.len() as i32,
                false,
                false,
            )
        };
        assert!(n >= 0, "tokenize needed {} tokens", -n);
        tokens.truncate(n as usize);
        tokens
    }

    pub(crate) fn detokenize(&self, tokens: &[i32]) -> String {
        let mut buf = vec![0u8; 1024];
        // SAFETY: tokens are ids returned by tokenize (in range); the
        // buffer holds buf.len() bytes.
        let n = unsafe {
            sys::llama_detokenize(
                self.vocab(),
                tokens.as_ptr(),
                tokens.len() as i32,
                buf.as_mut_ptr().cast(),
                buf.len() as i32,
                false,
                false,
            )
        };
        assert!(n >= 0);
        buf.truncate(n as usize);
        String::from_utf8(buf).unwrap()
    }

    pub(crate) fn piece(&self, token: i32) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        // SAFETY: token in range (from tokenize); buffer of buf.len() bytes.
        let n = unsafe {
            sys::llama_token_to_piece(self.vocab(), token, buf.as_mut_ptr().cast(), buf.len() as i32, 0, false)
        };
        assert!(n >= 0);
        buf.truncate(n as usize);
        buf
    }

    /// Decodes `tokens` in a fresh context; returns the last row of logits.
    pub(crate) fn decode_logits(&self, tokens: &[i32]) -> Vec<f32> {
        // SAFETY: plain struct of defaults.
        let mut params = unsafe { sys::llama_context_default_params() };
        params.n_ctx = 256;
        params.n_batch = 256;
        params.n_ubatch = 256;
        params.n_threads = 2;
        params.n_threads_batch = 2;
        // SAFETY: valid model, sane params; returns an owned context or NULL.
        let ctx = unsafe { sys::llama_init_from_model(self.0.as_ptr(), params) };
        assert!(!ctx.is_null());
        let mut toks = tokens.to_vec();
        // SAFETY: the batch borrows `toks` (ids in range, fewer than
        // n_batch) for the decode call only.
        let rc = unsafe { sys::llama_decode(ctx, sys::llama_batch_get_one(toks.as_mut_ptr(), toks.len() as i32)) };
        assert_eq!(rc, 0, "llama_decode failed");
        // SAFETY: llama_batch_get_one outputs logits for the last token;
        // -1 selects it; the row holds n_vocab floats.
        let logits = unsafe {
            let p = sys::llama_get_logits_ith(ctx, -1);
            assert!(!p.is_null());
            std::slice::from_raw_parts(p, self.n_vocab() as usize).to_vec()
        };
        // SAFETY: the context was created above and is freed once, before the model.
        unsafe { sys::llama_free(ctx) };
        logits
    }
}

impl Drop for RawModel {
    fn drop(&mut self) {
        // SAFETY: owned model, every context was freed already.
        unsafe { sys::llama_model_free(self.0.as_ptr()) };
    }
}

const TEXT: &str = "Hello world, héllo 😀";

fn check_model(m: &SyntheticModel) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    m.write(&path).unwrap();
    crate::validate::validate_model_file(&path).unwrap();
    let _guard = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let model = RawModel::load(&path);
    assert_eq!(model.n_vocab() as u32, m.shape.n_vocab);
    assert_eq!(model.n_params(), m.shape.n_params());
    let tokens = model.tokenize(TEXT);
    assert!(!tokens.is_empty());
    assert!(tokens.len() < TEXT.len(), "no merges applied: {tokens:?}");
    assert_eq!(model.detokenize(&tokens), TEXT);
    let pieces: Vec<u8> = tokens.iter().flat_map(|&t| model.piece(t)).collect();
    match m.vocab {
        // SPM adds a leading space that detokenize strips.
        VocabKind::Spm => assert_eq!(pieces, format!(" {TEXT}").as_bytes()),
        VocabKind::Bpe => assert_eq!(pieces, TEXT.as_bytes()),
    }
    let logits = model.decode_logits(&tokens[..4]);
    assert!(logits.iter().all(|x| x.is_finite()));
    assert!(logits.iter().any(|&x| x != 0.0));
}

#[test]
fn qwen3_with_a_classifier_loads_and_its_values_are_the_files() {
    let m = SyntheticModel::new(ModelShape::tiny()).architecture(Architecture::Qwen3).classifier(&["yes", "no"]);
    assert!(m.file_name().starts_with("qwen3-tiny-spm-f32-s42-"), "{}", m.file_name());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.gguf");
    m.write(&path).unwrap();
    crate::validate::validate_model_file(&path).unwrap();
    let _guard = LLAMA.lock().unwrap_or_else(|e| e.into_inner());
    let model = RawModel::load(&path);
    // SAFETY: live model; plain queries.
    unsafe {
        assert_eq!(sys::llama_model_n_cls_out(model.0.as_ptr()), 2);
    }
    assert!(model.decode_logits(&[1, 5, 6]).iter().all(|x| x.is_finite()));
    // The F32 file holds exactly the generated values.
    let g = crate::gguf::Gguf::open(&path).unwrap();
    let id = (0..g.n_tensors()).find(|&i| g.tensor_extent(i).0 == "cls.output.weight").unwrap();
    let (_, start, size) = g.tensor_extent(id);
    let bytes = std::fs::read(&path).unwrap();
    let from_file: Vec<f32> = bytes[start as usize..(start + size) as usize]
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(m.tensor_values("cls.output.weight").unwrap(), from_file);
    assert_eq!(m.tensor_shape("cls.output.weight"), Some((64, 2)));
    assert_eq!(m.tensor_values("no.such.tensor"), None);
}

#[test]
fn classifier_and_lora_settings_are_checked() {
    let llama = SyntheticModel::new(ModelShape::tiny());
    assert!(matches!(llama.clone().classifier(&["a"]).validate(), Err(Error::InvalidParam { .. })));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.gguf");
    let l = SyntheticLora::new(&llama);
    assert!(l.clone().target("output.weight", 2).target("output.weight", 1).write(&p).is_err());
    assert!(l.clone().target("no.such.weight", 2).write(&p).is_err());
    assert!(l.clone().target("output_norm.weight", 2).write(&p).is_err(), "a vector");
    assert!(l.clone().target("output.weight", 0).write(&p).is_err());
    assert!(l.clone().target_values("output.weight", 1, vec![0.0; 3], vec![0.0; 1024]).write(&p).is_err());
    assert!(l.clone().tensor(&"x".repeat(64), 1, 1, vec![0.0]).write(&p).is_err());
    l.target("output.weight", 2).write(&p).unwrap();
}

#[test]
fn spm_tiny_loads_tokenizes_and_decodes() {
    check_model(&SyntheticModel::new(ModelShape::tiny()).vocab(VocabKind::Spm));
}

#[test]
fn bpe_tiny_loads_tokenizes_and_decodes() {
    check_model(&SyntheticModel::new(ModelShape::tiny()).vocab(VocabKind::Bpe));
}

#[test]
fn q8_0_and_f16_load() {
    check_model(&SyntheticModel::new(ModelShape::tiny()).weight_type(WeightType::Q8_0).vocab(VocabKind::Bpe));
    check_model(&SyntheticModel::new(ModelShape::tiny()).weight_type(WeightType::F16));
}

#[test]
fn q4_k_loads() {
    check_model(&SyntheticModel::new(ModelShape::tiny_k()).weight_type(WeightType::Q4_K));
}

#[test]
fn q4_k_m_and_q6_k_load() {
    check_model(&SyntheticModel::new(ModelShape::tiny_k()).weight_type(WeightType::Q4_K_M).vocab(VocabKind::Bpe));
    check_model(&SyntheticModel::new(ModelShape::tiny_k()).weight_type(WeightType::Q6_K));
}

#[test]
fn same_parameters_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, seed: u64| {
        let p = dir.path().join(name);
        SyntheticModel::new(ModelShape::tiny())
            .vocab(VocabKind::Bpe)
            .weight_type(WeightType::Q8_0)
            .seed(seed)
            .write(&p)
            .unwrap();
        std::fs::read(p).unwrap()
    };
    let a = write("a.gguf", 1);
    let b = write("b.gguf", 1);
    let c = write("c.gguf", 2);
    assert_eq!(a, b);
    assert_eq!(a.len(), c.len());
    assert_ne!(a, c);
    // Only the leftover temp files would differ: none may remain.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn write_cached_reuses_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let m = SyntheticModel::new(ModelShape::tiny()).seed(42);
    let p1 = m.write_cached(dir.path()).unwrap();
    let name = p1.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("llama-tiny-spm-f32-s42-") && name.ends_with(".gguf"), "{name}");
    let modified = std::fs::metadata(&p1).unwrap().modified().unwrap();
    let p2 = m.write_cached(dir.path()).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(std::fs::metadata(&p2).unwrap().modified().unwrap(), modified);
    // Every parameter changes the name.
    let others = [
        m.clone().seed(43),
        m.clone().vocab(VocabKind::Bpe),
        m.clone().weight_type(WeightType::F16),
        m.clone().chat_template(None),
        m.clone().chat_template(Some("{{ messages }}".into())),
        SyntheticModel::new(ModelShape { n_ctx_train: 1024, ..ModelShape::tiny() }),
    ];
    let mut names: HashSet<String> = others.iter().map(|o| o.file_name()).collect();
    names.insert(m.file_name());
    assert_eq!(names.len(), others.len() + 1);
}

#[test]
fn racing_writers_leave_one_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let m = SyntheticModel::new(ModelShape::tiny()).seed(5);
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| m.write_cached(dir.path()).unwrap())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    crate::validate::validate_model_file(&paths[0]).unwrap();
}

#[test]
fn invalid_shapes_are_errors() {
    let cases = [
        (SyntheticModel::new(ModelShape { n_head: 3, ..ModelShape::tiny() }), "shape.n_embd"),
        (SyntheticModel::new(ModelShape { n_head_kv: 3, ..ModelShape::tiny() }), "shape.n_head"),
        (SyntheticModel::new(ModelShape { n_head_kv: 0, ..ModelShape::tiny() }), "shape.n_head_kv"),
        (SyntheticModel::new(ModelShape { n_layer: 0, ..ModelShape::tiny() }), "shape.n_layer"),
        (SyntheticModel::new(ModelShape { n_layer: 513, ..ModelShape::tiny() }), "shape.n_layer"),
        (SyntheticModel::new(ModelShape { n_vocab: 300, ..ModelShape::tiny() }), "shape.n_vocab"),
        (SyntheticModel::new(ModelShape { n_vocab: 200, ..ModelShape::tiny() }).vocab(VocabKind::Bpe), "shape.n_vocab"),
        (SyntheticModel::new(ModelShape::tiny()).weight_type(WeightType::Q4_K), "shape.n_embd"),
        (
            SyntheticModel::new(ModelShape { n_ff: 100, ..ModelShape::tiny() }).weight_type(WeightType::Q8_0),
            "shape.n_ff",
        ),
        (SyntheticModel::new(ModelShape { rms_norm_eps: f32::NAN, ..ModelShape::tiny() }), "shape.rms_norm_eps"),
        (SyntheticModel::new(ModelShape::tiny()).chat_template(Some("a\0b".into())), "chat template"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (m, what) in cases {
        let err = m.write(dir.path().join("bad.gguf")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(what), "{what}: {text}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn preset_parameter_counts() {
    assert_eq!(ModelShape::llama3_8b().n_params(), 8_030_261_248);
    assert_eq!(ModelShape::llama3_70b().n_params(), 70_553_706_496);
    let small = ModelShape::small().n_params();
    assert!((30_000_000..100_000_000).contains(&small), "{small}");
    for s in [ModelShape::small(), ModelShape::llama3_8b(), ModelShape::llama3_70b()] {
        for w in [WeightType::F32, WeightType::Q8_0, WeightType::Q4_K_M] {
            for v in [VocabKind::Spm, VocabKind::Bpe] {
                SyntheticModel::new(s).weight_type(w).vocab(v).validate().unwrap();
            }
        }
    }
}

#[test]
fn vocabularies_are_consistent() {
    for n in [1024usize, 32000] {
        let v = build_bpe(n);
        assert_eq!(v.tokens.len(), n);
        let set: HashSet<&String> = v.tokens.iter().collect();
        assert_eq!(set.len(), n);
        for m in &v.merges {
            let (a, b) = m.split_once(' ').unwrap();
            assert!(set.contains(&a.to_string()) && set.contains(&b.to_string()));
            assert!(set.contains(&format!("{a}{b}")), "{m}");
        }
        let s = build_spm(n);
        assert_eq!(s.tokens.len(), n);
        assert_eq!(s.tokens.iter().collect::<HashSet<_>>().len(), n);
    }
}
