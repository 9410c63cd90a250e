//! A mutually authenticated TLS tunnel for ggml's RPC protocol (feature
//! `rpc-tls`, Unix only).
//!
//! llama.cpp's `rpc-server` speaks plain TCP with no authentication, so it
//! must never listen on a network that others can reach. This module carries
//! its bytes, unchanged, over TLS 1.3 in which *both* ends prove who they are:
//!
//! ```text
//! llama.cpp RPC client ── TCP ──> TlsClient ══ TLS 1.3 ══> TlsServer ── TCP ──> rpc-server
//!                  (127.0.0.1:PORT)        (network)     (0.0.0.0:50052)     (127.0.0.1:50051)
//! ```
//!
//! ```no_run
//! use llama_rs::rpc_tls::{TlsAuth, TlsClient, TlsServer};
//! use std::path::Path;
//! # fn main() -> llama_rs::Result<()> {
//! // Both ends: the same secret (`head -c 32 /dev/urandom > rpc.psk`), or
//! // TlsAuth::from_files(cert, key, peer_ca) for X.509 certificates.
//! let auth = TlsAuth::psk_from_file(Path::new("rpc.psk"))?;
//!
//! // On the GPU machine, beside `rpc-server -H 127.0.0.1 -p 50051`; serves
//! // until dropped.
//! let server = TlsServer::bind("0.0.0.0:50052".parse().unwrap(), "127.0.0.1:50051".parse().unwrap(), &auth)?;
//!
//! // On the machine that loads the model: llama.cpp's RPC endpoint is then
//! // `client.endpoint()`, e.g. "127.0.0.1:41234".
//! let client = TlsClient::start("192.0.2.7:50052".parse().unwrap(), "gpu-host", &auth)?;
//! # Ok(())
//! # }
//! ```
//!
//! The server opens its upstream connection only after the client has
//! authenticated, so an unauthenticated peer never reaches `rpc-server`.
//! Handshake failures are logged through [`tracing`] (`warn`) and close just
//! that connection; nothing is printed.
//!
//! Each tunnelled connection runs on its own thread, which owns the rustls
//! connection and both sockets and moves bytes with `poll(2)` (no async
//! runtime, no busy waiting; `TCP_NODELAY` on every socket). When either side
//! closes, the close is passed on (TLS `close_notify`, TCP half-close) and the
//! tunnel ends once both directions are done; an error on either side closes
//! both at once.

use crate::{Error, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{AlwaysResolvesServerRawPublicKeys, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme,
};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The shortest pre-shared key accepted, in bytes.
pub const PSK_MIN_LEN: usize = 32;
/// HKDF-SHA256 salt for the pre-shared key's Ed25519 seed.
const PSK_SALT: &[u8] = b"llama-rs rpc-tls psk v1";
/// HKDF-SHA256 info for the pre-shared key's Ed25519 seed.
const PSK_INFO: &[u8] = b"ed25519 identity";
/// How long a peer may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the remote or upstream address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-direction copy buffer.
const BUF: usize = 64 * 1024;
/// Connections (each a thread) one [`TlsServer`] or [`TlsClient`] serves at
/// once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;

/// How both ends prove who they are. Both ends of a tunnel use the same kind.
///
/// `Debug` shows no key material. `TlsAuth` is `Send` and `Sync`.
#[derive(Clone)]
pub enum TlsAuth {
    /// X.509 (mutual TLS): this end's certificate chain (leaf first) and
    /// private key (PKCS#8, PKCS#1 or SEC1), and the CA certificate(s) that
    /// must have signed the peer's certificate, all PEM. The client also
    /// checks the server certificate against the name given to
    /// [`TlsClient::start`].
    Certificates {
        /// This end's certificate chain, PEM.
        cert_chain_pem: Vec<u8>,
        /// This end's private key, PEM.
        key_pem: Vec<u8>,
        /// The CA certificate(s) trusted to have signed the peer's certificate, PEM.
        peer_ca_pem: Vec<u8>,
    },
    /// A pre-shared secret of at least [`PSK_MIN_LEN`] bytes, the same on both
    /// ends (e.g. a file made with `head -c 32 /dev/urandom > rpc.psk`).
    ///
    /// Both ends derive one Ed25519 key pair from it: the seed is
    /// HKDF-SHA256(salt = `"llama-rs rpc-tls psk v1"`, ikm = secret,
    /// info = `"ed25519 identity"`), 32 bytes. Each end presents that key as an
    /// RFC 7250 raw public key and accepts only a peer presenting the same key
    /// and proving it holds the private half, so a peer without the secret
    /// cannot complete the handshake. (TLS 1.3 signs the client's and server's
    /// handshakes with different context strings, so sharing one key pair
    /// allows no reflection.) Anyone who connects learns the public key, so
    /// the secret must be random, not a passphrase that could be guessed
    /// offline.
    PreSharedKey(Vec<u8>),
}

impl fmt::Debug for TlsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Certificates { .. } => f.write_str("TlsAuth::Certificates { .. }"),
            Self::PreSharedKey(k) => write!(f, "TlsAuth::PreSharedKey({} bytes)", k.len()),
        }
    }
}

fn rpc_err(endpoint: impl fmt::Display, message: impl Into<String>) -> Error {
    Error::Rpc { endpoint: endpoint.to_string(), message: message.into() }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

impl TlsAuth {
    /// [`TlsAuth::Certificates`] from three PEM files: this end's certificate
    /// chain, its private key, and the CA(s) that signed the peer's
    /// certificate. The files are only read here; their contents are checked
    /// by [`TlsServer::bind`] and [`TlsClient::start`].
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be read.
    pub fn from_files(cert: &Path, key: &Path, peer_ca: &Path) -> Result<Self> {
        Ok(Self::Certificates {
            cert_chain_pem: read_file(cert)?,
            key_pem: read_file(key)?,
            peer_ca_pem: read_file(peer_ca)?,
        })
    }

    /// [`TlsAuth::PreSharedKey`] from a file's raw bytes (used as they are,
    /// not trimmed).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::Rpc`] (endpoint:
    /// the file) when it holds fewer than [`PSK_MIN_LEN`] bytes.
    pub fn psk_from_file(path: &Path) -> Result<Self> {
        let secret = read_file(path)?;
        psk_identity(&secret).map_err(|m| rpc_err(path.display(), m))?;
        Ok(Self::PreSharedKey(secret))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &[u8], what: &str) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| format!("{what} is not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no `BEGIN CERTIFICATE` block: give a PEM certificate file"));
    }
    Ok(certs)
}

/// This end's certificate chain and key.
fn identity(
    chain: &[u8],
    key: &[u8],
) -> std::result::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = certs(chain, "the certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "the key file holds no private key (a PKCS#8, PKCS#1 or SEC1 PEM block)".to_string()
        }
        e => format!("the private key is not valid PEM ({e})"),
    })?;
    Ok((chain, key))
}

fn roots(pem: &[u8]) -> std::result::Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for ca in certs(pem, "the peer CA file")? {
        roots.add(ca).map_err(|e| format!("the peer CA file holds a certificate that is no usable CA ({e})"))?;
    }
    Ok(Arc::new(roots))
}

/// The Ed25519 key pair derived from a pre-shared secret (see
/// [`TlsAuth::PreSharedKey`]), and the verifier that accepts only it.
fn psk_identity(secret: &[u8]) -> std::result::Result<(Arc<CertifiedKey>, Arc<PinnedKey>), String> {
    if secret.len() < PSK_MIN_LEN {
        return Err(format!(
            "the pre-shared key has {} bytes, at least {PSK_MIN_LEN} are needed: make one with \
             `head -c 32 /dev/urandom > rpc.psk` and give the same file to both ends",
            secret.len()
        ));
    }
    use ring::hkdf::{Salt, HKDF_SHA256};
    // PKCS#8 v1 (RFC 8410) of an Ed25519 key: this prefix, then the 32-byte seed.
    let mut pkcs8 =
        vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let mut seed = [0u8; 32];
    Salt::new(HKDF_SHA256, PSK_SALT)
        .extract(secret)
        .expand(&[PSK_INFO], HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut seed))
        .map_err(|_| "HKDF failed".to_string())?;
    pkcs8.extend_from_slice(&seed);
    let key = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
        .map_err(|e| format!("cannot derive the Ed25519 key: {e}"))?;
    let spki = key.public_key().ok_or("the derived key has no public key")?.to_vec();
    let verifier = PinnedKey { spki: spki.clone(), algs: provider().signature_verification_algorithms };
    Ok((Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki)], key)), Arc::new(verifier)))
}

/// Accepts exactly one raw public key (PSK mode), on either side.
#[derive(Debug)]
struct PinnedKey {
    spki: Vec<u8>,
    algs: WebPkiSupportedAlgorithms,
}

type TlsResult<T> = std::result::Result<T, rustls::Error>;

impl PinnedKey {
    fn check(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> TlsResult<()> {
        if intermediates.is_empty() && end_entity.as_ref() == self.spki.as_slice() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }
}

/// The methods that [`ServerCertVerifier`] and [`ClientCertVerifier`] share.
macro_rules! pinned_key_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> TlsResult<HandshakeSignatureValid> {
            Err(rustls::Error::General("TLS 1.2 is not used".into()))
        }
        fn verify_tls13_signature(
            &self,
            msg: &[u8],
            key: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> TlsResult<HandshakeSignatureValid> {
            verify_tls13_signature_with_raw_key(msg, &SubjectPublicKeyInfoDer::from(key.as_ref()), dss, &self.algs)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
        fn requires_raw_public_keys(&self) -> bool {
            true
        }
    };
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> TlsResult<ServerCertVerified> {
        self.check(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }
    pinned_key_signatures!();
}

impl ClientCertVerifier for PinnedKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> TlsResult<ClientCertVerified> {
        self.check(end_entity, intermediates).map(|()| ClientCertVerified::assertion())
    }
    pinned_key_signatures!();
}

fn server_config(auth: &TlsAuth) -> std::result::Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let config = match auth {
        TlsAuth::Certificates { cert_chain_pem, key_pem, peer_ca_pem } => {
            let (chain, key) = identity(cert_chain_pem, key_pem)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(peer_ca_pem)?, provider())
                .build()
                .map_err(|e| format!("cannot use the peer CA file: {e}"))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(|e| format!("the certificate and private key do not fit together: {e}"))?
        }
        TlsAuth::PreSharedKey(secret) => {
            let (key, verifier) = psk_identity(secret)?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(key)))
        }
    };
    Ok(Arc::new(config))
}

fn client_config(auth: &TlsAuth) -> std::result::Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let config = match auth {
        TlsAuth::Certificates { cert_chain_pem, key_pem, peer_ca_pem } => {
            let (chain, key) = identity(cert_chain_pem, key_pem)?;
            builder
                .with_root_certificates(roots(peer_ca_pem)?)
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("the certificate and private key do not fit together: {e}"))?
        }
        TlsAuth::PreSharedKey(secret) => {
            let (key, verifier) = psk_identity(secret)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(key)))
        }
    };
    Ok(Arc::new(config))
}

/// Server side of the tunnel: accepts TLS connections, authenticates each
/// client, then connects to the plain RPC server (`upstream`) and forwards
/// bytes both ways.
///
/// Dropping it stops accepting and closes every live tunnel. `Send` and `Sync`.
#[derive(Debug)]
pub struct TlsServer {
    acceptor: Acceptor,
}

impl TlsServer {
    /// Listens on `listen` (e.g. `0.0.0.0:50052`; port 0 picks a free one) and
    /// starts the accept thread. `upstream` is the plain `rpc-server`,
    /// normally on `127.0.0.1`; it is connected once per authenticated client.
    ///
    /// # Errors
    /// [`Error::Rpc`] (endpoint: `listen`) when `auth` is unusable (bad PEM,
    /// no private key, key not matching the certificate, pre-shared key too
    /// short) or the address cannot be bound.
    pub fn bind(listen: SocketAddr, upstream: SocketAddr, auth: &TlsAuth) -> Result<TlsServer> {
        let config = server_config(auth).map_err(|m| rpc_err(listen, m))?;
        let acceptor = Acceptor::spawn(listen, "rpc-tls-server", move |tls, peer, track| {
            let me = tls.local_addr().unwrap_or(listen);
            if let Err(why) = serve(&config, &tls, upstream, &track) {
                tracing::warn!("rpc-tls server {me}, client {peer}: {why}");
            }
        })?;
        Ok(TlsServer { acceptor })
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor.addr
    }
}

/// Client side of the tunnel: listens on `127.0.0.1` (a free port) and
/// forwards every local connection over TLS to the remote [`TlsServer`].
///
/// When the remote cannot be reached or the TLS handshake fails, the local
/// connection is closed (llama.cpp's RPC client sees a failed connection) and
/// the reason is logged through [`tracing`]. Dropping it stops accepting and
/// closes every live tunnel. `Send` and `Sync`.
#[derive(Debug)]
pub struct TlsClient {
    acceptor: Acceptor,
}

impl TlsClient {
    /// Starts the local listener. In [`TlsAuth::Certificates`] mode the
    /// server's certificate must be valid for `server_name` (a DNS name or an
    /// IP address in its subjectAltName); in [`TlsAuth::PreSharedKey`] mode
    /// `server_name` is ignored.
    ///
    /// # Errors
    /// [`Error::Rpc`] (endpoint: `remote`) when `auth` is unusable or
    /// `server_name` is no valid DNS name or IP address. The remote is not
    /// contacted here.
    pub fn start(remote: SocketAddr, server_name: &str, auth: &TlsAuth) -> Result<TlsClient> {
        let config = client_config(auth).map_err(|m| rpc_err(remote, m))?;
        let name = match auth {
            TlsAuth::PreSharedKey(_) => ServerName::from(remote.ip()),
            TlsAuth::Certificates { .. } => ServerName::try_from(server_name.to_string()).map_err(|_| {
                let why = "is no valid server name: give a DNS name or IP address of the server certificate";
                rpc_err(remote, format!("`{server_name}` {why}"))
            })?,
        };
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let acceptor = Acceptor::spawn(local, "rpc-tls-client", move |plain, _, track| {
            if let Err(why) = forward(&config, &name, &plain, remote, &track) {
                tracing::warn!("rpc-tls client to {remote}: {why}");
            }
        })
        .map_err(|e| match e {
            Error::Rpc { message, .. } => rpc_err(remote, message),
            e => e,
        })?;
        Ok(TlsClient { acceptor })
    }

    /// `"127.0.0.1:PORT"`: give this to llama.cpp as the RPC endpoint.
    pub fn endpoint(&self) -> String {
        self.acceptor.addr.to_string()
    }

    /// The local address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor.addr
    }
}

/// One server-side connection: authenticate, then connect upstream and pump.
fn serve(
    config: &Arc<ServerConfig>,
    tls: &TcpStream,
    upstream: SocketAddr,
    track: &Track,
) -> std::result::Result<(), String> {
    track.add(tls);
    keepalive(tls);
    let conn = ServerConnection::new(config.clone()).map_err(|e| format!("cannot start TLS: {e}"))?;
    let mut conn = Connection::Server(conn);
    handshake(&mut conn, tls).map_err(|e| format!("refused: {}", explain(&e)))?;
    let plain = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT).map_err(|e| {
        conn.send_close_notify(); // a clean close: the client sees its RPC connection fail
        let _ = conn.write_tls(&mut &*tls);
        format!("cannot reach the RPC server {upstream}: {e} (is rpc-server running?)")
    })?;
    track.add(&plain);
    tracing::debug!(
        "rpc-tls: client {} authenticated",
        tls.peer_addr().map_or_else(|e| e.to_string(), |a| a.to_string())
    );
    pump(&mut conn, tls, &plain, &track.shared.stop).map_err(|e| format!("tunnel failed: {}", explain(&e)))
}

/// One client-side connection: connect to the remote, authenticate, pump.
fn forward(
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    plain: &TcpStream,
    remote: SocketAddr,
    track: &Track,
) -> std::result::Result<(), String> {
    track.add(plain);
    let tls = TcpStream::connect_timeout(&remote, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot reach the TLS server: {e} (is the TlsServer running?)"))?;
    track.add(&tls);
    keepalive(&tls);
    let conn = ClientConnection::new(config.clone(), name.clone()).map_err(|e| format!("cannot start TLS: {e}"))?;
    let mut conn = Connection::Client(conn);
    handshake(&mut conn, &tls).map_err(|e| format!("TLS handshake failed: {}", explain(&e)))?;
    pump(&mut conn, &tls, plain, &track.shared.stop).map_err(|e| format!("tunnel failed: {}", explain(&e)))
}

/// TCP keepalive on a tunnel's network socket, so that a peer that vanished
/// (power loss, partition) is noticed within about two minutes on Linux and its
/// tunnel closed: ggml's `rpc-server` serves one client at a time, and a dead
/// client's upstream connection would block it for good.
fn keepalive(s: &TcpStream) {
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is an open socket for the duration of the
        // call; `value` is a live c_int and its exact size is passed.
        unsafe { libc::setsockopt(s.as_raw_fd(), level, name, (&value as *const libc::c_int).cast(), size) };
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    for (name, value) in [(libc::TCP_KEEPIDLE, 60), (libc::TCP_KEEPINTVL, 10), (libc::TCP_KEEPCNT, 6)] {
        set(libc::IPPROTO_TCP, name, value);
    }
}

/// State shared by an accept thread, its connection threads and its owner.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Connections whose thread runs.
    active: AtomicUsize,
    /// Clones of every live tunnel's sockets, to shut them down on drop.
    live: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<TcpStream>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's registration in [`Shared::live`]; removed on drop.
struct Track {
    shared: Arc<Shared>,
    id: u64,
}

impl Track {
    fn add(&self, s: &TcpStream) {
        let _ = s.set_nodelay(true);
        if let Ok(clone) = s.try_clone() {
            self.shared.live().entry(self.id).or_default().push(clone);
        }
        // Checked after inserting: a concurrent drop either sees the socket or is seen here.
        if self.shared.stop.load(Ordering::SeqCst) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        self.shared.live().remove(&self.id);
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A listener and its accept thread, which runs `handle` on a new thread per
/// connection.
struct Acceptor {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor").field("addr", &self.addr).field("live", &self.shared.live().len()).finish()
    }
}

impl Acceptor {
    fn spawn<F>(addr: SocketAddr, name: &str, handle: F) -> Result<Acceptor>
    where
        F: Fn(TcpStream, SocketAddr, Track) + Send + Sync + 'static,
    {
        let err = |e: io::Error| rpc_err(addr, format!("cannot listen on {addr}: {e}"));
        let listener = Arc::new(TcpListener::bind(addr).map_err(err)?);
        let addr = listener.local_addr().map_err(err)?;
        let shared = Arc::new(Shared::default());
        let (l, sh, handle, conn_name) = (listener.clone(), shared.clone(), Arc::new(handle), format!("{name}-conn"));
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || loop {
                let accepted = l.accept();
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("rpc-tls: accept on {addr} failed: {e}");
                        std::thread::sleep(Duration::from_millis(100)); // e.g. out of file descriptors
                        continue;
                    }
                };
                if sh.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    sh.active.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(
                        "rpc-tls: {addr}: already {MAX_CONNECTIONS} connections, closing the one from {peer}"
                    );
                    continue;
                }
                let track = Track { shared: sh.clone(), id: sh.next_id.fetch_add(1, Ordering::Relaxed) };
                let handle = handle.clone();
                if let Err(e) =
                    std::thread::Builder::new().name(conn_name.clone()).spawn(move || handle(stream, peer, track))
                {
                    tracing::warn!("rpc-tls: cannot start a thread for {peer}: {e}");
                }
            })
            .map_err(|e| rpc_err(addr, format!("cannot start the accept thread: {e}")))?;
        Ok(Acceptor { addr, listener, shared, thread: Some(thread) })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // SAFETY: the listener's descriptor stays open while `self.listener`
        // lives; shutting it down (Linux) makes the blocked accept() return.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        // Elsewhere, wake accept() with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.shared.live().values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Completes the TLS handshake on the blocking socket within
/// [`HANDSHAKE_TIMEOUT`] in all (a peer that trickles bytes is cut off too).
fn handshake(conn: &mut Connection, sock: &TcpStream) -> io::Result<()> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let timed_out = || {
        let why =
            format!("the peer did not complete the TLS handshake within {HANDSHAKE_TIMEOUT:?}: does it speak TLS?");
        io::Error::new(io::ErrorKind::TimedOut, why)
    };
    while conn.is_handshaking() || conn.wants_write() {
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or_else(timed_out)?;
        sock.set_read_timeout(Some(left))?;
        sock.set_write_timeout(Some(left))?;
        let io = if conn.wants_write() { conn.write_tls(&mut &*sock) } else { conn.read_tls(&mut &*sock) };
        match io {
            Ok(0) if conn.is_handshaking() && !conn.wants_write() => {
                let why = "the peer closed the connection during the TLS handshake \
                           (it refused our credentials, or it is no rpc-tls endpoint)";
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(timed_out())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if let Err(e) = conn.process_new_packets() {
            let _ = conn.write_tls(&mut &*sock); // the alert, if any
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    Ok(())
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// Moves bytes between `plain` and the TLS connection on `tls` until both
/// directions have closed, either side fails, or `stop` is set.
fn pump(conn: &mut Connection, tls: &TcpStream, plain: &TcpStream, stop: &AtomicBool) -> io::Result<()> {
    tls.set_nonblocking(true)?;
    plain.set_nonblocking(true)?;
    // Bounded by us: plaintext is taken only once all TLS output is flushed.
    conn.set_buffer_limit(None);
    let (mut up, mut down) = (vec![0u8; BUF], vec![0u8; BUF]);
    let (mut d0, mut d1) = (0, 0); // down[d0..d1]: decrypted, not yet written to `plain`
    let mut tls_eof = false; // TCP EOF on `tls`
    let mut peer_done = false; // the TLS peer sent close_notify and all its data went to `plain`
    let mut plain_done = false; // EOF on `plain`, close_notify queued
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut progress = false;
        if !tls_eof && conn.wants_read() {
            match conn.read_tls(&mut &*tls) {
                Ok(n) => {
                    tls_eof = n == 0;
                    progress = true;
                    if let Err(e) = conn.process_new_packets() {
                        let _ = conn.write_tls(&mut &*tls); // the alert, if any
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if d0 == d1 && !peer_done {
            match conn.reader().read(&mut down) {
                Ok(0) => {
                    peer_done = true;
                    progress = true;
                    let _ = plain.shutdown(Shutdown::Write);
                }
                Ok(n) => (d0, d1, progress) = (0, n, true),
                Err(e) if would_block(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    let why = "the peer closed the TCP connection without TLS close_notify (it stopped, or an \
                               attacker cut the stream); what it sent may be incomplete";
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
                }
                Err(e) => return Err(e),
            }
        }
        if d0 < d1 {
            match (&*plain).write(&down[d0..d1]) {
                Ok(n) => (d0, progress) = (d0 + n, true),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if !plain_done && !conn.wants_write() {
            match (&*plain).read(&mut up) {
                Ok(0) => {
                    plain_done = true;
                    progress = true;
                    conn.send_close_notify();
                }
                Ok(n) => {
                    conn.writer().write_all(&up[..n])?;
                    progress = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        while conn.wants_write() {
            match conn.write_tls(&mut &*tls) {
                Ok(_) => progress = true,
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if peer_done && plain_done && !conn.wants_write() {
            let _ = tls.shutdown(Shutdown::Write);
            return Ok(());
        }
        if progress {
            continue;
        }
        // Nothing more without waiting: poll for what each side can do next.
        let tls_events = if !tls_eof && conn.wants_read() { libc::POLLIN } else { 0 }
            | if conn.wants_write() { libc::POLLOUT } else { 0 };
        let plain_events =
            if !plain_done && !conn.wants_write() { libc::POLLIN } else { 0 } | if d0 < d1 { libc::POLLOUT } else { 0 };
        let mut fds = [
            // Always watched: hang-ups and errors (and the owner's shutdown on drop) wake us.
            libc::pollfd { fd: tls.as_raw_fd(), events: tls_events, revents: 0 },
            // Unwatched (-1) without interest: after a half-close its hang-up would wake us forever.
            libc::pollfd {
                fd: if plain_events == 0 { -1 } else { plain.as_raw_fd() },
                events: plain_events,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the
        // call, and both descriptors are owned by live sockets.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            let e = io::Error::last_os_error();
            if !would_block(&e) {
                return Err(e);
            }
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if tls_events == 0 && fds[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
    }
}

/// What went wrong in a handshake or tunnel, and how to fix it.
fn explain(e: &io::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match tls {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "certificate not signed by the trusted CA: the peer must present a certificate issued by a CA in the peer CA file".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => "the server certificate is not \
            valid for the server name given to TlsClient::start: use a name from its subjectAltName"
            .into(),
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. }) => {
            format!("the peer's certificate is outside its validity period ({tls}): renew it or check the clocks")
        }
        E::InvalidCertificate(C::ApplicationVerificationFailure) => {
            "the peer's key is not derived from our pre-shared key: give both ends the same secret".into()
        }
        E::NoCertificatesPresented => "the client presented no certificate: this server requires mutual TLS".into(),
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateRequired
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::DecryptError),
        ) => format!(
            "the peer refused our credentials ({a:?}): it does not trust our certificate's CA, or does not hold the same pre-shared key"
        ),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            format!("the peer does not speak TLS as expected ({tls}): is a plain RPC client or server connected to the TLS port?")
        }
        _ => format!("TLS error: {tls}"),
    }
}
