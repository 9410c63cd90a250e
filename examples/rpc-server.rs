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

#[path = "common/mod.rs"]
mod common;

use common::args::{self, num, Arg, ArgResult, Args};
use llama_rs::rpc::{self, RpcServerParams};
use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "usage: rpc-server [-H HOST] [-p PORT] [-d DEV,...] [-t N] [-c] [--cache-dir DIR]
                  [--insecure-allow-remote]
                  [--tls-cert PEM --tls-key PEM --tls-client-ca PEM | --psk-file FILE]

Serves this machine's devices to llama-rs or llama.cpp clients through ggml's RPC backend.

  -H, --host HOST          address to listen on (default 127.0.0.1)
  -p, --port PORT          port (default 50052)
  -d, --device DEV,...     devices to serve, by name (CUDA0, ROCm1, CPU) or index (default: every GPU, else the CPU)
  -t, --threads N          CPU threads of a served CPU device (default: physical cores)
  -c, --cache              keep large tensors in a local cache (~/.cache/llama.cpp/rpc, or --cache-dir)
  --cache-dir DIR          the cache folder (implies -c)
  --insecure-allow-remote  serve plain RPC on a non-loopback HOST (no authentication: trusted networks only)
  --tls-cert PEM           this server's certificate chain (TLS tunnel; feature rpc-tls)
  --tls-key PEM            its private key
  --tls-client-ca PEM      the CA that signs the clients' certificates
  --psk-file FILE          a shared secret of at least 32 bytes instead of certificates
  -h, --help               this text

Logs go to stderr (RUST_LOG, default info).";

struct Params {
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
    common::main("info", HELP, parse, run)
}

fn parse(p: &mut Args) -> ArgResult<Params> {
    let mut a = Params {
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
    while let Some(arg) = p.next()? {
        let Arg::Flag(flag) = &arg else { return Err(p.unexpected(arg)) };
        match flag.as_str() {
            "-H" | "--host" => a.host = p.value()?,
            "-p" | "--port" => a.port = p.parse_with(|v| num(v).map_err(|_| "expected a port number".to_string()))?,
            "-d" | "--device" => a.devices = Some(p.value()?),
            "-t" | "--threads" => {
                a.threads = Some(p.parse_with(|v| num(v).map_err(|_| "expected a number".to_string()))?)
            }
            "-c" | "--cache" => {
                if a.cache.is_none() {
                    a.cache = Some(default_cache().map_err(args::usage)?);
                }
            }
            "--cache-dir" => a.cache = Some(PathBuf::from(p.value()?)),
            "--insecure-allow-remote" => a.insecure = true,
            "--tls-cert" => a.tls_cert = Some(PathBuf::from(p.value()?)),
            "--tls-key" => a.tls_key = Some(PathBuf::from(p.value()?)),
            "--tls-client-ca" => a.tls_ca = Some(PathBuf::from(p.value()?)),
            "--psk-file" => a.psk = Some(PathBuf::from(p.value()?)),
            _ => return Err(p.unexpected(arg)),
        }
    }
    Ok(a)
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

fn server_params(a: &Params, endpoint: &str) -> Result<RpcServerParams, Box<dyn std::error::Error>> {
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

fn run(a: Params) -> Result<(), Box<dyn std::error::Error>> {
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
fn serve_tls(a: &Params) -> Result<(), Box<dyn std::error::Error>> {
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
