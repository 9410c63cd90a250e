//! Callbacks never unwind into C: a panic in the user's `tracing` subscriber
//! (reached from llama.cpp's log callback) is swallowed at the boundary; a
//! panic in a progress callback becomes `Error::CallbackPanic` (also
//! `tests/model.rs::panicking_progress_callback_is_an_error`); a panic in a
//! context's abort callback aborts the decode. llama-rs exposes no other C
//! callback (no custom sampler).

mod common;

use common::tiny_path;
use llama_rs::synthetic::VocabKind;
use llama_rs::{ContextParams, Error, Model, ModelParams, Token};
use std::sync::atomic::{AtomicUsize, Ordering};

static PANICS: AtomicUsize = AtomicUsize::new(0);
/// The panic hook is process-wide: the tests that silence it take turns.
static HOOK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A writer whose every write panics.
struct PanicWriter;

impl std::io::Write for PanicWriter {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        PANICS.fetch_add(1, Ordering::SeqCst);
        panic!("subscriber panics on a llama.cpp log line");
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs, once for this test binary, a global subscriber whose writer
/// panics on every event of target llama_cpp (global: scoped subscribers
/// race with the callsite interest cache when tests run in parallel).
fn install_panicking_subscriber() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt().with_env_filter("llama_cpp=debug").with_writer(|| PanicWriter).finish().init();
    });
}

#[test]
fn a_panicking_log_subscriber_does_not_unwind_into_llama_cpp() {
    install_panicking_subscriber();
    // Silence the panic messages of the expected panics (many log lines).
    let _turn = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = (|| {
        let m = Model::load(tiny_path(VocabKind::Spm))?;
        let mut c = m.new_context(ContextParams::default().n_ctx(256).n_batch(256).threads(1))?;
        let mut b = llama_rs::Batch::new(1, 1).unwrap();
        b.add(Token(1), 0, &[0], true)?;
        c.decode(&mut b)?;
        // A failing decode (context full), whose message comes from the
        // error line llama.cpp logs: the panicking subscriber sees it first.
        let mut b = llama_rs::Batch::new(256, 1).unwrap();
        for i in 0..256 {
            b.add(Token(3), 1 + i, &[0], false)?;
        }
        let full = c.decode(&mut b);
        Ok::<_, Error>(matches!(full, Err(Error::ContextFull { .. })))
    })();
    std::panic::set_hook(hook);
    assert!(result.unwrap(), "llama-rs returned normally, and the full context is Error::ContextFull");
    let n = PANICS.load(Ordering::SeqCst);
    assert!(n > 0, "the subscriber was reached");
    eprintln!("callbacks: {n} panics in the log subscriber caught at the C boundary");
}

#[test]
fn a_panicking_progress_callback_is_an_error_and_the_next_load_works() {
    install_panicking_subscriber();
    let _turn = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = Model::load_with(tiny_path(VocabKind::Spm), ModelParams::default().progress(|p| p < 0.5 || panic!("late")));
    let next = Model::load(tiny_path(VocabKind::Spm))
        .and_then(|m| m.new_context(ContextParams::default().n_ctx(256).threads(1)).map(drop));
    std::panic::set_hook(hook);
    match r {
        Err(Error::CallbackPanic { message }) => assert!(message.contains("late"), "{message}"),
        other => panic!("expected CallbackPanic, got {other:?}"),
    }
    next.unwrap();
}

#[test]
fn the_context_abort_callback_stops_a_decode_and_a_panic_in_it_does_not_unwind() {
    // The whole test takes its turn: another test of this binary silences
    // the panic hook and installs a panicking subscriber meanwhile.
    let _turn = HOOK.lock().unwrap_or_else(|e| e.into_inner());
    let m = Model::load(tiny_path(VocabKind::Spm)).unwrap();
    let mut c = m.new_context(ContextParams::default().n_ctx(256).n_batch(64).threads(1)).unwrap();
    let mut b = llama_rs::Batch::new(16, 1).unwrap();
    b.add_sequence(&[Token(1), Token(5), Token(6)], 0, 0, true).unwrap();
    c.set_abort_callback(Some(Box::new(|| false)));
    c.decode(&mut b).unwrap();
    c.clear_kv(false);
    c.set_abort_callback(Some(Box::new(|| true)));
    assert!(matches!(c.decode(&mut b), Err(Error::Aborted)));
    assert_eq!(c.seq_pos_max(0).unwrap(), None, "llama.cpp took back the aborted micro-batch");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    c.set_abort_callback(Some(Box::new(|| panic!("in the abort callback"))));
    let r = c.decode(&mut b);
    std::panic::set_hook(hook);
    assert!(matches!(r, Err(Error::Aborted)), "{r:?}");
    c.set_abort_callback(None);
    c.decode(&mut b).unwrap();
}
