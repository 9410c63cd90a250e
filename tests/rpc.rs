//! ggml's RPC backend (feature `rpc`): a model spread over the local CPU and
//! RPC servers (child processes of this test binary on free loopback ports)
//! gives the local run's tokens; a server that dies, cannot be reached,
//! speaks another protocol version or answers garbage is an error naming the
//! endpoint, never the end of this process.

mod common;

use llama_rs::rpc::{self, RpcEndpoint, RpcServerParams};
use llama_rs::{
    AddSpecial, Batch, Context, ContextParams, DeviceKind, Error, FitParams, Model, ModelParams, ParseSpecial,
    SplitMode, Token,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One RPC server of this test binary, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers' logs: appended to `LLAMA_RS_RPC_SERVER_LOG` when set
/// (scripts/gpu-check keeps them), else dropped.
fn server_log() -> Stdio {
    match std::env::var_os("LLAMA_RS_RPC_SERVER_LOG") {
        Some(path) => std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().into(),
        None => Stdio::null(),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `serve_in_child` in a child process and waits until it listens.
fn start_server() -> Server {
    start_server_on("cpu")
}

/// As `start_server`, serving `what`: `cpu`, `gpus` (every GPU of the
/// machine) or `gpu:K` (the K-th GPU of `default_gpus`).
fn start_server_on(what: &str) -> Server {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["serve_in_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("LLAMA_RS_CHILD", "serve_in_child")
        .env("LLAMA_RS_RPC_PORT", port.to_string())
        .env("LLAMA_RS_RPC_SERVE", what)
        .stdout(Stdio::null())
        .stderr(server_log())
        .spawn()
        .expect("start an RPC server child");
    let endpoint = format!("127.0.0.1:{port}");
    let server = Server { child, endpoint };
    let deadline = Instant::now() + Duration::from_secs(60);
    // A probe connection is served and dropped (the server then takes the
    // next client).
    while TcpStream::connect(&server.endpoint).is_err() {
        assert!(Instant::now() < deadline, "the RPC server on {} did not start", server.endpoint);
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// Not a test of its own: the body of the server processes started by
/// `start_server` (it serves until killed). In the normal run it checks that a
/// server refuses what it must refuse before it serves.
#[test]
fn serve_in_child() {
    if common::in_child("serve_in_child") {
        tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("info").init();
        let port = std::env::var("LLAMA_RS_RPC_PORT").unwrap();
        let mut params = RpcServerParams::new(&format!("127.0.0.1:{port}")).threads(1);
        let what = std::env::var("LLAMA_RS_RPC_SERVE").unwrap_or_default();
        let gpus: Vec<usize> = llama_rs::default_gpus(false).iter().map(|d| d.index).collect();
        if what == "gpus" {
            assert!(!gpus.is_empty(), "LLAMA_RS_RPC_SERVE=gpus but no GPU");
            params = params.devices(&gpus);
        } else if let Some(k) = what.strip_prefix("gpu:") {
            let k: usize = k.parse().unwrap();
            assert!(k < gpus.len(), "LLAMA_RS_RPC_SERVE={what} but {} GPU(s)", gpus.len());
            params = params.devices(&[gpus[k]]);
        } else {
            let cpu = llama_rs::devices().into_iter().find(|d| d.kind == DeviceKind::Cpu).unwrap();
            params = params.devices(&[cpu.index]);
        }
        let err = rpc::serve(&params).unwrap_err();
        panic!("the server stopped: {err}");
    }
    // A plain bind beyond loopback is refused, and says why and what to do.
    let err = rpc::serve(&RpcServerParams::new("0.0.0.0:50052")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Rpc { .. }), "{err:?}");
    assert!(text.contains("no authentication") && text.contains("insecure_allow_remote"), "{text}");
    // A port that is taken is an error, not a silent return.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let err = rpc::serve(&RpcServerParams::new(&busy.local_addr().unwrap().to_string()).threads(1)).unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
    // Remote devices cannot be served again.
    let err = rpc::serve(&RpcServerParams::new("127.0.0.1:1").devices(&[1 << 20])).unwrap_err();
    assert!(matches!(err, Error::DeviceOutOfRange { .. } | Error::Rpc { .. }), "{err:?}");
}

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| rpc::set_timeouts(Duration::from_secs(5), Some(Duration::from_secs(60))).unwrap());
}

/// Greedy tokens and the logits of each step.
fn greedy(ctx: &mut Context<'_>, model: &Model, prompt: &str, n: usize) -> (Vec<Token>, Vec<Vec<f32>>) {
    let tokens = model.vocab().tokenize(prompt, AddSpecial::Yes, ParseSpecial::No).unwrap();
    let mut batch = Batch::new(512, 1).unwrap();
    batch.add_sequence(&tokens, 0, 0, true).unwrap();
    ctx.decode(&mut batch).unwrap();
    let (mut out, mut logits) = (Vec::new(), Vec::new());
    for pos in (tokens.len() as i32..).take(n) {
        let row = ctx.logits(batch.len() as i32 - 1).unwrap().to_vec();
        let next = argmax(&row);
        logits.push(row);
        out.push(next);
        batch.clear();
        batch.add(next, pos, &[0], true).unwrap();
        ctx.decode(&mut batch).unwrap();
    }
    (out, logits)
}

fn argmax(v: &[f32]) -> Token {
    Token(v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as i32)
}

fn ctx_params() -> ContextParams {
    ContextParams::default().n_ctx(256).n_batch(512).n_threads(1)
}

#[test]
fn model_split_over_two_servers_equals_the_local_run() {
    setup();
    let (a, b) = (start_server(), start_server());
    let path = common::real_model_path();

    let local = Model::load_with(&path, ModelParams::default().devices(&[])).unwrap();
    let mut ctx = local.new_context(ctx_params()).unwrap();
    let (want, want_logits) = greedy(&mut ctx, &local, "The capital of France is", 12);

    // Layer split over both servers, 1:3.
    let params = ModelParams::default().rpc_servers(&[&a.endpoint, &b.endpoint]).tensor_split(&[1.0, 3.0]);
    let remote = Model::load_with(&path, params).unwrap();
    let devices = remote.devices().to_vec();
    assert_eq!(devices.len(), 2, "{devices:?}");
    for (d, ep) in devices.iter().zip([&a.endpoint, &b.endpoint]) {
        assert_eq!(d.kind, DeviceKind::Rpc);
        assert_eq!(d.rpc_endpoint(), Some(ep.as_str()));
        assert!(d.memory_total > 0 && d.memory_free <= d.memory_total, "{d:?}");
    }
    let listed = llama_rs::devices();
    assert!(devices.iter().all(|d| listed.contains(d) || listed.iter().any(|l| l.index == d.index)));
    let mut ctx = remote.new_context(ctx_params()).unwrap();
    let (got, got_logits) = greedy(&mut ctx, &remote, "The capital of France is", 12);
    assert_eq!(got, want, "greedy tokens over RPC differ from the local run");
    let max_diff = want_logits
        .iter()
        .zip(&got_logits)
        .flat_map(|(w, g)| w.iter().zip(g).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    println!("max |logit difference| local vs 2 RPC servers: {max_diff:e}");
    assert!(max_diff < 1e-3, "logits differ by {max_diff}");

    // The memory plan names both servers.
    let plan =
        llama_rs::plan_memory(&path, ModelParams::default().rpc_servers(&[&a.endpoint, &b.endpoint]), ctx_params())
            .unwrap();
    for d in &devices {
        let entry = plan.iter().find(|p| p.device == d.name).unwrap_or_else(|| panic!("{} not in {plan:?}", d.name));
        assert!(entry.model > 0, "{plan:?}");
    }

    // fit counts the servers' memory: with what they report, every layer fits.
    let servers = || ModelParams::default().rpc_servers(&[&a.endpoint, &b.endpoint]);
    let margin = 1 << 20;
    let all = llama_rs::fit(&path, servers(), ctx_params(), FitParams { margin, ..FitParams::default() }).unwrap();
    assert_eq!(all.n_gpu_layers, None, "{all:?}");
    let on = |plan: &[llama_rs::DeviceMemory], name: &str| -> u64 {
        plan.iter().filter(|p| p.device == name).map(llama_rs::DeviceMemory::total).sum()
    };
    // With half of what the full plan needs free on each server, fit offloads
    // fewer layers, and its plan leaves the margin on both.
    let free: Vec<u64> = devices.iter().map(|d| on(&all.plan, &d.name) / 2 + margin).collect();
    let part = llama_rs::fit(
        &path,
        servers(),
        ctx_params(),
        FitParams { margin, free: Some(free.clone()), ..FitParams::default() },
    )
    .unwrap();
    let n_layer = remote.n_layer();
    assert!(matches!(part.n_gpu_layers, Some(k) if k < n_layer), "{part:?} (model of {n_layer} layers)");
    for (d, f) in devices.iter().zip(&free) {
        assert!(on(&part.plan, &d.name) + margin <= *f, "{} over its free memory in {part:?}", d.name);
    }

    // Tensor split mode over RPC is refused with the reason.
    let err = Model::load_with(&path, ModelParams::default().rpc_servers(&[&a.endpoint]).split_mode(SplitMode::Tensor))
        .unwrap_err();
    assert!(matches!(err, Error::SplitMode { .. }) && err.to_string().contains("RPC"), "{err}");
}

#[test]
fn a_killed_server_is_an_error_and_the_process_lives() {
    setup();
    let mut server = start_server();
    let path = common::real_model_path();
    let model = Model::load_with(&path, ModelParams::default().rpc_servers(&[&server.endpoint])).unwrap();
    let mut ctx = model.new_context(ctx_params()).unwrap();
    let tokens = model.vocab().tokenize("Hello there", AddSpecial::Yes, ParseSpecial::No).unwrap();
    let mut batch = Batch::new(64, 1).unwrap();
    batch.add_sequence(&tokens, 0, 0, true).unwrap();
    ctx.decode(&mut batch).unwrap();
    let mut pos = tokens.len() as i32;

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let started = Instant::now();
    let mut failure = None;
    // The step in flight, or the one after it, fails (the dispatcher sends
    // asynchronously); no step succeeds with a dead server for long.
    for _ in 0..3 {
        batch.clear();
        batch.add(Token(1), pos, &[0], true).unwrap();
        pos += 1;
        if let Err(e) = ctx.decode(&mut batch) {
            failure = Some(e);
            break;
        }
    }
    let err = failure.expect("decoding on a killed server kept succeeding");
    println!("after the kill: {err} ({:?})", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(60), "the failure took {:?}", started.elapsed());
    match &err {
        Error::Rpc { endpoint, message } => {
            assert_eq!(endpoint, &server.endpoint);
            assert!(message.contains("failed"), "{message}");
        }
        other => panic!("expected Error::Rpc, got {other:?}"),
    }
    // Later calls on this model fail at once, with the same cause.
    batch.clear();
    batch.add(Token(1), pos, &[0], true).unwrap();
    let again = ctx.decode(&mut batch).unwrap_err();
    assert!(matches!(again, Error::Rpc { .. }), "{again:?}");
    assert!(model.new_context(ctx_params()).is_err());

    // Other models keep working.
    let local = Model::load_with(&path, ModelParams::default().devices(&[])).unwrap();
    let mut ctx = local.new_context(ctx_params()).unwrap();
    batch.clear();
    batch.add_sequence(&tokens, 0, 0, true).unwrap();
    ctx.decode(&mut batch).unwrap();
    // A model on the dead endpoint cannot load, and says why.
    let err = Model::load_with(&path, ModelParams::default().rpc_servers(&[&server.endpoint])).unwrap_err();
    assert!(matches!(err, Error::Rpc { .. }) && err.to_string().contains(&server.endpoint), "{err}");
}

#[test]
fn bad_and_unreachable_endpoints_are_errors() {
    setup();
    for bad in ["nohost", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "[::1]:50052", "127.0.0.1:port", ":50052"] {
        let err = RpcEndpoint::parse(bad).unwrap_err();
        assert!(matches!(err, Error::Rpc { .. }), "{bad}: {err:?}");
        assert!(rpc::connect(bad).is_err(), "{bad}");
    }
    assert_eq!(RpcEndpoint::parse("localhost:50052").unwrap().as_str(), "127.0.0.1:50052");
    // Nothing listens on a fresh port: refused at once.
    let ep = format!("127.0.0.1:{}", free_port());
    let err = rpc::connect(&ep).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&ep) && text.contains("cannot connect"), "{text}");
    let err = Model::load_with(common::real_model_path(), ModelParams::default().rpc_servers(&[&ep])).unwrap_err();
    assert!(matches!(err, Error::Rpc { .. }), "{err:?}");
}

/// A fake server: answers the handshake with `hello` (or nothing) and then
/// `after` to the next request.
fn fake_server(hello: Option<[u8; 3]>, after: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut req = [0u8; 1 + 8 + 24];
            if s.read_exact(&mut req).is_err() {
                continue;
            }
            match hello {
                Some([major, minor, patch]) => {
                    let mut rsp = 28u64.to_le_bytes().to_vec();
                    rsp.extend_from_slice(&[major, minor, patch, 0]);
                    rsp.extend_from_slice(&[0u8; 24]);
                    let _ = s.write_all(&rsp);
                }
                None => {
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
                }
            }
            let mut cmd = [0u8; 9];
            if s.read_exact(&mut cmd).is_ok() {
                let _ = s.write_all(&after);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    ep
}

#[test]
fn other_protocols_and_garbage_are_refused() {
    setup();
    let newer = fake_server(Some([8, 0, 0]), Vec::new());
    let err = rpc::connect(&newer).unwrap_err().to_string();
    assert!(err.contains("protocol version 8.0.0") && err.contains("same llama.cpp build"), "{err}");

    let http = fake_server(None, Vec::new());
    let err = rpc::connect(&http).unwrap_err().to_string();
    assert!(err.contains("handshake failed"), "{err}");

    // The right handshake, then a reply of the wrong size to DEVICE_COUNT.
    let garbage = fake_server(Some([3, 0, 0]), [999u64.to_le_bytes().as_slice(), &[7u8; 64]].concat());
    let err = rpc::connect(&garbage).unwrap_err().to_string();
    assert!(err.contains("protocol version 3.0.0"), "{err}");
    let (major, minor) = (7u8, 0u8);
    let garbage = fake_server(Some([major, minor, 0]), [999u64.to_le_bytes().as_slice(), &[7u8; 64]].concat());
    let err = rpc::connect(&garbage).unwrap_err();
    assert!(matches!(err, Error::Rpc { .. }), "{err:?}");
    assert!(err.to_string().contains("DEVICE_COUNT failed"), "{err}");
}

/// On a GPU machine (`scripts/gpu-check`): an RPC server on the same host
/// serving the GPUs, the client's layers all on it, against the local GPUs.
#[test]
#[ignore = "needs a GPU"]
fn rpc_server_on_the_gpu_equals_the_local_gpu() {
    setup();
    let gpus = llama_rs::default_gpus(false);
    assert!(!gpus.is_empty(), "no GPU");
    let server = start_server_on("gpus");
    // A synthetic model (the GPU machine has no network for the real one).
    // Flash attention off: ggml-rpc's client claims every op for a remote
    // device (`supports_op` is always true upstream), so the tiny model's
    // head size, which CUDA's FA kernels lack, would abort the *server*
    // (fattn.cu:762) instead of falling back as a local GPU does.
    let path = common::tiny_path(llama_rs::synthetic::VocabKind::Spm);

    let local = Model::load_with(&path, ModelParams::default()).unwrap();
    let mut ctx = local.new_context(ctx_params().flash_attention(llama_rs::FlashAttention::Off)).unwrap();
    let (want, want_logits) = greedy(&mut ctx, &local, "The capital of France is", 16);
    drop(ctx);

    let remote_devs = rpc::connect(&server.endpoint).unwrap();
    println!("RPC devices: {:?}", remote_devs.iter().map(|d| (&d.name, d.memory_total >> 20)).collect::<Vec<_>>());
    let indices: Vec<usize> = remote_devs.iter().map(|d| d.index).collect();
    let remote = Model::load_with(&path, ModelParams::default().devices(&indices)).unwrap();
    let mut ctx = remote.new_context(ctx_params().flash_attention(llama_rs::FlashAttention::Off)).unwrap();
    let (got, got_logits) = greedy(&mut ctx, &remote, "The capital of France is", 16);
    let max_diff = want_logits
        .iter()
        .zip(&got_logits)
        .flat_map(|(w, g)| w.iter().zip(g).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    println!("GPU through RPC vs local GPU: tokens equal: {}, max |logit difference| {max_diff:e}", got == want);
    assert_eq!(got, want, "greedy tokens through the RPC server on the GPU differ from the local GPU run");
    assert!(max_diff < 1e-2, "logits differ by {max_diff}");
}

/// One RPC server per GPU of this host, the client spreading the model over
/// them by layers (the client's own GPUs unused), against the local layer split
/// over the same GPUs: the same greedy tokens. With one GPU this is one server.
#[test]
#[ignore = "needs a GPU"]
fn rpc_servers_one_per_gpu_equal_the_local_layer_split() {
    setup();
    let gpus = llama_rs::default_gpus(false);
    assert!(!gpus.is_empty(), "no GPU");
    let servers: Vec<Server> = (0..gpus.len()).map(|k| start_server_on(&format!("gpu:{k}"))).collect();
    // Flash attention off: see rpc_server_on_the_gpu_equals_the_local_gpu.
    let path = common::tiny_path(llama_rs::synthetic::VocabKind::Spm);
    let fa_off = || ctx_params().flash_attention(llama_rs::FlashAttention::Off);

    let local = Model::load_with(&path, ModelParams::default().split_mode(SplitMode::Layer)).unwrap();
    let mut ctx = local.new_context(fa_off()).unwrap();
    let (want, want_logits) = greedy(&mut ctx, &local, "The capital of France is", 16);
    drop(ctx);

    let mut indices = Vec::new();
    for s in &servers {
        let devs = rpc::connect(&s.endpoint).unwrap();
        assert_eq!(devs.len(), 1, "{}: {devs:?}", s.endpoint);
        indices.push(devs[0].index);
    }
    let remote =
        Model::load_with(&path, ModelParams::default().devices(&indices).split_mode(SplitMode::Layer)).unwrap();
    assert!(remote.devices().iter().all(|d| d.kind == DeviceKind::Rpc), "{:?}", remote.devices());
    let mut ctx = remote.new_context(fa_off()).unwrap();
    let (got, got_logits) = greedy(&mut ctx, &remote, "The capital of France is", 16);
    let max_diff = want_logits
        .iter()
        .zip(&got_logits)
        .flat_map(|(w, g)| w.iter().zip(g).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    println!(
        "{} RPC server(s), one per GPU, vs local layer split: tokens equal: {}, max |logit difference| {max_diff:e}",
        servers.len(),
        got == want
    );
    assert_eq!(got, want, "greedy tokens over one RPC server per GPU differ from the local layer split");
    assert!(max_diff < 1e-2, "logits differ by {max_diff}");
}

/// The same model through the TLS tunnel (feature `rpc-tls`): llama.cpp's
/// client -> `TlsClient` -> `TlsServer` -> the plain server on loopback. The
/// right pre-shared key is served with the local run's tokens; a wrong one is
/// `Error::Rpc` and the server is never reached.
#[cfg(feature = "rpc-tls")]
#[test]
fn a_model_through_the_tls_tunnel() {
    use llama_rs::rpc_tls::{TlsAuth, TlsClient, TlsServer};
    setup();
    let server = start_server();
    let upstream: std::net::SocketAddr = server.endpoint.parse().unwrap();
    let auth = TlsAuth::PreSharedKey(b"0123456789abcdef0123456789abcdef-rpc".to_vec());
    let tunnel = TlsServer::bind("127.0.0.1:0".parse().unwrap(), upstream, &auth).unwrap();

    let wrong = TlsAuth::PreSharedKey(b"another secret, 32 bytes or more..".to_vec());
    let intruder = TlsClient::start(tunnel.local_addr(), "localhost", &wrong).unwrap();
    let err = rpc::connect(&intruder.endpoint()).unwrap_err();
    assert!(matches!(err, Error::Rpc { .. }), "{err:?}");
    println!("wrong key: {err}");

    let client = TlsClient::start(tunnel.local_addr(), "localhost", &auth).unwrap();
    let path = common::real_model_path();
    let local = Model::load_with(&path, ModelParams::default().devices(&[])).unwrap();
    let mut ctx = local.new_context(ctx_params().flash_attention(llama_rs::FlashAttention::Off)).unwrap();
    let (want, _) = greedy(&mut ctx, &local, "The capital of France is", 8);
    let remote = Model::load_with(&path, ModelParams::default().rpc_servers(&[client.endpoint()])).unwrap();
    assert_eq!(remote.devices().len(), 1);
    let mut ctx = remote.new_context(ctx_params().flash_attention(llama_rs::FlashAttention::Off)).unwrap();
    let (got, _) = greedy(&mut ctx, &remote, "The capital of France is", 8);
    assert_eq!(got, want, "tokens through the TLS tunnel differ from the local run");
}
