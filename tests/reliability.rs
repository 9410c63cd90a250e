//! The no-crash promise against real model files, hostile sizes and the
//! process environment (issue "Reliability, round two"): each case here
//! killed the process, read past a buffer or raced before its fix. Cases whose
//! old behaviour was an abort run in a child process (`run_in_child`), and
//! the parent asserts that the child exited normally.
//!
//! The real model is SmolLM2-135M-Instruct Q4_1 (`scripts/fetch-model`).

mod common;

use common::edit::Edit;
use common::{assert_child_ok, in_child, real_model, real_model_path, run_in_child, temp_dir, tiny, tiny_path};
use llama_rs::synthetic::VocabKind;
use llama_rs::{sys, Batch, ContextParams, Error, KvOverride, Model, ModelParams, Token, MAX_POS};
use llama_rs::{AddSpecial, ParseSpecial, RemoveSpecial, RenderSpecial};
use std::path::{Path, PathBuf};

/// A context small enough for the tests, one thread.
fn params() -> ContextParams {
    ContextParams::default().n_ctx(256).n_batch(64).threads(1)
}

/// The error of a load that must be refused, with its message.
fn refused(path: &Path, params: ModelParams) -> String {
    match Model::load_with(path, params) {
        Err(Error::InvalidModel { message, .. }) => message,
        Err(other) => panic!("{}: expected InvalidModel, got {other}", path.display()),
        Ok(m) => panic!("{}: loaded (n_embd {}), expected a refusal", path.display(), m.n_embd()),
    }
}

/// Decodes `n` tokens in sequence 0 with only the last one marked as an
/// output, in an embeddings context of `model`, and returns every row's
/// embedding.
fn embed_rows(model: &Model, n: i32) -> Vec<Vec<f32>> {
    let mut ctx = model.new_context(params().embeddings(true)).unwrap();
    let mut b = Batch::new(n as usize, 1).unwrap();
    for i in 0..n {
        b.add(Token(10 + i), i, &[0], i == n - 1).unwrap();
    }
    ctx.decode(&mut b).unwrap();
    (0..n).map(|i| ctx.embeddings(i).unwrap().to_vec()).collect()
}

fn edited(name: &str, source: &Path, edit: impl FnOnce(Edit) -> Edit) -> PathBuf {
    let dir = temp_dir(&format!("reliability-{name}"));
    edit(Edit::open(source)).write(&dir.join(format!("{name}.gguf")))
}

/// Item 1: `<arch>.embedding_length_out` larger than `n_embd`: decoding in an
/// embeddings context aborted in ggml's tensor-get bounds assert. Refused now,
/// naming the key, the value and the range.
#[test]
fn embedding_length_out_above_n_embd_is_refused() {
    const NAME: &str = "embedding_length_out_above_n_embd_is_refused";
    if in_child(NAME) {
        for source in [tiny_path(VocabKind::Spm), real_model_path()] {
            let n_embd = Edit::open(&source).get_u32("llama.embedding_length");
            let bad = edited("embd-out-big", &source, |e| e.u32("llama.embedding_length_out", 2 * n_embd));
            let msg = refused(&bad, ModelParams::default().n_gpu_layers(Some(0)));
            assert!(msg.contains("llama.embedding_length_out") && msg.contains(&(2 * n_embd).to_string()), "{msg}");
            println!("refused: {msg}");
        }
        // The same value as a load-time override: refused as well.
        let p = ModelParams::default().kv_override("llama.embedding_length_out", KvOverride::Int(1 << 20));
        let msg = refused(&tiny_path(VocabKind::Spm), p);
        assert!(msg.contains("llama.embedding_length_out"), "{msg}");
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Items 1 and 9: a smaller `embedding_length_out`: rows are `n_embd_out` floats (the
/// safe API handed out `n_embd` and read past the buffer), and every row of an
/// embeddings context is an output, marked or not (the bookkeeping refused
/// rows that exist).
#[test]
fn embeddings_rows_are_n_embd_out_wide_and_all_present() {
    for source in [tiny_path(VocabKind::Spm), real_model_path()] {
        let n_embd = Edit::open(&source).get_u32("llama.embedding_length");
        let plain = Model::load_with(&source, ModelParams::default().n_gpu_layers(Some(0))).unwrap();
        assert_eq!(plain.n_embd_out(), n_embd);
        let rows = embed_rows(&plain, 5);
        assert!(rows.iter().all(|r| r.len() == n_embd as usize && r.iter().all(|x| x.is_finite())));
        // Different tokens, different rows: real data, not one row repeated.
        assert_ne!(rows[0], rows[4]);

        let out = n_embd / 2;
        let narrow = edited("embd-out-small", &source, |e| e.u32("llama.embedding_length_out", out));
        let m = Model::load_with(&narrow, ModelParams::default().n_gpu_layers(Some(0))).unwrap();
        assert_eq!((m.n_embd(), m.n_embd_out()), (n_embd, out));
        let rows = embed_rows(&m, 5);
        assert!(rows.iter().all(|r| r.len() == out as usize), "{:?}", rows.iter().map(Vec::len).collect::<Vec<_>>());
    }
}

/// Item 2: `<arch>.pooling_type` outside llama.cpp's enum: creating an embeddings
/// context aborted ("unknown pooling type", `llama-graph.cpp`). Refused now,
/// from the file and from an override; every value of the enum works.
#[test]
fn pooling_type_outside_the_enum_is_refused() {
    const NAME: &str = "pooling_type_outside_the_enum_is_refused";
    if in_child(NAME) {
        let bad = edited("pooling9", &tiny_path(VocabKind::Spm), |e| e.u32("llama.pooling_type", 9));
        let msg = refused(&bad, ModelParams::default());
        assert!(msg.contains("llama.pooling_type = 9"), "{msg}");
        println!("refused: {msg}");
        for v in [5, -2, i64::from(u32::MAX)] {
            let p = ModelParams::default().n_gpu_layers(Some(0)).kv_override("llama.pooling_type", KvOverride::Int(v));
            let msg = refused(&real_model_path(), p);
            assert!(msg.contains("llama.pooling_type"), "{v}: {msg}");
        }
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

#[test]
fn every_pooling_type_of_the_enum_runs() {
    // none, mean, cls, last, rank (LLAMA_POOLING_TYPE_*, include/llama.h).
    for v in 0..=4u32 {
        let path = edited(&format!("pooling{v}"), &tiny_path(VocabKind::Spm), |e| e.u32("llama.pooling_type", v));
        let m = Model::load(&path).unwrap();
        if v == 4 {
            // Rank pooling needs a classifier head, which the llama model has
            // not (docs/SAFETY.md E1; tests/embeddings.rs).
            let err = m.new_context(params().embeddings(true)).unwrap_err();
            assert!(matches!(err, Error::InvalidParam { name: "pooling", .. }), "{err}");
            continue;
        }
        let mut ctx = m.new_context(params().embeddings(true)).unwrap();
        let mut b = Batch::new(4, 1).unwrap();
        b.add_sequence(&[Token(3), Token(4), Token(5), Token(6)], 0, 0, true).unwrap();
        ctx.decode(&mut b).unwrap_or_else(|e| panic!("pooling {v}: {e}"));
    }
}

/// Item 3: `Batch::new(i32::MAX as usize, 256)` aborted on allocation failure.
/// Every buffer sized by a caller's value is reserved fallibly.
#[test]
fn huge_batch_is_an_error() {
    const NAME: &str = "huge_batch_is_an_error";
    if in_child(NAME) {
        // About 2.2 TB: no machine of ours has it. (With the kernel's
        // overcommit set to "always" the reservation succeeds untouched.)
        let overcommit_always =
            std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|s| s.trim() == "1");
        match Batch::new(i32::MAX as usize, 256) {
            Err(Error::OutOfMemory { what: "batch buffers", bytes }) => assert!(bytes > 1 << 40, "{bytes}"),
            Ok(b) if overcommit_always => assert_eq!(b.capacity(), i32::MAX as usize),
            other => panic!("{other:?}"),
        }
        match Batch::new(i32::MAX as usize + 1, 1) {
            Err(Error::InvalidParam { name: "batch capacity", .. }) => {}
            other => panic!("{other:?}"),
        }
        // Tokenizing, detokenizing and formatting: buffers grow fallibly too
        // (the sizes here are fine; the point is that they work unchanged).
        let v = tiny().vocab();
        let toks = v.tokenize("hello world", AddSpecial::Yes, ParseSpecial::No).unwrap();
        assert!(!toks.is_empty());
        assert!(!v.detokenize(&toks, RemoveSpecial::No, RenderSpecial::No).unwrap().is_empty());
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Item 4: ggml's aborts reach `tracing` (and stderr, as the process ends) through
/// `ggml_set_abort_callback`; llama-rs no longer sets `GGML_NO_BACKTRACE` in
/// the environment (a `set_var` racing other threads' `getenv`). The child
/// plants an abort through the raw API and must die of SIGABRT after logging.
#[test]
fn aborts_go_to_tracing_and_the_environment_is_untouched() {
    const NAME: &str = "aborts_go_to_tracing_and_the_environment_is_untouched";
    if in_child(NAME) {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing_subscriber::filter::LevelFilter::ERROR)
            .init();
        llama_rs::init();
        assert!(std::env::var_os("GGML_NO_BACKTRACE").is_none(), "llama-rs changed the environment");
        println!("environment untouched");
        // SAFETY: deliberately aborts this child process (the test's point);
        // NUL-terminated file name and format without conversions.
        unsafe { sys::ggml_abort(c"planted.c".as_ptr(), 7, c"planted abort %s".as_ptr(), c"here".as_ptr()) };
    }
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([NAME, "--exact", "--nocapture", "--test-threads=1"]).env("LLAMA_RS_CHILD", NAME);
    let out = cmd.env_remove("GGML_NO_BACKTRACE").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(6), "expected SIGABRT: {:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("environment untouched"), "{stdout}");
    assert!(stderr.contains("ggml abort: planted.c:7: planted abort here"), "tracing line missing: {stderr}");
    assert!(stderr.contains("llama.cpp aborted the process: planted.c:7: planted abort here"), "{stderr}");
}

/// Item 6: a non-UTF-8 path: the validator read the raw bytes but llama.cpp was
/// given the lossy name, another file. Now both open the same file. The decoy
/// at the lossy name would abort llama.cpp if it were loaded.
#[test]
fn the_validated_file_is_the_loaded_file() {
    const NAME: &str = "the_validated_file_is_the_loaded_file";
    if in_child(NAME) {
        use std::os::unix::ffi::OsStrExt;
        let dir = temp_dir("reliability-paths");
        let real = dir.join(std::ffi::OsStr::from_bytes(b"model-\xff.gguf"));
        std::fs::copy(tiny_path(VocabKind::Spm), &real).unwrap();
        let lossy = PathBuf::from(real.to_string_lossy().into_owned());
        assert_ne!(real, lossy);
        Edit::open(&real).u32("llama.block_count", 0).str("general.name", "decoy").write(&lossy);
        let m = Model::load(&real).unwrap();
        assert_ne!(m.meta("general.name").as_deref(), Some("decoy"));
        assert_eq!(m.n_layer(), 2);
        let mut ctx = m.new_context(params()).unwrap();
        let mut b = Batch::new(1, 1).unwrap();
        b.add(Token(5), 0, &[0], true).unwrap();
        ctx.decode(&mut b).unwrap();
        // The decoy itself is refused by name.
        assert!(refused(&lossy, ModelParams::default()).contains("block_count = 0"));
        println!("loaded the validated file");
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Load-time overrides reach llama.cpp's loader after the validator: they
/// are validated with the file (an override of `block_count` to 0 aborted).
#[test]
fn overrides_are_validated_like_the_file() {
    const NAME: &str = "overrides_are_validated_like_the_file";
    if in_child(NAME) {
        let path = tiny_path(VocabKind::Spm);
        for (key, value, expect) in [
            ("llama.block_count", KvOverride::Int(0), "llama.block_count = 0"),
            ("llama.block_count", KvOverride::Int(1 << 32), "llama.block_count = 0"),
            ("llama.expert_count", KvOverride::Int(2000), "llama.expert_count = 2000"),
            ("llama.rope.scaling.type", KvOverride::Str("dynamic".into()), "llama.rope.scaling.type"),
            ("llama.attention.layer_norm_rms_epsilon", KvOverride::Float(-1.0), "layer_norm_rms_epsilon"),
        ] {
            let msg = refused(&path, ModelParams::default().kv_override(key, value.clone()));
            assert!(msg.contains(expect), "{key} = {value:?}: {msg}");
        }
        // An unknown architecture is llama.cpp's own clean refusal (it throws).
        let p = ModelParams::default().kv_override("general.architecture", KvOverride::Str("no-such-arch".into()));
        match Model::load_with(&path, p) {
            // The cause llama.cpp logged first, not only its closing
            // "failed to load model".
            Err(Error::ModelLoad { message, .. }) => {
                assert!(message.contains("no-such-arch") && message.contains("failed to load model"), "{message}")
            }
            other => panic!("unknown architecture: {other:?}"),
        }
        // llama.cpp keeps the first override of a key; so does the check.
        let p = ModelParams::default()
            .kv_override("llama.block_count", KvOverride::Int(0))
            .kv_override("llama.block_count", KvOverride::Int(2));
        assert!(refused(&path, p).contains("llama.block_count = 0"));
        // An override of another type than the key's is ignored by llama.cpp
        // (a warning), so the file's value counts.
        let m =
            Model::load_with(&path, ModelParams::default().kv_override("llama.block_count", KvOverride::Float(0.0)))
                .unwrap();
        assert_eq!(m.n_layer(), 2);
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Item 7: positions are bounded by `MAX_POS`, in batches and in shifts, so that
/// llama.cpp's `i32` position arithmetic cannot overflow.
#[test]
fn positions_and_shifts_are_bounded() {
    let mut b = Batch::new(4, 1).unwrap();
    for bad in [MAX_POS + 1, i32::MAX, -1] {
        assert!(matches!(b.add(Token(1), bad, &[0], true), Err(Error::InvalidParam { name: "position", .. })));
        assert!(matches!(
            b.add_sequence(&[Token(1), Token(2)], bad, 0, true),
            Err(Error::InvalidParam { name: "position", .. })
        ));
    }
    assert!(b.is_empty());
    b.add(Token(1), MAX_POS, &[0], true).unwrap();

    let m = tiny();
    let mut ctx = m.new_context(params()).unwrap();
    let mut b = Batch::new(1, 1).unwrap();
    b.add(Token(5), 7, &[0], true).unwrap();
    ctx.decode(&mut b).unwrap();
    for delta in [i32::MAX, MAX_POS + 1, i32::MIN, MAX_POS - 7 + 1] {
        match ctx.seq_add(Some(0), .., delta) {
            Err(Error::InvalidParam { name: "position delta", .. }) => {}
            other => panic!("seq_add by {delta}: {other:?}"),
        }
        assert_eq!(ctx.seq_pos_max(0).unwrap(), Some(7), "a refused shift changed nothing");
    }
    // Up to MAX_POS exactly, then back down.
    ctx.seq_add(Some(0), .., MAX_POS - 7).unwrap();
    assert_eq!(ctx.seq_pos_max(0).unwrap(), Some(MAX_POS));
    ctx.seq_add(None, .., -(MAX_POS - 7)).unwrap();
    assert_eq!(ctx.seq_pos_max(0).unwrap(), Some(7));
    // Ranges beyond the bound are refused too.
    assert!(ctx.seq_rm(Some(0), 0..i32::MAX).is_err());
    assert!(ctx.seq_rm(Some(0), 0..=MAX_POS).unwrap());
}

/// The real model as a new user meets it: generate, embeddings, the chat
/// template; no abort anywhere (the test process surviving is the check).
#[test]
fn the_real_model_works_end_to_end() {
    let m = real_model();
    assert_eq!(m.architecture(), "llama");
    assert_eq!((m.n_embd(), m.n_embd_out(), m.n_layer()), (576, 576, 30));
    let rows = embed_rows(m, 3);
    assert!(rows.iter().all(|r| r.len() == 576));
    let mut ctx = m.new_context(params()).unwrap();
    let toks = m.vocab().tokenize("The capital of France is", AddSpecial::Yes, ParseSpecial::No).unwrap();
    let mut b = Batch::new(toks.len(), 1).unwrap();
    b.add_sequence(&toks, 0, 0, true).unwrap();
    ctx.decode(&mut b).unwrap();
    let logits = ctx.logits(ctx.last_output().unwrap()).unwrap();
    assert_eq!(logits.len(), m.vocab().n_tokens() as usize);
    let best = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let piece =
        String::from_utf8_lossy(&m.vocab().token_to_piece(Token(best as i32), RenderSpecial::No).unwrap()).into_owned();
    assert_eq!(piece.trim(), "Paris", "greedy next token of SmolLM2");
}

/// Loads `path` and decodes a few tokens; the error of whichever step fails.
fn load_and_decode(path: &Path) -> Result<(), Error> {
    let m = Model::load_with(path, ModelParams::default().n_gpu_layers(Some(0)))?;
    let mut ctx = m.new_context(params())?;
    let mut b = Batch::new(4, 1)?;
    b.add_sequence(&[Token(3), Token(4), Token(5), Token(6)], 0, 0, true)?;
    ctx.decode(&mut b)
}

/// Found with the allow-list's cross-key notes: a sliding-window
/// architecture whose pattern marks no layer as sliding-window aborted at
/// context creation (`llama-model.cpp:2823`); the shim now checks the
/// hyperparameters llama.cpp derived, right after the load.
#[test]
fn sliding_window_pattern_without_swa_layers_is_refused() {
    const NAME: &str = "sliding_window_pattern_without_swa_layers_is_refused";
    if in_child(NAME) {
        let swa = |name: &str, pattern: &[i32]| {
            edited(name, &tiny_path(VocabKind::Spm), |e| {
                e.rename_arch("mimo2")
                    .u32("mimo2.attention.sliding_window", 16)
                    .u32("mimo2.expert_count", 2)
                    .u32("mimo2.expert_used_count", 1)
                    .u32("mimo2.expert_feed_forward_length", 32)
                    .arr_i32("mimo2.attention.sliding_window_pattern", sys::GGUF_TYPE_INT32, pattern)
            })
        };
        // With a sliding-window layer the check passes (this file then lacks
        // that layer's extra tensors, which llama.cpp reports itself).
        match load_and_decode(&swa("swa-one", &[1, 0])) {
            Ok(()) | Err(Error::ModelLoad { .. }) => {}
            other => panic!("one sliding-window layer: {other:?}"),
        }
        match load_and_decode(&swa("swa-none", &[0, 0])) {
            Err(Error::InvalidModel { message, .. }) => {
                assert!(message.contains("sliding_window_pattern"), "{message}");
                println!("refused: {message}");
            }
            other => panic!("no sliding-window layer: {other:?}"),
        }
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// M-RoPE sections all zero (or summing past the head size): ggml's rope
/// kernel asserted at the first decode (`ggml-cpu/ops.cpp:6381`).
#[test]
fn mrope_sections_are_checked() {
    const NAME: &str = "mrope_sections_are_checked";
    if in_child(NAME) {
        let mrope = |name: &str, sections: &[i32]| {
            edited(name, &tiny_path(VocabKind::Spm), |e| {
                e.rename_arch("qwen2vl").arr_i32("qwen2vl.rope.dimension_sections", sys::GGUF_TYPE_INT32, sections)
            })
        };
        load_and_decode(&mrope("mrope-ok", &[2, 3, 3, 0])).expect("valid sections decode");
        for (name, sections) in
            [("mrope-zero", [0, 0, 0, 0]), ("mrope-big", [8, 8, 8, 0]), ("mrope-neg", [-4, 2, 2, 0])]
        {
            match load_and_decode(&mrope(name, &sections)) {
                Err(Error::InvalidModel { message, .. }) => {
                    assert!(message.contains("rope.dimension_sections"), "{name}: {message}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Every architecture of the pinned llama.cpp, given the tiny llama model's
/// keys and tensors: each file is refused, or loads and then creates
/// contexts (with and without embeddings) and decodes, or fails cleanly; none
/// may abort. This sweep found the tensor loaders that assert experts
/// (`smallthinker`, `llada-moe`). `LLAMA_RS_TEST_SCALE` thins it.
#[test]
fn every_architecture_is_refused_or_runs() {
    const NAME: &str = "every_architecture_is_refused_or_runs";
    let archs = llama_rs::supported_architectures();
    assert!(archs.len() > 100 && archs.contains(&"llama") && archs.contains(&"qwen2"), "{archs:?}");
    if in_child(NAME) {
        let step = (1.0 / common::test_scale()).round().max(1.0) as usize;
        let dir = temp_dir("reliability-archs");
        let (mut loaded, mut decoded) = (0, 0);
        for arch in archs.iter().step_by(step) {
            println!("architecture {arch}");
            let path =
                Edit::open(&tiny_path(VocabKind::Spm)).rename_arch(arch).write(&dir.join(format!("{arch}.gguf")));
            let Ok(m) = Model::load_with(&path, ModelParams::default().n_gpu_layers(Some(0))) else { continue };
            loaded += 1;
            for embeddings in [false, true] {
                let Ok(mut ctx) = m.new_context(params().embeddings(embeddings)) else { continue };
                let mut b = Batch::new(2, 1).unwrap();
                b.add_sequence(&[Token(3), Token(4)], 0, 0, true).unwrap();
                if ctx.decode(&mut b).is_ok() {
                    decoded += 1;
                    let _ = (ctx.logits(1).map(|l| l.len()), ctx.embeddings(1).map(|e| e.len()));
                }
            }
        }
        println!("architectures: {} tried, {loaded} loaded, {decoded} contexts decoded", archs.len().div_ceil(step));
        // Not vacuous: at full size at least 10 architectures load and decode
        // (15 and 30 contexts at the pin); a thinned sweep needs one.
        let min = (10 / step).max(1);
        assert!(loaded >= min && decoded >= min, "{loaded} loaded, {decoded} decoded (step {step})");
        return;
    }
    let out = run_in_child(NAME);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| l.starts_with("architecture ")).unwrap_or("(none)");
    assert!(out.status.success(), "child died at {last}: {:?}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert_child_ok(NAME, &out);
    eprintln!("{}", stdout.lines().find(|l| l.starts_with("architectures:")).unwrap_or(""));
}

/// Found by the metadata fuzzer (docs/fuzzing.md): `rope.dimension_count` 0
/// on an architecture that applies RoPE (here `nanbeige`; `llama` itself
/// refuses it) made ggml's CPU rope kernel loop forever at the first decode
/// (`ggml-cpu/ops.cpp:6452`, `i0 += n_dims - 2`). The shim's check refuses it
/// after the load; the child's time limit turns a hang into a failure.
#[test]
fn zero_rope_dimensions_are_refused() {
    const NAME: &str = "zero_rope_dimensions_are_refused";
    if in_child(NAME) {
        let bad = edited("rope0", &tiny_path(VocabKind::Spm), |e| {
            e.rename_arch("nanbeige").u32("nanbeige.rope.dimension_count", 0)
        });
        match load_and_decode(&bad) {
            Err(Error::InvalidModel { message, .. }) => {
                assert!(message.contains("nanbeige.rope.dimension_count = 0"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let good = edited("rope16", &tiny_path(VocabKind::Spm), |e| e.rename_arch("nanbeige"));
        load_and_decode(&good).expect("the same model with its RoPE dimensions decodes");
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Found by the metadata fuzzer (docs/fuzzing.md): `nanbeige.num_loops` 0
/// aborted the load (`src/models/nanbeige.cpp:8`, `GGML_ASSERT(n_loops_u >=
/// 1)`). The allow-list had decided the key "any value" by category; the
/// generator now refuses such a decision when an assert on the read's
/// destination follows it, which found eight more (docs/hparams.md). And
/// `phimoe` relabelled with `attention.head_count` 0: SIGFPE in its tensor
/// loader (the generator now lists such divisions, `HEADS_REQUIRED`).
#[test]
fn metadata_fuzzer_findings_are_refused() {
    const NAME: &str = "metadata_fuzzer_findings_are_refused";
    if in_child(NAME) {
        let bad =
            edited("loops0", &tiny_path(VocabKind::Spm), |e| e.rename_arch("nanbeige").u32("nanbeige.num_loops", 0));
        let msg = refused(&bad, ModelParams::default());
        assert!(msg.contains("nanbeige.num_loops = 0") && msg.contains("nanbeige.cpp:8"), "{msg}");
        // phimoe's tensor loader divides n_embd by layer 0's head count
        // (`src/models/phimoe.cpp:15`): SIGFPE with 0.
        let bad = edited("phimoe-heads0", &tiny_path(VocabKind::Spm), |e| {
            e.rename_arch("phimoe").u32("phimoe.attention.head_count", 0)
        });
        let msg = refused(&bad, ModelParams::default());
        assert!(msg.contains("phimoe.attention.head_count is missing or 0"), "{msg}");
        let good =
            edited("loops2", &tiny_path(VocabKind::Spm), |e| e.rename_arch("nanbeige").u32("nanbeige.num_loops", 2));
        load_and_decode(&good).expect("two loops decode");
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Found reading the loader for the allow-list: the other files of a split
/// model have their `split.no` read with `gguf_get_val_u16` unchecked
/// (`src/llama-model-loader.cpp:641`); another type aborted in gguf's type
/// assert. The validator opens each part first.
#[test]
fn split_parts_are_checked() {
    const NAME: &str = "split_parts_are_checked";
    if in_child(NAME) {
        let dir = temp_dir("reliability-split");
        let src = tiny_path(VocabKind::Spm);
        let first = dir.join("m-00001-of-00002.gguf");
        let second = dir.join("m-00002-of-00002.gguf");
        Edit::open(&src).u16("split.count", 2).u16("split.no", 0).write(&first);
        Edit::open(&src).u16("split.count", 2).u32("split.no", 1).write(&second);
        let msg = refused(&first, ModelParams::default());
        assert!(msg.contains("m-00002-of-00002.gguf") && msg.contains("split.no has type"), "{msg}");
        // With the right type, llama.cpp takes over (here: the parts repeat
        // each other's tensors, its own clean error).
        Edit::open(&src).u16("split.count", 2).u16("split.no", 1).write(&second);
        match Model::load(&first) {
            Err(Error::ModelLoad { .. }) => {}
            other => panic!("{other:?}"),
        }
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}

/// Tokenizing with `add_special` asserted that the special tokens the
/// vocabulary inserts exist (`llama-vocab.cpp:3477-3663`): here a UGM (T5)
/// vocabulary, whose family has no default BOS, told to add one.
#[test]
fn missing_special_tokens_are_a_tokenize_error() {
    const NAME: &str = "missing_special_tokens_are_a_tokenize_error";
    if in_child(NAME) {
        let path = edited("ugm-bos", &tiny_path(VocabKind::Spm), |e| {
            e.str("tokenizer.ggml.model", "t5")
                .remove("tokenizer.ggml.bos_token_id")
                .bool("tokenizer.ggml.add_bos_token", true)
        });
        let m = Model::load_with(&path, ModelParams::default().vocab_only(true)).expect("the UGM vocabulary loads");
        let v = m.vocab();
        assert!(v.add_bos() && v.bos().is_none(), "add_bos {}, bos {:?}", v.add_bos(), v.bos());
        match v.tokenize("hello", AddSpecial::Yes, ParseSpecial::No) {
            Err(Error::Tokenize { message }) => assert!(message.contains("BOS"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(!v.tokenize("hello", AddSpecial::No, ParseSpecial::No).unwrap().is_empty());
        return;
    }
    assert_child_ok(NAME, &run_in_child(NAME));
}
