//! Serves this machine's devices to llama-rs (or llama.cpp) clients through
//! ggml's RPC backend, with ggml-rpc-server's flags.
//!
//! `cargo run --release --features rpc --example rpc-server -- [-H HOST] [-p PORT] [-d DEV,...] [-t N] [-c]`
//!
//! Plain RPC has no authentication: the server binds 127.0.0.1 by default and
//! refuses any other address without `--insecure-allow-remote`. To cross a
//! network, build with `--features rpc,rpc-tls` and give `--tls-cert`,
//! `--tls-key` and `--tls-client-ca` (mutual TLS) or `--psk-file`: the RPC
//! server then listens on loopback only and a TLS tunnel on HOST:PORT lets in
//! authenticated clients only. See docs/rpc.md.

use llama_rs::rpc::{self, RpcServerParams};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: rpc-server [-H HOST] [-p PORT] [-d DEV,...] [-t N] [-c] [--cache-dir DIR]
                  [--insecure-allow-remote]
                  [--tls-cert PEM --tls-key PEM --tls-client-ca PEM | --psk-file FILE]
  -H HOST                  address to listen on (default 127.0.0.1)
  -p PORT                  port (default 50052)
  -d DEV,...               devices to serve, by name (CUDA0, ROCm1, CPU) or index (default: every GPU, else the CPU)
  -t N                     CPU threads of a served CPU device (default: physical cores)
  -c                       keep large tensors in a local cache (~/.cache/llama.cpp/rpc, or --cache-dir)
  --cache-dir DIR          the cache folder (implies -c)
  --insecure-allow-remote  serve plain RPC on a non-loopback HOST (no authentication: trusted networks only)
  --tls-cert PEM           this server's certificate chain (TLS tunnel; feature rpc-tls)
  --tls-key PEM            its private key
  --tls-client-ca PEM      the CA that signs the clients' certificates
  --psk-file FILE          a shared secret of at least 32 bytes instead of certificates
  -h, --help               this text";

struct Args {
    host: String,
    port: u16,
    devices: Option<String>,
    threads: Option<usize>,
    cache: Option<PathBuf>,
    insecure: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    psk: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = match parse(std::env::args().skip(1).collect()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse(argv: Vec<String>) -> Result<Option<Args>, String> {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 50052,
        devices: None,
        threads: None,
        cache: None,
        insecure: false,
        tls_cert: None,
        tls_key: None,
        tls_ca: None,
        psk: None,
    };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "-H" | "--host" => a.host = value(&flag)?,
            "-p" | "--port" => a.port = value(&flag)?.parse().map_err(|_| "-p takes a port number".to_string())?,
            "-d" | "--device" => a.devices = Some(value(&flag)?),
            "-t" | "--threads" => a.threads = Some(value(&flag)?.parse().map_err(|_| "-t takes a number".to_string())?),
            "-c" | "--cache" => {
                if a.cache.is_none() {
                    a.cache = Some(default_cache()?);
                }
            }
            "--cache-dir" => a.cache = Some(PathBuf::from(value(&flag)?)),
            "--insecure-allow-remote" => a.insecure = true,
            "--tls-cert" => a.tls_cert = Some(PathBuf::from(value(&flag)?)),
            "--tls-key" => a.tls_key = Some(PathBuf::from(value(&flag)?)),
            "--tls-client-ca" => a.tls_ca = Some(PathBuf::from(value(&flag)?)),
            "--psk-file" => a.psk = Some(PathBuf::from(value(&flag)?)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Some(a))
}

fn default_cache() -> Result<PathBuf, String> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("-c: no HOME to put the cache in; give --cache-dir")?;
    Ok(base.join("llama.cpp").join("rpc"))
}

/// `-d` entries by name (case-insensitive) or index.
fn device_indices(list: &str) -> Result<Vec<usize>, String> {
    let all = llama_rs::devices();
    list.split(',')
        .map(|item| {
            let item = item.trim();
            all.iter()
                .find(|d| d.name.eq_ignore_ascii_case(item) || d.index.to_string() == item)
                .map(|d| d.index)
                .ok_or_else(|| {
                    let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
                    format!("no device {item:?}; this machine has: {}", names.join(", "))
                })
        })
        .collect()
}

fn server_params(a: &Args, endpoint: &str) -> Result<RpcServerParams, Box<dyn std::error::Error>> {
    let mut params = RpcServerParams::new(endpoint).insecure_allow_remote(a.insecure);
    if let Some(list) = &a.devices {
        params = params.devices(&device_indices(list)?);
    }
    if let Some(n) = a.threads {
        params = params.threads(n);
    }
    if let Some(dir) = &a.cache {
        params = params.cache_dir(dir);
    }
    Ok(params)
}

fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let tls = a.tls_cert.is_some() || a.tls_key.is_some() || a.tls_ca.is_some() || a.psk.is_some();
    if tls {
        #[cfg(feature = "rpc-tls")]
        return serve_tls(&a);
        #[cfg(not(feature = "rpc-tls"))]
        return Err(
            "the TLS flags need the rpc-tls feature: cargo run --features rpc,rpc-tls --example rpc-server".into()
        );
    }
    match rpc::serve(&server_params(&a, &format!("{}:{}", a.host, a.port))?) {
        Ok(never) => match never {},
        Err(e) => Err(e.into()),
    }
}

/// Plain RPC on a free loopback port, a TLS tunnel on HOST:PORT in front.
#[cfg(feature = "rpc-tls")]
fn serve_tls(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    use llama_rs::rpc_tls::{TlsAuth, TlsServer};
    let auth = match (&a.psk, &a.tls_cert, &a.tls_key, &a.tls_ca) {
        (Some(psk), None, None, None) => TlsAuth::psk_from_file(psk)?,
        (None, Some(cert), Some(key), Some(ca)) => TlsAuth::from_files(cert, key, ca)?,
        _ => return Err("give either --psk-file, or all of --tls-cert, --tls-key and --tls-client-ca".into()),
    };
    let listen: std::net::SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .map_err(|_| format!("-H {} -p {}: not an IPv4 address and port", a.host, a.port))?;
    let inner = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // The plain server listens on loopback only; the tunnel lets in
    // authenticated clients.
    let plain = server_params(a, &inner.to_string())?;
    let server = std::thread::spawn(move || rpc::serve(&plain));
    let _tunnel = TlsServer::bind(listen, inner, &auth)?;
    tracing::info!("TLS tunnel on {listen} -> RPC server on {inner}");
    match server.join() {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err("the RPC server thread panicked".into()),
    }
}
