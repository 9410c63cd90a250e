//! Models across machines: ggml's RPC backend (feature `rpc`).
//!
//! A machine with devices to lend runs an RPC server ([`serve`], or the
//! `rpc-server` example); the machine that loads the model names the servers
//! in [`ModelParams::rpc_servers`](crate::ModelParams::rpc_servers) (or
//! connects first with [`connect`] to see their devices). The remote devices
//! then hold layers like local GPUs: they come first in the default device
//! list, as in llama.cpp, and take part in layer split with
//! [`tensor_split`](crate::ModelParams::tensor_split) proportions. Tensor split
//! mode over RPC is refused (llama.cpp does not support it).
//!
//! **Failures never end the process.** The pinned llama.cpp is patched
//! (`llama-sys/patches/ggml-rpc-recoverable.patch`, docs/SAFETY.md R1): a server
//! that cannot be reached, dies, hangs past the I/O bound or answers garbage
//! fails the call in flight; llama-rs turns that into [`Error::Rpc`] naming the
//! endpoint, and every later call on a model that used the server fails at
//! once. Other models keep working; load the model again once the server is
//! back.
//!
//! **Security.** ggml's RPC protocol has no authentication, and a server
//! trusts its client with its memory. [`serve`] binds only loopback addresses
//! unless [`RpcServerParams::insecure_allow_remote`] is set; to cross a real
//! network, put the TLS tunnel of `llama_rs::rpc_tls` (feature
//! `rpc-tls`, mutual authentication) in front of it. See docs/rpc.md.

use crate::device::{self, Device};
use crate::error::{Error, Result};
use crate::ffi::string_from_ptr;
use llama_sys as sys;
use std::ffi::{CStr, CString};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// [`Device::index`] of the first RPC device: RPC devices are numbered from
/// here in the order they were connected, apart from ggml's registry indices.
pub(crate) const RPC_INDEX_BASE: usize = 1 << 20;

/// An RPC server's address, `HOST:PORT`, checked and resolved to IPv4 (ggml's
/// RPC transport speaks IPv4 only). Its text is canonical (`a.b.c.d:port`), so
/// one server is one endpoint however it was written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RpcEndpoint {
    addr: SocketAddrV4,
    text: String,
}

impl RpcEndpoint {
    /// Parses `HOST:PORT` (a name is resolved now, to its first IPv4 address).
    pub fn parse(s: &str) -> Result<RpcEndpoint> {
        let bad = |reason: String| Error::Rpc { endpoint: s.to_string(), message: reason };
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("not an endpoint: write HOST:PORT, e.g. 192.168.1.20:50052".into()))?;
        if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) {
            return Err(bad(format!("host {host:?} is not an IPv4 address or name (ggml's RPC speaks IPv4 only)")));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad(format!("port {port:?} is not a number in 1..=65535")))?;
        let ip = match host.parse::<Ipv4Addr>() {
            Ok(ip) => ip,
            Err(_) => (host, port)
                .to_socket_addrs()
                .map_err(|e| bad(format!("cannot resolve {host}: {e}")))?
                .find_map(|a| match a {
                    SocketAddr::V4(v4) => Some(*v4.ip()),
                    SocketAddr::V6(_) => None,
                })
                .ok_or_else(|| bad(format!("{host} has no IPv4 address (ggml's RPC speaks IPv4 only)")))?,
        };
        let addr = SocketAddrV4::new(ip, port);
        Ok(RpcEndpoint { addr, text: addr.to_string() })
    }

    /// The canonical `a.b.c.d:port`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl std::str::FromStr for RpcEndpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<RpcEndpoint> {
        RpcEndpoint::parse(s)
    }
}

impl std::fmt::Display for RpcEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The RPC backend's entry points, from its registry entry.
struct Api {
    add_server: sys::rpc::AddServerFn,
    start_server: sys::rpc::StartServerFn,
    failures: sys::rpc::FailuresFn,
    set_timeouts: sys::rpc::SetTimeoutsFn,
}

fn api(endpoint: &str) -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| {
        crate::init();
        if !sys::rpc::ENABLED {
            return Err("this build has no RPC backend: enable llama-rs's `rpc` feature".into());
        }
        // SAFETY: registry lookups by NUL-terminated names; each non-NULL
        // address is the function of that name, whose type `sys::rpc` declares
        // as ggml-rpc.cpp (patched) defines it.
        unsafe {
            let reg = sys::ggml_backend_reg_by_name(c"RPC".as_ptr());
            if reg.is_null() {
                return Err("the RPC backend is not registered (a dynamic-backends build without libggml-rpc?)".into());
            }
            let get = |name: &CStr| sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
            let (add, start, failures, timeouts) = (
                get(c"ggml_backend_rpc_add_server"),
                get(c"ggml_backend_rpc_start_server"),
                get(c"ggml_backend_rpc_failures"),
                get(c"ggml_backend_rpc_set_timeouts"),
            );
            if add.is_null() || start.is_null() {
                return Err("the RPC backend lacks ggml_backend_rpc_add_server/start_server".into());
            }
            if failures.is_null() || timeouts.is_null() {
                return Err("this llama.cpp lacks llama-rs's RPC patch (a LLAMA_CPP_DIR tree?): its client \
                            aborts the process when a server fails, so llama-rs does not use it"
                    .into());
            }
            Ok(Api {
                add_server: std::mem::transmute::<*mut std::ffi::c_void, sys::rpc::AddServerFn>(add),
                start_server: std::mem::transmute::<*mut std::ffi::c_void, sys::rpc::StartServerFn>(start),
                failures: std::mem::transmute::<*mut std::ffi::c_void, sys::rpc::FailuresFn>(failures),
                set_timeouts: std::mem::transmute::<*mut std::ffi::c_void, sys::rpc::SetTimeoutsFn>(timeouts),
            })
        }
    })
    .as_ref()
    .map_err(|message| Error::Rpc { endpoint: endpoint.to_string(), message: message.clone() })
}

/// A connected server's device, as ggml's RPC backend made it.
struct RpcDevice {
    endpoint: String,
    dev: sys::ggml_backend_dev_t,
}

// SAFETY: the device objects are created once by ggml-rpc, never freed, and
// only read; their functions take ggml-rpc's own locks.
unsafe impl Send for RpcDevice {}

/// Every device of every server connected so far, in order: position `i` is
/// [`Device::index`] `RPC_INDEX_BASE + i`.
static CONNECTED: Mutex<Vec<RpcDevice>> = Mutex::new(Vec::new());

fn connected() -> std::sync::MutexGuard<'static, Vec<RpcDevice>> {
    CONNECTED.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn raw_device(i: usize) -> Option<sys::ggml_backend_dev_t> {
    connected().get(i).map(|d| d.dev)
}

pub(crate) fn device_count() -> usize {
    connected().len()
}

/// The endpoint of a connected RPC device ([`Device::index`]).
pub(crate) fn endpoint_of(index: usize) -> Option<String> {
    let i = index.checked_sub(RPC_INDEX_BASE)?;
    connected().get(i).map(|d| d.endpoint.clone())
}

/// Connects to an RPC server (once per endpoint and process) and returns its
/// devices, which [`devices`](crate::devices) lists from then on (kind
/// [`DeviceKind::Rpc`](crate::DeviceKind::Rpc), description = endpoint).
///
/// Connecting is bounded by the connect timeout ([`set_timeouts`], 5 s by
/// default). An unreachable server, one of another protocol version, or
/// anything but a ggml RPC server is [`Error::Rpc`].
pub fn connect(endpoint: &str) -> Result<Vec<Device>> {
    let ep = RpcEndpoint::parse(endpoint)?;
    let api = api(ep.as_str())?;
    let c = CString::new(ep.as_str()).expect("an endpoint has no NUL");
    let mut list = connected();
    let known: Vec<usize> =
        list.iter().enumerate().filter(|(_, d)| d.endpoint == ep.as_str()).map(|(i, _)| i).collect();
    if !known.is_empty() {
        drop(list);
        return Ok(known.into_iter().filter_map(|i| device::device_info(RPC_INDEX_BASE + i)).collect());
    }
    let before = failure_count(api, &c);
    // SAFETY: NUL-terminated endpoint; the patched add_server returns NULL
    // (never aborts) when the server cannot be reached or answers badly, and
    // takes its own lock.
    let reg = unsafe { (api.add_server)(c.as_ptr()) };
    if reg.is_null() {
        let (after, message) = failures(api, &c);
        let message = if after > before && !message.is_empty() { message } else { "the server has no devices".into() };
        return Err(Error::Rpc { endpoint: ep.to_string(), message });
    }
    // SAFETY: a live registry entry made by add_server (never freed).
    let count = unsafe { sys::ggml_backend_reg_dev_count(reg) };
    let first = list.len();
    for i in 0..count {
        // SAFETY: i < count of this entry.
        let dev = unsafe { sys::ggml_backend_reg_dev_get(reg, i) };
        if !dev.is_null() {
            list.push(RpcDevice { endpoint: ep.to_string(), dev });
        }
    }
    let last = list.len();
    drop(list);
    Ok((first..last).filter_map(|i| device::device_info(RPC_INDEX_BASE + i)).collect())
}

/// Bounds on connecting (with the protocol handshake) and on each later send
/// or receive of a connection, for connections made from now on. `io: None`
/// (the default) waits as long as the server computes; a bound turns a hung
/// server into an error, so choose it above the longest batch a server
/// computes. Default connect bound: 5 s.
pub fn set_timeouts(connect: Duration, io: Option<Duration>) -> Result<()> {
    let api = api("-")?;
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: stores two integers in ggml-rpc's atomics.
    unsafe { (api.set_timeouts)(ms(connect), io.map(ms).unwrap_or(0)) };
    Ok(())
}

/// Failures recorded for `endpoint`; allocates nothing.
fn failure_count(api: &Api, endpoint: &CStr) -> u64 {
    // SAFETY: NUL-terminated endpoint; a NULL message buffer is not written.
    unsafe { (api.failures)(endpoint.as_ptr(), std::ptr::null_mut(), 0) }
}

/// Failures recorded for `endpoint`, with the last message.
fn failures(api: &Api, endpoint: &CStr) -> (u64, String) {
    let mut buf = [0 as std::ffi::c_char; 256];
    // SAFETY: NUL-terminated endpoint; the message buffer's size is passed
    // and written NUL-terminated.
    let n = unsafe { (api.failures)(endpoint.as_ptr(), buf.as_mut_ptr(), buf.len()) };
    // SAFETY: NUL-terminated by the callee.
    (n, unsafe { string_from_ptr(buf.as_ptr()) })
}

/// Watches the RPC servers a model uses: a failure recorded for one of them
/// after the baseline fails the model from then on.
pub(crate) struct RpcWatch {
    servers: Vec<(CString, u64)>,
    failed: AtomicBool,
    error: Mutex<Option<(String, String)>>,
}

impl RpcWatch {
    /// Takes the baseline for the RPC devices among `devices` (none: a watch
    /// that costs nothing).
    pub(crate) fn new(devices: &[Device]) -> RpcWatch {
        let mut servers: Vec<(CString, u64)> = Vec::new();
        for d in devices {
            let Some(ep) = endpoint_of(d.index) else { continue };
            let c = CString::new(ep).expect("an endpoint has no NUL");
            if servers.iter().all(|(s, _)| *s != c) {
                servers.push((c, 0));
            }
        }
        if let Some(api) = servers.first().and_then(|_| api("-").ok()) {
            for (c, base) in &mut servers {
                *base = failure_count(api, c);
            }
        }
        RpcWatch { servers, failed: AtomicBool::new(false), error: Mutex::new(None) }
    }

    /// Ok while no server of the model failed; allocates nothing on that path.
    pub(crate) fn check(&self) -> Result<()> {
        if self.servers.is_empty() {
            return Ok(());
        }
        if !self.failed.load(Ordering::Acquire) {
            let Ok(api) = api("-") else { return Ok(()) };
            let Some(c) = self.servers.iter().find_map(|(c, base)| (failure_count(api, c) > *base).then_some(c)) else {
                return Ok(());
            };
            let message = failures(api, c).1;
            let endpoint = c.to_string_lossy().into_owned();
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some((endpoint, message));
            self.failed.store(true, Ordering::Release);
        }
        let (endpoint, message) = self.error.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
        Err(Error::Rpc {
            endpoint,
            message: format!(
                "{message}; the model cannot use this server any more: load it again once the server is back"
            ),
        })
    }
}

/// What [`serve`] serves and how.
#[derive(Clone, Debug)]
pub struct RpcServerParams {
    endpoint: String,
    devices: Option<Vec<usize>>,
    threads: Option<usize>,
    cache_dir: Option<PathBuf>,
    insecure_allow_remote: bool,
}

impl RpcServerParams {
    /// Serve on `endpoint` (`HOST:PORT`; rpc-server's default is
    /// `127.0.0.1:50052`).
    pub fn new(endpoint: &str) -> RpcServerParams {
        RpcServerParams {
            endpoint: endpoint.to_string(),
            devices: None,
            threads: None,
            cache_dir: None,
            insecure_allow_remote: false,
        }
    }

    /// The local devices to serve, as [`Device::index`] values. Default: every
    /// GPU, or the CPU when there is none.
    pub fn devices(mut self, indices: &[usize]) -> Self {
        self.devices = Some(indices.to_vec());
        self
    }

    /// CPU threads of a served CPU device. Default: the physical cores.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// A folder where the server keeps large tensors by hash, so that loading
    /// the same model again sends hashes instead of weights (rpc-server's `-c`).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Allow a non-loopback address. ggml's RPC has no authentication and a
    /// client may read and write the server's device memory: only on a network
    /// where every host is trusted. Prefer the TLS tunnel (`rpc_tls`).
    pub fn insecure_allow_remote(mut self, allow: bool) -> Self {
        self.insecure_allow_remote = allow;
        self
    }
}

/// Serves this machine's devices to RPC clients, one client at a time, until
/// the process ends; returns only with the reason it could not start (the
/// address is taken, a device cannot be initialised, a remote address without
/// [`RpcServerParams::insecure_allow_remote`]). Logs go to `tracing`, like
/// llama.cpp's.
pub fn serve(params: &RpcServerParams) -> Result<std::convert::Infallible> {
    let ep = RpcEndpoint::parse(&params.endpoint)?;
    let err = |message: String| Error::Rpc { endpoint: ep.to_string(), message };
    if !ep.addr().ip().is_loopback() && !params.insecure_allow_remote {
        return Err(err(format!(
            "refusing to serve on {}: ggml's RPC protocol has no authentication, and any host that reaches the \
             port can read and write this machine's device memory. Serve on 127.0.0.1 and put the TLS tunnel in \
             front (llama_rs::rpc_tls::TlsServer, or the rpc-server example's --tls-*/--psk-file flags), or, only \
             on a network where every host is trusted, allow it with insecure_allow_remote \
             (--insecure-allow-remote)",
            ep.addr().ip()
        )));
    }
    let api = api(ep.as_str())?;
    let all = device::devices();
    let chosen: Vec<Device> = match &params.devices {
        Some(indices) => indices
            .iter()
            .map(|&i| {
                let d = device::find(&all, i)?;
                if d.kind == crate::DeviceKind::Rpc {
                    return Err(err(format!("device {i} ({}) is itself remote: serve local devices", d.name)));
                }
                Ok(d.clone())
            })
            .collect::<Result<_>>()?,
        None => {
            let gpus = device::default_gpus(false);
            if gpus.is_empty() {
                all.iter().filter(|d| d.kind == crate::DeviceKind::Cpu).take(1).cloned().collect()
            } else {
                gpus
            }
        }
    };
    if chosen.is_empty() {
        return Err(err("no device to serve".into()));
    }
    // ggml reports a busy port only in its log: ask first, for a clear error.
    std::net::TcpListener::bind(ep.addr()).map_err(|e| err(format!("cannot listen on {}: {e}", ep.addr())))?;
    let mut devs: Vec<sys::ggml_backend_dev_t> =
        chosen.iter().map(|d| device::raw_device(d.index).expect("listed devices exist")).collect();
    let threads = params.threads.unwrap_or_else(|| crate::physical_cores() as usize).max(1);
    let c_ep = CString::new(ep.as_str()).expect("an endpoint has no NUL");
    let c_cache = match &params.cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.clone(), source: e })?;
            let text = dir.to_str().ok_or_else(|| err(format!("cache folder {} is not UTF-8", dir.display())))?;
            Some(CString::new(text).map_err(|_| err("the cache folder path contains a NUL byte".into()))?)
        }
        None => None,
    };
    crate::backend::clear_log_error();
    // SAFETY: NUL-terminated strings and a device array that outlive the call
    // (it returns only when it could not start); the devices are live registry
    // devices.
    unsafe {
        (api.start_server)(
            c_ep.as_ptr(),
            c_cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads,
            devs.len(),
            devs.as_mut_ptr(),
        )
    };
    Err(err(crate::backend::log_error_or("the server could not start")))
}
